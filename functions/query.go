package functions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
)

// Querier is a provider payrelay can ask about an order (补单) and its refunds: Alipay, WeChat
// Pay, the App Store (a transactionId) and Google Play (an order id or a purchase token).
// QueryRefund asks for one refund by the merchant's refund number (Alipay's out_request_no,
// WeChat Pay's out_refund_no): neither provider lists an order's refunds.
type Querier interface {
	Query(ctx context.Context, merchant, orderID string) (provider.QueryAnswer, error)
	QueryRefund(ctx context.Context, merchant, orderID, refundNo string) (provider.RefundAnswer, error)
}

var (
	_ Querier = (*provider.Alipay)(nil)
	_ Querier = (*provider.WechatPay)(nil)
	_ Querier = (*provider.Apple)(nil)
	_ Querier = (*provider.GooglePlay)(nil)
)

// MaxQueryRefunds bounds the refund numbers one query may name.
const MaxQueryRefunds = 20

// queryAnswer is the Admin API's answer to an order query: what the provider reported and
// what payrelay did with it.
type queryAnswer struct {
	Provider string `json:"provider"`
	Merchant string `json:"merchant"`
	OrderID  string `json:"order_id"`
	// Environment is the order's, as the provider's answer (the app queried) says.
	Environment string `json:"environment,omitempty"`
	Reported    string `json:"provider_reported"`
	// Action: "ingested" (stored now and relayed), "already stored" (nothing changed), or
	// "nothing to relay" (not paid, or no such trade).
	Action string `json:"action"`
	// Refunds are what was found of the order's refunds, each relayed after the payment.
	Refunds []refundFound `json:"refunds,omitempty"`
	// RefundsUnknown says the provider reports the order refunded without naming its refunds:
	// ask again with their numbers (refund_ids).
	RefundsUnknown string `json:"refunds_unknown,omitempty"`
	Payment        any    `json:"payment,omitempty"`
}

// refundFound is one refund a query found.
type refundFound struct {
	RefundID string `json:"refund_id"`
	Reported string `json:"provider_reported"`
	// Action: "ingested", "already stored", "not relayed" (not succeeded, or refused: Reason).
	Action string `json:"action"`
	Reason string `json:"reason,omitempty"`
}

// queryRequest is an order query, from an operator (Admin) or a game server (Query).
type queryRequest struct {
	Provider string `json:"provider"`
	Merchant string `json:"merchant"`
	OrderID  string `json:"order_id"`
	Reason   string `json:"reason"`
	// RefundIDs are refund numbers to look up too (Alipay out_request_no, WeChat Pay
	// out_refund_no), at most MaxQueryRefunds.
	RefundIDs []string `json:"refund_ids,omitempty"`
}

// readAdminJSON reads an operator's state-changing API request: a bounded application/json
// POST, refused when another site may have sent it. It answers a refusal itself.
func (h *Handler) readAdminJSON(w http.ResponseWriter, r *http.Request, op string) ([]byte, bool) {
	raw, refusal := readBody(w, r, MaxAdminBody, "application/json")
	if refusal != nil {
		writeJSON(w, refusal.Code, errorBody{Error: http.StatusText(refusal.Code), Reason: refusal.Reason})
		return nil, false
	}
	if reason := crossSite(r); reason != "" {
		h.Logger.WarnContext(h.context(r), "admin refused a cross-site request", "operator", op, "reason", reason)
		writeJSON(w, http.StatusForbidden, errorBody{Error: "forbidden", Reason: reason})
		return nil, false
	}
	return raw, true
}

