package provider

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/payrelay/payrelay/functions/relay"
)

// Order query on demand (补单), Alipay: alipay.trade.query through the OpenAPI gateway.
//
// Documents and the readings taken:
//   - 自行实现签名 (OpenAPI request signing): every request parameter but sign, empty values
//     dropped, sorted by name, joined k=v&k=v, raw (not URL-encoded) values; sign_type IS part of
//     the string here (it is left out only when verifying asynchronous notifications); signed
//     SHA256withRSA (PKCS#1 v1.5) with the application's private key, base64.
//   - 公共请求参数: app_id, method, format=JSON, charset=utf-8, sign_type=RSA2, timestamp
//     "yyyy-MM-dd HH:mm:ss" in China Standard Time, version=1.0, biz_content a JSON object;
//     posted as application/x-www-form-urlencoded.
//   - 同步返回验签: the answer is {"alipay_trade_query_response":{...},"sign":"..."}; the signature
//     covers the response object's JSON text exactly as sent (no re-serialization), verified with
//     the Alipay public key.
//   - alipay.trade.query: code 10000 with trade_status and the trade's facts (send_pay_date is
//     when it was paid); code 40004 with sub_code ACQ.TRADE_NOT_EXIST means the trade does not
//     exist (not paid, or not yet created): an answer, not an error. A refunded trade answers
//     TRADE_SUCCESS (partly refunded) or TRADE_CLOSED (in full) and names no refund; a
//     TRADE_CLOSED with send_pay_date was paid, so it is the payment and a refund of what
//     remains (reading taken: TRADE_CLOSED is "未付款交易超时关闭，或支付完成后全额退款", and
//     only the paid one has send_pay_date).
//   - alipay.trade.fastpay.refund.query (统一收单交易退款查询): biz_content out_trade_no and
//     out_request_no, the refund request number ("如果在退款请求时未传入，则该值为创建交易时的
//     商户订单号"), and query_options ["gmt_refund_pay"] for the refund's time. Code 10000 with
//     refund_amount and refund_status REFUND_SUCCESS (or no refund_status, for a refund made
//     with the synchronous alipay.trade.refund) is a refund that succeeded; code 10000 without
//     them is "退款请求未收到或者退款失败": not refunded. There is no API that lists a trade's
//     refunds, so payrelay asks for the numbers it knows: those a bill or an operator names,
//     and the order number itself (a refund requested without a number).
//
// The answer is read into the same fields as a notification and through the same mapping
// (alipayResult), so a trade found paid is ingested exactly as its notification would have been.

// DefaultAlipayGateway is Alipay's production OpenAPI gateway.
const DefaultAlipayGateway = "https://openapi.alipay.com/gateway.do"

// MaxQueryAnswer bounds what is read of a provider's answer to a query.
const MaxQueryAnswer = 64 << 10

// QueryAnswer is what a provider reported for an order, and the result to ingest when there is
// one.
type QueryAnswer struct {
	// Reported is the provider's own status, as it said it: "TRADE_SUCCESS", "TRADE_NOT_EXIST", ...
	Reported string
	// Result is what to ingest; nil when there is nothing to relay (not paid, or not found).
	Result *relay.Result
	// Refunds are the refunds found with the order (succeeded), oldest first, each a result
	// to ingest after Result. RefundsUnknown says that the provider reports the order refunded
	// but names no refund payrelay could query (give its refund numbers to find them).
	Refunds        []relay.Result
	RefundsUnknown string
}

// RefundAnswer is what a provider reported for one refund, and the result to ingest when it
// succeeded.
type RefundAnswer struct {
	// Reported is the provider's status: SUCCESS, PROCESSING, CLOSED, ABNORMAL (WeChat Pay),
	// REFUND_SUCCESS, NOT_REFUNDED (Alipay), or REFUND_NOT_EXIST.
	Reported string
	Result   *relay.Result
	// Final is false while the provider may still complete the refund (PROCESSING).
	Final bool
}

// QueryError is a query the provider refused or answered in a way we cannot trust (a bad
// signature, a rate limit, an error code): reported to the operator, not retried further.
type QueryError struct{ Reason string }

func (e *QueryError) Error() string { return e.Reason }

