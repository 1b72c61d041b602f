package provider

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// StripeAccount is one Stripe account of the studio, with its webhook endpoint's secrets.
type StripeAccount struct {
	// Account is the Stripe account id (acct_...): the merchant account order ids are unique in.
	Account string `json:"account"`
	// Secrets are the endpoint's signing secrets (whsec_...); two during a roll.
	Secrets []string `json:"secrets"`
	Game    string   `json:"game"`
	// OrderKey names where the game's order id is: "client_reference_id" (the default) or a
	// key of the Checkout Session's metadata.
	OrderKey string `json:"order_key"`
	// Environments are those the account's events are relayed from: "production" (live mode,
	// the default), "sandbox" (test mode and Stripe sandboxes: livemode false), or both. A
	// test-mode endpoint has its own signing secret; list it in Secrets too.
	Environments []string `json:"environments,omitempty"`
}

// Stripe verifies and decodes Stripe webhook events (Stripe's documentation "Check the webhook
// signatures": Stripe-Signature t=...,v1=..., the hex HMAC-SHA256 of "t.body" with the
// endpoint secret, a 5-minute tolerance, several v1 during a secret roll).
type Stripe struct {
	accounts []StripeAccount
	envs     [][]relay.Environment // of accounts[i]
}

var _ Provider = (*Stripe)(nil)

// NewStripe checks the accounts.
func NewStripe(accounts []StripeAccount) (*Stripe, error) {
	seen := map[string]bool{}
	for i, a := range accounts {
		if a.Account == "" || !relay.GamePattern.MatchString(a.Game) || len(a.Secrets) == 0 {
			return nil, fmt.Errorf("PROVIDER_CONFIG stripe[%d]: account, game and secrets are required", i)
		}
		for _, s := range a.Secrets {
			if !strings.HasPrefix(s, "whsec_") {
				return nil, fmt.Errorf("PROVIDER_CONFIG stripe[%d] (%s): secrets must be whsec_... endpoint secrets", i, a.Account)
			}
		}
		if seen[a.Account] {
			return nil, fmt.Errorf("PROVIDER_CONFIG stripe: account %s twice", a.Account)
		}
		seen[a.Account] = true
		if accounts[i].OrderKey == "" {
			accounts[i].OrderKey = "client_reference_id"
		}
	}
	st := &Stripe{accounts: accounts}
	for _, a := range accounts {
		envs, err := environments("stripe "+a.Account, a.Environments)
		if err != nil {
			return nil, err
		}
		st.envs = append(st.envs, envs)
	}
	return st, nil
}

// Name implements Provider.
func (*Stripe) Name() string { return "stripe" }

// MediaType implements Provider.
func (*Stripe) MediaType() string { return "application/json" }

// HeaderStripeSignature is Stripe's signature header.
const HeaderStripeSignature = "Stripe-Signature"

// StripeSign is the v1 signature of body at t with secret (the whole whsec_ string is the key,
// as Stripe's libraries use it).
func StripeSign(secret string, t int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(strconv.FormatInt(t, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// envsOf is the environments of a, one of s.accounts.
func (s *Stripe) envsOf(a *StripeAccount) []relay.Environment {
	for i := range s.accounts {
		if &s.accounts[i] == a {
			return s.envs[i]
		}
	}
	return []relay.Environment{relay.EnvProduction}
}

// verify finds the account whose secret signed body, comparing in constant time.
func (s *Stripe) verify(header string, body []byte, now time.Time) (*StripeAccount, error) {
	var ts int64
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts, _ = strconv.ParseInt(v, 10, 64)
		case "v1":
			if b, err := hex.DecodeString(v); err == nil && len(sigs) < 8 {
				sigs = append(sigs, b)
			}
		}
	}
	if ts == 0 || len(sigs) == 0 {
		return nil, refuse(http.StatusUnauthorized, "Stripe-Signature lacks t or v1")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return nil, refuse(http.StatusUnauthorized, "Stripe-Signature timestamp is %s from now, more than 5 minutes", d.Round(time.Second))
	}
	for i := range s.accounts {
		for _, secret := range s.accounts[i].Secrets {
			want, _ := hex.DecodeString(StripeSign(secret, ts, body))
			for _, sig := range sigs {
				if hmac.Equal(want, sig) {
					return &s.accounts[i], nil
				}
			}
		}
	}
	return nil, refuse(http.StatusUnauthorized, "no v1 signature matches an endpoint secret")
}

type stripeEvent struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Account string `json:"account"` // set for Connect events
	// Livemode is false for test-mode (and Stripe sandbox) events: Stripe's Event object
	// reference, "livemode: Has the value true if the object exists in live mode or the value
	// false if the object exists in test mode." Every API version carries it.
	Livemode *bool `json:"livemode"`
	Created  int64 `json:"created"`
	Data     struct {
		Object json.RawMessage `json:"object"`
	} `json:"data"`
}

