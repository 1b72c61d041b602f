package functions

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

const (
	aliApp  = providertest.AlipayAppID
	wxMch   = providertest.WechatMchID
	wxApp   = providertest.WechatAppID
	wxSer   = providertest.WechatSerial
	wxAPIv3 = providertest.APIv3Key
)

var (
	pkOnce          sync.Once
	aliKey, platKey *rsa.PrivateKey
)

// withProviders adds Alipay and WeChat Pay to a fixture, with keys generated once.
func withProviders(t testing.TB, f *fixture) *fixture {
	t.Helper()
	pkOnce.Do(func() {
		aliKey, _ = rsa.GenerateKey(rand.Reader, 2048)
		platKey, _ = rsa.GenerateKey(rand.Reader, 2048)
	})
	a, err := provider.NewAlipay([]provider.AlipayApp{{AppID: aliApp, PublicKey: providertest.PublicKeyPEM(aliKey), Game: "sword"}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := provider.NewWechatPay([]provider.WechatPayMerchant{{MchID: wxMch, APIv3Key: wxAPIv3,
		AppIDs: map[string]string{wxApp: "sword"}, PlatformKeys: map[string]string{wxSer: providertest.PublicKeyPEM(platKey)}}})
	if err != nil {
		t.Fatal(err)
	}
	f.h.Providers["alipay"], f.h.Providers["wechatpay"] = a, w
	return f
}

func alipayReq(body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/Ingest?provider=alipay", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	return r
}

func wechatReq(h http.Header, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/Ingest?provider=wechatpay", bytes.NewReader(body))
	r.Header = h.Clone()
	return r
}

func record(hf http.HandlerFunc, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	hf(w, r)
	return w
}

func TestAlipayAnswersAndOneChain(t *testing.T) {
	t.Parallel()
	f := withProviders(t, newFixture(t))
	success := providertest.SignAlipay(aliKey, providertest.AlipayFields(aliApp, "ali-1", "648.00", "TRADE_SUCCESS"))
	w := record(f.h.Ingest, alipayReq(success))
	if w.Code != 200 || w.Body.String() != "success" {
		t.Fatalf("valid notify answered %d %q, want 200 and exactly \"success\"", w.Code, w.Body.String())
	}
	finished := providertest.SignAlipay(aliKey, providertest.AlipayFields(aliApp, "ali-1", "648.00", "TRADE_FINISHED"))
	for _, body := range [][]byte{success, finished} {
		if w := record(f.h.Ingest, alipayReq(body)); w.Code != 200 || w.Body.String() != "success" {
			t.Errorf("repeat answered %d %q", w.Code, w.Body.String())
		}
	}
	if n := len(f.queue.Snapshot()); n != 1 || f.store.Len() != 1 {
		t.Errorf("%d tasks and %d payments after SUCCESS, SUCCESS, FINISHED; want one chain", n, f.store.Len())
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "ali-1"))
	if p == nil || p.AmountMinor != 64800 || p.Provider != "alipay" {
		t.Errorf("stored %+v", p)
	}
	closed := providertest.SignAlipay(aliKey, providertest.AlipayFields(aliApp, "ali-2", "6.00", "TRADE_CLOSED"))
	if w := record(f.h.Ingest, alipayReq(closed)); w.Code != 200 || w.Body.String() != "success" || f.store.Len() != 1 {
		t.Errorf("TRADE_CLOSED answered %d %q with %d payments; want success and nothing stored", w.Code, w.Body.String(), f.store.Len())
	}
}

func TestAlipayRefusalsStoreNothing(t *testing.T) {
	t.Parallel()
	f := withProviders(t, newFixture(t))
	wrongKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	cases := map[string]*http.Request{
		"wrong key":   alipayReq(providertest.SignAlipay(wrongKey, providertest.AlipayFields(aliApp, "ali-x", "6.00", "TRADE_SUCCESS"))),
		"unknown app": alipayReq(providertest.SignAlipay(aliKey, providertest.AlipayFields("2021000000000000", "ali-x", "6.00", "TRADE_SUCCESS"))),
		"json body": func() *http.Request {
			r := alipayReq([]byte(`{}`))
			r.Header.Set("Content-Type", "application/json")
			return r
		}(),
		"oversized": alipayReq(bytes.Repeat([]byte("a"), MaxIngestBody+1)),
	}
	for name, r := range cases {
		w := record(f.h.Ingest, r)
		if w.Code < 400 || w.Code >= 500 || w.Body.String() != "failure" {
			t.Errorf("%s: answered %d %q, want a 4xx and \"failure\"", name, w.Code, w.Body.String())
		}
	}
	if f.store.Len() != 0 || len(f.queue.Snapshot()) != 0 {
		t.Errorf("refusals stored %d payments and %d tasks", f.store.Len(), len(f.queue.Snapshot()))
	}
	f.store.Fail = func(string) error { return relay.ErrUnavailable }
	w := record(f.h.Ingest, alipayReq(providertest.SignAlipay(aliKey, providertest.AlipayFields(aliApp, "ali-y", "6.00", "TRADE_SUCCESS"))))
	if w.Code != 503 || w.Body.String() != "failure" {
		t.Errorf("store down: %d %q, want 503 \"failure\" so Alipay retries", w.Code, w.Body.String())
	}
}

func TestWechatAnswersAndOneChain(t *testing.T) {
	t.Parallel()
	f := withProviders(t, newFixture(t))
	h, body := providertest.WechatNotify(platKey, wxSer, wxAPIv3, "TRANSACTION.SUCCESS", providertest.WechatTransaction(wxMch, wxApp, "wx-1", 600), testNow)
	for range 3 {
		w := record(f.h.Ingest, wechatReq(h, body))
		if w.Code != http.StatusNoContent || w.Body.Len() != 0 {
			t.Fatalf("valid notify answered %d %q, want 204", w.Code, w.Body.String())
		}
	}
	if n := len(f.queue.Snapshot()); n != 1 {
		t.Errorf("%d tasks after 3 deliveries of one notify, want 1", n)
	}
	// A probe with a bad signature is refused in WeChat's error shape, storing nothing.
	probe := h.Clone()
	probe.Set(provider.HeaderWechatSignature, "cHJvYmU=")
	h2, body2 := providertest.WechatNotify(platKey, wxSer, wxAPIv3, "TRANSACTION.SUCCESS", providertest.WechatTransaction(wxMch, wxApp, "wx-2", 600), testNow)
	probe.Set(provider.HeaderWechatNonce, h2.Get(provider.HeaderWechatNonce))
	w := record(f.h.Ingest, wechatReq(probe, body2))
	if w.Code != 401 || !bytes.Contains(w.Body.Bytes(), []byte(`"code":"FAIL"`)) || f.store.Len() != 1 {
		t.Errorf("probe answered %d %s with %d payments; want 401 {\"code\":\"FAIL\"} and nothing stored", w.Code, w.Body.String(), f.store.Len())
	}
}

func TestAlipayRefundsRelayedInOrder(t *testing.T) {
	t.Parallel()
	f := withProviders(t, newFixture(t))
	send := func(fields map[string]string) *httptest.ResponseRecorder {
		return record(f.h.Ingest, alipayReq(providertest.SignAlipay(aliKey, fields)))
	}
	if w := send(providertest.AlipayFields(aliApp, "ali-r", "100.00", "TRADE_SUCCESS")); w.Body.String() != "success" {
		t.Fatalf("payment answered %d %q", w.Code, w.Body.String())
	}
	// A partial refund of 30, its repeat, a second partial bringing the total to 50, then the
	// full refund closing the trade: refund_fee is cumulative.
	for _, fields := range []map[string]string{
		providertest.AlipayRefundFields(aliApp, "ali-r", "100.00", "TRADE_SUCCESS", "30.00", "rf-1"),
		providertest.AlipayRefundFields(aliApp, "ali-r", "100.00", "TRADE_SUCCESS", "30.00", "rf-1"),
		providertest.AlipayRefundFields(aliApp, "ali-r", "100.00", "TRADE_SUCCESS", "50.00", "rf-2"),
		providertest.AlipayRefundFields(aliApp, "ali-r", "100.00", "TRADE_CLOSED", "100.00", "rf-3"),
	} {
		if w := send(fields); w.Code != 200 || w.Body.String() != "success" {
			t.Fatalf("refund %s answered %d %q", fields["out_biz_no"], w.Code, w.Body.String())
		}
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "ali-r"))
	var got []int64
	for _, n := range p.Notifications[1:] {
		got = append(got, n.Refund.AmountMinor)
	}
	if len(p.Notifications) != 4 || fmt.Sprint(got) != "[3000 2000 5000]" || p.RefundedMinor != 10000 {
		t.Fatalf("stored %d notifications, refunds %v, total %d; want 3000, 2000, 5000 = 10000", len(p.Notifications), got, p.RefundedMinor)
	}
	for _, n := range p.Notifications[1:] {
		if n.State != relay.StateHeld {
			t.Errorf("refund %s is %s while the payment is pending; want held", n.Refund.ID, n.State)
		}
	}
	// A refund beyond the payment is refused loudly, in Alipay's shape.
	if w := send(providertest.AlipayRefundFields(aliApp, "ali-r", "100.00", "TRADE_CLOSED", "100.01", "rf-4")); w.Code != 409 || w.Body.String() != "failure" {
		t.Errorf("over-refund answered %d %q, want 409 failure", w.Code, w.Body.String())
	}
	// Closed without refund_fee (closed unpaid) is acknowledged and not relayed.
	if w := send(providertest.AlipayFields(aliApp, "ali-r", "100.00", "TRADE_CLOSED")); w.Body.String() != "success" || len(f.store.Payment(p.ID).Notifications) != 4 {
		t.Errorf("closed unpaid answered %q; want success and no new notification", w.Body.String())
	}
}

