// Package store keeps payments in Firestore, one document per payment, keyed by the payment's
// hashed id, holding its facts, refunds, notifications (each with its state, lease and attempt
// history) and notes. It classifies Firestore's errors into the relay core's, once, here.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"cloud.google.com/go/firestore"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/payrelay/payrelay/functions/relay"
)

var (
	_ relay.Store  = (*Firestore)(nil)
	_ relay.Finder = (*Firestore)(nil)
)

// Firestore is a relay.Store over a Firestore collection.
//
// A payment's notifications live in its document, not in documents of their own: causal order
// (a refund waits behind its payment) and refund arithmetic (the refunded total never exceeds
// what was paid) span them, and one conditional write on one document keeps both, where
// separate documents would need a transaction and a second read on every delivery. The price
// is that writes to one payment serialize; they are few (one notification is in flight at a
// time) and the core re-applies a write that lost the race.
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

// reconnect bounds how long the client's gRPC connection waits before reconnecting after a
// failure: gRPC's default backoff grows to 120 s, longer than a delivery's lease, and the
// record of an attempt is retried only while its lease holds; past it, an outage of seconds
// would cost a second POST. (The emulator's connection is dialled by the client itself and
// keeps the default.)
var reconnect = option.WithGRPCDialOption(grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
	MinConnectTimeout: 5 * time.Second,
}))

