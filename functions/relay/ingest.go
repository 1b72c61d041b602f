package relay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Result is one verified provider notification, normalized: what Ingest takes. Type says what
// it is; a Result with no Type is a verified result deliberately not relayed, described by Note.
type Result struct {
	Type Type
	// Payment holds the payment's facts as this notification tells them. A refund notification
	// may not know every fact (WeChat Pay's does not say when the payment was made).
	Payment Payment
	Refund  *RefundFacts // for TypePaymentRefunded, and the refund reversed for TypeRefundReversed
	Event   *Event       // for TypePaymentRevoked and TypeSubscriptionExtended
	Note    *Note        // for a result not relayed
	// Via says how payrelay learnt of it (ViaNotify when empty): the provider's notification,
	// an order query, or the daily reconciliation. A notification it creates keeps it.
	Via string
	// Mismatch, when set, says that the provider's app is configured for the other
	// environment (an App Store Sandbox notification for a bundle configured production-only,
	// or the reverse): a configuration mistake, not a lost payment. The result is stored, its
	// notification not relayed with this reason, and it alerts.
	Mismatch string
}

// Validate checks the result and returns the first field at fault.
func (r *Result) Validate() error {
	switch r.Type {
	case TypePaymentSucceeded:
		if r.Payment.PaidAt.IsZero() {
			return &FieldError{"paid_at", "required"}
		}
		return r.Payment.Validate()
	case TypePaymentRefunded, TypeRefundReversed, TypePaymentRevoked, TypeSubscriptionExtended:
		switch {
		case r.Type == TypePaymentRefunded || r.Type == TypeRefundReversed:
			if r.Refund == nil {
				return &FieldError{"refund", "required"}
			}
			if r.Type == TypeRefundReversed {
				if err := checkID("refund_id", r.Refund.ID); err != nil {
					return err
				}
				if r.Refund.RefundedAt.IsZero() {
					return &FieldError{"reversed_at", "required"}
				}
			} else if err := r.Refund.Validate(); err != nil {
				return err
			}
		case r.Event == nil:
			return &FieldError{"event", "required"}
		default:
			if err := r.Event.Validate(); err != nil {
				return err
			}
			if r.Type == TypeSubscriptionExtended && (r.Payment.Subscription == nil || r.Event.ExpiresAt.IsZero()) {
				return &FieldError{"subscription", "an extension names its subscription and the period's new end"}
			}
		}
		// The app may be unknown to a refund notification (WeChat Pay's names none); the stored
		// payment supplies it. Everything else must hold.
		q := r.Payment
		if q.AppID == "" {
			q.AppID = "unknown"
		}
		if q.Game == "" {
			q.Game = "unknown"
		}
		if q.AmountMinor == 0 { // a refund event that does not carry its payment's total
			q.AmountMinor = 1
		}
		return q.Validate()
	case "":
		if r.Note == nil || r.Note.Kind == "" {
			return &FieldError{"note", "a result that is not relayed must say what it is"}
		}
		if r.Payment.OrderID == "" {
			return nil // names no order: logged, nothing to record it on
		}
		if !providerPattern.MatchString(r.Payment.Provider) {
			return &FieldError{"provider", "invalid"}
		}
		if _, err := ParseEnvironment(string(r.Payment.Environment)); err != nil {
			return err
		}
		if err := checkID("merchant", r.Payment.Merchant); err != nil {
			return err
		}
		return checkID("order_id", r.Payment.OrderID)
	}
	return &FieldError{"type", fmt.Sprintf("%q is not a notification type", r.Type)}
}

// IngestResult is what Ingest did.
type IngestResult struct {
	PaymentID      string
	NotificationID string // empty for a result not relayed
	// Duplicate: this notification was already stored by an earlier callback (or, for a
	// result not relayed, already noted).
	Duplicate bool
	// Stored is false only for a result not relayed about a payment payrelay does not hold:
	// it was acknowledged and logged, and nothing was written.
	Stored bool
	// State is the notification's state after Ingest (held behind an earlier one, pending, ...).
	State State
	// Covered: a refund whose money a later refund already counted; noted, not relayed.
	Covered bool
	// NotRelayed is why the notification is stored not relayed (StateNotRelayed), if it is;
	// Mismatch says that reason is an environment mismatch an operator must fix.
	NotRelayed string
	Mismatch   bool
}

