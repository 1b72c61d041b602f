package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/sethvargo/go-retry"
)

// Delivery identifies one execution of a task, for the lease owner and the attempt record.
type Delivery struct {
	TaskName       string
	RetryCount     int
	ExecutionCount int
}

func (d Delivery) String() string {
	if d.TaskName == "" {
		return "direct"
	}
	return fmt.Sprintf("%s#%d", d.TaskName, d.RetryCount)
}

// DeliverResult is what Deliver did with one task.
type DeliverResult struct {
	Outcome Outcome
	Reason  string         // why, for ignored, rejected and busy outcomes
	Record  *AttemptRecord // the attempt made, if one was
	Next    time.Time      // when the next attempt is due, for OutcomeRetryScheduled
	// Released is the key of the notification this delivery let go out (the next one of the
	// same payment, held behind it), if any.
	Released string
	// Game, Provider, Environment and Type describe the notification, for the logs and their
	// metrics.
	Game, Provider string
	Environment    Environment
	Type           Type
}

// maxClaimTries bounds how often Deliver re-reads a payment that changed under it before it
// gives the task back to Cloud Tasks.
const maxClaimTries = 3

// TaskMessage is the body of a Deliver task: which notification of which payment, which
// attempt.
type TaskMessage struct {
	PaymentID    string `json:"payment_id,omitempty"`
	Notification string `json:"notification,omitempty"`
	Generation   int    `json:"generation,omitempty"`
	Attempt      int    `json:"attempt,omitempty"`
	// Job and Step name a bulk replay's step instead (see Service.RunJobStep).
	Job  string `json:"job,omitempty"`
	Step int    `json:"step,omitempty"`
	// Ack names a payment whose purchase to acknowledge to its store instead (see
	// Service.AcknowledgeToStore).
	Ack string `json:"ack,omitempty"`
}

// Deliver makes attempt `attempt` of a payment's notification, at most once at a time
// (invariant 3), records it, and schedules the next attempt, releases the notification held
// behind it, or ends the chain. An error means progress could not be recorded and the same
// task must be redelivered; the redelivery finishes the job.
func (s *Service) Deliver(ctx context.Context, m TaskMessage, d Delivery) (DeliverResult, error) {
	if m.PaymentID == "" || m.Notification == "" || m.Attempt < 1 {
		return DeliverResult{Outcome: OutcomeRejected, Reason: "task names no payment, notification or attempt"}, nil
	}
	for try := 1; ; try++ {
		p, v, err := s.get(ctx, m.PaymentID)
		if errors.Is(err, ErrNotFound) {
			return DeliverResult{Outcome: OutcomeRejected, Reason: "unknown payment"}, nil
		}
		if err != nil {
			return DeliverResult{}, fmt.Errorf("load payment: %w", err)
		}
		n := p.Notification(m.Notification)
		if n == nil {
			return DeliverResult{Outcome: OutcomeRejected, Reason: "unknown notification " + m.Notification}, nil
		}
		res, claimable, err := s.decide(ctx, p, n, m.Generation, m.Attempt)
		res.Game, res.Provider, res.Environment, res.Type = p.Game, p.Provider, p.Environment, n.Type
		if err != nil || !claimable {
			return res, err
		}
		now := s.cfg.Clock.Now()
		if !s.cfg.Routes.Has(p.Game, p.Environment) {
			// Its game (or the game's endpoint for this environment) left the configuration
			// since the task was made: nothing is posted; the notification waits, orphaned, for
			// an operator to replay it once the game is back.
			n.recordLostLease()
			n.State, n.Reason, n.Lease, n.NextAttemptAt = StateOrphaned, orphanReason(p), nil, time.Time{}
			p.UpdatedAt = now
			if _, err := s.update(ctx, p, v); errors.Is(err, ErrVersionConflict) && try < maxClaimTries {
				continue
			} else if err != nil {
				return DeliverResult{}, fmt.Errorf("record orphaned: %w", err)
			}
			res.Outcome, res.Reason = OutcomeOrphaned, n.Reason
			return res, nil
		}
		n.recordLostLease()
		n.State = StateDelivering
		n.Heal = nil // under way again: whatever kept the sweeper from enqueueing it is past
		n.Lease = &Lease{Attempt: m.Attempt, Owner: d.String() + "/" + token(), ClaimedAt: now, Until: now.Add(s.cfg.Lease)}
		p.UpdatedAt = now
		v, err = s.update(ctx, p, v)
		if errors.Is(err, ErrVersionConflict) && try < maxClaimTries {
			continue // someone else moved the payment; look again
		}
		if errors.Is(err, ErrVersionConflict) {
			return DeliverResult{Outcome: OutcomeBusy, Reason: "payment keeps changing under this delivery"}, nil
		}
		if err != nil {
			return DeliverResult{}, fmt.Errorf("claim attempt: %w", err)
		}
		return s.attempt(ctx, p, v, n.Key, d)
	}
}