// NewFirestore opens the database and returns a store over collection. The client uses the
// emulator when FIRESTORE_EMULATOR_HOST is set.
func NewFirestore(ctx context.Context, projectID, database, collection string) (*Firestore, error) {
	if projectID == "" || collection == "" {
		return nil, errors.New("store: project id and collection are required")
	}
	if database == "" {
		database = firestore.DefaultDatabaseID
	}
	c, err := firestore.NewClientWithDatabase(ctx, projectID, database, reconnect)
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
func (s *Firestore) Create(ctx context.Context, p *relay.Payment) (*relay.Payment, relay.Version, bool, error) {
	s.counter.write()
	wr, err := s.coll.Doc(p.ID).Create(ctx, toDoc(p))
	if err == nil {
		return p, relay.Version(wr.UpdateTime.UnixNano()), true, nil
	}
	if status.Code(err) != codes.AlreadyExists {
		return nil, 0, false, classify("firestore.Create", err)
	}
	stored, v, err := s.Get(ctx, p.ID)
	if err != nil {
		return nil, 0, false, err
	}
	return stored, v, false, nil
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

// Update implements relay.Store: it writes the mutable state if the document's update time is
// still v.
func (s *Firestore) Update(ctx context.Context, p *relay.Payment, v relay.Version) (relay.Version, error) {
	d := toDoc(p)
	s.counter.write()
	wr, err := s.coll.Doc(p.ID).Update(ctx, []firestore.Update{
		{Path: "environment", Value: d.Environment},
		{Path: "transaction_id", Value: d.TransactionID},
		{Path: "paid_at", Value: d.PaidAt},
		{Path: "app_id", Value: d.AppID},
		{Path: "metadata", Value: d.Metadata},
		{Path: "game", Value: d.Game},
		{Path: "subscription", Value: d.Subscription},
		{Path: "store_ack", Value: d.StoreAck},
		{Path: "refunded_minor", Value: d.RefundedMinor},
		{Path: "notifications", Value: d.Notifications},
		{Path: "notes", Value: d.Notes},
		{Path: "updated_at", Value: d.UpdatedAt},
		{Path: "due_at", Value: d.DueAt},
		{Path: "tags", Value: d.Tags},
		{Path: "bill_days", Value: d.BillDays},
	}, firestore.LastUpdateTime(time.Unix(0, int64(v))))
	if err != nil {
		return 0, classify("firestore.Update", err)
	}
	return relay.Version(wr.UpdateTime.UnixNano()), nil
}

// paymentDoc is a payment as stored: snake_case fields an operator can read in the console.
type paymentDoc struct {
	Provider string `firestore:"provider"`
	// Environment is "production" or "sandbox". A document stored before payrelay knew
	// environments has none and is read as production: payrelay posted every payment to the
	// production endpoint then, and its id is the production id. Update writes the field, so
	// such a document gains it the next time it changes.
	Environment   string            `firestore:"environment"`
	Merchant      string            `firestore:"merchant"`
	OrderID       string            `firestore:"order_id"`
	TransactionID string            `firestore:"transaction_id"`
	AmountMinor   int64             `firestore:"amount_minor"`
	Currency      string            `firestore:"currency"`
	PaidAt        *time.Time        `firestore:"paid_at"` // null when only a refund told of the payment
	AppID         string            `firestore:"app_id"`
	Metadata      map[string]string `firestore:"metadata"`
	Game          string            `firestore:"game"`
	// Subscription: absent for a one-time payment.
	Subscription *subscriptionDoc `firestore:"subscription,omitempty"`
	// StoreAck: absent when payrelay acknowledges nothing to the store for it.
	StoreAck      *storeAckDoc      `firestore:"store_ack,omitempty"`
	RefundedMinor int64             `firestore:"refunded_minor"`
	Notifications []notificationDoc `firestore:"notifications"`
	Notes         []noteDoc         `firestore:"notes"`
	ReceivedAt    time.Time         `firestore:"received_at"`
	UpdatedAt     time.Time         `firestore:"updated_at"`
	// Query terms, derived on every write: when the payment next needs Deliver (the sweeper's
	// query) and its notifications' states and types (operators' lists).
	DueAt *time.Time `firestore:"due_at"`
	Tags  []string   `firestore:"tags"`
	// BillDays are the bill days its money moved on (relay.Payment.BillDays), for the daily
	// reconciliation's query (array-contains on Firestore's automatic single-field index).
	BillDays []string `firestore:"bill_days"`
}

type subscriptionDoc struct {
	ID        string     `firestore:"id"`
	ProductID string     `firestore:"product_id"`
	Reason    string     `firestore:"reason"`
	ExpiresAt *time.Time `firestore:"expires_at"`
	Offer     string     `firestore:"offer"`
}

type storeAckDoc struct {
	Product      string     `firestore:"product"`
	Token        string     `firestore:"token"`
	Subscription bool       `firestore:"subscription"`
	Due          time.Time  `firestore:"due"`
	State        string     `firestore:"state"`
	At           *time.Time `firestore:"at"`
	Reason       string     `firestore:"reason"`
	Tries        int        `firestore:"tries"`
	Error        string     `firestore:"error"`
	LastTry      *time.Time `firestore:"last_try"`
}

type eventDoc struct {
	ID        string     `firestore:"id"`
	Reason    string     `firestore:"reason"`
	At        time.Time  `firestore:"at"`
	ExpiresAt *time.Time `firestore:"expires_at"`
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func fromOpt(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

type notificationDoc struct {
	Key           string       `firestore:"key"`
	Type          string       `firestore:"type"`
	Refund        *refundDoc   `firestore:"refund"`
	Event         *eventDoc    `firestore:"event,omitempty"`
	State         string       `firestore:"state"`
	Attempt       int          `firestore:"attempt"`
	NextAttemptAt time.Time    `firestore:"next_attempt_at"`
	CreatedAt     time.Time    `firestore:"created_at"`
	Lease         *leaseDoc    `firestore:"lease"`
	Attempts      []attemptDoc `firestore:"attempts"`
	Reason        string       `firestore:"reason"`
	Generation    int          `firestore:"generation"`
	Actions       []actionDoc  `firestore:"actions"`
	Via           string       `firestore:"via"`
}

type actionDoc struct {
	Kind       string    `firestore:"kind"`
	By         string    `firestore:"by"`
	Reason     string    `firestore:"reason"`
	Job        string    `firestore:"job"`
	At         time.Time `firestore:"at"`
	Generation int       `firestore:"generation"`
	Forced     bool      `firestore:"forced"`
}

type refundDoc struct {
	ID               string    `firestore:"id"`
	MerchantRefundNo string    `firestore:"merchant_refund_no"`
	AmountMinor      int64     `firestore:"amount_minor"`
	CumulativeMinor  int64     `firestore:"cumulative_minor"`
	RefundedAt       time.Time `firestore:"refunded_at"`
}

type noteDoc struct {
	Kind       string    `firestore:"kind"`
	Reason     string    `firestore:"reason"`
	Alert      bool      `firestore:"alert"`
	RefundID   string    `firestore:"refund_id"`
	ReceivedAt time.Time `firestore:"received_at"`
}

type leaseDoc struct {
	Attempt   int       `firestore:"attempt"`
	Owner     string    `firestore:"owner"`
	ClaimedAt time.Time `firestore:"claimed_at"`
	Until     time.Time `firestore:"until"`
}

type attemptDoc struct {
	Number     int        `firestore:"number"`
	StartedAt  time.Time  `firestore:"started_at"`
	DurationMS float64    `firestore:"duration_ms"`
	StatusCode int        `firestore:"status_code"`
	ErrorClass string     `firestore:"error_class"`
	Error      string     `firestore:"error"`
	Response   string     `firestore:"response"`
	Delivery   string     `firestore:"delivery"`
	RetryAfter *time.Time `firestore:"retry_after"`
	Generation int        `firestore:"generation"`
}

// storedEnvironment reads a document's environment: production for one stored before
// environments existed (see paymentDoc.Environment).
func storedEnvironment(s string) relay.Environment {
	if s == "" {
		return relay.EnvProduction
	}
	return relay.Environment(s)
}

// utf8 makes s storable: Firestore strings must be valid UTF-8, and game servers answer bytes.
func utf8(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

func toDoc(p *relay.Payment) *paymentDoc {
	d := &paymentDoc{
		Provider: p.Provider, Environment: string(p.Environment), Merchant: p.Merchant, OrderID: p.OrderID, TransactionID: p.TransactionID,
		AmountMinor: p.AmountMinor, Currency: p.Currency, AppID: p.AppID, Metadata: p.Metadata, Game: p.Game,
		RefundedMinor: p.RefundedMinor, ReceivedAt: p.ReceivedAt, UpdatedAt: p.UpdatedAt,
		Notifications: []notificationDoc{}, Notes: []noteDoc{}, Tags: p.Tags(), BillDays: p.BillDays(),
	}
	if due := p.DueAt(); !due.IsZero() {
		d.DueAt = &due
	}
	if a := p.StoreAck; a != nil {
		d.StoreAck = &storeAckDoc{Product: utf8(a.Product), Token: utf8(a.Token), Subscription: a.Subscription, Due: a.Due, State: string(a.State),
			At: optTime(a.At), Reason: utf8(a.Reason), Tries: a.Tries, Error: utf8(a.Error), LastTry: optTime(a.LastTry)}
	}
	if sub := p.Subscription; sub != nil {
		d.Subscription = &subscriptionDoc{ID: sub.ID, ProductID: utf8(sub.ProductID), Reason: utf8(sub.Reason), ExpiresAt: optTime(sub.ExpiresAt), Offer: utf8(sub.Offer)}
	}
	if !p.PaidAt.IsZero() {
		t := p.PaidAt
		d.PaidAt = &t
	}
	for _, n := range p.Notifications {
		nd := notificationDoc{
			Key: n.Key, Type: string(n.Type), State: string(n.State), Attempt: n.Attempt,
			NextAttemptAt: n.NextAttemptAt, CreatedAt: n.CreatedAt, Attempts: []attemptDoc{}, Reason: utf8(n.Reason),
			Generation: n.Generation, Actions: []actionDoc{}, Via: n.Via,
		}
		for _, a := range n.Actions {
			nd.Actions = append(nd.Actions, actionDoc{Kind: a.Kind, By: utf8(a.By), Reason: utf8(a.Reason), Job: a.Job, At: a.At, Generation: a.Generation, Forced: a.Forced})
		}
		if r := n.Refund; r != nil {
			nd.Refund = &refundDoc{ID: r.ID, MerchantRefundNo: r.MerchantRefundNo, AmountMinor: r.AmountMinor,
				CumulativeMinor: r.CumulativeMinor, RefundedAt: r.RefundedAt}
		}
		if l := n.Lease; l != nil {
			nd.Lease = &leaseDoc{Attempt: l.Attempt, Owner: l.Owner, ClaimedAt: l.ClaimedAt, Until: l.Until}
		}
		if e := n.Event; e != nil {
			nd.Event = &eventDoc{ID: e.ID, Reason: utf8(e.Reason), At: e.At, ExpiresAt: optTime(e.ExpiresAt)}
		}
		for _, a := range n.Attempts {
			ad := attemptDoc{
				Number: a.Number, StartedAt: a.StartedAt, DurationMS: float64(a.Duration) / float64(time.Millisecond),
				StatusCode: a.StatusCode, ErrorClass: string(a.ErrorClass), Error: utf8(a.Error), Response: utf8(a.Response), Delivery: a.Delivery,
				Generation: a.Generation,
			}
			if !a.RetryAfter.IsZero() {
				t := a.RetryAfter
				ad.RetryAfter = &t
			}
			nd.Attempts = append(nd.Attempts, ad)
		}
		d.Notifications = append(d.Notifications, nd)
	}
	for _, n := range p.Notes {
		d.Notes = append(d.Notes, noteDoc{Kind: n.Kind, Reason: utf8(n.Reason), Alert: n.Alert, RefundID: n.RefundID, ReceivedAt: n.ReceivedAt})
	}
	return d
}

func (d *paymentDoc) toPayment(id string) *relay.Payment {
	p := &relay.Payment{
		ID: id, Provider: d.Provider, Environment: storedEnvironment(d.Environment), Merchant: d.Merchant, OrderID: d.OrderID, TransactionID: d.TransactionID,
		AmountMinor: d.AmountMinor, Currency: d.Currency, AppID: d.AppID, Metadata: d.Metadata, Game: d.Game,
		RefundedMinor: d.RefundedMinor, ReceivedAt: d.ReceivedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC(),
	}
	if d.PaidAt != nil {
		p.PaidAt = d.PaidAt.UTC()
	}
	if a := d.StoreAck; a != nil {
		p.StoreAck = &relay.StoreAck{Product: a.Product, Token: a.Token, Subscription: a.Subscription, Due: a.Due.UTC(), State: relay.AckState(a.State),
			At: fromOpt(a.At), Reason: a.Reason, Tries: a.Tries, Error: a.Error, LastTry: fromOpt(a.LastTry)}
	}
	if sd := d.Subscription; sd != nil {
		p.Subscription = &relay.Subscription{ID: sd.ID, ProductID: sd.ProductID, Reason: sd.Reason, ExpiresAt: fromOpt(sd.ExpiresAt), Offer: sd.Offer}
	}
	for _, nd := range d.Notifications {
		n := relay.Notification{
			Key: nd.Key, Type: relay.Type(nd.Type), State: relay.State(nd.State), Attempt: nd.Attempt,
			NextAttemptAt: nd.NextAttemptAt.UTC(), CreatedAt: nd.CreatedAt.UTC(), Reason: nd.Reason, Generation: nd.Generation,
			Via: nd.Via,
		}
		for _, a := range nd.Actions {
			n.Actions = append(n.Actions, relay.Action{Kind: a.Kind, By: a.By, Reason: a.Reason, Job: a.Job, At: a.At.UTC(), Generation: a.Generation, Forced: a.Forced})
		}
		if r := nd.Refund; r != nil {
			n.Refund = &relay.Refund{ID: r.ID, MerchantRefundNo: r.MerchantRefundNo, AmountMinor: r.AmountMinor,
				CumulativeMinor: r.CumulativeMinor, RefundedAt: r.RefundedAt.UTC()}
		}
		if l := nd.Lease; l != nil {
			n.Lease = &relay.Lease{Attempt: l.Attempt, Owner: l.Owner, ClaimedAt: l.ClaimedAt.UTC(), Until: l.Until.UTC()}
		}
		if e := nd.Event; e != nil {
			n.Event = &relay.Event{ID: e.ID, Reason: e.Reason, At: e.At.UTC(), ExpiresAt: fromOpt(e.ExpiresAt)}
		}
		for _, a := range nd.Attempts {
			rec := relay.AttemptRecord{
				Number: a.Number, StartedAt: a.StartedAt.UTC(), Duration: time.Duration(a.DurationMS * float64(time.Millisecond)),
				StatusCode: a.StatusCode, ErrorClass: relay.ErrorClass(a.ErrorClass), Error: a.Error, Response: a.Response, Delivery: a.Delivery,
				Generation: a.Generation,
			}
			if a.RetryAfter != nil {
				rec.RetryAfter = a.RetryAfter.UTC()
			}
			n.Attempts = append(n.Attempts, rec)
		}
		p.Notifications = append(p.Notifications, n)
	}
	for _, nd := range d.Notes {
		p.Notes = append(p.Notes, relay.Note{Kind: nd.Kind, Reason: nd.Reason, Alert: nd.Alert, RefundID: nd.RefundID, ReceivedAt: nd.ReceivedAt.UTC()})
	}
	return p
}
