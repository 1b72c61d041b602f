package store

import (
	"context"
	"time"

	"cloud.google.com/go/firestore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/payrelay/payrelay/functions/relay"
)

var _ relay.CursorStore = (*Firestore)(nil)

// cursorDoc is a recovery sweep's progress, one small document per provider account and mode
// in <collection>-cursors.
type cursorDoc struct {
	At        time.Time `firestore:"at"`
	UpdatedAt time.Time `firestore:"updated_at"`
}

func (s *Firestore) cursors() *firestore.CollectionRef {
	return s.client.Collection(s.coll.ID + "-cursors")
}

// GetCursor implements relay.CursorStore.
func (s *Firestore) GetCursor(ctx context.Context, id string) (time.Time, error) {
	s.counter.read()
	snap, err := s.cursors().Doc(id).Get(ctx)
	switch {
	case status.Code(err) == codes.NotFound:
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, classify("firestore.GetCursor", err)
	}
	var d cursorDoc
	if err := snap.DataTo(&d); err != nil {
		return time.Time{}, err
	}
	return d.At, nil
}

// PutCursor implements relay.CursorStore.
func (s *Firestore) PutCursor(ctx context.Context, id string, t time.Time) error {
	s.counter.write()
	if _, err := s.cursors().Doc(id).Set(ctx, cursorDoc{At: t, UpdatedAt: time.Now()}); err != nil {
		return classify("firestore.PutCursor", err)
	}
	return nil
}