// maxConflictTries bounds how often a read-modify-write of a payment (Ingest, an operator's
// replay or cancel) re-reads and re-applies after another writer changed the payment under it
// (a Deliver recording an attempt, a second refund): only a conflict that persists this long
// is an error (the provider retries later). With conflictWait's backoff the ten tries wait at
// most about 1.2 s in all, well inside Ingest's 4 s.
const maxConflictTries = 10

// retryConflict reports whether a write that failed with err should be re-read and applied
// again: a version conflict, tries left, and a jittered pause (5 ms doubling to 250 ms, each
// drawn from its upper half, so writers that collided do not collide again in step) that ends
// before ctx does. It counts the conflicts it lets retry.
func (s *Service) retryConflict(ctx context.Context, err error, try int) bool {
	if !errors.Is(err, ErrVersionConflict) || try >= maxConflictTries {
		return false
	}
	d := min(5*time.Millisecond<<(try-1), 250*time.Millisecond)
	d = d/2 + rand.N(d/2+1)
	if dl, ok := ctx.Deadline(); ok && s.cfg.Clock.Now().Add(d).After(dl) {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
	}
	s.conflicts.Add(1)
	return true
}

// ConflictsRetried counts the writes re-applied after a version conflict since the service
// started (the benchmark's figure).
func (s *Service) ConflictsRetried() int64 { return s.conflicts.Load() }

// Ingest stores a validated result and makes sure the task of a notification that may go out
// now exists. It returns only once both are durable, so that a 2xx to the provider means
// nothing is lost; an error means the provider should retry, and its retry completes what this
// call began.
func (s *Service) Ingest(ctx context.Context, r Result) (IngestResult, error) {
	if err := r.Validate(); err != nil {
		return IngestResult{}, err
	}
	in := r.Payment
	in.ID = PaymentID(in.Environment, in.Provider, in.Merchant, in.OrderID)
	// Firestore keeps microseconds: normalize so a repeated callback compares equal.
	in.PaidAt = in.PaidAt.UTC().Truncate(time.Microsecond)
	in.RefundedMinor, in.Notifications, in.Notes = 0, nil, nil
	res := IngestResult{PaymentID: in.ID}
	via := r.Via
	if via == "" {
		via = ViaNotify
	}
	var err error
	switch r.Type {
	case TypePaymentSucceeded:
		res, err = s.ingestPaid(ctx, in, via, r.Mismatch)
	case TypePaymentRefunded:
		res, err = s.ingestRefund(ctx, in, *r.Refund, via, r.Mismatch)
	case TypeRefundReversed:
		res, err = s.ingestReversal(ctx, in, *r.Refund, via, r.Mismatch)
	case TypePaymentRevoked, TypeSubscriptionExtended:
		res, err = s.ingestEvent(ctx, in, r.Type, *r.Event, via, r.Mismatch)
	default:
		res, err = s.ingestNote(ctx, in, *r.Note)
	}
	res.Mismatch = r.Mismatch != "" && res.State == StateNotRelayed
	return res, err
}

// notRelayed says why a notification joining payment p must not be posted, or the zero stop
// when it may: the provider's app is configured for the other environment (mismatch), the
// game has no sandbox endpoint (not relayed), or the game is no longer configured at all (a
// refund of a payment of a removed game: orphaned). Invariant 11 starts here: a notification
// no endpoint of its own environment can take is never made pending.
func (s *Service) notRelayed(p *Payment, mismatch string) stop {
	switch {
	case mismatch != "":
		return stop{StateNotRelayed, "not relayed (environment mismatch): " + mismatch}
	case !s.cfg.Routes.Known(p.Game):
		return stop{StateOrphaned, orphanReason(p)}
	case !s.cfg.Routes.Has(p.Game, p.Environment) && p.Environment == EnvSandbox:
		return stop{StateNotRelayed, NoSandboxEndpoint}
	case !s.cfg.Routes.Has(p.Game, p.Environment):
		return stop{StateNotRelayed, fmt.Sprintf("not relayed: game %q has no %s endpoint configured", p.Game, p.Environment)}
	}
	return stop{}
}

// orphanReason says why p's notifications cannot go out now that the configuration changed.
func orphanReason(p *Payment) string {
	return fmt.Sprintf("orphaned: game %q has no %s endpoint in the configuration (GAMES); replay it once it has", p.Game, p.Environment)
}

