package relay_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/schedule"
)

// billPay is a bill's payment entry of order for merchant m, paid at at.
func billPay(m, order string, amount int64, at time.Time) relay.Result {
	return relay.Result{Type: relay.TypePaymentSucceeded, Payment: relay.Payment{Provider: "alipay", Environment: relay.EnvProduction, Merchant: m, OrderID: order,
		TransactionID: "tx-" + order, AmountMinor: amount, Currency: "CNY", PaidAt: at, AppID: m, Game: "sword"}}
}

// billRefund is a bill's refund entry: this refund's amount, the payment's amount unknown.
func billRefund(m, order, refundID string, amount int64, at time.Time) relay.Result {
	r := billPay(m, order, 0, time.Time{})
	r.Type = relay.TypePaymentRefunded
	r.Refund = &relay.RefundFacts{ID: refundID, AmountMinor: amount, RefundedAt: at}
	return r
}

// findings lists a report's findings as "kind order [refund] action".
func findings(r *relay.Report) []string {
	var out []string
	for _, f := range r.Findings {
		s := fmt.Sprintf("%s %s", f.Kind, f.OrderID)
		if f.RefundID != "" {
			s += " " + f.RefundID
		}
		out = append(out, s+": "+f.Action)
	}
	slices.Sort(out)
	return out
}

func TestReconcileFindsExactlyWhatIsOutOfStep(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	day := "2026-11-24"
	at := time.Date(2026, 11, 24, 20, 0, 0, 0, relay.BillZone) // 12:00 UTC, the bill's day in Shanghai
	const m = "2021004100000001"
	// What the provider notified: o-match (and its refund r-match), o-norefund (its refund
	// r-missing was never notified), o-conflict (stored with 1000, the bill says 1200) and
	// o-notinbill (the bill does not list it).
	for _, r := range []relay.Result{billPay(m, "o-match", 1000, at), billPay(m, "o-norefund", 1000, at), billPay(m, "o-conflict", 1000, at),
		billPay(m, "o-notinbill", 500, at), billRefund(m, "o-match", "r-match", 100, at.Add(time.Hour))} {
		if _, err := h.svc.Ingest(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: m, Day: day, Rows: relay.EntryRows(
		billRefund(m, "o-norefund", "r-missing", 300, at.Add(2*time.Hour)), // before its payment's line: order does not matter
		billPay(m, "o-match", 1000, at), billPay(m, "o-norefund", 1000, at), billPay(m, "o-conflict", 1200, at),
		billPay(m, "o-missing", 700, at), billRefund(m, "o-match", "r-match", 100, at.Add(time.Hour)),
	)}
	want := []string{
		"conflict o-conflict: not relayed",
		"missing_payment o-missing: ingested",
		"missing_refund o-norefund r-missing: ingested",
		"not_in_bill o-notinbill: reported",
	}
	rep, err := h.svc.Reconcile(ctx, bill, "scheduler")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, findings(rep)); diff != "" {
		t.Fatalf("findings (-want +got):\n%s", diff)
	}
	if rep.BillPayments != 4 || rep.BillRefunds != 2 || rep.Matched != 3 || rep.Runs != 1 {
		t.Errorf("counts: bill %d payments, %d refunds; matched %d; runs %d", rep.BillPayments, rep.BillRefunds, rep.Matched, rep.Runs)
	}
	for kind, n := range map[relay.FindingKind]int{relay.FindingConflict: 1, relay.FindingMissingPayment: 1, relay.FindingMissingRefund: 1, relay.FindingNotInBill: 1} {
		if rep.Counts[kind] != n {
			t.Errorf("Counts[%s] = %d, want %d", kind, rep.Counts[kind], n)
		}
	}
	// The missing ones are stored, relayed from reconciliation; the conflict changed nothing.
	missing := h.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", m, "o-missing"))
	if missing == nil || missing.Paid().Via != relay.ViaReconcile || missing.Paid().State != relay.StatePending || missing.AmountMinor != 700 {
		t.Fatalf("o-missing stored as %+v", missing)
	}
	nr := h.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", m, "o-norefund"))
	if n := nr.RefundByID("r-missing"); n == nil || n.Via != relay.ViaReconcile || n.Refund.AmountMinor != 300 || nr.RefundedMinor != 300 {
		t.Fatalf("o-norefund's refund stored as %+v", nr.Notifications)
	}
	if c := h.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", m, "o-conflict")); c.AmountMinor != 1000 || len(c.Notifications) != 1 {
		t.Errorf("the conflict changed the stored payment: %+v", c)
	}
	tasks := len(h.queue.Snapshot())

	// Run again (Cloud Scheduler's retry, an operator): the same four findings, the missing
	// ones recognised as this reconciliation's, nothing ingested or enqueued twice.
	want[1], want[2] = "missing_payment o-missing: ingested by an earlier run", "missing_refund o-norefund r-missing: ingested by an earlier run"
	rep, err = h.svc.Reconcile(ctx, bill, "operator")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, findings(rep)); diff != "" {
		t.Errorf("second run's findings (-want +got):\n%s", diff)
	}
	if got := len(h.queue.Snapshot()); got != tasks {
		t.Errorf("the second run enqueued %d more tasks", got-tasks)
	}
	if stored, _ := h.svc.Report(ctx, relay.ReportID("alipay", m, day)); stored == nil || stored.Runs != 2 || stored.By != "operator" {
		t.Errorf("stored report %+v, want run 2 by the operator", stored)
	}
}

