package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/payrelay/payrelay/functions/relay"
)

// The reconciliation's day query finds a payment by the day it was paid and by the day of each
// refund, in Shanghai's calendar, and follows an update that adds a refund.
func TestOnBillDay(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := payment("day-1")
	p.PaidAt = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC) // the 25th in Shanghai
	p.Notifications[0].Via = relay.ViaReconcile
	_, v, _, err := s.Create(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	other := payment("day-2")
	other.PaidAt = time.Date(2026, 11, 24, 15, 0, 0, 0, time.UTC) // the 24th
	if _, _, _, err := s.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	ids := func(key string) []string {
		t.Helper()
		ps, err := s.OnBillDay(ctx, key, "", "", relay.DayPage)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			out = append(out, p.OrderID)
		}
		// The count aggregation counts what the query reads.
		if n, err := s.CountOnBillDay(ctx, key); err != nil || n != len(out) {
			t.Errorf("CountOnBillDay(%s) = %d, %v; the query reads %d", key, n, err, len(out))
		}
		return out
	}
	if got := ids(relay.BillDayKey("paid", "generic", "game-1", "2026-11-25")); !cmp.Equal(got, []string{"day-1"}) {
		t.Errorf("paid on the 25th: %v", got)
	}
	if got := ids(relay.BillDayKey("paid", "generic", "game-1", "2026-11-24")); !cmp.Equal(got, []string{"day-2"}) {
		t.Errorf("paid on the 24th: %v", got)
	}
	p.Notifications = append(p.Notifications, relay.Notification{Key: relay.RefundKey("r1"), Type: relay.TypePaymentRefunded, State: relay.StateHeld,
		Attempt: 1, Refund: &relay.Refund{ID: "r1", AmountMinor: 100, CumulativeMinor: 100, RefundedAt: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)}})
	if _, err := s.Update(ctx, p, v); err != nil {
		t.Fatal(err)
	}
	if got := ids(relay.BillDayKey("refund", "generic", "game-1", "2026-11-26")); !cmp.Equal(got, []string{"day-1"}) {
		t.Errorf("refunded on the 26th: %v", got)
	}
	got, _, err := s.Get(ctx, p.ID)
	if err != nil || got.Paid().Via != relay.ViaReconcile {
		t.Errorf("via did not round-trip: %+v %v", got, err)
	}
}

// A day is read a page at a time in id order: each page starts after the last one's final id,
// and the pages together hold every payment of the day once.
func TestOnBillDayPages(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	var want []string
	for i := range 5 {
		p := payment(fmt.Sprint("page-", i))
		p.Merchant = "pages-merchant"
		p.PaidAt = time.Date(2026, 11, 20, 4, 0, 0, 0, time.UTC)
		if _, _, _, err := s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p.ID)
	}
	slices.Sort(want)
	key := relay.BillDayKey("paid", "generic", "pages-merchant", "2026-11-20")
	var got [][]string
	for after := ""; len(got) < 10; { // a cursor ignored would page forever
		page, err := s.OnBillDay(ctx, key, after, "", 2)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, p := range page {
			ids = append(ids, p.ID)
		}
		got = append(got, ids)
		if len(page) < 2 {
			break
		}
		after = ids[len(ids)-1]
	}
	if w := [][]string{want[0:2], want[2:4], want[4:5]}; !cmp.Equal(got, w) {
		t.Errorf("pages %v, want %v", got, w)
	}
}

