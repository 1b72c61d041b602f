package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sethvargo/go-retry"
	stripeapi "github.com/stripe/stripe-go/v82"

	"github.com/payrelay/payrelay/functions/relay"
)

// Stripe's API, called with Stripe's official Go library (github.com/stripe/stripe-go/v82,
// which sends Stripe-Version 2025-08-27.basil: what payrelay fetches is rendered in that
// version, whatever version the webhook endpoint is pinned to). Only reads, each with the
// account's restricted key for the event's mode:
//
//	GET /v1/refunds?charge=ch_...                          the refunds a charge.refunded did not list
//	GET /v1/invoice_payments?payment[type]=payment_intent&payment[payment_intent]=pi_...
//	GET /v1/checkout/sessions?payment_intent=pi_...        the order a refund without order metadata belongs to
//	GET /v1/events?delivery_success=false&created[gte]=... the events sweep (Stripe's "Handle
//	                                                       undelivered webhook events": events are kept 30 days)
//
// The webhook's signature check stays hand-written (verify, StripeSign): the library's
// ConstructEvent checks one secret per call and refuses an event whose api_version is not its
// own pinned version unless told to ignore it, while payrelay must try every secret of every
// account, in constant time, over the raw body, before decoding anything, for endpoints of any
// version. It is the algorithm of Stripe's "Verify webhook signatures manually" document.

// stripeAPITimeout bounds one API request; the library retries a network error, a 409, a 429
// and a 5xx (stripeMaxRetries times, with its own backoff), all within the caller's context.
const (
	stripeAPITimeout = 10 * time.Second
	stripeMaxRetries = 2
	// MaxStripeRefunds bounds the refunds read for one charge; Stripe allows far fewer per charge in practice.
	MaxStripeRefunds = 1000
)

// stripeClients builds an account's API clients from its keys: restricted keys only (least
// privilege), rk_live_ for production and rk_test_ for sandbox.
func stripeClients(a StripeAccount) (map[relay.Environment]*stripeapi.Client, error) {
	out := map[relay.Environment]*stripeapi.Client{}
	for name, key := range a.APIKeys {
		env, err := relay.ParseEnvironment(name)
		if err != nil {
			return nil, fmt.Errorf("PROVIDER_CONFIG stripe %s: api_keys: %w", a.Account, err)
		}
		prefix := map[relay.Environment]string{relay.EnvProduction: "rk_live_", relay.EnvSandbox: "rk_test_"}[env]
		if !strings.HasPrefix(key, prefix) {
			return nil, fmt.Errorf("PROVIDER_CONFIG stripe %s: api_keys.%s must be a restricted key %s... (read access to charges, refunds, events, Checkout Sessions and invoices), not a secret key", a.Account, name, prefix)
		}
		cfg := &stripeapi.BackendConfig{
			HTTPClient:        &http.Client{Timeout: stripeAPITimeout, CheckRedirect: noRedirects.CheckRedirect},
			MaxNetworkRetries: stripeapi.Int64(stripeMaxRetries),
			LeveledLogger:     &stripeapi.LeveledLogger{Level: stripeapi.LevelNull}, // its lines may carry request details
			EnableTelemetry:   stripeapi.Bool(false),
		}
		if a.APIBase != "" {
			cfg.URL = stripeapi.String(strings.TrimRight(a.APIBase, "/"))
		}
		out[env] = stripeapi.NewClient(key, stripeapi.WithBackends(stripeapi.NewBackendsWithConfig(cfg)))
	}
	return out, nil
}

// Complete implements Completer: a charge.refunded that lists no refunds becomes each of the
// charge's succeeded refunds, fetched from Stripe (idempotent with their own refund.* events,
// which name the same refund ids); a refund whose order could only be read as its
// PaymentIntent is given the order the PaymentIntent paid (a subscription's invoice, or a
// Checkout Session's order). Without the account's key for the event's mode, the result
// stands as Parse read it. An error is a failure of ours: Ingest answers 5xx and Stripe retries.
func (s *Stripe) Complete(ctx context.Context, body []byte, r relay.Result) ([]relay.Result, error) {
	var out []relay.Result
	err := retry.Do(ctx, stripeBackoff(), func(ctx context.Context) error {
		var err error
		out, err = s.complete(ctx, body, r)
		return err
	})
	return out, err
}

