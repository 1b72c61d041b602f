package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/payrelay/payrelay/schedule"
)

// Version identifies the stored revision of a payment; a conditional write applies only if the
// payment is still at the version it was read at (Firestore's update time).
type Version int64

// Store persists payments. Implementations classify their errors into ErrUnavailable,
// ErrNotFound and ErrVersionConflict.
type Store interface {
	// Create stores p if no payment with p.ID exists. If one does, it returns the stored one
	// and created=false, leaving it untouched.
	Create(ctx context.Context, p *Payment) (stored *Payment, created bool, err error)
	// Get returns the payment and its version.
	Get(ctx context.Context, id string) (*Payment, Version, error)
	// Update writes p's relay state if the stored payment is still at version v, and returns
	// the new version; ErrVersionConflict if it is not.
	Update(ctx context.Context, p *Payment, v Version) (Version, error)
}

// Task asks Deliver to make attempt Attempt of payment PaymentID at At.
type Task struct {
	PaymentID string
	Attempt   int
	At        time.Time
}

// Name is the task's idempotency key: a repeated enqueue of the same attempt is ErrTaskExists.
func (t Task) Name() string { return fmt.Sprintf("%s-%d", t.PaymentID, t.Attempt) }

// Queue schedules tasks. Enqueue of a name that exists, or existed recently, returns
// ErrTaskExists.
type Queue interface {
	Enqueue(ctx context.Context, t Task) error
}

// Notifier makes one attempt to tell the game server about a payment. It never returns an
// error: a game server that fails is a recorded attempt, not a failure of ours.
type Notifier interface {
	Notify(ctx context.Context, p *Payment, attempt int) NotifyResult
}

// NotifyResult is what one POST to the game server came to.
type NotifyResult struct {
	StatusCode int
	ErrorClass ErrorClass
	Error      string
	Response   string
}

// Clock tells the time to stateful code; tests drive it.
type Clock interface{ Now() time.Time }

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns the current time.
func (SystemClock) Now() time.Time { return time.Now() }

// Observer is told what happens to payments (the local runner's progress display, benchmarks).
// Calls are synchronous and must be fast.
type Observer interface {
	Received(p *Payment, duplicate bool)
	Attempted(p *Payment, rec AttemptRecord, outcome Outcome)
}

// Config holds the Service's dependencies.
type Config struct {
	Store    Store
	Queue    Queue
	Notifier Notifier
	Ladder   schedule.Ladder
	Clock    Clock
	Logger   *slog.Logger
	Observer Observer // optional
	// Lease is how long a claimed attempt is held before another delivery may take it over.
	// It must exceed the notifier's timeout.
	Lease time.Duration
	// Backoff builds the bounded retry policy for store and queue calls that fail with
	// ErrUnavailable; nil means DefaultBackoff.
	Backoff func() retry.Backoff
	// OpTimeout bounds each store or queue call (default 3s): an unreachable Firestore must
	// give a prompt error, not a call that hangs while its client retries.
	OpTimeout time.Duration
}

// DefaultBackoff retries an unavailable dependency 3 times within about a second: long enough
// to ride out a blip, short enough that a provider (WeChat Pay waits 5 s) gets its answer and
// Cloud Tasks' own retries are not multiplied into minutes.
func DefaultBackoff() retry.Backoff {
	return retry.WithMaxRetries(3, retry.WithCappedDuration(400*time.Millisecond,
		retry.WithJitterPercent(20, retry.NewExponential(50*time.Millisecond))))
}

// Service relays payments: Ingest stores and enqueues, Deliver walks the ladder.
type Service struct {
	cfg Config
}

// NewService checks its dependencies and returns a Service.
func NewService(cfg Config) (*Service, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("relay: Store is required")
	case cfg.Queue == nil:
		return nil, errors.New("relay: Queue is required")
	case cfg.Notifier == nil:
		return nil, errors.New("relay: Notifier is required")
	case cfg.Ladder.Attempts() == 0:
		return nil, errors.New("relay: Ladder is empty")
	case cfg.Lease <= 0:
		return nil, errors.New("relay: Lease must be positive")
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 3 * time.Second
	}
	return &Service{cfg: cfg}, nil
}

// Ladder returns the ladder the service walks.
func (s *Service) Ladder() schedule.Ladder { return s.cfg.Ladder }

// withRetry runs f, each try bounded by OpTimeout, retrying only errors classified as
// Retryable, within the bounded backoff.
func (s *Service) withRetry(ctx context.Context, f func(context.Context) error) error {
	return s.retryWith(ctx, s.cfg.Backoff(), f)
}

