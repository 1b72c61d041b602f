package functions

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// MaxAdminBody bounds an operator's request body: a reason and a flag.
const MaxAdminBody = 8 << 10

// Admin serves the operators' JSON API. The function is private: Cloud Run lets only the
// principals granted run.invoker (terraform's operators) reach it, having verified their
// identity token; the handler takes the caller's identity from that token for the log and the
// notification's history.
//
//	GET  /api/notifications?state=&type=&game=&provider=&environment=&from=&to=&cursor=&limit=
//	GET  /api/payments?provider=&merchant=&order=&environment=   find a payment by its order id (production by default)
//	GET  /api/payments/{id}                                 one payment, every notification and attempt
//	POST /api/payments/{id}/notifications/{key}/replay      {"reason":"...","force":false}
//	POST /api/payments/{id}/notifications/{key}/cancel      {"reason":"..."}
//	POST /api/query                                         an order query (补单)
//	POST /api/reconcile                                     reconcile one account's bill of a day
//	GET  /api/reconciliations[/{id}]                        the reconciliation reports
//	POST /api/apple/test                                    ask Apple for a test notification
//
// A state-changing request must be application/json and, when a browser sends an Origin,
// same-origin: a cross-site form can send neither, so no other site can make an operator's
// browser replay or cancel (cross-site request forgery).
func (h *Handler) Admin(w http.ResponseWriter, r *http.Request) {
	if !h.enter(w) {
		return
	}
	defer h.inflight.Done()
	ctx := h.context(r)
	op := operator(r)
	log := h.Logger.With("operator", op)
	// Served alone (Cloud Functions) its paths start at /; beside the other functions (a local
	// run) under /Admin.
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/"+AdminName), "/"), "/")
	if parts[0] != "api" {
		h.dashboard(w, r, parts)
		return
	}
	switch {
	case r.Method == http.MethodGet && len(parts) == 3 && parts[0] == "api" && parts[1] == "jobs":
		j, err := h.Service.Job(ctx, parts[2])
		switch {
		case errors.Is(err, relay.ErrNotFound):
			writeJSON(w, http.StatusNotFound, errorBody{Error: "not found", Reason: "no job " + parts[2]})
		case errors.Is(err, relay.ErrNoJobs):
			writeJSON(w, http.StatusNotImplemented, errorBody{Error: "not configured", Reason: err.Error()})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "temporarily unavailable", Reason: "retry"})
		default:
			writeJSON(w, http.StatusOK, j)
		}
	case len(parts) == 3 && parts[0] == "api" && parts[1] == "jobs" && parts[2] == "replay":
		h.adminStartJob(w, r, op)
	case len(parts) == 2 && parts[0] == "api" && parts[1] == "query":
		h.adminQuery(w, r, op)
	case len(parts) == 2 && parts[0] == "api" && parts[1] == "reconcile":
		h.adminReconcile(w, r, op)
	case len(parts) == 3 && parts[0] == "api" && parts[1] == "apple" && parts[2] == "test":
		h.adminAppleTest(w, r, op)
	case r.Method == http.MethodGet && len(parts) == 2 && parts[0] == "api" && parts[1] == "reconciliations":
		h.adminReports(w, r, "")
	case r.Method == http.MethodGet && len(parts) == 3 && parts[0] == "api" && parts[1] == "reconciliations":
		h.adminReports(w, r, parts[2])
	case r.Method == http.MethodGet && len(parts) == 2 && parts[0] == "api" && parts[1] == "notifications":
		h.adminList(w, r)
	case r.Method == http.MethodGet && len(parts) == 2 && parts[0] == "api" && parts[1] == "payments":
		q := r.URL.Query()
		env, err := queryEnvironment(q, relay.EnvProduction)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: err.Error(), Field: "environment"})
			return
		}
		h.adminShow(w, r, relay.PaymentID(env, q.Get("provider"), q.Get("merchant"), q.Get("order")))
	case r.Method == http.MethodGet && len(parts) == 3 && parts[0] == "api" && parts[1] == "payments":
		h.adminShow(w, r, parts[2])
	case len(parts) == 6 && parts[0] == "api" && parts[1] == "payments" && parts[3] == "notifications" && (parts[5] == "replay" || parts[5] == "cancel"):
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "use POST"})
			return
		}
		if reason := crossSite(r); reason != "" {
			log.WarnContext(ctx, "admin refused a cross-site request", "reason", reason)
			writeJSON(w, http.StatusForbidden, errorBody{Error: "forbidden", Reason: reason})
			return
		}
		var body struct {
			Reason string `json:"reason"`
			Force  bool   `json:"force"`
		}
		raw, refusal := readBody(w, r, MaxAdminBody, "application/json")
		if refusal != nil {
			writeJSON(w, refusal.Code, errorBody{Error: http.StatusText(refusal.Code), Reason: refusal.Reason})
			return
		}
		if err := json.Unmarshal(raw, &body); err != nil || strings.TrimSpace(body.Reason) == "" || len(body.Reason) > 500 {
			writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: `want {"reason":"why, 1-500 characters"}`, Field: "reason"})
			return
		}
		pid, key, verb := parts[2], parts[4], parts[5]
		o := relay.Operator{By: op, Reason: body.Reason}
		var res relay.OperationResult
		var err error
		if verb == "replay" {
			res, err = h.Service.Replay(ctx, pid, key, body.Force, o)
		} else {
			res, err = h.Service.Cancel(ctx, pid, key, o)
		}
		var stateErr *relay.StateError
		switch {
		case errors.Is(err, relay.ErrNotFound):
			writeJSON(w, http.StatusNotFound, errorBody{Error: "not found", Reason: "no such payment or notification"})
			return
		case errors.As(err, &stateErr):
			writeJSON(w, http.StatusConflict, errorBody{Error: "conflict", Reason: stateErr.Error()})
			return
		case err != nil && res.Payment == nil:
			log.ErrorContext(ctx, "admin "+verb+" failed", "payment_id", pid, "notification", key, "error", err.Error())
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "temporarily unavailable", Reason: "retry"})
			return
		}
		// Every change an operator makes is logged with who made it and why.
		attrs := []any{"payment_id", pid, "notification_id", relay.NotificationID(pid, key), "reason", body.Reason, "force", body.Force}
		if err != nil {
			// Recorded, but its task could not be enqueued: the sweeper will.
			attrs = append(attrs, "enqueue_error", err.Error())
		}
		log.WarnContext(ctx, "operator "+verb, attrs...)
		writeJSON(w, http.StatusOK, paymentView(res.Payment))
	default:
		writeJSON(w, http.StatusNotFound, errorBody{Error: "not found", Reason: "see infra/README.md (the dashboard and the Admin function) for the API"})
	}
}