// A run killed half-way (the store failing after the first ingest) is safe to run again.
func TestReconcileInterruptedThenRunAgain(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 24, 9, 0, 0, 0, relay.BillZone)
	const m = "m1"
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: m, Day: "2026-11-24", Rows: relay.EntryRows(billPay(m, "a", 100, at), billPay(m, "b", 200, at))}
	creates := 0
	h.store.Fail = func(op string) error {
		if op == "create" {
			if creates++; creates > 1 {
				return fmt.Errorf("killed: %w", relay.ErrUnavailable)
			}
		}
		return nil
	}
	if _, err := h.svc.Reconcile(ctx, bill, "scheduler"); err == nil {
		t.Fatal("a run whose store failed reported success")
	}
	if _, err := h.svc.Report(ctx, relay.ReportID("alipay", m, "2026-11-24")); err == nil {
		t.Error("an interrupted run stored a report")
	}
	h.store.Fail = nil
	rep, err := h.svc.Reconcile(ctx, bill, "scheduler")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"missing_payment a: ingested by an earlier run", "missing_payment b: ingested"}
	if diff := cmp.Diff(want, findings(rep)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	paidTasks := 0
	for _, task := range h.queue.Snapshot() {
		if task.Key == relay.KeyPaid && task.Attempt == 1 {
			paidTasks++
		}
	}
	if paidTasks != 2 {
		t.Errorf("%d first tasks for 2 recovered payments", paidTasks)
	}
}

// Alipay bills an account that several apps may share: an order stored under any of them
// matches; a missing one is not relayed under a guessed app.
func TestReconcileSharedAccount(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 24, 9, 0, 0, 0, relay.BillZone)
	if _, err := h.svc.Ingest(ctx, billPay("app-2", "sold-by-2", 100, at)); err != nil {
		t.Fatal(err)
	}
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "app-1", Merchants: []string{"app-1", "app-2"}, Day: "2026-11-24", Rows: relay.EntryRows(
		billPay("app-1", "sold-by-2", 100, at), billRefund("app-1", "sold-by-2", "rf-1", 40, at.Add(time.Minute)), billPay("app-1", "whose", 100, at),
	)}
	rep, err := h.svc.Reconcile(ctx, bill, "scheduler")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"missing_refund sold-by-2 rf-1: ingested", "unrelayable whose: reported"}
	if diff := cmp.Diff(want, findings(rep)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	if p := h.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", "app-2", "sold-by-2")); p.RefundByID("rf-1") == nil {
		t.Error("the refund was not recorded on the payment of the app that sold it")
	}
	if h.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", "app-1", "whose")) != nil || h.store.Payment(relay.PaymentID(relay.EnvProduction, "alipay", "app-1", "sold-by-2")) != nil {
		t.Error("a payment was stored under a guessed app")
	}
}

