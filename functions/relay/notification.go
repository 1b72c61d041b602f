package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"
)

// Type is what a notification tells the game server. The values are the Standard Webhooks
// event types the game server receives.
type Type string

const (
	// TypePaymentSucceeded: the player paid; the game server grants.
	TypePaymentSucceeded Type = "payment.succeeded"
	// TypePaymentRefunded: money went back to the player; the game server revokes.
	TypePaymentRefunded Type = "payment.refunded"
	// TypeRefundReversed: the provider reversed a refund it had granted (the App Store's
	// REFUND_REVERSED): the money came back to the studio; the game server may grant again.
	// It follows the refund it reverses.
	TypeRefundReversed Type = "payment.refund_reversed"
	// TypePaymentRevoked: the player lost access to what the payment bought, with no money
	// moving (App Store Family Sharing revoked: REVOKE, or a refund's FAMILY_REVOKE for a
	// family member); the game server revokes the entitlement, and claims no money back.
	TypePaymentRevoked Type = "payment.revoked"
	// TypeSubscriptionExtended: a subscription period's end moved later with no money moving
	// (the App Store's RENEWAL_EXTENDED): the game server extends the entitlement to the
	// subscription's new expires_at.
	TypeSubscriptionExtended Type = "subscription.extended"
)

// Types lists every notification type, in the order functions/relay/README.md and functions/provider/README.md list them.
var Types = []Type{TypePaymentSucceeded, TypePaymentRefunded, TypeRefundReversed, TypePaymentRevoked, TypeSubscriptionExtended}

// Event is what a notification that moves no money tells (TypePaymentRevoked,
// TypeSubscriptionExtended): the provider's id for it, its reason in the provider's words, when
// it happened, and for an extension the period's new end.
type Event struct {
	ID        string
	Reason    string
	At        time.Time
	ExpiresAt time.Time
}

// Validate checks an event's fields.
func (e *Event) Validate() error {
	if err := checkID("event_id", e.ID); err != nil {
		return err
	}
	if e.At.IsZero() {
		return &FieldError{"event_at", "required"}
	}
	if len(e.Reason) > 64 {
		return &FieldError{"event_reason", "longer than 64 characters"}
	}
	return nil
}

// State is where a notification is in its lifecycle. Each constant says who moves a
// notification into and out of it.
type State string

const (
	// StateHeld: a notification waiting behind an earlier one of the same payment that is not
	// yet delivered (invariant 8). Ingest creates it held; Deliver releases it to StatePending
	// when the notification before it is delivered.
	StateHeld State = "held"
	// StatePending: attempt Attempt is scheduled at NextAttemptAt. Ingest creates a notification
	// in it (or Deliver releases one into it); Deliver returns it here after a failed attempt
	// with steps left, and moves it out by claiming the attempt.
	StatePending State = "pending"
	// StateDelivering: Deliver holds a lease on attempt Attempt and is posting to the game
	// server. Deliver moves it out when it records the result; another Deliver takes it over
	// once the lease has expired.
	StateDelivering State = "delivering"
	// StateDelivered: the game server acknowledged (2xx). Terminal.
	StateDelivered State = "delivered"
	// StateFailed: the ladder is exhausted without an acknowledgement, or the game server
	// answered 410. Terminal, but kept for an operator's replay, which moves it back to
	// StatePending; the notifications behind it stay held until then.
	StateFailed State = "failed"
	// StateCancelled: an operator gave up on a pending or held notification. Terminal like
	// failed, and like failed replayable; the notifications behind it stay held.
	StateCancelled State = "cancelled"
	// StateNotRelayed: Ingest stored it and will never post it as things stand, for the reason
	// in Reason: a sandbox notification of a game with no sandbox endpoint, or a notification
	// from an app configured for the other environment (a configuration mistake, alerted).
	// Nothing moves it but an operator's replay, accepted once the game has an endpoint for
	// the payment's environment; the notifications behind it are not relayed either.
	StateNotRelayed State = "not_relayed"
	// StateOrphaned: it was under way, but its game (or the game's endpoint for the payment's
	// environment, or its queue) is no longer there: the sweeper moves an overdue notification
	// here when it finds it so, Deliver when a task of it arrives. Shown and alerted; nothing
	// moves it but an operator's replay, accepted once the game exists again. It blocks nothing
	// else: the sweeper's query no longer sees it.
	StateOrphaned State = "orphaned"
)