// recordBackoff retries the record of an attempt until the lease ends: until then nobody else
// may POST this attempt, so giving up earlier would only invite a second POST once it expires.
func recordBackoff(remaining time.Duration) retry.Backoff {
	return retry.WithMaxDuration(max(remaining, 0), retry.WithCappedDuration(time.Second,
		retry.WithJitterPercent(20, retry.NewExponential(50*time.Millisecond))))
}

func (s *Service) retryWith(ctx context.Context, b retry.Backoff, f func(context.Context) error) error {
	return retry.Do(ctx, b, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
		defer cancel()
		err := f(ctx)
		if err != nil && Retryable(err) {
			return retry.RetryableError(err)
		}
		return err
	})
}

// IngestResult is what Ingest did.
type IngestResult struct {
	PaymentID string
	Duplicate bool // the payment was already stored by an earlier callback
}

// Ingest stores a validated payment if it is new and makes sure its first task exists. It
// returns only once both are durable, so that a 2xx to the provider means nothing is lost; an
// error means the provider should retry, and its retry completes what this call began.
func (s *Service) Ingest(ctx context.Context, in Payment) (IngestResult, error) {
	if err := in.Validate(); err != nil {
		return IngestResult{}, err
	}
	now := s.cfg.Clock.Now()
	p := in
	p.ID = PaymentID(in.Provider, in.OrderID)
	// Firestore keeps microseconds: normalize so a repeated callback compares equal.
	p.PaidAt = in.PaidAt.UTC().Truncate(time.Microsecond)
	p.State = StatePending
	p.Attempt = 1
	p.ReceivedAt = now
	p.UpdatedAt = now
	p.NextAttemptAt = s.cfg.Ladder.First(now)
	p.Lease = nil
	p.Attempts = nil

	var stored *Payment
	var created bool
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		stored, created, err = s.cfg.Store.Create(ctx, &p)
		return err
	})
	if err != nil {
		return IngestResult{PaymentID: p.ID}, fmt.Errorf("store payment: %w", err)
	}
	res := IngestResult{PaymentID: p.ID, Duplicate: !created}
	if !created {
		if !stored.SameFacts(&p) {
			return res, ErrFactsDiffer
		}
		// The first callback stored the payment; it may have failed before its task existed.
		// Once Deliver has touched the payment, the chain is under way and needs nothing.
		if stored.State != StatePending || stored.Attempt != 1 || len(stored.Attempts) > 0 {
			s.observeReceived(stored, true)
			return res, nil
		}
		p = *stored
	}
	err = s.withRetry(ctx, func(ctx context.Context) error {
		err := s.cfg.Queue.Enqueue(ctx, Task{PaymentID: p.ID, Attempt: 1, At: p.NextAttemptAt})
		if errors.Is(err, ErrTaskExists) {
			return nil
		}
		return err
	})
	if err != nil {
		return res, fmt.Errorf("enqueue attempt 1: %w", err)
	}
	s.observeReceived(&p, res.Duplicate)
	return res, nil
}

func (s *Service) observeReceived(p *Payment, dup bool) {
	if s.cfg.Observer != nil {
		s.cfg.Observer.Received(p, dup)
	}
}

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
}

// maxClaimTries bounds how often Deliver re-reads a payment that changed under it before it
// gives the task back to Cloud Tasks.
const maxClaimTries = 3

// Deliver makes attempt t.Attempt of a payment, at most once at a time (invariant 3), records
// it, and schedules the next attempt or ends the chain. An error means progress could not be
// recorded and the same task must be redelivered; the redelivery finishes the job.
func (s *Service) Deliver(ctx context.Context, paymentID string, attempt int, d Delivery) (DeliverResult, error) {
	if paymentID == "" || attempt < 1 {
		return DeliverResult{Outcome: OutcomeRejected, Reason: "task names no payment or attempt"}, nil
	}
	for try := 1; ; try++ {
		p, v, err := s.get(ctx, paymentID)
		if errors.Is(err, ErrNotFound) {
			return DeliverResult{Outcome: OutcomeRejected, Reason: "unknown payment"}, nil
		}
		if err != nil {
			return DeliverResult{}, fmt.Errorf("load payment: %w", err)
		}
		res, claimed, err := s.decide(ctx, p, attempt)
		if err != nil || !claimed {
			return res, err
		}
		now := s.cfg.Clock.Now()
		if p.State == StateDelivering && p.Lease != nil {
			// The lease expired: a delivery died between claiming and recording. Its POST may
			// or may not have reached the game server; say so in the history.
			p.Attempts = append(p.Attempts, AttemptRecord{
				Number: p.Lease.Attempt, StartedAt: p.Lease.ClaimedAt, ErrorClass: ErrorLost,
				Error: "delivery ended without recording a result (lease expired); outcome unknown",
			})
		}
		p.State = StateDelivering
		p.Lease = &Lease{Attempt: attempt, Owner: d.String(), ClaimedAt: now, Until: now.Add(s.cfg.Lease)}
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
		return s.attempt(ctx, p, v, d)
	}
}