// queryIngestPayment ingests the payment a query found, or, when payrelay already holds it,
// compares the facts both sides state for certain and changes nothing.
func (h *Handler) queryIngestPayment(ctx context.Context, log *slog.Logger, in relay.Result, out *queryAnswer) (int, *errorBody) {
	// Already notified: compare the facts both sides state for certain (amount, the provider's
	// transaction id) and change nothing. The query's time (Alipay's send_pay_date) is not the
	// notification's gmt_payment to the second, so it is not held against it.
	id := relay.PaymentID(in.Payment.Environment, out.Provider, in.Payment.Merchant, in.Payment.OrderID)
	if p, err := h.Service.Show(ctx, id); err == nil && p.Paid() != nil && in.Type == relay.TypePaymentSucceeded {
		q := in.Payment
		if p.AmountMinor != q.AmountMinor || p.Currency != q.Currency || p.TransactionID != "" && q.TransactionID != "" && p.TransactionID != q.TransactionID {
			log.ErrorContext(ctx, "order query: the provider's answer contradicts what is stored", "event", "conflict", "payment_id", id,
				"stored_minor", p.AmountMinor, "reported_minor", q.AmountMinor)
			return http.StatusConflict, &errorBody{Error: "conflict", Reason: "the provider reports other facts (amount or transaction) than payrelay stored for this order"}
		}
		out.Action, out.Payment = "already stored", paymentView(p)
		return http.StatusOK, nil
	}
	in.Via = relay.ViaQuery
	res, err := h.Service.Ingest(ctx, in)
	switch {
	case errors.Is(err, relay.ErrFactsDiffer):
		log.ErrorContext(ctx, "order query: the provider's answer contradicts what is stored", "event", "conflict", "payment_id", res.PaymentID)
		return http.StatusConflict, &errorBody{Error: "conflict", Reason: "the provider reports other facts (amount, ...) than payrelay stored for this order"}
	case err != nil:
		log.ErrorContext(ctx, "order query: ingest failed", "event", "ingest_failed", "payment_id", res.PaymentID, "error", err.Error())
		return http.StatusServiceUnavailable, &errorBody{Error: "temporarily unavailable", Reason: "retry"}
	}
	out.Action = "already stored"
	if !res.Duplicate {
		out.Action = "ingested"
		log.InfoContext(ctx, "notification received", "event", "notification_received", "via", "query", "payment_id", res.PaymentID,
			"notification_id", res.NotificationID, "type", string(in.Type), "state", string(res.State))
	}
	if p, err := h.Service.Show(ctx, res.PaymentID); err == nil {
		out.Payment = paymentView(p)
	}
	return http.StatusOK, nil
}

// queryable lists the configured providers whose orders can be queried, sorted.
func (h *Handler) queryable() []string {
	var out []string
	for name, p := range h.Providers {
		if _, ok := p.(Querier); ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// adminQuery asks a provider about an order and, if it is paid, ingests it through the same
// path as its notification: idempotent, an order already stored changes nothing.
//
//	POST /api/query {"provider":"alipay","merchant":"<app_id>","order_id":"...","reason":"..."}
func (h *Handler) adminQuery(w http.ResponseWriter, r *http.Request, op string) {
	raw, ok := h.readAdminJSON(w, r, op)
	if !ok {
		return
	}
	var q queryRequest
	if err := json.Unmarshal(raw, &q); err != nil || strings.TrimSpace(q.Reason) == "" || len(q.Reason) > 500 {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request",
			Reason: `want {"provider":"alipay","merchant":"<app id>","order_id":"...","reason":"why, 1-500 characters"}`})
		return
	}
	code, out, eb := h.queryOrder(h.context(r), op, q.Provider, q.Merchant, q.OrderID, q.Reason, "", q.RefundIDs...)
	if eb != nil {
		writeJSON(w, code, eb)
		return
	}
	writeJSON(w, code, out)
}

// GameQuery is the Query function: a game server asks payrelay to query one of its own game's
// orders (补单), as an operator can through Admin. The function is private: Cloud Run lets only
// the identities terraform grants (each game's query_callers) reach it, and QUERY_CALLERS maps
// each to its one game, so a game server can neither query another game's orders nor replay or
// cancel anything.
//
//	POST / {"provider":"alipay","merchant":"<app id>","order_id":"...","reason":"player 1001 reports no items"}
func (h *Handler) GameQuery(w http.ResponseWriter, r *http.Request) {
	if !h.enter(w) {
		return
	}
	defer h.inflight.Done()
	ctx := h.context(r)
	caller := operator(r)
	game, ok := h.QueryCallers[caller]
	if !ok {
		h.Logger.WarnContext(ctx, "query refused: the caller is no game server's identity", "caller", caller)
		writeJSON(w, http.StatusForbidden, errorBody{Error: "forbidden", Reason: "this identity may not query orders (terraform: games.<game>.query_callers)"})
		return
	}
	raw, refusal := readBody(w, r, MaxAdminBody, "application/json")
	if refusal != nil {
		writeJSON(w, refusal.Code, errorBody{Error: http.StatusText(refusal.Code), Reason: refusal.Reason})
		return
	}
	var q queryRequest
	if err := json.Unmarshal(raw, &q); err != nil || len(q.Reason) > 500 {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request",
			Reason: `want {"provider":"alipay","merchant":"<app id>","order_id":"...","reason":"optional, at most 500 characters"}`})
		return
	}
	if q.Reason == "" {
		q.Reason = "game server query"
	}
	code, out, eb := h.queryOrder(ctx, "game "+game+" ("+caller+")", q.Provider, q.Merchant, q.OrderID, q.Reason, game, q.RefundIDs...)
	if eb != nil {
		writeJSON(w, code, eb)
		return
	}
	writeJSON(w, code, out)
}