func (h *Handler) adminShow(w http.ResponseWriter, r *http.Request, id string) {
	p, err := h.Service.Show(h.context(r), id)
	switch {
	case errors.Is(err, relay.ErrNotFound):
		writeJSON(w, http.StatusNotFound, errorBody{Error: "not found", Reason: "no payment " + id})
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "temporarily unavailable", Reason: "retry"})
	default:
		writeJSON(w, http.StatusOK, paymentView(p))
	}
}

func (h *Handler) adminList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := relay.Filter{State: relay.State(q.Get("state")), Type: relay.Type(q.Get("type")), Game: q.Get("game"), Provider: q.Get("provider")}
	env, err := queryEnvironment(q, "")
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: err.Error(), Field: "environment"})
		return
	}
	f.Environment = env
	for name, t := range map[string]*time.Time{"from": &f.From, "to": &f.To} {
		if v := q.Get(name); v != "" {
			parsed, err := time.Parse(time.RFC3339, v)
			if err != nil {
				writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: name + ": want an RFC 3339 time", Field: name})
				return
			}
			*t = parsed
		}
	}
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 {
		limit = 50
	}
	items, next, err := h.Service.List(h.context(r), f, q.Get("cursor"), limit)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "temporarily unavailable", Reason: "retry"})
		return
	}
	out := struct {
		Notifications []listedView `json:"notifications"`
		Next          string       `json:"next_cursor,omitempty"`
	}{Notifications: []listedView{}, Next: next}
	for _, it := range items {
		out.Notifications = append(out.Notifications, listedView{
			PaymentID: it.Payment.ID, NotificationID: relay.NotificationID(it.Payment.ID, it.Notification.Key), Key: it.Notification.Key,
			Type: string(it.Notification.Type), State: string(it.Notification.State), Game: it.Payment.Game, Provider: it.Payment.Provider,
			Environment: string(it.Payment.Environment),
			OrderID:     it.Payment.OrderID, Attempt: it.Notification.Attempt, Generation: it.Notification.Generation,
			NextAttemptAt: it.Notification.NextAttemptAt, ReceivedAt: it.Payment.ReceivedAt, Reason: it.Notification.Reason,
		})
	}
	writeJSON(w, http.StatusOK, out)
}