// stripeBackoff retries a read Stripe answered 5xx or 429 (or a network failure the library
// gave up on) twice, 200 then 400 ms later: the library itself retries no error Stripe
// answered in JSON (only a 429 lock_timeout), and Ingest has 4 s in all.
func stripeBackoff() retry.Backoff {
	return retry.WithMaxRetries(2, retry.NewExponential(200*time.Millisecond))
}

// stripeFail describes a failed API call (stripeAPIError) and marks it worth another try when
// it is: a 5xx, a 429 (rate limited: the backoff spaces the tries), or no answer at all.
func stripeFail(what string, err error) error {
	described := stripeAPIError(what, err)
	var se *stripeapi.Error
	if errors.As(err, &se) && se.HTTPStatusCode < 500 && se.HTTPStatusCode != http.StatusTooManyRequests {
		return described
	}
	return retry.RetryableError(described)
}

func (s *Stripe) complete(ctx context.Context, body []byte, r relay.Result) ([]relay.Result, error) {
	acct := s.account(r.Payment.Merchant)
	if acct == nil || r.Payment.OrderID == "" {
		return []relay.Result{r}, nil
	}
	c := s.clientOf(acct, r.Payment.Environment)
	if c == nil {
		return []relay.Result{r}, nil
	}
	if pi := r.Payment.TransactionID; pi != "" && r.Payment.OrderID == pi && (r.Type == relay.TypePaymentRefunded || r.Note != nil) {
		order, invoice, err := s.orderOfPaymentIntent(ctx, c, acct, pi)
		if err != nil {
			return nil, err
		}
		r.Payment.OrderID = order
		if invoice {
			r.Payment.TransactionID = order // a subscription's period: see stripeOrderOf
		}
	}
	if r.Note == nil || r.Note.Kind != "charge.refunded" {
		return []relay.Result{r}, nil
	}
	var ev stripeEvent
	var ch stripeCharge
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, fmt.Errorf("stripe: re-reading a verified event: %w", err)
	}
	if err := json.Unmarshal(ev.Data.Object, &ch); err != nil || ch.ID == "" {
		return nil, fmt.Errorf("stripe: re-reading a verified charge: %v", err)
	}
	var out []relay.Result
	for rf, err := range c.V1Refunds.List(ctx, &stripeapi.RefundListParams{Charge: stripeapi.String(ch.ID)}) {
		if err != nil {
			return nil, stripeFail("list the refunds of a charge", err)
		}
		if len(out) >= MaxStripeRefunds {
			return nil, fmt.Errorf("stripe: charge %.40s lists more than %d refunds", ch.ID, MaxStripeRefunds)
		}
		if rf.Status != stripeapi.RefundStatusSucceeded {
			continue // its own refund.* or charge.refund.updated event relays it once it succeeds
		}
		amount, err := relay.FromStripe(rf.Amount, string(rf.Currency))
		if err != nil {
			return nil, err
		}
		x := r
		x.Note, x.Type = nil, relay.TypePaymentRefunded
		x.Refund = &relay.RefundFacts{ID: rf.ID, AmountMinor: amount, RefundedAt: time.Unix(rf.Created, 0).UTC()}
		if err := x.Validate(); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	if len(out) == 0 {
		r.Note.Reason = "the charge's refunds have not succeeded yet: each one's own event relays it"
		return []relay.Result{r}, nil
	}
	slices.Reverse(out) // Stripe lists the newest first; relay them in the order they were made
	return out, nil
}

// orderOfPaymentIntent finds the order a PaymentIntent paid: the invoice it paid (a
// subscription's period, keyed by the invoice id; invoice true), or the Checkout Session's
// order; else the PaymentIntent id itself.
func (s *Stripe) orderOfPaymentIntent(ctx context.Context, c *stripeapi.Client, acct *StripeAccount, pi string) (order string, invoice bool, err error) {
	for ip, err := range c.V1InvoicePayments.List(ctx, &stripeapi.InvoicePaymentListParams{
		Payment: &stripeapi.InvoicePaymentListPaymentParams{Type: stripeapi.String("payment_intent"), PaymentIntent: stripeapi.String(pi)}}) {
		if err != nil {
			return "", false, stripeFail("find the invoice of a PaymentIntent", err)
		}
		if ip.Invoice != nil && ip.Invoice.ID != "" {
			return ip.Invoice.ID, true, nil
		}
	}
	for cs, err := range c.V1CheckoutSessions.List(ctx, &stripeapi.CheckoutSessionListParams{PaymentIntent: stripeapi.String(pi)}) {
		if err != nil {
			return "", false, stripeFail("find the Checkout Session of a PaymentIntent", err)
		}
		order := cs.ClientReferenceID
		if acct.OrderKey != "client_reference_id" {
			order = cs.Metadata[acct.OrderKey]
		}
		if order != "" {
			return order, false, nil
		}
	}
	return pi, false, nil
}

