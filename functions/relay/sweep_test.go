package relay_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/schedule"
)

// lostPayments ingests n payments of game whose tasks are then lost (the harness delivers
// none), order ids prefix-0.., and returns their ids.
func lostPayments(t *testing.T, svc *relay.Service, game, prefix string, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		r := samplePaid()
		r.Payment.Game, r.Payment.OrderID = game, fmt.Sprintf("%s-%d", prefix, i)
		res, err := svc.Ingest(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.PaymentID)
	}
	return ids
}

// A notification whose enqueue keeps failing comes first in the sweep's order: it is recorded
// (what, when, how often) and backed off, everything after it is healed, the next sweep skips
// it until its backoff ends, and three failures in a row mark it stuck.
func TestSweepGoesOnPastAPoisonedItem(t *testing.T) {
	t.Parallel()
	h := newRoutedHarness(t, relay.Routes{"sword": {relay.EnvProduction}})
	ctx := context.Background()
	ids := lostPayments(t, h.svc, "sword", "sweep", 5) // ids[0] is the oldest: first in order
	poisoned := ids[0]
	h.queue.Fail = func(task relay.Task) error {
		if task.PaymentID == poisoned && task.Sweep != "" {
			return errors.New("cloudtasks.CreateTask: PermissionDenied on this task's queue")
		}
		return nil
	}
	h.clock.Advance(3 * time.Minute)
	res, err := h.svc.Sweep(ctx)
	if err != nil || len(res.Healed) != 4 || len(res.Failed) != 1 || res.Failed[0].PaymentID != poisoned {
		t.Fatalf("sweep = %d healed, %d failed, %v; want the 4 after the poisoned one healed, it failed", len(res.Healed), len(res.Failed), err)
	}
	n := h.store.Payment(poisoned).Paid()
	if n.Heal == nil || n.Heal.Failures != 1 || n.Heal.Error == "" || !n.Heal.After.After(h.clock.Now()) || n.State != relay.StatePending {
		t.Fatalf("the poisoned notification's record: %+v, state %s", n.Heal, n.State)
	}
	// Within its backoff the next sweep does not even read it.
	h.clock.Advance(30 * time.Second)
	if res, _ := h.svc.Sweep(ctx); len(res.Failed) != 0 || res.Scanned != 4 {
		t.Fatalf("the sweep within the backoff: %d failed, %d scanned; want it skipped", len(res.Failed), res.Scanned)
	}
	// It keeps failing: the third failure in a row is stuck (an alert names it).
	var last relay.SweepResult
	for range 2 {
		h.clock.Set(h.store.Payment(poisoned).Paid().Heal.After.Add(margin + time.Second))
		last, _ = h.svc.Sweep(ctx)
	}
	if len(last.Failed) != 1 || !last.Failed[0].Stuck || last.Failed[0].Failure.Failures != 3 {
		t.Fatalf("third failure: %+v", last.Failed)
	}
	// Fixed: healed, and its record cleared when Deliver claims the attempt.
	h.queue.Fail = nil
	h.clock.Set(h.store.Payment(poisoned).Paid().Heal.After.Add(margin + time.Second))
	if res, _ := h.svc.Sweep(ctx); len(res.Healed) != 5 {
		t.Fatalf("after the fix: %d healed, want all 5", len(res.Healed))
	}
	if _, err := h.svc.Deliver(ctx, paidTask(poisoned, 1), relay.Delivery{TaskName: "healed"}); err != nil {
		t.Fatal(err)
	}
	if n := h.store.Payment(poisoned).Paid(); n.State != relay.StateDelivered || n.Heal != nil {
		t.Fatalf("delivered after the fix: %s, heal %+v", n.State, n.Heal)
	}
}

// margin is the services' default SweepMargin.
const margin = 2 * time.Minute

// budgetFinder advances the clock by a second for every page the sweep reads, so a sweep's
// time budget runs out as it would against a slow store.
type budgetFinder struct {
	*relaytest.Store
	clock *relaytest.Clock
	pages map[string]int
}

func (f *budgetFinder) OverdueOf(ctx context.Context, game string, before time.Time, cursor string, limit int) ([]*relay.Payment, string, error) {
	f.clock.Advance(time.Second)
	f.pages[game]++
	return f.Store.OverdueOf(ctx, game, before, cursor, limit)
}

