package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Finder runs the queries that operators and the sweeper need. Implementations classify
// their errors like a Store's.
type Finder interface {
	// Overdue returns payments with a pending notification due, or a delivering one whose
	// lease ends, at or before before: the oldest first, at most limit.
	Overdue(ctx context.Context, before time.Time, limit int) ([]*Payment, error)
	// OverdueOf is Overdue for one game's payments, a page at a time: after cursor (from the
	// previous page; "" for the first), at most limit, and the next page's cursor ("" when
	// there is none).
	OverdueOf(ctx context.Context, game string, before time.Time, cursor string, limit int) ([]*Payment, string, error)
	// List returns payments with a notification matching f, newest received first, at most
	// limit, after the payment id cursor (from the previous page; "" for the first), and the
	// cursor of the next page ("" when there is none).
	List(ctx context.Context, f Filter, cursor string, limit int) ([]*Payment, string, error)
	// AckWaiting returns payments whose purchase waits for its acknowledgement to the store
	// (tag "ack:waiting"), newest received first, a page at a time like List.
	AckWaiting(ctx context.Context, cursor string, limit int) ([]*Payment, string, error)
	// Count counts the payments List would return for f, every one (an aggregation, not a
	// read of each): a payment counts once however many of its notifications match.
	Count(ctx context.Context, f Filter) (int, error)
}

