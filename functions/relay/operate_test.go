package relay_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/payrelay/payrelay/functions/relay"
)

var ops = relay.Operator{By: "ops@studio.example", Reason: "game server fixed"}

// failAll makes every POST fail until the returned func is called.
func (h *harness) failAll() (fix func()) {
	failing := true
	h.answer = func(int) relay.NotifyResult {
		if failing {
			return relay.NotifyResult{StatusCode: 500, ErrorClass: relay.ErrorHTTP}
		}
		return relay.NotifyResult{StatusCode: 200}
	}
	return func() { failing = false }
}

func TestReplayAFailedPaymentAndItsHeldRefunds(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	fix := h.failAll()
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	h.drain(t)
	h.svc.Ingest(ctx, refundOf("r1", 100))
	if p := h.store.Payment(pay.PaymentID); p.Paid().State != relay.StateFailed || p.RefundByID("r1").State != relay.StateHeld {
		t.Fatalf("before replay: payment %s, refund %s", p.Paid().State, p.RefundByID("r1").State)
	}
	if _, err := h.svc.Replay(ctx, pay.PaymentID, relay.RefundKey("r1"), false, ops); !errors.As(err, new(*relay.StateError)) {
		t.Errorf("replay of a held refund = %v, want a StateError", err)
	}
	fix()
	res, err := h.svc.Replay(ctx, pay.PaymentID, relay.KeyPaid, false, ops)
	if err != nil || res.Skipped {
		t.Fatalf("Replay = %+v, %v", res, err)
	}
	h.drain(t)
	p := h.store.Payment(pay.PaymentID)
	paid := p.Paid()
	if paid.State != relay.StateDelivered || paid.Generation != 1 || len(paid.Attempts) != 9 {
		t.Fatalf("after replay: %s, generation %d, %d attempts; want delivered at the new ladder's first attempt, 8+1 in the history", paid.State, paid.Generation, len(paid.Attempts))
	}
	if a := paid.Attempts[8]; a.Generation != 1 || a.Number != 1 || !a.Succeeded() {
		t.Errorf("the replay's attempt = %+v", a)
	}
	want := relay.Action{Kind: relay.ActionReplay, By: ops.By, Reason: ops.Reason, Generation: 1, At: paid.Actions[0].At}
	if diff := cmp.Diff([]relay.Action{want}, paid.Actions); diff != "" {
		t.Errorf("actions (-want +got):\n%s", diff)
	}
	if r := p.RefundByID("r1"); r.State != relay.StateDelivered {
		t.Errorf("the held refund is %s after its payment was replayed and delivered; want delivered", r.State)
	}
	// The replay's tasks have their own names: generation 1.
	tasks := h.queue.Snapshot()
	if name := tasks[8].Name(); name != relay.NotificationID(pay.PaymentID, relay.KeyPaid)+"-g1-1" {
		t.Errorf("replay's task = %s", name)
	}
	// A stale task of the first ladder is ignored.
	r, err := h.svc.Deliver(ctx, paidTask(pay.PaymentID, 8), relay.Delivery{})
	if err != nil || r.Outcome != relay.OutcomeIgnored {
		t.Errorf("a generation-0 task after the replay = %+v, %v; want ignored", r, err)
	}
	// A delivered notification replays only when forced.
	if _, err := h.svc.Replay(ctx, pay.PaymentID, relay.KeyPaid, false, ops); !errors.As(err, new(*relay.StateError)) {
		t.Errorf("unforced replay of a delivered notification = %v, want a StateError", err)
	}
	if res, err := h.svc.Replay(ctx, pay.PaymentID, relay.KeyPaid, true, ops); err != nil || !res.Payment.Paid().Actions[1].Forced {
		t.Errorf("forced replay = %+v, %v", res, err)
	}
}

