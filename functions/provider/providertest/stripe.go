package providertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// StripeAPI is a stand-in for the parts of Stripe's API payrelay reads, built to Stripe's API
// reference: bearer-key authentication (401 with an invalid_request_error otherwise), list
// objects ({"object":"list","data":[...],"has_more":...}, newest first, limit and
// starting_after), and the list filters payrelay uses:
//
//	GET /v1/refunds?charge=                                   Refunds
//	GET /v1/events?delivery_success=false&created[gte]=&types[]=   Events (undelivered ones)
//	GET /v1/invoice_payments?payment[type]=payment_intent&payment[payment_intent]=
//	GET /v1/checkout/sessions?payment_intent=
//
// FailNext answers the next requests 500 or 429 (rate_limit_error), as Stripe does.
type StripeAPI struct {
	*httptest.Server
	Key string

	mu              sync.Mutex
	refunds         map[string][]map[string]any // by charge, oldest first
	events          []stripeStoredEvent         // oldest first
	invoicePayments map[string]string           // PaymentIntent -> invoice
	sessions        map[string]map[string]any   // PaymentIntent -> session
	failNext        []int
	requests        []string
}

type stripeStoredEvent struct {
	event     map[string]any
	delivered bool
}

// NewStripeAPI starts the stand-in, accepting key.
func NewStripeAPI(key string) *StripeAPI {
	s := &StripeAPI{Key: key, refunds: map[string][]map[string]any{}, invoicePayments: map[string]string{}, sessions: map[string]map[string]any{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// AddRefund records a refund of charge.
func (s *StripeAPI) AddRefund(charge string, refund map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refunds[charge] = append(s.refunds[charge], refund)
}

// AddEvent records an event (StripeEvent's JSON); delivered says whether its webhook
// delivery succeeded.
func (s *StripeAPI) AddEvent(event []byte, delivered bool) {
	var m map[string]any
	if err := json.Unmarshal(event, &m); err != nil {
		panic(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, stripeStoredEvent{event: m, delivered: delivered})
}

// AddInvoicePayment records that paymentIntent paid invoice.
func (s *StripeAPI) AddInvoicePayment(paymentIntent, invoice string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invoicePayments[paymentIntent] = invoice
}

// AddSession records a Checkout Session (StripeSession) under its PaymentIntent.
func (s *StripeAPI) AddSession(session map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[session["payment_intent"].(string)] = session
}

// FailNext makes the next requests answer these statuses (500, 429), one each.
func (s *StripeAPI) FailNext(codes ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, codes...)
}

// Requests lists the requests answered so far, as "METHOD path?query".
func (s *StripeAPI) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

func stripeError(w http.ResponseWriter, code int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"type": typ, "message": msg}})
}

