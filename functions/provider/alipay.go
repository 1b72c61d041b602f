package provider

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/payrelay/payrelay/functions/relay"
)

// AlipayApp is one Alipay application of the studio.
type AlipayApp struct {
	AppID string `json:"app_id"`
	// PublicKey is the Alipay public key (not the app's own) as the console gives it: a PEM
	// block or the bare base64 of the key.
	PublicKey string `json:"public_key"`
	// SellerID, if set, must match the notification's seller_id.
	SellerID string `json:"seller_id,omitempty"`
	// Game is the studio's game this app sells for: its notifications go to that game.
	Game string `json:"game"`
	// PrivateKey is the application's own private key (Alipay's key tool writes it: PEM or bare
	// base64 PKCS#8), needed only to query orders (补单). A secret: never logged.
	PrivateKey string `json:"private_key,omitempty"`
	// Gateway is the OpenAPI gateway for queries; empty: DefaultAlipayGateway, or
	// AlipaySandboxGateway for a sandbox app.
	Gateway string `json:"gateway,omitempty"`
	// Environment is "sandbox" for an app of Alipay's sandbox (开放平台沙箱: its own app id,
	// keys and gateway); empty or "production" otherwise. Every notification of a sandbox app
	// is a sandbox payment: Alipay's notifications carry no environment of their own, so the
	// app is the provider's signal. An app on the sandbox gateway must say so.
	Environment string `json:"environment,omitempty"`
}

// AlipaySandboxGateway is the gateway of Alipay's sandbox (the 开放平台 console's 沙箱应用 page
// gives it; openapi.alipaydev.com before 2022 is the same sandbox, still found in old configs).
const AlipaySandboxGateway = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"

// alipaySandboxHosts are the sandbox's gateway hosts, the current and the former.
var alipaySandboxHosts = []string{"openapi-sandbox.dl.alipaydev.com", "openapi.alipaydev.com"}

// Alipay verifies and decodes Alipay's asynchronous notifications (异步通知).
type Alipay struct {
	apps    map[string]alipayApp
	client  *http.Client
	now     func() time.Time
	gateway string
}

type alipayApp struct {
	AlipayApp
	env  relay.Environment
	key  *rsa.PublicKey
	priv *rsa.PrivateKey // nil: this app cannot query orders
}

var _ Provider = (*Alipay)(nil)

// shanghai is Alipay's clock: its times carry no zone and are China Standard Time.
var shanghai = time.FixedZone("CST", 8*3600)

// NewAlipay checks every app's configuration and parses its key.
func NewAlipay(apps []AlipayApp) (*Alipay, error) {
	a := &Alipay{apps: map[string]alipayApp{}, now: time.Now, gateway: DefaultAlipayGateway, client: noRedirects}
	for i, app := range apps {
		if app.AppID == "" || app.Game == "" {
			return nil, fmt.Errorf("PROVIDER_CONFIG alipay[%d]: app_id and game are required", i)
		}
		key, err := ParseRSAPublicKey(app.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("PROVIDER_CONFIG alipay[%d] (%s): public_key: %w", i, app.AppID, err)
		}
		if _, dup := a.apps[app.AppID]; dup {
			return nil, fmt.Errorf("PROVIDER_CONFIG alipay: app_id %s twice", app.AppID)
		}
		aa := alipayApp{AlipayApp: app, key: key}
		if app.PrivateKey != "" {
			if aa.priv, err = ParseRSAPrivateKey(app.PrivateKey); err != nil {
				return nil, fmt.Errorf("PROVIDER_CONFIG alipay[%d] (%s): private_key: %w", i, app.AppID, err)
			}
		}
		aa.env = relay.EnvProduction
		if app.Environment != "" {
			if aa.env, err = relay.ParseEnvironment(app.Environment); err != nil {
				return nil, fmt.Errorf("PROVIDER_CONFIG alipay[%d] (%s): %w", i, app.AppID, err)
			}
		}
		if aa.env == relay.EnvSandbox && app.Gateway == "" {
			aa.Gateway = AlipaySandboxGateway
		}
		if app.Gateway != "" {
			u, err := url.Parse(app.Gateway)
			if err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
				return nil, fmt.Errorf("PROVIDER_CONFIG alipay[%d] (%s): gateway must be an http(s) URL", i, app.AppID)
			}
			if slices.Contains(alipaySandboxHosts, u.Hostname()) && aa.env != relay.EnvSandbox {
				return nil, fmt.Errorf("PROVIDER_CONFIG alipay[%d] (%s): gateway is Alipay's sandbox: set \"environment\": \"sandbox\" so its payments are never taken for production ones", i, app.AppID)
			}
		}
		a.apps[app.AppID] = aa
	}
	return a, nil
}