// Terminal reports whether no further attempt will be made.
func (s State) Terminal() bool {
	return s == StateDelivered || s == StateFailed || s == StateCancelled || s == StateNotRelayed || s == StateOrphaned
}

// States lists every state, in the order of the lifecycle.
var States = []State{StateHeld, StatePending, StateDelivering, StateDelivered, StateFailed, StateCancelled, StateNotRelayed, StateOrphaned}

// Notification is one message to the game server about a payment, with its own ladder, lease
// and history.
type Notification struct {
	// Key names the notification within its payment: "paid", or "refund-" and a hash of the
	// refund id. The notification's id (webhook-id, task names) is the payment id, "-", Key.
	Key    string
	Type   Type
	Refund *Refund // for TypePaymentRefunded, and the refund reversed for TypeRefundReversed
	Event  *Event  // for TypePaymentRevoked and TypeSubscriptionExtended

	State         State
	Attempt       int // the current attempt, 1-based
	NextAttemptAt time.Time
	CreatedAt     time.Time
	Lease         *Lease
	Attempts      []AttemptRecord
	// Reason says why a notification ended failed or cancelled.
	Reason string
	// Generation counts operator replays: each starts a fresh ladder whose tasks carry it in
	// their names, so they never collide with the earlier ladder's, and a task of an earlier
	// generation is ignored.
	Generation int
	// Actions are what operators did to the notification (replays, cancels), oldest first.
	Actions []Action
	// Via says how payrelay learnt of what it tells: ViaNotify, ViaQuery, ViaReconcile or
	// ViaRecovery.
	Via string
	// Heal is the sweeper's record of failing to enqueue this notification again, nil when it
	// has not failed (or the attempt was claimed since): the sweeper skips it until Heal.After.
	Heal *HealFailure
}

// HealFailure is what failed when the sweeper last tried to enqueue a notification again,
// when, how often in a row, and when the notification is due again (After): the sweeper takes
// it SweepMargin after that, as it takes any due notification.
type HealFailure struct {
	Failures int
	Error    string
	At       time.Time
	After    time.Time
}

// HealStuckAfter is how many failures in a row make a notification stuck: the sweeper then
// raises an alert naming it at every failure.
const HealStuckAfter = 3

// healBackoff is how much later a notification the sweeper failed to enqueue is due again,
// after its failures-th failure in a row: 1 minute, doubling, at most 30 minutes (plus the
// sweep margin before the sweeper takes it).
func healBackoff(failures int) time.Duration {
	return min(time.Minute<<min(failures-1, 10), 30*time.Minute)
}

// How payrelay learnt of a payment or refund (Notification.Via).
const (
	// ViaNotify: the provider's own notification (the normal path).
	ViaNotify = "notify"
	// ViaQuery: an order query (补单) by an operator or a game server found it paid.
	ViaQuery = "query"
	// ViaReconcile: the daily reconciliation found it in the provider's bill, missing here.
	ViaReconcile = "reconcile"
)

// Action is one operator's change to a notification, kept in its history.
type Action struct {
	Kind       string    `json:"kind"` // ActionReplay or ActionCancel
	By         string    `json:"by"`   // the operator's identity
	Reason     string    `json:"reason"`
	Job        string    `json:"job,omitempty"` // the bulk replay that made it, if one did
	At         time.Time `json:"at"`
	Generation int       `json:"generation"` // the generation it started (replay) or ended (cancel)
	Forced     bool      `json:"forced,omitempty"`
}

// Kinds of Action.
const (
	ActionReplay = "replay"
	ActionCancel = "cancel"
)

