package relay

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// StoreAck is a purchase its store refunds unless the developer acknowledges it in time
// (Google Play: "if you don't acknowledge a purchase within three days, the user automatically
// receives a refund"). payrelay acknowledges it for a game that asks it to, and only once the
// game server has acknowledged the payment's delivery: a purchase the game never granted stays
// refundable.
type StoreAck struct {
	// Product and Token name the purchase in the store's acknowledge call (Google Play: the
	// product or subscription id and the purchase token). The token is a credential to the
	// purchase's state: stored, never logged.
	Product      string
	Token        string
	Subscription bool
	// Due is when the store refunds the purchase unacknowledged.
	Due   time.Time
	State AckState
	// At is when it was acknowledged, or found to need no acknowledgement.
	At time.Time
	// Reason says why it needs none (acknowledged by the app, cancelled, refunded).
	Reason string
	// Tries counts the acknowledge calls that failed; Error and LastTry are the last one's.
	Tries   int
	Error   string
	LastTry time.Time
}

// AckState is where a purchase's acknowledgement to its store is.
type AckState string

const (
	// AckWaiting: not acknowledged yet; acknowledged once the game server acknowledges the
	// payment's delivery.
	AckWaiting AckState = "waiting"
	// AckDone: payrelay acknowledged it.
	AckDone AckState = "acknowledged"
	// AckNotNeeded: the store no longer needs it acknowledged (the app did, or the purchase was
	// cancelled or refunded).
	AckNotNeeded AckState = "not_needed"
)

// StoreAcker acknowledges purchases to their stores (the providers).
type StoreAcker interface {
	// AcknowledgePurchase acknowledges p's purchase: nil once the store accepts it, or
	// notNeeded saying why the store needs no acknowledgement (already acknowledged, no longer
	// purchased); an error otherwise, retried until the store accepts.
	AcknowledgePurchase(ctx context.Context, p *Payment) (notNeeded string, err error)
}

// ErrNoStoreAcks: acknowledging purchases needs the ops queue (OPS_QUEUE) and the providers.
var ErrNoStoreAcks = errors.New("relay: acknowledging purchases to their store is not configured (OPS_QUEUE)")

// AckTaskName is the ops queue's task that acknowledges payment id's purchase; round, when
// not "", makes a fresh name for the sweeper's re-enqueue.
func AckTaskName(id, round string) string {
	if round == "" {
		return "ack-" + id
	}
	return "ack-" + id + "-" + round
}

// AckResult is what AcknowledgeToStore did.
type AckResult struct {
	Outcome        AckOutcome
	Reason         string
	Game, Provider string
	Environment    Environment
	Tries          int
}

// AckOutcome names what an acknowledgement task did.
type AckOutcome string

const (
	AckOutcomeAcknowledged AckOutcome = "acknowledged"
	AckOutcomeNotNeeded    AckOutcome = "not_needed"
	// AckOutcomeWaiting: the game server has not acknowledged the payment yet; its delivery
	// enqueues the acknowledgement when it does.
	AckOutcomeWaiting AckOutcome = "waiting_for_game"
	AckOutcomeIgnored AckOutcome = "ignored"
)

// acks reports whether the service acknowledges purchases to their stores.
func (s *Service) acks() bool { return s.cfg.StoreAcker != nil && s.cfg.JobQueue != nil }

// enqueueAck puts the acknowledgement of p's purchase on the ops queue (a task name per
// payment, so a repeat is deduplicated).
func (s *Service) enqueueAck(ctx context.Context, p *Payment, round string) error {
	if !s.acks() {
		return ErrNoStoreAcks
	}
	return s.withRetry(ctx, func(ctx context.Context) error {
		err := s.cfg.JobQueue.EnqueueAck(ctx, AckTaskName(p.ID, round), p.ID)
		if errors.Is(err, ErrTaskExists) {
			return nil
		}
		return err
	})
}

// awaitsAck reports whether p's purchase waits for its acknowledgement and the game server
// has acknowledged its payment: the moment to acknowledge it to the store.
func (p *Payment) awaitsAck() bool {
	n := p.Notification(KeyPaid)
	return p.StoreAck != nil && p.StoreAck.State == AckWaiting && n != nil && n.State == StateDelivered
}

