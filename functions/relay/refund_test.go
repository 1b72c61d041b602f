package relay_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/payrelay/payrelay/functions/relay"
)

func TestDecideRefund(t *testing.T) {
	t.Parallel()
	at := t0.Add(time.Hour)
	// paid is a payment of 1999 with refunds already recorded, each as (id, amount).
	paid := func(recorded ...any) *relay.Payment {
		p := samplePayment()
		for i := 0; i < len(recorded); i += 2 {
			id, amt := recorded[i].(string), int64(recorded[i+1].(int))
			p.RefundedMinor += amt
			p.Notifications = append(p.Notifications, relay.Notification{Key: relay.RefundKey(id), Type: relay.TypePaymentRefunded,
				Refund: &relay.Refund{ID: id, AmountMinor: amt, CumulativeMinor: p.RefundedMinor, RefundedAt: at}})
		}
		return &p
	}
	cases := []struct {
		name     string
		p        *relay.Payment
		f        relay.RefundFacts
		want     relay.RefundDecision
		amount   int64 // of a new refund
		total    int64
		conflict bool
		over     bool
	}{
		{name: "first partial", p: paid(), f: relay.RefundFacts{ID: "r1", AmountMinor: 500, RefundedAt: at}, want: relay.RefundNew, amount: 500, total: 500},
		{name: "second partial adds up", p: paid("r1", 500), f: relay.RefundFacts{ID: "r2", AmountMinor: 700, RefundedAt: at}, want: relay.RefundNew, amount: 700, total: 1200},
		{name: "the rest: full", p: paid("r1", 500, "r2", 700), f: relay.RefundFacts{ID: "r3", AmountMinor: 799, RefundedAt: at}, want: relay.RefundNew, amount: 799, total: 1999},
		{name: "one more than remains", p: paid("r1", 500, "r2", 700), f: relay.RefundFacts{ID: "r3", AmountMinor: 800, RefundedAt: at}, over: true},
		{name: "more than paid at once", p: paid(), f: relay.RefundFacts{ID: "r1", AmountMinor: 2000, RefundedAt: at}, over: true},
		{name: "repeat", p: paid("r1", 500), f: relay.RefundFacts{ID: "r1", AmountMinor: 500, RefundedAt: at}, want: relay.RefundRepeat, amount: 500, total: 500},
		{name: "repeat with another amount", p: paid("r1", 500), f: relay.RefundFacts{ID: "r1", AmountMinor: 501, RefundedAt: at}, conflict: true},
		// Alipay's refund_fee is the cumulative refunded total.
		{name: "cumulative first", p: paid(), f: relay.RefundFacts{ID: "b1", CumulativeMinor: 300, RefundedAt: at}, want: relay.RefundNew, amount: 300, total: 300},
		{name: "cumulative second: the delta", p: paid("b1", 300), f: relay.RefundFacts{ID: "b2", CumulativeMinor: 1000, RefundedAt: at}, want: relay.RefundNew, amount: 700, total: 1000},
		{name: "cumulative full", p: paid("b1", 300, "b2", 700), f: relay.RefundFacts{ID: "b3", CumulativeMinor: 1999, RefundedAt: at}, want: relay.RefundNew, amount: 999, total: 1999},
		{name: "cumulative repeat", p: paid("b1", 300), f: relay.RefundFacts{ID: "b1", CumulativeMinor: 300, RefundedAt: at}, want: relay.RefundRepeat, amount: 300, total: 300},
		{name: "cumulative repeat with another total", p: paid("b1", 300), f: relay.RefundFacts{ID: "b1", CumulativeMinor: 400, RefundedAt: at}, conflict: true},
		{name: "cumulative over what was paid", p: paid("b1", 300), f: relay.RefundFacts{ID: "b2", CumulativeMinor: 2000, RefundedAt: at}, over: true},
		{name: "cumulative already counted by a later refund", p: paid("b2", 1000), f: relay.RefundFacts{ID: "b1", CumulativeMinor: 300, RefundedAt: at}, want: relay.RefundCovered, total: 300},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			before := tc.p.RefundedMinor
			got, r, err := relay.DecideRefund(tc.p, tc.f)
			var over *relay.ErrOverRefund
			switch {
			case tc.over:
				if !errors.As(err, &over) {
					t.Fatalf("DecideRefund = %v, %+v, %v; want ErrOverRefund", got, r, err)
				}
			case tc.conflict:
				if !errors.Is(err, relay.ErrFactsDiffer) {
					t.Fatalf("DecideRefund = %v, %+v, %v; want ErrFactsDiffer", got, r, err)
				}
			case err != nil:
				t.Fatalf("DecideRefund: %v", err)
			default:
				if got != tc.want || r.AmountMinor != tc.amount || r.CumulativeMinor != tc.total {
					t.Errorf("DecideRefund = %v, amount %d, total %d; want %v, %d, %d", got, r.AmountMinor, r.CumulativeMinor, tc.want, tc.amount, tc.total)
				}
			}
			if tc.p.RefundedMinor != before {
				t.Error("DecideRefund changed the payment")
			}
		})
	}
}