// ParseRSAPublicKey reads an RSA public key from a PEM block (PUBLIC KEY, RSA PUBLIC KEY or
// CERTIFICATE) or from bare base64 DER, as payment consoles hand them out.
func ParseRSAPublicKey(s string) (*rsa.PublicKey, error) {
	s = strings.TrimSpace(s)
	var der []byte
	if block, _ := pem.Decode([]byte(s)); block != nil {
		if block.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, err
			}
			k, ok := cert.PublicKey.(*rsa.PublicKey)
			if !ok {
				return nil, errors.New("certificate key is not RSA")
			}
			return k, nil
		}
		der = block.Bytes
	} else {
		var err error
		if der, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s), "")); err != nil {
			return nil, errors.New("neither PEM nor base64")
		}
	}
	if k, err := x509.ParsePKIXPublicKey(der); err == nil {
		if rk, ok := k.(*rsa.PublicKey); ok {
			return rk, nil
		}
		return nil, errors.New("key is not RSA")
	}
	k, err := x509.ParsePKCS1PublicKey(der)
	if err != nil {
		return nil, errors.New("not an RSA public key")
	}
	return k, nil
}

// Name implements Provider.
func (*Alipay) Name() string { return "alipay" }

// MediaType implements Provider.
func (*Alipay) MediaType() string { return "application/x-www-form-urlencoded" }

// decoderFor returns a decoder from an Alipay charset to UTF-8; nil for UTF-8.
func decoderFor(charset string) (func([]byte) ([]byte, error), error) {
	switch strings.ToLower(charset) {
	case "", "utf-8", "utf8":
		return nil, nil
	case "gbk", "gb2312", "gb18030":
		d := simplifiedchinese.GB18030.NewDecoder()
		return func(b []byte) ([]byte, error) { return d.Bytes(b) }, nil
	}
	return nil, fmt.Errorf("unsupported charset %q", charset)
}

// AlipaySignContent is the string Alipay signs a notification over: every parameter but sign
// and sign_type, empty values dropped, sorted by name, joined as k=v&k=v. Values are the raw
// bytes in the notification's charset.
func AlipaySignContent(params url.Values) string {
	return alipaySignContent(params, "sign", "sign_type")
}

