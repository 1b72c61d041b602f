package providertest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"

	"github.com/payrelay/payrelay/functions/provider"
)

// AlipayTrade is a trade the stand-in gateway knows, in alipay.trade.query's answer fields.
type AlipayTrade struct {
	TradeNo     string // trade_no
	TotalAmount string // total_amount, yuan
	TradeStatus string // TRADE_SUCCESS, WAIT_BUYER_PAY, TRADE_CLOSED, TRADE_FINISHED
	SendPayDate string // send_pay_date, "yyyy-MM-dd HH:mm:ss" (CST)
}

// AlipayRefund is a refund the stand-in gateway knows, in alipay.trade.fastpay.refund.query's
// answer fields.
type AlipayRefund struct {
	OutRequestNo string // out_request_no (the order number for a refund requested without one)
	RefundAmount string // refund_amount, yuan
	RefundStatus string // REFUND_SUCCESS, or "" (a synchronous refund's answer names none)
	GmtRefundPay string // gmt_refund_pay, "yyyy-MM-dd HH:mm:ss" (CST)
}

// AlipayGateway stands in for Alipay's OpenAPI gateway for alipay.trade.query,
// alipay.trade.fastpay.refund.query and the bill query: it verifies each
// request's RSA2 signature with the application's public key as Alipay does (every parameter
// but sign, sign_type included, sorted), and answers signed with the Alipay private key over
// the response object's text, in the documented envelope.
type AlipayGateway struct {
	URL string

	srv       *httptest.Server
	appKey    *rsa.PublicKey  // verifies our requests
	alipayKey *rsa.PrivateKey // signs its answers
	appID     string

	mu        sync.Mutex
	trades    map[string]AlipayTrade  // by out_trade_no
	refunds   map[string]AlipayRefund // by out_trade_no + "/" + out_request_no
	bills     map[string][]byte       // zips by bill_date
	downloads map[string]download     // bill files by fileId
	requests  int
	refused   int
	failNext  int
}

// FailNext makes the next n requests answer HTTP 502, as a gateway in trouble does.
func (g *AlipayGateway) FailNext(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failNext = n
}

// NewAlipayGateway starts a stand-in gateway for app appID.
func NewAlipayGateway(appID string, appKey *rsa.PublicKey, alipayKey *rsa.PrivateKey) *AlipayGateway {
	g := &AlipayGateway{appID: appID, appKey: appKey, alipayKey: alipayKey, trades: map[string]AlipayTrade{}, refunds: map[string]AlipayRefund{},
		bills: map[string][]byte{}, downloads: map[string]download{}}
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	g.URL = g.srv.URL + "/gateway.do"
	return g
}

// Close stops the gateway.
func (g *AlipayGateway) Close() { g.srv.Close() }

// SetTrade makes the gateway know a trade.
func (g *AlipayGateway) SetTrade(outTradeNo string, t AlipayTrade) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.trades[outTradeNo] = t
}

// SetRefund makes the gateway know a refund of a trade.
func (g *AlipayGateway) SetRefund(outTradeNo string, r AlipayRefund) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refunds[outTradeNo+"/"+r.OutRequestNo] = r
}

// Counts says how many requests came and how many the gateway refused for their signature or
// parameters.
func (g *AlipayGateway) Counts() (requests, refused int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.requests, g.refused
}