type listedView struct {
	PaymentID      string    `json:"payment_id"`
	NotificationID string    `json:"notification_id"`
	Key            string    `json:"key"`
	Type           string    `json:"type"`
	State          string    `json:"state"`
	Game           string    `json:"game"`
	Provider       string    `json:"provider"`
	Environment    string    `json:"environment"`
	OrderID        string    `json:"order_id"`
	Attempt        int       `json:"attempt"`
	Generation     int       `json:"generation"`
	NextAttemptAt  time.Time `json:"next_attempt_at,omitzero"`
	ReceivedAt     time.Time `json:"received_at"`
	Reason         string    `json:"reason,omitempty"`
}

// paymentView is a payment as the API shows it: its facts and every notification with its
// attempts and operator actions.
// queryEnvironment reads the request's environment parameter: def when absent, an error
// naming the two when it is neither.
func queryEnvironment(q url.Values, def relay.Environment) (relay.Environment, error) {
	v := q.Get("environment")
	if v == "" {
		return def, nil
	}
	return relay.ParseEnvironment(v)
}

// subscriptionView and eventView are a payment's subscription and a notification's event as
// the Admin API shows them.
type subscriptionView struct {
	ID        string    `json:"id"`
	ProductID string    `json:"product_id,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Offer     string    `json:"offer,omitempty"`
}

// storeAckView is a purchase's acknowledgement to its store as the Admin API shows it: never
// the purchase token.
type storeAckView struct {
	State   string    `json:"state"`
	Product string    `json:"product"`
	Due     time.Time `json:"due"`
	At      time.Time `json:"at,omitzero"`
	Reason  string    `json:"reason,omitempty"`
	Tries   int       `json:"tries,omitempty"`
	Error   string    `json:"error,omitempty"`
}

type eventView struct {
	ID        string    `json:"id"`
	Reason    string    `json:"reason,omitempty"`
	At        time.Time `json:"at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

func paymentView(p *relay.Payment) any {
	type attempt struct {
		Generation int       `json:"generation"`
		Number     int       `json:"number"`
		StartedAt  time.Time `json:"started_at"`
		DurationMS float64   `json:"duration_ms"`
		StatusCode int       `json:"status_code,omitempty"`
		ErrorClass string    `json:"error_class,omitempty"`
		Error      string    `json:"error,omitempty"`
		Response   string    `json:"response,omitempty"`
		RetryAfter time.Time `json:"retry_after,omitzero"`
	}
	type notification struct {
		ID            string         `json:"notification_id"`
		Key           string         `json:"key"`
		Type          string         `json:"type"`
		State         string         `json:"state"`
		Generation    int            `json:"generation"`
		Attempt       int            `json:"attempt"`
		NextAttemptAt time.Time      `json:"next_attempt_at,omitzero"`
		Reason        string         `json:"reason,omitempty"`
		Refund        *relay.Refund  `json:"refund,omitempty"`
		Event         *eventView     `json:"event,omitempty"`
		Attempts      []attempt      `json:"attempts"`
		Actions       []relay.Action `json:"actions,omitempty"`
		Via           string         `json:"via"`
	}
	out := struct {
		ID            string            `json:"payment_id"`
		Provider      string            `json:"provider"`
		Environment   string            `json:"environment"`
		Merchant      string            `json:"merchant"`
		OrderID       string            `json:"order_id"`
		TransactionID string            `json:"transaction_id"`
		AmountMinor   int64             `json:"amount_minor"`
		Currency      string            `json:"currency"`
		Game          string            `json:"game"`
		RefundedMinor int64             `json:"refunded_minor"`
		ReceivedAt    time.Time         `json:"received_at"`
		Notifications []notification    `json:"notifications"`
		Notes         []relay.Note      `json:"notes,omitempty"`
		Metadata      map[string]string `json:"metadata,omitempty"`
		Subscription  *subscriptionView `json:"subscription,omitempty"`
		StoreAck      *storeAckView     `json:"store_ack,omitempty"`
	}{ID: p.ID, Provider: p.Provider, Environment: string(p.Environment), Merchant: p.Merchant, OrderID: p.OrderID, TransactionID: p.TransactionID,
		AmountMinor: p.AmountMinor, Currency: p.Currency, Game: p.Game, RefundedMinor: p.RefundedMinor,
		ReceivedAt: p.ReceivedAt, Notes: p.Notes, Metadata: p.Metadata}
	if sub := p.Subscription; sub != nil {
		out.Subscription = &subscriptionView{ID: sub.ID, ProductID: sub.ProductID, Reason: sub.Reason, ExpiresAt: sub.ExpiresAt, Offer: sub.Offer}
	}
	if a := p.StoreAck; a != nil {
		out.StoreAck = &storeAckView{State: string(a.State), Product: a.Product, Due: a.Due, At: a.At, Reason: a.Reason, Tries: a.Tries, Error: a.Error}
	}
	for _, n := range p.Notifications {
		nv := notification{ID: relay.NotificationID(p.ID, n.Key), Key: n.Key, Type: string(n.Type), State: string(n.State),
			Generation: n.Generation, Attempt: n.Attempt, NextAttemptAt: n.NextAttemptAt, Reason: n.Reason, Refund: n.Refund,
			Attempts: []attempt{}, Actions: n.Actions, Via: n.Via}
		if e := n.Event; e != nil {
			nv.Event = &eventView{ID: e.ID, Reason: e.Reason, At: e.At, ExpiresAt: e.ExpiresAt}
		}
		for _, a := range n.Attempts {
			nv.Attempts = append(nv.Attempts, attempt{Generation: a.Generation, Number: a.Number, StartedAt: a.StartedAt,
				DurationMS: float64(a.Duration) / float64(time.Millisecond), StatusCode: a.StatusCode, ErrorClass: string(a.ErrorClass),
				Error: a.Error, Response: a.Response, RetryAfter: a.RetryAfter})
		}
		out.Notifications = append(out.Notifications, nv)
	}
	return out
}

// operator is the caller's identity: the email in the identity token Cloud Run verified before
// the request reached the function (the signature is Cloud Run's to check, not ours; the
// function is never reachable without it). Without one (a local run) the caller is anonymous.
func operator(r *http.Request) string {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ok {
		if parts := strings.Split(token, "."); len(parts) == 3 {
			if payload, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
				var claims struct {
					Email string `json:"email"`
					Sub   string `json:"sub"`
				}
				if json.Unmarshal(payload, &claims) == nil {
					if claims.Email != "" {
						return claims.Email
					}
					if claims.Sub != "" {
						return "sub:" + claims.Sub
					}
				}
			}
		}
	}
	return "anonymous (no identity token: a local run)"
}

