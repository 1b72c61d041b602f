package functions

import (
	"context"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"slices"
	"strings"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
)

// Querier is a provider payrelay can ask about an order (补单): Alipay and WeChat Pay.
type Querier interface {
	Query(ctx context.Context, merchant, orderID string) (provider.QueryAnswer, error)
}

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
	Action  string `json:"action"`
	Payment any    `json:"payment,omitempty"`
}

// queryRequest is an order query, from an operator (Admin) or a game server (Query).
type queryRequest struct {
	Provider string `json:"provider"`
	Merchant string `json:"merchant"`
	OrderID  string `json:"order_id"`
	Reason   string `json:"reason"`
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
	code, out, eb := h.queryOrder(h.context(r), op, q.Provider, q.Merchant, q.OrderID, q.Reason, "")
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
	code, out, eb := h.queryOrder(ctx, "game "+game+" ("+caller+")", q.Provider, q.Merchant, q.OrderID, q.Reason, game)
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
func (h *Handler) queryOrder(ctx context.Context, op, prov, merchant, orderID, reason, game string) (int, queryAnswer, *errorBody) {
	log := h.Logger.With("operator", op, "provider", prov, "merchant", merchant, "order_id", orderID, "reason", reason)
	out := queryAnswer{Provider: prov, Merchant: merchant, OrderID: orderID}
	if prov == "" || merchant == "" || orderID == "" {
		return http.StatusUnprocessableEntity, out, &errorBody{Error: "invalid request", Reason: "provider, merchant and order id are required"}
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
	if ans.Result != nil {
		out.Environment = string(ans.Result.Payment.Environment)
		// Already notified: compare the facts both sides state for certain (amount, the provider's
		// transaction id) and change nothing. The query's time (Alipay's send_pay_date) is not
		// the notification's gmt_payment to the second, so it is not held against it.
		id := relay.PaymentID(ans.Result.Payment.Environment, prov, ans.Result.Payment.Merchant, ans.Result.Payment.OrderID)
		if p, err := h.Service.Show(ctx, id); err == nil && p.Paid() != nil && ans.Result.Type == relay.TypePaymentSucceeded {
			q := ans.Result.Payment
			if p.AmountMinor != q.AmountMinor || p.Currency != q.Currency || p.TransactionID != "" && q.TransactionID != "" && p.TransactionID != q.TransactionID {
				log.ErrorContext(ctx, "order query: the provider's answer contradicts what is stored", "event", "conflict", "payment_id", id,
					"stored_minor", p.AmountMinor, "reported_minor", q.AmountMinor)
				return http.StatusConflict, out, &errorBody{Error: "conflict", Reason: "the provider reports other facts (amount or transaction) than payrelay stored for this order"}
			}
			out.Action, out.Payment = "already stored", paymentView(p)
			log.WarnContext(ctx, "operator query", "provider_reported", ans.Reported, "action", out.Action)
			return http.StatusOK, out, nil
		}
		in := *ans.Result
		in.Via = relay.ViaQuery
		res, err := h.Service.Ingest(ctx, in)
		switch {
		case errors.Is(err, relay.ErrFactsDiffer):
			log.ErrorContext(ctx, "order query: the provider's answer contradicts what is stored", "event", "conflict", "payment_id", res.PaymentID)
			return http.StatusConflict, out, &errorBody{Error: "conflict", Reason: "the provider reports other facts (amount, ...) than payrelay stored for this order"}
		case err != nil:
			log.ErrorContext(ctx, "order query: ingest failed", "event", "ingest_failed", "payment_id", res.PaymentID, "error", err.Error())
			return http.StatusServiceUnavailable, out, &errorBody{Error: "temporarily unavailable", Reason: "retry"}
		}
		out.Action = "already stored"
		if !res.Duplicate {
			out.Action = "ingested"
			log.InfoContext(ctx, "notification received", "event", "notification_received", "via", "query", "payment_id", res.PaymentID,
				"notification_id", res.NotificationID, "type", string(ans.Result.Type), "state", string(res.State))
		}
		if p, err := h.Service.Show(ctx, res.PaymentID); err == nil {
			out.Payment = paymentView(p)
		}
	}
	// Every operator action is logged with who and why.
	log.WarnContext(ctx, "operator query", "provider_reported", ans.Reported, "action", out.Action)
	return http.StatusOK, out, nil
}
