package functions

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
)

// identity is a bearer token as Cloud Run passes it on once it verified it: only its payload's
// email is read.
func identity(email string) string {
	claims, _ := json.Marshal(map[string]string{"email": email})
	return "Bearer e30." + base64.RawURLEncoding.EncodeToString(claims) + ".sig"
}

// billFixture is a handler with Alipay and WeChat Pay able to query and fetch bills from
// stand-ins.
func billFixture(t *testing.T) (*fixture, *providertest.AlipayGateway, *providertest.WechatAPI) {
	t.Helper()
	f := withProviders(t, newFixture(t))
	appKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	gw := providertest.NewAlipayGateway(aliApp, &appKey.PublicKey, aliKey)
	t.Cleanup(gw.Close)
	apiKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	api := providertest.NewWechatAPI(wxMch, "API-1", &apiKey.PublicKey, platKey, wxSer)
	t.Cleanup(api.Close)
	cfg := provider.Config{
		Alipay: []provider.AlipayApp{{AppID: aliApp, PublicKey: providertest.PublicKeyPEM(aliKey), PrivateKey: providertest.PrivateKeyPEM(appKey), Gateway: gw.URL, Game: "sword"},
			{AppID: "2021004100000009", PublicKey: providertest.PublicKeyPEM(aliKey), Game: "farm"}},
		WechatPay: []provider.WechatPayMerchant{{MchID: wxMch, APIv3Key: wxAPIv3, AppIDs: map[string]string{wxApp: "sword", "wx-farm-app": "farm"},
			PlatformKeys: map[string]string{wxSer: providertest.PublicKeyPEM(platKey)}, APIPrivateKey: providertest.PrivateKeyPEM(apiKey), APISerial: "API-1", APIBase: api.URL}},
	}
	set, err := provider.New(cfg, provider.IngestSecrets{Production: []webhook.Secret{testSecret}})
	if err != nil {
		t.Fatal(err)
	}
	f.h.Providers["alipay"], f.h.Providers["wechatpay"] = set["alipay"], set["wechatpay"]
	f.h.ProviderConfig = cfg
	return f, gw, api
}

// A game server queries through the Query function with its own identity, and only its own
// game's orders.
func TestGameServerQuery(t *testing.T) {
	t.Parallel()
	f, gw, api := billFixture(t)
	f.h.QueryCallers = map[string]string{"sword-server@studio.iam.gserviceaccount.com": "sword"}
	gw.SetTrade("lost-1", providertest.AlipayTrade{TradeNo: "2026112422001", TotalAmount: "6.48", TradeStatus: "TRADE_SUCCESS", SendPayDate: "2026-11-24 20:00:00"})
	farm := providertest.WechatTransaction(wxMch, "wx-farm-app", "wx-farm-1", 300)
	api.SetTransaction(farm)
	ask := func(who, body string) (int, map[string]any) {
		t.Helper()
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		if who != "" {
			r.Header.Set("Authorization", identity(who))
		}
		return serve(f.h.GameQuery, r)
	}
	const sword = "sword-server@studio.iam.gserviceaccount.com"
	if code, out := ask(sword, `{"provider":"alipay","merchant":"`+aliApp+`","order_id":"lost-1"}`); code != 200 || out["action"] != "ingested" {
		t.Fatalf("sword's own order: %d %v", code, out)
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "lost-1"))
	if p == nil || p.Paid().Via != relay.ViaQuery {
		t.Fatalf("stored %+v, want the payment recovered via query", p)
	}
	requests, _ := gw.Counts()
	for name, tc := range map[string]struct {
		who, body string
		code      int
	}{
		"no identity":            {"", `{"provider":"alipay","merchant":"` + aliApp + `","order_id":"lost-1"}`, 403},
		"an identity not listed": {"someone@studio.example", `{"provider":"alipay","merchant":"` + aliApp + `","order_id":"lost-1"}`, 403},
		"another game's app":     {sword, `{"provider":"alipay","merchant":"2021004100000009","order_id":"x"}`, 403},
		"another game's order":   {sword, `{"provider":"wechatpay","merchant":"` + wxMch + `","order_id":"wx-farm-1"}`, 403},
		"not JSON":               {sword, `provider=alipay`, 422},
	} {
		if code, out := ask(tc.who, tc.body); code != tc.code {
			t.Errorf("%s: %d %v, want %d", name, code, out, tc.code)
		}
	}
	if f.store.Payment(relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, "wx-farm-1")) != nil {
		t.Error("another game's order was ingested for sword's server")
	}
	if after, _ := gw.Counts(); after != requests {
		t.Errorf("refused queries still reached Alipay: %d requests", after-requests)
	}
}