// Refund is one refund recorded against a payment.
type Refund struct {
	// ID is the provider's id of this refund (Alipay out_biz_no, WeChat Pay refund_id, the
	// generic format's refund_id): repeated notifications of one refund carry the same.
	ID string `json:"id"`
	// MerchantRefundNo is the merchant's own refund number, where the provider sends one.
	MerchantRefundNo string `json:"merchant_refund_no,omitempty"`
	// AmountMinor is this refund's amount; CumulativeMinor the payment's refunded total once it
	// is counted.
	AmountMinor     int64     `json:"amount_minor"`
	CumulativeMinor int64     `json:"cumulative_minor"`
	RefundedAt      time.Time `json:"refunded_at"`
}

// Lease marks an attempt as claimed by one delivery until Until.
type Lease struct {
	Attempt   int
	Owner     string
	ClaimedAt time.Time
	Until     time.Time
}

// Note is a verified result about a payment that is deliberately not relayed (invariant 7): an
// unpaid or closed trade, a refund that did not complete, a refund already covered by a later
// one. It is kept on the payment, when payrelay holds it, for the operator.
type Note struct {
	Kind       string    `json:"kind"` // the provider's event or status, e.g. "REFUND.ABNORMAL"
	Reason     string    `json:"reason"`
	Alert      bool      `json:"alert,omitempty"` // an operator must act (a refund that did not complete)
	RefundID   string    `json:"refund_id,omitempty"`
	ReceivedAt time.Time `json:"received_at"`
}

// MaxNotes bounds the notes kept on one payment; the oldest go first.
const MaxNotes = 20

// MaxRefunds bounds the refunds one payment may carry, and so the document's size: both
// Alipay and WeChat Pay allow at most 50 partial refunds of one trade. With 8 attempt records
// of about 1.2 KiB each per notification, 61 notifications stay well under Firestore's 1 MiB.
const MaxRefunds = 60

// KeyPaid is the key of a payment's payment.succeeded notification.
const KeyPaid = "paid"

// RefundKey is the key of the notification of refund refundID. It hashes the id so that any
// provider's refund id fits a Cloud Tasks task name (letters, digits, - and _).
func RefundKey(refundID string) string {
	sum := sha256.Sum256([]byte(refundID))
	return "refund-" + hex.EncodeToString(sum[:8])
}

// KeyRevoked is the key of a payment's payment.revoked notification: access is revoked once.
const KeyRevoked = "revoked"

// ReversalKey is the key of the notification reversing refund refundID.
func ReversalKey(refundID string) string {
	sum := sha256.Sum256([]byte(refundID))
	return "reversed-" + hex.EncodeToString(sum[:8])
}

// ExtensionKey is the key of the subscription.extended notification of event eventID.
func ExtensionKey(eventID string) string {
	sum := sha256.Sum256([]byte(eventID))
	return "extended-" + hex.EncodeToString(sum[:8])
}

// NotificationID is the id of a payment's notification: webhook-id for the game server and
// the stem of its task names.
func NotificationID(paymentID, key string) string { return paymentID + "-" + key }

// Notification returns the payment's notification with key, or nil.
func (p *Payment) Notification(key string) *Notification {
	for i := range p.Notifications {
		if p.Notifications[i].Key == key {
			return &p.Notifications[i]
		}
	}
	return nil
}

// Paid returns the payment.succeeded notification, or nil when payrelay knows the payment only
// from a refund.
func (p *Payment) Paid() *Notification { return p.Notification(KeyPaid) }

// RefundByID returns the notification of refund id, or nil.
func (p *Payment) RefundByID(id string) *Notification {
	return p.Notification(RefundKey(id))
}

// refunds counts the refund notifications.
func (p *Payment) refunds() int {
	n := 0
	for _, x := range p.Notifications {
		if x.Type == TypePaymentRefunded {
			n++
		}
	}
	return n
}

// FullyRefunded reports whether everything paid has gone back.
func (p *Payment) FullyRefunded() bool { return p.RefundedMinor >= p.AmountMinor }

// blocked reports whether a notification appended now would have to wait: some notification
// already on the payment is not delivered.
func (p *Payment) blocked() bool {
	for _, n := range p.Notifications {
		if n.State != StateDelivered {
			return true
		}
	}
	return false
}

// stop is why a notification joining a payment must not go out: the state it is stored in
// (StateNotRelayed, StateOrphaned) and the reason; the zero stop lets it go.
type stop struct {
	state  State
	reason string
}

