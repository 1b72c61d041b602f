package provider

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// WechatPayMerchant is one WeChat Pay merchant of the studio.
type WechatPayMerchant struct {
	MchID string `json:"mchid"`
	// APIv3Key is the 32-byte APIv3 key set in the merchant platform (a secret).
	APIv3Key string `json:"apiv3_key"`
	// AppIDs routes each app id paying into this merchant to the studio's game.
	AppIDs map[string]string `json:"app_ids"`
	// PlatformKeys maps Wechatpay-Serial values to the platform certificate or WeChat Pay
	// public key (PEM): several at once, for rotation.
	PlatformKeys map[string]string `json:"platform_keys"`
	// APIPrivateKey and APISerial are the merchant API certificate's private key (PEM, as
	// apiclient_key.pem) and serial number, needed only to query orders (补单). Secrets: never
	// logged.
	APIPrivateKey string `json:"api_private_key,omitempty"`
	APISerial     string `json:"api_serial,omitempty"`
	// APIBase is the APIv3 host for queries; empty: DefaultWechatPayAPI.
	APIBase string `json:"api_base,omitempty"`
}

// WechatPay verifies, decrypts and decodes WeChat Pay APIv3 payment and refund notifications
// (支付通知, 退款结果通知): both are signed and encrypted the same way, with the merchant's keys.
type WechatPay struct {
	bySerial  map[string]wechatKey
	merchants map[string]*wechatMerchant
	client    *http.Client
	now       func() time.Time
}

type wechatKey struct {
	key      *rsa.PublicKey
	merchant *wechatMerchant
}

type wechatMerchant struct {
	WechatPayMerchant
	aead  cipher.AEAD
	query *wechatQueryKeys // nil: this merchant cannot query orders
}

var _ Provider = (*WechatPay)(nil)

// WeChat Pay's header names.
const (
	HeaderWechatTimestamp = "Wechatpay-Timestamp"
	HeaderWechatNonce     = "Wechatpay-Nonce"
	HeaderWechatSignature = "Wechatpay-Signature"
	HeaderWechatSerial    = "Wechatpay-Serial"
)

// NewWechatPay checks every merchant's configuration.
func NewWechatPay(ms []WechatPayMerchant) (*WechatPay, error) {
	wp := &WechatPay{bySerial: map[string]wechatKey{}, merchants: map[string]*wechatMerchant{}, client: noRedirects, now: time.Now}
	for i, m := range ms {
		if m.MchID == "" || len(m.AppIDs) == 0 || len(m.PlatformKeys) == 0 {
			return nil, fmt.Errorf("PROVIDER_CONFIG wechatpay[%d]: mchid, app_ids and platform_keys are required", i)
		}
		if len(m.APIv3Key) != 32 {
			return nil, fmt.Errorf("PROVIDER_CONFIG wechatpay[%d] (%s): apiv3_key must be 32 bytes", i, m.MchID)
		}
		block, _ := aes.NewCipher([]byte(m.APIv3Key))
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		merchant := &wechatMerchant{WechatPayMerchant: m, aead: aead}
		if _, dup := wp.merchants[m.MchID]; dup {
			return nil, fmt.Errorf("PROVIDER_CONFIG wechatpay: mchid %s twice", m.MchID)
		}
		wp.merchants[m.MchID] = merchant
		if m.APIPrivateKey != "" || m.APISerial != "" {
			if m.APISerial == "" {
				return nil, fmt.Errorf("PROVIDER_CONFIG wechatpay[%d] (%s): api_private_key and api_serial go together", i, m.MchID)
			}
			priv, err := ParseRSAPrivateKey(m.APIPrivateKey)
			if err != nil {
				return nil, fmt.Errorf("PROVIDER_CONFIG wechatpay[%d] (%s): api_private_key: %w", i, m.MchID, err)
			}
			base := m.APIBase
			if base == "" {
				base = DefaultWechatPayAPI
			}
			if u, err := url.Parse(base); err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" || u.Path != "" {
				return nil, fmt.Errorf("PROVIDER_CONFIG wechatpay[%d] (%s): api_base must be a scheme and host", i, m.MchID)
			}
			merchant.query = &wechatQueryKeys{priv: priv, serial: m.APISerial, base: base}
		}
		for serial, pemKey := range m.PlatformKeys {
			key, err := ParseRSAPublicKey(pemKey)
			if err != nil {
				return nil, fmt.Errorf("PROVIDER_CONFIG wechatpay[%d] (%s): platform key %s: %w", i, m.MchID, serial, err)
			}
			if _, dup := wp.bySerial[serial]; dup {
				return nil, fmt.Errorf("PROVIDER_CONFIG wechatpay: serial %s twice", serial)
			}
			wp.bySerial[serial] = wechatKey{key: key, merchant: merchant}
		}
	}
	return wp, nil
}

