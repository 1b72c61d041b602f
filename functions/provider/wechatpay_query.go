package provider

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// Order query on demand (补单), WeChat Pay APIv3: 商户订单号查询订单,
// GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={mchid}.
//
// Documents and the readings taken:
//   - 签名生成: the request is signed over "METHOD\nURL\ntimestamp\nnonce\nbody\n", URL the
//     path with its query string, body empty for a GET (its line is still there), SHA256 with
//     RSA (PKCS#1 v1.5) by the merchant's API private key; sent as
//     Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",timestamp="..",serial_no=".."
//     with serial_no the merchant API certificate's serial.
//   - 签名验证: every answer, errors included, is signed like a notification
//     (Wechatpay-Timestamp/Nonce/Signature/Serial over "timestamp\nnonce\nbody\n") with the
//     platform key; an answer that does not verify is not believed.
//   - 查询订单: 200 is the transaction (the same fields as the payment notification's decrypted
//     resource, here in plain text); 404 with code ORDER_NOT_EXIST means no such order (an
//     answer, not an error); other 4xx carry {"code","message"} and are reported. trade_state
//     REFUND ("转入退款") is a trade that was paid and then refunded: its payment is relayed,
//     and its refunds are found by their out_refund_no (APIv3 lists no refunds of an order).
//   - 查询单笔退款（通过商户退款单号）: GET /v3/refund/domestic/refunds/{out_refund_no}, signed and
//     verified the same way; 200 is the refund (refund_id, out_refund_no, out_trade_no,
//     status SUCCESS, CLOSED, PROCESSING or ABNORMAL, success_time, amount.refund: the refund
//     as requested, as its notification states it); 404 RESOURCE_NOT_EXISTS is no such refund.

// DefaultWechatPayAPI is WeChat Pay's APIv3 host.
const DefaultWechatPayAPI = "https://api.mch.weixin.qq.com"

// wechatQueryKeys are a merchant's keys for calling the API, parsed.
type wechatQueryKeys struct {
	priv   *rsa.PrivateKey
	serial string
	base   string
}

// Query asks WeChat Pay for order out_trade_no of merchant mchID.
func (wp *WechatPay) Query(ctx context.Context, mchID, orderID string) (QueryAnswer, error) {
	m, ok := wp.merchants[mchID]
	if !ok {
		return QueryAnswer{}, &QueryError{Reason: fmt.Sprintf("mchid %.40q is not one of ours", mchID)}
	}
	if m.query == nil {
		return QueryAnswer{}, &QueryError{Reason: fmt.Sprintf("merchant %s has no api_private_key and api_serial: order queries need the merchant's API key", mchID)}
	}
	if orderID == "" || len(orderID) > 32 {
		return QueryAnswer{}, &QueryError{Reason: "order_id must be 1 to 32 characters (out_trade_no)"}
	}
	path := "/v3/pay/transactions/out-trade-no/" + url.PathEscape(orderID) + "?mchid=" + url.QueryEscape(mchID)
	resp, body, err := wp.apiGet(ctx, m, path, MaxQueryAnswer, 10*time.Second)
	if err != nil {
		return QueryAnswer{}, err
	}
	serial, err := wp.verifyAnswer(m, resp.Header, body)
	if err != nil {
		return QueryAnswer{}, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		var e struct{ Code, Message string }
		if json.Unmarshal(body, &e) == nil && e.Code == "ORDER_NOT_EXIST" {
			return QueryAnswer{Reported: "ORDER_NOT_EXIST"}, nil
		}
		fallthrough
	default:
		var e struct{ Code, Message string }
		json.Unmarshal(body, &e)
		return QueryAnswer{}, &QueryError{Reason: fmt.Sprintf("wechat pay refused the query: HTTP %d %.40s %.80s", resp.StatusCode, e.Code, e.Message)}
	}
	var tx map[string]any
	if err := json.Unmarshal(body, &tx); err != nil {
		return QueryAnswer{}, &QueryError{Reason: "wechat pay's answer is not a transaction"}
	}
	reported, _ := tx["trade_state"].(string)
	if reported == "REFUND" {
		// Paid, then refunded: the payment is read as its TRANSACTION.SUCCESS was.
		tx["trade_state"] = "SUCCESS"
		body, _ = json.Marshal(tx)
	}
	res, err := wp.transaction(m, serial, body)
	if err != nil {
		return QueryAnswer{}, &QueryError{Reason: "wechat pay's answer: " + err.Error()}
	}
	ans := QueryAnswer{Reported: reported}
	if res.Note == nil {
		ans.Result = &res
	}
	if reported == "REFUND" {
		ans.RefundsUnknown = "wechat pay names no refund of an order: give the refunds' out_refund_no to find them"
	}
	return ans, nil
}