// Query asks Alipay for order out_trade_no of app appID. Network failures and 5xx are retried
// a bounded number of times; a refusal is a *QueryError.
func (a *Alipay) Query(ctx context.Context, appID, orderID string) (QueryAnswer, error) {
	app, ok := a.apps[appID]
	if !ok {
		return QueryAnswer{}, &QueryError{Reason: fmt.Sprintf("app_id %.40q is not one of ours", appID)}
	}
	if app.priv == nil {
		return QueryAnswer{}, &QueryError{Reason: fmt.Sprintf("app %s has no private_key: order queries need the application's private key", appID)}
	}
	if orderID == "" || len(orderID) > 64 {
		return QueryAnswer{}, &QueryError{Reason: "order_id must be 1 to 64 characters (out_trade_no)"}
	}
	raw, err := a.openAPI(ctx, app, "alipay.trade.query", map[string]any{"out_trade_no": orderID})
	if err != nil {
		return QueryAnswer{}, err
	}
	ans, closedPaid, err := a.readQueryAnswer(app, raw)
	if err != nil || ans.Result == nil || ans.Reported != "TRADE_CLOSED" && ans.Reported != "TRADE_SUCCESS" {
		return ans, err
	}
	// Its refunds: the one requested without a number (out_request_no is then the order
	// number), and, for a trade closed in full, whatever that leaves: the cumulative total,
	// named by it as its notification without out_biz_no would name it.
	ra, err := a.QueryRefund(ctx, appID, orderID, orderID)
	if err != nil {
		return QueryAnswer{}, err
	}
	var found int64
	if ra.Result != nil {
		ans.Refunds = append(ans.Refunds, *ra.Result)
		found = ra.Result.Refund.AmountMinor
	}
	if closedPaid && found < ans.Result.Payment.AmountMinor {
		total := ans.Result.Payment.AmountMinor
		r := relay.Result{Type: relay.TypePaymentRefunded, Payment: ans.Result.Payment, Refund: &relay.RefundFacts{
			ID: fmt.Sprintf("refund_fee-%d", total), CumulativeMinor: total,
			// Alipay's answer does not say when; the time payrelay learnt it stands in.
			RefundedAt: a.now().UTC()}}
		ans.Refunds = append(ans.Refunds, r)
	}
	if ans.Reported == "TRADE_SUCCESS" && len(ans.Refunds) == 0 {
		ans.RefundsUnknown = "alipay names no refund of a trade: give the refund request numbers (out_request_no) to find partial refunds"
	}
	return ans, nil
}

// QueryRefund asks Alipay for refund request outRequestNo of order orderID of app appID.
func (a *Alipay) QueryRefund(ctx context.Context, appID, orderID, outRequestNo string) (RefundAnswer, error) {
	app, ok := a.apps[appID]
	if !ok || app.priv == nil {
		return RefundAnswer{}, &QueryError{Reason: fmt.Sprintf("app_id %.40q is not one of ours with a private_key", appID)}
	}
	if orderID == "" || len(orderID) > 64 || outRequestNo == "" || len(outRequestNo) > 64 {
		return RefundAnswer{}, &QueryError{Reason: "order_id and the refund request number must be 1 to 64 characters"}
	}
	raw, err := a.openAPI(ctx, app, "alipay.trade.fastpay.refund.query", map[string]any{"out_trade_no": orderID, "out_request_no": outRequestNo,
		"query_options": []string{"gmt_refund_pay"}})
	if err != nil {
		return RefundAnswer{}, err
	}
	r, err := verifyAlipayAnswer(app, raw, "alipay_trade_fastpay_refund_query_response")
	if err != nil {
		return RefundAnswer{}, err
	}
	str := func(k string) string { s, _ := r[k].(string); return s }
	switch code := str("code"); {
	case code == "40004" && (str("sub_code") == "ACQ.TRADE_NOT_EXIST" || str("sub_code") == "TRADE_NOT_EXIST"):
		return RefundAnswer{Reported: "REFUND_NOT_EXIST", Final: true}, nil
	case code != "10000":
		return RefundAnswer{}, &QueryError{Reason: fmt.Sprintf("alipay refused the refund query: %.10s %.60s %.60s", code, str("sub_code"), str("sub_msg"))}
	}
	if str("refund_amount") == "" || str("refund_status") != "" && str("refund_status") != "REFUND_SUCCESS" {
		return RefundAnswer{Reported: "NOT_REFUNDED", Final: true}, nil
	}
	if str("out_trade_no") != "" && str("out_trade_no") != orderID {
		return RefundAnswer{}, &QueryError{Reason: "alipay's refund answer names another order"}
	}
	amount, err := relay.ParseAmount(str("refund_amount"), "CNY")
	if err != nil {
		return RefundAnswer{}, &QueryError{Reason: "alipay's refund answer: " + err.Error()}
	}
	total, _ := relay.ParseAmount(str("total_amount"), "CNY")
	at := a.now().UTC()
	if t := str("gmt_refund_pay"); t != "" {
		if at, err = parseAlipayTime(t); err != nil {
			return RefundAnswer{}, &QueryError{Reason: "alipay's refund answer: gmt_refund_pay is not yyyy-MM-dd HH:mm:ss"}
		}
	}
	res := relay.Result{Type: relay.TypePaymentRefunded, Payment: relay.Payment{Provider: a.Name(), Environment: app.env, Merchant: appID, OrderID: orderID,
		TransactionID: str("trade_no"), AmountMinor: total, Currency: "CNY", AppID: appID, Game: app.Game},
		Refund: &relay.RefundFacts{ID: outRequestNo, MerchantRefundNo: outRequestNo, AmountMinor: amount, RefundedAt: at}}
	if err := res.Validate(); err != nil {
		return RefundAnswer{}, &QueryError{Reason: "alipay's refund answer: " + err.Error()}
	}
	return RefundAnswer{Reported: "REFUND_SUCCESS", Result: &res, Final: true}, nil
}