// Two games, one with 10,000 overdue notifications (the older), the other with 1: the sweep
// takes each game's pages in turn, so the one is healed in the first run, however long the
// other's walk; the budget ends the run and says what it left.
func TestSweepIsFairAcrossGames(t *testing.T) {
	t.Parallel()
	store, queue, clock := relaytest.NewStore(), relaytest.NewQueue(), relaytest.NewClock(t0)
	finder := &budgetFinder{Store: store, clock: clock, pages: map[string]int{}}
	svc, err := relay.NewService(relay.Config{Store: store, Finder: finder, Queue: queue, Clock: clock, Ladder: schedule.Default(), Lease: time.Minute,
		Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
			return relay.NotifyResult{}
		}),
		Routes: relay.Routes{"big": {relay.EnvProduction}, "small": {relay.EnvProduction}}, SweepBudget: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	lostPayments(t, svc, "big", "big", 10_000)
	clock.Advance(time.Second)
	small := lostPayments(t, svc, "small", "small", 1)[0]
	clock.Advance(3 * time.Minute)
	before := len(queue.Snapshot())
	res, err := svc.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	healedSmall := false
	for _, hl := range res.Healed {
		healedSmall = healedSmall || hl.PaymentID == small
	}
	if !healedSmall {
		t.Fatalf("the small game's one notification was not healed in the first run (%d healed)", len(res.Healed))
	}
	if res.Left != 1 || finder.pages["big"] < 2 || len(res.Healed) >= 10_001 || len(queue.Snapshot())-before != len(res.Healed) {
		t.Errorf("budget: left %d games, %d pages of big, %d healed; want big's walk cut short and said", res.Left, finder.pages["big"], len(res.Healed))
	}
}

// A notification of a game removed from the configuration, and one whose queue was deleted,
// are orphaned, alertable and out of the walk; the others are healed; a task of the removed
// game is orphaned by Deliver without a POST; replay brings one back once its game exists.
func TestSweepOrphansWhatHasNoGameOrQueue(t *testing.T) {
	t.Parallel()
	h := newRoutedHarness(t, relay.Routes{"sword": {relay.EnvProduction}, "farm": {relay.EnvProduction}, "gone": {relay.EnvProduction}})
	ctx := context.Background()
	removed := lostPayments(t, h.svc, "gone", "gone", 2)
	noQueue := lostPayments(t, h.svc, "farm", "farm", 1)[0]
	fine := lostPayments(t, h.svc, "sword", "sword", 3)
	// The configuration changes: game "gone" is removed, farm's queue deleted.
	configured := relay.Routes{"sword": {relay.EnvProduction}, "farm": {relay.EnvProduction}}
	svc, err := relay.NewService(relay.Config{Store: h.store, Finder: h.store, Queue: h.queue, Clock: h.clock, Ladder: schedule.Default(), Lease: time.Minute,
		Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
			t.Error("posted a notification of a removed game")
			return relay.NotifyResult{}
		}), Routes: configured})
	if err != nil {
		t.Fatal(err)
	}
	h.queue.Fail = func(task relay.Task) error {
		if task.Game == "farm" {
			return fmt.Errorf("cloudtasks.CreateTask: %w: queue farm-0 was deleted", relay.ErrNoQueue)
		}
		return nil
	}
	// A task of the removed game still arrives: orphaned, nothing posted.
	if res, err := svc.Deliver(ctx, paidTask(removed[0], 1), relay.Delivery{TaskName: "late"}); err != nil || res.Outcome != relay.OutcomeOrphaned {
		t.Fatalf("Deliver of a removed game's task = %+v, %v", res, err)
	}
	h.clock.Advance(3 * time.Minute)
	res, err := svc.Sweep(ctx)
	if err != nil || len(res.Healed) != 3 || len(res.Orphaned) != 2 {
		t.Fatalf("sweep = %d healed, %d orphaned (%+v), %v; want sword's 3 healed, gone's second and farm's orphaned", len(res.Healed), len(res.Orphaned), res.Orphaned, err)
	}
	for _, id := range []string{removed[0], removed[1], noQueue} {
		if n := h.store.Payment(id).Paid(); n.State != relay.StateOrphaned || n.Reason == "" {
			t.Errorf("%s: %s %q, want orphaned with a reason", id, n.State, n.Reason)
		}
	}
	for _, id := range fine {
		if n := h.store.Payment(id).Paid(); n.State != relay.StatePending {
			t.Errorf("%s: %s", id, n.State)
		}
	}
	// Orphans are out of the walk: the next sweep reads them no more.
	h.clock.Advance(time.Minute)
	if res, _ := svc.Sweep(ctx); len(res.Orphaned) != 0 {
		t.Errorf("orphans found again: %+v", res.Orphaned)
	}
	// Replay is refused while the game is gone, accepted once farm's queue exists again.
	if _, err := svc.Replay(ctx, removed[1], relay.KeyPaid, false, relay.Operator{By: "op", Reason: "try"}); err == nil {
		t.Error("replay of a removed game's notification accepted")
	}
	h.queue.Fail = nil
	if _, err := svc.Replay(ctx, noQueue, relay.KeyPaid, false, relay.Operator{By: "op", Reason: "queue restored"}); err != nil {
		t.Fatal(err)
	}
	if n := h.store.Payment(noQueue).Paid(); n.State != relay.StatePending || n.Generation != 1 {
		t.Errorf("replayed orphan: %s generation %d", n.State, n.Generation)
	}
}

