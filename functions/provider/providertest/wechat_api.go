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
	bills     map[string][]byte         // trade bills by bill_date
	downloads map[string]download       // bill files by token
	tampered  map[string][]byte         // what a download of a day's bill serves instead
	requests  int
	refused   int
}

// NewWechatAPI starts a stand-in for merchant mchID.
func NewWechatAPI(mchID, apiSerial string, apiKey *rsa.PublicKey, platform *rsa.PrivateKey, platSerial string) *WechatAPI {
	a := &WechatAPI{mchID: mchID, apiSerial: apiSerial, apiKey: apiKey, platform: platform, platSerial: platSerial, orders: map[string]map[string]any{},
		bills: map[string][]byte{}, downloads: map[string]download{}, tampered: map[string][]byte{}}
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
