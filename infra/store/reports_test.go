package store_test

import (
	"context"
	"errors"
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
		ps, err := s.OnBillDay(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			out = append(out, p.OrderID)
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
			Counts: map[relay.FindingKind]int{relay.FindingMissingPayment: 1, relay.FindingConflict: 1}, Runs: 2, By: "scheduler", RanAt: at,
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