func TestReportsRoundTrip(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	if _, err := s.GetReport(ctx, "none"); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("GetReport of nothing = %v, want ErrNotFound", err)
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	for _, day := range []string{"2026-11-23", "2026-11-24"} {
		r := &relay.Report{ID: relay.ReportID("alipay", "app", day), Provider: "alipay", Merchant: "app", Day: day, BillPayments: 3, BillRefunds: 1, Matched: 2,
			Counts: map[relay.FindingKind]int{relay.FindingMissingPayment: 1, relay.FindingConflict: 1}, By: "scheduler", RanAt: at,
			Findings: []relay.Finding{{Kind: relay.FindingMissingPayment, OrderID: "o-1", PaymentID: "p1", BillMinor: 700, Action: "ingested"},
				{Kind: relay.FindingConflict, OrderID: "o-2", PaymentID: "p2", BillMinor: 1200, StoredMinor: 1000, Action: "not relayed", Reason: "amount"}}}
		if err := s.PutReport(ctx, r); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetReport(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(r, got); diff != "" {
			t.Errorf("report round trip (-want +got):\n%s", diff)
		}
	}
	list, err := s.ListReports(ctx, 10)
	if err != nil || len(list) != 2 || list[0].Day != "2026-11-24" {
		t.Errorf("ListReports = %d reports (%v), want the 24th first", len(list), err)
	}
}

// Runs of one day's report at once each count: the store numbers them 1 to n, none twice.
func TestPutReportCountsConcurrentRuns(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	const n = 3
	runs := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r := &relay.Report{ID: relay.ReportID("wechatpay", "1900000109", "2026-11-24"), Provider: "wechatpay", Merchant: "1900000109",
				Day: "2026-11-24", Counts: map[relay.FindingKind]int{}, By: "operator", RanAt: time.Now().UTC()}
			if err := s.PutReport(context.Background(), r); err != nil {
				t.Error(err)
			}
			runs <- r.Runs
		})
	}
	wg.Wait()
	close(runs)
	var got []int
	for r := range runs {
		got = append(got, r)
	}
	slices.Sort(got)
	stored, err := s.GetReport(context.Background(), relay.ReportID("wechatpay", "1900000109", "2026-11-24"))
	if !cmp.Equal(got, []int{1, 2, 3}) || err != nil || stored.Runs != n {
		t.Errorf("concurrent runs numbered %v, stored runs %v (%v); want 1 to %d", got, stored, err, n)
	}
}

// Reading a merchant's day of 1,500 payments on the emulator: in pages of relay.DayPage (what
// Reconcile does, each page one operation under the store's timeout) against the baseline of
// one query for the whole day (what it did before, all under one 3 s operation timeout).
// ms/page is the slowest page: what one operation must fit in.
func BenchmarkOnBillDay(b *testing.B) {
	s := newStore(b)
	ctx := context.Background()
	const n = 1500
	for i := range n {
		p := payment(fmt.Sprint("bench-", i))
		p.Merchant = "bench-merchant"
		p.PaidAt = time.Date(2026, 11, 20, 4, 0, 0, 0, time.UTC)
		if _, _, _, err := s.Create(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
	key := relay.BillDayKey("paid", "generic", "bench-merchant", "2026-11-20")
	b.Run("one-query", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if ps, err := s.OnBillDay(ctx, key, "", "", n+1); err != nil || len(ps) != n {
				b.Fatal(len(ps), err)
			}
		}
	})
	b.Run("pages", func(b *testing.B) {
		b.ReportAllocs()
		var slowest time.Duration
		for b.Loop() {
			got := 0
			for after := ""; ; {
				start := time.Now()
				ps, err := s.OnBillDay(ctx, key, after, "", relay.DayPage)
				if err != nil {
					b.Fatal(err)
				}
				slowest = max(slowest, time.Since(start))
				got += len(ps)
				if len(ps) < relay.DayPage {
					break
				}
				after = ps[len(ps)-1].ID
			}
			if got != n {
				b.Fatal(got)
			}
		}
		b.ReportMetric(float64(slowest.Microseconds())/1000, "ms/page")
	})
}