func TestWechatRefundEvents(t *testing.T) {
	t.Parallel()
	f := withProviders(t, newFixture(t))
	notify := func(event string, resource any) *httptest.ResponseRecorder {
		h, body := providertest.WechatNotify(platKey, wxSer, wxAPIv3, event, resource, testNow)
		return record(f.h.Ingest, wechatReq(h, body))
	}
	if w := notify("TRANSACTION.SUCCESS", providertest.WechatTransaction(wxMch, wxApp, "wx-r", 600)); w.Code != 204 {
		t.Fatalf("payment answered %d", w.Code)
	}
	id := relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, "wx-r")
	for _, event := range []string{"REFUND.ABNORMAL", "REFUND.CLOSED"} {
		status := event[len("REFUND."):]
		if w := notify(event, providertest.WechatRefund(wxMch, "wx-r", "50300000"+status, 600, 100, status)); w.Code != 204 {
			t.Fatalf("%s answered %d", event, w.Code)
		}
	}
	p := f.store.Payment(id)
	if len(p.Notifications) != 1 || len(p.Notes) != 2 || p.RefundedMinor != 0 || !p.Notes[0].Alert {
		t.Fatalf("after ABNORMAL and CLOSED: %d notifications, notes %+v, refunded %d; want notes only", len(p.Notifications), p.Notes, p.RefundedMinor)
	}
	for range 2 {
		if w := notify("REFUND.SUCCESS", providertest.WechatRefund(wxMch, "wx-r", "503000001", 600, 250, "SUCCESS")); w.Code != 204 {
			t.Fatalf("REFUND.SUCCESS answered %d %s", w.Code, w.Body.String())
		}
	}
	p = f.store.Payment(id)
	if n := p.RefundByID("503000001"); len(p.Notifications) != 2 || n == nil || n.Refund.AmountMinor != 250 || n.Refund.MerchantRefundNo != "out-503000001" || p.AppID != wxApp {
		t.Fatalf("after REFUND.SUCCESS twice: %d notifications, refund %+v", len(p.Notifications), n)
	}
	if w := notify("REFUND.SUCCESS", providertest.WechatRefund(wxMch, "wx-r", "503000002", 600, 351, "SUCCESS")); w.Code != 409 || !bytes.Contains(w.Body.Bytes(), []byte(`"FAIL"`)) {
		t.Errorf("refund beyond the 350 remaining answered %d %s, want 409 FAIL", w.Code, w.Body.String())
	}
	// A refund of a payment never received goes out on its own, with the merchant's only app.
	if w := notify("REFUND.SUCCESS", providertest.WechatRefund(wxMch, "wx-unknown", "503000009", 600, 600, "SUCCESS")); w.Code != 204 {
		t.Fatalf("refund of an unknown payment answered %d %s", w.Code, w.Body.String())
	}
	alone := f.store.Payment(relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, "wx-unknown"))
	if alone == nil || alone.Paid() != nil || alone.AppID != wxApp || !alone.PaidAt.IsZero() || alone.Notifications[0].State != relay.StatePending {
		t.Errorf("refund of an unknown payment stored %+v", alone)
	}
}

