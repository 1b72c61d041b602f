// Package functions holds payrelay's HTTP functions, registered with functions-framework-go:
// Ingest, which providers call, and Deliver, which Cloud Tasks calls. Each handler decodes the
// request, calls one method of the relay core, and maps the result to a status code.
package functions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/logging"
)

// IngestTimeout bounds one Ingest: WeChat Pay gives up on an answer after 5 s, and a prompt 503
// makes a provider retry sooner than a timeout does.
const IngestTimeout = 4 * time.Second

// Body limits: a payment notification is a few hundred bytes; a task body a few dozen.
const (
	MaxIngestBody  = 64 << 10
	MaxDeliverBody = 4 << 10
)

// Handler serves the functions over one relay.Service.
type Handler struct {
	Service   *relay.Service
	Providers provider.Set
	Logger    *slog.Logger
	Clock     relay.Clock
	ProjectID string   // for Cloud Logging trace ids
	Games     []string // the configured games, for the dashboard
	// Routes are the games' environments (every game's production, and sandbox where it has
	// an endpoint), for the dashboard's rows.
	Routes relay.Routes
	// ProviderConfig routes merchants to games (which orders a game server may query).
	ProviderConfig provider.Config
	// QueryCallers maps a game server's identity to the game whose orders it may query.
	QueryCallers map[string]string
	// ReconcileTimeout, when set, replaces the const of that name (the deployed function's
	// bound): the benchmark of a large day on the emulator, slower than Firestore, sets it.
	ReconcileTimeout time.Duration

	inflight sync.WaitGroup
	draining atomic.Bool
}

// Drain makes the handler refuse new requests with 503 (callers retry) and waits, until ctx is
// done, for those in flight.
func (h *Handler) Drain(ctx context.Context) error {
	h.draining.Store(true)
	done := make(chan struct{})
	go func() { h.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *Handler) enter(w http.ResponseWriter) bool {
	h.inflight.Add(1)
	if h.draining.Load() {
		h.inflight.Done()
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "shutting down", Reason: "retry shortly"})
		return false
	}
	return true
}