// The scheduled run reconciles every account's bill of the day before; a bill not ready yet
// makes it answer 503 so that Cloud Scheduler retries, and the retry is safe.
func TestScheduledReconcile(t *testing.T) {
	t.Parallel()
	f, gw, api := billFixture(t)
	day := relay.BillDay(testNow.AddDate(0, 0, -1))
	notified := providertest.AlipayFields(aliApp, "ali-notified", "648.00", "TRADE_SUCCESS")
	notified["gmt_payment"] = day + " 20:00:00"
	if w := record(f.h.Ingest, alipayReq(providertest.SignAlipay(aliKey, notified))); w.Code != 200 {
		t.Fatalf("notify %d", w.Code)
	}
	gw.SetBill(day, providertest.AlipayBillZip("2088102177846881", day, []providertest.AlipayBillLine{
		{TradeNo: "2026112422001446881000000001", OutTradeNo: "ali-notified", Kind: "交易", Finished: day + " 20:00:00", Amount: "648.00"},
		{TradeNo: "2026112422001446881000000002", OutTradeNo: "ali-lost", Kind: "交易", Finished: day + " 21:00:00", Amount: "30.00"},
	}))
	api.SetBill(day, nil) // WeChat Pay is still making it
	run := func() (int, map[string]any) {
		return serve(f.h.Reconcile, httptest.NewRequest(http.MethodPost, "/", strings.NewReader("")))
	}
	code, out := run()
	if code != http.StatusServiceUnavailable || out["failed"] != float64(1) {
		t.Fatalf("with WeChat Pay's bill not ready: %d %v, want 503 and one failed", code, out)
	}
	lost := relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "ali-lost")
	if p := f.store.Payment(lost); p == nil || p.Paid().Via != relay.ViaReconcile || p.AmountMinor != 3000 {
		t.Fatalf("the lost payment: %+v", p)
	}
	api.SetBill(day, providertest.WechatBillText(nil))
	if code, out := run(); code != 200 || out["failed"] != float64(0) {
		t.Fatalf("retry: %d %v", code, out)
	}
	rep, err := f.h.Service.Report(context.Background(), relay.ReportID("alipay", aliApp, day))
	if err != nil || rep.Runs != 2 || rep.Matched != 1 || rep.Counts[relay.FindingMissingPayment] != 1 || len(rep.Findings) != 1 {
		t.Fatalf("alipay report %+v %v", rep, err)
	}
	firstTasks := 0
	for _, task := range f.queue.Snapshot() {
		if task.PaymentID == lost && task.Attempt == 1 {
			firstTasks++
		}
	}
	if firstTasks != 1 {
		t.Errorf("the recovered payment has %d first tasks after two runs, want 1", firstTasks)
	}

	// The API and the dashboard show it.
	w := record(f.h.Admin, httptest.NewRequest(http.MethodGet, "/api/reconciliations", nil))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"missing_payment":1`) {
		t.Errorf("GET /api/reconciliations: %d %s", w.Code, w.Body)
	}
	w = record(f.h.Admin, httptest.NewRequest(http.MethodGet, "/reconciliations/"+rep.ID, nil))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `data-kind="missing_payment"`) || !strings.Contains(w.Body.String(), "ali-lost") {
		t.Errorf("report page: %d\n%s", w.Code, w.Body)
	}
	// An operator reconciles again from the dashboard's form.
	w = httptest.NewRecorder()
	f.h.Admin(w, httptest.NewRequest(http.MethodGet, "/reconciliations", nil))
	var cookie *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == csrfCookie {
			cookie = c
		}
	}
	if cookie == nil || !strings.Contains(w.Body.String(), "<option>alipay "+aliApp+"</option>") {
		t.Fatalf("reports page without the form:\n%s", w.Body)
	}
	form := url.Values{"account": {"alipay " + aliApp}, "day": {day}, "reason": {"the bill was corrected"}, "csrf": {cookie.Value}}.Encode()
	r := httptest.NewRequest(http.MethodPost, "/reconcile", strings.NewReader(form))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.AddCookie(cookie)
	if w := record(f.h.Admin, r); w.Code != http.StatusSeeOther {
		t.Errorf("form: %d %s", w.Code, w.Body)
	}
	if rep, _ := f.h.Service.Report(context.Background(), rep.ID); rep.Runs != 3 || !strings.HasPrefix(rep.By, "anonymous") {
		t.Errorf("after the form: %+v", rep)
	}
	// Bad requests.
	if code, _ := serve(f.h.Reconcile, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"day":"24/11"}`))); code != 422 {
		t.Errorf("a bad day: %d", code)
	}
	req := httptest.NewRequest(http.MethodPost, "/api/reconcile", strings.NewReader(`{"provider":"alipay","merchant":"nope","day":"`+day+`","reason":"r"}`))
	req.Header.Set("Content-Type", "application/json")
	if w := record(f.h.Admin, req); w.Code != 422 {
		t.Errorf("an unknown account: %d %s", w.Code, w.Body)
	}
}

