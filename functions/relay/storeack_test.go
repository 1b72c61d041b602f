package relay_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/schedule"
)

// fakeAcker is a store's acknowledge call: it records each call and answers err while set.
type fakeAcker struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (a *fakeAcker) AcknowledgePurchase(_ context.Context, p *relay.Payment) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, p.StoreAck.Token)
	return "", a.err
}

type ackHarness struct {
	svc   *relay.Service
	store *relaytest.Store
	queue *relaytest.Queue
	clock *relaytest.Clock
	acker *fakeAcker
	game  func(attempt int) int // the game server's status for an attempt
}

func newAckHarness(t *testing.T) *ackHarness {
	t.Helper()
	h := &ackHarness{store: relaytest.NewStore(), queue: relaytest.NewQueue(), clock: relaytest.NewClock(t0), acker: &fakeAcker{},
		game: func(int) int { return 200 }}
	svc, err := relay.NewService(relay.Config{
		Store: h.store, Finder: h.store, Queue: h.queue, JobQueue: h.queue, Jobs: relaytest.NewJobs(), StoreAcker: h.acker,
		Clock: h.clock, Ladder: schedule.Default(), Lease: time.Minute,
		Notifier: relaytest.NotifierFunc(func(_ context.Context, _ *relay.Payment, _ *relay.Notification, n int) relay.NotifyResult {
			code := h.game(n)
			if code != 200 {
				return relay.NotifyResult{StatusCode: code, ErrorClass: relay.ErrorHTTP}
			}
			return relay.NotifyResult{StatusCode: code}
		}),
		Backoff: func() retry.Backoff { return retry.WithMaxRetries(1, retry.NewConstant(time.Millisecond)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	h.svc = svc
	return h
}

// ingestAcked stores a payment whose purchase the store refunds unless acknowledged within 72h.
func (h *ackHarness) ingestAcked(t *testing.T, order string) string {
	t.Helper()
	r := samplePaid()
	r.Payment.OrderID = order
	r.Payment.StoreAck = &relay.StoreAck{Product: "gems_60", Token: "tok-" + order, Due: h.clock.Now().Add(72 * time.Hour), State: relay.AckWaiting}
	res, err := h.svc.Ingest(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	return res.PaymentID
}

func (h *ackHarness) acks() []string {
	h.acker.mu.Lock()
	defer h.acker.mu.Unlock()
	return slices.Clone(h.acker.calls)
}

// The store hears of a purchase only after the game server acknowledged it: not while the
// game server fails, and then once; the store's refusals are recorded and retried.
func TestStoreAckOnlyAfterTheGameAcknowledges(t *testing.T) {
	t.Parallel()
	h := newAckHarness(t)
	ctx := context.Background()
	id := h.ingestAcked(t, "gp-1")
	h.game = func(n int) int {
		if n == 1 {
			return 503
		}
		return 200
	}
	if res, err := h.svc.AcknowledgeToStore(ctx, id); err != nil || res.Outcome != relay.AckOutcomeWaiting {
		t.Fatalf("before any delivery: %+v %v; want waiting for the game", res, err)
	}
	if _, err := h.svc.Deliver(ctx, paidTask(id, 1), relay.Delivery{}); err != nil {
		t.Fatal(err)
	}
	if len(h.queue.Acks) != 0 || len(h.acks()) != 0 {
		t.Fatalf("the game server answered 503 and the acknowledgement is under way: %v %v", h.queue.Acks, h.acks())
	}
	if res, err := h.svc.AcknowledgeToStore(ctx, id); err != nil || res.Outcome != relay.AckOutcomeWaiting || len(h.acks()) != 0 {
		t.Fatalf("a stray acknowledgement task before the game's 2xx: %+v %v, store called %v", res, err, h.acks())
	}
	h.clock.Advance(2 * time.Minute)
	if res, err := h.svc.Deliver(ctx, paidTask(id, 2), relay.Delivery{}); err != nil || res.Outcome != relay.OutcomeDelivered {
		t.Fatalf("attempt 2: %+v %v", res, err)
	}
	if h.queue.Acks[relay.AckTaskName(id, "")] != id {
		t.Fatalf("after the game's 2xx the ops queue holds %v; want the acknowledgement", h.queue.Acks)
	}
	// The store refuses at first: recorded, returned (the ops queue retries), still waiting.
	h.acker.err = errors.New("play developer api: HTTP 503")
	if _, err := h.svc.AcknowledgeToStore(ctx, id); err == nil {
		t.Fatal("a refused acknowledgement reported success")
	}
	p := h.store.Payment(id)
	if a := p.StoreAck; a.State != relay.AckWaiting || a.Tries != 1 || a.Error == "" || !slices.Contains(p.Tags(), relay.AckWaitingTag) {
		t.Fatalf("after a refusal: %+v", a)
	}
	h.acker.err = nil
	if res, err := h.svc.AcknowledgeToStore(ctx, id); err != nil || res.Outcome != relay.AckOutcomeAcknowledged {
		t.Fatalf("the retry: %+v %v", res, err)
	}
	p = h.store.Payment(id)
	if a := p.StoreAck; a.State != relay.AckDone || !a.At.Equal(h.clock.Now()) || a.Error != "" || slices.Contains(p.Tags(), relay.AckWaitingTag) {
		t.Fatalf("acknowledged: %+v, tags %v", a, p.Tags())
	}
	// A duplicate task (Cloud Tasks delivers at least once) does not call the store again.
	if res, err := h.svc.AcknowledgeToStore(ctx, id); err != nil || res.Outcome != relay.AckOutcomeIgnored || len(h.acks()) != 2 {
		t.Fatalf("a duplicate task: %+v %v, store called %v", res, err, h.acks())
	}
	// A redelivered Deliver task of the delivered notification does not enqueue it again.
	if res, _ := h.svc.Deliver(ctx, paidTask(id, 2), relay.Delivery{}); res.Outcome != relay.OutcomeIgnored {
		t.Fatalf("redelivered task: %s", res.Outcome)
	}
}

// The sweeper enqueues again an acknowledgement whose task was lost, and names every purchase
// still unacknowledged within a day of the store's deadline, with why.
func TestSweepHealsLostAcksAndAlertsNearTheDeadline(t *testing.T) {
	t.Parallel()
	h := newAckHarness(t)
	ctx := context.Background()
	lost := h.ingestAcked(t, "gp-lost")
	if _, err := h.svc.Deliver(ctx, paidTask(lost, 1), relay.Delivery{}); err != nil {
		t.Fatal(err)
	}
	h.game = func(int) int { return 500 }
	failing := h.ingestAcked(t, "gp-failing")
	if _, err := h.svc.Deliver(ctx, paidTask(failing, 1), relay.Delivery{}); err != nil {
		t.Fatal(err)
	}
	// The acknowledgement task is lost (never run). Within AckStaleAfter the sweeper waits.
	if res, err := h.svc.Sweep(ctx); err != nil || len(res.AcksEnqueued) != 0 || len(res.AcksDue) != 0 {
		t.Fatalf("a fresh acknowledgement: %+v %v", res, err)
	}
	h.clock.Advance(relay.AckStaleAfter + time.Second)
	res, err := h.svc.Sweep(ctx)
	if err != nil || !slices.Equal(res.AcksEnqueued, []string{lost}) || len(res.AcksDue) != 0 {
		t.Fatalf("after %v: enqueued %v, due %v, %v; want the lost one again, the failing game's not", relay.AckStaleAfter, res.AcksEnqueued, res.AcksDue, err)
	}
	if len(h.queue.Acks) != 2 {
		t.Fatalf("ops queue %v: want the first task and the sweeper's", h.queue.Acks)
	}
	// A day before the deadline both are named: one under way, one the game never took.
	h.clock.Set(t0.Add(72*time.Hour - relay.AckAlertBefore))
	res, _ = h.svc.Sweep(ctx)
	why := map[string]string{}
	for _, d := range res.AcksDue {
		why[d.PaymentID] = d.Why
	}
	if len(why) != 2 || why[lost] != "acknowledgement under way" || why[failing] == "" || why[failing] == why[lost] {
		t.Fatalf("due: %+v", res.AcksDue)
	}
	// Acknowledged: no longer walked.
	if _, err := h.svc.AcknowledgeToStore(ctx, lost); err != nil {
		t.Fatal(err)
	}
	if res, _ := h.svc.Sweep(ctx); len(res.AcksDue) != 1 || res.AcksDue[0].PaymentID != failing {
		t.Fatalf("after acknowledging one: %+v", res.AcksDue)
	}
}
