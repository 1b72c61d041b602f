package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/payrelay/payrelay/functions/relay"
)

// IndexField is one field of a composite index, as terraform's google_firestore_index names
// it: an order (ASCENDING, DESCENDING) or an array config (CONTAINS).
type IndexField struct {
	Path, Order, ArrayConfig string
}

// Index is a composite index one of the store's queries needs in production; the emulator
// needs none, so a test checks terraform.tf creates each.
type Index []IndexField

// Indexes lists every composite index the store's queries use, derived from the same
// functions that build them (listQuery, overdueIndex); the sweeper's last query (due_at alone)
// runs on Firestore's automatic single-field index.
func Indexes() []Index {
	out := []Index{overdueIndex()}
	for _, env := range []bool{false, true} {
		for _, game := range []bool{false, true} {
			for _, provider := range []bool{false, true} {
				out = append(out, listIndex(env, game, provider))
			}
		}
	}
	return out
}

// listIndex is the index of an operator's list filtering on a tag and, optionally, the
// environment, game and provider, ordered by received time, newest first.
func listIndex(env, game, provider bool) Index {
	idx := Index{{Path: "tags", ArrayConfig: "CONTAINS"}}
	if env {
		idx = append(idx, IndexField{Path: "environment", Order: "ASCENDING"})
	}
	if game {
		idx = append(idx, IndexField{Path: "game", Order: "ASCENDING"})
	}
	if provider {
		idx = append(idx, IndexField{Path: "provider", Order: "ASCENDING"})
	}
	return append(idx, IndexField{Path: "received_at", Order: "DESCENDING"})
}

// listQuery builds an operator's list query from its index, field by field, so that the query
// and the index terraform must create cannot drift apart.
func (s *Firestore) listQuery(f relay.Filter) firestore.Query {
	q := s.coll.Query
	for _, field := range listIndex(f.Environment != "", f.Game != "", f.Provider != "") {
		switch field.Path {
		case "tags":
			q = q.Where("tags", "array-contains", f.TagFor())
		case "environment":
			q = q.Where("environment", "==", string(f.Environment))
		case "game":
			q = q.Where("game", "==", f.Game)
		case "provider":
			q = q.Where("provider", "==", f.Provider)
		case "received_at":
			if !f.From.IsZero() {
				q = q.Where("received_at", ">=", f.From)
			}
			if !f.To.IsZero() {
				q = q.Where("received_at", "<", f.To)
			}
			q = q.OrderBy("received_at", firestore.Desc).OrderBy(firestore.DocumentID, firestore.Desc)
		}
	}
	return q
}

// List implements relay.Finder. The cursor is the last payment's received time and id.
func (s *Firestore) List(ctx context.Context, f relay.Filter, cursor string, limit int) ([]*relay.Payment, string, error) {
	return s.page(ctx, "firestore.List", s.listQuery(f), cursor, limit, func(p *relay.Payment) time.Time { return p.ReceivedAt })
}

// Count implements relay.Finder: the COUNT() of an operator's list query (its index).
func (s *Firestore) Count(ctx context.Context, f relay.Filter) (int, error) {
	return s.count(ctx, "firestore.Count", s.listQuery(f))
}

// AckWaiting implements relay.Finder: the payments tagged ack:waiting, newest received first
// (the operators' list index on tags and received_at).
func (s *Firestore) AckWaiting(ctx context.Context, cursor string, limit int) ([]*relay.Payment, string, error) {
	q := s.coll.Where("tags", "array-contains", relay.AckWaitingTag).OrderBy("received_at", firestore.Desc).OrderBy(firestore.DocumentID, firestore.Desc)
	return s.page(ctx, "firestore.AckWaiting", q, cursor, limit, func(p *relay.Payment) time.Time { return p.ReceivedAt })
}

// overdueIndex is the index of a game's overdue payments, oldest due first: the sweeper's
// per-game pages.
func overdueIndex() Index {
	return Index{{Path: "game", Order: "ASCENDING"}, {Path: "due_at", Order: "ASCENDING"}}
}

// OverdueOf implements relay.Finder. The cursor is the last payment's due time and id.
func (s *Firestore) OverdueOf(ctx context.Context, game string, before time.Time, cursor string, limit int) ([]*relay.Payment, string, error) {
	q := s.coll.Where("game", "==", game).Where("due_at", "<=", before).OrderBy("due_at", firestore.Asc).OrderBy(firestore.DocumentID, firestore.Asc)
	return s.page(ctx, "firestore.OverdueOf", q, cursor, limit, (*relay.Payment).DueAt)
}

// page runs q, ordered by a time field and then the document id, a page at a time: after the
// cursor "<unix nanos>_<id>" of the previous page's last payment, at most limit; the next
// cursor is made of the last payment's key (the ordering time) and id, "" after the last page.
func (s *Firestore) page(ctx context.Context, op string, q firestore.Query, cursor string, limit int, key func(*relay.Payment) time.Time) ([]*relay.Payment, string, error) {
	if cursor != "" {
		nanos, id, ok := strings.Cut(cursor, "_")
		n, err := strconv.ParseInt(nanos, 10, 64)
		if !ok || err != nil || id == "" {
			return nil, "", fmt.Errorf("store: malformed cursor %q", cursor)
		}
		q = q.StartAfter(time.Unix(0, n).UTC(), id)
	}
	docs, err := q.Limit(limit).Documents(ctx).GetAll()
	if err != nil {
		return nil, "", classify(op, err)
	}
	ps, err := s.decode(docs)
	if err != nil || len(ps) < limit {
		return ps, "", err
	}
	last := ps[len(ps)-1]
	return ps, fmt.Sprintf("%d_%s", key(last).UnixNano(), last.ID), nil
}

// Overdue implements relay.Finder.
func (s *Firestore) Overdue(ctx context.Context, before time.Time, limit int) ([]*relay.Payment, error) {
	docs, err := s.coll.Where("due_at", "<=", before).OrderBy("due_at", firestore.Asc).Limit(limit).Documents(ctx).GetAll()
	if err != nil {
		return nil, classify("firestore.Overdue", err)
	}
	return s.decode(docs)
}

func (s *Firestore) decode(docs []*firestore.DocumentSnapshot) ([]*relay.Payment, error) {
	var ps []*relay.Payment
	for _, snap := range docs {
		s.counter.read()
		var d paymentDoc
		if err := snap.DataTo(&d); err != nil {
			return nil, fmt.Errorf("firestore.DataTo %s: %w", snap.Ref.ID, err)
		}
		ps = append(ps, d.toPayment(snap.Ref.ID))
	}
	return ps, nil
}