func TestRefundFactsValidate(t *testing.T) {
	t.Parallel()
	at := t0
	for _, tc := range []struct {
		f     relay.RefundFacts
		field string
	}{
		{f: relay.RefundFacts{ID: "r1", AmountMinor: 1, RefundedAt: at}},
		{f: relay.RefundFacts{ID: "", AmountMinor: 1, RefundedAt: at}, field: "refund_id"},
		{f: relay.RefundFacts{ID: "r1", RefundedAt: at}, field: "refund_amount"},
		{f: relay.RefundFacts{ID: "r1", AmountMinor: 1, CumulativeMinor: 1, RefundedAt: at}, field: "refund_amount"},
		{f: relay.RefundFacts{ID: "r1", AmountMinor: -1, RefundedAt: at}, field: "refund_amount"},
		{f: relay.RefundFacts{ID: "r1", AmountMinor: 1}, field: "refunded_at"},
	} {
		err := tc.f.Validate()
		var fe *relay.FieldError
		if (tc.field == "") != (err == nil) || (err != nil && (!errors.As(err, &fe) || fe.Field != tc.field)) {
			t.Errorf("Validate(%+v) = %v, want field %q", tc.f, err, tc.field)
		}
	}
}

func refundOf(id string, amount int64) relay.Result {
	r := relay.Result{Type: relay.TypePaymentRefunded, Payment: samplePayment(),
		Refund: &relay.RefundFacts{ID: id, AmountMinor: amount, RefundedAt: t0.Add(time.Hour)}}
	return r
}

// drain delivers every task in the queue, oldest first, until none is left undelivered.
func (h *harness) drain(t *testing.T) {
	t.Helper()
	done := 0
	for done < len(h.queue.Snapshot()) {
		task := h.queue.Snapshot()[done]
		done++
		if task.At.After(h.clock.Now()) {
			h.clock.Set(task.At)
		}
		if _, err := h.svc.Deliver(context.Background(), relay.TaskMessage{PaymentID: task.PaymentID, Notification: task.Key, Generation: task.Generation, Attempt: task.Attempt}, relay.Delivery{TaskName: task.Name()}); err != nil {
			t.Fatalf("Deliver(%s): %v", task.Name(), err)
		}
	}
}

func (h *harness) sentKeys() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var keys []string
	for _, s := range h.sent {
		keys = append(keys, fmt.Sprintf("%s#%d", s.Key, s.Attempt))
	}
	return keys
}

func TestRefundsGoOutInOrderBehindThePayment(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	failing := true
	h.answer = func(int) relay.NotifyResult {
		if failing {
			return relay.NotifyResult{StatusCode: 503, ErrorClass: relay.ErrorHTTP}
		}
		return relay.NotifyResult{StatusCode: 200}
	}
	pay, err := h.svc.Ingest(ctx, samplePaid())
	if err != nil {
		t.Fatal(err)
	}
	h.deliverNext(t) // attempt 1 of the payment fails; it is still on its ladder
	// Two partial refunds and then the rest arrive while the payment is failing: all held.
	for i, r := range []relay.Result{refundOf("r1", 500), refundOf("r2", 700), refundOf("r3", 799)} {
		res, err := h.svc.Ingest(ctx, r)
		if err != nil || res.State != relay.StateHeld || res.PaymentID != pay.PaymentID {
			t.Fatalf("refund %d = %+v, %v; want held on payment %s", i+1, res, err, pay.PaymentID)
		}
	}
	if n := len(h.queue.Snapshot()); n != 2 {
		t.Fatalf("%d tasks; want only the payment's two attempts (refunds held, no task)", n)
	}
	failing = false
	h.drain(t)
	want := []string{"paid#1", "paid#2", relay.RefundKey("r1") + "#1", relay.RefundKey("r2") + "#1", relay.RefundKey("r3") + "#1"}
	if diff := cmp.Diff(want, h.sentKeys()); diff != "" {
		t.Fatalf("POSTs (-want +got):\n%s", diff)
	}
	p := h.store.Payment(pay.PaymentID)
	if p.RefundedMinor != 1999 || !p.FullyRefunded() {
		t.Errorf("refunded %d of %d, fully refunded %v", p.RefundedMinor, p.AmountMinor, p.FullyRefunded())
	}
	for _, n := range p.Notifications {
		if n.State != relay.StateDelivered || len(n.Attempts) == 0 {
			t.Errorf("notification %s: %s after %d attempts, want delivered", n.Key, n.State, len(n.Attempts))
		}
	}
	if r := p.RefundByID("r3").Refund; r.AmountMinor != 799 || r.CumulativeMinor != 1999 {
		t.Errorf("last refund = %+v, want 799 of a 1999 total", r)
	}
}