type stripeSession struct {
	ID                string            `json:"id"`
	ClientReferenceID string            `json:"client_reference_id"`
	PaymentStatus     string            `json:"payment_status"`
	PaymentIntent     string            `json:"payment_intent"`
	AmountTotal       int64             `json:"amount_total"`
	Currency          string            `json:"currency"`
	Created           int64             `json:"created"`
	Metadata          map[string]string `json:"metadata"`
}

type stripeCharge struct {
	ID             string            `json:"id"`
	PaymentIntent  string            `json:"payment_intent"`
	Amount         int64             `json:"amount"`
	AmountRefunded int64             `json:"amount_refunded"`
	Currency       string            `json:"currency"`
	Created        int64             `json:"created"`
	Metadata       map[string]string `json:"metadata"`
	Refunds        struct {
		Data []struct {
			ID      string `json:"id"`
			Created int64  `json:"created"`
		} `json:"data"`
	} `json:"refunds"`
}

type stripeRefund struct {
	ID            string            `json:"id"`
	Amount        int64             `json:"amount"`
	Charge        string            `json:"charge"`
	PaymentIntent string            `json:"payment_intent"`
	Currency      string            `json:"currency"`
	Status        string            `json:"status"`
	Created       int64             `json:"created"`
	Metadata      map[string]string `json:"metadata"`
}