func TestCancelThenReplay(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	h.failAll()
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	h.deliverNext(t) // attempt 1 fails; attempt 2 pending
	res, err := h.svc.Cancel(ctx, pay.PaymentID, relay.KeyPaid, relay.Operator{By: "ops@studio.example", Reason: "order voided"})
	if err != nil || res.Payment.Paid().State != relay.StateCancelled {
		t.Fatalf("Cancel = %+v, %v", res, err)
	}
	posts := h.posts.Load()
	h.drain(t)
	if h.posts.Load() != posts {
		t.Error("a cancelled notification was posted")
	}
	if _, err := h.svc.Cancel(ctx, pay.PaymentID, relay.KeyPaid, ops); !errors.As(err, new(*relay.StateError)) {
		t.Errorf("cancel of a cancelled notification = %v, want a StateError", err)
	}
	if _, err := h.svc.Replay(ctx, pay.PaymentID, relay.KeyPaid, false, ops); err != nil {
		t.Fatalf("replay of a cancelled notification: %v", err)
	}
	n := h.store.Payment(pay.PaymentID).Paid()
	if n.State != relay.StatePending || len(n.Actions) != 2 || n.Actions[0].Kind != relay.ActionCancel || n.Actions[0].Reason != "order voided" {
		t.Errorf("after cancel and replay: %s, actions %+v", n.State, n.Actions)
	}
	if _, err := h.svc.Cancel(ctx, pay.PaymentID, "refund-nope", ops); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("cancel of an unknown notification = %v, want ErrNotFound", err)
	}
}

// A bulk replay that was interrupted and resumes never replays one notification twice.
func TestReplayByAJobIsOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	h.failAll()
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	h.drain(t)
	job := relay.Operator{By: "ops@studio.example", Reason: "bulk", Job: "job-1"}
	first, err := h.svc.Replay(ctx, pay.PaymentID, relay.KeyPaid, false, job)
	if err != nil || first.Skipped {
		t.Fatal(first, err)
	}
	h.drain(t) // fails again: the notification is failed once more
	again, err := h.svc.Replay(ctx, pay.PaymentID, relay.KeyPaid, false, job)
	if err != nil || !again.Skipped || again.Payment.Paid().Generation != 1 {
		t.Errorf("the same job again = %+v, %v; want skipped at generation 1", again, err)
	}
}

func TestSweepHealsLostTasks(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	// order-1001's task is accepted and then lost (as a purged queue loses it): the harness
	// never delivers it.
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	h.svc.Ingest(ctx, relay.Result{Type: relay.TypePaymentSucceeded, Payment: func() relay.Payment {
		p := samplePayment()
		p.OrderID = "order-1002"
		return p
	}()})
	h.deliverNext(t) // order-1002 delivered at once
	// Within the margin the sweeper leaves order-1001 alone: its task may only be late.
	h.clock.Advance(time.Minute)
	if res, err := h.svc.Sweep(ctx); err != nil || len(res.Healed) != 0 {
		t.Fatalf("sweep within the margin = %+v, %v; want nothing healed", res, err)
	}
	h.clock.Advance(2 * time.Minute)
	res, err := h.svc.Sweep(ctx)
	if err != nil || len(res.Healed) != 1 || res.Healed[0].PaymentID != pay.PaymentID || res.Healed[0].Attempt != 1 {
		t.Fatalf("sweep = %+v, %v; want order-1001's attempt 1 healed", res, err)
	}
	tasks := h.queue.Snapshot()
	last := tasks[len(tasks)-1]
	if last.Sweep == "" || last.Name() == relay.NotificationID(pay.PaymentID, relay.KeyPaid)+"-1" {
		t.Errorf("healed task %s has no fresh name", last.Name())
	}
	if r := h.deliverNext(t); r.Outcome != relay.OutcomeDelivered {
		t.Errorf("the healed task = %s, want delivered", r.Outcome)
	}
	if res, _ := h.svc.Sweep(ctx); len(res.Healed) != 0 {
		t.Errorf("a second sweep healed %+v; nothing is overdue", res.Healed)
	}
	// A delivery that died holding a lease: healed once the lease has expired past the margin.
	h2 := newHarness(t)
	p2, _ := h2.svc.Ingest(ctx, samplePaid())
	st, v, _ := h2.store.Get(ctx, p2.PaymentID)
	st.Paid().State = relay.StateDelivering
	st.Paid().Lease = &relay.Lease{Attempt: 1, Owner: "dead", ClaimedAt: t0, Until: t0.Add(time.Minute)}
	h2.store.Update(ctx, st, v)
	h2.clock.Advance(4 * time.Minute)
	if res, err := h2.svc.Sweep(ctx); err != nil || len(res.Healed) != 1 {
		t.Fatalf("sweep of an expired lease = %+v, %v", res, err)
	}
	if r := h2.deliverNext(t); r.Outcome != relay.OutcomeDelivered {
		t.Errorf("the healed attempt = %s, want delivered (the lease taken over)", r.Outcome)
	}
}

