package providertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
)

// StripeEvent is a live-mode event of type with object as Stripe sends it (API version
// 2024-06-20).
func StripeEvent(typ string, object map[string]any, at time.Time) []byte {
	return stripeEvent(typ, object, at, true)
}

// StripeTestEvent is StripeEvent in test mode (livemode false): a sandbox payment.
func StripeTestEvent(typ string, object map[string]any, at time.Time) []byte {
	return stripeEvent(typ, object, at, false)
}

func stripeEvent(typ string, object map[string]any, at time.Time, livemode bool) []byte {
	b, _ := json.Marshal(map[string]any{"id": "evt_1Q" + fmt.Sprint(at.UnixNano()), "object": "event", "api_version": "2024-06-20",
		"created": at.Unix(), "livemode": livemode, "pending_webhooks": 1, "type": typ, "data": map[string]any{"object": object}})
	return b
}

// StripeSession is a Checkout Session of amount (minor units) for order.
func StripeSession(order, paymentIntent string, amount int64, currency, paymentStatus string) map[string]any {
	return map[string]any{"id": "cs_test_" + order, "object": "checkout.session", "client_reference_id": order,
		"payment_status": paymentStatus, "payment_intent": paymentIntent, "amount_total": amount, "currency": strings.ToLower(currency),
		"mode": "payment", "status": "complete", "metadata": map[string]string{}}
}

// StripeCharge is the charge of a PaymentIntent, refunded refunded in all, the newest refund
// refundID (none when "").
func StripeCharge(paymentIntent, order string, amount, refunded int64, currency, refundID string, at time.Time) map[string]any {
	c := map[string]any{"id": "ch_" + paymentIntent, "object": "charge", "payment_intent": paymentIntent, "amount": amount,
		"amount_refunded": refunded, "currency": strings.ToLower(currency), "refunded": refunded == amount,
		"metadata": map[string]string{"order_id": order}}
	if refundID != "" {
		c["refunds"] = map[string]any{"object": "list", "data": []map[string]any{{"id": refundID, "object": "refund", "created": at.Unix()}}}
	}
	return c
}

// StripeRefund is a refund of amount of a PaymentIntent.
func StripeRefund(id, paymentIntent, order string, amount int64, currency, status string, at time.Time) map[string]any {
	return map[string]any{"id": id, "object": "refund", "amount": amount, "charge": "ch_" + paymentIntent, "payment_intent": paymentIntent,
		"currency": strings.ToLower(currency), "status": status, "created": at.Unix(), "metadata": map[string]string{"order_id": order}}
}

// SignStripe returns the Stripe-Signature header of body at t, one v1 per secret.
func SignStripe(body []byte, t time.Time, secrets ...string) http.Header {
	parts := []string{fmt.Sprintf("t=%d", t.Unix())}
	for _, s := range secrets {
		parts = append(parts, "v1="+provider.StripeSign(s, t.Unix(), body))
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set(provider.HeaderStripeSignature, strings.Join(parts, ","))
	return h
}
