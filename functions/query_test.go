package functions

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

func queryReq(body string, header ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/api/query", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	return r
}

func TestAdminOrderQuery(t *testing.T) {
	t.Parallel()
	f := withProviders(t, newFixture(t))
	appKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	gw := providertest.NewAlipayGateway(aliApp, &appKey.PublicKey, aliKey)
	defer gw.Close()
	a, err := provider.NewAlipay([]provider.AlipayApp{{AppID: aliApp, PublicKey: providertest.PublicKeyPEM(aliKey),
		PrivateKey: providertest.PrivateKeyPEM(appKey), Gateway: gw.URL, Game: "sword"}})
	if err != nil {
		t.Fatal(err)
	}
	f.h.Providers["alipay"] = a
	paid := providertest.AlipayTrade{TradeNo: "2026112422001446881000000001", TotalAmount: "648.00", TradeStatus: "TRADE_SUCCESS", SendPayDate: "2026-11-24 20:00:00"}
	gw.SetTrade("lost-1", paid) // paid, never notified
	later := paid
	later.SendPayDate = "2026-11-24 20:00:02" // the query's time is not the notification's to the second
	gw.SetTrade("notified-1", later)          // paid and notified
	cheaper := paid
	cheaper.TotalAmount = "6.48"
	gw.SetTrade("conflict-1", cheaper) // notified as 648.00, the provider now says 6.48
	gw.SetTrade("unpaid-1", providertest.AlipayTrade{TradeNo: "2026112422001446881000000003", TotalAmount: "6.00", TradeStatus: "WAIT_BUYER_PAY"})
	for _, order := range []string{"notified-1", "conflict-1"} {
		if w := record(f.h.Ingest, alipayReq(providertest.SignAlipay(aliKey, providertest.AlipayFields(aliApp, order, "648.00", "TRADE_SUCCESS")))); w.Code != 200 {
			t.Fatalf("notify: %d", w.Code)
		}
	}

	ask := func(order string) (int, queryAnswer) {
		t.Helper()
		w := record(f.h.Admin, queryReq(`{"provider":"alipay","merchant":"`+aliApp+`","order_id":"`+order+`","reason":"player 1001 paid, no items"}`))
		var out queryAnswer
		json.Unmarshal(w.Body.Bytes(), &out)
		return w.Code, out
	}
	tasks := func() int { return len(f.queue.Snapshot()) }

	// Paid, never notified: stored and relayed, once however often it is asked.
	code, out := ask("lost-1")
	if code != 200 || out.Reported != "TRADE_SUCCESS" || out.Action != "ingested" || out.Payment == nil {
		t.Fatalf("lost-1: %d %+v", code, out)
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "lost-1"))
	if p == nil || p.AmountMinor != 64800 || p.Game != "sword" || p.Paid().State != relay.StatePending || tasks() != 3 {
		t.Fatalf("lost-1 stored %+v with %d tasks; want a pending payment of 648.00 for sword and its task", p, tasks())
	}
	if code, out := ask("lost-1"); code != 200 || out.Action != "already stored" || tasks() != 3 {
		t.Errorf("lost-1 again: %d %+v with %d tasks; want already stored, no new task", code, out, tasks())
	}
	// Already notified: the query changes nothing.
	if code, out := ask("notified-1"); code != 200 || out.Action != "already stored" || tasks() != 3 || f.store.Len() != 3 {
		t.Errorf("notified-1: %d %+v, %d tasks, %d payments", code, out, tasks(), f.store.Len())
	}
	// The provider contradicts what is stored: a conflict, nothing changes.
	if code, out := ask("conflict-1"); code != http.StatusConflict || tasks() != 3 {
		t.Errorf("conflict-1: %d %+v, %d tasks; want 409", code, out, tasks())
	}
	if p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "conflict-1")); p.AmountMinor != 64800 {
		t.Errorf("conflict-1 changed: %d", p.AmountMinor)
	}
	// Not paid, and unknown: reported, nothing stored.
	for order, reported := range map[string]string{"unpaid-1": "WAIT_BUYER_PAY", "never-1": "TRADE_NOT_EXIST"} {
		if code, out := ask(order); code != 200 || out.Reported != reported || out.Action != "nothing to relay" || out.Payment != nil || f.store.Len() != 3 {
			t.Errorf("%s: %d %+v with %d payments", order, code, out, f.store.Len())
		}
	}

	// Refusals change nothing.
	gw.FailNext(100)
	if w := record(f.h.Admin, queryReq(`{"provider":"alipay","merchant":"`+aliApp+`","order_id":"x","reason":"r"}`)); w.Code != http.StatusServiceUnavailable {
		t.Errorf("gateway down: %d %s, want 503", w.Code, w.Body)
	}
	gw.FailNext(0)
	for name, tc := range map[string]struct {
		req  *http.Request
		code int
	}{
		"no reason":    {queryReq(`{"provider":"alipay","merchant":"` + aliApp + `","order_id":"x"}`), 422},
		"unqueryable":  {queryReq(`{"provider":"generic","merchant":"game-1","order_id":"x","reason":"r"}`), 422},
		"app not ours": {queryReq(`{"provider":"alipay","merchant":"2021000000000000","order_id":"x","reason":"r"}`), 502},
		"cross-site":   {queryReq(`{"provider":"alipay","merchant":"`+aliApp+`","order_id":"lost-2","reason":"r"}`, "Sec-Fetch-Site", "cross-site"), 403},
		"not JSON":     {httptest.NewRequest(http.MethodPost, "/api/query", strings.NewReader("provider=alipay")), 415},
		"GET":          {httptest.NewRequest(http.MethodGet, "/api/query", nil), 405},
	} {
		if w := record(f.h.Admin, tc.req); w.Code != tc.code {
			t.Errorf("%s: %d %s, want %d", name, w.Code, w.Body, tc.code)
		}
	}
	if f.store.Len() != 3 || tasks() != 3 {
		t.Errorf("after refusals: %d payments, %d tasks; want 3 and 3", f.store.Len(), tasks())
	}

	// The dashboard's form: on the overview with its anti-forgery token, answered as a page.
	w := httptest.NewRecorder()
	f.h.Admin(w, httptest.NewRequest(http.MethodGet, "/", nil))
	var cookie *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == csrfCookie {
			cookie = c
		}
	}
	if cookie == nil || !strings.Contains(w.Body.String(), `id="query"`) || !strings.Contains(w.Body.String(), "<option>alipay</option>") {
		t.Fatalf("overview has no query form for alipay:\n%s", w.Body)
	}
	gw.SetTrade("lost-2", paid)
	form := func(csrf string) *httptest.ResponseRecorder {
		body := url.Values{"provider": {"alipay"}, "merchant": {aliApp}, "order": {"lost-2"}, "reason": {"ticket 77"}, "csrf": {csrf}}.Encode()
		r := httptest.NewRequest(http.MethodPost, "/query", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.AddCookie(cookie)
		w := httptest.NewRecorder()
		f.h.Admin(w, r)
		return w
	}
	if w := form(strings.Repeat("0", 32)); w.Code != http.StatusForbidden || f.store.Len() != 3 {
		t.Errorf("form without the token: %d, %d payments", w.Code, f.store.Len())
	}
	w = form(cookie.Value)
	if w.Code != 200 || !strings.Contains(w.Body.String(), "<td>ingested</td>") || !strings.Contains(w.Body.String(), "<td>TRADE_SUCCESS</td>") || f.store.Len() != 4 {
		t.Errorf("form query: %d, %d payments\n%s", w.Code, f.store.Len(), w.Body)
	}
}