func TestRefundOfAFailedPaymentIsHeld(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	h.answer = func(int) relay.NotifyResult { return relay.NotifyResult{StatusCode: 500, ErrorClass: relay.ErrorHTTP} }
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	h.drain(t)
	if p := h.store.Payment(pay.PaymentID); p.Paid().State != relay.StateFailed {
		t.Fatalf("payment %s, want failed", p.Paid().State)
	}
	tasks := len(h.queue.Snapshot())
	res, err := h.svc.Ingest(ctx, refundOf("r1", 100))
	if err != nil || res.State != relay.StateHeld {
		t.Fatalf("refund of a failed payment = %+v, %v; want held", res, err)
	}
	if len(h.queue.Snapshot()) != tasks {
		t.Error("a task was enqueued for a refund held behind a failed payment")
	}
	for _, s := range h.sentKeys() {
		if !strings.HasPrefix(s, "paid#") {
			t.Errorf("game server got %s, a refund of a payment it never acknowledged", s)
		}
	}
	if got := h.store.Payment(pay.PaymentID).RefundByID("r1"); got.State != relay.StateHeld {
		t.Errorf("refund is %s, want held", got.State)
	}
}

func TestRefundOfAnUnknownPaymentGoesOutAlone(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	res, err := h.svc.Ingest(ctx, refundOf("r1", 1999))
	if err != nil || res.State != relay.StatePending {
		t.Fatalf("refund of an unknown payment = %+v, %v; want pending", res, err)
	}
	h.drain(t)
	p := h.store.Payment(res.PaymentID)
	n := p.RefundByID("r1")
	if n.State != relay.StateDelivered || p.Paid() != nil || p.PaymentFirst(n.Key) {
		t.Fatalf("refund %s, paid notification %v, payment first %v; want delivered alone", n.State, p.Paid(), p.PaymentFirst(n.Key))
	}
	// The payment's own notification arrives late: it joins the chain behind the refund.
	late, err := h.svc.Ingest(ctx, samplePaid())
	if err != nil || late.Duplicate || late.State != relay.StatePending {
		t.Fatalf("late payment = %+v, %v; want a new pending notification", late, err)
	}
	h.drain(t)
	want := []string{relay.RefundKey("r1") + "#1", "paid#1"}
	if diff := cmp.Diff(want, h.sentKeys()); diff != "" {
		t.Errorf("POSTs (-want +got):\n%s", diff)
	}
}

func TestRepeatedRefundIsOneRefund(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	h.svc.Ingest(ctx, samplePaid())
	h.drain(t)
	first, err := h.svc.Ingest(ctx, refundOf("r1", 500))
	if err != nil || first.Duplicate {
		t.Fatal(first, err)
	}
	again, err := h.svc.Ingest(ctx, refundOf("r1", 500))
	if err != nil || !again.Duplicate || again.NotificationID != first.NotificationID {
		t.Fatalf("repeat = %+v, %v; want a duplicate of %s", again, err, first.NotificationID)
	}
	h.drain(t)
	p := h.store.Payment(first.PaymentID)
	if len(p.Notifications) != 2 || p.RefundedMinor != 500 {
		t.Errorf("%d notifications, refunded %d; want the payment and one refund of 500", len(p.Notifications), p.RefundedMinor)
	}
	if _, err := h.svc.Ingest(ctx, refundOf("r1", 600)); !errors.Is(err, relay.ErrFactsDiffer) {
		t.Errorf("same refund id with another amount = %v, want ErrFactsDiffer", err)
	}
	var over *relay.ErrOverRefund
	if _, err := h.svc.Ingest(ctx, refundOf("r2", 1500)); !errors.As(err, &over) {
		t.Errorf("refund beyond what remains = %v, want ErrOverRefund", err)
	}
	if p := h.store.Payment(first.PaymentID); len(p.Notifications) != 2 || p.RefundedMinor != 500 {
		t.Errorf("a refused refund changed the payment: %d notifications, refunded %d", len(p.Notifications), p.RefundedMinor)
	}
}