// AlipayRequestParams are an OpenAPI request's common parameters (公共请求参数) and its
// biz_content, unsigned.
func AlipayRequestParams(appID, method string, biz map[string]any, now time.Time) url.Values {
	b, _ := json.Marshal(biz)
	return url.Values{
		"app_id": {appID}, "method": {method}, "format": {"JSON"}, "charset": {"utf-8"},
		"sign_type": {"RSA2"}, "timestamp": {now.In(shanghai).Format(time.DateTime)}, "version": {"1.0"},
		"biz_content": {string(b)},
	}
}

// openAPI calls an OpenAPI method for app, signed, with queryHTTP's timeout and bounded
// retries, and returns the answer's body (HTTP 200 only).
func (a *Alipay) openAPI(ctx context.Context, app alipayApp, method string, biz map[string]any) ([]byte, error) {
	params := AlipayRequestParams(app.AppID, method, biz, a.now())
	sig, err := SignAlipayRequest(app.priv, params)
	if err != nil {
		return nil, err
	}
	params.Set("sign", sig)
	gateway := app.Gateway
	if gateway == "" {
		gateway = a.gateway
	}
	resp, raw, err := queryHTTP(ctx, a.client, "alipay gateway", func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, gateway, strings.NewReader(params.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded;charset=utf-8")
		}
		return req, err
	})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &QueryError{Reason: fmt.Sprintf("alipay gateway answered HTTP %d", resp.StatusCode)}
	}
	return raw, nil
}

// queryHTTP sends one query request, built afresh for each try, with a timeout and bounded
// retries: a transport failure or a 5xx is retried 3 times (0.2 s, 0.4 s, 0.8 s); any other
// answer is returned, its body bounded.
func queryHTTP(ctx context.Context, client *http.Client, name string, build func(context.Context) (*http.Request, error)) (*http.Response, []byte, error) {
	return fetchHTTP(ctx, client, name, MaxQueryAnswer, 10*time.Second, build)
}

// fetchHTTP is queryHTTP with another bound on the body and on each try's time (a bill).
func fetchHTTP(ctx context.Context, client *http.Client, name string, limit int64, timeout time.Duration, build func(context.Context) (*http.Request, error)) (*http.Response, []byte, error) {
	var resp *http.Response
	var body []byte
	backoff := retry.WithMaxRetries(3, retry.NewExponential(200*time.Millisecond))
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		req, err := build(ctx)
		if err != nil {
			return err
		}
		r, err := client.Do(req)
		if err != nil {
			return retry.RetryableError(fmt.Errorf("%s: %w", name, err))
		}
		defer r.Body.Close()
		b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
		switch {
		case err != nil:
			return retry.RetryableError(fmt.Errorf("%s: reading the answer: %w", name, err))
		case r.StatusCode >= 500:
			return retry.RetryableError(fmt.Errorf("%s: HTTP %d", name, r.StatusCode))
		case int64(len(b)) > limit:
			return &QueryError{Reason: fmt.Sprintf("%s's answer is larger than %d bytes", name, limit)}
		}
		resp, body = r, b
		return nil
	})
	return resp, body, err
}