func (g *AlipayGateway) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/downloadBillFile.resource" {
		g.mu.Lock()
		d, ok := g.downloads[r.URL.Query().Get("fileId")]
		g.mu.Unlock()
		serveDownload(w, d, ok, "application/oct-stream")
		return
	}
	g.mu.Lock()
	g.requests++
	if g.failNext > 0 {
		g.failNext--
		g.mu.Unlock()
		http.Error(w, "bad gateway", http.StatusBadGateway)
		return
	}
	g.mu.Unlock()
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	p := r.PostForm
	refuse := func(code, msg, subCode, subMsg string) {
		g.mu.Lock()
		g.refused++
		g.mu.Unlock()
		g.answer(w, map[string]string{"code": code, "msg": msg, "sub_code": subCode, "sub_msg": subMsg})
	}
	method := p.Get("method")
	if method != "alipay.trade.query" && method != "alipay.data.dataservice.bill.downloadurl.query" && method != "alipay.trade.fastpay.refund.query" {
		refuse("40002", "Invalid Arguments", "isv.invalid-method", "method is invalid")
		return
	}
	for k, want := range map[string]string{"format": "JSON", "charset": "utf-8", "sign_type": "RSA2", "version": "1.0", "app_id": g.appID} {
		if p.Get(k) != want {
			refuse("40002", "Invalid Arguments", "isv.invalid-parameter", k+" is invalid")
			return
		}
	}
	sig, err := base64.StdEncoding.DecodeString(p.Get("sign"))
	sum := sha256.Sum256([]byte(provider.AlipayRequestSignContent(p)))
	if err != nil || rsa.VerifyPKCS1v15(g.appKey, crypto.SHA256, sum[:], sig) != nil {
		refuse("40002", "Invalid Arguments", "isv.invalid-signature", "验签出错")
		return
	}
	switch method {
	case "alipay.data.dataservice.bill.downloadurl.query":
		g.serveBillQuery(w, p.Get("biz_content"), refuse)
		return
	case "alipay.trade.fastpay.refund.query":
		g.serveRefundQuery(w, p.Get("biz_content"), refuse)
		return
	}
	var biz struct {
		OutTradeNo string `json:"out_trade_no"`
	}
	if json.Unmarshal([]byte(p.Get("biz_content")), &biz) != nil || biz.OutTradeNo == "" {
		refuse("40002", "Invalid Arguments", "isv.missing-biz-content", "biz_content")
		return
	}
	g.mu.Lock()
	t, ok := g.trades[biz.OutTradeNo]
	g.mu.Unlock()
	if !ok {
		g.answer(w, map[string]string{"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"})
		return
	}
	g.answer(w, map[string]string{"code": "10000", "msg": "Success", "out_trade_no": biz.OutTradeNo, "trade_no": t.TradeNo,
		"total_amount": t.TotalAmount, "trade_status": t.TradeStatus, "send_pay_date": t.SendPayDate, "buyer_logon_id": "159****5620"})
}

// serveRefundQuery answers alipay.trade.fastpay.refund.query as documented: 10000 with the
// refund's fields when it succeeded, 10000 without them when there is no such refund (or it
// did not succeed), 40004 ACQ.TRADE_NOT_EXIST for an unknown trade.
func (g *AlipayGateway) serveRefundQuery(w http.ResponseWriter, bizContent string, refuse func(code, msg, subCode, subMsg string)) {
	var biz struct {
		OutTradeNo   string   `json:"out_trade_no"`
		OutRequestNo string   `json:"out_request_no"`
		QueryOptions []string `json:"query_options"`
	}
	if json.Unmarshal([]byte(bizContent), &biz) != nil || biz.OutTradeNo == "" || biz.OutRequestNo == "" {
		refuse("40002", "Invalid Arguments", "isv.missing-biz-content", "out_trade_no and out_request_no")
		return
	}
	g.mu.Lock()
	t, known := g.trades[biz.OutTradeNo]
	r, ok := g.refunds[biz.OutTradeNo+"/"+biz.OutRequestNo]
	g.mu.Unlock()
	const key = "alipay_trade_fastpay_refund_query_response"
	switch {
	case !known && !ok:
		g.answerAs(w, key, map[string]string{"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"})
	case !ok:
		g.answerAs(w, key, map[string]string{"code": "10000", "msg": "Success"})
	default:
		fields := map[string]string{"code": "10000", "msg": "Success", "out_trade_no": biz.OutTradeNo, "trade_no": t.TradeNo, "out_request_no": r.OutRequestNo,
			"total_amount": t.TotalAmount, "refund_amount": r.RefundAmount, "refund_status": r.RefundStatus}
		if slices.Contains(biz.QueryOptions, "gmt_refund_pay") {
			fields["gmt_refund_pay"] = r.GmtRefundPay
		}
		g.answerAs(w, key, fields)
	}
}

// answer writes {"alipay_trade_query_response":<obj>,"sign":<sig over obj's text>}.
func (g *AlipayGateway) answer(w http.ResponseWriter, fields map[string]string) {
	g.answerAs(w, "alipay_trade_query_response", fields)
}

// answerAs writes {"<key>":<obj>,"sign":<sig over obj's text>}.
func (g *AlipayGateway) answerAs(w http.ResponseWriter, key string, fields map[string]string) {
	for k, v := range fields {
		if v == "" {
			delete(fields, k)
		}
	}
	obj, _ := json.Marshal(fields)
	sum := sha256.Sum256(obj)
	sig, _ := rsa.SignPKCS1v15(rand.Reader, g.alipayKey, crypto.SHA256, sum[:])
	w.Header().Set("Content-Type", "text/html;charset=utf-8") // as the gateway sends it
	w.Write([]byte(`{"` + key + `":` + string(obj) + `,"sign":"` + base64.StdEncoding.EncodeToString(sig) + `"}`))
}
