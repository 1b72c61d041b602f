package store_test

import (
	"context"
	"testing"
	"time"
)

// A recovery sweep's cursor on the emulator: absent is the zero time, then what was put, and
// each id its own.
func TestCursorsRoundTrip(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	if got, err := s.GetCursor(ctx, "stripe-events-acct_1-production"); err != nil || !got.IsZero() {
		t.Fatalf("an unset cursor = %v, %v; want the zero time", got, err)
	}
	at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for i, id := range []string{"stripe-events-acct_1-production", "stripe-events-acct_1-sandbox"} {
		if err := s.PutCursor(ctx, id, at.Add(time.Duration(i)*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range []string{"stripe-events-acct_1-production", "stripe-events-acct_1-sandbox"} {
		if got, err := s.GetCursor(ctx, id); err != nil || !got.Equal(at.Add(time.Duration(i)*time.Hour)) {
			t.Errorf("cursor %s = %v, %v", id, got, err)
		}
	}
}