// crossSite says why a state-changing request may come from another site, or "".
func crossSite(r *http.Request) string {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return "state-changing requests must be application/json"
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return "Sec-Fetch-Site " + site
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || u.Host != r.Host {
			return fmt.Sprintf("Origin %.80q is not this host", origin)
		}
	}
	return ""
}

// Sweep runs one sweep: notifications whose task was lost, or whose delivery died, are
// enqueued again. Each heal is logged (an operator should know a task was lost); the answer
// is 5xx when the sweep could not run, so Cloud Scheduler counts the failure.
func (h *Handler) Sweep(w http.ResponseWriter, r *http.Request) {
	if !h.enter(w) {
		return
	}
	defer h.inflight.Done()
	ctx := h.context(r)
	res, err := h.Service.Sweep(ctx)
	for _, hl := range res.Healed {
		h.Logger.WarnContext(ctx, "sweeper healed a notification", "event", "healed", "game", hl.Game, "environment", string(hl.Environment), "payment_id", hl.PaymentID,
			"notification_id", relay.NotificationID(hl.PaymentID, hl.Key), "generation", hl.Generation, "attempt", hl.Attempt, "why", hl.Why)
	}
	for _, hl := range res.Failed {
		attrs := []any{"game", hl.Game, "environment", string(hl.Environment), "payment_id", hl.PaymentID,
			"notification_id", relay.NotificationID(hl.PaymentID, hl.Key), "failures", hl.Failure.Failures, "error", hl.Failure.Error,
			"next_try_at", hl.Failure.After.UTC().Format(time.RFC3339)}
		if hl.Stuck {
			// The walk keeps failing on this one: an alert names it (heal_stuck).
			h.Logger.ErrorContext(ctx, "sweeper keeps failing to enqueue a notification; it is skipped until its backoff ends", append(attrs, "event", "heal_stuck")...)
		} else {
			h.Logger.WarnContext(ctx, "sweeper failed to enqueue a notification; it is skipped until its backoff ends", append(attrs, "event", "heal_failed")...)
		}
	}
	for _, hl := range res.Orphaned {
		h.Logger.ErrorContext(ctx, "sweeper orphaned a notification: its game or queue is gone", "event", "orphaned", "game", hl.Game,
			"environment", string(hl.Environment), "payment_id", hl.PaymentID, "notification_id", relay.NotificationID(hl.PaymentID, hl.Key), "reason", hl.Why)
	}
	for _, e := range res.ReadErrors {
		h.Logger.ErrorContext(ctx, "sweep could not read a page; the other games' went on", "error", e.Error())
	}
	for _, id := range res.AcksEnqueued {
		h.Logger.WarnContext(ctx, "sweeper enqueued a purchase's acknowledgement to its store again", "event", "store_ack_healed", "payment_id", id)
	}
	for _, d := range res.AcksDue {
		// The store refunds it at Due unless it is acknowledged: an alert names it (store_ack_due).
		h.Logger.ErrorContext(ctx, "a purchase is still unacknowledged to its store, which refunds it at its deadline", "event", "store_ack_due",
			"game", d.Game, "provider", d.Provider, "environment", string(d.Environment), "payment_id", d.PaymentID,
			"due", d.Due.UTC().Format(time.RFC3339), "why", d.Why)
	}
	for _, e := range res.AckErrors {
		h.Logger.ErrorContext(ctx, "sweep could not walk the acknowledgements waiting; the notifications' walk went on", "error", e.Error())
	}
	if err != nil {
		h.Logger.ErrorContext(ctx, "sweep failed", "error", err.Error(), "healed", len(res.Healed))
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "sweep failed", Reason: "retry"})
		return
	}
	h.Logger.InfoContext(ctx, "sweep done", "event", "sweep", "scanned", res.Scanned, "healed", len(res.Healed), "failed", len(res.Failed),
		"orphaned", len(res.Orphaned), "left_games", res.Left, "oldest_overdue_seconds", res.OldestOverdue.Seconds(),
		"acks_enqueued", len(res.AcksEnqueued), "acks_due", len(res.AcksDue))
	writeJSON(w, http.StatusOK, struct {
		Scanned  int `json:"scanned"`
		Healed   int `json:"healed"`
		Failed   int `json:"failed"`
		Orphaned int `json:"orphaned"`
		// LeftGames are the games whose walk the time budget cut short (the next sweep goes on).
		LeftGames int `json:"left_games"`
	}{res.Scanned, len(res.Healed), len(res.Failed), len(res.Orphaned), res.Left})
}