// A refund arriving between Deliver's claim and its record changes the payment under the
// record: the record is applied again to the fresh read, with no second POST.
func TestRecordSurvivesARefundArrivingMidAttempt(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	h.answer = func(int) relay.NotifyResult {
		if _, err := h.svc.Ingest(ctx, refundOf("r1", 100)); err != nil {
			t.Errorf("refund during the POST: %v", err)
		}
		return relay.NotifyResult{StatusCode: 200}
	}
	res := h.deliverNext(t)
	if res.Outcome != relay.OutcomeDelivered || res.Released != relay.RefundKey("r1") {
		t.Fatalf("Deliver = %+v; want delivered, releasing the refund", res)
	}
	h.answer = func(int) relay.NotifyResult { return relay.NotifyResult{StatusCode: 200} }
	h.drain(t)
	p := h.store.Payment(pay.PaymentID)
	if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 1 || p.RefundByID("r1").State != relay.StateDelivered {
		t.Errorf("payment %s after %d attempts, refund %s", p.Paid().State, len(p.Paid().Attempts), p.RefundByID("r1").State)
	}
	if want := []string{"paid#1", relay.RefundKey("r1") + "#1"}; !cmp.Equal(want, h.sentKeys()) {
		t.Errorf("POSTs %v, want %v", h.sentKeys(), want)
	}
}

// The queue refusing the released refund's task after the record: the redelivered task of the
// payment enqueues it, without a second POST of the payment.
func TestReleasedRefundIsEnqueuedByTheRedelivery(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	h.svc.Ingest(ctx, refundOf("r1", 100))
	h.queue.Fail = func(relay.Task) error { return fmt.Errorf("cloudtasks: %w", relay.ErrUnavailable) }
	if _, err := h.svc.Deliver(ctx, paidTask(pay.PaymentID, 1), relay.Delivery{}); !relay.Retryable(err) {
		t.Fatalf("Deliver with the queue down = %v, want retryable", err)
	}
	h.queue.Fail = nil
	r, err := h.svc.Deliver(ctx, paidTask(pay.PaymentID, 1), relay.Delivery{})
	if err != nil || r.Outcome != relay.OutcomeRepaired || r.Released != relay.RefundKey("r1") {
		t.Fatalf("redelivery = %+v, %v; want repaired, releasing the refund", r, err)
	}
	tasks := h.queue.Snapshot()
	if last := tasks[len(tasks)-1]; last.Key != relay.RefundKey("r1") || last.Attempt != 1 {
		t.Errorf("last task = %+v, want the refund's attempt 1", last)
	}
	if h.posts.Load() != 1 {
		t.Errorf("%d POSTs, want 1", h.posts.Load())
	}
}

func TestNotesAreRecordedNotRelayed(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	note := relay.Result{Payment: samplePayment(), Note: &relay.Note{Kind: "REFUND.ABNORMAL", RefundID: "r9", Alert: true, Reason: "card closed"}}
	res, err := h.svc.Ingest(ctx, note)
	if err != nil || res.Stored || h.store.Len() != 0 {
		t.Fatalf("note about an unknown payment = %+v, %v; want acknowledged, nothing stored", res, err)
	}
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	for i := range 2 {
		res, err = h.svc.Ingest(ctx, note)
		if err != nil || !res.Stored || res.Duplicate != (i == 1) {
			t.Fatalf("note %d = %+v, %v", i+1, res, err)
		}
	}
	p := h.store.Payment(pay.PaymentID)
	if len(p.Notes) != 1 || p.Notes[0].Kind != "REFUND.ABNORMAL" || !p.Notes[0].Alert || len(p.Notifications) != 1 || p.RefundedMinor != 0 {
		t.Errorf("payment notes %+v, %d notifications, refunded %d", p.Notes, len(p.Notifications), p.RefundedMinor)
	}
	if n := len(h.queue.Snapshot()); n != 1 {
		t.Errorf("%d tasks; a note must enqueue nothing", n)
	}
}