func (s *StripeAPI) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, r.Method+" "+r.URL.RequestURI())
	if r.Header.Get("Authorization") != "Bearer "+s.Key {
		stripeError(w, http.StatusUnauthorized, "invalid_request_error", "Invalid API Key provided")
		return
	}
	if len(s.failNext) > 0 {
		code := s.failNext[0]
		s.failNext = s.failNext[1:]
		if code == http.StatusTooManyRequests {
			stripeError(w, code, "rate_limit_error", "Too many requests hit the API too quickly.")
		} else {
			stripeError(w, code, "api_error", "Something went wrong on Stripe's end.")
		}
		return
	}
	if r.Method != http.MethodGet {
		stripeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "the stand-in serves GET only")
		return
	}
	q := r.URL.Query()
	var items []map[string]any // newest first
	switch r.URL.Path {
	case "/v1/refunds":
		if q.Get("charge") == "" {
			stripeError(w, http.StatusBadRequest, "invalid_request_error", "the stand-in lists refunds by charge")
			return
		}
		for _, rf := range s.refunds[q.Get("charge")] {
			items = append([]map[string]any{rf}, items...)
		}
	case "/v1/events":
		since, _ := strconv.ParseInt(q.Get("created[gte]"), 10, 64)
		types := q["types[]"]
		for _, e := range s.events {
			created, _ := e.event["created"].(float64)
			if q.Get("delivery_success") == "false" && e.delivered || int64(created) < since ||
				len(types) > 0 && !slices.Contains(types, e.event["type"].(string)) {
				continue
			}
			items = append([]map[string]any{e.event}, items...)
		}
	case "/v1/invoice_payments":
		if q.Get("payment[type]") != "payment_intent" || q.Get("payment[payment_intent]") == "" {
			stripeError(w, http.StatusBadRequest, "invalid_request_error", "the stand-in lists invoice payments by payment_intent")
			return
		}
		if in, ok := s.invoicePayments[q.Get("payment[payment_intent]")]; ok {
			items = append(items, map[string]any{"id": "inpay_" + in, "object": "invoice_payment", "invoice": in, "status": "paid",
				"payment": map[string]any{"type": "payment_intent", "payment_intent": q.Get("payment[payment_intent]")}})
		}
	case "/v1/checkout/sessions":
		if cs, ok := s.sessions[q.Get("payment_intent")]; ok {
			items = append(items, cs)
		}
	default:
		stripeError(w, http.StatusNotFound, "invalid_request_error", "Unrecognized request URL (GET: "+r.URL.Path+")")
		return
	}
	// Pagination: limit (default 10, at most 100) after starting_after.
	if after := q.Get("starting_after"); after != "" {
		for i, it := range items {
			if it["id"] == after {
				items = items[i+1:]
				break
			}
		}
	}
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 || limit > 100 {
		limit = 10
	}
	more := len(items) > limit
	if more {
		items = items[:limit]
	}
	if items == nil {
		items = []map[string]any{}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"object": "list", "url": r.URL.Path, "has_more": more, "data": items})
}

// StripeAPIRefund is a refund as the Refunds API returns it.
func StripeAPIRefund(id, charge, paymentIntent string, amount int64, currency, status string, at time.Time) map[string]any {
	return map[string]any{"id": id, "object": "refund", "amount": amount, "charge": charge, "payment_intent": paymentIntent,
		"currency": strings.ToLower(currency), "status": status, "created": at.Unix(), "metadata": map[string]string{}}
}

// StripeInvoice is a subscription's paid invoice in the layout of API version apiVersion: since
// 2025-03-31.basil under parent.subscription_details, before it on the invoice itself.
func StripeInvoice(id, subscription, paymentIntent string, amountPaid int64, currency, billingReason string, md map[string]string, paidAt time.Time, apiVersion string) map[string]any {
	in := map[string]any{"id": id, "object": "invoice", "status": "paid", "amount_paid": amountPaid, "currency": strings.ToLower(currency),
		"billing_reason": billingReason, "created": paidAt.Unix(), "status_transitions": map[string]any{"paid_at": paidAt.Unix()},
		"lines": map[string]any{"object": "list", "data": []map[string]any{{"object": "line_item", "amount": amountPaid,
			"period": map[string]any{"start": paidAt.Unix(), "end": paidAt.AddDate(0, 1, 0).Unix()}}}}}
	if apiVersion >= "2025-03-31" {
		in["parent"] = map[string]any{"type": "subscription_details", "subscription_details": map[string]any{"subscription": subscription, "metadata": md}}
	} else {
		in["subscription"], in["payment_intent"] = subscription, paymentIntent
		in["subscription_details"] = map[string]any{"metadata": md}
	}
	return in
}

// StripeEventAt is StripeEvent rendered in apiVersion, with its id.
func StripeEventAt(id, typ string, object map[string]any, at time.Time, apiVersion string, livemode bool) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "object": "event", "api_version": apiVersion,
		"created": at.Unix(), "livemode": livemode, "pending_webhooks": 1, "type": typ, "data": map[string]any{"object": object}})
	return b
}