type errorBody struct {
	Error  string `json:"error"`
	Reason string `json:"reason,omitempty"`
	Field  string `json:"field,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// readBody reads at most limit bytes of a POST of the given media type ("" for any).
func readBody(w http.ResponseWriter, r *http.Request, limit int64, mediaType string) ([]byte, *provider.Refusal) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, &provider.Refusal{Code: http.StatusMethodNotAllowed, Reason: "use POST"}
	}
	if mediaType != "" {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != mediaType {
			return nil, &provider.Refusal{Code: http.StatusUnsupportedMediaType, Reason: "want Content-Type " + mediaType}
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, &provider.Refusal{Code: http.StatusRequestEntityTooLarge, Reason: fmt.Sprintf("body over %d bytes", limit)}
	case err != nil:
		return nil, &provider.Refusal{Code: http.StatusBadRequest, Reason: "unreadable body: " + err.Error()}
	}
	return body, nil
}

func (h *Handler) context(r *http.Request) context.Context {
	return logging.WithTrace(r.Context(), h.ProjectID, r.Header.Get("X-Cloud-Trace-Context"))
}

// Ingest receives a provider's notification: verify, validate, store, enqueue, then answer in
// the provider's own shape. The provider is the notify URL's ?provider= (generic by default).
func (h *Handler) Ingest(w http.ResponseWriter, r *http.Request) {
	if !h.enter(w) {
		return
	}
	defer h.inflight.Done()
	// Bounded, but not cut short by a provider that hangs up mid-way: a payment stored without
	// its task would wait for the provider's retry.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.context(r)), IngestTimeout)
	defer cancel()
	name := r.URL.Query().Get("provider")
	if name == "" {
		name = "generic"
	}
	prov, ok := h.Providers[name]
	if !ok {
		h.Logger.WarnContext(ctx, "ingest refused: unknown provider", "event", "ingest_refused", "reason_class", "unknown_provider",
			"provider", "unknown", "asked", fmt.Sprintf("%.32q", name))
		writeJSON(w, http.StatusNotFound, errorBody{Error: "unknown provider", Reason: fmt.Sprintf("this deployment has no provider %.32q", name)})
		return
	}
	log := h.Logger.With("provider", name)
	body, refusal := readBody(w, r, MaxIngestBody, prov.MediaType())
	if refusal != nil {
		log.WarnContext(ctx, "ingest refused: bad request framing", "event", "ingest_refused", "reason_class", reasonClass(refusal),
			"status", refusal.Code, "reason", refusal.Reason, "method", r.Method)
		prov.Refuse(w, refusal)
		return
	}
	result, err := prov.Parse(r.Header, body, h.Clock.Now())
	if err != nil {
		refusal := provider.AsRefusal(err)
		switch {
		case refusal.Inexact:
			// Verified, and its amount cannot be stated exactly in ISO minor units: refused
			// (never rounded) and alerted; the provider retries until an operator acts.
			log.ErrorContext(ctx, "ingest refused: the amount does not convert exactly to the currency's ISO 4217 minor unit", "event", "ingest_refused",
				"reason_class", reasonClass(refusal), "status", refusal.Code, "reason", refusal.Reason)
		case refusal.Unrouted:
			// Verified and real, but our configuration routes its app to no game: nothing is
			// stored, and the provider retries until the configuration is fixed.
			log.ErrorContext(ctx, "ingest refused: the notification's app maps to no game; fix PROVIDER_CONFIG", "event", "ingest_refused",
				"reason_class", reasonClass(refusal), "status", refusal.Code, "reason", refusal.Reason)
		default:
			log.WarnContext(ctx, "ingest refused", "event", "ingest_refused", "reason_class", reasonClass(refusal),
				"status", refusal.Code, "reason", refusal.Reason, "field", refusal.Field, "body_bytes", len(body))
		}
		prov.Refuse(w, refusal)
		return
	}
	results := []relay.Result{result}
	if c, ok := prov.(provider.Completer); ok {
		if results, err = c.Complete(ctx, body, result); err != nil {
			if refusal := provider.AsRefusal(err); refusal.Inexact {
				log.ErrorContext(ctx, "ingest refused: the amount does not convert exactly to the currency's ISO 4217 minor unit", "event", "ingest_refused",
					"reason_class", reasonClass(refusal), "status", refusal.Code, "reason", refusal.Reason)
				prov.Refuse(w, refusal)
				return
			}
			log.ErrorContext(ctx, "ingest failed: the provider's API did not complete the notification; the provider will retry", "event", "ingest_failed",
				"order_id", result.Payment.OrderID, "error", err.Error())
			prov.Refuse(w, &provider.Refusal{Code: http.StatusServiceUnavailable, Reason: "temporarily unavailable; retry later"})
			return
		}
	}
	var res relay.IngestResult
	for _, result := range results {
		var refusal *provider.Refusal
		if res, refusal, _ = h.ingest(ctx, log, result); refusal != nil {
			prov.Refuse(w, refusal)
			return
		}
	}
	prov.Ack(w, res)
}

// ingest stores one verified result and logs what it came to; a refusal (a conflict, an
// invalid field, a failure of ours) is for the caller to answer, with the error behind it.
func (h *Handler) ingest(ctx context.Context, log *slog.Logger, result relay.Result) (relay.IngestResult, *provider.Refusal, error) {
	p := result.Payment
	log = log.With("order_id", p.OrderID, "merchant", p.Merchant, "game", p.Game, "environment", string(p.Environment))
	if result.Refund != nil {
		log = log.With("refund_id", result.Refund.ID)
	}
	res, err := h.Service.Ingest(ctx, result)
	var over *relay.ErrOverRefund
	var fieldErr *relay.FieldError
	switch {
	case errors.Is(err, relay.ErrOutOfOrder):
		// Not a conflict and not an outage: what it follows has not arrived yet; the provider
		// sends it again later (Apple after 1, 12, 24, 48 and 72 hours).
		log.WarnContext(ctx, "ingest deferred: what this notification follows has not arrived yet", "event", "ingest_refused",
			"reason_class", "out_of_order", "payment_id", res.PaymentID, "type", string(result.Type), "error", err.Error())
		return res, &provider.Refusal{Code: http.StatusConflict, Reason: err.Error() + "; send it again later"}, err
	case errors.Is(err, relay.ErrFactsDiffer):
		log.ErrorContext(ctx, "ingest refused: callback contradicts what is stored for the same order", "event", "conflict",
			"payment_id", res.PaymentID, "type", string(result.Type), "error", err.Error())
		return res, &provider.Refusal{Code: http.StatusConflict, Reason: "a payment or refund for this order is stored with other facts (amount, currency, ...)"}, err
	case errors.As(err, &over):
		log.ErrorContext(ctx, "ingest refused: refund exceeds what remains refundable", "event", "conflict",
			"payment_id", res.PaymentID, "paid_minor", over.Paid, "refunded_minor", over.AlreadyRefunded, "refund_minor", over.Asked)
		return res, &provider.Refusal{Code: http.StatusConflict, Reason: over.Error()}, err
	case errors.As(err, &fieldErr):
		log.WarnContext(ctx, "ingest refused", "event", "ingest_refused", "reason_class", "invalid",
			"status", http.StatusUnprocessableEntity, "reason", fieldErr.Error(), "field", fieldErr.Field)
		return res, &provider.Refusal{Code: http.StatusUnprocessableEntity, Reason: fieldErr.Error(), Field: fieldErr.Field}, err
	case err != nil:
		log.ErrorContext(ctx, "ingest failed; the provider will retry", "event", "ingest_failed", "payment_id", res.PaymentID,
			"error", err.Error(), "retryable", relay.Retryable(err))
		return res, &provider.Refusal{Code: http.StatusServiceUnavailable, Reason: "temporarily unavailable; retry later"}, err
	}
	via := result.Via
	if via == "" {
		via = relay.ViaNotify
	}
	switch {
	case result.Type == "" && result.Note.Alert:
		log.ErrorContext(ctx, "ingest acknowledged a result that is not relayed and needs an operator",
			"kind", result.Note.Kind, "reason", result.Note.Reason, "payment_id", res.PaymentID, "recorded", res.Stored)
	case result.Type == "":
		log.InfoContext(ctx, "ingest acknowledged a result that is not relayed",
			"kind", result.Note.Kind, "payment_id", res.PaymentID, "recorded", res.Stored)
		if result.Note.Kind == "TEST" && p.Provider == "apple" && p.Merchant != "" {
			// The dashboard shows when each app's last test notification arrived.
			if err := h.Service.SetCursor(ctx, provider.TestMarker(p.Merchant, p.Environment), h.Clock.Now()); err != nil && !errors.Is(err, relay.ErrNoCursors) {
				log.WarnContext(ctx, "could not record the test notification's arrival", "error", err.Error())
			}
		}
	case res.Covered:
		log.WarnContext(ctx, "refund already counted by a later refund; noted, not relayed", "payment_id", res.PaymentID)
	default:
		if res.Mismatch {
			// Acknowledged (the provider would retry a refusal for days) and stored, never posted:
			// the provider's app is configured for the other environment. An operator fixes
			// PROVIDER_CONFIG, then replays it.
			log.ErrorContext(ctx, "notification of an environment its app is not configured for: stored, not relayed; fix PROVIDER_CONFIG's environments",
				"event", "environment_mismatch", "payment_id", res.PaymentID, "notification_id", res.NotificationID, "type", string(result.Type),
				"reason", res.NotRelayed)
		}
		if !res.Duplicate {
			log.InfoContext(ctx, "notification received", "event", "notification_received", "via", via, "payment_id", res.PaymentID,
				"notification_id", res.NotificationID, "type", string(result.Type), "state", string(res.State), "not_relayed", res.NotRelayed)
		} else {
			log.InfoContext(ctx, "notification repeated", "via", via, "payment_id", res.PaymentID, "notification_id", res.NotificationID, "type", string(result.Type))
		}
	}
	return res, nil, nil
}

type deliverAnswer struct {
	PaymentID    string `json:"payment_id,omitempty"`
	Notification string `json:"notification,omitempty"`
	Attempt      int    `json:"attempt,omitempty"`
	Outcome      string `json:"outcome"`
	Reason       string `json:"reason,omitempty"`
}

// Deliver makes one attempt of the ladder for the task Cloud Tasks sends.
func (h *Handler) Deliver(w http.ResponseWriter, r *http.Request) {
	if !h.enter(w) {
		return
	}
	defer h.inflight.Done()
	ctx := h.context(r)
	d := relay.Delivery{TaskName: r.Header.Get("X-CloudTasks-TaskName")}
	d.RetryCount, _ = strconv.Atoi(r.Header.Get("X-CloudTasks-TaskRetryCount"))
	d.ExecutionCount, _ = strconv.Atoi(r.Header.Get("X-CloudTasks-TaskExecutionCount"))
	log := h.Logger.With("task_name", d.TaskName, "task_retry_count", d.RetryCount, "task_execution_count", d.ExecutionCount)
	body, refusal := readBody(w, r, MaxDeliverBody, "")
	if refusal != nil {
		log.ErrorContext(ctx, "deliver refused: bad request framing", "status", refusal.Code, "reason", refusal.Reason)
		writeJSON(w, refusal.Code, errorBody{Error: http.StatusText(refusal.Code), Reason: refusal.Reason})
		return
	}
	var msg relay.TaskMessage
	if err := json.Unmarshal(body, &msg); err == nil && msg.Job != "" {
		h.jobStep(w, r, log, msg)
		return
	}
	if msg.Ack != "" {
		h.storeAck(w, r, log, msg.Ack)
		return
	}
	if err := json.Unmarshal(body, &msg); err != nil || msg.PaymentID == "" || msg.Notification == "" || msg.Attempt < 1 {
		// A task that can never succeed: acknowledge it so Cloud Tasks does not retry forever.
		log.ErrorContext(ctx, "deliver rejected a malformed task", "body_bytes", len(body))
		writeJSON(w, http.StatusOK, deliverAnswer{Outcome: string(relay.OutcomeRejected), Reason: "task body must be {\"payment_id\":...,\"notification\":...,\"attempt\":n}"})
		return
	}
	log = log.With("payment_id", msg.PaymentID, "notification_id", relay.NotificationID(msg.PaymentID, msg.Notification), "attempt", msg.Attempt)
	res, err := h.Service.Deliver(ctx, msg, d)
	if err != nil {
		log.ErrorContext(ctx, "deliver could not record progress; Cloud Tasks will redeliver", "error", err.Error(), "retryable", relay.Retryable(err))
		writeJSON(w, http.StatusServiceUnavailable, deliverAnswer{PaymentID: msg.PaymentID, Notification: msg.Notification, Attempt: msg.Attempt, Outcome: "error", Reason: "temporarily unavailable"})
		return
	}
	attrs := []any{"outcome", string(res.Outcome)}
	if res.Reason != "" {
		attrs = append(attrs, "reason", res.Reason)
	}
	if res.Game != "" {
		attrs = append(attrs, "game", res.Game, "provider", res.Provider, "environment", string(res.Environment), "type", string(res.Type))
	}
	if rec := res.Record; rec != nil && res.Outcome != relay.OutcomeBusy {
		// An attempt made and recorded: the attempts metrics count these lines.
		attrs = append(attrs, "event", "attempt", "status_code", rec.StatusCode, "error_class", string(rec.ErrorClass),
			"latency_ms", float64(rec.Duration.Microseconds())/1000)
	}
	if !res.Next.IsZero() {
		attrs = append(attrs, "next_attempt_at", res.Next.UTC().Format(time.RFC3339Nano))
	}
	if res.Released != "" {
		attrs = append(attrs, "released", relay.NotificationID(msg.PaymentID, res.Released))
	}
	switch res.Outcome {
	case relay.OutcomeOrphaned:
		log.ErrorContext(ctx, "delivery orphaned: the notification's game or endpoint is no longer configured; nothing posted", append(attrs, "event", "orphaned")...)
	case relay.OutcomeRejected, relay.OutcomeFailed:
		log.ErrorContext(ctx, "delivery "+string(res.Outcome), attrs...)
	case relay.OutcomeBusy, relay.OutcomeRetryScheduled:
		log.WarnContext(ctx, "delivery "+string(res.Outcome), attrs...)
	default:
		log.InfoContext(ctx, "delivery "+string(res.Outcome), attrs...)
	}
	code := http.StatusOK
	if res.Outcome.Class() == relay.ClassRetry {
		code = http.StatusConflict // any non-2xx: Cloud Tasks redelivers after its backoff
	}
	writeJSON(w, code, deliverAnswer{PaymentID: msg.PaymentID, Notification: msg.Notification, Attempt: msg.Attempt, Outcome: string(res.Outcome), Reason: res.Reason})
}

// jobStep runs one step of a bulk replay for the task Cloud Tasks sends: 2xx once its progress
// is recorded, 5xx so the step runs again (resuming where the last recorded one ended).
func (h *Handler) jobStep(w http.ResponseWriter, r *http.Request, log *slog.Logger, msg relay.TaskMessage) {
	ctx := h.context(r)
	log = log.With("job", msg.Job, "step", msg.Step)
	j, err := h.Service.RunJobStep(ctx, msg.Job, msg.Step)
	switch {
	case errors.Is(err, relay.ErrNotFound), errors.Is(err, relay.ErrNoJobs):
		log.ErrorContext(ctx, "job step rejected", "error", err.Error())
		writeJSON(w, http.StatusOK, deliverAnswer{Outcome: string(relay.OutcomeRejected), Reason: err.Error()})
	case err != nil:
		log.ErrorContext(ctx, "job step failed; Cloud Tasks will run it again", "error", err.Error())
		writeJSON(w, http.StatusServiceUnavailable, deliverAnswer{Outcome: "error", Reason: "temporarily unavailable"})
	default:
		log.InfoContext(ctx, "job step done", "state", string(j.State), "replayed", j.Replayed, "skipped", j.Skipped, "refused", j.Refused, "failed", j.Failed)
		writeJSON(w, http.StatusOK, deliverAnswer{Outcome: string(j.State)})
	}
}

// storeAck acknowledges a payment's purchase to its store for the ops queue's task: 2xx once
// it is done (or has nothing to do), 5xx so that the ops queue retries until the store accepts.
func (h *Handler) storeAck(w http.ResponseWriter, r *http.Request, log *slog.Logger, paymentID string) {
	ctx := h.context(r)
	log = log.With("payment_id", paymentID)
	res, err := h.Service.AcknowledgeToStore(ctx, paymentID)
	attrs := []any{"event", "store_ack", "game", res.Game, "provider", res.Provider, "environment", string(res.Environment)}
	switch {
	case errors.Is(err, relay.ErrNoStoreAcks):
		log.ErrorContext(ctx, "acknowledgement task rejected", "error", err.Error())
		writeJSON(w, http.StatusOK, deliverAnswer{PaymentID: paymentID, Outcome: string(relay.OutcomeRejected), Reason: err.Error()})
	case err != nil:
		log.WarnContext(ctx, "acknowledging the purchase to its store failed; the ops queue retries it",
			append(attrs, "outcome", "failed", "tries", res.Tries, "error", err.Error())...)
		writeJSON(w, http.StatusServiceUnavailable, deliverAnswer{PaymentID: paymentID, Outcome: "error", Reason: "the store did not accept the acknowledgement yet"})
	default:
		log.InfoContext(ctx, "acknowledgement to the store: "+string(res.Outcome), append(attrs, "outcome", string(res.Outcome), "reason", res.Reason)...)
		writeJSON(w, http.StatusOK, deliverAnswer{PaymentID: paymentID, Outcome: string(res.Outcome), Reason: res.Reason})
	}
}

// reasonClass names a refusal's kind for the ingest_refused metric: few values, never input.
func reasonClass(r *provider.Refusal) string {
	switch {
	case r.Unrouted:
		return "unrouted"
	case r.Inexact:
		return "inexact_amount"
	case r.Code == http.StatusUnauthorized:
		return "signature"
	case r.Code == http.StatusForbidden:
		return "not_ours"
	case r.Code == http.StatusUnprocessableEntity:
		return "invalid"
	case r.Code == http.StatusConflict:
		return "conflict"
	case r.Code == http.StatusRequestEntityTooLarge, r.Code == http.StatusUnsupportedMediaType, r.Code == http.StatusMethodNotAllowed, r.Code == http.StatusBadRequest:
		return "malformed"
	}
	return "other"
}
