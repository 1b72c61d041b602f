// Package store keeps payments in Firestore, one document per payment, keyed by the payment's
// hashed id. It classifies Firestore's errors into the relay core's, once, here.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"cloud.google.com/go/firestore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/payrelay/payrelay/functions/relay"
)

var _ relay.Store = (*Firestore)(nil)

// Firestore is a relay.Store over a Firestore collection.
//
// Claiming an attempt is a compare-and-set on one document: a read, then an update
// conditioned on the document's update time (firestore.LastUpdateTime). Firestore applies that
// precondition atomically, so it serializes concurrent deliveries exactly as a transaction
// would, and its write result gives the version the result write is conditioned on in turn.
// That costs one read and two writes per attempt, where RunTransaction would need a second
// read to condition the result write.
type Firestore struct {
	client *firestore.Client
	coll   *firestore.CollectionRef
	// Counters, for the benchmark's cost figures: operations that reached Firestore.
	counter *Counter
}

// Counter counts Firestore operations; a nil *Counter counts nothing.
type Counter struct {
	Reads, Writes func()
}

func (c *Counter) read() {
	if c != nil && c.Reads != nil {
		c.Reads()
	}
}

func (c *Counter) write() {
	if c != nil && c.Writes != nil {
		c.Writes()
	}
}

// NewFirestore opens the database and returns a store over collection. The client uses the
// emulator when FIRESTORE_EMULATOR_HOST is set.
func NewFirestore(ctx context.Context, projectID, database, collection string) (*Firestore, error) {
	if projectID == "" || collection == "" {
		return nil, errors.New("store: project id and collection are required")
	}
	if database == "" {
		database = firestore.DefaultDatabaseID
	}
	c, err := firestore.NewClientWithDatabase(ctx, projectID, database)
	if err != nil {
		return nil, fmt.Errorf("firestore.NewClient: %w", err)
	}
	return &Firestore{client: c, coll: c.Collection(collection)}, nil
}

// WithCounter makes the store count its operations.
func (s *Firestore) WithCounter(c *Counter) *Firestore { s.counter = c; return s }

// Close releases the client.
func (s *Firestore) Close() error { return s.client.Close() }

