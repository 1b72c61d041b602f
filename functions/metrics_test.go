package functions

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/logging"
	"github.com/payrelay/payrelay/infra/monitoring"
)

// lockedBuffer collects log lines from concurrent handlers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// fakeBiller is a provider with a bill to reconcile, or a failure to fetch it.
type fakeBiller struct {
	*provider.Generic
	bill relay.Bill
	err  error
}

func (b *fakeBiller) BillAccounts() []string { return []string{b.bill.Merchant} }

func (b *fakeBiller) Bill(context.Context, string, string) (relay.Bill, error) { return b.bill, b.err }

// Every log-based metric counts log entries the real handlers write: the test drives Ingest,
// Deliver and Sweep through each case a metric counts, captures their JSON logs (the same
// format Cloud Logging ingests), and checks each metric's match finds entries carrying its
// labels and value. A renamed log field fails here.
func TestMetricsMatchTheLogs(t *testing.T) {
	t.Parallel()
	var out lockedBuffer
	f := buildFixture(t, logging.New(&out, "debug"))
	h := f.h
	refund := func(id, amount string) string {
		return strings.Replace(validBody, `"status":"paid"`, fmt.Sprintf(`"status":"refunded","refund_id":%q,"refund_amount":%q,"refunded_at":"2026-11-24T21:00:00+08:00"`, id, amount), 1)
	}
	deliver := func(key string, attempt int) {
		serve(h.Deliver, deliverReq(fmt.Sprintf(`{"payment_id":%q,"notification":%q,"attempt":%d}`, paymentIDOf(t, f), key, attempt)))
	}
	// Received, then a refund held behind it.
	serve(h.Ingest, signed(validBody, testNow))
	serve(h.Ingest, signed(refund("r1", "1.00"), testNow))
	// A failed attempt (retry scheduled), then the ladder's last attempt failing (dead letter).
	f.fail = true
	deliver(relay.KeyPaid, 1)
	for n := 2; n <= 8; n++ {
		deliver(relay.KeyPaid, n)
	}
	// A second payment delivered at once.
	f.fail = false
	serve(h.Ingest, signed(strings.Replace(validBody, "order-1001", "order-1002", 1), testNow))
	serve(h.Deliver, deliverReq(fmt.Sprintf(`{"payment_id":%q,"notification":"paid","attempt":1}`, relay.PaymentID(relay.EnvProduction, "generic", "game-1", "order-1002"))))
	// Refused (bad signature), a conflict (another amount), a failure of ours (store down).
	bad := signed(validBody, testNow)
	bad.Header.Set("webhook-signature", "v1,AAAA")
	serve(h.Ingest, bad)
	serve(h.Ingest, signed(strings.Replace(validBody, `"6.48"`, `"6.47"`, 1), testNow))
	f.store.Fail = func(string) error { return fmt.Errorf("firestore: %w", relay.ErrUnavailable) }
	serve(h.Ingest, signed(strings.Replace(validBody, "order-1001", "order-1003", 1), testNow))
	f.store.Fail = nil
	// A lost task the sweeper heals: order-1004 stored, its task never delivered, the clock
	// moved past the margin.
	serve(h.Ingest, signed(strings.Replace(validBody, "order-1001", "order-1004", 1), testNow))
	// order-1005's queue refuses every enqueue (stuck after 3 sweeps), order-1006's is gone
	// (orphaned).
	serve(h.Ingest, signed(strings.Replace(validBody, "order-1001", "order-1005", 1), testNow))
	serve(h.Ingest, signed(strings.Replace(validBody, "order-1001", "order-1006", 1), testNow))
	stuck, gone := relay.PaymentID(relay.EnvProduction, "generic", "game-1", "order-1005"), relay.PaymentID(relay.EnvProduction, "generic", "game-1", "order-1006")
	f.queue.Fail = func(task relay.Task) error {
		switch {
		case task.Sweep == "":
		case task.PaymentID == stuck:
			return errors.New("cloudtasks.CreateTask: PermissionDenied")
		case task.PaymentID == gone:
			return fmt.Errorf("cloudtasks.CreateTask: %w", relay.ErrNoQueue)
		}
		return nil
	}
	for range 3 {
		h.Clock.(interface{ Advance(time.Duration) }).Advance(time.Hour)
		w := httptest.NewRecorder()
		h.Sweep(w, httptest.NewRequest(http.MethodPost, "/", nil))
		if w.Code != http.StatusOK {
			t.Fatalf("sweep = %d %s", w.Code, w.Body)
		}
	}
	f.queue.Fail = nil
	// A reconciliation finding a payment missing, and one that cannot run.
	at := testNow.Add(-time.Hour)
	day := relay.BillDay(at)
	h.Providers["bills"] = &fakeBiller{Generic: h.Providers["generic"].(*provider.Generic), bill: relay.Bill{Provider: "generic", Environment: relay.EnvProduction, Merchant: "shop-2", Day: day,
		Rows: relay.EntryRows(relay.Result{Type: relay.TypePaymentSucceeded, Payment: relay.Payment{Provider: "generic", Environment: relay.EnvProduction, Merchant: "shop-2", OrderID: "order-bill-1",
			TransactionID: "txn-b1", AmountMinor: 100, Currency: "CNY", PaidAt: at, AppID: "shop-2", Game: "game-1"}})}}
	serve(h.Reconcile, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"day":"`+day+`"}`)))
	h.Providers["bills"].(*fakeBiller).err = provider.ErrBillNotReady
	serve(h.Reconcile, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"day":"`+day+`"}`)))
	// A Stripe test-mode payment for an account configured production only: stored, not
	// relayed, alerted.
	st, err := provider.NewStripe([]provider.StripeAccount{{Account: "acct_1Metrics", Secrets: []string{"whsec_metrics"}, Game: "game-1"}})
	if err != nil {
		t.Fatal(err)
	}
	h.Providers["stripe"] = st
	now := h.Clock.Now()
	ev := providertest.StripeTestEvent("checkout.session.completed", providertest.StripeSession("order-test-1", "pi_test_1", 500, "USD", "paid"), now)
	sreq := httptest.NewRequest(http.MethodPost, "/Ingest?provider=stripe", bytes.NewReader(ev))
	sreq.Header = providertest.SignStripe(ev, now, "whsec_metrics")
	if code, _ := serve(h.Ingest, sreq); code != http.StatusOK {
		t.Fatalf("a mismatched Stripe event answered %d, want 200 (acknowledged, stored not relayed)", code)
	}
	// A Stripe ISK amount that is not whole krónur: refused, never rounded, alerted.
	isk := providertest.StripeEvent("checkout.session.completed", providertest.StripeSession("order-isk-1", "pi_isk_1", 50050, "isk", "paid"), now)
	ireq := httptest.NewRequest(http.MethodPost, "/Ingest?provider=stripe", bytes.NewReader(isk))
	ireq.Header = providertest.SignStripe(isk, now, "whsec_metrics")
	if code, body := serve(h.Ingest, ireq); code != http.StatusUnprocessableEntity {
		t.Fatalf("an ISK amount of 500.50 answered %d %s, want 422", code, body)
	}
	// A recovery sweep that cannot read Stripe's events (the key was revoked).
	api := providertest.NewStripeAPI("rk_live_current")
	defer api.Close()
	revoked, err := provider.NewStripe([]provider.StripeAccount{{Account: "acct_1Metrics", Secrets: []string{"whsec_metrics"}, Game: "game-1",
		APIKeys: map[string]string{"production": "rk_live_revoked"}, APIBase: api.URL}})
	if err != nil {
		t.Fatal(err)
	}
	h.Providers["stripe"] = revoked
	if code, _ := serve(h.Recover, httptest.NewRequest(http.MethodPost, "/", nil)); code != http.StatusServiceUnavailable {
		t.Fatalf("a sweep with a revoked key answered %d, want 503", code)
	}
	// A purchase its store refunds unless acknowledged (Google Play), within a day of the
	// deadline and still unacknowledged: the sweeper names it.
	if _, err := h.Service.Ingest(context.Background(), relay.Result{Type: relay.TypePaymentSucceeded, Payment: relay.Payment{Provider: "generic",
		Environment: relay.EnvProduction, Merchant: "game-1", OrderID: "order-ack-1", TransactionID: "txn-a1", AmountMinor: 100, Currency: "CNY", PaidAt: now,
		AppID: "game-1", Game: "game-1", StoreAck: &relay.StoreAck{Product: "gems", Token: "tok-1", Due: now.Add(time.Hour), State: relay.AckWaiting}}}); err != nil {
		t.Fatal(err)
	}
	if code, body := serve(h.Sweep, httptest.NewRequest(http.MethodPost, "/", nil)); code != http.StatusOK {
		t.Fatalf("sweep = %d %s", code, body)
	}
	// A process refusing to start.
	logStartupFailure(logging.New(&out, "info"), errors.New("config: GAMES is required"))

	var entries []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out.b.Bytes()))
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("a log line is not JSON: %s", sc.Text())
		}
		entries = append(entries, e)
	}
	metrics, err := monitoring.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range metrics {
		counted := 0
		for _, e := range entries {
			ok, missing := m.Matches(e)
			if !ok {
				continue
			}
			counted++
			if len(missing) > 0 {
				t.Errorf("metric %s counts an entry lacking %v: %v", m.Name, missing, e)
			}
		}
		if counted == 0 {
			t.Errorf("metric %s (match %v) counts no entry the handlers wrote", m.Name, m.Match)
		}
	}
	// Spot checks of what the metrics then say.
	count := func(name string) int {
		for _, m := range metrics {
			if m.Name == name {
				n := 0
				for _, e := range entries {
					if ok, _ := m.Matches(e); ok {
						n++
					}
				}
				return n
			}
		}
		return -1
	}
	for name, want := range map[string]int{"notifications_failed": 1, "notifications_retried": 7, "notifications_delivered": 1,
		"notifications_held": 1, "conflicts": 1, "ingest_5xx": 1, "healed": 4, // order-1004, by each of the 4 sweeps (its task is never delivered here)
		"startup_failures": 1, "reconcile_findings": 1, "reconcile_failed": 1, "environment_mismatch": 1, "heal_failures": 2, "heal_stuck": 1, "orphaned": 1, "amounts_refused": 1, "recover_failed": 1, "store_acks_due": 1} {
		if got := count(name); got != want {
			t.Errorf("%s counts %d entries, want %d", name, got, want)
		}
	}
}