// recordLostLease records, for a notification still delivering under a lease, that the delivery
// holding it died between claiming and recording: its POST may or may not have reached the game
// server, and the history says so (a takeover, and an orphaning, both find it).
func (n *Notification) recordLostLease() {
	if n.State == StateDelivering && n.Lease != nil {
		n.Attempts = append(n.Attempts, AttemptRecord{
			Number: n.Lease.Attempt, StartedAt: n.Lease.ClaimedAt, ErrorClass: ErrorLost, Generation: n.Generation,
			Error: "delivery ended without recording a result (lease expired); outcome unknown",
		})
	}
}

// token makes a lease owner unique, so a record can tell its own lease from a takeover's.
func token() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// decide looks at a notification and a task's attempt and either settles the task
// (claimable=false) or says the attempt may be claimed.
func (s *Service) decide(ctx context.Context, p *Payment, n *Notification, gen, attempt int) (res DeliverResult, claimable bool, err error) {
	switch {
	case gen != n.Generation:
		return DeliverResult{Outcome: OutcomeIgnored, Reason: fmt.Sprintf("task of generation %d; the notification is at generation %d", gen, n.Generation)}, false, nil
	case n.State == StateDelivered:
		// The delivery that recorded it may have failed to enqueue the notification it released.
		if next := p.firstUndelivered(); next != nil && next.untouched() {
			if err := s.enqueue(ctx, p.task(next, 1, next.NextAttemptAt)); err != nil {
				return DeliverResult{}, false, fmt.Errorf("re-enqueue released %s: %w", next.Key, err)
			}
			return DeliverResult{Outcome: OutcomeRepaired, Reason: "notification is delivered; the one it released is enqueued", Released: next.Key}, false, nil
		}
		// Or the acknowledgement to the store it let go.
		if n.Key == KeyPaid && s.acks() && p.awaitsAck() {
			if err := s.enqueueAck(ctx, p, ""); err != nil {
				return DeliverResult{}, false, fmt.Errorf("re-enqueue acknowledgement: %w", err)
			}
			return DeliverResult{Outcome: OutcomeRepaired, Reason: "notification is delivered; the purchase's acknowledgement to its store is enqueued"}, false, nil
		}
		return DeliverResult{Outcome: OutcomeIgnored, Reason: "notification is delivered"}, false, nil
	case n.State == StateFailed, n.State == StateCancelled, n.State == StateNotRelayed, n.State == StateOrphaned:
		return DeliverResult{Outcome: OutcomeIgnored, Reason: "notification is " + string(n.State)}, false, nil
	case n.State == StateHeld:
		return DeliverResult{Outcome: OutcomeIgnored, Reason: "notification is held behind an earlier one of its payment"}, false, nil
	case attempt > n.Attempt:
		return DeliverResult{Outcome: OutcomeRejected, Reason: fmt.Sprintf("attempt %d is ahead of the notification's attempt %d", attempt, n.Attempt)}, false, nil
	case attempt < n.Attempt:
		if n.State == StatePending && attempt == n.Attempt-1 {
			// The delivery of this attempt recorded it but may not have enqueued the next one.
			err := s.enqueue(ctx, p.task(n, n.Attempt, n.NextAttemptAt))
			if err != nil {
				return DeliverResult{}, false, fmt.Errorf("re-enqueue attempt %d: %w", n.Attempt, err)
			}
			return DeliverResult{Outcome: OutcomeRepaired, Reason: fmt.Sprintf("attempt %d is already recorded; attempt %d is enqueued", attempt, n.Attempt)}, false, nil
		}
		return DeliverResult{Outcome: OutcomeIgnored, Reason: fmt.Sprintf("attempt %d is stale; the notification is at attempt %d", attempt, n.Attempt)}, false, nil
	case n.State == StateDelivering && n.Lease != nil && s.cfg.Clock.Now().Before(n.Lease.Until):
		return DeliverResult{Outcome: OutcomeBusy, Reason: "attempt is held by " + n.Lease.Owner + " until " + n.Lease.Until.UTC().Format(time.RFC3339)}, false, nil
	}
	return DeliverResult{}, true, nil
}