// ingestPaid creates the payment with its payment.succeeded notification: one write in the
// common case. A repeat finds it; a payment first known from a refund gains the notification.
func (s *Service) ingestPaid(ctx context.Context, in Payment, via, mismatch string) (IngestResult, error) {
	now := s.cfg.Clock.Now()
	p := in
	p.ReceivedAt, p.UpdatedAt = now, now
	n := p.appendNotification(KeyPaid, TypePaymentSucceeded, nil, via, s.notRelayed(&p, mismatch), now, s.cfg.Ladder.First(now))
	stored, v, created, err := s.create(ctx, &p)
	if err != nil {
		return IngestResult{PaymentID: p.ID}, err
	}
	if created {
		return s.finishIngest(ctx, &p, n, false)
	}
	for try := 1; ; try++ {
		if !stored.Matches(&in) {
			return IngestResult{PaymentID: p.ID}, ErrFactsDiffer
		}
		if n := stored.Paid(); n != nil {
			return s.finishIngest(ctx, stored, n, true)
		}
		// Known so far only from a refund: the payment's own notification joins the chain
		// behind what is there, with the facts the refund did not know.
		completeFacts(stored, &in)
		n := stored.appendNotification(KeyPaid, TypePaymentSucceeded, nil, via, s.notRelayed(stored, mismatch), now, s.cfg.Ladder.First(now))
		stored.UpdatedAt = now
		key := n.Key
		if _, err := s.write(ctx, stored, v); err == nil {
			return s.finishIngest(ctx, stored, stored.Notification(key), false)
		} else if !s.retryConflict(ctx, err, try) {
			return IngestResult{PaymentID: p.ID}, fmt.Errorf("add payment notification: %w", err)
		}
		if stored, v, err = s.getRetry(ctx, p.ID); err != nil {
			return IngestResult{PaymentID: p.ID}, err
		}
	}
}

// completeFacts fills in the facts a refund notification did not know.
func completeFacts(stored, in *Payment) {
	if stored.PaidAt.IsZero() {
		stored.PaidAt = in.PaidAt
	}
	if stored.TransactionID == "" {
		stored.TransactionID = in.TransactionID
	}
	if stored.AppID == "" {
		stored.AppID = in.AppID
	}
	if stored.Metadata == nil {
		stored.Metadata = in.Metadata
	}
	if stored.Game == "" {
		stored.Game = in.Game
	}
	if stored.Subscription == nil {
		stored.Subscription = in.Subscription
	}
	if stored.StoreAck == nil {
		stored.StoreAck = in.StoreAck
	}
}

// ErrOutOfOrder: a notification that must follow another payrelay has not received yet (a
// refund's reversal before the refund): refused so that the provider sends it again later,
// when it can take its place in the chain.
var ErrOutOfOrder = errors.New("relay: what this notification follows has not arrived yet")

// ingestReversal records that the refund f.ID was reversed: the money came back, so the
// payment's refunded total falls by the refund's amount, and a payment.refund_reversed joins
// the chain after the refund. Before the refund is recorded it is ErrOutOfOrder.
func (s *Service) ingestReversal(ctx context.Context, in Payment, f RefundFacts, via, mismatch string) (IngestResult, error) {
	res := IngestResult{PaymentID: in.ID}
	for try := 1; ; try++ {
		now := s.cfg.Clock.Now()
		stored, v, err := s.getRetry(ctx, in.ID)
		if errors.Is(err, ErrNotFound) {
			return res, fmt.Errorf("reversal of refund %s: %w", f.ID, ErrOutOfOrder)
		}
		if err != nil {
			return res, err
		}
		if !stored.Matches(&in) {
			return res, ErrFactsDiffer
		}
		if n := stored.Notification(ReversalKey(f.ID)); n != nil {
			return s.finishIngest(ctx, stored, n, true)
		}
		refund := stored.RefundByID(f.ID)
		if refund == nil {
			return res, fmt.Errorf("reversal of refund %s: %w", f.ID, ErrOutOfOrder)
		}
		stored.RefundedMinor = max(stored.RefundedMinor-refund.Refund.AmountMinor, 0)
		r := Refund{ID: f.ID, MerchantRefundNo: refund.Refund.MerchantRefundNo, AmountMinor: refund.Refund.AmountMinor, CumulativeMinor: stored.RefundedMinor,
			RefundedAt: f.RefundedAt.UTC().Truncate(time.Microsecond)}
		n := stored.appendEvent(Notification{Key: ReversalKey(f.ID), Type: TypeRefundReversed, Refund: &r, Via: via}, s.notRelayed(stored, mismatch), now, now)
		stored.UpdatedAt = now
		key := n.Key
		if _, err = s.write(ctx, stored, v); err == nil {
			return s.finishIngest(ctx, stored, stored.Notification(key), false)
		}
		if !s.retryConflict(ctx, err, try) {
			return res, fmt.Errorf("record refund reversal: %w", err)
		}
	}
}

