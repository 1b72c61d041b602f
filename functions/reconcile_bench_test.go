package functions

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/infra/store"
	"github.com/payrelay/payrelay/local/emulator"
	"github.com/payrelay/payrelay/schedule"
)

// A stored day on the Firestore emulator reconciled end to end through the real Reconcile
// handler and the real store: RECONCILE_DAY_PAYMENTS payments (default 20,000) are stored, then a
// bill listing every one of them is reconciled, reading the day in one id range and in
// DayPartitions ranges. Reported: the seconds per run, the stored payments read per second, and
// the heap the run held above what it started with, per stored payment. The emulator keeps no
// index: every page scans the collection, so a run grows with the square of the day (50,000
// take minutes, 200,000 took 65 with one range and 34 with eight; local/bench/README.md has
// the figures). One of the two alone: -bench 'ReconcileStoredDay/ranges=8$'.
//
//	RECONCILE_DAY_PAYMENTS=200000 go test ./functions -run XXX -bench ReconcileStoredDay -benchtime 1x
func BenchmarkReconcileStoredDay(b *testing.B) {
	n := 20000
	if v, err := strconv.Atoi(os.Getenv("RECONCILE_DAY_PAYMENTS")); err == nil && v > 0 {
		n = v
	}
	emulator.FirestoreForTest(b)
	ctx := context.Background()
	st, err := store.NewFirestore(ctx, "payrelay-test", "", emulator.UniqueName(b, "bench-day"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	at := time.Date(2026, 11, 20, 12, 0, 0, 0, relay.BillZone)
	pay := func(i int) relay.Payment {
		return relay.Payment{Provider: "generic", Environment: relay.EnvProduction, Merchant: "shop-2", OrderID: fmt.Sprintf("day-%07d", i),
			TransactionID: fmt.Sprintf("txn-%07d", i), AmountMinor: 648, Currency: "CNY", PaidAt: at, AppID: "shop-2", Game: "game-1"}
	}
	// Stored as Ingest stores them, 32 at a time.
	seedStart := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				p := pay(i)
				p.ID = relay.PaymentID(p.Environment, p.Provider, p.Merchant, p.OrderID)
				p.ReceivedAt, p.UpdatedAt = at, at
				p.Notifications = []relay.Notification{{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded, State: relay.StateDelivered, Attempt: 1, CreatedAt: at, Via: relay.ViaNotify,
					Attempts: []relay.AttemptRecord{{Number: 1, StartedAt: at, Duration: 40 * time.Millisecond, StatusCode: 200, Response: `{"ok":true}`}}}}
				if _, _, _, err := st.Create(ctx, &p); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.Logf("stored %d payments in %v", n, time.Since(seedStart).Round(time.Second))
	day := relay.BillDay(at)
	// The bill: every stored payment, generated as it is read (never held).
	rows := func(yield func(relay.BillRow) error) error {
		for i := range n {
			e := relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay(i)}
			if err := yield(relay.BillRow{Entry: &e}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, parts := range []int{1, relay.DayPartitions} {
		b.Run(fmt.Sprintf("ranges=%d", parts), func(b *testing.B) {
			// OpTimeout lifts PageTimeout's 30 s (a page gets the longer of the two): with 8
			// ranges at once on 200,000 payments, the emulator's pages (each a scan of the
			// collection on its two cores) took longer than that.
			svc, err := relay.NewService(relay.Config{Store: st, Finder: st, Days: st, Reports: st, Queue: relaytest.NewQueue(), Ladder: schedule.Default(), Lease: time.Minute,
				DayPartitions: parts, OpTimeout: 10 * time.Minute, Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
					return relay.NotifyResult{}
				}),
				Backoff: func() retry.Backoff { return retry.WithMaxRetries(3, retry.NewConstant(50*time.Millisecond)) }})
			if err != nil {
				b.Fatal(err)
			}
			generic, _ := provider.NewGeneric(map[string]string{"shop-2": "game-1"}, testSecret)
			// The emulator reads a large day slower than the deployed function's 8 minutes allow
			// (it scans the collection per page): the figure is measured without that bound.
			h := &Handler{Service: svc, Clock: relay.SystemClock{}, Logger: slog.New(slog.DiscardHandler), ReconcileTimeout: 2 * time.Hour, Providers: provider.Set{
				"bills": &fakeBiller{Generic: generic, bill: relay.Bill{Provider: "generic", Environment: relay.EnvProduction, Merchant: "shop-2", Day: day, Rows: rows}}}}
			for b.Loop() {
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				base := ms.HeapInuse
				var peak atomic.Uint64
				done := make(chan struct{})
				go func() {
					t := time.NewTicker(20 * time.Millisecond)
					defer t.Stop()
					for {
						select {
						case <-done:
							return
						case <-t.C:
							var m runtime.MemStats
							runtime.ReadMemStats(&m)
							if m.HeapInuse > peak.Load() {
								peak.Store(m.HeapInuse)
							}
						}
					}
				}()
				start := time.Now()
				w := httptest.NewRecorder()
				h.Reconcile(w, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"day":"`+day+`"}`)))
				wall := time.Since(start)
				close(done)
				if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), fmt.Sprintf(`"matched":%d`, n)) {
					b.Fatalf("Reconcile = %d %.400s", w.Code, w.Body)
				}
				held := float64(0)
				if p := peak.Load(); p > base {
					held = float64(p - base)
				}
				b.ReportMetric(wall.Seconds(), "s/run")
				b.ReportMetric(float64(n)/wall.Seconds(), "payments/s")
				b.ReportMetric(held/float64(n), "heap-B/payment")
			}
		})
	}
}