// stripeAPIError describes a failed API call without its request details (the library's
// errors carry no key, but may carry the request's parameters).
func stripeAPIError(what string, err error) error {
	var se *stripeapi.Error
	if errors.As(err, &se) {
		return fmt.Errorf("stripe api: %s: HTTP %d %s %.80s", what, se.HTTPStatusCode, se.Type, se.Code)
	}
	return fmt.Errorf("stripe api: %s: %w", what, err)
}

// StripeEventsAccount is one account and mode the events sweep can ask.
type StripeEventsAccount struct {
	Account     string
	Environment relay.Environment
}

// EventAccounts lists the accounts and modes with an API key, in configuration order.
func (s *Stripe) EventAccounts() []StripeEventsAccount {
	var out []StripeEventsAccount
	for i, a := range s.accounts {
		for _, env := range relay.Environments {
			if s.clients[i][env] != nil {
				out = append(out, StripeEventsAccount{Account: a.Account, Environment: env})
			}
		}
	}
	return out
}

// MaxUndelivered bounds the events one sweep of one account reads; a sweep that finds more
// fails so that its cursor does not move, and the next run reads on (each event is ingested
// idempotently, so the repeat costs reads only).
const MaxUndelivered = 5000

// ErrTooManyUndelivered: more undelivered events than one sweep reads.
var ErrTooManyUndelivered = errors.New("stripe: more undelivered events than one sweep reads")

// Undelivered lists the account's events of the types payrelay takes that Stripe has not
// delivered to every endpoint (delivery_success=false: failed, or still being retried),
// created at or after since, oldest first, each as the event's JSON.
func (s *Stripe) Undelivered(ctx context.Context, account string, env relay.Environment, since time.Time) ([][]byte, error) {
	acct := s.account(account)
	if acct == nil || s.clientOf(acct, env) == nil {
		return nil, &QueryError{Reason: fmt.Sprintf("stripe account %.40q has no %s api key", account, env)}
	}
	params := &stripeapi.EventListParams{DeliverySuccess: stripeapi.Bool(false),
		CreatedRange: &stripeapi.RangeQueryParams{GreaterThanOrEqual: since.Unix()}}
	for _, t := range StripeEventTypes {
		params.Types = append(params.Types, stripeapi.String(t))
	}
	var out [][]byte
	err := retry.Do(ctx, stripeBackoff(), func(ctx context.Context) error {
		out = out[:0]
		for ev, err := range s.clientOf(acct, env).V1Events.List(ctx, params) {
			if err != nil {
				return stripeFail("list undelivered events", err)
			}
			if len(out) >= MaxUndelivered {
				return ErrTooManyUndelivered
			}
			var raw json.RawMessage
			if ev.Data != nil {
				raw = ev.Data.Raw
			}
			b, err := json.Marshal(map[string]any{"id": ev.ID, "object": "event", "type": ev.Type, "account": ev.Account,
				"livemode": ev.Livemode, "created": ev.Created, "api_version": ev.APIVersion, "data": map[string]any{"object": raw}})
			if err != nil {
				return err
			}
			out = append(out, b)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Reverse(out)
	return out, nil
}

// ParseUndelivered reads an event Undelivered fetched for account: it came from Stripe's API
// over TLS with the account's key, so it carries no signature to check.
func (s *Stripe) ParseUndelivered(account string, body []byte) (relay.Result, error) {
	acct := s.account(account)
	if acct == nil {
		return relay.Result{}, refuse(http.StatusForbidden, "stripe account %.40q is not configured", account)
	}
	return s.parseEvent(acct, body)
}