// Parse implements Provider. Which events are what (Stripe's event types):
//
//	checkout.session.completed, payment_status paid       the payment
//	checkout.session.async_payment_succeeded              the payment (paid later)
//	charge.refunded                                       a refund: amount_refunded is cumulative
//	refund.created, refund.updated, status succeeded      a refund: its own amount
//	other events                                          verified, acknowledged, noted
//
// The order id of a payment is the session's client_reference_id (or the configured metadata
// key). Refunds carry no session: they name the PaymentIntent, and the studio puts the same
// order id in payment_intent_data.metadata (key order_id, or the configured one) when it
// creates the session, which Stripe copies onto the PaymentIntent; refund and charge events
// then carry it in their metadata. Without it the refund's order id is the PaymentIntent id.
func (s *Stripe) Parse(h http.Header, body []byte, now time.Time) (relay.Result, error) {
	acct, err := s.verify(h.Get(HeaderStripeSignature), body, now)
	if err != nil {
		return relay.Result{}, err
	}
	var ev stripeEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return relay.Result{}, refuse(http.StatusBadRequest, "malformed event: %v", err)
	}
	if ev.Account != "" && ev.Account != acct.Account {
		return relay.Result{}, refuse(http.StatusForbidden, "event of account %.40q signed with %s's secret", ev.Account, acct.Account)
	}
	if ev.Livemode == nil {
		return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "livemode", Reason: "livemode: the event does not say whether it is live or test mode"}
	}
	env := relay.EnvProduction
	if !*ev.Livemode {
		env = relay.EnvSandbox
	}
	pay := relay.Payment{Provider: s.Name(), Environment: env, Merchant: acct.Account, AppID: acct.Account, Game: acct.Game}
	mm := mismatch("stripe account "+acct.Account, env, s.envsOf(acct))
	orderOf := func(md map[string]string, fallback string) string {
		key := acct.OrderKey
		if key == "client_reference_id" {
			key = "order_id"
		}
		if v := md[key]; v != "" {
			return v
		}
		return fallback
	}
	switch ev.Type {
	case "checkout.session.completed", "checkout.session.async_payment_succeeded":
		var cs stripeSession
		if err := json.Unmarshal(ev.Data.Object, &cs); err != nil {
			return relay.Result{}, refuse(http.StatusBadRequest, "malformed session: %v", err)
		}
		pay.OrderID = cs.ClientReferenceID
		if acct.OrderKey != "client_reference_id" {
			pay.OrderID = cs.Metadata[acct.OrderKey]
		}
		pay.TransactionID, pay.Currency = cs.PaymentIntent, strings.ToUpper(cs.Currency)
		if pay.AmountMinor, err = relay.FromStripe(cs.AmountTotal, cs.Currency); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		pay.PaidAt = time.Unix(ev.Created, 0).UTC()
		if cs.PaymentStatus != "paid" {
			return relay.Result{Payment: pay, Note: &relay.Note{Kind: "checkout.session.completed." + fmt.Sprintf("%.20s", cs.PaymentStatus),
				Reason: "session completed, payment not yet paid (asynchronous method): not relayed"}}, nil
		}
		r := relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay, Mismatch: mm}
		if err := r.Validate(); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		return r, nil
	case "charge.refunded":
		var ch stripeCharge
		if err := json.Unmarshal(ev.Data.Object, &ch); err != nil {
			return relay.Result{}, refuse(http.StatusBadRequest, "malformed charge: %v", err)
		}
		pay.OrderID = orderOf(ch.Metadata, ch.PaymentIntent)
		pay.TransactionID, pay.Currency = ch.PaymentIntent, strings.ToUpper(ch.Currency)
		if pay.AmountMinor, err = relay.FromStripe(ch.Amount, ch.Currency); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		if len(ch.Refunds.Data) == 0 {
			// The charge does not list its refunds (API versions since 2022-11-15): this refund
			// cannot be told apart from the others here, so its refund.created or refund.updated
			// event, which names it, relays it.
			return relay.Result{Payment: pay, Note: &relay.Note{Kind: "charge.refunded", Reason: "the charge lists no refund: relayed by the refund's own event"}}, nil
		}
		// amount_refunded is the charge's refunded total, the newest refund first in its list:
		// the refund's amount is the delta from what is recorded (as Alipay's refund_fee). Its
		// own refund.* event names the same refund, and is then a repeat.
		newest := ch.Refunds.Data[0]
		r := relay.Result{Type: relay.TypePaymentRefunded, Payment: pay, Mismatch: mm, Refund: &relay.RefundFacts{
			ID: newest.ID, CumulativeMinor: ch.AmountRefunded, RefundedAt: time.Unix(newest.Created, 0).UTC()}}
		if err := r.Validate(); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		return r, nil
	case "refund.updated", "refund.created":
		var rf stripeRefund
		if err := json.Unmarshal(ev.Data.Object, &rf); err != nil {
			return relay.Result{}, refuse(http.StatusBadRequest, "malformed refund: %v", err)
		}
		pay.OrderID = orderOf(rf.Metadata, rf.PaymentIntent)
		pay.TransactionID, pay.Currency = rf.PaymentIntent, strings.ToUpper(rf.Currency)
		if rf.Status != "succeeded" {
			return relay.Result{Payment: pay, Note: &relay.Note{Kind: "refund." + fmt.Sprintf("%.20s", rf.Status), RefundID: rf.ID,
				Alert: rf.Status == "failed", Reason: "refund not succeeded: not relayed"}}, nil
		}
		// The refund event carries no payment total: the stored payment supplies it.
		r := relay.Result{Type: relay.TypePaymentRefunded, Payment: pay, Mismatch: mm, Refund: &relay.RefundFacts{
			ID: rf.ID, AmountMinor: rf.Amount, RefundedAt: time.Unix(rf.Created, 0).UTC()}}
		if err := r.Validate(); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		return r, nil
	}
	// Any other event the endpoint was subscribed to: verified, acknowledged, noted (there is
	// no payment to record it on).
	return relay.Result{Note: &relay.Note{Kind: "*", Reason: fmt.Sprintf("event %.60s is not a payment or refund: not relayed", ev.Type)}}, nil
}

// Ack implements Provider: 200 (Stripe retries anything else for up to 3 days).
func (*Stripe) Ack(w http.ResponseWriter, _ relay.IngestResult) { w.WriteHeader(http.StatusOK) }

// Refuse implements Provider.
func (*Stripe) Refuse(w http.ResponseWriter, r *Refusal) {
	writeJSON(w, r.Code, errorBody{Error: http.StatusText(r.Code), Reason: r.Reason})
}
