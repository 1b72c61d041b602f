package relay_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sethvargo/go-retry"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/schedule"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func samplePayment() relay.Payment {
	return relay.Payment{
		Provider: "generic", Environment: relay.EnvProduction, Merchant: "game-1", OrderID: "order-1001", TransactionID: "txn_9f8e7d",
		AmountMinor: 1999, Currency: "CNY", PaidAt: t0.Add(-time.Minute),
		AppID: "game-1", Game: "sword", Metadata: map[string]string{"sku": "gems_500"},
	}
}

// samplePaid is the payment.succeeded result of samplePayment.
func samplePaid() relay.Result {
	return relay.Result{Type: relay.TypePaymentSucceeded, Payment: samplePayment()}
}

// paidTask is the task message of attempt n of a payment's payment.succeeded notification.
func paidTask(paymentID string, n int) relay.TaskMessage {
	return relay.TaskMessage{PaymentID: paymentID, Notification: relay.KeyPaid, Attempt: n}
}

func TestPaymentID(t *testing.T) {
	t.Parallel()
	a := relay.PaymentID(relay.EnvProduction, "generic", "m1", "order-1")
	if a != relay.PaymentID(relay.EnvProduction, "generic", "m1", "order-1") {
		t.Fatal("PaymentID is not deterministic")
	}
	if a == relay.PaymentID(relay.EnvProduction, "generic", "m1", "order-2") || a == relay.PaymentID(relay.EnvProduction, "alipay", "m1", "order-1") {
		t.Fatal("PaymentID collides across orders or providers")
	}
	// Order ids are unique only within a merchant account: two merchants' equal order numbers
	// are two payments.
	if a == relay.PaymentID(relay.EnvProduction, "generic", "m2", "order-1") {
		t.Fatal("PaymentID collides across merchant accounts")
	}
	// The separators keep the parts apart: "ab"+"c" is not "a"+"bc".
	if relay.PaymentID(relay.EnvProduction, "ab", "c", "d") == relay.PaymentID(relay.EnvProduction, "a", "bc", "d") || relay.PaymentID(relay.EnvProduction, "p", "ab", "c") == relay.PaymentID(relay.EnvProduction, "p", "a", "bc") {
		t.Fatal("PaymentID ignores the boundary between its parts")
	}
	// Sequential order numbers must not share a key prefix (Firestore hotspotting).
	if relay.PaymentID(relay.EnvProduction, "generic", "m", "1000")[:4] == relay.PaymentID(relay.EnvProduction, "generic", "m", "1001")[:4] {
		t.Error("sequential order ids share a 4-character id prefix")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		edit  func(p *relay.Payment)
		field string // "" when valid
	}{
		{name: "valid", edit: func(*relay.Payment) {}},
		{name: "provider upper", edit: func(p *relay.Payment) { p.Provider = "Alipay" }, field: "provider"},
		{name: "empty order", edit: func(p *relay.Payment) { p.OrderID = "" }, field: "order_id"},
		{name: "long order", edit: func(p *relay.Payment) { p.OrderID = strings.Repeat("9", 65) }, field: "order_id"},
		{name: "order charset", edit: func(p *relay.Payment) { p.OrderID = "a/b" }, field: "order_id"},
		{name: "order unicode", edit: func(p *relay.Payment) { p.OrderID = "订单1" }, field: "order_id"},
		{name: "empty txn", edit: func(p *relay.Payment) { p.TransactionID = "" }, field: "transaction_id"},
		{name: "empty app", edit: func(p *relay.Payment) { p.AppID = "" }, field: "app_id"},
		{name: "unknown currency", edit: func(p *relay.Payment) { p.Currency = "XXX" }, field: "currency"},
		{name: "lowercase currency", edit: func(p *relay.Payment) { p.Currency = "cny" }, field: "currency"},
		{name: "zero amount", edit: func(p *relay.Payment) { p.AmountMinor = 0 }, field: "amount"},
		{name: "negative amount", edit: func(p *relay.Payment) { p.AmountMinor = -5 }, field: "amount"},
		{name: "empty merchant", edit: func(p *relay.Payment) { p.Merchant = "" }, field: "merchant"},
		{name: "paid_at unknown (a refund's payment)", edit: func(p *relay.Payment) { p.PaidAt = time.Time{} }},
		{name: "metadata key", edit: func(p *relay.Payment) { p.Metadata = map[string]string{"a b": "x"} }, field: "metadata"},
		{name: "metadata value", edit: func(p *relay.Payment) { p.Metadata = map[string]string{"a": strings.Repeat("x", 257)} }, field: "metadata"},
		{name: "metadata count", edit: func(p *relay.Payment) {
			p.Metadata = map[string]string{}
			for i := range 21 {
				p.Metadata[fmt.Sprint("k", i)] = "v"
			}
		}, field: "metadata"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := samplePayment()
			tc.edit(&p)
			err := p.Validate()
			var fe *relay.FieldError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.field != "" && !errors.As(err, &fe):
				t.Fatalf("Validate() = %v, want a FieldError on %s", err, tc.field)
			case tc.field != "" && fe.Field != tc.field:
				t.Fatalf("Validate() names %q, want %q (%v)", fe.Field, tc.field, err)
			}
		})
	}
}