// decide looks at a payment and a task's attempt and either settles the task (claimed=false)
// or says the attempt may be claimed.
func (s *Service) decide(ctx context.Context, p *Payment, attempt int) (res DeliverResult, claimed bool, err error) {
	switch {
	case p.State.Terminal():
		return DeliverResult{Outcome: OutcomeIgnored, Reason: "payment is " + string(p.State)}, false, nil
	case attempt > p.Attempt:
		return DeliverResult{Outcome: OutcomeRejected, Reason: fmt.Sprintf("attempt %d is ahead of the payment's attempt %d", attempt, p.Attempt)}, false, nil
	case attempt < p.Attempt:
		if p.State == StatePending && attempt == p.Attempt-1 {
			// The delivery of this attempt recorded it but may not have enqueued the next one.
			err := s.enqueue(ctx, Task{PaymentID: p.ID, Attempt: p.Attempt, At: p.NextAttemptAt})
			if err != nil {
				return DeliverResult{}, false, fmt.Errorf("re-enqueue attempt %d: %w", p.Attempt, err)
			}
			return DeliverResult{Outcome: OutcomeRepaired, Reason: fmt.Sprintf("attempt %d is already recorded; attempt %d is enqueued", attempt, p.Attempt)}, false, nil
		}
		return DeliverResult{Outcome: OutcomeIgnored, Reason: fmt.Sprintf("attempt %d is stale; the payment is at attempt %d", attempt, p.Attempt)}, false, nil
	case p.State == StateDelivering && p.Lease != nil && s.cfg.Clock.Now().Before(p.Lease.Until):
		return DeliverResult{Outcome: OutcomeBusy, Reason: "attempt is held by " + p.Lease.Owner + " until " + p.Lease.Until.UTC().Format(time.RFC3339)}, false, nil
	}
	return DeliverResult{}, true, nil
}

// attempt posts to the game server under a held lease and records the result.
func (s *Service) attempt(ctx context.Context, p *Payment, v Version, d Delivery) (DeliverResult, error) {
	n := p.Attempt
	leaseUntil := p.Lease.Until
	start := s.cfg.Clock.Now()
	r := s.cfg.Notifier.Notify(ctx, p, n)
	end := s.cfg.Clock.Now()
	rec := AttemptRecord{
		Number: n, StartedAt: start, Duration: end.Sub(start), StatusCode: r.StatusCode,
		ErrorClass: r.ErrorClass, Error: r.Error, Response: r.Response, Delivery: d.String(),
	}
	p.Attempts = append(p.Attempts, rec)
	p.Lease = nil
	p.UpdatedAt = end
	res := DeliverResult{Record: &rec}
	next, more := s.cfg.Ladder.Next(end, n)
	switch {
	case rec.Succeeded():
		p.State = StateDelivered
		res.Outcome = OutcomeDelivered
	case more:
		p.State = StatePending
		p.Attempt = n + 1
		p.NextAttemptAt = next
		res.Outcome = OutcomeRetryScheduled
		res.Next = next
	default:
		p.State = StateFailed
		res.Outcome = OutcomeFailed
	}
	// The POST happened: from here on, finish even if the caller goes away (Cloud Tasks cut the
	// request at its deadline), each call still bounded by OpTimeout. A lost record means a
	// second POST once the lease expires, so the record is retried for as long as the lease
	// holds; the version check makes a write after a takeover fail rather than clobber it.
	ctx = context.WithoutCancel(ctx)
	err := s.retryWith(ctx, recordBackoff(leaseUntil.Sub(s.cfg.Clock.Now())), func(ctx context.Context) error {
		_, err := s.cfg.Store.Update(ctx, p, v)
		return err
	})
	if errors.Is(err, ErrVersionConflict) {
		// Our lease expired and another delivery took the attempt over; it will record it.
		return DeliverResult{Outcome: OutcomeBusy, Reason: "lease was taken over before the result was recorded", Record: &rec}, nil
	}
	if err != nil {
		return res, fmt.Errorf("record attempt %d: %w", n, err)
	}
	if res.Outcome == OutcomeRetryScheduled {
		if err := s.enqueue(ctx, Task{PaymentID: p.ID, Attempt: n + 1, At: next}); err != nil {
			return res, fmt.Errorf("enqueue attempt %d: %w", n+1, err)
		}
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.Attempted(p, rec, res.Outcome)
	}
	return res, nil
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

// TaskMessage is the body of a Deliver task: which payment, which attempt.
type TaskMessage struct {
	PaymentID string `json:"payment_id"`
	Attempt   int    `json:"attempt"`
}
