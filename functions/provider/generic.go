package provider

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
)

// Generic is the generic format: a JSON payment signed the Standard Webhooks way.
type Generic struct {
	verifier *webhook.Verifier
}

var _ Provider = (*Generic)(nil)

// NewGeneric verifies with any of secrets (several, for rotation).
func NewGeneric(secrets ...webhook.Secret) (*Generic, error) {
	v, err := webhook.NewVerifier(secrets...)
	if err != nil {
		return nil, err
	}
	return &Generic{verifier: v}, nil
}

// Name implements Provider.
func (*Generic) Name() string { return "generic" }

// MediaType implements Provider.
func (*Generic) MediaType() string { return "application/json" }

type genericPayment struct {
	Provider      string            `json:"provider"`
	OrderID       string            `json:"order_id"`
	TransactionID string            `json:"transaction_id"`
	Amount        string            `json:"amount"`
	Currency      string            `json:"currency"`
	Status        string            `json:"status"`
	PaidAt        string            `json:"paid_at"`
	AppID         string            `json:"app_id"`
	Metadata      map[string]string `json:"metadata"`
}

// Parse implements Provider.
func (g *Generic) Parse(h http.Header, body []byte, now time.Time) (relay.Payment, bool, error) {
	if err := g.verifier.Verify(h.Get(webhook.HeaderID), h.Get(webhook.HeaderTimestamp), h.Get(webhook.HeaderSignature), body, now); err != nil {
		return relay.Payment{}, false, refuse(http.StatusUnauthorized, "signature verification failed: %v", err)
	}
	var gp genericPayment
	if err := json.Unmarshal(body, &gp); err != nil {
		return relay.Payment{}, false, &Refusal{Code: http.StatusBadRequest, Reason: "malformed JSON: " + err.Error(), Field: "body"}
	}
	if gp.Provider == "" {
		gp.Provider = "generic"
	}
	if gp.Provider == "alipay" || gp.Provider == "wechatpay" {
		return relay.Payment{}, false, &Refusal{Code: http.StatusUnprocessableEntity, Field: "provider",
			Reason: "provider: " + gp.Provider + " notifications go to ?provider=" + gp.Provider + " in its own format"}
	}
	amount, err := relay.ParseAmount(gp.Amount, gp.Currency)
	if err != nil {
		return relay.Payment{}, false, asRefusal(err)
	}
	paidAt, err := time.Parse(time.RFC3339Nano, gp.PaidAt)
	if err != nil {
		return relay.Payment{}, false, &Refusal{Code: http.StatusUnprocessableEntity, Field: "paid_at", Reason: "paid_at: want an RFC 3339 time such as 2026-11-24T12:00:00+08:00"}
	}
	p := relay.Payment{
		Provider: gp.Provider, OrderID: gp.OrderID, TransactionID: gp.TransactionID, AmountMinor: amount,
		Currency: gp.Currency, Status: gp.Status, PaidAt: paidAt, AppID: gp.AppID, Metadata: gp.Metadata,
	}
	if err := p.Validate(); err != nil {
		return relay.Payment{}, false, asRefusal(err)
	}
	return p, true, nil
}

type errorBody struct {
	Error  string `json:"error"`
	Reason string `json:"reason,omitempty"`
	Field  string `json:"field,omitempty"`
}

// Ack implements Provider.
func (*Generic) Ack(w http.ResponseWriter, paymentID string, duplicate bool) {
	writeJSON(w, http.StatusOK, struct {
		PaymentID string `json:"payment_id"`
		Duplicate bool   `json:"duplicate"`
	}{paymentID, duplicate})
}

// Refuse implements Provider.
func (*Generic) Refuse(w http.ResponseWriter, r *Refusal) {
	writeJSON(w, r.Code, errorBody{Error: http.StatusText(r.Code), Reason: r.Reason, Field: r.Field})
}