func TestBillDays(t *testing.T) {
	t.Parallel()
	p := samplePayment()                                       // paid 11:59 UTC: 19:59 in Shanghai, the 24th
	p.PaidAt = time.Date(2026, 11, 24, 16, 30, 0, 0, time.UTC) // 00:30 on the 25th in Shanghai
	p.Notifications = []relay.Notification{{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded},
		{Key: relay.RefundKey("r"), Type: relay.TypePaymentRefunded, Refund: &relay.Refund{ID: "r", RefundedAt: time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)}}}
	want := []string{"paid|generic|game-1|2026-11-25", "refund|generic|game-1|2026-11-26"}
	if diff := cmp.Diff(want, p.BillDays()); diff != "" {
		t.Errorf("BillDays (-want +got):\n%s", diff)
	}
}

// A payment payrelay recovered from a bill (or a query) and its notification arriving later
// are the same payment, even though the bill's time is not the notification's to the second;
// so is a refund notification that carries the payment's own time.
func TestLateNotificationOfARecoveredPayment(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 24, 20, 0, 0, 0, relay.BillZone)
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1", Day: "2026-11-24", Rows: relay.EntryRows(billPay("m1", "late-1", 1000, at))}
	if _, err := h.svc.Reconcile(ctx, bill, "scheduler"); err != nil {
		t.Fatal(err)
	}
	late := billPay("m1", "late-1", 1000, at.Add(2*time.Second))
	res, err := h.svc.Ingest(ctx, late)
	if err != nil || !res.Duplicate {
		t.Fatalf("the late notification: %+v %v, want a duplicate", res, err)
	}
	refund := billRefund("m1", "late-1", "rf-1", 100, at.Add(time.Hour))
	refund.Payment.AmountMinor, refund.Payment.PaidAt = 1000, at.Add(2*time.Second)
	if _, err := h.svc.Ingest(ctx, refund); err != nil {
		t.Fatalf("its refund's notification: %v", err)
	}
	// Notified in the first place, a time that differs is still a conflict.
	if _, err := h.svc.Ingest(ctx, billPay("m1", "notified-1", 1000, at)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Ingest(ctx, billPay("m1", "notified-1", 1000, at.Add(2*time.Second))); !errors.Is(err, relay.ErrFactsDiffer) {
		t.Errorf("a notified payment repeated with another time: %v, want ErrFactsDiffer", err)
	}
}