func TestGameServerSignals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("Retry-After holds the next attempt back, capped at the longest step", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		var wish time.Duration
		h.answer = func(int) relay.NotifyResult {
			return relay.NotifyResult{StatusCode: 429, ErrorClass: relay.ErrorHTTP, RetryAfter: h.clock.Now().Add(wish)}
		}
		pay, _ := h.svc.Ingest(ctx, samplePaid())
		for _, tc := range []struct{ wish, want time.Duration }{
			{30 * time.Minute, 30 * time.Minute}, // after attempt 1: beyond the ladder's 2m, honoured
			{time.Second, 10 * time.Minute},      // after attempt 2: sooner than the ladder's 10m, the ladder
			{48 * time.Hour, 15 * time.Hour},     // after attempt 3: capped at the 15h step
		} {
			wish = tc.wish
			r := h.deliverNext(t)
			if r.Outcome != relay.OutcomeRetryScheduled || r.Next.Sub(h.clock.Now()) != tc.want {
				t.Errorf("Retry-After %v: next in %v (%s), want %v", tc.wish, r.Next.Sub(h.clock.Now()), r.Outcome, tc.want)
			}
		}
		n := h.store.Payment(pay.PaymentID).Paid()
		if n.Attempt != 4 || n.Attempts[0].RetryAfter.IsZero() {
			t.Errorf("attempt %d, first record %+v; want the attempts counted and the wish recorded", n.Attempt, n.Attempts[0])
		}
	})
	t.Run("410 Gone fails the notification at once; its refunds stay held", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		h.answer = func(int) relay.NotifyResult {
			return relay.NotifyResult{StatusCode: 410, ErrorClass: relay.ErrorHTTP, Gone: true}
		}
		pay, _ := h.svc.Ingest(ctx, samplePaid())
		h.svc.Ingest(ctx, refundOf("r1", 100))
		h.drain(t)
		p := h.store.Payment(pay.PaymentID)
		if n := p.Paid(); n.State != relay.StateFailed || len(n.Attempts) != 1 || !strings.Contains(n.Reason, "410") {
			t.Errorf("payment %s after %d attempts, reason %q; want failed at once, saying 410", n.State, len(n.Attempts), n.Reason)
		}
		if p.RefundByID("r1").State != relay.StateHeld || h.posts.Load() != 1 {
			t.Errorf("refund %s after %d POSTs; want held after 1", p.RefundByID("r1").State, h.posts.Load())
		}
	})
}

// A delivered payment replayed (forced) while its first refund is out: that refund is
// delivered, a second refund arrives held behind the replay, and the replay's delivery releases
// it (the first notification not delivered, not the payment's successor, which is delivered).
// The local stack's race test found this one held forever.
func TestReplayOfADeliveredPaymentReleasesALaterRefund(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	pay, _ := h.svc.Ingest(ctx, samplePaid())
	h.drain(t)
	if _, err := h.svc.Ingest(ctx, refundOf("r1", 100)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Replay(ctx, pay.PaymentID, relay.KeyPaid, true, ops); err != nil {
		t.Fatal(err)
	}
	// r1's task runs before the replay's: r1 delivered, the payment pending again.
	for _, task := range h.queue.Snapshot() {
		if task.Key == relay.RefundKey("r1") {
			if res, err := h.svc.Deliver(ctx, relay.TaskMessage{PaymentID: task.PaymentID, Notification: task.Key, Attempt: 1}, relay.Delivery{}); err != nil || res.Outcome != relay.OutcomeDelivered {
				t.Fatalf("r1: %+v %v", res, err)
			}
		}
	}
	if _, err := h.svc.Ingest(ctx, refundOf("r2", 100)); err != nil {
		t.Fatal(err)
	}
	if st := h.store.Payment(pay.PaymentID).RefundByID("r2").State; st != relay.StateHeld {
		t.Fatalf("r2 behind the replayed payment: %s, want held", st)
	}
	h.drain(t)
	p := h.store.Payment(pay.PaymentID)
	if p.Paid().State != relay.StateDelivered || p.RefundByID("r2").State != relay.StateDelivered {
		t.Fatalf("after the replay's delivery: payment %s, r2 %s; want both delivered", p.Paid().State, p.RefundByID("r2").State)
	}
	if got := fmt.Sprint(h.sentKeys()); got != "[paid#1 "+relay.RefundKey("r1")+"#1 paid#1 "+relay.RefundKey("r2")+"#1]" {
		t.Errorf("posted %s", got)
	}
}