// Name implements Provider.
func (*WechatPay) Name() string { return "wechatpay" }

// MediaType implements Provider.
func (*WechatPay) MediaType() string { return "application/json" }

// WechatSignMessage is what WeChat Pay signs: timestamp, nonce and body, each followed by \n.
func WechatSignMessage(timestamp, nonce string, body []byte) []byte {
	msg := make([]byte, 0, len(timestamp)+len(nonce)+len(body)+3)
	msg = append(msg, timestamp...)
	msg = append(msg, '\n')
	msg = append(msg, nonce...)
	msg = append(msg, '\n')
	msg = append(msg, body...)
	return append(msg, '\n')
}

type wechatEnvelope struct {
	ID           string `json:"id"`
	CreateTime   string `json:"create_time"`
	EventType    string `json:"event_type"`
	ResourceType string `json:"resource_type"`
	Resource     struct {
		Algorithm      string `json:"algorithm"`
		Ciphertext     string `json:"ciphertext"`
		AssociatedData string `json:"associated_data"`
		Nonce          string `json:"nonce"`
		OriginalType   string `json:"original_type"`
	} `json:"resource"`
}

type wechatTransaction struct {
	AppID         string `json:"appid"`
	MchID         string `json:"mchid"`
	OutTradeNo    string `json:"out_trade_no"`
	TransactionID string `json:"transaction_id"`
	TradeState    string `json:"trade_state"`
	SuccessTime   string `json:"success_time"`
	Amount        struct {
		Total    int64  `json:"total"`
		Currency string `json:"currency"`
	} `json:"amount"`
}

// verifySigned checks what WeChat Pay signs, a notification or an API answer: the
// Wechatpay-Serial names a configured platform key, Wechatpay-Timestamp is within 5 minutes of
// now, and Wechatpay-Signature verifies over timestamp, nonce and body. It returns the key and
// its serial.
func (wp *WechatPay) verifySigned(h http.Header, body []byte, now time.Time) (wechatKey, string, error) {
	serial := h.Get(HeaderWechatSerial)
	k, ok := wp.bySerial[serial]
	if !ok {
		return wechatKey{}, "", fmt.Errorf("Wechatpay-Serial %.64q is not a configured platform key", serial)
	}
	ts := h.Get(HeaderWechatTimestamp)
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return wechatKey{}, "", errors.New("Wechatpay-Timestamp is not a Unix time")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return wechatKey{}, "", fmt.Errorf("Wechatpay-Timestamp is %s from now, more than 5 minutes", d.Round(time.Second))
	}
	sig, err := base64.StdEncoding.DecodeString(h.Get(HeaderWechatSignature))
	if err != nil || len(sig) == 0 {
		return wechatKey{}, "", errors.New("Wechatpay-Signature is missing or not base64")
	}
	sum := sha256.Sum256(WechatSignMessage(ts, h.Get(HeaderWechatNonce), body))
	if err := rsa.VerifyPKCS1v15(k.key, crypto.SHA256, sum[:], sig); err != nil {
		return wechatKey{}, "", fmt.Errorf("signature verification failed (serial %s)", serial)
	}
	return k, serial, nil
}