func TestParseAmount(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in, cur string
		want    int64
		bad     bool
	}{
		{in: "19.99", cur: "CNY", want: 1999},
		{in: "19.9", cur: "CNY", want: 1990},
		{in: "19", cur: "CNY", want: 1900},
		{in: "0.01", cur: "USD", want: 1},
		{in: "500", cur: "JPY", want: 500},
		{in: "1.234", cur: "KWD", want: 1234},
		{in: "92233720368547758.07", cur: "USD", want: 9223372036854775807},
		{in: "92233720368547758.08", cur: "USD", bad: true},
		{in: "5.5", cur: "JPY", bad: true},
		{in: "1.999", cur: "CNY", bad: true},
		{in: "0.00", cur: "CNY", bad: true},
		{in: "-1.00", cur: "CNY", bad: true},
		{in: "1e3", cur: "CNY", bad: true},
		{in: "1.", cur: "CNY", bad: true},
		{in: ".5", cur: "CNY", bad: true},
		{in: " 1", cur: "CNY", bad: true},
		{in: "", cur: "CNY", bad: true},
		{in: "1", cur: "ABC", bad: true},
	}
	for _, tc := range cases {
		got, err := relay.ParseAmount(tc.in, tc.cur)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("ParseAmount(%q, %s) = %d, %v; want %d, error %v", tc.in, tc.cur, got, err, tc.want, tc.bad)
		}
	}
}

func TestOutcomeClass(t *testing.T) {
	t.Parallel()
	cases := map[relay.Outcome]relay.Class{
		relay.OutcomeDelivered:      relay.ClassDone,
		relay.OutcomeRetryScheduled: relay.ClassDone,
		relay.OutcomeFailed:         relay.ClassDone,
		relay.OutcomeIgnored:        relay.ClassDone,
		relay.OutcomeRepaired:       relay.ClassDone,
		relay.OutcomeRejected:       relay.ClassDone,
		relay.OutcomeBusy:           relay.ClassRetry,
	}
	for o, want := range cases {
		if got := o.Class(); got != want {
			t.Errorf("%s.Class() = %v, want %v", o, got, want)
		}
	}
	if !relay.Retryable(fmt.Errorf("firestore.Get: %w", relay.ErrUnavailable)) {
		t.Error("a wrapped ErrUnavailable is not Retryable")
	}
	if relay.Retryable(relay.ErrNotFound) || relay.Retryable(relay.ErrVersionConflict) {
		t.Error("NotFound or VersionConflict classified as Retryable")
	}
}

func TestStateTerminal(t *testing.T) {
	t.Parallel()
	want := map[relay.State]bool{relay.StateHeld: false, relay.StatePending: false, relay.StateDelivering: false, relay.StateDelivered: true, relay.StateFailed: true}
	for s, w := range want {
		if s.Terminal() != w {
			t.Errorf("%s.Terminal() = %v, want %v", s, !w, w)
		}
	}
}

// harness is a Service over in-memory dependencies with a hand-driven clock.
type harness struct {
	svc     *relay.Service
	store   *relaytest.Store
	queue   *relaytest.Queue
	clock   *relaytest.Clock
	jobs    *failingJobs
	reports *relaytest.Reports
	posts   atomic.Int32
	mu      sync.Mutex
	sent    []sent // every POST, in order
	// answer decides the game server's answer to attempt n.
	answer func(n int) relay.NotifyResult
}