// appendNotification adds a notification at the end of the causal chain: in the stop's state
// when it has one (no endpoint may receive it), else pending and due at due if everything
// before it is delivered, held otherwise. It returns the new notification.
func (p *Payment) appendNotification(key string, typ Type, r *Refund, via string, st stop, now, due time.Time) *Notification {
	return p.appendEvent(Notification{Key: key, Type: typ, Refund: r, Via: via}, st, now, due)
}

// appendEvent is appendNotification of a notification whose key, type, refund or event and
// via n already holds.
func (p *Payment) appendEvent(n Notification, st stop, now, due time.Time) *Notification {
	n.Attempt, n.CreatedAt, n.State, n.NextAttemptAt = 1, now, StatePending, due
	switch {
	case st.state != "":
		n.State, n.Reason = st.state, st.reason
		n.NextAttemptAt = time.Time{}
	case p.blocked():
		n.State = StateHeld
		n.NextAttemptAt = time.Time{}
	}
	p.Notifications = append(p.Notifications, n)
	return &p.Notifications[len(p.Notifications)-1]
}

// firstUndelivered returns the chain's first notification not delivered, or nil.
func (p *Payment) firstUndelivered() *Notification {
	for i := range p.Notifications {
		if p.Notifications[i].State != StateDelivered {
			return &p.Notifications[i]
		}
	}
	return nil
}

// release, once notification key is delivered, moves the first notification of the chain that
// is not delivered to pending, due at due, if it is held, and returns it; nil when there is
// none to release. The first one not delivered, not key's successor: a delivered notification
// replayed (forced) and delivered again may find its successor delivered meanwhile and a later
// one held behind the replay.
func (p *Payment) release(key string, due time.Time) *Notification {
	next := p.firstUndelivered()
	if n := p.Notification(key); n == nil || n.State != StateDelivered || next == nil || next.State != StateHeld {
		return nil
	}
	next.State = StatePending
	next.Attempt = 1
	next.NextAttemptAt = due
	return next
}

// untouched reports whether a pending notification has never been tried: its first task may
// not exist yet (the enqueue after the write that made it pending failed), so whoever sees it
// makes sure the task exists. Task names make that idempotent.
func (n *Notification) untouched() bool {
	if n.State != StatePending || n.Attempt != 1 {
		return false
	}
	for _, a := range n.Attempts {
		if a.Generation == n.Generation {
			return false
		}
	}
	return true
}

// addNote records a result that is not relayed, once: a repeat of the same note is ignored.
// It reports whether the payment changed.
func (p *Payment) addNote(note Note) bool {
	for _, n := range p.Notes {
		if n.Kind == note.Kind && n.RefundID == note.RefundID {
			return false
		}
	}
	p.Notes = append(p.Notes, note)
	if len(p.Notes) > MaxNotes {
		p.Notes = p.Notes[len(p.Notes)-MaxNotes:]
	}
	return true
}

// RefundDecision is what the refund arithmetic makes of one refund notification.
type RefundDecision int

const (
	// RefundNew: a refund not seen before; Refund holds its amount and the new total.
	RefundNew RefundDecision = iota
	// RefundRepeat: the same refund again, with the same facts.
	RefundRepeat
	// RefundCovered: a refund whose money is already counted, because a later refund reporting
	// a larger cumulative total arrived first (Alipay's refund_fee is cumulative). Recorded as
	// a note, not relayed: the game server already revoked that money.
	RefundCovered
)

// RefundFacts is a refund as a provider reports it: either this refund's amount (WeChat Pay,
// Stripe, the generic format) or the payment's cumulative refunded total after it (Alipay's
// refund_fee), never both.
type RefundFacts struct {
	ID               string
	MerchantRefundNo string
	AmountMinor      int64 // this refund; 0 when the provider reports a cumulative total
	CumulativeMinor  int64 // the refunded total after this refund; 0 when it reports the amount
	RefundedAt       time.Time
	// SettlementMinor, from a bill only, is the refund's settlement amount where the bill states
	// one apart from AmountMinor (WeChat Pay's 退款金额: the requested 申请退款金额 less 免充值
	// coupons): kept on the reconciliation's finding, never compared or relayed.
	SettlementMinor int64
}