// notifiedDay ingests n payments of merchant m1 paid on 2026-11-24, as their notifications
// would, and returns them as the day's bill lists them.
func notifiedDay(t *testing.T, h *harness, prefix string, n int) []relay.Result {
	t.Helper()
	at := time.Date(2026, 11, 24, 10, 0, 0, 0, relay.BillZone)
	var entries []relay.Result
	for i := range n {
		e := billPay("m1", fmt.Sprint(prefix, i), 100, at)
		if _, err := h.svc.Ingest(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	return entries
}

// A day whose every line matches costs the day's queries, no read per line, and nothing
// ingested or enqueued.
func TestReconcileMatchedDayCostsNoReadPerLine(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1", Day: "2026-11-24", Rows: relay.EntryRows(notifiedDay(t, h, "day-", 100)...)}
	gets, creates, updates, tasks := h.store.Gets, h.store.Creates, h.store.Updates, len(h.queue.Snapshot())
	rep, err := h.svc.Reconcile(ctx, bill, "scheduler")
	if err != nil || rep.Matched != 100 || len(rep.Findings) != 0 {
		t.Fatalf("report %+v %v", rep, err)
	}
	if h.store.Gets != gets || h.store.Creates != creates || h.store.Updates != updates || len(h.queue.Snapshot()) != tasks {
		t.Errorf("a matched day cost %d reads, %d creates, %d updates, %d tasks; want none", h.store.Gets-gets, h.store.Creates-creates,
			h.store.Updates-updates, len(h.queue.Snapshot())-tasks)
	}
	if h.store.DayQueries != 2 {
		t.Errorf("a day of 100 cost %d day queries, want 2 (its payments and its refunds, a page each)", h.store.DayQueries)
	}
}

// A large day is read in id ranges at once (4 for 5,000 payments: one per 1,200), every payment
// exactly once: the bill matches all of them and nothing is missing or not in the bill; the
// pages read stay about the day's size in pages, whatever the ranges.
func TestReconcileReadsALargeDayInRanges(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	entries := notifiedDay(t, h, "big-", 5000)
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1", Day: "2026-11-24", Rows: relay.EntryRows(entries...)}
	queries := h.store.DayQueries
	rep, err := h.svc.Reconcile(ctx, bill, "scheduler")
	if err != nil || rep.Matched != 5000 || len(rep.Findings) != 0 {
		t.Fatalf("a day of 5,000 read in ranges: matched %d, findings %d (%v), %v", rep.Matched, len(rep.Findings), rep.Counts, err)
	}
	// 5,000 in 4 ranges of about 1,250: 5 pages each (the last short), and the refunds' key's one.
	if q := h.store.DayQueries - queries; q < 20 || q > 24 { // one range would read 18
		t.Errorf("%d day queries; want about 4 ranges of 5 pages and one for the refunds", q)
	}
}

// A day larger than a page is read a page per store operation; a page that fails is retried on
// its own, and the report still covers every payment of the day once.
func TestReconcileReadsALargeDayInPages(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	n := 2*relay.DayPage + 5
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1", Day: "2026-11-24", Rows: relay.EntryRows(slices.Delete(notifiedDay(t, h, "big-", n), 7, 8)...)} // the bill lacks big-7
	calls := 0
	h.store.Fail = func(op string) error {
		if op == "day" {
			if calls++; calls == 2 { // the second page, once
				return relay.ErrUnavailable
			}
		}
		return nil
	}
	rep, err := h.svc.Reconcile(ctx, bill, "scheduler")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"not_in_bill big-7: reported"}; rep.Matched != n-1 || !cmp.Equal(findings(rep), want) {
		t.Errorf("matched %d of %d, findings %v; want %v", rep.Matched, n-1, findings(rep), want)
	}
	// Payments: 3 pages (300, 300, 5) and the failed one; refunds: 1 page.
	if h.store.DayQueries != 4 || calls != 5 {
		t.Errorf("%d day queries answered of %d asked; want 4 of 5", h.store.DayQueries, calls)
	}
}

// dayOf is a DayFinder that makes up n delivered payments of one day as they come back from
// the store (metadata, a delivered attempt), page by page, holding none of them itself. Before
// answering the last page it measures the live heap: what the reconciliation then holds of
// the pages before.
type dayOf struct {
	n    int
	held uint64 // the live heap at the last page
}

func (d *dayOf) CountOnBillDay(context.Context, string) (int, error) { return d.n, nil }

func (d *dayOf) payment(i int) *relay.Payment {
	at := time.Date(2026, 11, 24, 10, 0, 0, 0, relay.BillZone)
	order := fmt.Sprintf("held-%07d", i)
	return &relay.Payment{ID: fmt.Sprintf("%032d", i), Provider: "alipay", Environment: relay.EnvProduction, Merchant: "2021004100000001", OrderID: order,
		TransactionID: fmt.Sprintf("20261124220014468810%08d", i), AmountMinor: 64800, Currency: "CNY", PaidAt: at, AppID: "2021004100000001",
		Game: "sword", Metadata: map[string]string{"sku": "month-card", "player": fmt.Sprint(100000 + i), "server": "s12"}, ReceivedAt: at, UpdatedAt: at,
		Notifications: []relay.Notification{{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded, State: relay.StateDelivered, Attempt: 1, CreatedAt: at,
			Via: relay.ViaNotify, Attempts: []relay.AttemptRecord{{Number: 1, StartedAt: at, Duration: 40 * time.Millisecond, StatusCode: 200,
				Response: `{"ok":true}`, Delivery: fmt.Sprintf("%032d-paid-1#0", i)}}}}}
}

func (d *dayOf) OnBillDay(_ context.Context, key, after, _ string, limit int) ([]*relay.Payment, error) {
	if !strings.HasPrefix(key, "paid|") {
		return nil, nil
	}
	start := 0
	if after != "" {
		start, _ = strconv.Atoi(after)
		start++
	}
	end := min(start+limit, d.n)
	if end < start+limit { // the last page
		d.held = liveHeap()
	}
	var out []*relay.Payment
	for i := start; i < end; i++ {
		out = append(out, d.payment(i))
	}
	return out, nil
}

func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// What a reconciliation holds of a large day, per stored payment, against the baseline of
// holding the payments as the store returns them (what one query of the whole day held).
func BenchmarkReconcileDayHeld(b *testing.B) {
	const n = 20000
	b.Run("payments", func(b *testing.B) {
		d := &dayOf{n: n}
		for b.Loop() {
			before := liveHeap()
			var all []*relay.Payment
			for i := range n {
				all = append(all, d.payment(i))
			}
			b.ReportMetric(float64(liveHeap()-before)/n, "B/payment")
			runtime.KeepAlive(all)
		}
	})
	b.Run("reconcile", func(b *testing.B) {
		d := &dayOf{n: n}
		svc, err := relay.NewService(relay.Config{Store: relaytest.NewStore(), Queue: relaytest.NewQueue(), Clock: relaytest.NewClock(t0),
			Ladder: schedule.Default(), Lease: time.Minute, Reports: relaytest.NewReports(), Days: d, DayPartitions: 1, // dayOf serves one reader in order
			Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
				return relay.NotifyResult{}
			})})
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			before := liveHeap()
			rep, err := svc.Reconcile(context.Background(), relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "2021004100000001", Day: "2026-11-24"}, "bench")
			if err != nil || rep.Counts[relay.FindingNotInBill] != n {
				b.Fatal(rep, err)
			}
			b.ReportMetric(float64(d.held-before)/n, "B/payment")
		}
	})
}