// ingestEvent records a notification that moves no money (access revoked, a period extended)
// on its payment, after everything before it; a payment payrelay does not hold yet is stored
// with the facts the event carries, as a refund's is. Access is revoked once per payment; an
// extension once per event id.
func (s *Service) ingestEvent(ctx context.Context, in Payment, typ Type, e Event, via, mismatch string) (IngestResult, error) {
	key := KeyRevoked
	if typ == TypeSubscriptionExtended {
		key = ExtensionKey(e.ID)
	}
	e.At = e.At.UTC().Truncate(time.Microsecond)
	e.ExpiresAt = e.ExpiresAt.UTC().Truncate(time.Microsecond)
	res := IngestResult{PaymentID: in.ID}
	for try := 1; ; try++ {
		now := s.cfg.Clock.Now()
		stored, v, err := s.getRetry(ctx, in.ID)
		if errors.Is(err, ErrNotFound) {
			if in.AppID == "" || in.Game == "" || in.AmountMinor <= 0 {
				return res, &FieldError{"payment", "the event does not carry its payment's facts and payrelay holds no payment for this order"}
			}
			p := in
			p.ReceivedAt, p.UpdatedAt = now, now
			n := p.appendEvent(Notification{Key: key, Type: typ, Event: &e, Via: via}, s.notRelayed(&p, mismatch), now, now)
			_, _, created, err := s.create(ctx, &p)
			switch {
			case err != nil:
				return res, err
			case created:
				return s.finishIngest(ctx, &p, n, false)
			}
			continue // created meanwhile: apply to what was stored
		}
		if err != nil {
			return res, err
		}
		if !stored.Matches(&in) {
			return res, ErrFactsDiffer
		}
		if n := stored.Notification(key); n != nil {
			return s.finishIngest(ctx, stored, n, true)
		}
		if typ == TypeSubscriptionExtended && stored.Subscription != nil {
			stored.Subscription.ExpiresAt = e.ExpiresAt
		}
		n := stored.appendEvent(Notification{Key: key, Type: typ, Event: &e, Via: via}, s.notRelayed(stored, mismatch), now, now)
		stored.UpdatedAt = now
		if _, err = s.write(ctx, stored, v); err == nil {
			return s.finishIngest(ctx, stored, stored.Notification(n.Key), false)
		}
		if !s.retryConflict(ctx, err, try) {
			return res, fmt.Errorf("record %s: %w", typ, err)
		}
	}
}

// ingestRefund records a refund against its payment (creating the payment from the refund's
// facts when payrelay never received it) and queues its notification behind the payment's.
func (s *Service) ingestRefund(ctx context.Context, in Payment, f RefundFacts, via, mismatch string) (IngestResult, error) {
	res := IngestResult{PaymentID: in.ID}
	for try := 1; ; try++ {
		now := s.cfg.Clock.Now()
		stored, v, err := s.getRetry(ctx, in.ID)
		if errors.Is(err, ErrNotFound) {
			created, res, err := s.createFromRefund(ctx, in, f, via, mismatch, now)
			if created || err != nil {
				return res, err
			}
			continue // another callback created it meanwhile: apply to what it stored
		}
		if err != nil {
			return res, err
		}
		if !stored.Matches(&in) {
			return res, ErrFactsDiffer
		}
		decision, refund, err := DecideRefund(stored, f)
		if err != nil {
			return res, err
		}
		switch decision {
		case RefundRepeat:
			return s.finishIngest(ctx, stored, stored.RefundByID(f.ID), true)
		case RefundCovered:
			res.Covered, res.Duplicate, res.Stored = true, true, true
			note := Note{Kind: "refund_covered", RefundID: f.ID, ReceivedAt: now,
				Reason: fmt.Sprintf("cumulative refunded total %d is already counted (recorded total %d)", refund.CumulativeMinor, stored.RefundedMinor)}
			if !stored.addNote(note) {
				return res, nil
			}
			res.Duplicate = false
			stored.UpdatedAt = now
			if _, err = s.write(ctx, stored, v); err == nil {
				return res, nil
			}
		case RefundNew:
			stored.RefundedMinor = refund.CumulativeMinor
			n := stored.appendNotification(RefundKey(refund.ID), TypePaymentRefunded, &refund, via, s.notRelayed(stored, mismatch), now, now)
			stored.UpdatedAt = now
			key := n.Key
			if _, err = s.write(ctx, stored, v); err == nil {
				return s.finishIngest(ctx, stored, stored.Notification(key), false)
			}
		}
		if !s.retryConflict(ctx, err, try) {
			return res, fmt.Errorf("record refund: %w", err)
		}
	}
}