// Parse implements Provider.
func (wp *WechatPay) Parse(h http.Header, body []byte, now time.Time) (relay.Result, error) {
	k, serial, err := wp.verifySigned(h, body, now)
	if err != nil {
		// WeChat Pay sends bad-signature probes on purpose: they must be refused.
		return relay.Result{}, refuse(http.StatusUnauthorized, "%v", err)
	}
	var env wechatEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		return relay.Result{}, refuse(http.StatusBadRequest, "malformed JSON envelope: %v", err)
	}
	if env.Resource.Algorithm != "AEAD_AES_256_GCM" {
		return relay.Result{}, refuse(http.StatusBadRequest, "resource.algorithm %.40q: want AEAD_AES_256_GCM", env.Resource.Algorithm)
	}
	ct, err := base64.StdEncoding.DecodeString(env.Resource.Ciphertext)
	if err != nil || len(env.Resource.Nonce) != k.merchant.aead.NonceSize() {
		return relay.Result{}, refuse(http.StatusBadRequest, "resource.ciphertext or nonce is malformed")
	}
	plain, err := k.merchant.aead.Open(nil, []byte(env.Resource.Nonce), ct, []byte(env.Resource.AssociatedData))
	if err != nil {
		return relay.Result{}, refuse(http.StatusBadRequest, "resource does not decrypt with merchant %s's APIv3 key", k.merchant.MchID)
	}
	// Which result this is (WeChat Pay APIv3 支付通知 and 退款结果通知): TRANSACTION.SUCCESS with
	// resource.original_type "transaction" is a payment; REFUND.SUCCESS, REFUND.ABNORMAL and
	// REFUND.CLOSED with original_type "refund" are a refund's outcome, and only SUCCESS means
	// the money went back. Any other verified event is acknowledged and logged.
	switch env.EventType {
	case "TRANSACTION.SUCCESS":
		return wp.transaction(k.merchant, serial, plain)
	case "REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED":
		if env.Resource.OriginalType != "" && env.Resource.OriginalType != "refund" {
			return relay.Result{}, refuse(http.StatusBadRequest, "event %s carries resource.original_type %.20q, want refund", env.EventType, env.Resource.OriginalType)
		}
		return wp.refund(k.merchant, serial, env.EventType, plain)
	}
	// Not one WeChat Pay documents for these notify URLs: refused, so that nothing unknown is
	// acknowledged unrecorded (invariant 7); WeChat retries, and the log says what it was.
	return relay.Result{}, refuse(http.StatusUnprocessableEntity, "event_type %.40q is not a payment or refund event payrelay knows", env.EventType)
}

func (wp *WechatPay) transaction(m *wechatMerchant, serial string, plain []byte) (relay.Result, error) {
	var tx wechatTransaction
	if err := json.Unmarshal(plain, &tx); err != nil {
		return relay.Result{}, refuse(http.StatusBadRequest, "decrypted resource is not a transaction: %v", err)
	}
	if tx.MchID != m.MchID {
		return relay.Result{}, refuse(http.StatusForbidden, "mchid %.40q is not the merchant of serial %s", tx.MchID, serial)
	}
	game, ok := m.AppIDs[tx.AppID]
	if !ok {
		// Verified with the merchant's keys: real money for an app our configuration forgot.
		return relay.Result{}, unrouted("appid %.40q of merchant %s maps to no game (PROVIDER_CONFIG wechatpay app_ids)", tx.AppID, tx.MchID)
	}
	// WeChat Pay APIv3 has no sandbox (the v2 仿真测试系统 does not serve APIv3): every
	// verified notification is production money.
	pay := relay.Payment{
		Provider: wp.Name(), Environment: relay.EnvProduction, Merchant: m.MchID, OrderID: tx.OutTradeNo, TransactionID: tx.TransactionID, AmountMinor: tx.Amount.Total,
		Currency: tx.Amount.Currency, AppID: tx.AppID, Game: game,
	}
	if pay.Currency == "" {
		pay.Currency = "CNY"
	}
	if tx.TradeState != "SUCCESS" {
		kind := "trade_state " + tx.TradeState
		reason, listed := NotRelayed[wp.Name()][kind]
		if !listed {
			return relay.Result{}, refuse(http.StatusUnprocessableEntity, "trade_state %.20q is unknown", tx.TradeState)
		}
		return relay.Result{Payment: pay, Note: &relay.Note{Kind: kind, Reason: reason + ": not relayed"}}, nil
	}
	paidAt, err := time.Parse(time.RFC3339, tx.SuccessTime)
	if err != nil {
		return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "paid_at", Reason: "success_time is not RFC 3339"}
	}
	pay.PaidAt = paidAt
	r := relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay}
	if err := r.Validate(); err != nil {
		return relay.Result{}, asRefusal(err)
	}
	return r, nil
}