// Filter selects notifications for an operator. Empty fields match everything.
type Filter struct {
	State       State       `json:"state,omitempty"`
	Type        Type        `json:"type,omitempty"`
	Game        string      `json:"game,omitempty"`
	Provider    string      `json:"provider,omitempty"`
	Environment Environment `json:"environment,omitempty"`
	// From and To bound when the payment was received: From <= received < To.
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`
}

// Matches reports whether notification n of payment p passes the filter.
func (f Filter) Matches(p *Payment, n *Notification) bool {
	return (f.State == "" || n.State == f.State) && (f.Type == "" || n.Type == f.Type) &&
		(f.Game == "" || p.Game == f.Game) && (f.Provider == "" || p.Provider == f.Provider) &&
		(f.Environment == "" || p.Environment == f.Environment) &&
		(f.From.IsZero() || !p.ReceivedAt.Before(f.From)) && (f.To.IsZero() || p.ReceivedAt.Before(f.To))
}

// Operator says who asks for an operation and why; Job names the bulk replay asking, if any.
type Operator struct {
	By, Reason, Job string
}

// StateError: the notification is not in a state the operation applies to, or (Why) cannot
// go anywhere from it.
type StateError struct {
	Op    string
	State State
	Why   string
}

func (e *StateError) Error() string {
	if e.Why != "" {
		return fmt.Sprintf("cannot %s this %s notification: %s", e.Op, e.State, e.Why)
	}
	return fmt.Sprintf("cannot %s a notification that is %s", e.Op, e.State)
}

// ErrNoFinder: the service was built without the queries operators need.
var ErrNoFinder = errors.New("relay: no Finder configured")

// OperationResult is what Replay or Cancel did.
type OperationResult struct {
	Payment *Payment
	// Skipped: the job asking had already replayed this notification (a resumed bulk replay).
	Skipped bool
}

// Show returns one payment with all its notifications, attempts and notes.
func (s *Service) Show(ctx context.Context, paymentID string) (*Payment, error) {
	p, _, err := s.getRetry(ctx, paymentID)
	return p, err
}

// Replay starts a fresh ladder for a failed or cancelled notification (a delivered one only
// with force): attempt 1 now, under a new generation so its tasks have new names, the earlier
// history kept and the replay recorded. It goes out at once if everything before it in its
// payment's chain is delivered, and is held behind it otherwise; the refunds held behind it
// follow it once it is delivered.
func (s *Service) Replay(ctx context.Context, paymentID, key string, force bool, op Operator) (OperationResult, error) {
	var n *Notification
	res, err := s.operate(ctx, paymentID, key, func(p *Payment, nt *Notification, now time.Time) (bool, error) {
		forced := nt.State == StateDelivered
		switch {
		case nt.State == StateFailed, nt.State == StateCancelled, nt.State == StateNotRelayed, nt.State == StateOrphaned, nt.State == StateDelivered && force:
		default:
			return false, &StateError{Op: "replay", State: nt.State}
		}
		if !s.cfg.Routes.Has(p.Game, p.Environment) {
			return false, &StateError{Op: "replay", State: nt.State,
				Why: fmt.Sprintf("game %q has no %s endpoint configured; a %s notification is posted only there", p.Game, p.Environment, p.Environment)}
		}
		if op.Job != "" {
			for _, a := range nt.Actions {
				if a.Kind == ActionReplay && a.Job == op.Job {
					return false, nil // this job replayed it before it was interrupted
				}
			}
		}
		nt.Generation++
		nt.Attempt = 1
		nt.Lease, nt.Heal = nil, nil
		nt.Reason = ""
		nt.State, nt.NextAttemptAt = StatePending, now
		if p.blockedBefore(nt.Key) {
			nt.State, nt.NextAttemptAt = StateHeld, time.Time{}
		}
		nt.Actions = append(nt.Actions, Action{Kind: ActionReplay, By: op.By, Reason: op.Reason, Job: op.Job, At: now, Generation: nt.Generation, Forced: forced})
		n = nt
		return true, nil
	})
	if err != nil || res.Skipped {
		return res, err
	}
	if n.State == StatePending {
		p := res.Payment
		if err := s.enqueue(ctx, p.task(n, 1, n.NextAttemptAt)); err != nil {
			// Recorded but not enqueued: the sweeper finds it overdue and enqueues it.
			return res, fmt.Errorf("enqueue replay: %w", err)
		}
	}
	return res, nil
}

// Cancel gives up on a pending or held notification: no further attempt is made, the reason
// is recorded, and an operator can replay it later. The notifications behind it stay held.
func (s *Service) Cancel(ctx context.Context, paymentID, key string, op Operator) (OperationResult, error) {
	return s.operate(ctx, paymentID, key, func(_ *Payment, n *Notification, now time.Time) (bool, error) {
		if n.State != StatePending && n.State != StateHeld {
			return false, &StateError{Op: "cancel", State: n.State}
		}
		n.State = StateCancelled
		n.NextAttemptAt = time.Time{}
		n.Reason = "cancelled by " + op.By + ": " + op.Reason
		n.Actions = append(n.Actions, Action{Kind: ActionCancel, By: op.By, Reason: op.Reason, Job: op.Job, At: now, Generation: n.Generation})
		return true, nil
	})
}

// operate applies f to notification key of a payment and writes it conditionally, re-reading on
// a conflict. f returns false to change nothing.
func (s *Service) operate(ctx context.Context, paymentID, key string, f func(*Payment, *Notification, time.Time) (bool, error)) (OperationResult, error) {
	for try := 1; ; try++ {
		p, v, err := s.getRetry(ctx, paymentID)
		if err != nil {
			return OperationResult{}, err
		}
		n := p.Notification(key)
		if n == nil {
			return OperationResult{}, fmt.Errorf("notification %s: %w", key, ErrNotFound)
		}
		now := s.cfg.Clock.Now()
		changed, err := f(p, n, now)
		if err != nil {
			return OperationResult{Payment: p}, err
		}
		if !changed {
			return OperationResult{Payment: p, Skipped: true}, nil
		}
		p.UpdatedAt = now
		if _, err = s.write(ctx, p, v); err == nil {
			if s.cfg.Observer != nil && len(n.Actions) > 0 {
				s.cfg.Observer.Operated(p, n, n.Actions[len(n.Actions)-1])
			}
			return OperationResult{Payment: p}, nil
		}
		if !s.retryConflict(ctx, err, try) {
			return OperationResult{}, fmt.Errorf("record operation: %w", err)
		}
	}
}

// blockedBefore reports whether a notification before key in the chain is not delivered.
func (p *Payment) blockedBefore(key string) bool {
	for _, n := range p.Notifications {
		if n.Key == key {
			return false
		}
		if n.State != StateDelivered {
			return true
		}
	}
	return false
}

// Listed is one notification an operator's list shows, with its payment.
type Listed struct {
	Payment      *Payment
	Notification *Notification
}

// List returns the notifications matching f, newest payment first, a page at a time.
func (s *Service) List(ctx context.Context, f Filter, cursor string, limit int) ([]Listed, string, error) {
	if s.cfg.Finder == nil {
		return nil, "", ErrNoFinder
	}
	limit = min(max(limit, 1), 500)
	var ps []*Payment
	var next string
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		ps, next, err = s.cfg.Finder.List(ctx, f, cursor, limit)
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("list: %w", err)
	}
	var out []Listed
	for _, p := range ps {
		for i := range p.Notifications {
			if f.Matches(p, &p.Notifications[i]) {
				out = append(out, Listed{Payment: p, Notification: &p.Notifications[i]})
			}
		}
	}
	return out, next, nil
}

// Count counts the payments with a notification matching f (the store's aggregation, retried).
func (s *Service) Count(ctx context.Context, f Filter) (int, error) {
	if s.cfg.Finder == nil {
		return 0, ErrNoFinder
	}
	var n int
	err := s.withRetryFor(ctx, CountTimeout, func(ctx context.Context) error {
		var err error
		n, err = s.cfg.Finder.Count(ctx, f)
		return err
	})
	return n, err
}

// Overdue lists the notifications the sweeper would heal now: pending past SweepMargin, or
// delivering with a lease expired that long ago; the oldest first.
func (s *Service) Overdue(ctx context.Context, limit int) ([]Listed, error) {
	now := s.cfg.Clock.Now()
	ps, cutoff, err := s.findOverdue(ctx, now, limit)
	if err != nil {
		return nil, err
	}
	var out []Listed
	for _, p := range ps {
		for i := range p.Notifications {
			if _, what := overdue(&p.Notifications[i], cutoff, now); what != "" {
				out = append(out, Listed{Payment: p, Notification: &p.Notifications[i]})
			}
		}
	}
	return out, nil
}

// findOverdue reads the payments holding a notification overdue at now (the store's query,
// retried), and returns the cutoff it used.
func (s *Service) findOverdue(ctx context.Context, now time.Time, limit int) ([]*Payment, time.Time, error) {
	if s.cfg.Finder == nil {
		return nil, time.Time{}, ErrNoFinder
	}
	cutoff := now.Add(-s.cfg.SweepMargin)
	var ps []*Payment
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		ps, err = s.cfg.Finder.Overdue(ctx, cutoff, limit)
		return err
	})
	if err != nil {
		return nil, cutoff, fmt.Errorf("find overdue: %w", err)
	}
	return ps, cutoff, nil
}

// overdue says whether n needs the sweeper at cutoff: "pending, due" since its attempt's time,
// or "delivering, lease expired" since its lease's end; "" if it does not, or if the sweeper
// failed to enqueue it and backs off: it is due again at Heal.After and, like any due
// notification, swept once that is past the cutoff (the store's query reads due_at the same way).
func overdue(n *Notification, cutoff, now time.Time) (since time.Time, what string) {
	if n.Heal != nil && n.Heal.After.After(cutoff) {
		return time.Time{}, ""
	}
	switch {
	case n.State == StatePending && !n.NextAttemptAt.After(cutoff):
		return n.NextAttemptAt, "pending, due"
	case n.State == StateDelivering && n.Lease != nil && !n.Lease.Until.After(cutoff):
		return n.Lease.Until, "delivering, lease expired"
	}
	return time.Time{}, ""
}

// Healed is one notification the sweeper enqueued again, or failed to, or orphaned.
type Healed struct {
	PaymentID, Key string
	Game           string
	Environment    Environment
	Generation     int
	Attempt        int
	Why            string
	// Failure, for one the sweeper failed to enqueue: what failed, how often in a row, when it
	// tries next; Stuck once it failed HealStuckAfter times in a row (an alert names it).
	Failure *HealFailure
	Stuck   bool
}

// SweepResult is what one sweep did.
type SweepResult struct {
	Scanned int
	Healed  []Healed
	// Failed are the notifications the sweep could not enqueue: each recorded on its
	// notification and backed off; the walk went on.
	Failed []Healed
	// Orphaned are the notifications whose game (or queue) is gone, moved out of the walk.
	Orphaned []Healed
	// Left counts the games whose walk the time budget cut short: the next sweep goes on.
	Left int
	// ReadErrors are the queries that failed (a game's page): the others went on.
	ReadErrors []error
	// OldestOverdue is how long the oldest notification healed had been due; 0 if none.
	OldestOverdue time.Duration
	// AcksEnqueued are the payments whose acknowledgement to the store the sweep enqueued
	// again; AcksDue those still unacknowledged within AckAlertBefore of the store's deadline;
	// AckErrors what failed in that walk.
	AcksEnqueued []string
	AcksDue      []AckDue
	AckErrors    []error
}

// SweepPage is how many payments the sweep reads from one game at a time; SweepLimit bounds
// the last page, which looks at every game at once for payments of games no longer
// configured.
const (
	SweepPage  = 100
	SweepLimit = 500
)

// Sweep finds notifications whose task was lost (pending, due more than SweepMargin ago) or
// whose delivery died (delivering, lease expired more than SweepMargin ago) and enqueues their
// attempt again under a fresh task name. A task that was only late, not lost, then meets a
// duplicate: Deliver's claim lets one of them through.
//
// One bad item never blocks the rest (invariant 12): the sweep takes each game's overdue
// payments in turn, a page at a time, so a game with thousands overdue cannot starve another
// with one; an item that fails to enqueue is recorded on its notification (what, when, how
// often) and skipped until its own backoff ends, and the walk goes on; an item whose game or
// queue is gone is orphaned, out of the walk. It stops at the time budget and says what it
// left. It writes only to record a failure or an orphan. It returns an error only when it
// could read nothing at all.
func (s *Service) Sweep(ctx context.Context) (SweepResult, error) {
	if s.cfg.Finder == nil {
		return SweepResult{}, ErrNoFinder
	}
	now := s.cfg.Clock.Now()
	cutoff := now.Add(-s.cfg.SweepMargin)
	deadline := now.Add(s.cfg.SweepBudget)
	// One fresh name per sweep round: a second sweeper run in the same minute is deduplicated.
	round := strconv.FormatInt(now.Unix()/60, 10)
	var res SweepResult
	seen := map[string]bool{}
	var readErrs []error
	walk := func(ps []*Payment, only func(*Payment) bool) {
		for _, p := range ps {
			if seen[p.ID] || only != nil && !only(p) {
				continue
			}
			seen[p.ID] = true
			res.Scanned++
			s.sweepPayment(ctx, p, cutoff, now, round, &res)
		}
	}
	// Each game in turn, a page at a time, while the budget lasts.
	games := s.cfg.Routes.Games()
	cursors := map[string]string{}
	for active := games; len(active) > 0; {
		var more []string
		for _, g := range active {
			if s.cfg.Clock.Now().After(deadline) {
				res.Left++
				continue
			}
			var ps []*Payment
			var next string
			err := s.withRetry(ctx, func(ctx context.Context) error {
				var err error
				ps, next, err = s.cfg.Finder.OverdueOf(ctx, g, cutoff, cursors[g], SweepPage)
				return err
			})
			if err != nil {
				readErrs = append(readErrs, fmt.Errorf("overdue of %s: %w", g, err))
				continue
			}
			walk(ps, nil)
			if next != "" {
				cursors[g] = next
				more = append(more, g)
			}
		}
		active = more
	}
	// Then the payments of games the configuration no longer has (every game's, when Routes
	// name none): the per-game pages cannot find them.
	ps, _, err := s.findOverdue(ctx, now, SweepLimit)
	if err != nil {
		readErrs = append(readErrs, err)
	} else {
		walk(ps, func(p *Payment) bool { return len(games) == 0 || !s.cfg.Routes.Known(p.Game) })
	}
	if err := s.sweepAcks(ctx, now, round, deadline, &res); err != nil {
		res.AckErrors = append(res.AckErrors, err)
	}
	res.ReadErrors = readErrs
	if len(readErrs) > len(games) { // every query failed: the store is down
		return res, errors.Join(readErrs...)
	}
	return res, nil
}

// sweepPayment heals p's overdue notifications: enqueued again, or recorded as failing and
// backed off, or orphaned when its game or queue is gone.
func (s *Service) sweepPayment(ctx context.Context, p *Payment, cutoff, now time.Time, round string, res *SweepResult) {
	for i := range p.Notifications {
		n := &p.Notifications[i]
		since, what := overdue(n, cutoff, now)
		if what == "" {
			continue
		}
		age := now.Sub(since)
		h := Healed{PaymentID: p.ID, Key: n.Key, Game: p.Game, Environment: p.Environment, Generation: n.Generation, Attempt: n.Attempt,
			Why: fmt.Sprintf("%s %s ago", what, age.Round(time.Second))}
		if !s.cfg.Routes.Has(p.Game, p.Environment) {
			h.Why = orphanReason(p)
			s.sweepRecord(ctx, p.ID, n.Key, func(n *Notification) {
				n.recordLostLease()
				n.State, n.Reason, n.Lease, n.Heal, n.NextAttemptAt = StateOrphaned, orphanReason(p), nil, nil, time.Time{}
			})
			res.Orphaned = append(res.Orphaned, h)
			continue
		}
		t := p.task(n, n.Attempt, now)
		t.Sweep = round
		err := s.enqueue(ctx, t)
		switch {
		case err == nil:
			res.OldestOverdue = max(res.OldestOverdue, age)
			res.Healed = append(res.Healed, h)
		case errors.Is(err, ErrNoQueue):
			h.Why = fmt.Sprintf("orphaned: its queue is gone (%v); replay it once the game's queue exists", err)
			s.sweepRecord(ctx, p.ID, n.Key, func(n *Notification) {
				n.recordLostLease()
				n.State, n.Reason, n.Lease, n.Heal, n.NextAttemptAt = StateOrphaned, h.Why, nil, nil, time.Time{}
			})
			res.Orphaned = append(res.Orphaned, h)
		default:
			f := HealFailure{Failures: 1, Error: fmt.Sprintf("enqueue %s: %.300v", t.Name(), err), At: now}
			if n.Heal != nil {
				f.Failures = n.Heal.Failures + 1
			}
			f.After = now.Add(healBackoff(f.Failures))
			s.sweepRecord(ctx, p.ID, n.Key, func(n *Notification) { n.Heal = &f })
			h.Failure, h.Stuck = &f, f.Failures >= HealStuckAfter
			res.Failed = append(res.Failed, h)
		}
	}
}

// sweepRecord applies f to notification key of a payment as it is now stored, if it is still
// overdue in the same way (not claimed meanwhile). A record that cannot be written is left:
// the next sweep finds the notification again.
func (s *Service) sweepRecord(ctx context.Context, paymentID, key string, f func(*Notification)) {
	for try := 1; ; try++ {
		p, v, err := s.getRetry(ctx, paymentID)
		if err != nil {
			return
		}
		n := p.Notification(key)
		if n == nil || (n.State != StatePending && n.State != StateDelivering) {
			return
		}
		f(n)
		p.UpdatedAt = s.cfg.Clock.Now()
		if _, err = s.write(ctx, p, v); err == nil || !s.retryConflict(ctx, err, try) {
			return
		}
	}
}

// DueAt is when the payment next needs Deliver: the earliest pending notification's due time
// or delivering notification's lease end; zero when none is under way. The sweeper's query
// runs on it.
func (p *Payment) DueAt() time.Time {
	var due time.Time
	for _, n := range p.Notifications {
		var t time.Time
		switch {
		case n.State == StatePending:
			t = n.NextAttemptAt
		case n.State == StateDelivering && n.Lease != nil:
			t = n.Lease.Until
		default:
			continue
		}
		if n.Heal != nil && n.Heal.After.After(t) {
			t = n.Heal.After // the sweeper backs off a notification it failed to enqueue
		}
		if due.IsZero() || t.Before(due) {
			due = t
		}
	}
	return due
}

// Tags are the payment's notifications' states and types as query terms: "all", "s:<state>",
// "t:<type>" and "s:<state>|t:<type>". An operator's list filters on one of them (Firestore
// allows one array-contains per query); TagFor picks it.
func (p *Payment) Tags() []string {
	seen := map[string]bool{"all": true}
	tags := []string{"all"}
	if p.StoreAck != nil && p.StoreAck.State == AckWaiting {
		tags = append(tags, AckWaitingTag)
	}
	for _, n := range p.Notifications {
		for _, t := range []string{"s:" + string(n.State), "t:" + string(n.Type), "s:" + string(n.State) + "|t:" + string(n.Type)} {
			if !seen[t] {
				seen[t] = true
				tags = append(tags, t)
			}
		}
	}
	return tags
}

// AckWaitingTag marks a payment whose purchase waits for its acknowledgement to the store.
const AckWaitingTag = "ack:waiting"

// TagFor is the tag a filter's state and type select.
func (f Filter) TagFor() string {
	switch {
	case f.State != "" && f.Type != "":
		return "s:" + string(f.State) + "|t:" + string(f.Type)
	case f.State != "":
		return "s:" + string(f.State)
	case f.Type != "":
		return "t:" + string(f.Type)
	}
	return "all"
}
