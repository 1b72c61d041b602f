package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
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
	// Create stores p if no payment with p.ID exists, and returns its version. If one does, it
	// returns the stored one, its version and created=false, leaving it untouched.
	Create(ctx context.Context, p *Payment) (stored *Payment, v Version, created bool, err error)
	// Get returns the payment and its version.
	Get(ctx context.Context, id string) (*Payment, Version, error)
	// Update writes p's mutable state (facts a later notification completed, refunds,
	// notifications, notes) if the stored payment is still at version v, and returns the new
	// version; ErrVersionConflict if it is not.
	Update(ctx context.Context, p *Payment, v Version) (Version, error)
}

// Task asks Deliver to make attempt Attempt of the notification Key of payment PaymentID at At.
type Task struct {
	PaymentID string
	Game      string // whose queues carry it
	// Environment picks among the game's queues: a sandbox notification goes only through
	// the game's sandbox queues.
	Environment Environment
	Key         string
	Generation  int
	Attempt     int
	At          time.Time
	// Sweep, if set, marks a task the sweeper enqueued again for an attempt whose task was
	// lost: a fresh name, since the lost one's may be held by the queue's deduplication.
	Sweep string
}

// task is the task of attempt `attempt` of p's notification n, due at at, on the queues of
// p's game and environment.
func (p *Payment) task(n *Notification, attempt int, at time.Time) Task {
	return Task{PaymentID: p.ID, Game: p.Game, Environment: p.Environment, Key: n.Key, Generation: n.Generation, Attempt: attempt, At: at}
}

// Name is the task's idempotency key, {notification}-{attempt}, with -g{generation} before the
// attempt after a replay and -s{sweep} after it for the sweeper's: a repeated enqueue of the
// same attempt is ErrTaskExists.
func (t Task) Name() string {
	name := NotificationID(t.PaymentID, t.Key)
	if t.Generation > 0 {
		name += fmt.Sprintf("-g%d", t.Generation)
	}
	name += fmt.Sprintf("-%d", t.Attempt)
	if t.Sweep != "" {
		name += "-s" + t.Sweep
	}
	return name
}

// Queue schedules tasks. Enqueue of a name that exists, or existed recently, returns
// ErrTaskExists.
type Queue interface {
	Enqueue(ctx context.Context, t Task) error
}

// Notifier makes one attempt to tell the game server one notification of a payment. It never
// returns an error: a game server that fails is a recorded attempt, not a failure of ours.
type Notifier interface {
	Notify(ctx context.Context, p *Payment, n *Notification, attempt int) NotifyResult
}

// NotifyResult is what one POST to the game server came to.
type NotifyResult struct {
	StatusCode int
	ErrorClass ErrorClass
	Error      string
	Response   string
	// RetryAfter is when the game server asked to be tried again (a 429 or 503 with
	// Retry-After); zero when it did not.
	RetryAfter time.Time
	// Gone: the game server answered 410, asking never to be sent this notification again.
	Gone bool
}

// Clock tells the time to stateful code; tests drive it.
type Clock interface{ Now() time.Time }

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns the current time.
func (SystemClock) Now() time.Time { return time.Now() }

// Observer is told what happens to notifications (the local runner's progress display,
// benchmarks). Calls are synchronous and must be fast.
type Observer interface {
	Received(p *Payment, n *Notification, duplicate bool)
	Attempted(p *Payment, n *Notification, rec AttemptRecord, outcome Outcome)
	// Operated: an operator (or a bulk replay) replayed or cancelled n; a is the action
	// recorded, n as it now stands.
	Operated(p *Payment, n *Notification, a Action)
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
	// Finder runs operators' and the sweeper's queries; optional for Ingest and Deliver.
	Finder Finder
	// SweepMargin is how overdue a notification must be before the sweeper enqueues it again
	// (default 2m): well past a task's normal dispatch and Cloud Tasks' retries of a 5xx.
	SweepMargin time.Duration
	// SweepBudget bounds one sweep's walk (default 40s, inside the function's timeout and
	// before the next minute's sweep); what it leaves, the next sweep takes.
	SweepBudget time.Duration
	// Jobs and JobQueue run bulk replays; optional (without them a bulk replay is refused).
	Jobs     JobStore
	JobQueue JobQueue
	// ReplayRate bounds a bulk replay's replays per second (default 20).
	ReplayRate float64
	// Reports and Days run the daily reconciliation; optional (without them it is refused).
	Reports ReportStore
	Days    DayFinder
	// DayPartitions is how many id ranges of a stored day are read at once (default
	// DayPartitions).
	DayPartitions int
	// MaxDayPayments bounds the stored day a reconciliation loads (0: none): a larger day is
	// refused with ErrDayTooLarge before it is read.
	MaxDayPayments int
	// Cursors keep the recovery sweeps' progress (Stripe's undelivered events); optional.
	Cursors CursorStore
	// StoreAcker acknowledges purchases to their stores after the game server's
	// acknowledgement (Google Play); optional, needs JobQueue.
	StoreAcker StoreAcker
	// Routes says which environments each game has an endpoint for; nil means every game has
	// production only. A notification whose game has no endpoint for its payment's
	// environment is stored not relayed.
	Routes Routes
}

