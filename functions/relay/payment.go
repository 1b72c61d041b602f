// Package relay is payrelay's domain core: the payment, its state machine, the record of every
// attempt to notify the game server, and the classification of outcomes. It knows nothing of
// HTTP or of cloud SDKs; it talks to storage, the queue and the game server through the small
// interfaces in this package, so it can be tested alone.
package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"regexp"
	"time"
)

// Payment is one provider's payment, normalized: the facts every notification about it shares,
// the refunds recorded against it, and the notifications that tell the game server about it.
// One Firestore document holds all of it, so the invariants that span a payment's notifications
// (causal order, refund arithmetic) are kept by one conditional write.
type Payment struct {
	// Facts from the provider; identical on every callback for the same order.
	ID            string
	Provider      string
	Merchant      string // the merchant account the order id is unique within
	OrderID       string
	TransactionID string
	AmountMinor   int64
	Currency      string
	PaidAt        time.Time // zero when only a refund told us of the payment and did not say
	AppID         string
	Metadata      map[string]string
	// Game is the studio's game the payment belongs to, routed from its app or merchant at
	// Ingest: its notifications go to that game's server through that game's queues.
	Game string
	// Environment is production or sandbox, as the provider itself marks the payment (App
	// Store environment, Stripe livemode, a sandbox Alipay app, the generic field). A sandbox
	// payment's notifications go only to the game's sandbox endpoint (invariant 11).
	Environment Environment
	// Subscription, for one period of a subscription, says which subscription and period it
	// paid; nil for a one-time payment.
	Subscription *Subscription
	// StoreAck, for a purchase its store refunds unless acknowledged (Google Play), is its
	// acknowledgement's progress; nil when payrelay acknowledges nothing for it.
	StoreAck *StoreAck

	// RefundedMinor is the sum of the refunds recorded, in minor units.
	RefundedMinor int64
	// Notifications are in causal order: each is sent only once every one before it is
	// delivered (invariant 8).
	Notifications []Notification
	// Notes are the verified results about this payment that are deliberately not relayed.
	Notes []Note

	ReceivedAt time.Time
	UpdatedAt  time.Time
}

// Subscription is the subscription a payment paid one period of.
type Subscription struct {
	// ID is the provider's id of the subscription: the App Store's originalTransactionId,
	// Stripe's sub_...
	ID string
	// ProductID is what was subscribed to (the App Store productId, a Stripe price).
	ProductID string
	// Reason is why this period was charged, in the provider's words: the App Store's
	// notification type and subtype (SUBSCRIBED/INITIAL_BUY, DID_RENEW, DID_RENEW/
	// BILLING_RECOVERY, OFFER_REDEEMED/...), Stripe's billing_reason.
	Reason string
	// ExpiresAt is the end of the period paid; zero where the provider does not say.
	ExpiresAt time.Time
	// Offer names a promotional or introductory offer the period was bought with ("" when none):
	// the App Store's offerType and offerIdentifier.
	Offer string
}

// Validate checks a subscription's fields.
func (s *Subscription) Validate() error {
	if err := checkID("subscription_id", s.ID); err != nil {
		return err
	}
	for field, v := range map[string]string{"subscription_product": s.ProductID, "subscription_reason": s.Reason, "subscription_offer": s.Offer} {
		if len(v) > MaxMetadataValLen {
			return &FieldError{field, fmt.Sprintf("longer than %d bytes", MaxMetadataValLen)}
		}
	}
	return nil
}

// Environment says whether a payment moved real money (production) or was a test (sandbox).
type Environment string

const (
	// EnvProduction: real money; notified to the game's production endpoint.
	EnvProduction Environment = "production"
	// EnvSandbox: a test payment (App Store Sandbox or Xcode, Stripe test mode, an Alipay
	// sandbox app, a generic notification marked so); notified only to the game's sandbox
	// endpoint, never to production.
	EnvSandbox Environment = "sandbox"
)

// Environments lists both, production first.
var Environments = []Environment{EnvProduction, EnvSandbox}

// ParseEnvironment reads an environment's name; "" and anything but the two are errors.
func ParseEnvironment(s string) (Environment, error) {
	switch e := Environment(s); e {
	case EnvProduction, EnvSandbox:
		return e, nil
	}
	return "", &FieldError{"environment", fmt.Sprintf("%.20q: want %q or %q", s, EnvProduction, EnvSandbox)}
}

// PaymentID derives a payment's id from its environment, provider, the merchant account and
// the provider's order id: an order id is unique only within one merchant account (an Alipay
// app, a WeChat Pay merchant), so two merchants' equal order numbers must be two payments, and
// a sandbox order must never find a production payment (Stripe test mode and live mode, App
// Store Sandbox and Production share order-id spaces). The id is a hash, so a repeated
// callback finds the same document and sequential order numbers spread across Firestore's key
// space instead of hotspotting one range. A production id hashes exactly what it did before
// environments existed, so stored payments keep their ids; a sandbox id hashes one more
// component, and since no id field may hold a NUL, the two inputs can never be equal.
func PaymentID(env Environment, provider, merchant, orderID string) string {
	sum := paymentSum(env, provider, merchant, orderID)
	return hex.EncodeToString(sum[:16])
}

// paymentSum is the hash a payment's id is the first 16 bytes of, in hex.
func paymentSum(env Environment, provider, merchant, orderID string) [sha256.Size]byte {
	var buf [256]byte // the fields' limits keep it on the stack: a bill looks up millions a day
	in := append(append(append(append(append(buf[:0], provider...), 0), merchant...), 0), orderID...)
	if env != EnvProduction {
		in = append(append(in, 0), env...)
	}
	return sha256.Sum256(in)
}