// adminStartJob starts a bulk replay of the notifications a filter selects:
// POST /api/jobs/replay {"state":"failed","game":"...","provider":"...","type":"...","from":"...","to":"...","reason":"..."}.
func (h *Handler) adminStartJob(w http.ResponseWriter, r *http.Request, op string) {
	ctx := h.context(r)
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "use POST"})
		return
	}
	if reason := crossSite(r); reason != "" {
		writeJSON(w, http.StatusForbidden, errorBody{Error: "forbidden", Reason: reason})
		return
	}
	raw, refusal := readBody(w, r, MaxAdminBody, "application/json")
	if refusal != nil {
		writeJSON(w, refusal.Code, errorBody{Error: http.StatusText(refusal.Code), Reason: refusal.Reason})
		return
	}
	var body struct {
		State, Type, Game, Provider, Reason string
		From, To                            time.Time
	}
	if err := json.Unmarshal(raw, &body); err != nil || strings.TrimSpace(body.Reason) == "" || len(body.Reason) > 500 {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: `want {"reason":"...", "state":"failed", ...}`, Field: "reason"})
		return
	}
	f := relay.Filter{State: relay.State(body.State), Type: relay.Type(body.Type), Game: body.Game, Provider: body.Provider, From: body.From, To: body.To}
	j, err := h.Service.StartReplayJob(ctx, f, relay.Operator{By: op, Reason: body.Reason})
	var fe *relay.FieldError
	switch {
	case errors.As(err, &fe):
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: fe.Error(), Field: fe.Field})
		return
	case errors.Is(err, relay.ErrNoJobs):
		writeJSON(w, http.StatusNotImplemented, errorBody{Error: "not configured", Reason: err.Error()})
		return
	case err != nil && j == nil:
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "temporarily unavailable", Reason: "retry"})
		return
	}
	h.Logger.WarnContext(ctx, "operator bulk replay", "operator", op, "job", j.ID, "reason", body.Reason,
		"state", string(j.Filter.State), "game", f.Game, "provider", f.Provider, "type", string(f.Type))
	writeJSON(w, http.StatusAccepted, j)
}