// noRedirects is the client of queries: the provider answers itself, and a request carries a
// signature that must not go elsewhere.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// readQueryAnswer verifies the answer's signature over the response object's text and maps it.
// closedPaid reports a TRADE_CLOSED trade that had been paid (refunded in full): its Result is
// the payment.
func (a *Alipay) readQueryAnswer(app alipayApp, raw []byte) (ans QueryAnswer, closedPaid bool, err error) {
	r, err := verifyAlipayAnswer(app, raw, "alipay_trade_query_response")
	if err != nil {
		return QueryAnswer{}, false, err
	}
	str := func(k string) string { s, _ := r[k].(string); return s }
	switch code := str("code"); {
	case code == "40004" && str("sub_code") == "ACQ.TRADE_NOT_EXIST":
		return QueryAnswer{Reported: "TRADE_NOT_EXIST"}, false, nil
	case code != "10000":
		return QueryAnswer{}, false, &QueryError{Reason: fmt.Sprintf("alipay refused the query: %.10s %.60s %.60s", code, str("sub_code"), str("sub_msg"))}
	}
	fields := url.Values{}
	for _, k := range []string{"out_trade_no", "trade_no", "total_amount", "trade_status"} {
		fields.Set(k, str(k))
	}
	fields.Set("gmt_payment", str("send_pay_date"))
	ans.Reported = fields.Get("trade_status")
	if ans.Reported == "TRADE_CLOSED" && str("send_pay_date") != "" {
		// Paid, then refunded in full: the payment is read as TRADE_SUCCESS would be.
		closedPaid = true
		fields.Set("trade_status", "TRADE_SUCCESS")
	}
	res, err := a.alipayResult(app, func(k string) (string, error) { return fields.Get(k), nil })
	if err != nil {
		return QueryAnswer{}, false, &QueryError{Reason: "alipay's answer: " + err.Error()}
	}
	if res.Note == nil {
		ans.Result = &res
	}
	return ans, closedPaid, nil
}

// verifyAlipayAnswer reads an OpenAPI answer {"<method>_response":{...},"sign":"..."}: the
// signature covers the response object's JSON text exactly as sent (同步返回验签), verified with
// the Alipay public key. It returns the response object's fields.
func verifyAlipayAnswer(app alipayApp, raw []byte, responseKey string) (map[string]any, error) {
	var env map[string]json.RawMessage
	if err := json.Unmarshal(raw, &env); err != nil || len(env[responseKey]) == 0 {
		return nil, &QueryError{Reason: "alipay's answer is not an " + responseKey}
	}
	var sign string
	json.Unmarshal(env["sign"], &sign)
	sig, err := base64.StdEncoding.DecodeString(sign)
	if err != nil || len(sig) == 0 {
		return nil, &QueryError{Reason: "alipay's answer is not signed"}
	}
	sum := sha256.Sum256(env[responseKey])
	if err := rsa.VerifyPKCS1v15(app.key, crypto.SHA256, sum[:], sig); err != nil {
		return nil, &QueryError{Reason: "alipay's answer failed signature verification"}
	}
	var r map[string]any
	if err := json.Unmarshal(env[responseKey], &r); err != nil {
		return nil, &QueryError{Reason: "alipay's answer is not a JSON object"}
	}
	return r, nil
}

// SignAlipayRequest signs an OpenAPI request's parameters (sign_type included, sign left out).
func SignAlipayRequest(key *rsa.PrivateKey, params url.Values) (string, error) {
	sum := sha256.Sum256([]byte(AlipayRequestSignContent(params)))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// AlipayRequestSignContent is the string an OpenAPI request is signed over: every parameter
// but sign (sign_type included), empty values dropped, sorted by name, k=v joined with &.
func AlipayRequestSignContent(params url.Values) string { return alipaySignContent(params, "sign") }

// ParseRSAPrivateKey reads an application private key as Alipay's key tool writes it: a PEM
// block (PKCS#8 or PKCS#1) or the bare base64 of PKCS#8 DER.
func ParseRSAPrivateKey(s string) (*rsa.PrivateKey, error) {
	der := []byte(nil)
	if b, _ := pem.Decode([]byte(s)); b != nil {
		der = b.Bytes
	} else {
		var err error
		if der, err = base64.StdEncoding.DecodeString(strings.TrimSpace(s)); err != nil {
			return nil, errors.New("neither PEM nor base64")
		}
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errors.New("not an RSA private key (PKCS#1 or PKCS#8)")
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("not an RSA private key")
	}
	return rk, nil
}
