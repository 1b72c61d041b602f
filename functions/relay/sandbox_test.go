package relay_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/schedule"
)

// sandboxPaid is samplePaid as a sandbox payment.
func sandboxPaid() relay.Result {
	r := samplePaid()
	r.Payment.Environment = relay.EnvSandbox
	return r
}

func sandboxRefund(id string, amount int64) relay.Result {
	r := sandboxPaid()
	r.Type = relay.TypePaymentRefunded
	r.Refund = &relay.RefundFacts{ID: id, AmountMinor: amount, RefundedAt: t0}
	return r
}

func TestPaymentIDsOfTheTwoEnvironmentsDiffer(t *testing.T) {
	t.Parallel()
	prod := relay.PaymentID(relay.EnvProduction, "stripe", "acct_1", "order-1")
	sb := relay.PaymentID(relay.EnvSandbox, "stripe", "acct_1", "order-1")
	if prod == sb {
		t.Fatal("a sandbox and a production order with the same id share a payment id")
	}
	// Production ids are what they were before environments existed, so stored payments keep
	// theirs: the hash of provider, merchant and order alone (this value was computed then).
	if got := relay.PaymentID(relay.EnvProduction, "generic", "m1", "order-1"); got != "e91199ba503e2958a89d0652cf2d27f9" {
		t.Fatalf("production id %q changed: stored payments would no longer be found by their callbacks", got)
	}
}

func TestSandboxWithoutEndpointIsStoredNotRelayed(t *testing.T) {
	t.Parallel()
	h := newHarness(t) // routes nil: every game's production only
	res, err := h.svc.Ingest(context.Background(), sandboxPaid())
	if err != nil {
		t.Fatal(err)
	}
	if res.State != relay.StateNotRelayed || res.NotRelayed != relay.NoSandboxEndpoint || res.Mismatch {
		t.Fatalf("Ingest = %+v, want not relayed for want of a sandbox endpoint", res)
	}
	if tasks := h.queue.Snapshot(); len(tasks) != 0 {
		t.Fatalf("a sandbox notification with no sandbox endpoint was enqueued: %+v", tasks)
	}
	p := h.store.Payment(res.PaymentID)
	if p == nil || p.Environment != relay.EnvSandbox || p.Paid().State != relay.StateNotRelayed {
		t.Fatalf("stored %+v", p)
	}
	// A repeat and a refund change nothing of that: nothing is enqueued, nothing posted.
	if res2, err := h.svc.Ingest(context.Background(), sandboxPaid()); err != nil || !res2.Duplicate || res2.State != relay.StateNotRelayed {
		t.Fatalf("repeat = %+v, %v", res2, err)
	}
	rr, err := h.svc.Ingest(context.Background(), sandboxRefund("rf-1", 500))
	if err != nil || rr.State != relay.StateNotRelayed {
		t.Fatalf("refund = %+v, %v", rr, err)
	}
	if tasks := h.queue.Snapshot(); len(tasks) != 0 || h.posts.Load() != 0 {
		t.Fatalf("tasks %+v, posts %d", tasks, h.posts.Load())
	}
	// A task for it (forged, or from before a configuration change) is ignored.
	d, err := h.svc.Deliver(context.Background(), paidTask(res.PaymentID, 1), relay.Delivery{})
	if err != nil || d.Outcome != relay.OutcomeIgnored || h.posts.Load() != 0 {
		t.Fatalf("Deliver = %+v, %v, posts %d", d, err, h.posts.Load())
	}
	// Replay is refused while the game has no sandbox endpoint.
	_, err = h.svc.Replay(context.Background(), res.PaymentID, relay.KeyPaid, false, relay.Operator{By: "op", Reason: "try"})
	var se *relay.StateError
	if !errors.As(err, &se) || se.Why == "" {
		t.Fatalf("replay without a sandbox endpoint = %v, want a StateError saying why", err)
	}
}