// A bill that does not hold at its end (a WeChat Pay SHA1 mismatch after many rows, a
// truncated file) relays nothing: what it showed missing was staged, and is discarded.
func TestReconcileRelaysNothingOfABillThatDoesNotHold(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 24, 20, 0, 0, 0, relay.BillZone)
	const n = 5000
	bad := errors.New("the file's SHA1 does not match the hash_value of the bill query")
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1", Day: "2026-11-24",
		Rows: func(yield func(relay.BillRow) error) error {
			for i := range n {
				e := billPay("m1", fmt.Sprintf("unverified-%d", i), 100, at)
				if err := yield(relay.BillRow{Entry: &e}); err != nil {
					return err
				}
			}
			return bad
		}}
	if _, err := h.svc.Reconcile(ctx, bill, "scheduler"); !errors.Is(err, bad) {
		t.Fatalf("Reconcile = %v, want the bill's own error", err)
	}
	if got := h.store.Len(); got != 0 {
		t.Fatalf("%d payments stored from a bill that did not hold; want none", got)
	}
	if tasks := len(h.queue.Snapshot()); tasks != 0 {
		t.Fatalf("%d tasks enqueued from a bill that did not hold", tasks)
	}
}

// The memory a reconciliation holds per stored payment or refund is the record's size.
func TestDayRecordSize(t *testing.T) {
	t.Parallel()
	if got := relay.DayRecordSize(); got != relay.DayRecordBytes {
		t.Fatalf("a day record is %d bytes; DayRecordBytes says %d", got, relay.DayRecordBytes)
	}
}