// Validate checks the refund's own fields.
func (f *RefundFacts) Validate() error {
	if err := checkID("refund_id", f.ID); err != nil {
		return err
	}
	if f.MerchantRefundNo != "" {
		if err := checkID("merchant_refund_no", f.MerchantRefundNo); err != nil {
			return err
		}
	}
	switch {
	case f.AmountMinor < 0 || f.CumulativeMinor < 0:
		return &FieldError{"refund_amount", "must be positive"}
	case (f.AmountMinor == 0) == (f.CumulativeMinor == 0):
		return &FieldError{"refund_amount", "want this refund's amount or the cumulative refunded total, exactly one"}
	case f.RefundedAt.IsZero():
		return &FieldError{"refunded_at", "required"}
	}
	return nil
}

// ErrOverRefund: a refund takes back more than remains refundable.
type ErrOverRefund struct {
	Paid, AlreadyRefunded, Asked int64
}

func (e *ErrOverRefund) Error() string {
	return fmt.Sprintf("refund of %d would bring the refunded total to %d, more than the %d paid", e.Asked, e.AlreadyRefunded+e.Asked, e.Paid)
}

// DecideRefund applies the refund arithmetic to a payment: it says whether f is new, a repeat
// or already covered, and for a new refund its amount and the refunded total after it. A
// refund that contradicts what is recorded (same id, other amount) is ErrFactsDiffer; one that
// would take back more than was paid is *ErrOverRefund. It changes nothing.
func DecideRefund(p *Payment, f RefundFacts) (RefundDecision, Refund, error) {
	if n := p.RefundByID(f.ID); n != nil {
		r := n.Refund
		same := (f.AmountMinor == 0 || f.AmountMinor == r.AmountMinor) && (f.CumulativeMinor == 0 || f.CumulativeMinor == r.CumulativeMinor)
		if !same {
			return 0, Refund{}, fmt.Errorf("refund %s: recorded with amount %d (total %d): %w", f.ID, r.AmountMinor, r.CumulativeMinor, ErrFactsDiffer)
		}
		return RefundRepeat, *r, nil
	}
	r := Refund{ID: f.ID, MerchantRefundNo: f.MerchantRefundNo, RefundedAt: f.RefundedAt.UTC().Truncate(time.Microsecond)}
	if f.CumulativeMinor > 0 {
		if f.CumulativeMinor > p.AmountMinor {
			return 0, Refund{}, &ErrOverRefund{Paid: p.AmountMinor, AlreadyRefunded: p.RefundedMinor, Asked: f.CumulativeMinor - p.RefundedMinor}
		}
		if f.CumulativeMinor <= p.RefundedMinor {
			r.CumulativeMinor = f.CumulativeMinor
			return RefundCovered, r, nil
		}
		r.AmountMinor = f.CumulativeMinor - p.RefundedMinor
		r.CumulativeMinor = f.CumulativeMinor
	} else {
		if f.AmountMinor > p.AmountMinor-p.RefundedMinor {
			return 0, Refund{}, &ErrOverRefund{Paid: p.AmountMinor, AlreadyRefunded: p.RefundedMinor, Asked: f.AmountMinor}
		}
		r.AmountMinor = f.AmountMinor
		r.CumulativeMinor = p.RefundedMinor + f.AmountMinor
	}
	if p.refunds() >= MaxRefunds {
		return 0, Refund{}, &FieldError{"refund_id", fmt.Sprintf("payment already has %d refunds, the most payrelay keeps", MaxRefunds)}
	}
	return RefundNew, r, nil
}

// PaymentFirst reports whether the payment's own notification comes before the notification
// key in its chain (or is it): false for a refund of a payment payrelay had not received when
// the refund arrived, which goes out on its own.
func (p *Payment) PaymentFirst(key string) bool {
	for _, n := range p.Notifications {
		if n.Key == KeyPaid {
			return true
		}
		if n.Key == key {
			return false
		}
	}
	return false
}
