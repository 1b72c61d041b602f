package provider

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// WechatPayMerchant is one WeChat Pay merchant of the studio.
type WechatPayMerchant struct {
	MchID string `json:"mchid"`
	// APIv3Key is the 32-byte APIv3 key set in the merchant platform (a secret).
	APIv3Key string `json:"apiv3_key"`
	// AppIDs maps each app id paying into this merchant to the studio's game.
	AppIDs map[string]string `json:"app_ids"`
	// PlatformKeys maps Wechatpay-Serial values to the platform certificate or WeChat Pay
	// public key (PEM): several at once, for rotation.
	PlatformKeys map[string]string `json:"platform_keys"`
}

// WechatPay verifies, decrypts and decodes WeChat Pay APIv3 payment notifications (支付通知).
type WechatPay struct {
	bySerial map[string]wechatKey
}

type wechatKey struct {
	key      *rsa.PublicKey
	merchant *wechatMerchant
}

type wechatMerchant struct {
	WechatPayMerchant
	aead cipher.AEAD
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
	wp := &WechatPay{bySerial: map[string]wechatKey{}}
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

// Parse implements Provider.
func (wp *WechatPay) Parse(h http.Header, body []byte, now time.Time) (relay.Payment, bool, error) {
	serial := h.Get(HeaderWechatSerial)
	k, ok := wp.bySerial[serial]
	if !ok {
		return relay.Payment{}, false, refuse(http.StatusUnauthorized, "Wechatpay-Serial %.64q is not a configured platform key", serial)
	}
	ts := h.Get(HeaderWechatTimestamp)
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return relay.Payment{}, false, refuse(http.StatusUnauthorized, "Wechatpay-Timestamp is not a Unix time")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return relay.Payment{}, false, refuse(http.StatusUnauthorized, "Wechatpay-Timestamp is %s from now, more than 5 minutes", d.Round(time.Second))
	}
	sig, err := base64.StdEncoding.DecodeString(h.Get(HeaderWechatSignature))
	if err != nil || len(sig) == 0 {
		return relay.Payment{}, false, refuse(http.StatusUnauthorized, "Wechatpay-Signature is missing or not base64")
	}
	sum := sha256.Sum256(WechatSignMessage(ts, h.Get(HeaderWechatNonce), body))
	if err := rsa.VerifyPKCS1v15(k.key, crypto.SHA256, sum[:], sig); err != nil {
		// WeChat Pay sends such probes on purpose: they must be refused.
		return relay.Payment{}, false, refuse(http.StatusUnauthorized, "signature verification failed (serial %s)", serial)
	}
	var env wechatEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		return relay.Payment{}, false, refuse(http.StatusBadRequest, "malformed JSON envelope: %v", err)
	}
	if env.Resource.Algorithm != "AEAD_AES_256_GCM" {
		return relay.Payment{}, false, refuse(http.StatusBadRequest, "resource.algorithm %.40q: want AEAD_AES_256_GCM", env.Resource.Algorithm)
	}
	ct, err := base64.StdEncoding.DecodeString(env.Resource.Ciphertext)
	if err != nil || len(env.Resource.Nonce) != k.merchant.aead.NonceSize() {
		return relay.Payment{}, false, refuse(http.StatusBadRequest, "resource.ciphertext or nonce is malformed")
	}
	plain, err := k.merchant.aead.Open(nil, []byte(env.Resource.Nonce), ct, []byte(env.Resource.AssociatedData))
	if err != nil {
		return relay.Payment{}, false, refuse(http.StatusBadRequest, "resource does not decrypt with merchant %s's APIv3 key", k.merchant.MchID)
	}
	if env.EventType != "TRANSACTION.SUCCESS" {
		return relay.Payment{}, false, nil // verified, not a payment: acknowledged, not stored
	}
	var tx wechatTransaction
	if err := json.Unmarshal(plain, &tx); err != nil {
		return relay.Payment{}, false, refuse(http.StatusBadRequest, "decrypted resource is not a transaction: %v", err)
	}
	if tx.MchID != k.merchant.MchID {
		return relay.Payment{}, false, refuse(http.StatusForbidden, "mchid %.40q is not the merchant of serial %s", tx.MchID, serial)
	}
	game, ok := k.merchant.AppIDs[tx.AppID]
	if !ok {
		return relay.Payment{}, false, refuse(http.StatusForbidden, "appid %.40q is not one of merchant %s's apps", tx.AppID, tx.MchID)
	}
	if tx.TradeState != "SUCCESS" {
		return relay.Payment{}, false, nil
	}
	paidAt, err := time.Parse(time.RFC3339, tx.SuccessTime)
	if err != nil {
		return relay.Payment{}, false, &Refusal{Code: http.StatusUnprocessableEntity, Field: "paid_at", Reason: "success_time is not RFC 3339"}
	}
	p := relay.Payment{
		Provider: wp.Name(), OrderID: tx.OutTradeNo, TransactionID: tx.TransactionID, AmountMinor: tx.Amount.Total,
		Currency: tx.Amount.Currency, Status: relay.StatusPaid, PaidAt: paidAt, AppID: tx.AppID,
		Metadata: map[string]string{"game": game},
	}
	if p.Currency == "" {
		p.Currency = "CNY"
	}
	if err := p.Validate(); err != nil {
		return relay.Payment{}, false, asRefusal(err)
	}
	return p, true, nil
}

// Ack implements Provider: 204, which WeChat Pay takes as received.
func (*WechatPay) Ack(w http.ResponseWriter, _ string, _ bool) { w.WriteHeader(http.StatusNoContent) }

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