// AcknowledgeToStore acknowledges payment id's purchase to its store, if it waits for that and
// the game server has acknowledged the payment (never before). A failure is recorded on the
// payment and returned: the ops queue retries the task until the store accepts.
func (s *Service) AcknowledgeToStore(ctx context.Context, id string) (AckResult, error) {
	if s.cfg.StoreAcker == nil {
		return AckResult{}, ErrNoStoreAcks
	}
	p, _, err := s.getRetry(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return AckResult{Outcome: AckOutcomeIgnored, Reason: "unknown payment"}, nil
	}
	if err != nil {
		return AckResult{}, fmt.Errorf("load payment: %w", err)
	}
	res := AckResult{Game: p.Game, Provider: p.Provider, Environment: p.Environment}
	switch {
	case p.StoreAck == nil:
		res.Outcome, res.Reason = AckOutcomeIgnored, "the purchase needs no acknowledgement from payrelay"
		return res, nil
	case p.StoreAck.State != AckWaiting:
		res.Outcome, res.Reason = AckOutcomeIgnored, "already "+string(p.StoreAck.State)
		return res, nil
	case !p.awaitsAck():
		res.Outcome, res.Reason = AckOutcomeWaiting, "the game server has not acknowledged the payment yet: acknowledged once it does"
		return res, nil
	}
	notNeeded, callErr := s.cfg.StoreAcker.AcknowledgePurchase(ctx, p)
	rec, err := s.recordAck(ctx, id, func(a *StoreAck, now time.Time) {
		switch {
		case callErr != nil:
			a.Tries++
			a.Error, a.LastTry = fmt.Sprintf("%.300v", callErr), now
		case notNeeded != "":
			a.State, a.Reason, a.At, a.Error = AckNotNeeded, fmt.Sprintf("%.300s", notNeeded), now, ""
		default:
			a.State, a.At, a.Error = AckDone, now, ""
		}
	})
	if rec != nil {
		res.Tries = rec.Tries
	}
	switch {
	case callErr != nil:
		// Recorded or not, the task runs again until the store accepts.
		return res, fmt.Errorf("acknowledge to %s: %w", p.Provider, callErr)
	case err != nil:
		// The store accepted but the record failed: the task runs again, and the store's own
		// state (acknowledged) makes the next try not_needed.
		return res, fmt.Errorf("record acknowledgement: %w", err)
	case notNeeded != "":
		res.Outcome, res.Reason = AckOutcomeNotNeeded, notNeeded
	default:
		res.Outcome = AckOutcomeAcknowledged
	}
	return res, nil
}

// recordAck applies f to payment id's acknowledgement as stored now, if it still waits.
func (s *Service) recordAck(ctx context.Context, id string, f func(*StoreAck, time.Time)) (*StoreAck, error) {
	for try := 1; ; try++ {
		p, v, err := s.getRetry(ctx, id)
		if err != nil {
			return nil, err
		}
		if p.StoreAck == nil || p.StoreAck.State != AckWaiting {
			return p.StoreAck, nil
		}
		now := s.cfg.Clock.Now()
		f(p.StoreAck, now)
		p.UpdatedAt = now
		if _, err = s.write(ctx, p, v); err == nil {
			return p.StoreAck, nil
		} else if !s.retryConflict(ctx, err, try) {
			return p.StoreAck, err
		}
	}
}

// AckAlertBefore is how close to the store's deadline a waiting acknowledgement raises an
// alert (store_ack_due): a day before Google Play refunds it.
const AckAlertBefore = 24 * time.Hour

// AckStaleAfter is how long after the game server acknowledged a payment the sweeper enqueues
// its acknowledgement again when it still waits with no try since (its task was lost).
const AckStaleAfter = 10 * time.Minute

// AckDue is a purchase still unacknowledged near the store's deadline.
type AckDue struct {
	PaymentID, Game, Provider string
	Environment               Environment
	Due                       time.Time
	Why                       string
}

// sweepAcks walks the purchases waiting for their acknowledgement: one whose game server
// acknowledged the payment at least AckStaleAfter ago, with no try since, is enqueued again;
// one within AckAlertBefore of the store's deadline is reported.
func (s *Service) sweepAcks(ctx context.Context, now time.Time, round string, deadline time.Time, res *SweepResult) error {
	if !s.acks() {
		return nil
	}
	for cursor := ""; ; {
		var ps []*Payment
		var next string
		err := s.withRetry(ctx, func(ctx context.Context) error {
			var err error
			ps, next, err = s.cfg.Finder.AckWaiting(ctx, cursor, SweepPage)
			return err
		})
		if err != nil {
			return fmt.Errorf("acknowledgements waiting: %w", err)
		}
		for _, p := range ps {
			a := p.StoreAck
			if a == nil || a.State != AckWaiting {
				continue
			}
			paid := p.Notification(KeyPaid)
			since := deliveredAt(paid)
			if a.LastTry.After(since) {
				since = a.LastTry
			}
			if p.awaitsAck() && now.Sub(since) >= AckStaleAfter {
				if err := s.enqueueAck(ctx, p, round); err != nil {
					res.AckErrors = append(res.AckErrors, fmt.Errorf("enqueue acknowledgement of %s: %w", p.ID, err))
				} else {
					res.AcksEnqueued = append(res.AcksEnqueued, p.ID)
				}
			}
			if !now.Before(a.Due.Add(-AckAlertBefore)) {
				why := "the game server has not acknowledged the payment"
				switch {
				case paid == nil:
					why = "the purchase was never relayed as paid"
				case paid.State == StateDelivered && a.Error != "":
					why = fmt.Sprintf("the store refused %d acknowledgements: %s", a.Tries, a.Error)
				case paid.State == StateDelivered:
					why = "acknowledgement under way"
				case paid.State != StatePending && paid.State != StateDelivering && paid.State != StateHeld:
					why += " (its notification is " + string(paid.State) + ")"
				}
				res.AcksDue = append(res.AcksDue, AckDue{PaymentID: p.ID, Game: p.Game, Provider: p.Provider, Environment: p.Environment, Due: a.Due, Why: why})
			}
		}
		if next == "" || s.cfg.Clock.Now().After(deadline) {
			return nil
		}
		cursor = next
	}
}

// deliveredAt is when the game server acknowledged n: its last attempt's end.
func deliveredAt(n *Notification) time.Time {
	if n == nil || len(n.Attempts) == 0 {
		return time.Time{}
	}
	a := n.Attempts[len(n.Attempts)-1]
	return a.StartedAt.Add(a.Duration)
}