// formQuery is the dashboard's order query: the same, answered as a page.
func (h *Handler) formQuery(w http.ResponseWriter, r *http.Request) {
	reason, ok := h.readForm(w, r)
	if !ok {
		return
	}
	f := r.PostForm
	code, out, eb := h.queryOrder(h.context(r), operator(r), f.Get("provider"), strings.TrimSpace(f.Get("merchant")), strings.TrimSpace(f.Get("order")), reason, "")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	w.WriteHeader(code)
	queryPage.Execute(w, struct {
		Answer queryAnswer
		Err    *errorBody
		ID     string
	}{out, eb, relay.PaymentID(out.environment(), out.Provider, out.Merchant, out.OrderID)})
}

// environment is the answer's environment; production when the provider's answer named none
// (no such trade), which only names the page a link would lead to.
func (a queryAnswer) environment() relay.Environment {
	if a.Environment == "" {
		return relay.EnvProduction
	}
	return relay.Environment(a.Environment)
}

var queryPage = template.Must(template.New("query").Funcs(funcs).Parse(`<!doctype html><html><head><meta charset="utf-8"><title>payrelay: order query</title>` + style + `</head><body>
<h1>Order query</h1>
{{if .Err}}<p class="failed" id="query-error">{{.Err.Error}}: {{.Err.Reason}}</p>
{{else}}<table id="query-answer"><tr><th>provider</th><td>{{.Answer.Provider}}</td></tr><tr><th>merchant</th><td>{{.Answer.Merchant}}</td></tr>
<tr><th>order</th><td>{{.Answer.OrderID}}</td></tr><tr><th>the provider reported</th><td>{{.Answer.Reported}}</td></tr>
<tr><th>payrelay</th><td>{{.Answer.Action}}</td></tr></table>
{{if .Answer.Payment}}<p><a href="payments/{{path .ID}}">open the payment</a></p>{{end}}{{end}}
<p><a href="./">back to the overview</a></p></body></html>`))

