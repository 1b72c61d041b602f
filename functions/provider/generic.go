package provider

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
)

// Generic is the generic format: a JSON payment signed the Standard Webhooks way.
type Generic struct {
	verifier *webhook.Verifier
	// sandbox, if set, verifies with secrets bound to the sandbox: what they sign is a sandbox
	// notification, whatever its body says, so a test tool holding one cannot make a
	// production payment.
	sandbox *webhook.Verifier
	apps    map[string]string // app_id to game
}

var _ Provider = (*Generic)(nil)

// NewGeneric verifies with any of secrets (several, for rotation) and routes each app id to
// its game with apps.
func NewGeneric(apps map[string]string, secrets ...webhook.Secret) (*Generic, error) {
	v, err := webhook.NewVerifier(secrets...)
	if err != nil {
		return nil, err
	}
	for app, game := range apps {
		if app == "" || !relay.GamePattern.MatchString(game) {
			return nil, fmt.Errorf("PROVIDER_CONFIG generic.apps: %q routes to %q; want an app id and a game name", app, game)
		}
	}
	return &Generic{verifier: v, apps: apps}, nil
}

// BindSandbox adds secrets that verify sandbox notifications only (INGEST_SANDBOX_SECRETS);
// none of them may also be a production secret.
func (g *Generic) BindSandbox(secrets ...webhook.Secret) error {
	if len(secrets) == 0 {
		return nil
	}
	for _, s := range secrets {
		if g.verifier.Holds(s) {
			return errors.New("INGEST_SANDBOX_SECRETS: a sandbox-bound secret is also one of INGEST_SECRETS; bind each secret to one use")
		}
	}
	v, err := webhook.NewVerifier(secrets...)
	if err != nil {
		return err
	}
	g.sandbox = v
	return nil
}

// Name implements Provider.
func (*Generic) Name() string { return "generic" }

// MediaType implements Provider.
func (*Generic) MediaType() string { return "application/json" }

// genericNotification is the generic format: a payment ("status":"paid") or one refund of it
// ("status":"refunded", with refund_id, refund_amount and refunded_at), each carrying the
// payment's facts. The merchant account is app_id.
type genericNotification struct {
	Provider      string            `json:"provider"`
	OrderID       string            `json:"order_id"`
	TransactionID string            `json:"transaction_id"`
	Amount        string            `json:"amount"`
	Currency      string            `json:"currency"`
	Status        string            `json:"status"`
	PaidAt        string            `json:"paid_at"`
	AppID         string            `json:"app_id"`
	Metadata      map[string]string `json:"metadata"`
	RefundID      string            `json:"refund_id"`
	RefundAmount  string            `json:"refund_amount"`
	RefundedAt    string            `json:"refunded_at"`
	// Environment is "production" (the default when absent) or "sandbox". Under a secret bound
	// to the sandbox it may only be absent or "sandbox".
	Environment *string `json:"environment"`
}

// The generic format's statuses.
const (
	GenericPaid     = "paid"
	GenericRefunded = "refunded"
)

