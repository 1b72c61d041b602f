package provider_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest/bigday"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/schedule"
)

// A WeChat Pay bill of a million rows whose SHA1 fails only at its end (its last row altered in
// transit) relays nothing: through the API stand-in (signed query, gzip streamed as it
// downloads) and the real reader into Reconcile, against a store that lacks three of the day's
// payments. Every row was read and compared before the hash was known; the three missing were
// staged, and are discarded with the run. The same bill downloaded intact then ingests exactly
// those three: the staged findings were what a verified bill relays.
func TestWechatBillFailingItsHashAfterAMillionRowsRelaysNothing(t *testing.T) {
	t.Parallel()
	const n, day = 1_000_000, "2026-11-24"
	wp, api := newWechatBillFixture(t)
	ctx := context.Background()
	honest := func(w io.Writer) error { return bigday.WriteWechat(w, day, "wx", n, nil) }
	altered := func(w io.Writer) error {
		return bigday.WriteWechat(w, day, "wx", n, func(i int) string {
			if i == n-1 {
				return "0.01"
			}
			return ""
		})
	}
	store, queue := relaytest.NewStore(), relaytest.NewQueue()
	svc, err := relay.NewService(relay.Config{Store: store, Queue: queue, Clock: relaytest.NewClock(time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC)),
		Ladder: schedule.Default(), Lease: time.Minute, Reports: relaytest.NewReports(),
		Days:          &relaytest.SyntheticDay{Provider: "wechatpay", Merchant: bigday.WechatMchID, Prefix: "wx", Day: day, N: n, Lacks: map[int]bool{3: true, 500_000: true, n - 2: true}},
		DayPartitions: 1, // SyntheticDay serves one reader in order
		Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
			return relay.NotifyResult{}
		})})
	if err != nil {
		t.Fatal(err)
	}
	reconcile := func() (int, *relay.Report, error) {
		b, err := wp.Bill(ctx, bigday.WechatMchID, day)
		if err != nil {
			t.Fatal(err)
		}
		rows, read := 0, b.Rows
		b.Rows = func(yield func(relay.BillRow) error) error {
			return read(func(r relay.BillRow) error { rows++; return yield(r) })
		}
		rep, err := svc.Reconcile(ctx, b, "test")
		return rows, rep, err
	}

	if err := api.StreamBill(day, altered, honest); err != nil {
		t.Fatal(err)
	}
	rows, _, err := reconcile()
	var qe *provider.QueryError
	if !errors.As(err, &qe) || !strings.Contains(err.Error(), "SHA1") {
		t.Fatalf("a bill altered in transit: %v, want the SHA1 refusal", err)
	}
	if rows != n {
		t.Fatalf("%d rows read before the hash failed; want all %d (the hash is known only at the end)", rows, n)
	}
	if store.Len() != 0 || len(queue.Snapshot()) != 0 {
		t.Fatalf("an unverified bill relayed: %d stored, %d tasks; want none", store.Len(), len(queue.Snapshot()))
	}

	if err := api.StreamBill(day, honest, nil); err != nil {
		t.Fatal(err)
	}
	rows, rep, err := reconcile()
	if err != nil || rows != n {
		t.Fatalf("the intact bill: %d rows, %v", rows, err)
	}
	if rep.Counts[relay.FindingMissingPayment] != 3 || rep.Matched != n-3 || store.Len() != 3 || len(queue.Snapshot()) != 3 {
		t.Fatalf("the intact bill: %+v matched %d, %d stored, %d tasks; want the 3 missing ingested and enqueued", rep.Counts, rep.Matched, store.Len(), len(queue.Snapshot()))
	}
}