func TestUnknownProvider(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := signed(validBody, testNow)
	r.URL.RawQuery = "provider=paypal"
	if code, _ := serve(f.h.Ingest, r); code != http.StatusNotFound || f.store.Len() != 0 {
		t.Errorf("unknown provider = %d, want 404", code)
	}
}

// FuzzIngest: no input to any provider gives a 5xx or a panic, and nothing refused is stored.
func FuzzIngest(f *testing.F) {
	f.Add("generic", "application/json", []byte(validBody))
	f.Add("alipay", "application/x-www-form-urlencoded", []byte("app_id=1&sign_type=RSA2&sign=AA=="))
	f.Add("wechatpay", "application/json", []byte(`{"resource":{"algorithm":"AEAD_AES_256_GCM"}}`))
	f.Add("generic", "application/json", []byte(`{"amount":"1e9","currency":"JPY"}`))
	f.Fuzz(func(t *testing.T, prov, contentType string, body []byte) {
		fx := withProviders(t, newFixtureQuiet(t))
		r := httptest.NewRequest(http.MethodPost, "/Ingest", bytes.NewReader(body))
		q := r.URL.Query()
		q.Set("provider", prov)
		r.URL.RawQuery = q.Encode()
		r.Header.Set("Content-Type", contentType)
		w := record(fx.h.Ingest, r)
		if w.Code >= 500 {
			t.Fatalf("%s answered %d to %q", prov, w.Code, body)
		}
		if w.Code >= 400 && fx.store.Len() != 0 {
			t.Fatalf("refused with %d but stored a payment", w.Code)
		}
	})
}