func TestSandboxAndProductionOfOneOrderAreTwoPayments(t *testing.T) {
	t.Parallel()
	h := newRoutedHarness(t, relay.Routes{"sword": {relay.EnvProduction, relay.EnvSandbox}})
	sb, err := h.svc.Ingest(context.Background(), sandboxPaid())
	if err != nil {
		t.Fatal(err)
	}
	prod, err := h.svc.Ingest(context.Background(), samplePaid())
	if err != nil {
		t.Fatal(err)
	}
	if sb.PaymentID == prod.PaymentID || sb.Duplicate || prod.Duplicate {
		t.Fatalf("sandbox %+v and production %+v of one order id", sb, prod)
	}
	tasks := h.queue.Snapshot()
	if len(tasks) != 2 || tasks[0].Environment != relay.EnvSandbox || tasks[1].Environment != relay.EnvProduction {
		t.Fatalf("tasks %+v: want the sandbox one on the sandbox queues, the production one on production's", tasks)
	}
	// A sandbox refund of that order touches the sandbox payment only.
	if _, err := h.svc.Ingest(context.Background(), sandboxRefund("rf-1", 1999)); err != nil {
		t.Fatal(err)
	}
	if p := h.store.Payment(prod.PaymentID); p.RefundedMinor != 0 || len(p.Notifications) != 1 {
		t.Fatalf("the production payment took the sandbox refund: %+v", p)
	}
	if p := h.store.Payment(sb.PaymentID); p.RefundedMinor != 1999 {
		t.Fatalf("the sandbox payment: %+v", p)
	}
}

func TestEnvironmentMismatchIsStoredNotRelayedAndFlagged(t *testing.T) {
	t.Parallel()
	// Even where the game has a sandbox endpoint, a notification the provider's app is not
	// configured for is not relayed.
	h := newRoutedHarness(t, relay.Routes{"sword": {relay.EnvProduction, relay.EnvSandbox}})
	r := sandboxPaid()
	r.Mismatch = "a sandbox notification for apple app com.example, which PROVIDER_CONFIG configures for production only"
	res, err := h.svc.Ingest(context.Background(), r)
	if err != nil || res.State != relay.StateNotRelayed || !res.Mismatch || len(h.queue.Snapshot()) != 0 {
		t.Fatalf("Ingest = %+v, %v, tasks %d", res, err, len(h.queue.Snapshot()))
	}
	n := h.store.Payment(res.PaymentID).Paid()
	if n.Reason != "not relayed (environment mismatch): "+r.Mismatch {
		t.Fatalf("reason %q", n.Reason)
	}
	// The operator fixed the app's configuration and replays it: it goes to the sandbox queues.
	if _, err := h.svc.Replay(context.Background(), res.PaymentID, relay.KeyPaid, false, relay.Operator{By: "op", Reason: "sandbox enabled"}); err != nil {
		t.Fatal(err)
	}
	tasks := h.queue.Snapshot()
	if len(tasks) != 1 || tasks[0].Environment != relay.EnvSandbox || tasks[0].Generation != 1 {
		t.Fatalf("tasks after replay: %+v", tasks)
	}
}

func TestNotRelayedReplayedOnceTheSandboxEndpointExists(t *testing.T) {
	t.Parallel()
	h := newRoutedHarness(t, relay.Routes{"sword": {relay.EnvProduction, relay.EnvSandbox}})
	// Stored while the game had no sandbox endpoint: the same store and queue under a service
	// without the route.
	before, err := relay.NewService(relay.Config{Store: h.store, Queue: h.queue, Clock: h.clock, Ladder: schedule.Default(), Lease: time.Minute,
		Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
			t.Error("posted while the game had no sandbox endpoint")
			return relay.NotifyResult{}
		})})
	if err != nil {
		t.Fatal(err)
	}
	res, err := before.Ingest(context.Background(), sandboxPaid())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := before.Ingest(context.Background(), sandboxRefund("rf-1", 500)); err != nil {
		t.Fatal(err)
	}
	if len(h.queue.Snapshot()) != 0 {
		t.Fatal("enqueued without a sandbox endpoint")
	}
	// The studio adds the endpoint; an operator replays the payment, then its refund.
	if _, err := h.svc.Replay(context.Background(), res.PaymentID, relay.KeyPaid, false, relay.Operator{By: "op", Reason: "sandbox endpoint added"}); err != nil {
		t.Fatal(err)
	}
	if d := h.deliverNext(t); d.Outcome != relay.OutcomeDelivered {
		t.Fatalf("deliver = %+v", d)
	}
	p := h.store.Payment(res.PaymentID)
	if p.Paid().State != relay.StateDelivered || p.Notifications[1].State != relay.StateNotRelayed {
		t.Fatalf("states %s, %s: the refund stays not relayed until it is replayed too", p.Paid().State, p.Notifications[1].State)
	}
	if _, err := h.svc.Replay(context.Background(), res.PaymentID, p.Notifications[1].Key, false, relay.Operator{By: "op", Reason: "and its refund"}); err != nil {
		t.Fatal(err)
	}
	if d := h.deliverNext(t); d.Outcome != relay.OutcomeDelivered {
		t.Fatalf("deliver refund = %+v", d)
	}
	if got := h.posts.Load(); got != 2 {
		t.Fatalf("%d posts, want the payment's and the refund's", got)
	}
}