// classify maps a Firestore error to the core's words; op names the call that failed.
func classify(op string, err error) error {
	switch status.Code(err) {
	case codes.NotFound:
		return fmt.Errorf("%s: %w", op, relay.ErrNotFound)
	case codes.FailedPrecondition:
		return fmt.Errorf("%s: %w: %w", op, relay.ErrVersionConflict, err)
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted, codes.Internal, codes.Unknown:
		return fmt.Errorf("%s: %w: %w", op, relay.ErrUnavailable, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: %w", op, relay.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Create implements relay.Store: a create-if-absent, then a read of the existing document when
// one was there.
func (s *Firestore) Create(ctx context.Context, p *relay.Payment) (*relay.Payment, bool, error) {
	s.counter.write()
	_, err := s.coll.Doc(p.ID).Create(ctx, toDoc(p))
	if err == nil {
		return p, true, nil
	}
	if status.Code(err) != codes.AlreadyExists {
		return nil, false, classify("firestore.Create", err)
	}
	stored, _, err := s.Get(ctx, p.ID)
	if err != nil {
		return nil, false, err
	}
	return stored, false, nil
}

// Get implements relay.Store.
func (s *Firestore) Get(ctx context.Context, id string) (*relay.Payment, relay.Version, error) {
	s.counter.read()
	snap, err := s.coll.Doc(id).Get(ctx)
	if err != nil {
		return nil, 0, classify("firestore.Get", err)
	}
	var d paymentDoc
	if err := snap.DataTo(&d); err != nil {
		return nil, 0, fmt.Errorf("firestore.DataTo %s: %w", id, err)
	}
	return d.toPayment(id), relay.Version(snap.UpdateTime.UnixNano()), nil
}

// Update implements relay.Store: it writes the relay state if the document's update time is
// still v.
func (s *Firestore) Update(ctx context.Context, p *relay.Payment, v relay.Version) (relay.Version, error) {
	d := toDoc(p)
	s.counter.write()
	wr, err := s.coll.Doc(p.ID).Update(ctx, []firestore.Update{
		{Path: "state", Value: d.State},
		{Path: "attempt", Value: d.Attempt},
		{Path: "next_attempt_at", Value: d.NextAttemptAt},
		{Path: "updated_at", Value: d.UpdatedAt},
		{Path: "lease", Value: d.Lease},
		{Path: "attempts", Value: d.Attempts},
	}, firestore.LastUpdateTime(time.Unix(0, int64(v))))
	if err != nil {
		return 0, classify("firestore.Update", err)
	}
	return relay.Version(wr.UpdateTime.UnixNano()), nil
}

// paymentDoc is a payment as stored: snake_case fields an operator can read in the console.
type paymentDoc struct {
	Provider      string            `firestore:"provider"`
	OrderID       string            `firestore:"order_id"`
	TransactionID string            `firestore:"transaction_id"`
	AmountMinor   int64             `firestore:"amount_minor"`
	Currency      string            `firestore:"currency"`
	Status        string            `firestore:"status"`
	PaidAt        time.Time         `firestore:"paid_at"`
	AppID         string            `firestore:"app_id"`
	Metadata      map[string]string `firestore:"metadata"`
	State         string            `firestore:"state"`
	Attempt       int               `firestore:"attempt"`
	NextAttemptAt time.Time         `firestore:"next_attempt_at"`
	ReceivedAt    time.Time         `firestore:"received_at"`
	UpdatedAt     time.Time         `firestore:"updated_at"`
	Lease         *leaseDoc         `firestore:"lease"`
	Attempts      []attemptDoc      `firestore:"attempts"`
}

type leaseDoc struct {
	Attempt   int       `firestore:"attempt"`
	Owner     string    `firestore:"owner"`
	ClaimedAt time.Time `firestore:"claimed_at"`
	Until     time.Time `firestore:"until"`
}

type attemptDoc struct {
	Number     int       `firestore:"number"`
	StartedAt  time.Time `firestore:"started_at"`
	DurationMS float64   `firestore:"duration_ms"`
	StatusCode int       `firestore:"status_code"`
	ErrorClass string    `firestore:"error_class"`
	Error      string    `firestore:"error"`
	Response   string    `firestore:"response"`
	Delivery   string    `firestore:"delivery"`
}

// utf8 makes s storable: Firestore strings must be valid UTF-8, and game servers answer bytes.
func utf8(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

func toDoc(p *relay.Payment) *paymentDoc {
	d := &paymentDoc{
		Provider: p.Provider, OrderID: p.OrderID, TransactionID: p.TransactionID, AmountMinor: p.AmountMinor,
		Currency: p.Currency, Status: p.Status, PaidAt: p.PaidAt, AppID: p.AppID, Metadata: p.Metadata,
		State: string(p.State), Attempt: p.Attempt, NextAttemptAt: p.NextAttemptAt, ReceivedAt: p.ReceivedAt,
		UpdatedAt: p.UpdatedAt, Attempts: []attemptDoc{},
	}
	if p.Lease != nil {
		d.Lease = &leaseDoc{Attempt: p.Lease.Attempt, Owner: p.Lease.Owner, ClaimedAt: p.Lease.ClaimedAt, Until: p.Lease.Until}
	}
	for _, a := range p.Attempts {
		d.Attempts = append(d.Attempts, attemptDoc{
			Number: a.Number, StartedAt: a.StartedAt, DurationMS: float64(a.Duration) / float64(time.Millisecond),
			StatusCode: a.StatusCode, ErrorClass: string(a.ErrorClass), Error: utf8(a.Error), Response: utf8(a.Response), Delivery: a.Delivery,
		})
	}
	return d
}

func (d *paymentDoc) toPayment(id string) *relay.Payment {
	p := &relay.Payment{
		ID: id, Provider: d.Provider, OrderID: d.OrderID, TransactionID: d.TransactionID, AmountMinor: d.AmountMinor,
		Currency: d.Currency, Status: d.Status, PaidAt: d.PaidAt.UTC(), AppID: d.AppID, Metadata: d.Metadata,
		State: relay.State(d.State), Attempt: d.Attempt, NextAttemptAt: d.NextAttemptAt.UTC(), ReceivedAt: d.ReceivedAt.UTC(),
		UpdatedAt: d.UpdatedAt.UTC(),
	}
	if d.Lease != nil {
		p.Lease = &relay.Lease{Attempt: d.Lease.Attempt, Owner: d.Lease.Owner, ClaimedAt: d.Lease.ClaimedAt.UTC(), Until: d.Lease.Until.UTC()}
	}
	for _, a := range d.Attempts {
		p.Attempts = append(p.Attempts, relay.AttemptRecord{
			Number: a.Number, StartedAt: a.StartedAt.UTC(), Duration: time.Duration(a.DurationMS * float64(time.Millisecond)),
			StatusCode: a.StatusCode, ErrorClass: relay.ErrorClass(a.ErrorClass), Error: a.Error, Response: a.Response, Delivery: a.Delivery,
		})
	}
	return p
}