// QueryRefund asks WeChat Pay for refund outRefundNo of order orderID of merchant mchID.
func (wp *WechatPay) QueryRefund(ctx context.Context, mchID, orderID, outRefundNo string) (RefundAnswer, error) {
	m, ok := wp.merchants[mchID]
	if !ok || m.query == nil {
		return RefundAnswer{}, &QueryError{Reason: fmt.Sprintf("mchid %.40q is not one of ours with api_private_key", mchID)}
	}
	if outRefundNo == "" || len(outRefundNo) > 64 {
		return RefundAnswer{}, &QueryError{Reason: "out_refund_no must be 1 to 64 characters"}
	}
	resp, body, err := wp.apiGet(ctx, m, "/v3/refund/domestic/refunds/"+url.PathEscape(outRefundNo), MaxQueryAnswer, 10*time.Second)
	if err != nil {
		return RefundAnswer{}, err
	}
	serial, err := wp.verifyAnswer(m, resp.Header, body)
	if err != nil {
		return RefundAnswer{}, err
	}
	var e struct{ Code, Message string }
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		if json.Unmarshal(body, &e) == nil && e.Code == "RESOURCE_NOT_EXISTS" {
			return RefundAnswer{Reported: "REFUND_NOT_EXIST", Final: true}, nil
		}
		fallthrough
	default:
		json.Unmarshal(body, &e)
		return RefundAnswer{}, &QueryError{Reason: fmt.Sprintf("wechat pay refused the refund query: HTTP %d %.40s %.80s", resp.StatusCode, e.Code, e.Message)}
	}
	var rf wechatRefund
	var status struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(body, &rf) != nil || json.Unmarshal(body, &status) != nil {
		return RefundAnswer{}, &QueryError{Reason: "wechat pay's refund answer is not a refund"}
	}
	if orderID != "" && rf.OutTradeNo != orderID {
		return RefundAnswer{}, &QueryError{Reason: fmt.Sprintf("wechat pay's refund %.64s is of order %.64q, not %.64q", outRefundNo, rf.OutTradeNo, orderID)}
	}
	rf.MchID, rf.RefundStatus = m.MchID, status.Status // the answer names neither as the notification does
	plain, _ := json.Marshal(rf)
	res, err := wp.refund(m, serial, "REFUND."+status.Status, plain)
	if err != nil {
		return RefundAnswer{}, &QueryError{Reason: "wechat pay's refund answer: " + err.Error()}
	}
	ans := RefundAnswer{Reported: status.Status, Final: status.Status != "PROCESSING"}
	if res.Type == relay.TypePaymentRefunded {
		ans.Result = &res
	}
	return ans, nil
}

// verifyAnswer checks an API answer's signature as a notification's (verifySigned), with one
// of this merchant's platform keys. It returns the key's serial.
func (wp *WechatPay) verifyAnswer(m *wechatMerchant, h http.Header, body []byte) (string, error) {
	k, serial, err := wp.verifySigned(h, body, wp.now())
	if err != nil {
		return "", &QueryError{Reason: "wechat pay's answer is not believed: " + err.Error()}
	}
	if k.merchant != m {
		return "", &QueryError{Reason: fmt.Sprintf("wechat pay's answer is signed with serial %.64q, not a platform key of merchant %s", serial, m.MchID)}
	}
	return serial, nil
}

// WechatRequestSignMessage is what a merchant signs for an APIv3 request: method, URL (path and
// query), timestamp, nonce and body, each followed by \n.
func WechatRequestSignMessage(method, pathAndQuery, timestamp, nonce string, body []byte) []byte {
	return append([]byte(method+"\n"+pathAndQuery+"\n"), WechatSignMessage(timestamp, nonce, body)...)
}

// WechatAuthorization builds an APIv3 request's Authorization header.
func WechatAuthorization(key *rsa.PrivateKey, mchID, serial, method, pathAndQuery string, body []byte, now time.Time) (string, error) {
	var n [16]byte
	rand.Read(n[:])
	nonce := hex.EncodeToString(n[:])
	ts := strconv.FormatInt(now.Unix(), 10)
	sum := sha256.Sum256(WechatRequestSignMessage(method, pathAndQuery, ts, nonce, body))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`WECHATPAY2-SHA256-RSA2048 mchid="%s",nonce_str="%s",signature="%s",timestamp="%s",serial_no="%s"`,
		mchID, nonce, base64.StdEncoding.EncodeToString(sig), ts, serial), nil
}