// queryOrder asks the provider and ingests what it reports paid. A non-empty game restricts
// the query to that game's orders (a game server's). It returns the HTTP status and either the
// answer or the refusal.
func (h *Handler) queryOrder(ctx context.Context, op, prov, merchant, orderID, reason, game string, refundIDs ...string) (int, queryAnswer, *errorBody) {
	log := h.Logger.With("operator", op, "provider", prov, "merchant", merchant, "order_id", orderID, "reason", reason)
	out := queryAnswer{Provider: prov, Merchant: merchant, OrderID: orderID}
	if prov == "" || merchant == "" || orderID == "" {
		return http.StatusUnprocessableEntity, out, &errorBody{Error: "invalid request", Reason: "provider, merchant and order id are required"}
	}
	if len(refundIDs) > MaxQueryRefunds {
		return http.StatusUnprocessableEntity, out, &errorBody{Error: "invalid request", Field: "refund_ids", Reason: fmt.Sprintf("at most %d refund numbers", MaxQueryRefunds)}
	}
	querier, ok := h.Providers[prov].(Querier)
	if !ok {
		return http.StatusUnprocessableEntity, out, &errorBody{Error: "cannot query", Field: "provider",
			Reason: "provider " + prov + " is not configured or cannot be queried (order queries: alipay, wechatpay)"}
	}
	notYours := &errorBody{Error: "forbidden", Reason: "merchant " + merchant + " does not sell for game " + game}
	if game != "" && !slices.Contains(h.ProviderConfig.MerchantGames(prov, merchant), game) {
		log.WarnContext(ctx, "query refused: another game's merchant", "game", game)
		return http.StatusForbidden, out, notYours
	}
	ans, err := querier.Query(ctx, merchant, orderID)
	var qe *provider.QueryError
	switch {
	case errors.As(err, &qe):
		log.WarnContext(ctx, "order query refused by the provider", "error", qe.Reason)
		return http.StatusBadGateway, out, &errorBody{Error: "the provider refused the query", Reason: qe.Reason}
	case err != nil:
		log.ErrorContext(ctx, "order query failed", "error", err.Error())
		return http.StatusServiceUnavailable, out, &errorBody{Error: "temporarily unavailable", Reason: "the provider did not answer; retry"}
	}
	out.Reported, out.Action = ans.Reported, "nothing to relay"
	if game != "" && ans.Result != nil && ans.Result.Payment.Game != game {
		// A merchant selling for several games (a WeChat Pay merchant's apps): not this one's.
		log.WarnContext(ctx, "query refused: the order belongs to another game", "game", game)
		return http.StatusForbidden, queryAnswer{Provider: prov, Merchant: merchant, OrderID: orderID}, notYours
	}
	out.RefundsUnknown = ans.RefundsUnknown
	if ans.Result != nil {
		out.Environment = string(ans.Result.Payment.Environment)
		if code, eb := h.queryIngestPayment(ctx, log, *ans.Result, &out); eb != nil {
			return code, out, eb
		}
	}
	// The refunds: those the answer found, then those asked for by number, each after the
	// payment (the core holds a refund behind its payment anyway).
	refunds := slices.Clone(ans.Refunds)
	for _, no := range refundIDs {
		ra, err := querier.QueryRefund(ctx, merchant, orderID, no)
		switch {
		case errors.As(err, &qe):
			out.Refunds = append(out.Refunds, refundFound{RefundID: no, Action: "not relayed", Reason: qe.Reason})
			continue
		case err != nil:
			log.ErrorContext(ctx, "refund query failed", "refund_no", no, "error", err.Error())
			return http.StatusServiceUnavailable, out, &errorBody{Error: "temporarily unavailable", Reason: "the provider did not answer; retry"}
		case ra.Result == nil:
			out.Refunds = append(out.Refunds, refundFound{RefundID: no, Reported: ra.Reported, Action: "not relayed", Reason: "the refund has not succeeded"})
			continue
		}
		refunds = append(refunds, *ra.Result)
	}
	for _, rf := range refunds {
		found := refundFound{RefundID: rf.Refund.ID, Reported: "refunded", Action: "ingested"}
		if game != "" && rf.Payment.Game != "" && rf.Payment.Game != game {
			return http.StatusForbidden, queryAnswer{Provider: prov, Merchant: merchant, OrderID: orderID}, notYours
		}
		rf.Via = relay.ViaQuery
		res, err := h.Service.Ingest(ctx, rf)
		var over *relay.ErrOverRefund
		var fe *relay.FieldError
		switch {
		case errors.Is(err, relay.ErrFactsDiffer), errors.As(err, &over), errors.As(err, &fe):
			log.ErrorContext(ctx, "order query: a refund the provider reports cannot be recorded", "event", "conflict", "payment_id", res.PaymentID, "refund_id", rf.Refund.ID, "error", err.Error())
			found.Action, found.Reason = "not relayed", err.Error()
		case err != nil:
			log.ErrorContext(ctx, "order query: ingest failed", "event", "ingest_failed", "payment_id", res.PaymentID, "error", err.Error())
			return http.StatusServiceUnavailable, out, &errorBody{Error: "temporarily unavailable", Reason: "retry"}
		case res.Duplicate || res.Covered:
			found.Action = "already stored"
		default:
			log.InfoContext(ctx, "notification received", "event", "notification_received", "via", "query", "payment_id", res.PaymentID,
				"notification_id", res.NotificationID, "type", string(rf.Type), "state", string(res.State))
		}
		if out.Environment == "" {
			out.Environment = string(rf.Payment.Environment)
		}
		out.Refunds = append(out.Refunds, found)
	}
	if len(refunds) > 0 {
		id := relay.PaymentID(refunds[0].Payment.Environment, prov, refunds[0].Payment.Merchant, orderID)
		if p, err := h.Service.Show(ctx, id); err == nil {
			out.Payment = paymentView(p)
		}
	}
	// Every operator action is logged with who and why.
	log.WarnContext(ctx, "operator query", "provider_reported", ans.Reported, "action", out.Action)
	return http.StatusOK, out, nil
}
