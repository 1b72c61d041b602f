package providertest

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
)

// WechatAPI stands in for WeChat Pay's APIv3 order query (商户订单号查询订单): it checks each
// request's Authorization header as WeChat Pay does (the merchant's API key over
// method, URL, timestamp, nonce and body; the serial; a timestamp within 5 minutes) and signs
// every answer, errors included, with the platform key.
type WechatAPI struct {
	URL string

	srv        *httptest.Server
	mchID      string
	apiSerial  string
	apiKey     *rsa.PublicKey  // the merchant API certificate's key: verifies our requests
	platform   *rsa.PrivateKey // signs its answers
	platSerial string

	mu        sync.Mutex
	orders    map[string]map[string]any // transactions by out_trade_no
	refunds   map[string]map[string]any // refunds by out_refund_no
	bills     map[string][]byte         // trade bills by bill_date
	downloads map[string]download       // bill files by token
	tampered  map[string][]byte         // what a download of a day's bill serves instead
	streamed  map[string]streamedBill   // bills generated as they download (StreamBill)
	requests  int
	refused   int
}

// NewWechatAPI starts a stand-in for merchant mchID.
func NewWechatAPI(mchID, apiSerial string, apiKey *rsa.PublicKey, platform *rsa.PrivateKey, platSerial string) *WechatAPI {
	a := &WechatAPI{mchID: mchID, apiSerial: apiSerial, apiKey: apiKey, platform: platform, platSerial: platSerial, orders: map[string]map[string]any{}, refunds: map[string]map[string]any{},
		bills: map[string][]byte{}, downloads: map[string]download{}, tampered: map[string][]byte{}, streamed: map[string]streamedBill{}}
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	a.URL = a.srv.URL
	return a
}

// Close stops it.
func (a *WechatAPI) Close() { a.srv.Close() }

// SetTransaction makes it know a transaction (WechatTransaction builds one).
func (a *WechatAPI) SetTransaction(tx map[string]any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.orders[tx["out_trade_no"].(string)] = tx
}

// SetRefund makes it know a refund (WechatRefundAnswer builds one), or change its status.
func (a *WechatAPI) SetRefund(rf map[string]any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refunds[rf["out_refund_no"].(string)] = rf
}

// WechatRefundAnswer is a refund as 查询单笔退款 answers it: refund of fen out of a payment of
// total, status SUCCESS, PROCESSING, CLOSED or ABNORMAL (success_time only when SUCCESS).
func WechatRefundAnswer(order, refundID, outRefundNo string, total, fen int64, status, successTime string) map[string]any {
	r := map[string]any{"refund_id": refundID, "out_refund_no": outRefundNo, "transaction_id": "4200001234202611240000000001", "out_trade_no": order,
		"channel": "ORIGINAL", "user_received_account": "支付用户零钱", "create_time": "2026-11-24T21:00:00+08:00", "status": status, "funds_account": "AVAILABLE",
		"amount": map[string]any{"total": total, "refund": fen, "payer_total": total, "payer_refund": fen, "settlement_refund": fen, "settlement_total": total,
			"discount_refund": 0, "currency": "CNY"}}
	if status == "SUCCESS" {
		r["success_time"] = successTime
	}
	return r
}

// Counts says how many requests came and how many were refused (401).
func (a *WechatAPI) Counts() (requests, refused int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests, a.refused
}

var authRE = regexp.MustCompile(`^WECHATPAY2-SHA256-RSA2048 mchid="([^"]*)",nonce_str="([^"]*)",signature="([^"]*)",timestamp="([^"]*)",serial_no="([^"]*)"$`)

func (a *WechatAPI) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.requests++
	a.mu.Unlock()
	refuse := func(code int, errCode, msg string) {
		if code == http.StatusUnauthorized {
			a.mu.Lock()
			a.refused++
			a.mu.Unlock()
		}
		a.answer(w, code, map[string]any{"code": errCode, "message": msg})
	}
	m := authRE.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil || r.Header.Get("User-Agent") == "" {
		refuse(http.StatusUnauthorized, "SIGN_ERROR", "Authorization 格式错误")
		return
	}
	mch, nonce, sig64, ts, serial := m[1], m[2], m[3], m[4], m[5]
	sec, _ := strconv.ParseInt(ts, 10, 64)
	sig, err := base64.StdEncoding.DecodeString(sig64)
	sum := sha256.Sum256(provider.WechatRequestSignMessage(r.Method, r.URL.RequestURI(), ts, nonce, nil))
	if mch != a.mchID || serial != a.apiSerial || err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute ||
		rsa.VerifyPKCS1v15(a.apiKey, crypto.SHA256, sum[:], sig) != nil {
		refuse(http.StatusUnauthorized, "SIGN_ERROR", "签名错误")
		return
	}
	if r.URL.Path == "/v3/bill/tradebill" || r.URL.Path == "/v3/billdownload/file" {
		a.serveBill(w, r, refuse)
		return
	}
	if no, ok := strings.CutPrefix(r.URL.Path, "/v3/refund/domestic/refunds/"); ok && r.Method == http.MethodGet {
		a.mu.Lock()
		rf, found := a.refunds[no]
		a.mu.Unlock()
		if !found {
			a.answer(w, http.StatusNotFound, map[string]any{"code": "RESOURCE_NOT_EXISTS", "message": "退款单不存在"})
			return
		}
		a.answer(w, http.StatusOK, rf)
		return
	}
	order, ok := strings.CutPrefix(r.URL.Path, "/v3/pay/transactions/out-trade-no/")
	if !ok || r.Method != http.MethodGet || r.URL.Query().Get("mchid") != a.mchID {
		refuse(http.StatusBadRequest, "PARAM_ERROR", "参数错误")
		return
	}
	a.mu.Lock()
	tx, ok := a.orders[order]
	a.mu.Unlock()
	if !ok {
		a.answer(w, http.StatusNotFound, map[string]any{"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
		return
	}
	a.answer(w, http.StatusOK, tx)
}

func (a *WechatAPI) answer(w http.ResponseWriter, code int, v any) {
	body, _ := json.Marshal(v)
	h := SignWechat(a.platform, a.platSerial, body, time.Now())
	for k, v := range h {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(body)
}