// errTakenOver: our lease expired and another delivery took the attempt over.
var errTakenOver = errors.New("lease was taken over before the result was recorded")

// attempt posts to the game server under a held lease and records the result.
func (s *Service) attempt(ctx context.Context, p *Payment, v Version, key string, d Delivery) (DeliverResult, error) {
	n := p.Notification(key)
	lease := *n.Lease
	num, gen := n.Attempt, n.Generation
	start := s.cfg.Clock.Now()
	// The attempt owns its deadline: the POST runs with the game's own timeout (the notifier's)
	// and is not cut short when the dispatcher hangs up (Cloud Tasks' deadline, a restarted
	// emulator), so what the game server answered is what gets recorded. The lease, longer than
	// any game's timeout, keeps every other delivery off this attempt meanwhile.
	ctx = context.WithoutCancel(ctx)
	r := s.cfg.Notifier.Notify(ctx, p, n, num)
	end := s.cfg.Clock.Now()
	rec := AttemptRecord{
		Number: num, StartedAt: start, Duration: end.Sub(start), StatusCode: r.StatusCode,
		ErrorClass: r.ErrorClass, Error: r.Error, Response: r.Response, Delivery: d.String(), RetryAfter: r.RetryAfter,
		Generation: gen,
	}
	res := DeliverResult{Record: &rec, Game: p.Game, Provider: p.Provider, Environment: p.Environment, Type: n.Type}
	// A game server's Retry-After holds the next attempt back (capped at the ladder's longest
	// step); a 410 Gone ends the notification at once. Both are documented for game servers.
	next, more := s.cfg.Ladder.NextNotBefore(end, num, r.RetryAfter)
	var reason string
	switch {
	case rec.Succeeded():
		res.Outcome = OutcomeDelivered
	case r.Gone:
		res.Outcome = OutcomeFailed
		reason = fmt.Sprintf("the game server answered 410 Gone at attempt %d", num)
	case more:
		res.Outcome = OutcomeRetryScheduled
		res.Next = next
	default:
		res.Outcome = OutcomeFailed
		reason = fmt.Sprintf("the ladder is exhausted after %d attempts", num)
	}
	res.Reason = reason
	// apply writes the result onto a copy of the payment as read; it fails if the lease there
	// is no longer ours.
	apply := func(p *Payment) error {
		n := p.Notification(key)
		if n == nil || n.State != StateDelivering || n.Lease == nil || n.Lease.Owner != lease.Owner || n.Generation != gen {
			return errTakenOver
		}
		n.Attempts = append(n.Attempts, rec)
		n.Lease = nil
		p.UpdatedAt = end
		res.Released = ""
		switch res.Outcome {
		case OutcomeDelivered:
			n.State = StateDelivered
			if next := p.release(key, end); next != nil {
				res.Released = next.Key
			}
		case OutcomeRetryScheduled:
			n.State = StatePending
			n.Attempt = num + 1
			n.NextAttemptAt = next
		default:
			n.State = StateFailed
			n.Reason = reason
		}
		return nil
	}
	// The POST happened: finish even though the caller may have gone away, each call still
	// bounded by OpTimeout. A lost record means a second POST once the lease expires, so the
	// record is retried for as long as the lease holds. The write is conditioned on the version
	// read; if the payment changed meanwhile (Ingest added a refund), the result is applied
	// again to a fresh read, as long as the lease there is still ours.
	cur, fresh := p, false
	err := retry.Do(ctx, recordBackoff(lease.Until.Sub(s.cfg.Clock.Now())), func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
		defer cancel()
		if fresh {
			var err error
			if cur, v, err = s.cfg.Store.Get(ctx, p.ID); err != nil {
				return retryable(err)
			}
		}
		rp := cur.Clone()
		if err := apply(rp); err != nil {
			return err
		}
		_, err := s.cfg.Store.Update(ctx, rp, v)
		if errors.Is(err, ErrVersionConflict) {
			fresh = true
			return retry.RetryableError(err)
		}
		if err == nil {
			cur = rp
		}
		return retryable(err)
	})
	if errors.Is(err, errTakenOver) || errors.Is(err, ErrVersionConflict) {
		// Another delivery took the attempt over (it records it), or the payment kept changing
		// until the lease ran out: either way a later delivery settles it.
		return DeliverResult{Outcome: OutcomeBusy, Reason: errTakenOver.Error(), Game: p.Game, Provider: p.Provider, Environment: p.Environment, Type: n.Type}, nil
	}
	if err != nil {
		return res, fmt.Errorf("record attempt %d: %w", num, err)
	}
	switch {
	case res.Outcome == OutcomeRetryScheduled:
		if err := s.enqueue(ctx, cur.task(cur.Notification(key), num+1, next)); err != nil {
			return res, fmt.Errorf("enqueue attempt %d: %w", num+1, err)
		}
	case res.Released != "":
		rel := cur.Notification(res.Released)
		if err := s.enqueue(ctx, cur.task(rel, 1, rel.NextAttemptAt)); err != nil {
			return res, fmt.Errorf("enqueue released %s: %w", rel.Key, err)
		}
	}
	if res.Outcome == OutcomeDelivered && key == KeyPaid && s.acks() && cur.awaitsAck() {
		// The game server granted the purchase: now, and not before, the store may be told.
		if err := s.enqueueAck(ctx, cur, ""); err != nil {
			return res, fmt.Errorf("enqueue acknowledgement: %w", err)
		}
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.Attempted(cur, cur.Notification(key), rec, res.Outcome)
	}
	return res, nil
}

