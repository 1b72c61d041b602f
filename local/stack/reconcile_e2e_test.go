package stack_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

// The daily reconciliation, end to end on the emulators with the providers' stand-ins: a day's
// bill with one payment payrelay never received, one refund it never received, one amount that
// differs and one order the bill lacks gives exactly those four findings; the two missing ones
// are relayed to the game server once, though the job runs twice.
func TestReconciliationEndToEnd(t *testing.T) {
	t.Parallel()
	need(t)
	const day = "2026-11-20"
	const aliTrade, wxTx = "2026112422001446881000000001", "4200001234202611240000000001"
	// What the providers did notify, for each: -match, -norefund (its refund was never
	// notified), -conflict (notified as 648.00), -notinbill.
	for _, o := range []string{"rec-ali-match", "rec-ali-norefund", "rec-ali-conflict", "rec-ali-notinbill"} {
		f := providertest.AlipayFields(aliApp, o, "648.00", "TRADE_SUCCESS")
		f["gmt_payment"] = day + " 20:00:00"
		if code, body := post(t, "alipay", "application/x-www-form-urlencoded", nil, providertest.SignAlipay(aliKey, f)); code != 200 {
			t.Fatalf("alipay notify %s: %d %s", o, code, body)
		}
	}
	for _, o := range []string{"rec-wx-match", "rec-wx-norefund", "rec-wx-conflict", "rec-wx-notinbill"} {
		tx := providertest.WechatTransaction(wxMch, wxApp, o, 64800)
		tx["success_time"] = day + "T20:00:00+08:00"
		h, body := providertest.WechatNotify(platKey, wxSer, wxAPIv3, "TRANSACTION.SUCCESS", tx, time.Now())
		if code, b := post(t, "wechatpay", "application/json", h, body); code != http.StatusNoContent {
			t.Fatalf("wechat notify %s: %d %s", o, code, b)
		}
	}
	// The day's bills.
	aliGateway.SetBill(day, providertest.AlipayBillZip("2088102177846881", day, []providertest.AlipayBillLine{
		{TradeNo: aliTrade, OutTradeNo: "rec-ali-match", Kind: "交易", Finished: day + " 20:00:00", Amount: "648.00"},
		{TradeNo: aliTrade, OutTradeNo: "rec-ali-norefund", Kind: "交易", Finished: day + " 20:00:00", Amount: "648.00"},
		{TradeNo: aliTrade, OutTradeNo: "rec-ali-norefund", Kind: "退款", Finished: day + " 21:00:00", Amount: "48.00", RefundNo: "RF-ali-1"},
		{TradeNo: aliTrade, OutTradeNo: "rec-ali-conflict", Kind: "交易", Finished: day + " 20:00:00", Amount: "600.00"},
		{TradeNo: "2026112022001446881000000099", OutTradeNo: "rec-ali-missing", Kind: "交易", Finished: day + " 22:00:00", Amount: "30.00"},
	}))
	line := func(o, state, total string) providertest.WechatBillLine {
		return providertest.WechatBillLine{At: day + " 20:00:00", AppID: wxApp, MchID: wxMch, TransactionID: wxTx, OutTradeNo: o, State: state, Total: total}
	}
	refund := line("rec-wx-norefund", "REFUND", "648.00")
	refund.At, refund.RefundID, refund.OutRefundNo, refund.Refund, refund.RefundState = day+" 21:00:00", "50300001", "RF-wx-1", "48.00", "SUCCESS"
	missing := line("rec-wx-missing", "SUCCESS", "30.00")
	missing.TransactionID = "4200001234202611200000000099"
	wxAPI.SetBill(day, providertest.WechatBillText([]providertest.WechatBillLine{
		line("rec-wx-match", "SUCCESS", "648.00"), line("rec-wx-norefund", "SUCCESS", "648.00"), refund,
		line("rec-wx-conflict", "SUCCESS", "600.00"), missing,
	}))

	reconcile := func() {
		t.Helper()
		resp, err := http.Post(st.FunctionsURL+"/Reconcile", "application/json", bytes.NewReader([]byte(`{"day":"`+day+`"}`)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Runs []struct {
				Provider, Merchant, Error string
			}
		}
		json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != 200 {
			t.Fatalf("Reconcile answered %d: %+v", resp.StatusCode, out)
		}
	}
	findings := func(provider, merchant string) []string {
		t.Helper()
		resp, err := http.Get(st.AdminURL() + "/api/reconciliations/" + relay.ReportID(provider, merchant, day))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep struct {
			Findings []struct {
				Kind    string
				OrderID string `json:"order_id"`
			}
			Runs int
		}
		json.NewDecoder(resp.Body).Decode(&rep)
		var out []string
		for _, f := range rep.Findings {
			out = append(out, f.Kind+" "+f.OrderID)
		}
		slices.Sort(out)
		return append(out, fmt.Sprint("runs ", rep.Runs))
	}
	for run := 1; run <= 2; run++ {
		reconcile()
		for _, c := range []struct{ provider, merchant, prefix string }{{"alipay", aliApp, "rec-ali-"}, {"wechatpay", wxMch, "rec-wx-"}} {
			want := []string{"conflict " + c.prefix + "conflict", "missing_payment " + c.prefix + "missing", "missing_refund " + c.prefix + "norefund",
				"not_in_bill " + c.prefix + "notinbill", fmt.Sprint("runs ", run)}
			if got := findings(c.provider, c.merchant); !slices.Equal(got, want) {
				t.Errorf("run %d, %s: findings %v\nwant %v", run, c.provider, got, want)
			}
		}
	}
	// The two missing ones reach the game server, once each; the conflict changed nothing.
	for _, c := range []struct{ provider, merchant, prefix, refund string }{{"alipay", aliApp, "rec-ali-", "RF-ali-1"}, {"wechatpay", wxMch, "rec-wx-", "50300001"}} {
		lost := relay.PaymentID(relay.EnvProduction, c.provider, c.merchant, c.prefix+"missing")
		if p := waitTerminal(t, lost, 20*time.Second); p.Paid().State != relay.StateDelivered || p.Paid().Via != relay.ViaReconcile || p.AmountMinor != 3000 {
			t.Errorf("%s: the missing payment ended %s via %s, %d", c.provider, p.Paid().State, p.Paid().Via, p.AmountMinor)
		}
		norefund := relay.PaymentID(relay.EnvProduction, c.provider, c.merchant, c.prefix+"norefund")
		if p := waitNotification(t, norefund, relay.RefundKey(c.refund), 20*time.Second); p.RefundedMinor != 4800 {
			t.Errorf("%s: refunded %d, want 4800", c.provider, p.RefundedMinor)
		}
		time.Sleep(300 * time.Millisecond)
		if got := fmt.Sprint(sequence(st.Game.Hits(lost))); got != "[paid#1(200)]" {
			t.Errorf("%s: the game server got %s for the missing payment, want it once", c.provider, got)
		}
		if got := fmt.Sprint(sequence(st.Game.Hits(norefund))); got != "[paid#1(200) refund "+c.refund+"#1(200)]" {
			t.Errorf("%s: the game server got %s for the payment whose refund was missing", c.provider, got)
		}
		conflict, _, err := payments.Get(t.Context(), relay.PaymentID(relay.EnvProduction, c.provider, c.merchant, c.prefix+"conflict"))
		if err != nil || conflict.AmountMinor != 64800 || len(conflict.Notifications) != 1 {
			t.Errorf("%s: the conflict changed the payment: %+v %v", c.provider, conflict, err)
		}
	}
	if _, refused := aliGateway.Counts(); refused != 0 {
		t.Errorf("Alipay's gateway refused %d of our requests", refused)
	}
	if _, refused := wxAPI.Counts(); refused != 0 {
		t.Errorf("WeChat Pay's API refused %d of our requests", refused)
	}
}

// A day with more missing payments than a run relays itself: the report names a relay job, the
// ops queue runs its steps through Deliver at the bulk replay's rate, and each of the 150
// reaches the game server once.
func TestReconciliationRelaysManyThroughTheOpsQueue(t *testing.T) {
	t.Parallel()
	need(t)
	const day = "2026-11-18"
	var lines []providertest.WechatBillLine
	for i := range 150 {
		lines = append(lines, providertest.WechatBillLine{At: day + " 20:00:00", AppID: wxApp, MchID: wxMch, TransactionID: fmt.Sprintf("42000012342026111800%08d", i),
			OutTradeNo: fmt.Sprintf("bulk-wx-%03d", i), State: "SUCCESS", Total: "6.00"})
	}
	wxAPI.SetBill(day, providertest.WechatBillText(lines))
	body := fmt.Sprintf(`{"provider":"wechatpay","merchant":%q,"day":%q,"reason":"a day of lost notifications"}`, wxMch, day)
	resp, err := http.Post(st.AdminURL()+"/api/reconcile", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var run struct {
		Report struct {
			Counts   map[string]int `json:"counts"`
			RelayJob string         `json:"relay_job"`
		} `json:"report"`
		Error string `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&run)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || run.Report.RelayJob == "" || run.Report.Counts["missing_payment"] != 150 {
		t.Fatalf("reconcile = %d %+v", resp.StatusCode, run)
	}
	for i := range 150 {
		id := relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, fmt.Sprintf("bulk-wx-%03d", i))
		if p := waitTerminal(t, id, 60*time.Second); p.Paid().State != relay.StateDelivered || p.Paid().Via != relay.ViaReconcile {
			t.Fatalf("payment %d ended %s via %s", i, p.Paid().State, p.Paid().Via)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for i := range 150 {
		id := relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, fmt.Sprintf("bulk-wx-%03d", i))
		if got := fmt.Sprint(sequence(st.Game.Hits(id))); got != "[paid#1(200)]" {
			t.Errorf("payment %d: the game server got %s, want it once", i, got)
		}
	}
	resp, err = http.Get(st.AdminURL() + "/api/jobs/" + run.Report.RelayJob)
	if err != nil {
		t.Fatal(err)
	}
	var job relay.Job
	json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if job.Kind != relay.JobRelay || job.State != relay.JobDone || job.Replayed+job.Skipped != 150 || job.Pages != 2 {
		t.Errorf("the relay job: %+v", job)
	}
}
