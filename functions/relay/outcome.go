package relay

import (
	"context"
	"errors"
	"time"
)

// Errors the adapters classify into, once, at their boundary. Callers match them with
// errors.Is; the adapter keeps the underlying error wrapped for the logs.
var (
	// ErrUnavailable marks a failure of a dependency that may succeed if tried again (gRPC
	// Unavailable, DeadlineExceeded, Aborted, ResourceExhausted).
	ErrUnavailable = errors.New("dependency unavailable")
	// ErrNotFound: no payment with that id.
	ErrNotFound = errors.New("payment not found")
	// ErrVersionConflict: the payment changed since it was read; the write was not applied.
	ErrVersionConflict = errors.New("payment changed since it was read")
	// ErrTaskExists: a task with that name exists or existed recently. Enqueueing is
	// idempotent, so callers treat it as success.
	ErrTaskExists = errors.New("task already exists")
	// ErrFactsDiffer: a callback for a stored order carries other facts (another amount, say).
	ErrFactsDiffer = errors.New("payment differs from the stored one for the same order")
	// ErrNoQueue: the task's queue does not exist (deleted, renamed, or its game or sandbox no
	// longer configured). Not retryable: the notification is orphaned until it exists again.
	ErrNoQueue = errors.New("no such queue")
)

// Retryable reports whether err is worth retrying: a dependency was unavailable.
func Retryable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)
}

// Outcome is what Deliver did with one task.
type Outcome string

const (
	// OutcomeDelivered: the game server acknowledged this attempt.
	OutcomeDelivered Outcome = "delivered"
	// OutcomeRetryScheduled: the attempt failed, was recorded, and the next one is enqueued.
	OutcomeRetryScheduled Outcome = "retry_scheduled"
	// OutcomeFailed: the last attempt failed; the payment is dead-lettered.
	OutcomeFailed Outcome = "failed"
	// OutcomeIgnored: the task is stale or its payment terminal (at-least-once delivery).
	OutcomeIgnored Outcome = "ignored"
	// OutcomeRepaired: the task was stale, but its successor had not been enqueued (an earlier
	// Deliver recorded the attempt and then could not reach the queue); it is now.
	OutcomeRepaired Outcome = "repaired"
	// OutcomeRejected: the task can never succeed (bad body, unknown payment).
	OutcomeRejected Outcome = "rejected"
	// OutcomeBusy: another delivery holds a live lease on this attempt.
	OutcomeBusy Outcome = "busy"
	// OutcomeOrphaned: the notification's game (or its endpoint for the payment's
	// environment) is no longer configured; it was moved to StateOrphaned, nothing posted.
	OutcomeOrphaned Outcome = "orphaned"
)

// Class is the one classification of invariant 4, which the handler maps to a status code.
type Class int

const (
	// ClassDone: acknowledge the task (2xx); Cloud Tasks must not send it again.
	ClassDone Class = iota
	// ClassRetry: answer non-2xx so Cloud Tasks redelivers the same task later.
	ClassRetry
)

// Class says how Cloud Tasks should treat the task after this outcome.
func (o Outcome) Class() Class {
	if o == OutcomeBusy {
		return ClassRetry
	}
	return ClassDone
}

// ErrorClass names why an attempt to reach the game server failed.
type ErrorClass string

// Error classes of an attempt, from the first thing that went wrong.
const (
	ErrorNone     ErrorClass = ""
	ErrorDNS      ErrorClass = "dns"
	ErrorConnect  ErrorClass = "connect"
	ErrorTLS      ErrorClass = "tls"
	ErrorTimeout  ErrorClass = "timeout"
	ErrorHTTP     ErrorClass = "http"     // the game server answered non-2xx
	ErrorRedirect ErrorClass = "redirect" // a redirect we refused to follow
	ErrorLost     ErrorClass = "lost"     // the delivery died mid-attempt; the outcome is unknown
	ErrorBlocked  ErrorClass = "blocked"  // the game server's address is one Deliver may not reach
	ErrorConfig   ErrorClass = "config"   // the payment's game is not configured
)

// AttemptRecord is the history of one notification, kept on the payment.
type AttemptRecord struct {
	Number     int
	StartedAt  time.Time
	Duration   time.Duration
	StatusCode int
	ErrorClass ErrorClass
	Error      string
	Response   string    // the first bytes of the response body
	Delivery   string    // the execution that made it (Cloud Tasks task name and count)
	RetryAfter time.Time // when the game server asked to be tried again, if it did
	Generation int       // the ladder it belongs to: 0, then one more per operator replay
}

// Succeeded reports whether the game server acknowledged the attempt.
func (a AttemptRecord) Succeeded() bool {
	return a.ErrorClass == ErrorNone && a.StatusCode >= 200 && a.StatusCode < 300
}