// Parse implements Provider.
func (g *Generic) Parse(h http.Header, body []byte, now time.Time) (relay.Result, error) {
	id, ts, sig := h.Get(webhook.HeaderID), h.Get(webhook.HeaderTimestamp), h.Get(webhook.HeaderSignature)
	sandboxBound := false
	if err := g.verifier.Verify(id, ts, sig, body, now); err != nil {
		if g.sandbox == nil || g.sandbox.Verify(id, ts, sig, body, now) != nil {
			return relay.Result{}, refuse(http.StatusUnauthorized, "signature verification failed: %v", err)
		}
		sandboxBound = true
	}
	var gn genericNotification
	if err := json.Unmarshal(body, &gn); err != nil {
		return relay.Result{}, &Refusal{Code: http.StatusBadRequest, Reason: "malformed JSON: " + err.Error(), Field: "body"}
	}
	env := relay.EnvProduction
	switch {
	case gn.Environment != nil:
		e, err := relay.ParseEnvironment(*gn.Environment)
		if err != nil {
			return relay.Result{}, asRefusal(err)
		}
		env = e
	case sandboxBound:
		env = relay.EnvSandbox
	}
	if sandboxBound && env != relay.EnvSandbox {
		return relay.Result{}, &Refusal{Code: http.StatusForbidden, Field: "environment",
			Reason: "environment: signed with a secret bound to the sandbox (INGEST_SANDBOX_SECRETS), which cannot send a production notification"}
	}
	if gn.Provider == "" {
		gn.Provider = "generic"
	}
	if _, native := nativeProviders[gn.Provider]; native {
		return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "provider",
			Reason: "provider: " + gn.Provider + " notifications go to ?provider=" + gn.Provider + " in its own format"}
	}
	amount, err := relay.ParseAmount(gn.Amount, gn.Currency)
	if err != nil {
		return relay.Result{}, asRefusal(err)
	}
	paidAt, err := time.Parse(time.RFC3339Nano, gn.PaidAt)
	if err != nil {
		return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "paid_at", Reason: "paid_at: want an RFC 3339 time such as 2026-11-24T12:00:00+08:00"}
	}
	r := relay.Result{Type: relay.TypePaymentSucceeded, Payment: relay.Payment{
		Provider: gn.Provider, Environment: env, Merchant: gn.AppID, OrderID: gn.OrderID, TransactionID: gn.TransactionID, AmountMinor: amount,
		Currency: gn.Currency, PaidAt: paidAt, AppID: gn.AppID, Metadata: gn.Metadata, Game: g.apps[gn.AppID],
	}}
	switch gn.Status {
	case GenericPaid:
	case GenericRefunded:
		refund, err := relay.ParseAmount(gn.RefundAmount, gn.Currency)
		if err != nil {
			fe := asRefusal(err)
			fe.Field, fe.Reason = "refund_amount", "refund_amount: "+fe.Reason
			return relay.Result{}, fe
		}
		at, err := time.Parse(time.RFC3339Nano, gn.RefundedAt)
		if err != nil {
			return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "refunded_at", Reason: "refunded_at: want an RFC 3339 time"}
		}
		r.Type = relay.TypePaymentRefunded
		r.Refund = &relay.RefundFacts{ID: gn.RefundID, AmountMinor: refund, RefundedAt: at}
	default:
		return relay.Result{}, &Refusal{Code: http.StatusUnprocessableEntity, Field: "status",
			Reason: fmt.Sprintf("status %.20q: want %q or %q", gn.Status, GenericPaid, GenericRefunded)}
	}
	if gn.AppID != "" && r.Payment.Game == "" {
		return relay.Result{}, unrouted("generic app_id %.64q maps to no game (PROVIDER_CONFIG generic.apps)", gn.AppID)
	}
	if err := r.Validate(); err != nil {
		return relay.Result{}, asRefusal(err)
	}
	return r, nil
}

// nativeProviders have formats of their own; the generic format may not claim their names,
// so that their payments' ids cannot be forged through it.
var nativeProviders = map[string]bool{"alipay": true, "wechatpay": true, "apple": true, "stripe": true}

type errorBody struct {
	Error  string `json:"error"`
	Reason string `json:"reason,omitempty"`
	Field  string `json:"field,omitempty"`
}

// Ack implements Provider.
func (*Generic) Ack(w http.ResponseWriter, res relay.IngestResult) {
	writeJSON(w, http.StatusOK, struct {
		PaymentID      string `json:"payment_id"`
		NotificationID string `json:"notification_id,omitempty"`
		Duplicate      bool   `json:"duplicate"`
		State          string `json:"state,omitempty"`
	}{res.PaymentID, res.NotificationID, res.Duplicate, string(res.State)})
}

// Refuse implements Provider.
func (*Generic) Refuse(w http.ResponseWriter, r *Refusal) {
	writeJSON(w, r.Code, errorBody{Error: http.StatusText(r.Code), Reason: r.Reason, Field: r.Field})
}