// createFromRefund stores a payment payrelay never received, with the facts its refund
// carries, and the refund's notification, which goes out on its own.
func (s *Service) createFromRefund(ctx context.Context, in Payment, f RefundFacts, via, mismatch string, now time.Time) (bool, IngestResult, error) {
	res := IngestResult{PaymentID: in.ID}
	if in.AppID == "" || in.Game == "" {
		return false, res, &FieldError{"app_id", "the refund names no app (so no game) and payrelay holds no payment for this order to take it from"}
	}
	if in.AmountMinor <= 0 {
		return false, res, &FieldError{"amount", "the refund does not carry its payment's amount and payrelay holds no payment for this order"}
	}
	p := in
	p.ReceivedAt, p.UpdatedAt = now, now
	decision, refund, err := DecideRefund(&p, f)
	if err != nil {
		return false, res, err
	}
	if decision != RefundNew { // a cumulative total is always new against nothing recorded
		return false, res, fmt.Errorf("refund of an unknown payment decided %d", decision)
	}
	p.RefundedMinor = refund.CumulativeMinor
	n := p.appendNotification(RefundKey(refund.ID), TypePaymentRefunded, &refund, via, s.notRelayed(&p, mismatch), now, now)
	_, _, created, err := s.create(ctx, &p)
	if err != nil || !created {
		return false, res, err
	}
	res, err = s.finishIngest(ctx, &p, n, false)
	return true, res, err
}

// ingestNote records a result that is not relayed on its payment, if payrelay holds it.
func (s *Service) ingestNote(ctx context.Context, in Payment, note Note) (IngestResult, error) {
	res := IngestResult{PaymentID: in.ID}
	if in.OrderID == "" {
		return IngestResult{}, nil
	}
	for try := 1; ; try++ {
		stored, v, err := s.getRetry(ctx, in.ID)
		if errors.Is(err, ErrNotFound) {
			return res, nil // acknowledged and logged; nothing to record it on
		}
		if err != nil {
			return res, err
		}
		res.Stored = true
		note.ReceivedAt = s.cfg.Clock.Now()
		if !stored.addNote(note) {
			res.Duplicate = true
			return res, nil
		}
		stored.UpdatedAt = note.ReceivedAt
		if _, err = s.write(ctx, stored, v); err == nil {
			return res, nil
		}
		if !s.retryConflict(ctx, err, try) {
			return res, fmt.Errorf("record note: %w", err)
		}
	}
}

// finishIngest makes sure the task of a notification that may go out now exists: the callback
// that stored it may have failed before its task did. Once Deliver has touched it, the chain
// is under way and needs nothing.
func (s *Service) finishIngest(ctx context.Context, p *Payment, n *Notification, dup bool) (IngestResult, error) {
	res := IngestResult{PaymentID: p.ID, NotificationID: NotificationID(p.ID, n.Key), Duplicate: dup, Stored: true, State: n.State}
	if n.State == StateNotRelayed || n.State == StateOrphaned {
		res.NotRelayed = n.Reason
	}
	if n.untouched() {
		if err := s.enqueue(ctx, p.task(n, n.Attempt, n.NextAttemptAt)); err != nil {
			return res, fmt.Errorf("enqueue attempt 1: %w", err)
		}
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.Received(p, n, dup)
	}
	return res, nil
}

// create and getRetry are store calls with the bounded retry of an unavailable store.
func (s *Service) create(ctx context.Context, p *Payment) (stored *Payment, v Version, created bool, err error) {
	err = s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		stored, v, created, err = s.cfg.Store.Create(ctx, p)
		return err
	})
	if err != nil {
		return nil, 0, false, fmt.Errorf("store payment: %w", err)
	}
	return stored, v, created, nil
}

func (s *Service) getRetry(ctx context.Context, id string) (p *Payment, v Version, err error) {
	err = s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		p, v, err = s.cfg.Store.Get(ctx, id)
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, 0, fmt.Errorf("load payment: %w", err)
	}
	return p, v, err
}

// write is a conditional update with the bounded retry of an unavailable store. A write that
// was applied but reported unavailable comes back as ErrVersionConflict on its retry; the
// caller re-reads and finds its change there.
func (s *Service) write(ctx context.Context, p *Payment, v Version) (nv Version, err error) {
	err = s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		nv, err = s.cfg.Store.Update(ctx, p, v)
		return err
	})
	return nv, err
}
