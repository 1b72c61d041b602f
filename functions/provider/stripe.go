package provider

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	stripeapi "github.com/stripe/stripe-go/v82"

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
	// APIKeys are the account's restricted API keys by environment ("production": rk_live_...,
	// "sandbox": rk_test_...), each with read access to Charges, Refunds, Events, Checkout
	// Sessions and Invoices and nothing else: payrelay fetches a charge's refunds when
	// charge.refunded does not list them, finds the order a refund belongs to, and recovers
	// undelivered events (the events sweep). Optional; without one, see functions/provider/README.md's Stripe
	// section for what an endpoint's API version then loses.
	APIKeys map[string]string `json:"api_keys,omitempty"`
	// APIBase replaces https://api.stripe.com: for a test stand-in only.
	APIBase string `json:"api_base,omitempty"`
}

// Stripe verifies and decodes Stripe webhook events (Stripe's documentation "Check the webhook
// signatures": Stripe-Signature t=...,v1=..., the hex HMAC-SHA256 of "t.body" with the
// endpoint secret, a 5-minute tolerance, several v1 during a secret roll).
type Stripe struct {
	accounts []StripeAccount
	envs     [][]relay.Environment // of accounts[i]
	// clients are the API clients of accounts[i] by environment, where it has a key.
	clients []map[relay.Environment]*stripeapi.Client
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
		clients, err := stripeClients(a)
		if err != nil {
			return nil, err
		}
		st.clients = append(st.clients, clients)
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

// clientOf is a's API client for env; nil without a key.
func (s *Stripe) clientOf(a *StripeAccount, env relay.Environment) *stripeapi.Client {
	for i := range s.accounts {
		if &s.accounts[i] == a {
			return s.clients[i][env]
		}
	}
	return nil
}

// account is the configured account of id.
func (s *Stripe) account(id string) *StripeAccount {
	for i := range s.accounts {
		if s.accounts[i].Account == id {
			return &s.accounts[i]
		}
	}
	return nil
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
	// APIVersion is the version data.object is rendered in ("2024-06-20", "2025-08-27.basil"):
	// the endpoint's pinned version, or the account's default.
	APIVersion string `json:"api_version"`
	Data       struct {
		Object json.RawMessage `json:"object"`
	} `json:"data"`
}

type stripeSession struct {
	ID                string            `json:"id"`
	ClientReferenceID string            `json:"client_reference_id"`
	PaymentStatus     string            `json:"payment_status"`
	PaymentIntent     string            `json:"payment_intent"`
	Mode              string            `json:"mode"` // payment, subscription, setup
	AmountTotal       int64             `json:"amount_total"`
	Currency          string            `json:"currency"`
	Created           int64             `json:"created"`
	Metadata          map[string]string `json:"metadata"`
}

type stripeCharge struct {
	ID             string            `json:"id"`
	PaymentIntent  string            `json:"payment_intent"`
	Invoice        string            `json:"invoice"` // API versions before 2025-03-31.basil
	Amount         int64             `json:"amount"`
	AmountRefunded int64             `json:"amount_refunded"`
	Currency       string            `json:"currency"`
	Created        int64             `json:"created"`
	Metadata       map[string]string `json:"metadata"`
	Refunds        *struct {
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

// stripeInvoice reads an Invoice in both layouts: since 2025-03-31.basil the subscription is
// parent.subscription_details.subscription (and payment_intent and charge are gone, listed
// under payments instead); before it, subscription, subscription_details.metadata,
// payment_intent and charge sit on the invoice itself.
type stripeInvoice struct {
	ID            string `json:"id"`
	Subscription  string `json:"subscription"`
	BillingReason string `json:"billing_reason"`
	AmountPaid    int64  `json:"amount_paid"`
	Currency      string `json:"currency"`
	Created       int64  `json:"created"`
	PaymentIntent string `json:"payment_intent"` // before 2025-03-31.basil
	Parent        *struct {
		SubscriptionDetails *stripeSubscriptionDetails `json:"subscription_details"`
	} `json:"parent"`
	SubscriptionDetails *stripeSubscriptionDetails `json:"subscription_details"`
	StatusTransitions   struct {
		PaidAt int64 `json:"paid_at"`
	} `json:"status_transitions"`
	// Lines' periods: the subscription line's period.end is the end of the period paid.
	Lines struct {
		Data []struct {
			Period struct {
				End int64 `json:"end"`
			} `json:"period"`
		} `json:"data"`
	} `json:"lines"`
}

// periodEnd is the latest end of the invoice's lines' periods; zero when none says.
func (in *stripeInvoice) periodEnd() time.Time {
	var end int64
	for _, l := range in.Lines.Data {
		end = max(end, l.Period.End)
	}
	if end == 0 {
		return time.Time{}
	}
	return time.Unix(end, 0).UTC()
}

type stripeSubscriptionDetails struct {
	Subscription string            `json:"subscription"`
	Metadata     map[string]string `json:"metadata"`
}

// subscription is the invoice's subscription and its metadata, in either layout.
func (in *stripeInvoice) subscription() (string, map[string]string) {
	if in.Parent != nil && in.Parent.SubscriptionDetails != nil && in.Parent.SubscriptionDetails.Subscription != "" {
		return in.Parent.SubscriptionDetails.Subscription, in.Parent.SubscriptionDetails.Metadata
	}
	var md map[string]string
	if in.SubscriptionDetails != nil {
		md = in.SubscriptionDetails.Metadata
	}
	return in.Subscription, md
}

// StripeEventTypes are the event types a Stripe endpoint sends payrelay (functions/provider/README.md's list);
// the events sweep asks for these.
var StripeEventTypes = []string{"checkout.session.completed", "checkout.session.async_payment_succeeded", "invoice.paid",
	"charge.refunded", "charge.refund.updated", "refund.created", "refund.updated"}

// stripeRefundsEverywhere is the API version since which refund.created, refund.updated and
// refund.failed are sent for every refund (Stripe's changelog, 2024-10-28.acacia: "now apply to
// all types of refunds ... Previously, these events were only sent for refunds without a
// corresponding charge"). Before it, a card refund is told only by charge.refunded and
// charge.refund.updated.
const stripeRefundsEverywhere = "2024-10-28"

// Parse implements Provider. Which events are what (Stripe's event types; functions/provider/README.md's table):
//
//	checkout.session.completed, payment_status paid       the payment (mode payment)
//	checkout.session.async_payment_succeeded              the payment (paid later)
//	invoice.paid of a subscription, amount_paid > 0       a payment: the subscription's period
//	charge.refunded listing its refunds                   a refund: amount_refunded is cumulative
//	charge.refunded listing none (2022-11-15 and later)   its refunds, fetched from Stripe's API
//	refund.created/updated, charge.refund.updated,
//	  status succeeded                                    a refund: its own amount
//	other events                                          verified, acknowledged, noted
//
// The order id of a payment is the session's client_reference_id (or the configured metadata
// key), or the invoice's id for a subscription's period. Refunds carry no session: they name
// the PaymentIntent, and the studio puts the same order id in payment_intent_data.metadata (key
// order_id, or the configured one) when it creates the session, which Stripe copies onto the
// PaymentIntent; refund and charge events then carry it in their metadata. Without it, and
// with the account's API key, the refund's order is looked up (Complete); otherwise it is the
// PaymentIntent id.
func (s *Stripe) Parse(h http.Header, body []byte, now time.Time) (relay.Result, error) {
	acct, err := s.verify(h.Get(HeaderStripeSignature), body, now)
	if err != nil {
		return relay.Result{}, err
	}
	return s.parseEvent(acct, body)
}

// parseEvent reads a verified event of acct: a webhook's, or one the events sweep fetched from
// Stripe's API with the account's key.
func (s *Stripe) parseEvent(acct *StripeAccount, body []byte) (relay.Result, error) {
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
	var err error
	decode := func(v any, what string) error {
		if err := json.Unmarshal(ev.Data.Object, v); err != nil {
			return refuse(http.StatusBadRequest, "malformed %s: %v", what, err)
		}
		return nil
	}
	money := func(amount int64, currency string) (int64, error) {
		pay.Currency = strings.ToUpper(currency)
		return relay.FromStripe(amount, currency)
	}
	valid := func(r relay.Result) (relay.Result, error) {
		if err := r.Validate(); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		return r, nil
	}
	switch ev.Type {
	case "checkout.session.completed", "checkout.session.async_payment_succeeded":
		var cs stripeSession
		if err := decode(&cs, "session"); err != nil {
			return relay.Result{}, err
		}
		pay.OrderID = cs.ClientReferenceID
		if acct.OrderKey != "client_reference_id" {
			pay.OrderID = cs.Metadata[acct.OrderKey]
		}
		pay.TransactionID = cs.PaymentIntent
		if pay.AmountMinor, err = money(cs.AmountTotal, cs.Currency); err != nil && cs.Mode != "subscription" {
			return relay.Result{}, asRefusal(err)
		}
		pay.PaidAt = time.Unix(ev.Created, 0).UTC()
		switch {
		case cs.Mode == "subscription":
			// The first period is paid by the subscription's first invoice, whose invoice.paid
			// relays it (keyed by the invoice): relaying the session too would grant it twice.
			return relay.Result{Payment: pay, Note: &relay.Note{Kind: "checkout.session.completed.subscription",
				Reason: "a subscription's Checkout Session: its invoice.paid relays the payment"}}, nil
		case cs.PaymentStatus != "paid":
			return relay.Result{Payment: pay, Note: &relay.Note{Kind: "checkout.session.completed." + fmt.Sprintf("%.20s", cs.PaymentStatus),
				Reason: "session completed, payment not yet paid (asynchronous method): not relayed"}}, nil
		}
		return valid(relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay, Mismatch: mm})
	case "invoice.paid":
		var in stripeInvoice
		if err := decode(&in, "invoice"); err != nil {
			return relay.Result{}, err
		}
		sub, md := in.subscription()
		// Keyed by the invoice, which is also its transaction id in every layout (since
		// 2025-03-31.basil an invoice names no PaymentIntent), so a refund resolved to it
		// (stripeOrderOf, Complete) states the same facts.
		pay.OrderID, pay.TransactionID = in.ID, in.ID
		pay.PaidAt = time.Unix(in.StatusTransitions.PaidAt, 0).UTC()
		if in.StatusTransitions.PaidAt == 0 {
			pay.PaidAt = time.Unix(ev.Created, 0).UTC()
		}
		switch {
		case sub == "":
			return relay.Result{Note: &relay.Note{Kind: "invoice.paid.no_subscription",
				Reason: "an invoice of no subscription (a one-off invoice): payrelay relays Checkout payments and subscriptions' invoices"}}, nil
		case in.AmountPaid == 0:
			pay.Currency = strings.ToUpper(in.Currency)
			return relay.Result{Payment: pay, Note: &relay.Note{Kind: "invoice.paid.zero",
				Reason: "a subscription's invoice paid with no money (a trial, a 100% coupon): nothing to relay"}}, nil
		}
		if pay.AmountMinor, err = money(in.AmountPaid, in.Currency); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		pay.Subscription = &relay.Subscription{ID: sub, Reason: fmt.Sprintf("%.64s", in.BillingReason), ExpiresAt: in.periodEnd()}
		pay.Metadata = subscriptionMetadata(in.PaymentIntent, md)
		return valid(relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay, Mismatch: mm})
	case "charge.refunded":
		var ch stripeCharge
		if err := decode(&ch, "charge"); err != nil {
			return relay.Result{}, err
		}
		pay.OrderID, pay.TransactionID = stripeOrderOf(acct, ch.Metadata, ch.Invoice, ch.PaymentIntent)
		if pay.AmountMinor, err = money(ch.Amount, ch.Currency); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		if ch.Refunds == nil || len(ch.Refunds.Data) == 0 {
			// The charge does not list its refunds (API versions since 2022-11-15): Complete
			// fetches them from Stripe's API. Without a key, only versions since 2024-10-28
			// send the refund's own refund.* event.
			note := &relay.Note{Kind: "charge.refunded", Reason: "the charge lists no refund: relayed by the refund's own event"}
			if ev.APIVersion < stripeRefundsEverywhere && s.clientOf(acct, env) == nil {
				note.Alert = true
				note.Reason = fmt.Sprintf("the charge lists no refund and API version %.20s sends no refund.* event for it: configure the account's api_keys so payrelay fetches its refunds", ev.APIVersion)
			}
			return relay.Result{Payment: pay, Mismatch: mm, Note: note}, nil
		}
		// amount_refunded is the charge's refunded total, the newest refund first in its list:
		// the refund's amount is the delta from what is recorded (as Alipay's refund_fee). Its
		// own refund.* event names the same refund, and is then a repeat.
		newest := ch.Refunds.Data[0]
		cum, err := relay.FromStripe(ch.AmountRefunded, ch.Currency)
		if err != nil {
			return relay.Result{}, asRefusal(err)
		}
		return valid(relay.Result{Type: relay.TypePaymentRefunded, Payment: pay, Mismatch: mm, Refund: &relay.RefundFacts{
			ID: newest.ID, CumulativeMinor: cum, RefundedAt: time.Unix(newest.Created, 0).UTC()}})
	case "refund.updated", "refund.created", "charge.refund.updated":
		var rf stripeRefund
		if err := decode(&rf, "refund"); err != nil {
			return relay.Result{}, err
		}
		return s.refundResult(acct, pay, mm, rf)
	}
	// Any other event the endpoint was subscribed to: verified, acknowledged, noted (there is
	// no payment to record it on).
	return relay.Result{Note: &relay.Note{Kind: "*", Reason: fmt.Sprintf("event %.60s is not a payment or refund: not relayed", ev.Type)}}, nil
}

// refundResult is a refund object's result: a refund when it succeeded, a note otherwise.
func (s *Stripe) refundResult(acct *StripeAccount, pay relay.Payment, mm string, rf stripeRefund) (relay.Result, error) {
	pay.OrderID, pay.TransactionID = stripeOrderOf(acct, rf.Metadata, "", rf.PaymentIntent)
	pay.Currency = strings.ToUpper(rf.Currency)
	if rf.Status != "succeeded" {
		return relay.Result{Payment: pay, Note: &relay.Note{Kind: "refund." + fmt.Sprintf("%.20s", rf.Status), RefundID: rf.ID,
			Alert: rf.Status == "failed", Reason: "refund not succeeded: not relayed"}}, nil
	}
	amount, err := relay.FromStripe(rf.Amount, rf.Currency)
	if err != nil {
		return relay.Result{}, asRefusal(err)
	}
	// The refund carries no payment total: the stored payment supplies it.
	r := relay.Result{Type: relay.TypePaymentRefunded, Payment: pay, Mismatch: mm, Refund: &relay.RefundFacts{
		ID: rf.ID, AmountMinor: amount, RefundedAt: time.Unix(rf.Created, 0).UTC()}}
	if err := r.Validate(); err != nil {
		return relay.Result{}, asRefusal(err)
	}
	return r, nil
}

// stripeOrderOf is the order id a refund or charge names, and the payment's transaction id: the
// configured metadata key's value (order_id for client_reference_id) and the PaymentIntent;
// else the invoice it paid (a subscription's period is keyed by its invoice, which is also its
// transaction: the invoice names no PaymentIntent since 2025-03-31.basil); else the
// PaymentIntent for both.
func stripeOrderOf(acct *StripeAccount, md map[string]string, invoice, paymentIntent string) (order, transaction string) {
	key := acct.OrderKey
	if key == "client_reference_id" {
		key = "order_id"
	}
	switch {
	case md[key] != "":
		return md[key], paymentIntent
	case invoice != "":
		return invoice, invoice
	}
	return paymentIntent, paymentIntent
}

// subscriptionMetadata is what a subscription's payment carries in metadata to the game
// server (its subscription block says which subscription and period): the subscription's own
// metadata (where the studio puts its player), as far as the payment's limits allow, in key
// order, and the PaymentIntent where the invoice names one.
func subscriptionMetadata(paymentIntent string, md map[string]string) map[string]string {
	out := map[string]string{}
	if paymentIntent != "" {
		out["payment_intent"] = paymentIntent
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if len(out) >= relay.MaxMetadataKeys {
			break
		}
		if _, taken := out[k]; taken || len(k) > relay.MaxMetadataKeyLen || len(md[k]) > relay.MaxMetadataValLen || !metaKey.MatchString(k) {
			continue
		}
		out[k] = md[k]
	}
	return out
}

var metaKey = regexp.MustCompile(`^[A-Za-z0-9_.\-]+$`)

// Ack implements Provider: 200 (Stripe retries anything else for up to 3 days).
func (*Stripe) Ack(w http.ResponseWriter, _ relay.IngestResult) { w.WriteHeader(http.StatusOK) }

// Refuse implements Provider.
func (*Stripe) Refuse(w http.ResponseWriter, r *Refusal) {
	writeJSON(w, r.Code, errorBody{Error: http.StatusText(r.Code), Reason: r.Reason})
}