// 补单 of refunded trades relays the payment, then each refund found, in order: Alipay's
// TRADE_CLOSED after payment with its refund, WeChat Pay's trade_state REFUND with the refunds
// named by their out_refund_no (one processing: not relayed).
func TestQueryRelaysRefundedTrades(t *testing.T) {
	t.Parallel()
	f, gw, api := billFixture(t)
	gw.SetTrade("ali-closed", providertest.AlipayTrade{TradeNo: "2026112422001446881000000021", TotalAmount: "30.00", TradeStatus: "TRADE_CLOSED", SendPayDate: "2026-11-24 20:00:00"})
	gw.SetRefund("ali-closed", providertest.AlipayRefund{OutRequestNo: "ali-closed", RefundAmount: "30.00", RefundStatus: "REFUND_SUCCESS", GmtRefundPay: "2026-11-24 21:00:00"})
	ask := func(body string) queryAnswer {
		t.Helper()
		w := record(f.h.Admin, queryReq(body))
		var out queryAnswer
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || w.Code != 200 {
			t.Fatalf("query %s: %d %s", body, w.Code, w.Body)
		}
		return out
	}
	out := ask(`{"provider":"alipay","merchant":"` + aliApp + `","order_id":"ali-closed","reason":"player reports a refund"}`)
	if out.Action != "ingested" || len(out.Refunds) != 1 || out.Refunds[0].Action != "ingested" || out.Refunds[0].RefundID != "ali-closed" {
		t.Fatalf("alipay: %+v", out)
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "ali-closed"))
	if p == nil || p.Paid() == nil || p.RefundedMinor != 3000 || !p.FullyRefunded() {
		t.Fatalf("alipay payment %+v", p)
	}
	// Asked again: nothing new.
	if again := ask(`{"provider":"alipay","merchant":"` + aliApp + `","order_id":"ali-closed","reason":"again"}`); again.Action != "already stored" || again.Refunds[0].Action != "already stored" {
		t.Errorf("asked again: %+v", again)
	}

	refunded := providertest.WechatTransaction(wxMch, wxApp, "wx-refunded", 64800)
	refunded["trade_state"] = "REFUND"
	api.SetTransaction(refunded)
	api.SetRefund(providertest.WechatRefundAnswer("wx-refunded", "50300011", "rf-11", 64800, 10000, "SUCCESS", "2026-11-24T21:00:00+08:00"))
	api.SetRefund(providertest.WechatRefundAnswer("wx-refunded", "50300012", "rf-12", 64800, 5000, "PROCESSING", ""))
	out = ask(`{"provider":"wechatpay","merchant":"` + wxMch + `","order_id":"wx-refunded","reason":"r"}`)
	if out.Action != "ingested" || out.RefundsUnknown == "" || len(out.Refunds) != 0 {
		t.Fatalf("wechat without refund numbers: %+v", out)
	}
	out = ask(`{"provider":"wechatpay","merchant":"` + wxMch + `","order_id":"wx-refunded","reason":"r","refund_ids":["rf-11","rf-12"]}`)
	if len(out.Refunds) != 2 || out.Refunds[0].Reported != "PROCESSING" || out.Refunds[0].Action != "not relayed" || out.Refunds[1].RefundID != "50300011" || out.Refunds[1].Action != "ingested" {
		t.Fatalf("wechat with refund numbers: %+v", out)
	}
	drain(t, f)
	// Each payment's notifications once, the payment first (payments are independent of each other).
	for order, want := range map[string]string{"ali-closed": "paid " + relay.RefundKey("ali-closed"), "wx-refunded": "paid " + relay.RefundKey("50300011")} {
		if got := postedOf(f, order); got != want {
			t.Errorf("%s posted %q, want %q", order, got, want)
		}
	}
}
