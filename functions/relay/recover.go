package relay

import (
	"context"
	"errors"
	"time"
)

// ViaRecovery: a recovery sweep found it among what the provider failed to deliver (Stripe's
// undelivered events) and ingested it through the notification path.
const ViaRecovery = "recovery"

// CursorStore keeps how far each recovery sweep has read: for Stripe's events sweep, the time
// of the last run that ingested everything it listed.
type CursorStore interface {
	// GetCursor returns the cursor of id; the zero time when none was ever set.
	GetCursor(ctx context.Context, id string) (time.Time, error)
	// PutCursor sets the cursor of id.
	PutCursor(ctx context.Context, id string, t time.Time) error
}

// ErrNoCursors: the service was built without a cursor store.
var ErrNoCursors = errors.New("relay: recovery sweeps are not configured")

// Cursor reads a recovery sweep's cursor.
func (s *Service) Cursor(ctx context.Context, id string) (time.Time, error) {
	if s.cfg.Cursors == nil {
		return time.Time{}, ErrNoCursors
	}
	var t time.Time
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		t, err = s.cfg.Cursors.GetCursor(ctx, id)
		return err
	})
	return t, err
}

// SetCursor moves a recovery sweep's cursor.
func (s *Service) SetCursor(ctx context.Context, id string, t time.Time) error {
	if s.cfg.Cursors == nil {
		return ErrNoCursors
	}
	return s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.Cursors.PutCursor(ctx, id, t) })
}