// A day with more missing than ReconcileInline relays them through a job on the ops queue: the
// run stores nothing itself, its findings say queued by the job, and each step ingests a page at
// the bounded rate. A step killed half way (the store failing after 40 creates) runs again and
// ingests the rest; nothing is relayed twice, and the refunds go after their payments.
func TestReconcileRelaysManyMissingThroughAJob(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 24, 20, 0, 0, 0, relay.BillZone)
	var entries []relay.Result
	for i := range 250 {
		entries = append(entries, relay.Result{Type: relay.TypePaymentSucceeded, Payment: relay.Payment{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1",
			OrderID: fmt.Sprintf("lost-%03d", i), TransactionID: fmt.Sprintf("t-%d", i), AmountMinor: 600, Currency: "CNY", PaidAt: at, AppID: "m1", Game: "sword"}})
	}
	var refunds []relay.Result
	for i := range 5 { // refunds of five of them, listed first in the bill
		e := entries[i]
		e.Type, e.Refund = relay.TypePaymentRefunded, &relay.RefundFacts{ID: fmt.Sprintf("rf-%d", i), AmountMinor: 100, RefundedAt: at.Add(time.Hour)}
		refunds = append(refunds, e)
	}
	entries = append(refunds, entries...)
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1", Day: "2026-11-24", Rows: relay.EntryRows(entries...)}
	rep, err := h.svc.Reconcile(ctx, bill, "scheduler")
	if err != nil || rep.RelayJob == "" || rep.Counts[relay.FindingMissingPayment] != 250 || rep.Counts[relay.FindingMissingRefund] != 5 || h.store.Len() != 0 {
		t.Fatalf("report: job %q, counts %v, %d stored, %v; want a job, 250 and 5 missing, nothing stored yet", rep.RelayJob, rep.Counts, h.store.Len(), err)
	}
	if !strings.HasPrefix(rep.Findings[0].Action, "queued: relayed by job ") {
		t.Fatalf("finding action %q", rep.Findings[0].Action)
	}
	step := func(n int) error {
		_, err := h.svc.RunJobStep(ctx, rep.RelayJob, n)
		return err
	}
	if err := step(0); err != nil || h.store.Len() != 100 {
		t.Fatalf("step 0: %v, %d stored", err, h.store.Len())
	}
	// Step 1 is killed after 40 of its creates: it must run again.
	creates := 0
	h.store.Fail = func(op string) error {
		if op == "create" {
			if creates++; creates > 40 {
				return fmt.Errorf("firestore: %w", relay.ErrUnavailable)
			}
		}
		return nil
	}
	if err := step(1); err == nil {
		t.Fatal("an interrupted step reported success")
	}
	h.store.Fail = nil
	for n := 1; n <= 2; n++ {
		if err := step(n); err != nil {
			t.Fatalf("step %d: %v", n, err)
		}
	}
	j, err := h.svc.Job(ctx, rep.RelayJob)
	if err != nil || j.State != relay.JobDone || j.Replayed+j.Skipped != 255 || j.Skipped != 40 || h.store.Len() != 250 {
		t.Fatalf("job %+v, %v, %d stored; want done, 215 ingested and 40 found stored after the interruption, 250 payments", j, err, h.store.Len())
	}
	if got := h.queue.JobSteps; len(got) != 3 || got[2].Step != 2 {
		t.Errorf("steps enqueued %v, want 0, 1, 2", got)
	}
	h.drain(t)
	posts := map[string]int{}
	for _, s := range h.sentKeys() {
		posts[s]++
	}
	if n := len(h.sentKeys()); n != 255 {
		t.Errorf("%d posts, want 250 payments and 5 refunds, each once", n)
	}
	for i := range 5 {
		id := relay.PaymentID(relay.EnvProduction, "alipay", "m1", fmt.Sprintf("lost-%03d", i))
		if p := h.store.Payment(id); p == nil || len(p.Notifications) != 2 || p.Notifications[0].Key != relay.KeyPaid || p.Notifications[1].State != relay.StateDelivered {
			t.Errorf("payment %d: %+v; want its payment, then its refund, both delivered", i, p)
		}
	}
}

// A stored day larger than the function is sized for is refused before it is read: no page of
// it loaded, nothing ingested, the error naming the count, the bound and what to raise.
func TestReconcileRefusesADayBeyondItsMemory(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	entries := notifiedDay(t, h, "huge-", 30)
	svc, err := relay.NewService(relay.Config{Store: h.store, Finder: h.store, Queue: h.queue, Clock: h.clock, Ladder: schedule.Default(), Lease: time.Minute,
		Reports: relaytest.NewReports(), Days: h.store, MaxDayPayments: 20,
		Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
			return relay.NotifyResult{StatusCode: 200}
		})})
	if err != nil {
		t.Fatal(err)
	}
	queries, creates := h.store.DayQueries, h.store.Creates
	_, err = svc.Reconcile(ctx, relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1", Day: "2026-11-24", Rows: relay.EntryRows(entries...)}, "scheduler")
	var big *relay.DayTooLarge
	if !errors.As(err, &big) || big.Stored != 30 || big.Max != 20 || !strings.Contains(err.Error(), "reconcile_memory") {
		t.Fatalf("a day of 30 with room for 20: %v", err)
	}
	if h.store.DayQueries != queries || h.store.Creates != creates {
		t.Errorf("the refused day was read (%d pages) or ingested (%d)", h.store.DayQueries-queries, h.store.Creates-creates)
	}
}