// sent is one POST the game server received.
type sent struct {
	PaymentID string
	Key       string
	Attempt   int
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newRoutedHarness(t, nil)
}

// newRoutedHarness is newHarness whose games have routes (nil: production only).
func newRoutedHarness(t *testing.T, routes relay.Routes) *harness {
	t.Helper()
	h := &harness{store: relaytest.NewStore(), queue: relaytest.NewQueue(), clock: relaytest.NewClock(t0), jobs: &failingJobs{Jobs: relaytest.NewJobs()},
		reports: relaytest.NewReports()}
	h.answer = func(int) relay.NotifyResult { return relay.NotifyResult{StatusCode: 200} }
	svc, err := relay.NewService(relay.Config{
		Store: h.store, Finder: h.store, Queue: h.queue, Clock: h.clock, Ladder: schedule.Default(), Lease: time.Minute,
		Jobs: h.jobs, JobQueue: h.queue, ReplayRate: 1e6, Reports: h.reports, Days: h.store, Routes: routes,
		Notifier: relaytest.NotifierFunc(func(_ context.Context, p *relay.Payment, nt *relay.Notification, n int) relay.NotifyResult {
			h.posts.Add(1)
			h.mu.Lock()
			h.sent = append(h.sent, sent{Key: nt.Key, Attempt: n, PaymentID: p.ID})
			h.mu.Unlock()
			return h.answer(n)
		}),
		Backoff: func() retry.Backoff { return retry.WithMaxRetries(2, retry.NewConstant(time.Millisecond)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	h.svc = svc
	return h
}

func (h *harness) deliverNext(t *testing.T) relay.DeliverResult {
	t.Helper()
	tasks := h.queue.Snapshot()
	task := tasks[len(tasks)-1]
	h.clock.Set(task.At)
	res, err := h.svc.Deliver(context.Background(), relay.TaskMessage{PaymentID: task.PaymentID, Notification: task.Key, Generation: task.Generation, Attempt: task.Attempt}, relay.Delivery{TaskName: task.Name()})
	if err != nil {
		t.Fatalf("Deliver(%s): %v", task.Name(), err)
	}
	return res
}

func TestIngestThenDeliver(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	res, err := h.svc.Ingest(context.Background(), samplePaid())
	if err != nil || res.Duplicate {
		t.Fatalf("Ingest = %+v, %v", res, err)
	}
	want := []relay.Task{{PaymentID: res.PaymentID, Game: "sword", Environment: relay.EnvProduction, Key: relay.KeyPaid, Attempt: 1, At: t0}}
	if diff := cmp.Diff(want, h.queue.Snapshot()); diff != "" {
		t.Fatalf("tasks (-want +got):\n%s", diff)
	}
	if got := h.deliverNext(t); got.Outcome != relay.OutcomeDelivered {
		t.Fatalf("outcome = %s, want delivered", got.Outcome)
	}
	p := h.store.Payment(res.PaymentID)
	if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 1 || p.Paid().Attempts[0].StatusCode != 200 || p.Paid().Lease != nil {
		t.Errorf("stored payment = state %s, attempts %+v, lease %v", p.Paid().State, p.Paid().Attempts, p.Paid().Lease)
	}
}

func TestLadderWalk(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		failFirst int
		wantState relay.State
		wantPosts int
	}{
		{name: "delivered at attempt 4", failFirst: 3, wantState: relay.StateDelivered, wantPosts: 4},
		{name: "always fails", failFirst: 100, wantState: relay.StateFailed, wantPosts: 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.answer = func(n int) relay.NotifyResult {
				if n <= tc.failFirst {
					return relay.NotifyResult{StatusCode: 503, ErrorClass: relay.ErrorHTTP, Response: "busy"}
				}
				return relay.NotifyResult{StatusCode: 204}
			}
			res, err := h.svc.Ingest(context.Background(), samplePaid())
			if err != nil {
				t.Fatal(err)
			}
			for {
				r := h.deliverNext(t)
				if r.Outcome != relay.OutcomeRetryScheduled {
					break
				}
			}
			p := h.store.Payment(res.PaymentID)
			if p.Paid().State != tc.wantState || int(h.posts.Load()) != tc.wantPosts || len(p.Paid().Attempts) != tc.wantPosts {
				t.Fatalf("state %s after %d posts and %d records; want %s after %d", p.Paid().State, h.posts.Load(), len(p.Paid().Attempts), tc.wantState, tc.wantPosts)
			}
			// Each task is scheduled exactly one ladder step after the previous attempt.
			tasks := h.queue.Snapshot()
			for i := 1; i < len(tasks); i++ {
				if got, want := tasks[i].At.Sub(tasks[i-1].At), schedule.Default().Wait(i+1); got != want {
					t.Errorf("wait before attempt %d = %v, want %v", i+1, got, want)
				}
			}
			if got, want := tasks[len(tasks)-1].At.Sub(t0), schedule.Default().Elapsed(len(tasks)); got != want {
				t.Errorf("last attempt %v after receipt, want %v", got, want)
			}
		})
	}
}

func TestIngestDuplicate(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	first, err := h.svc.Ingest(context.Background(), samplePaid())
	if err != nil {
		t.Fatal(err)
	}
	h.deliverNext(t)
	again, err := h.svc.Ingest(context.Background(), samplePaid())
	if err != nil || !again.Duplicate || again.PaymentID != first.PaymentID {
		t.Fatalf("repeat Ingest = %+v, %v; want a duplicate of %s", again, err, first.PaymentID)
	}
	if n := len(h.queue.Snapshot()); n != 1 {
		t.Errorf("%d tasks after a repeated callback, want 1", n)
	}
	changed := samplePaid()
	changed.Payment.AmountMinor = 1
	if _, err := h.svc.Ingest(context.Background(), changed); !errors.Is(err, relay.ErrFactsDiffer) {
		t.Errorf("Ingest with another amount = %v, want ErrFactsDiffer", err)
	}
	if p := h.store.Payment(first.PaymentID); p.AmountMinor != 1999 {
		t.Errorf("stored amount became %d", p.AmountMinor)
	}
}

func TestIngestRetryCompletesWhatFailedBegan(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	down := true
	h.queue.Fail = func(relay.Task) error {
		if down {
			return fmt.Errorf("cloudtasks.CreateTask: %w", relay.ErrUnavailable)
		}
		return nil
	}
	if _, err := h.svc.Ingest(context.Background(), samplePaid()); !relay.Retryable(err) {
		t.Fatalf("Ingest with the queue down = %v, want a retryable error", err)
	}
	if len(h.queue.Snapshot()) != 0 || h.store.Len() != 1 {
		t.Fatalf("before recovery: %d tasks, %d payments", len(h.queue.Snapshot()), h.store.Len())
	}
	down = false
	res, err := h.svc.Ingest(context.Background(), samplePaid())
	if err != nil || !res.Duplicate {
		t.Fatalf("provider retry = %+v, %v", res, err)
	}
	if got := h.queue.Snapshot(); len(got) != 1 || got[0].Attempt != 1 {
		t.Fatalf("after the provider's retry, tasks = %+v, want attempt 1", got)
	}
}

func TestIngestStoreRetriesOnlyRetryable(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var calls int
	h.store.Fail = func(op string) error {
		calls++
		if calls <= 2 {
			return fmt.Errorf("firestore.Create: %w", relay.ErrUnavailable)
		}
		return nil
	}
	if _, err := h.svc.Ingest(context.Background(), samplePaid()); err != nil {
		t.Fatalf("Ingest after two transient failures: %v", err)
	}
	h2 := newHarness(t)
	calls = 0
	h2.store.Fail = func(string) error { calls++; return errors.New("permission denied") }
	if _, err := h2.svc.Ingest(context.Background(), samplePaid()); err == nil || calls != 1 {
		t.Errorf("Ingest with a permanent store error: err %v after %d calls; want an error after 1", err, calls)
	}
}

func TestDeliverStaleAndTerminal(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.answer = func(n int) relay.NotifyResult {
		if n == 1 {
			return relay.NotifyResult{StatusCode: 500, ErrorClass: relay.ErrorHTTP}
		}
		return relay.NotifyResult{StatusCode: 200}
	}
	res, _ := h.svc.Ingest(context.Background(), samplePaid())
	h.deliverNext(t) // attempt 1 fails; attempt 2 enqueued
	ctx := context.Background()
	old, err := h.svc.Deliver(ctx, paidTask(res.PaymentID, 1), relay.Delivery{})
	if err != nil || old.Outcome != relay.OutcomeRepaired {
		t.Errorf("redelivered attempt 1 = %+v, %v; want repaired (attempt 2 already enqueued)", old, err)
	}
	h.deliverNext(t) // attempt 2 succeeds
	for _, n := range []int{1, 2, 3} {
		r, err := h.svc.Deliver(ctx, paidTask(res.PaymentID, n), relay.Delivery{})
		if err != nil || r.Outcome != relay.OutcomeIgnored {
			t.Errorf("Deliver(attempt %d) after delivery = %+v, %v; want ignored", n, r, err)
		}
	}
	if h.posts.Load() != 2 {
		t.Errorf("game server saw %d posts, want 2", h.posts.Load())
	}
	unknown, err := h.svc.Deliver(ctx, paidTask("nope", 1), relay.Delivery{})
	if err != nil || unknown.Outcome != relay.OutcomeRejected {
		t.Errorf("Deliver(unknown) = %+v, %v; want rejected", unknown, err)
	}
}

func TestDeliverLease(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	res, _ := h.svc.Ingest(context.Background(), samplePaid())
	// A delivery claims attempt 1 and dies before recording: simulate by writing its claim.
	p, v, _ := h.store.Get(context.Background(), res.PaymentID)
	p.Paid().State = relay.StateDelivering
	p.Paid().Lease = &relay.Lease{Attempt: 1, Owner: "dead", ClaimedAt: t0, Until: t0.Add(time.Minute)}
	if _, err := h.store.Update(context.Background(), p, v); err != nil {
		t.Fatal(err)
	}
	busy, err := h.svc.Deliver(context.Background(), paidTask(res.PaymentID, 1), relay.Delivery{})
	if err != nil || busy.Outcome != relay.OutcomeBusy || busy.Outcome.Class() != relay.ClassRetry {
		t.Fatalf("Deliver under a live lease = %+v, %v; want busy", busy, err)
	}
	if h.posts.Load() != 0 {
		t.Fatal("posted under another delivery's live lease")
	}
	h.clock.Advance(time.Minute + time.Second)
	taken, err := h.svc.Deliver(context.Background(), paidTask(res.PaymentID, 1), relay.Delivery{})
	if err != nil || taken.Outcome != relay.OutcomeDelivered {
		t.Fatalf("Deliver after the lease expired = %+v, %v; want delivered", taken, err)
	}
	got := h.store.Payment(res.PaymentID)
	if len(got.Paid().Attempts) != 2 || got.Paid().Attempts[0].ErrorClass != relay.ErrorLost || !got.Paid().Attempts[1].Succeeded() {
		t.Errorf("history = %+v; want the lost attempt then the successful one", got.Paid().Attempts)
	}
}

func TestDeliverStoreDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.answer = func(int) relay.NotifyResult { return relay.NotifyResult{StatusCode: 500, ErrorClass: relay.ErrorHTTP} }
	res, _ := h.svc.Ingest(context.Background(), samplePaid())
	h.store.Fail = func(string) error { return fmt.Errorf("firestore: %w", relay.ErrUnavailable) }
	if _, err := h.svc.Deliver(context.Background(), paidTask(res.PaymentID, 1), relay.Delivery{}); !relay.Retryable(err) {
		t.Fatalf("Deliver with the store down = %v, want a retryable error", err)
	}
	if h.posts.Load() != 0 {
		t.Fatal("posted without a recorded claim")
	}
	// The queue refuses the next attempt after the result is recorded: the task is redelivered
	// and the redelivery enqueues attempt 2 without posting attempt 1 again.
	h.store.Fail = nil
	h.queue.Fail = func(relay.Task) error { return fmt.Errorf("cloudtasks: %w", relay.ErrUnavailable) }
	if _, err := h.svc.Deliver(context.Background(), paidTask(res.PaymentID, 1), relay.Delivery{}); !relay.Retryable(err) {
		t.Fatalf("Deliver with the queue down = %v, want a retryable error", err)
	}
	h.queue.Fail = nil
	r, err := h.svc.Deliver(context.Background(), paidTask(res.PaymentID, 1), relay.Delivery{})
	if err != nil || r.Outcome != relay.OutcomeRepaired {
		t.Fatalf("redelivery = %+v, %v; want repaired", r, err)
	}
	if h.posts.Load() != 1 {
		t.Errorf("game server saw %d posts for attempt 1, want 1", h.posts.Load())
	}
	if tasks := h.queue.Snapshot(); len(tasks) != 2 || tasks[1].Attempt != 2 {
		t.Errorf("tasks = %+v, want attempt 2 enqueued", tasks)
	}
}

func TestNewServiceChecksInputs(t *testing.T) {
	t.Parallel()
	if _, err := relay.NewService(relay.Config{}); err == nil {
		t.Error("NewService with nothing succeeded")
	}
}

func BenchmarkPaymentValidate(b *testing.B) {
	p := samplePayment()
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}

// The caller giving up after the POST (Cloud Tasks' deadline) must not lose the record: a lost
// record means a second POST once the lease expires.
func TestDeliverRecordsEvenIfTheCallerGoesAway(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	res, _ := h.svc.Ingest(context.Background(), samplePaid())
	ctx, cancel := context.WithCancel(context.Background())
	h.answer = func(int) relay.NotifyResult {
		cancel() // the request is cut while the game server answers
		return relay.NotifyResult{StatusCode: 200}
	}
	r, err := h.svc.Deliver(ctx, paidTask(res.PaymentID, 1), relay.Delivery{})
	if err != nil || r.Outcome != relay.OutcomeDelivered {
		t.Fatalf("Deliver = %+v, %v; want delivered and recorded", r, err)
	}
	if p := h.store.Payment(res.PaymentID); p.Paid().State != relay.StateDelivered || p.Paid().Lease != nil {
		t.Errorf("stored state %s, lease %v; want delivered, no lease", p.Paid().State, p.Paid().Lease)
	}
}

// While its lease holds, a delivery keeps trying to record its attempt through a store outage
// longer than the ordinary retries, so the game server gets no second POST.
func TestDeliverRecordsThroughAnOutageWithinTheLease(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	res, _ := h.svc.Ingest(context.Background(), samplePaid())
	updates := 0
	h.store.Fail = func(op string) error {
		if op != "update" {
			return nil
		}
		updates++
		if updates >= 2 && updates <= 5 { // the claim passes, then the record fails 4 times
			return fmt.Errorf("firestore: %w", relay.ErrUnavailable)
		}
		return nil
	}
	r, err := h.svc.Deliver(context.Background(), paidTask(res.PaymentID, 1), relay.Delivery{})
	if err != nil || r.Outcome != relay.OutcomeDelivered || h.posts.Load() != 1 {
		t.Fatalf("Deliver = %+v, %v after %d posts; want delivered after one", r, err, h.posts.Load())
	}
	if p := h.store.Payment(res.PaymentID); p.Paid().State != relay.StateDelivered {
		t.Errorf("stored state %s, want delivered", p.Paid().State)
	}
}

// failingJobs is a job store whose updates can be made to fail (a process killed mid-step).
type failingJobs struct {
	*relaytest.Jobs
	failUpdate bool
}

func (f *failingJobs) UpdateJob(ctx context.Context, j *relay.Job, v relay.Version) (relay.Version, error) {
	if f.failUpdate {
		return 0, errors.New("killed")
	}
	return f.Jobs.UpdateJob(ctx, j, v)
}

func relaytestJobStep(id string, step int) relaytest.JobStep {
	return relaytest.JobStep{JobID: id, Step: step}
}

// isID and isName agree with the patterns they stand for.
func TestIDCheckMatchesItsPattern(t *testing.T) {
	t.Parallel()
	pattern := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:\-]*$`)
	for _, v := range []string{"a", "A1", "1", "order-1001", "wx_1.2:3", "-a", "_a", ".a", ":a", "a b", "a/b", "订单", "é", "a\x00", "ab-", "Z9", "a\n"} {
		if got, want := relay.IsID(v), pattern.MatchString(v); got != want {
			t.Errorf("IsID(%q) = %v, the pattern says %v", v, got, want)
		}
	}
	for _, v := range []string{"sword", "farm-valley", "a", "a1", "1a", "-a", "Sword", "a_b", "abcdefghijabcdefghijabcdefghij", "abcdefghijabcdefghijabcdefghijk", ""} {
		p := relay.Payment{Provider: "generic", Environment: relay.EnvProduction, Merchant: "m", OrderID: "o", TransactionID: "t", AmountMinor: 1, Currency: "CNY", AppID: "a", Game: v}
		if got, want := p.Validate() == nil, relay.GamePattern.MatchString(v); got != want {
			t.Errorf("a payment of game %q validates %v, GamePattern says %v", v, got, want)
		}
	}
}