// WeChat Pay's bill as WeChat writes it: a refund reduced by a 免充值 coupon states the
// requested 申请退款金额 its notification carries (1.48) and the settlement 退款金额 (1.00); it
// matches, and a refund the bill alone shows keeps its settlement amount on the report. The
// same day in the early layout (总金额, no 申请退款金额) reconciles too.
func TestWechatBillsAsWechatWritesThem(t *testing.T) {
	t.Parallel()
	f, gw, api := billFixture(t)
	notify := func(event string, resource any) {
		h, body := providertest.WechatNotify(platKey, wxSer, wxAPIv3, event, resource, testNow)
		if w := record(f.h.Ingest, wechatReq(h, body)); w.Code != 204 {
			t.Fatalf("%s answered %d %s", event, w.Code, w.Body)
		}
	}
	notify("TRANSACTION.SUCCESS", providertest.WechatTransaction(wxMch, wxApp, "wx-c", 648))
	notify("REFUND.SUCCESS", providertest.WechatRefund(wxMch, "wx-c", "5030001", 648, 148, "SUCCESS"))
	day := "2026-11-24"
	gw.SetBill(day, providertest.AlipayBillZip("2088102177846881", day, nil))
	tx := "4200001234202611240000000001"
	lines := []providertest.WechatBillLine{
		{At: day + " 20:00:00", AppID: wxApp, MchID: wxMch, TransactionID: tx, OutTradeNo: "wx-c", State: "SUCCESS", Total: "6.48"},
		{At: day + " 21:00:00", AppID: wxApp, MchID: wxMch, TransactionID: tx, OutTradeNo: "wx-c", State: "REFUND", Total: "6.48",
			RefundID: "5030001", OutRefundNo: "out-5030001", Refund: "1.48", Settled: "1.00", RefundState: "SUCCESS"},
		{At: day + " 22:00:00", AppID: wxApp, MchID: wxMch, TransactionID: tx, OutTradeNo: "wx-c", State: "REFUND", Total: "6.48",
			RefundID: "5030002", OutRefundNo: "out-5030002", Refund: "2.00", Settled: "1.50", RefundState: "SUCCESS"},
	}
	reconcile := func() *relay.Report {
		t.Helper()
		if code, out := serve(f.h.Reconcile, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"day":"`+day+`"}`))); code != 200 {
			t.Fatalf("reconcile: %d %v", code, out)
		}
		rep, err := f.h.Service.Report(context.Background(), relay.ReportID("wechatpay", wxMch, day))
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	api.SetBill(day, providertest.WechatBillText(lines))
	rep := reconcile()
	if rep.Matched != 2 || rep.Counts[relay.FindingConflict] != 0 || rep.Counts[relay.FindingMissingRefund] != 1 || len(rep.Findings) != 1 {
		t.Fatalf("report %+v; want the payment and the coupon-reduced refund matched, the second refund recovered", rep)
	}
	if f0 := rep.Findings[0]; f0.RefundID != "5030002" || f0.BillMinor != 200 || f0.SettledMinor != 150 || f0.Action != "ingested" {
		t.Errorf("finding %+v; want refund 5030002 of 200 (settled 150) ingested", f0)
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, "wx-c"))
	if n := p.RefundByID("5030002"); n == nil || n.Refund.AmountMinor != 200 || p.RefundedMinor != 348 {
		t.Fatalf("stored refunds: %+v, total %d; want 148 + 200", n, p.RefundedMinor)
	}
	w := record(f.h.Admin, httptest.NewRequest(http.MethodGet, "/reconciliations/"+rep.ID, nil))
	if !strings.Contains(w.Body.String(), "<th>settled (minor)</th>") || !strings.Contains(w.Body.String(), "<td>150</td>") {
		t.Errorf("the report page does not show the settlement amount:\n%s", w.Body)
	}
	// The early layout of the same day: every row agrees (the refund the first run recovered
	// is reported as such).
	api.SetBill(day, providertest.WechatEarlyBillText(lines))
	if rep := reconcile(); rep.Matched != 2 || rep.Counts[relay.FindingConflict] != 0 || len(rep.Findings) != 1 || rep.Findings[0].Action != "ingested by an earlier run" {
		t.Fatalf("early layout: report %+v, want 2 matched and the recovered refund", rep)
	}
	// A row that cannot be read is a finding of its own; the rest of the day reconciles.
	broken := providertest.WechatBillText(lines)
	broken = []byte(strings.Replace(string(broken), day+" 22:00:00", "yesterday", 1))
	api.SetBill(day, broken)
	rep = reconcile()
	if rep.Matched != 2 || rep.Counts[relay.FindingUnrelayable] != 1 || !strings.Contains(rep.Findings[0].Reason, "交易时间") {
		t.Fatalf("a broken row: report %+v", rep)
	}
}

// Every refund a bill shows is relayed: a refund still PROCESSING on the bill is asked about
// again, the same run when it settled since, a later run when it settles later (its day's
// report updated); a refund of a payment payrelay never received makes the run ask the
// provider for the payment, and relays both, in order.
func TestReconcileRecoversRefunds(t *testing.T) {
	t.Parallel()
	f, gw, api := billFixture(t)
	day, next := "2026-11-24", "2026-11-25"
	gw.SetBill(day, providertest.AlipayBillZip("2088102177846881", day, []providertest.AlipayBillLine{
		{TradeNo: "2026112422001446881000000031", OutTradeNo: "ali-unseen", Kind: "退款", Finished: day + " 21:00:00", Amount: "30.00", RefundNo: "ali-unseen"},
	}))
	gw.SetTrade("ali-unseen", providertest.AlipayTrade{TradeNo: "2026112422001446881000000031", TotalAmount: "30.00", TradeStatus: "TRADE_CLOSED", SendPayDate: day + " 20:00:00"})
	gw.SetBill(next, providertest.AlipayBillZip("2088102177846881", next, nil))
	// WeChat Pay: wx-p paid and notified, its refund RF-P processing; wx-s's refund RF-S
	// processing on the bill, settled by the time the run asks; wx-u never notified, its refund
	// on the bill.
	for _, o := range []string{"wx-p", "wx-s"} {
		h, body := providertest.WechatNotify(platKey, wxSer, wxAPIv3, "TRANSACTION.SUCCESS", providertest.WechatTransaction(wxMch, wxApp, o, 600), testNow)
		if w := record(f.h.Ingest, wechatReq(h, body)); w.Code != 204 {
			t.Fatalf("notify %s: %d", o, w.Code)
		}
	}
	unseen := providertest.WechatTransaction(wxMch, wxApp, "wx-u", 800)
	unseen["trade_state"] = "REFUND"
	api.SetTransaction(unseen)
	tx := "4200001234202611240000000001"
	api.SetBill(day, providertest.WechatBillText([]providertest.WechatBillLine{
		{At: day + " 20:00:00", AppID: wxApp, MchID: wxMch, TransactionID: tx, OutTradeNo: "wx-p", State: "SUCCESS", Total: "6.00"},
		{At: day + " 20:00:00", AppID: wxApp, MchID: wxMch, TransactionID: tx, OutTradeNo: "wx-s", State: "SUCCESS", Total: "6.00"},
		{At: day + " 21:00:00", AppID: wxApp, MchID: wxMch, TransactionID: tx, OutTradeNo: "wx-p", State: "REFUND", Total: "6.00", RefundID: "5030P", OutRefundNo: "RF-P", Refund: "1.00", RefundState: "PROCESSING"},
		{At: day + " 21:00:00", AppID: wxApp, MchID: wxMch, TransactionID: tx, OutTradeNo: "wx-s", State: "REFUND", Total: "6.00", RefundID: "5030S", OutRefundNo: "RF-S", Refund: "2.00", RefundState: "PROCESSING"},
		{At: day + " 21:00:00", AppID: wxApp, MchID: wxMch, TransactionID: tx, OutTradeNo: "wx-u", State: "REFUND", Total: "8.00", RefundID: "5030U", OutRefundNo: "RF-U", Refund: "8.00", RefundState: "SUCCESS"},
	}))
	api.SetRefund(providertest.WechatRefundAnswer("wx-p", "5030P", "RF-P", 600, 100, "PROCESSING", ""))
	api.SetRefund(providertest.WechatRefundAnswer("wx-s", "5030S", "RF-S", 600, 200, "SUCCESS", day+"T22:00:00+08:00"))
	api.SetBill(next, providertest.WechatBillText(nil))
	run := func(d string) {
		t.Helper()
		if code, out := serve(f.h.Reconcile, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"day":"`+d+`"}`))); code != 200 {
			t.Fatalf("reconcile %s: %d %v", d, code, out)
		}
	}
	report := func(prov, merchant, d string) *relay.Report {
		t.Helper()
		rep, err := f.h.Service.Report(context.Background(), relay.ReportID(prov, merchant, d))
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	run(day)
	refunds := func(order string) string {
		p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, order))
		if p == nil {
			return "<none>"
		}
		return fmt.Sprintf("paid=%v %s", p.Paid() != nil, refundsOf(p))
	}
	if got := refunds("wx-s"); got != "paid=true 5030S:200" {
		t.Errorf("wx-s (settled before the run asked): %s", got)
	}
	if got := refunds("wx-u"); got != "paid=true 5030U:800" {
		t.Errorf("wx-u (never notified): %s; want the payment found by asking, then its refund", got)
	}
	if got := refunds("wx-p"); got != "paid=true " {
		t.Errorf("wx-p (still processing): %s; want no refund yet", got)
	}
	rep := report("wechatpay", wxMch, day)
	if rep.Counts[relay.FindingPendingRefund] != 1 || rep.Counts[relay.FindingMissingPayment] != 1 || rep.Counts[relay.FindingMissingRefund] != 2 || rep.Counts[relay.FindingUnrelayable] != 0 {
		t.Fatalf("report %+v", rep.Counts)
	}
	ali := f.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "ali-unseen"))
	if ali == nil || ali.Paid() == nil || refundsOf(ali) != "ali-unseen:3000" {
		t.Fatalf("alipay's unseen payment: %+v", ali)
	}
	// The next day's run asks about wx-p's refund again: it settled.
	api.SetRefund(providertest.WechatRefundAnswer("wx-p", "5030P", "RF-P", 600, 100, "SUCCESS", next+"T09:00:00+08:00"))
	run(next)
	if got := refunds("wx-p"); got != "paid=true 5030P:100" {
		t.Errorf("wx-p after it settled: %s", got)
	}
	rep = report("wechatpay", wxMch, day)
	if rep.Counts[relay.FindingPendingRefund] != 0 || rep.Counts[relay.FindingMissingRefund] != 3 {
		t.Errorf("the day's report after the refund settled: %+v", rep.Counts)
	}
	// Asked again later: nothing changes, nothing is relayed twice.
	run(next)
	drain(t, f)
	for order, want := range map[string]string{"wx-u": "paid " + relay.RefundKey("5030U"), "wx-p": "paid " + relay.RefundKey("5030P"), "wx-s": "paid " + relay.RefundKey("5030S"),
		"ali-unseen": "paid " + relay.RefundKey("ali-unseen")} {
		if got := postedOf(f, order); got != want {
			t.Errorf("%s posted %q, want %q", order, got, want)
		}
	}
}