// A bulk replay meets a notification whose replay keeps failing for a reason of its own (its
// payment changes under every write): it is recorded on the job, and every other one is
// replayed in the same step.
func TestBulkReplayGoesOnPastAFailingItem(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	fix := h.failAll()
	var ids []string
	for i := range 5 {
		p := samplePayment()
		p.OrderID = fmt.Sprintf("bulk-%d", i)
		res, _ := h.svc.Ingest(ctx, relay.Result{Type: relay.TypePaymentSucceeded, Payment: p})
		ids = append(ids, res.PaymentID)
		h.clock.Advance(time.Millisecond)
	}
	h.drain(t)
	fix()
	poisoned := ids[4] // the newest: first in the job's page
	h.store.BeforeUpdate = func(p *relay.Payment) {
		if p.ID == poisoned {
			h.store.Mutate(poisoned, func(*relay.Payment) {}) // another writer, every time
		}
	}
	job, err := h.svc.StartReplayJob(ctx, relay.Filter{Game: "sword"}, ops)
	if err != nil {
		t.Fatal(err)
	}
	j, err := h.svc.RunJobStep(ctx, job.ID, 0)
	if err != nil {
		t.Fatalf("the step stopped on one item: %v", err)
	}
	if j.Replayed != 4 || j.Failed != 1 || len(j.Failures) != 1 || j.State != relay.JobDone {
		t.Fatalf("job = replayed %d, failed %d %v, %s; want 4 replayed and the one recorded", j.Replayed, j.Failed, j.Failures, j.State)
	}
	// An unavailable store is not an item's failure: the step runs again.
	h.store.BeforeUpdate = nil
	h.store.Fail = func(op string) error { return fmt.Errorf("firestore: %w", relay.ErrUnavailable) }
	job2, _ := h.svc.StartReplayJob(ctx, relay.Filter{Game: "sword", State: relay.StateFailed}, ops)
	h.store.Fail = func(op string) error {
		if op == "get" || op == "update" {
			return fmt.Errorf("firestore: %w", relay.ErrUnavailable)
		}
		return nil
	}
	if _, err := h.svc.RunJobStep(ctx, job2.ID, 0); err == nil {
		t.Error("a step with the store down succeeded")
	}
}

// A reconciliation whose missing payment cannot be enqueued (its game's queue is gone) reports
// that order and reconciles the rest of the bill.
func TestReconcileGoesOnPastAnOrderItCannotRelay(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	at := t0.Add(-time.Hour)
	h.queue.Fail = func(task relay.Task) error {
		if task.PaymentID == relay.PaymentID(relay.EnvProduction, "alipay", "m1", "no-queue") {
			return fmt.Errorf("cloudtasks.CreateTask: %w", relay.ErrNoQueue)
		}
		return nil
	}
	bill := relay.Bill{Provider: "alipay", Environment: relay.EnvProduction, Merchant: "m1", Day: relay.BillDay(at),
		Rows: relay.EntryRows(billPay("m1", "no-queue", 100, at), billPay("m1", "fine-1", 200, at), billPay("m1", "fine-2", 300, at))}
	rep, err := h.svc.Reconcile(ctx, bill, "test")
	if err != nil {
		t.Fatalf("the run stopped on one order: %v", err)
	}
	actions := map[string]string{}
	for _, f := range rep.Findings {
		actions[f.OrderID] = f.Action
	}
	if actions["no-queue"] != "failed" || actions["fine-1"] != "ingested" || actions["fine-2"] != "ingested" {
		t.Fatalf("findings' actions %v: want no-queue failed, the others ingested", actions)
	}
}

// A delivery that died mid-attempt (its lease expired, its POST may have reached the game)
// whose game then left the configuration: orphaning it records the lost attempt, so the
// history matches what the game server may have received.
func TestOrphaningRecordsTheLostAttempt(t *testing.T) {
	t.Parallel()
	h := newRoutedHarness(t, relay.Routes{"other": {relay.EnvProduction}}) // sword is gone
	ctx := context.Background()
	r := samplePaid()
	r.Payment.Game = "sword"
	res, err := h.svc.Ingest(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	h.store.Mutate(res.PaymentID, func(p *relay.Payment) {
		n := p.Paid()
		n.State, n.Lease = relay.StateDelivering, &relay.Lease{Attempt: 1, Owner: "died", ClaimedAt: h.clock.Now(), Until: h.clock.Now().Add(time.Minute)}
	})
	h.clock.Advance(2 * time.Minute)
	if out, err := h.svc.Deliver(ctx, paidTask(res.PaymentID, 1), relay.Delivery{TaskName: "redelivered"}); err != nil || out.Outcome != relay.OutcomeOrphaned {
		t.Fatalf("Deliver = %+v, %v; want orphaned", out, err)
	}
	n := h.store.Payment(res.PaymentID).Paid()
	if n.State != relay.StateOrphaned || len(n.Attempts) != 1 || n.Attempts[0].ErrorClass != relay.ErrorLost || n.Attempts[0].Number != 1 {
		t.Fatalf("orphaned notification %s with attempts %+v; want the lost attempt 1 recorded", n.State, n.Attempts)
	}
}