// retryable marks an error worth another try for retry.Do.
func retryable(err error) error {
	if err != nil && Retryable(err) {
		return retry.RetryableError(err)
	}
	return err
}

// Clone copies a payment deeply enough that changing the copy leaves p as it was (an in-memory
// store keeps its own copies with it).
func (p *Payment) Clone() *Payment {
	c := *p
	c.Metadata = maps.Clone(p.Metadata)
	c.Notes = slices.Clone(p.Notes)
	c.Notifications = slices.Clone(p.Notifications)
	for i := range c.Notifications {
		n := &c.Notifications[i]
		n.Attempts = slices.Clone(n.Attempts)
		n.Actions = slices.Clone(n.Actions)
		if n.Lease != nil {
			l := *n.Lease
			n.Lease = &l
		}
		if n.Refund != nil {
			r := *n.Refund
			n.Refund = &r
		}
		if n.Heal != nil {
			h := *n.Heal
			n.Heal = &h
		}
		if n.Event != nil {
			e := *n.Event
			n.Event = &e
		}
	}
	if p.Subscription != nil {
		sub := *p.Subscription
		c.Subscription = &sub
	}
	if p.StoreAck != nil {
		a := *p.StoreAck
		c.StoreAck = &a
	}
	return &c
}

// get and update are single store calls bounded by OpTimeout. The claim is not retried here:
// a conflict or an outage gives the task back to Cloud Tasks, which retries it.
func (s *Service) get(ctx context.Context, id string) (*Payment, Version, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	return s.cfg.Store.Get(ctx, id)
}

func (s *Service) update(ctx context.Context, p *Payment, v Version) (Version, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	return s.cfg.Store.Update(ctx, p, v)
}

func (s *Service) enqueue(ctx context.Context, t Task) error {
	return s.withRetry(ctx, func(ctx context.Context) error {
		err := s.cfg.Queue.Enqueue(ctx, t)
		if errors.Is(err, ErrTaskExists) {
			return nil
		}
		return err
	})
}
