package provider_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

// The string an OpenAPI request is signed over, built to 自行实现签名: sign left out, sign_type
// kept, empty values dropped, sorted by name, raw values joined k=v&k=v.
func TestAlipayRequestSignContentVector(t *testing.T) {
	params := url.Values{
		"app_id": {"2021004100000001"}, "method": {"alipay.trade.query"}, "format": {"JSON"},
		"charset": {"utf-8"}, "sign_type": {"RSA2"}, "timestamp": {"2026-11-24 20:00:00"}, "version": {"1.0"},
		"biz_content": {`{"out_trade_no":"20261124-0001"}`}, "sign": {"ignored"}, "notify_url": {""},
	}
	want := `app_id=2021004100000001&biz_content={"out_trade_no":"20261124-0001"}&charset=utf-8&format=JSON&method=alipay.trade.query&sign_type=RSA2&timestamp=2026-11-24 20:00:00&version=1.0`
	if got := provider.AlipayRequestSignContent(params); got != want {
		t.Fatalf("sign content\n got %s\nwant %s", got, want)
	}
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	sig, err := provider.SignAlipayRequest(key, params)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(sig)
	sum := sha256.Sum256([]byte(want))
	if err := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, sum[:], raw); err != nil {
		t.Fatalf("the signature does not verify over the documented string: %v", err)
	}
}