// A day with 1,200 findings keeps them all: the run's answer shows the first page of 500 and
// says there are 3; the API pages through them (?page=2 holds the last 200); a page past the
// end is 404, a page that is no number 422.
func TestReconciliationFindingsArePaged(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	h := f.h
	at := testNow.Add(-time.Hour)
	day := relay.BillDay(at)
	var entries []relay.Result
	for i := range 1200 {
		entries = append(entries, relay.Result{Type: relay.TypePaymentSucceeded, Payment: relay.Payment{Provider: "generic", Environment: relay.EnvProduction,
			Merchant: "shop-2", OrderID: fmt.Sprintf("bill-%04d", i), TransactionID: fmt.Sprintf("txn-%d", i), AmountMinor: 100, Currency: "CNY", PaidAt: at, AppID: "shop-2", Game: "game-1"}})
	}
	h.Providers["bills"] = &fakeBiller{Generic: h.Providers["generic"].(*provider.Generic), bill: relay.Bill{Provider: "generic", Environment: relay.EnvProduction,
		Merchant: "shop-2", Day: day, Rows: relay.EntryRows(entries...)}}
	w := record(h.Reconcile, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"day":"`+day+`"}`)))
	code, body := w.Code, w.Body.String()
	var run struct {
		Runs []struct {
			Report struct {
				ID       string
				Counts   map[string]int
				Findings []json.RawMessage
				Page     int
				Pages    int
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &run); err != nil || code != http.StatusOK || len(run.Runs) != 1 {
		t.Fatalf("Reconcile = %d %.300s", code, body)
	}
	rep := run.Runs[0].Report
	if rep.Counts["missing_payment"] != 1200 || len(rep.Findings) != 500 || rep.Pages != 3 || rep.Page != 0 {
		t.Fatalf("the run's report: %d missing, %d findings shown, page %d of %d", rep.Counts["missing_payment"], len(rep.Findings), rep.Page, rep.Pages)
	}
	get := func(q string) (int, string) {
		w := record(h.Admin, httptest.NewRequest(http.MethodGet, "/api/reconciliations/"+rep.ID+q, nil))
		return w.Code, w.Body.String()
	}
	code, body = get("?page=2")
	var page struct {
		Findings []struct {
			OrderID string `json:"order_id"`
		}
		Page  int
		Pages int
	}
	json.Unmarshal([]byte(body), &page)
	if code != http.StatusOK || len(page.Findings) != 200 || page.Page != 2 || page.Pages != 3 {
		t.Fatalf("page 2: %d, %d findings, page %d of %d", code, len(page.Findings), page.Page, page.Pages)
	}
	seen := map[string]bool{}
	for p := range 3 {
		_, body := get(fmt.Sprintf("?page=%d", p))
		json.Unmarshal([]byte(body), &page)
		for _, f := range page.Findings {
			seen[f.OrderID] = true
		}
	}
	if len(seen) != 1200 {
		t.Errorf("the pages hold %d distinct orders, want all 1200", len(seen))
	}
	if code, _ := get("?page=3"); code != http.StatusNotFound {
		t.Errorf("a page past the end: %d, want 404", code)
	}
	if code, _ := get("?page=x"); code != http.StatusUnprocessableEntity {
		t.Errorf("page=x: %d, want 422", code)
	}
}