// Routes lists, per game, the environments it has an endpoint (URL, secrets, queues) for.
type Routes map[string][]Environment

// Has reports whether game has an endpoint for env. Production is every game's; sandbox only
// a game configured with a sandbox endpoint's. Nothing falls back from one to the other.
func (r Routes) Has(game string, env Environment) bool {
	if r == nil {
		return env == EnvProduction
	}
	return slices.Contains(r[game], env)
}

// Known reports whether game is configured at all (nil Routes know every game).
func (r Routes) Known(game string) bool {
	if r == nil {
		return true
	}
	_, ok := r[game]
	return ok
}

// Games lists the configured games, sorted (none for nil Routes).
func (r Routes) Games() []string {
	return slices.Sorted(maps.Keys(r))
}

// NoSandboxEndpoint is the reason a sandbox notification of a game without a sandbox endpoint
// is stored not relayed.
const NoSandboxEndpoint = "not relayed (no sandbox endpoint): the game has no sandbox endpoint configured, and a sandbox notification is never posted to production"

// DefaultBackoff retries an unavailable dependency 3 times within about a second: long enough
// to ride out a blip, short enough that a provider (WeChat Pay waits 5 s) gets its answer and
// Cloud Tasks' own retries are not multiplied into minutes.
func DefaultBackoff() retry.Backoff {
	return retry.WithMaxRetries(3, retry.WithCappedDuration(400*time.Millisecond,
		retry.WithJitterPercent(20, retry.NewExponential(50*time.Millisecond))))
}

// Service relays payment results: Ingest stores and enqueues, Deliver walks the ladder.
type Service struct {
	cfg Config
	// conflicts counts writes re-applied after a version conflict (ConflictsRetried).
	conflicts atomic.Int64
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
	if cfg.SweepMargin <= 0 {
		cfg.SweepMargin = 2 * time.Minute
	}
	if cfg.SweepBudget <= 0 {
		cfg.SweepBudget = 40 * time.Second
	}
	if cfg.ReplayRate <= 0 {
		cfg.ReplayRate = 20
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

// CountTimeout bounds one COUNT() aggregation: it scans the index entries it counts (Firestore
// documents aggregations over millions of entries taking seconds; the emulator, which keeps no
// index, scans the documents), so OpTimeout, made for single-document calls, is too short.
const CountTimeout = 60 * time.Second

// PageTimeout bounds the read of one page of a stored day (DayPage documents, not one; on the
// emulator, which keeps no index, each page scans the collection: about 6 s a page at 200,000
// payments read one at a time, past OpTimeout's 3, and longer than this with eight at once).
const PageTimeout = 30 * time.Second

// withRetryFor is withRetry for a call that reads many documents or index entries, each try
// bounded by timeout (CountTimeout, PageTimeout) or OpTimeout if longer.
func (s *Service) withRetryFor(ctx context.Context, timeout time.Duration, f func(context.Context) error) error {
	return s.retryTimeout(ctx, s.cfg.Backoff(), max(timeout, s.cfg.OpTimeout), f)
}

func (s *Service) retryWith(ctx context.Context, b retry.Backoff, f func(context.Context) error) error {
	return s.retryTimeout(ctx, b, s.cfg.OpTimeout, f)
}

func (s *Service) retryTimeout(ctx context.Context, b retry.Backoff, timeout time.Duration, f func(context.Context) error) error {
	return retry.Do(ctx, b, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		err := f(ctx)
		if err != nil && Retryable(err) {
			return retry.RetryableError(err)
		}
		return err
	})
}