// wechatRefund is the decrypted resource of a refund notification (退款结果通知). It names no
// app id: a refund takes its app from the payment payrelay stored, or from the merchant's only
// app.
type wechatRefund struct {
	MchID         string `json:"mchid"`
	OutTradeNo    string `json:"out_trade_no"`
	TransactionID string `json:"transaction_id"`
	OutRefundNo   string `json:"out_refund_no"`
	RefundID      string `json:"refund_id"`
	RefundStatus  string `json:"refund_status"`
	SuccessTime   string `json:"success_time"`
	Amount        struct {
		Total       int64  `json:"total"`
		Refund      int64  `json:"refund"`
		PayerTotal  int64  `json:"payer_total"`
		PayerRefund int64  `json:"payer_refund"`
		Currency    string `json:"currency"`
	} `json:"amount"`
}

func (wp *WechatPay) refund(m *wechatMerchant, serial, event string, plain []byte) (relay.Result, error) {
	var rf wechatRefund
	if err := json.Unmarshal(plain, &rf); err != nil {
		return relay.Result{}, refuse(http.StatusBadRequest, "decrypted resource is not a refund: %v", err)
	}
	if rf.MchID != m.MchID {
		return relay.Result{}, refuse(http.StatusForbidden, "mchid %.40q is not the merchant of serial %s", rf.MchID, serial)
	}
	pay := relay.Payment{
		Provider: wp.Name(), Environment: relay.EnvProduction, Merchant: m.MchID, OrderID: rf.OutTradeNo, TransactionID: rf.TransactionID,
		AmountMinor: rf.Amount.Total, Currency: rf.Amount.Currency,
	}
	if pay.Currency == "" {
		pay.Currency = "CNY" // the refund notification's amount carries no currency: WeChat Pay settles CNY
	}
	if len(m.AppIDs) == 1 {
		for app, game := range m.AppIDs {
			pay.AppID, pay.Game = app, game
		}
	}
	if event != "REFUND.SUCCESS" || rf.RefundStatus != "SUCCESS" {
		// The money did not go back (ABNORMAL: the refund failed, e.g. the user's card is
		// closed; CLOSED: it was closed): an operator must act, the game server must not revoke.
		return relay.Result{Payment: pay, Note: &relay.Note{Kind: fmt.Sprintf("%.20s", event), RefundID: rf.RefundID, Alert: true,
			Reason: fmt.Sprintf("refund %.64s (%.64s) of %d ended %.20s: not relayed", rf.RefundID, rf.OutRefundNo, rf.Amount.Refund, rf.RefundStatus)}}, nil
	}
	at, err := time.Parse(time.RFC3339, rf.SuccessTime)
	if err != nil {
		return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "refunded_at", Reason: "success_time is not RFC 3339"}
	}
	r := relay.Result{Type: relay.TypePaymentRefunded, Payment: pay, Refund: &relay.RefundFacts{
		ID: rf.RefundID, MerchantRefundNo: rf.OutRefundNo, AmountMinor: rf.Amount.Refund, RefundedAt: at,
	}}
	if err := r.Validate(); err != nil {
		return relay.Result{}, asRefusal(err)
	}
	return r, nil
}

// Ack implements Provider: 204, which WeChat Pay takes as received.
func (*WechatPay) Ack(w http.ResponseWriter, _ relay.IngestResult) {
	w.WriteHeader(http.StatusNoContent)
}

// Refuse implements Provider: {"code":"FAIL","message":...} with a 4xx or 5xx, so WeChat Pay
// retries on its own ladder.
func (*WechatPay) Refuse(w http.ResponseWriter, r *Refusal) {
	msg := "失败"
	if r.Code < 500 {
		msg = "refused: " + http.StatusText(r.Code)
	}
	writeJSON(w, r.Code, struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{"FAIL", msg})
}