func TestListFiltersAndPages(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	h.failAll()
	for i := range 5 {
		p := samplePayment()
		p.OrderID = fmt.Sprintf("order-%d", i)
		if i%2 == 1 {
			p.Game = "farm"
		}
		h.svc.Ingest(ctx, relay.Result{Type: relay.TypePaymentSucceeded, Payment: p})
		h.clock.Advance(time.Second)
	}
	h.drain(t) // all failed
	all, next, err := h.svc.List(ctx, relay.Filter{State: relay.StateFailed}, "", 3)
	if err != nil || len(all) != 3 || next == "" {
		t.Fatalf("first page = %d, next %q, %v", len(all), next, err)
	}
	if all[0].Payment.OrderID != "order-4" {
		t.Errorf("first listed %s, want the newest, order-4", all[0].Payment.OrderID)
	}
	rest, next, err := h.svc.List(ctx, relay.Filter{State: relay.StateFailed}, next, 3)
	if err != nil || len(rest) != 2 || next != "" {
		t.Errorf("second page = %d, next %q, %v", len(rest), next, err)
	}
	farm, _, _ := h.svc.List(ctx, relay.Filter{State: relay.StateFailed, Game: "farm"}, "", 10)
	if len(farm) != 2 {
		t.Errorf("failed notifications of farm = %d, want 2", len(farm))
	}
	if none, _, _ := h.svc.List(ctx, relay.Filter{State: relay.StateDelivered}, "", 10); len(none) != 0 {
		t.Errorf("delivered = %d, want 0", len(none))
	}
}

// A bulk replay pages through the failed notifications, a step at a time; a step run again
// after an interruption (its process killed before it recorded progress) replays none twice.
func TestBulkReplayJob(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	fix := h.failAll()
	const n = 250 // three pages
	for i := range n {
		p := samplePayment()
		p.OrderID = fmt.Sprintf("order-%d", i)
		h.svc.Ingest(ctx, relay.Result{Type: relay.TypePaymentSucceeded, Payment: p})
		h.clock.Advance(time.Millisecond)
	}
	h.drain(t)
	fix()
	job, err := h.svc.StartReplayJob(ctx, relay.Filter{Game: "sword"}, ops)
	if err != nil || job.Filter.State != relay.StateFailed || len(h.queue.JobSteps) != 1 {
		t.Fatalf("StartReplayJob = %+v, %v; steps %v", job, err, h.queue.JobSteps)
	}
	// Step 0 replays its page but "dies" before recording progress: its job update fails.
	h.jobs.failUpdate = true
	if _, err := h.svc.RunJobStep(ctx, job.ID, 0); err == nil {
		t.Fatal("a step whose progress could not be recorded reported success")
	}
	h.jobs.failUpdate = false
	// Cloud Tasks runs step 0 again, then the steps it chains.
	for i := 0; i < len(h.queue.JobSteps); i++ {
		st := h.queue.JobSteps[i]
		if i == 0 {
			st = relaytestJobStep(job.ID, 0)
		}
		if _, err := h.svc.RunJobStep(ctx, st.JobID, st.Step); err != nil {
			t.Fatalf("step %d: %v", st.Step, err)
		}
	}
	// The interrupted step's replays took its page's notifications out of the failed ones, so
	// its re-run read the next page: the job's counts miss the interrupted step's page, whose
	// replays stand in the notifications' histories under the job's id.
	done, _ := h.svc.Job(ctx, job.ID)
	if done.State != relay.JobDone || done.Replayed+done.Skipped != n-relay.JobPage {
		t.Fatalf("job = %+v; want done, %d replayed after the interruption", done, n-relay.JobPage)
	}
	// A duplicate task of a finished step does nothing.
	if _, err := h.svc.RunJobStep(ctx, job.ID, 1); err != nil {
		t.Errorf("a duplicate step: %v", err)
	}
	h.drain(t)
	for i := range n {
		id := relay.PaymentID(relay.EnvProduction, "generic", "game-1", fmt.Sprintf("order-%d", i))
		paid := h.store.Payment(id).Paid()
		replays := 0
		for _, a := range paid.Actions {
			if a.Kind == relay.ActionReplay {
				replays++
			}
		}
		if replays != 1 || paid.Generation != 1 || paid.State != relay.StateDelivered {
			t.Fatalf("order-%d: %d replays, generation %d, %s; want replayed once and delivered", i, replays, paid.Generation, paid.State)
		}
	}
}