// alipaySignContent joins params but those left out, empty values dropped, sorted by name.
func alipaySignContent(params url.Values, leftOut ...string) string {
	keys := make([]string, 0, len(params))
	for k, v := range params {
		if slices.Contains(leftOut, k) || len(v) == 0 || v[0] == "" {
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(params[k][0])
	}
	return b.String()
}

// Parse implements Provider.
func (a *Alipay) Parse(_ http.Header, body []byte, _ time.Time) (relay.Result, error) {
	params, err := url.ParseQuery(string(body))
	if err != nil {
		return relay.Result{}, refuse(http.StatusBadRequest, "malformed form body: %v", err)
	}
	for k, v := range params {
		if len(v) != 1 {
			return relay.Result{}, refuse(http.StatusBadRequest, "parameter %.40q appears %d times", k, len(v))
		}
	}
	decode, err := decoderFor(params.Get("charset"))
	if err != nil {
		return relay.Result{}, refuse(http.StatusBadRequest, "%v", err)
	}
	if st := params.Get("sign_type"); st != "RSA2" {
		return relay.Result{}, refuse(http.StatusBadRequest, "sign_type %.20q: only RSA2 is accepted", st)
	}
	appID := params.Get("app_id")
	app, ok := a.apps[appID]
	if !ok {
		return relay.Result{}, refuse(http.StatusForbidden, "app_id %.40q is not one of ours", appID)
	}
	sig, err := base64.StdEncoding.DecodeString(params.Get("sign"))
	if err != nil || len(sig) == 0 {
		return relay.Result{}, refuse(http.StatusUnauthorized, "sign is missing or not base64")
	}
	sum := sha256.Sum256([]byte(AlipaySignContent(params)))
	if err := rsa.VerifyPKCS1v15(app.key, crypto.SHA256, sum[:], sig); err != nil {
		return relay.Result{}, refuse(http.StatusUnauthorized, "signature verification failed for app %s", appID)
	}
	// Verified: from here on, values are decoded to UTF-8.
	get := func(k string) (string, error) {
		v := params.Get(k)
		if decode != nil {
			b, err := decode([]byte(v))
			if err != nil {
				return "", err
			}
			v = string(b)
		}
		if !utf8.ValidString(v) {
			return "", fmt.Errorf("%s is not valid %s", k, params.Get("charset"))
		}
		return v, nil
	}
	if app.SellerID != "" {
		if seller, _ := get("seller_id"); seller != app.SellerID {
			return relay.Result{}, refuse(http.StatusForbidden, "seller_id %.40q is not ours", seller)
		}
	}
	return a.alipayResult(app, get)
}

// alipayResult maps a verified trade's fields, a notification's or a query answer's, to the
// result to ingest.
func (a *Alipay) alipayResult(app alipayApp, get func(string) (string, error)) (relay.Result, error) {
	appID := app.AppID
	var err error
	var f [9]string
	for i, k := range []string{"out_trade_no", "trade_no", "total_amount", "gmt_payment", "notify_time", "trade_status", "refund_fee", "gmt_refund", "out_biz_no"} {
		if f[i], err = get(k); err != nil {
			return relay.Result{}, refuse(http.StatusBadRequest, "%v", err)
		}
	}
	orderID, tradeNo, total, gmtPayment, notifyTime, status, refundFee, gmtRefund, outBizNo := f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]
	pay := relay.Payment{Provider: a.Name(), Environment: app.env, Merchant: appID, OrderID: orderID, TransactionID: tradeNo, Currency: "CNY",
		AppID: appID, Game: app.Game}
	note := func(kind, reason string) (relay.Result, error) {
		return relay.Result{Payment: pay, Note: &relay.Note{Kind: kind, Reason: reason}}, nil
	}
	// Which result this is, from trade_status and the refund fields (Alipay 异步通知 for
	// alipay.trade.*: refund_fee is "退款通知中，返回总退款金额", the cumulative refunded total;
	// out_biz_no "退款通知中返回退款申请的流水号"; gmt_refund the refund's time):
	//   TRADE_SUCCESS without refund_fee          the payment
	//   TRADE_SUCCESS with refund_fee             a partial refund
	//   TRADE_CLOSED with refund_fee              a full refund (the trade closes)
	//   TRADE_CLOSED without refund_fee           closed unpaid: noted, not relayed
	//   TRADE_FINISHED                            the payment (the refund period ended); its
	//                                             refund fields repeat earlier refunds, so they
	//                                             are not read as a new one
	//   WAIT_BUYER_PAY                            unpaid: noted, not relayed
	refunded := refundFee != "" && strings.Trim(refundFee, "0.") != ""
	var typ relay.Type
	switch {
	case status == "TRADE_SUCCESS" && !refunded, status == "TRADE_FINISHED":
		typ = relay.TypePaymentSucceeded
	case status == "TRADE_SUCCESS" || status == "TRADE_CLOSED" && refunded:
		typ = relay.TypePaymentRefunded
	case status == "TRADE_CLOSED":
		return note("TRADE_CLOSED", "closed unpaid (no refund_fee): not relayed")
	case status == "WAIT_BUYER_PAY":
		return note("WAIT_BUYER_PAY", "trade created, not paid: not relayed")
	default:
		return relay.Result{}, refuse(http.StatusUnprocessableEntity, "trade_status %.40q is unknown", status)
	}
	if pay.AmountMinor, err = relay.ParseAmount(total, "CNY"); err != nil {
		return relay.Result{}, asRefusal(err)
	}
	if gmtPayment != "" || typ == relay.TypePaymentSucceeded {
		paidText := gmtPayment
		if paidText == "" {
			paidText = notifyTime
		}
		if pay.PaidAt, err = parseAlipayTime(paidText); err != nil {
			return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "paid_at", Reason: "gmt_payment is not yyyy-MM-dd HH:mm:ss"}
		}
	}
	r := relay.Result{Type: typ, Payment: pay}
	if typ == relay.TypePaymentRefunded {
		cum, err := relay.ParseAmount(refundFee, "CNY")
		if err != nil {
			fe := asRefusal(err)
			fe.Field, fe.Reason = "refund_fee", "refund_fee: "+fe.Reason
			return relay.Result{}, fe
		}
		at := gmtRefund
		if at == "" {
			at = notifyTime
		}
		refundedAt, err := parseAlipayTime(at)
		if err != nil {
			return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "refunded_at", Reason: "gmt_refund is not yyyy-MM-dd HH:mm:ss[.S]"}
		}
		// out_biz_no names the refund request. Without it (a refund made in the merchant
		// console may carry none) the cumulative total names it: it grows with every refund.
		id := outBizNo
		if id == "" {
			id = fmt.Sprintf("refund_fee-%d", cum)
		}
		r.Refund = &relay.RefundFacts{ID: id, MerchantRefundNo: outBizNo, CumulativeMinor: cum, RefundedAt: refundedAt}
	}
	if err := r.Validate(); err != nil {
		return relay.Result{}, asRefusal(err)
	}
	return r, nil
}

// parseAlipayTime reads Alipay's "yyyy-MM-dd HH:mm:ss", with the fraction gmt_refund may
// carry (".S"), in China Standard Time.
func parseAlipayTime(s string) (time.Time, error) {
	return time.ParseInLocation("2006-01-02 15:04:05.999999999", s, shanghai)
}

// Ack implements Provider: exactly the 7 bytes "success", which stop Alipay's retries.
func (*Alipay) Ack(w http.ResponseWriter, _ relay.IngestResult) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "success")
}

// Refuse implements Provider: "failure" with a non-2xx status, so Alipay retries or gives up
// per its own ladder; the reason goes to our logs only.
func (*Alipay) Refuse(w http.ResponseWriter, r *Refusal) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(r.Code)
	io.WriteString(w, "failure")
}