// A report keeps every finding, in pages: 1,100 findings read back whole and page by page
// (500, 500, 100); a later run with 300 leaves one page and deletes the two it no longer needs.
func TestReportFindingsArePaged(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	mk := func(n int) *relay.Report {
		r := &relay.Report{ID: relay.ReportID("alipay", "app", "2026-11-20"), Provider: "alipay", Merchant: "app", Day: "2026-11-20",
			Counts: map[relay.FindingKind]int{relay.FindingMissingPayment: n}, By: "scheduler", RanAt: time.Now().UTC().Truncate(time.Microsecond)}
		for i := range n {
			r.Findings = append(r.Findings, relay.Finding{Kind: relay.FindingMissingPayment, OrderID: fmt.Sprintf("o-%05d", i), PaymentID: fmt.Sprintf("p%d", i), BillMinor: int64(i + 1), Action: "ingested"})
		}
		return r
	}
	big := mk(1100)
	if err := s.PutReport(ctx, big); err != nil {
		t.Fatal(err)
	}
	whole, err := s.GetReport(ctx, big.ID)
	if err != nil || len(whole.Findings) != 1100 || whole.Findings[1099].OrderID != "o-01099" || whole.Counts[relay.FindingMissingPayment] != 1100 {
		t.Fatalf("whole report: %d findings, %v", len(whole.Findings), err)
	}
	for page, want := range []int{500, 500, 100} {
		r, pages, err := s.GetReportPage(ctx, big.ID, page)
		if err != nil || pages != 3 || len(r.Findings) != want || r.Findings[0].OrderID != fmt.Sprintf("o-%05d", page*500) {
			t.Fatalf("page %d: %d findings of %d pages, %v", page, len(r.Findings), pages, err)
		}
	}
	if err := s.PutReport(ctx, mk(300)); err != nil {
		t.Fatal(err)
	}
	r, pages, err := s.GetReportPage(ctx, big.ID, 0)
	if err != nil || pages != 1 || len(r.Findings) != 300 || r.Runs != 2 {
		t.Fatalf("after a shorter run: %d findings, %d pages, run %d, %v", len(r.Findings), pages, r.Runs, err)
	}
	if n, err := s.StoredFindingPages(ctx, big.ID); err != nil || n != 1 {
		t.Errorf("%d pages of findings stored (%v); the longer run's two extra pages should be gone", n, err)
	}
}

// A day read in id ranges on the emulator: the ranges [""-"4"), ["4"-"8"), ["8"-"c"), ["c"-"")
// hold every payment of the day exactly once.
func TestOnBillDayRanges(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	const n = 200
	key := ""
	for i := range n {
		p := payment(fmt.Sprintf("range-%03d", i))
		if _, _, _, err := s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		key = p.BillDays()[0]
	}
	seen := map[string]int{}
	bounds := []string{"", "4", "8", "c", ""}
	for i := range 4 {
		for after := bounds[i]; ; {
			page, err := s.OnBillDay(ctx, key, after, bounds[i+1], 30)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range page {
				seen[p.ID]++
				if p.ID <= bounds[i] || bounds[i+1] != "" && p.ID >= bounds[i+1] {
					t.Errorf("%s read in range [%q, %q)", p.ID, bounds[i], bounds[i+1])
				}
			}
			if len(page) < 30 {
				break
			}
			after = page[len(page)-1].ID
		}
	}
	if len(seen) != n {
		t.Errorf("the ranges read %d of %d payments", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s read %d times", id, c)
		}
	}
}

// A relay job's items survive the round trip: each relay.Result a reconciliation staged, its
// payment's facts and its refund, read back page by page.
func TestJobItemsRoundTrip(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	items := []relay.Result{
		{Type: relay.TypePaymentSucceeded, Via: relay.ViaReconcile, Payment: relay.Payment{Provider: "wechatpay", Environment: relay.EnvProduction, Merchant: "1900000109",
			OrderID: "o-1", TransactionID: "4200", AmountMinor: 64800, Currency: "CNY", PaidAt: at, AppID: "wx1", Game: "sword", Metadata: map[string]string{"k": "v"}}},
		{Type: relay.TypePaymentRefunded, Via: relay.ViaReconcile, Payment: relay.Payment{Provider: "wechatpay", Environment: relay.EnvProduction, Merchant: "1900000109",
			OrderID: "o-1", AmountMinor: 64800, Currency: "CNY", Game: "sword"}, Refund: &relay.RefundFacts{ID: "5030", AmountMinor: 4800, RefundedAt: at.Add(time.Hour), SettlementMinor: 4700}},
	}
	if err := s.PutJobItems(ctx, "job-1", 3, items); err != nil {
		t.Fatal(err)
	}
	got, err := s.JobItems(ctx, "job-1", 3)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(items, got); diff != "" {
		t.Errorf("items (-want +got):\n%s", diff)
	}
	if _, err := s.JobItems(ctx, "job-1", 4); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("a page never stored: %v, want ErrNotFound", err)
	}
}
