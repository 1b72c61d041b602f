// Package providertest builds notifications the way Alipay and WeChat Pay send them, signed
// with keys a test generates, for the provider, handler and end-to-end tests. The deployed
// functions never import it.
package providertest

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/payrelay/payrelay/functions/provider"
)

// Sample merchant identifiers, in the providers' own formats, shared by every test that builds
// notifications.
const (
	AlipayAppID  = "2021004100000001"
	WechatMchID  = "1900000109"
	WechatAppID  = "wxd678efh567hg6787"
	WechatSerial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
	APIv3Key     = "a7cde1ef52b6d4dc4e2a2c0f6c9a2a0e" // 32 bytes
)

// PublicKeyPEM encodes key's public half as a PKIX PEM block, as consoles give it.
func PublicKeyPEM(key *rsa.PrivateKey) string {
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// PublicKeyBase64 encodes key's public half as bare base64 DER, as the Alipay console shows it.
func PublicKeyBase64(key *rsa.PrivateKey) string {
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	return base64.StdEncoding.EncodeToString(der)
}

// PrivateKeyPEM encodes key as a PKCS#8 PEM block, as Alipay's key tool writes an application key.
func PrivateKeyPEM(key *rsa.PrivateKey) string {
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// PrivateKeyBase64 encodes key as bare base64 PKCS#8 DER, the key tool's other form.
func PrivateKeyBase64(key *rsa.PrivateKey) string {
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	return base64.StdEncoding.EncodeToString(der)
}

// AlipayFields are the parameters of a TRADE_SUCCESS notification for order, as documented for
// the asynchronous notification (values in UTF-8; SignAlipay converts to the charset).
func AlipayFields(appID, order, amount, status string) map[string]string {
	return map[string]string{
		"gmt_create":       "2026-11-24 19:59:40",
		"charset":          "utf-8",
		"gmt_payment":      "2026-11-24 20:00:00",
		"notify_time":      "2026-11-24 20:00:01",
		"subject":          "月卡 648元 · 王者之剑",
		"buyer_id":         "2088102177846880",
		"invoice_amount":   amount,
		"version":          "1.0",
		"notify_id":        "2026112400222200001090000000000001",
		"fund_bill_list":   `[{"amount":"` + amount + `","fundChannel":"ALIPAYACCOUNT"}]`,
		"notify_type":      "trade_status_sync",
		"out_trade_no":     order,
		"total_amount":     amount,
		"trade_status":     status,
		"trade_no":         "2026112422001446881000000001",
		"auth_app_id":      appID,
		"receipt_amount":   amount,
		"point_amount":     "0.00",
		"app_id":           appID,
		"buyer_pay_amount": amount,
		"seller_id":        "2088102177846881",
		"passback_params":  "",
	}
}

// AlipayRefundFields are the parameters of a refund notification as Alipay documents them for
// the asynchronous notification: the trade's own fields (status TRADE_SUCCESS for a partial
// refund, TRADE_CLOSED for a full one) plus refund_fee, the cumulative refunded total, gmt_refund
// and out_biz_no, the merchant's refund request number ("" leaves it out).
func AlipayRefundFields(appID, order, total, status, refundFee, outBizNo string) map[string]string {
	f := AlipayFields(appID, order, total, status)
	f["refund_fee"] = refundFee
	f["gmt_refund"] = "2026-11-24 21:00:00.123"
	f["notify_time"] = "2026-11-24 21:00:01"
	if outBizNo != "" {
		f["out_biz_no"] = outBizNo
	}
	if status == "TRADE_CLOSED" {
		f["gmt_close"] = "2026-11-24 21:00:00"
	}
	return f
}

// SignAlipay encodes fields in their charset, signs them RSA2 with key, and returns the form
// body Alipay posts.
func SignAlipay(key *rsa.PrivateKey, fields map[string]string) []byte {
	raw := url.Values{}
	gbk := fields["charset"] == "gbk" || fields["charset"] == "GBK"
	for k, v := range fields {
		if gbk {
			b, err := simplifiedchinese.GBK.NewEncoder().Bytes([]byte(v))
			if err != nil {
				panic(err)
			}
			v = string(b)
		}
		raw.Set(k, v)
	}
	sum := sha256.Sum256([]byte(provider.AlipaySignContent(raw)))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		panic(err)
	}
	if _, ok := fields["sign_type"]; !ok {
		raw.Set("sign_type", "RSA2")
	}
	raw.Set("sign", base64.StdEncoding.EncodeToString(sig))
	return []byte(raw.Encode())
}

// WechatTransaction is the decrypted resource of a TRANSACTION.SUCCESS notification.
func WechatTransaction(mchID, appID, order string, fen int64) map[string]any {
	return map[string]any{
		"appid": appID, "mchid": mchID, "out_trade_no": order, "transaction_id": "4200001234202611240000000001",
		"trade_type": "JSAPI", "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "CMC",
		"attach": "王者之剑", "success_time": "2026-11-24T20:00:00+08:00",
		"payer":  map[string]any{"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
		"amount": map[string]any{"total": fen, "payer_total": fen, "currency": "CNY", "payer_currency": "CNY"},
	}
}

// WechatRefund is the decrypted resource of a refund notification (退款结果通知): refund of fen
// out of a payment of total, ending status (SUCCESS, ABNORMAL or CLOSED). It names no app id,
// as WeChat Pay documents it.
func WechatRefund(mchID, order, refundID string, total, fen int64, status string) map[string]any {
	r := map[string]any{
		"mchid": mchID, "out_trade_no": order, "transaction_id": "4200001234202611240000000001",
		"out_refund_no": "out-" + refundID, "refund_id": refundID, "refund_status": status,
		"user_received_account": "招商银行信用卡0403",
		"amount":                map[string]any{"total": total, "refund": fen, "payer_total": total, "payer_refund": fen},
	}
	if status == "SUCCESS" {
		r["success_time"] = "2026-11-24T21:00:00+08:00"
	}
	return r
}

// WechatNotify encrypts resource with apiv3Key and builds the envelope and headers WeChat Pay
// sends, signed with the platform key. A REFUND.* event carries original_type "refund".
func WechatNotify(platform *rsa.PrivateKey, serial, apiv3Key, eventType string, resource any, ts time.Time) (http.Header, []byte) {
	plain, _ := json.Marshal(resource)
	block, _ := aes.NewCipher([]byte(apiv3Key))
	aead, _ := cipher.NewGCM(block)
	nonce := "fdasflkja484"
	ad, original, summary := "transaction", "transaction", "支付成功"
	if strings.HasPrefix(eventType, "REFUND.") {
		ad, original, summary = "refund", "refund", "退款成功"
	}
	ct := aead.Seal(nil, []byte(nonce), plain, []byte(ad))
	env := map[string]any{
		"id": "EV-2018022511223320873", "create_time": "2026-11-24T20:00:01+08:00", "resource_type": "encrypt-resource",
		"event_type": eventType, "summary": summary,
		"resource": map[string]any{"original_type": original, "algorithm": "AEAD_AES_256_GCM",
			"ciphertext": base64.StdEncoding.EncodeToString(ct), "associated_data": ad, "nonce": nonce},
	}
	body, _ := json.Marshal(env)
	return SignWechat(platform, serial, body, ts), body
}

// SignWechat returns the headers of a WeChat Pay notification of body signed with platform.
func SignWechat(platform *rsa.PrivateKey, serial string, body []byte, ts time.Time) http.Header {
	tsText := strconv.FormatInt(ts.Unix(), 10)
	nonce := fmt.Sprintf("%X", sha256.Sum256(body))[:32]
	sum := sha256.Sum256(provider.WechatSignMessage(tsText, nonce, body))
	sig, err := rsa.SignPKCS1v15(rand.Reader, platform, crypto.SHA256, sum[:])
	if err != nil {
		panic(err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set(provider.HeaderWechatTimestamp, tsText)
	h.Set(provider.HeaderWechatNonce, nonce)
	h.Set(provider.HeaderWechatSerial, serial)
	h.Set(provider.HeaderWechatSignature, base64.StdEncoding.EncodeToString(sig))
	h.Set("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
	return h
}