// Limits on the fields of a payment. They bound what one callback can make us store.
const (
	MaxIDLength       = 64
	MaxMetadataKeys   = 20
	MaxMetadataKeyLen = 40
	MaxMetadataValLen = 256
)

var (
	idPattern       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:\-]*$`)
	providerPattern = regexp.MustCompile(`^[a-z][a-z0-9_\-]{0,31}$`)
	metaKeyPattern  = regexp.MustCompile(`^[A-Za-z0-9_.\-]+$`)
	// GamePattern is a game's name: short, lowercase, usable in queue and secret names.
	GamePattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,29}$`)
)

// FieldError names the field of a payment that is invalid and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// isName is GamePattern (underscore false) or providerPattern (underscore true), by hand:
// lowercase letters, digits and -, (_), at most max, starting with a letter.
func isName(v string, max int, underscore bool) bool {
	if v == "" || len(v) > max || v[0] < 'a' || v[0] > 'z' {
		return false
	}
	for i := 1; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || underscore && c == '_') {
			return false
		}
	}
	return true
}

// isID is idPattern, by hand: it runs for every field of every row of a bill.
func isID(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == ':' || c == '-'):
		default:
			return false
		}
	}
	return v != ""
}

func checkID(field, v string) error {
	switch {
	case v == "":
		return &FieldError{field, "required"}
	case len(v) > MaxIDLength:
		return &FieldError{field, fmt.Sprintf("longer than %d characters", MaxIDLength)}
	case !isID(v):
		return &FieldError{field, "only letters, digits and _ . : - are allowed"}
	}
	return nil
}

// Validate checks every fact of the payment and returns the first field at fault. PaidAt may be
// zero: a refund notification does not always say when its payment was made.
func (p *Payment) Validate() error {
	if !isName(p.Provider, 32, true) {
		return &FieldError{"provider", "want 1-32 lowercase letters, digits, _ or -, starting with a letter"}
	}
	if err := checkID("order_id", p.OrderID); err != nil {
		return err
	}
	if err := checkID("transaction_id", p.TransactionID); err != nil {
		return err
	}
	if err := checkID("app_id", p.AppID); err != nil {
		return err
	}
	if err := checkID("merchant", p.Merchant); err != nil {
		return err
	}
	if !isName(p.Game, 30, false) {
		return &FieldError{"game", "the payment is routed to no game"}
	}
	if _, err := ParseEnvironment(string(p.Environment)); err != nil {
		return err
	}
	if _, ok := isoExponent[p.Currency]; !ok {
		return &FieldError{"currency", fmt.Sprintf("%q is not an ISO 4217 currency code", p.Currency)}
	}
	if p.AmountMinor <= 0 {
		return &FieldError{"amount", "must be positive"}
	}
	if p.Subscription != nil {
		if err := p.Subscription.Validate(); err != nil {
			return err
		}
	}
	if len(p.Metadata) > MaxMetadataKeys {
		return &FieldError{"metadata", fmt.Sprintf("more than %d keys", MaxMetadataKeys)}
	}
	for k, v := range p.Metadata {
		if len(k) > MaxMetadataKeyLen || !metaKeyPattern.MatchString(k) {
			return &FieldError{"metadata", fmt.Sprintf("key %.40q: want 1-%d letters, digits, _ . -", k, MaxMetadataKeyLen)}
		}
		if len(v) > MaxMetadataValLen {
			return &FieldError{"metadata", fmt.Sprintf("value of %q longer than %d bytes", k, MaxMetadataValLen)}
		}
	}
	return nil
}

// SameFacts reports whether q carries the same provider facts as p: a repeated callback must,
// and one that does not (same order, another amount) is a conflict to refuse loudly. A fact q
// does not know (a zero PaidAt or amount, an empty transaction id or app id from a refund
// notification) is not a contradiction.
func (p *Payment) SameFacts(q *Payment) bool {
	return p.Provider == q.Provider && p.Merchant == q.Merchant && p.OrderID == q.OrderID && p.Environment == q.Environment &&
		(q.TransactionID == "" || p.TransactionID == "" || p.TransactionID == q.TransactionID) &&
		(q.AmountMinor == 0 || p.AmountMinor == q.AmountMinor) && p.Currency == q.Currency &&
		(q.PaidAt.IsZero() || p.PaidAt.IsZero() || p.PaidAt.Equal(q.PaidAt)) &&
		(q.AppID == "" || p.AppID == "" || p.AppID == q.AppID) &&
		(q.Game == "" || p.Game == "" || p.Game == q.Game) &&
		(q.Metadata == nil || maps.Equal(p.Metadata, q.Metadata))
}

// Matches is SameFacts for a callback against the stored payment, except that when payrelay
// learnt of the payment from an order query or a bill (Notification.Via), the time paid is not
// held against the notification: a query's send_pay_date and a bill's 完成时间 are not the
// notification's gmt_payment to the second, and a repeat must not become a conflict.
func (p *Payment) Matches(q *Payment) bool {
	if n := p.Paid(); n != nil && (n.Via == ViaQuery || n.Via == ViaReconcile) && !q.PaidAt.IsZero() {
		c := *q
		c.PaidAt = time.Time{}
		return p.SameFacts(&c)
	}
	return p.SameFacts(q)
}

// IsID reports whether v may be an id field (order, transaction, app, merchant, refund).
func IsID(v string) bool { return isID(v) }