func TestParseRSAPrivateKeyForms(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	for name, s := range map[string]string{"pkcs8 pem": providertest.PrivateKeyPEM(key), "pkcs8 base64": providertest.PrivateKeyBase64(key)} {
		got, err := provider.ParseRSAPrivateKey(s)
		if err != nil || !got.Equal(key) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := provider.ParseRSAPrivateKey("not a key"); err == nil {
		t.Error("garbage accepted as a private key")
	}
}

type queryFixture struct {
	gw        *providertest.AlipayGateway
	ali       *provider.Alipay
	appKey    *rsa.PrivateKey
	alipayKey *rsa.PrivateKey
}

func newQueryFixture(t *testing.T, answerKey *rsa.PrivateKey) *queryFixture {
	t.Helper()
	f := &queryFixture{}
	f.appKey, _ = rsa.GenerateKey(rand.Reader, 2048)
	f.alipayKey, _ = rsa.GenerateKey(rand.Reader, 2048)
	if answerKey == nil {
		answerKey = f.alipayKey
	}
	f.gw = providertest.NewAlipayGateway(providertest.AlipayAppID, &f.appKey.PublicKey, answerKey)
	t.Cleanup(f.gw.Close)
	var err error
	f.ali, err = provider.NewAlipay([]provider.AlipayApp{{AppID: providertest.AlipayAppID, PublicKey: providertest.PublicKeyPEM(f.alipayKey),
		PrivateKey: providertest.PrivateKeyPEM(f.appKey), Gateway: f.gw.URL, Game: "sword"}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestAlipayQueryAnswers(t *testing.T) {
	f := newQueryFixture(t, nil)
	f.gw.SetTrade("paid-1", providertest.AlipayTrade{TradeNo: "2026112422001", TotalAmount: "6.48", TradeStatus: "TRADE_SUCCESS", SendPayDate: "2026-11-24 20:00:00"})
	f.gw.SetTrade("unpaid-1", providertest.AlipayTrade{TradeNo: "2026112422002", TotalAmount: "6.48", TradeStatus: "WAIT_BUYER_PAY"})
	ctx := context.Background()

	ans, err := f.ali.Query(ctx, providertest.AlipayAppID, "paid-1")
	if err != nil || ans.Reported != "TRADE_SUCCESS" || ans.Result == nil {
		t.Fatalf("paid: %+v %v", ans, err)
	}
	p := ans.Result.Payment
	if ans.Result.Type != relay.TypePaymentSucceeded || p.OrderID != "paid-1" || p.TransactionID != "2026112422001" || p.AmountMinor != 648 ||
		p.Game != "sword" || !p.PaidAt.Equal(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("paid: result %+v", ans.Result)
	}
	if ans, err := f.ali.Query(ctx, providertest.AlipayAppID, "unpaid-1"); err != nil || ans.Reported != "WAIT_BUYER_PAY" || ans.Result != nil {
		t.Errorf("unpaid: %+v %v, want reported and nothing to relay", ans, err)
	}
	if ans, err := f.ali.Query(ctx, providertest.AlipayAppID, "never"); err != nil || ans.Reported != "TRADE_NOT_EXIST" || ans.Result != nil {
		t.Errorf("unknown order: %+v %v, want TRADE_NOT_EXIST, not an error", ans, err)
	}
	// A gateway in trouble: retried within bounds.
	f.gw.FailNext(2)
	if ans, err := f.ali.Query(ctx, providertest.AlipayAppID, "paid-1"); err != nil || ans.Result == nil {
		t.Errorf("after two 502s: %+v %v, want the answer", ans, err)
	}
	f.gw.FailNext(10)
	if _, err := f.ali.Query(ctx, providertest.AlipayAppID, "paid-1"); err == nil || !strings.Contains(err.Error(), "502") {
		t.Errorf("a gateway down for good: %v, want the 502 reported", err)
	}
	// A paid trade is asked for its refund requested without a number too: two requests.
	if req, refused := f.gw.Counts(); refused != 0 || req != 4+4+4 {
		t.Errorf("gateway saw %d requests, refused %d; want 12 (4 answered; 2 failed, 2 answered; 4 failed), 0 refused", req, refused)
	}
	f.gw.FailNext(0)
	var qe *provider.QueryError
	if _, err := f.ali.Query(ctx, "2021000000000000", "paid-1"); !errors.As(err, &qe) {
		t.Errorf("an app not ours: %v", err)
	}
}

// A refunded trade queried: TRADE_CLOSED after payment is the payment and its refund; a partial
// refund is found by its request number; a refund request that did not succeed is not one.
func TestAlipayQueryRefundedTrades(t *testing.T) {
	f := newQueryFixture(t, nil)
	ctx := context.Background()
	// Refunded in full with the order number as the request number (a refund requested without one).
	f.gw.SetTrade("closed-1", providertest.AlipayTrade{TradeNo: "2026112422011", TotalAmount: "6.48", TradeStatus: "TRADE_CLOSED", SendPayDate: "2026-11-24 20:00:00"})
	f.gw.SetRefund("closed-1", providertest.AlipayRefund{OutRequestNo: "closed-1", RefundAmount: "6.48", RefundStatus: "REFUND_SUCCESS", GmtRefundPay: "2026-11-24 21:00:00"})
	ans, err := f.ali.Query(ctx, providertest.AlipayAppID, "closed-1")
	if err != nil || ans.Result == nil || ans.Result.Type != relay.TypePaymentSucceeded || len(ans.Refunds) != 1 {
		t.Fatalf("closed after payment: %+v %v; want the payment and its refund", ans, err)
	}
	if r := ans.Refunds[0].Refund; r.ID != "closed-1" || r.AmountMinor != 648 || !r.RefundedAt.Equal(time.Date(2026, 11, 24, 13, 0, 0, 0, time.UTC)) {
		t.Errorf("refund %+v", r)
	}
	// Refunded in full under request numbers payrelay does not know: the cumulative total.
	f.gw.SetTrade("closed-2", providertest.AlipayTrade{TradeNo: "2026112422012", TotalAmount: "30.00", TradeStatus: "TRADE_CLOSED", SendPayDate: "2026-11-24 20:00:00"})
	ans, err = f.ali.Query(ctx, providertest.AlipayAppID, "closed-2")
	if err != nil || ans.Result == nil || len(ans.Refunds) != 1 || ans.Refunds[0].Refund.ID != "refund_fee-3000" || ans.Refunds[0].Refund.CumulativeMinor != 3000 {
		t.Fatalf("closed under unknown numbers: %+v %v", ans, err)
	}
	// Closed unpaid: nothing.
	f.gw.SetTrade("closed-3", providertest.AlipayTrade{TradeNo: "2026112422013", TotalAmount: "30.00", TradeStatus: "TRADE_CLOSED"})
	if ans, err := f.ali.Query(ctx, providertest.AlipayAppID, "closed-3"); err != nil || ans.Result != nil || len(ans.Refunds) != 0 {
		t.Errorf("closed unpaid: %+v %v", ans, err)
	}
	// A partial refund, by its request number.
	f.gw.SetTrade("part-1", providertest.AlipayTrade{TradeNo: "2026112422014", TotalAmount: "30.00", TradeStatus: "TRADE_SUCCESS", SendPayDate: "2026-11-24 20:00:00"})
	f.gw.SetRefund("part-1", providertest.AlipayRefund{OutRequestNo: "rf-part-1", RefundAmount: "10.00", GmtRefundPay: "2026-11-24 22:00:00"})
	ans, err = f.ali.Query(ctx, providertest.AlipayAppID, "part-1")
	if err != nil || len(ans.Refunds) != 0 || ans.RefundsUnknown == "" {
		t.Errorf("a partly refunded trade without its numbers: %+v %v; want the payment and the refunds said unknown", ans, err)
	}
	ra, err := f.ali.QueryRefund(ctx, providertest.AlipayAppID, "part-1", "rf-part-1")
	if err != nil || ra.Result == nil || ra.Result.Refund.AmountMinor != 1000 || ra.Result.Refund.ID != "rf-part-1" || ra.Result.Payment.AmountMinor != 3000 {
		t.Errorf("refund by number: %+v %v", ra, err)
	}
	if ra, err := f.ali.QueryRefund(ctx, providertest.AlipayAppID, "part-1", "rf-none"); err != nil || ra.Result != nil || ra.Reported != "NOT_REFUNDED" {
		t.Errorf("a refund that never happened: %+v %v", ra, err)
	}
}

func TestAlipayQueryRefusals(t *testing.T) {
	// Answers signed by someone else than Alipay are not believed.
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	f := newQueryFixture(t, other)
	f.gw.SetTrade("paid-1", providertest.AlipayTrade{TradeNo: "t", TotalAmount: "6.48", TradeStatus: "TRADE_SUCCESS", SendPayDate: "2026-11-24 20:00:00"})
	var qe *provider.QueryError
	if ans, err := f.ali.Query(context.Background(), providertest.AlipayAppID, "paid-1"); !errors.As(err, &qe) || !strings.Contains(qe.Reason, "signature") || ans.Result != nil {
		t.Errorf("forged answer: %+v %v", ans, err)
	}

	// Our request signed with a key Alipay does not hold for the app: refused by the gateway,
	// reported once, not retried.
	f = newQueryFixture(t, nil)
	wrong, _ := rsa.GenerateKey(rand.Reader, 2048)
	ali, err := provider.NewAlipay([]provider.AlipayApp{{AppID: providertest.AlipayAppID, PublicKey: providertest.PublicKeyPEM(f.alipayKey),
		PrivateKey: providertest.PrivateKeyPEM(wrong), Gateway: f.gw.URL, Game: "sword"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ali.Query(context.Background(), providertest.AlipayAppID, "paid-1"); !errors.As(err, &qe) || !strings.Contains(qe.Reason, "isv.invalid-signature") {
		t.Errorf("wrong app key: %v, want isv.invalid-signature reported", err)
	}
	if req, refused := f.gw.Counts(); req != 1 || refused != 1 {
		t.Errorf("gateway saw %d requests, refused %d; want 1 and 1", req, refused)
	}

	// No private key configured: said plainly, nothing sent.
	ali, _ = provider.NewAlipay([]provider.AlipayApp{{AppID: providertest.AlipayAppID, PublicKey: providertest.PublicKeyPEM(f.alipayKey), Gateway: f.gw.URL, Game: "sword"}})
	if _, err := ali.Query(context.Background(), providertest.AlipayAppID, "paid-1"); !errors.As(err, &qe) || !strings.Contains(qe.Reason, "private_key") {
		t.Errorf("no private key: %v", err)
	}
}

// The message an APIv3 request is signed over, built to 签名生成: a GET's empty body keeps its line.
func TestWechatRequestSignMessageVector(t *testing.T) {
	got := string(provider.WechatRequestSignMessage("GET", "/v3/pay/transactions/out-trade-no/1217752501201407033233368018?mchid=1230000109", "1554208460", "593BEC0C930BF1AFEB40B4A08C8FB242", nil))
	want := "GET\n/v3/pay/transactions/out-trade-no/1217752501201407033233368018?mchid=1230000109\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
	if got != want {
		t.Fatalf("sign message\n got %q\nwant %q", got, want)
	}
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	auth, err := provider.WechatAuthorization(key, "1230000109", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1", "GET", "/v3/x?mchid=1230000109", nil, time.Unix(1554208460, 0))
	if err != nil || !strings.HasPrefix(auth, `WECHATPAY2-SHA256-RSA2048 mchid="1230000109",nonce_str="`) ||
		!strings.HasSuffix(auth, `",timestamp="1554208460",serial_no="5157F09EFDC096DE15EBE81A47057A7232F1B8E1"`) {
		t.Fatalf("Authorization %q %v", auth, err)
	}
}

func newWechatQuery(t *testing.T, answerKey *rsa.PrivateKey, apiKey *rsa.PrivateKey) (*providertest.WechatAPI, *provider.WechatPay, *rsa.PrivateKey) {
	t.Helper()
	platform, _ := rsa.GenerateKey(rand.Reader, 2048)
	merchantAPI, _ := rsa.GenerateKey(rand.Reader, 2048)
	if answerKey == nil {
		answerKey = platform
	}
	if apiKey == nil {
		apiKey = merchantAPI
	}
	api := providertest.NewWechatAPI(providertest.WechatMchID, "API-SERIAL-1", &merchantAPI.PublicKey, answerKey, providertest.WechatSerial)
	t.Cleanup(api.Close)
	wp, err := provider.NewWechatPay([]provider.WechatPayMerchant{{MchID: providertest.WechatMchID, APIv3Key: providertest.APIv3Key,
		AppIDs: map[string]string{providertest.WechatAppID: "sword"}, PlatformKeys: map[string]string{providertest.WechatSerial: providertest.PublicKeyPEM(platform)},
		APIPrivateKey: providertest.PrivateKeyPEM(apiKey), APISerial: "API-SERIAL-1", APIBase: api.URL}})
	if err != nil {
		t.Fatal(err)
	}
	return api, wp, platform
}

func TestWechatQueryAnswers(t *testing.T) {
	api, wp, _ := newWechatQuery(t, nil, nil)
	api.SetTransaction(providertest.WechatTransaction(providertest.WechatMchID, providertest.WechatAppID, "wx-paid-1", 64800))
	unpaid := providertest.WechatTransaction(providertest.WechatMchID, providertest.WechatAppID, "wx-unpaid-1", 600)
	unpaid["trade_state"], unpaid["success_time"] = "NOTPAY", nil
	api.SetTransaction(unpaid)
	ctx := context.Background()
	ans, err := wp.Query(ctx, providertest.WechatMchID, "wx-paid-1")
	if err != nil || ans.Reported != "SUCCESS" || ans.Result == nil || ans.Result.Payment.AmountMinor != 64800 || ans.Result.Payment.Game != "sword" ||
		ans.Result.Payment.TransactionID != "4200001234202611240000000001" || ans.Result.Type != relay.TypePaymentSucceeded {
		t.Fatalf("paid: %+v %v", ans, err)
	}
	if ans, err := wp.Query(ctx, providertest.WechatMchID, "wx-unpaid-1"); err != nil || ans.Reported != "NOTPAY" || ans.Result != nil {
		t.Errorf("unpaid: %+v %v", ans, err)
	}
	if ans, err := wp.Query(ctx, providertest.WechatMchID, "never"); err != nil || ans.Reported != "ORDER_NOT_EXIST" || ans.Result != nil {
		t.Errorf("unknown: %+v %v, want ORDER_NOT_EXIST", ans, err)
	}
	if req, refused := api.Counts(); req != 3 || refused != 0 {
		t.Errorf("api saw %d requests, refused %d; want 3, 0", req, refused)
	}
}

// A refunded WeChat Pay trade queried: trade_state REFUND is the payment, and each refund is
// found by its out_refund_no, as it stands (SUCCESS relayed, PROCESSING not final).
func TestWechatQueryRefunds(t *testing.T) {
	api, wp, _ := newWechatQuery(t, nil, nil)
	refunded := providertest.WechatTransaction(providertest.WechatMchID, providertest.WechatAppID, "wx-ref-1", 64800)
	refunded["trade_state"] = "REFUND"
	api.SetTransaction(refunded)
	api.SetRefund(providertest.WechatRefundAnswer("wx-ref-1", "50300001", "rf-1", 64800, 10000, "SUCCESS", "2026-11-24T21:00:00+08:00"))
	api.SetRefund(providertest.WechatRefundAnswer("wx-ref-1", "50300002", "rf-2", 64800, 5000, "PROCESSING", ""))
	api.SetRefund(providertest.WechatRefundAnswer("wx-other", "50300003", "rf-3", 600, 600, "SUCCESS", "2026-11-24T21:00:00+08:00"))
	ctx := context.Background()
	ans, err := wp.Query(ctx, providertest.WechatMchID, "wx-ref-1")
	if err != nil || ans.Reported != "REFUND" || ans.Result == nil || ans.Result.Type != relay.TypePaymentSucceeded || ans.Result.Payment.AmountMinor != 64800 || ans.RefundsUnknown == "" {
		t.Fatalf("a refunded trade: %+v %v; want its payment, and its refunds said unknown", ans, err)
	}
	ra, err := wp.QueryRefund(ctx, providertest.WechatMchID, "wx-ref-1", "rf-1")
	if err != nil || ra.Reported != "SUCCESS" || !ra.Final || ra.Result == nil || ra.Result.Refund.ID != "50300001" || ra.Result.Refund.MerchantRefundNo != "rf-1" ||
		ra.Result.Refund.AmountMinor != 10000 || !ra.Result.Refund.RefundedAt.Equal(time.Date(2026, 11, 24, 13, 0, 0, 0, time.UTC)) || ra.Result.Payment.Game != "sword" {
		t.Errorf("a refund that succeeded: %+v %v", ra, err)
	}
	if ra, err := wp.QueryRefund(ctx, providertest.WechatMchID, "wx-ref-1", "rf-2"); err != nil || ra.Reported != "PROCESSING" || ra.Final || ra.Result != nil {
		t.Errorf("a refund processing: %+v %v", ra, err)
	}
	if ra, err := wp.QueryRefund(ctx, providertest.WechatMchID, "wx-ref-1", "rf-none"); err != nil || ra.Reported != "REFUND_NOT_EXIST" || ra.Result != nil {
		t.Errorf("no such refund: %+v %v", ra, err)
	}
	var qe *provider.QueryError
	if _, err := wp.QueryRefund(ctx, providertest.WechatMchID, "wx-ref-1", "rf-3"); !errors.As(err, &qe) {
		t.Errorf("another order's refund: %v, want refused", err)
	}
	if _, refused := api.Counts(); refused != 0 {
		t.Errorf("the API refused %d of our requests", refused)
	}
}

func TestWechatQueryRefusals(t *testing.T) {
	var qe *provider.QueryError
	// Answers not signed by the platform key are not believed, a 404 included.
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, wp, _ := newWechatQuery(t, other, nil)
	if _, err := wp.Query(context.Background(), providertest.WechatMchID, "never"); !errors.As(err, &qe) || !strings.Contains(qe.Reason, "signature") {
		t.Errorf("forged answer: %v", err)
	}
	// Our request signed with a key WeChat Pay does not hold: refused once, reported.
	wrong, _ := rsa.GenerateKey(rand.Reader, 2048)
	api, wp, _ := newWechatQuery(t, nil, wrong)
	if _, err := wp.Query(context.Background(), providertest.WechatMchID, "never"); !errors.As(err, &qe) || !strings.Contains(qe.Reason, "SIGN_ERROR") {
		t.Errorf("wrong API key: %v", err)
	}
	if req, refused := api.Counts(); req != 1 || refused != 1 {
		t.Errorf("api saw %d requests, refused %d; want 1 and 1", req, refused)
	}
	if _, err := wp.Query(context.Background(), "1900000000", "x"); !errors.As(err, &qe) {
		t.Errorf("a merchant not ours: %v", err)
	}
}
