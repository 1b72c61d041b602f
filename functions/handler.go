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

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/infra/logging"
)

// Body limits: a payment notification is a few hundred bytes; a task body a few dozen.
const (
	MaxIngestBody  = 64 << 10
	MaxDeliverBody = 4 << 10
)

// Verifier checks a provider's signature on a request. Each provider format has its own.
type Verifier interface {
	Verify(h http.Header, body []byte, now time.Time) error
}

// StandardWebhooks verifies the generic format's webhook-* headers.
type StandardWebhooks struct{ *webhook.Verifier }

// Verify implements Verifier.
func (v StandardWebhooks) Verify(h http.Header, body []byte, now time.Time) error {
	return v.Verifier.Verify(h.Get(webhook.HeaderID), h.Get(webhook.HeaderTimestamp), h.Get(webhook.HeaderSignature), body, now)
}

// Handler serves the functions over one relay.Service.
type Handler struct {
	Service   *relay.Service
	Verifier  Verifier
	Logger    *slog.Logger
	Clock     relay.Clock
	ProjectID string // for Cloud Logging trace ids

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

// readBody reads at most limit bytes of a POST with a JSON content type, or writes the 4xx.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, wantJSON bool) ([]byte, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "method not allowed", Reason: "use POST"})
		return nil, false
	}
	if wantJSON {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "application/json" {
			writeJSON(w, http.StatusUnsupportedMediaType, errorBody{Error: "unsupported content type", Reason: "want application/json"})
			return nil, false
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeJSON(w, http.StatusRequestEntityTooLarge, errorBody{Error: "body too large", Reason: fmt.Sprintf("at most %d bytes", limit)})
		return nil, false
	case err != nil:
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "unreadable body", Reason: err.Error()})
		return nil, false
	}
	return body, true
}

// genericPayment is the generic provider format: a JSON payment signed with Standard Webhooks.
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

// parseGeneric turns a generic notification into a payment, or a FieldError.
func parseGeneric(body []byte) (relay.Payment, error) {
	var g genericPayment
	if err := json.Unmarshal(body, &g); err != nil {
		return relay.Payment{}, &relay.FieldError{Field: "body", Reason: "malformed JSON: " + err.Error()}
	}
	if g.Provider == "" {
		g.Provider = "generic"
	}
	amount, err := relay.ParseAmount(g.Amount, g.Currency)
	if err != nil {
		return relay.Payment{}, err
	}
	paidAt, err := time.Parse(time.RFC3339Nano, g.PaidAt)
	if err != nil {
		return relay.Payment{}, &relay.FieldError{Field: "paid_at", Reason: "want an RFC 3339 time such as 2026-11-24T12:00:00+08:00"}
	}
	p := relay.Payment{
		Provider: g.Provider, OrderID: g.OrderID, TransactionID: g.TransactionID, AmountMinor: amount,
		Currency: g.Currency, Status: g.Status, PaidAt: paidAt, AppID: g.AppID, Metadata: g.Metadata,
	}
	return p, p.Validate()
}

func (h *Handler) context(r *http.Request) context.Context {
	return logging.WithTrace(r.Context(), h.ProjectID, r.Header.Get("X-Cloud-Trace-Context"))
}

// Ingest receives a provider's notification: verify, validate, store, enqueue, then answer.
func (h *Handler) Ingest(w http.ResponseWriter, r *http.Request) {
	if !h.enter(w) {
		return
	}
	defer h.inflight.Done()
	ctx := h.context(r)
	body, ok := readBody(w, r, MaxIngestBody, true)
	if !ok {
		h.Logger.WarnContext(ctx, "ingest refused: bad request framing", "method", r.Method, "content_type", r.Header.Get("Content-Type"))
		return
	}
	if err := h.Verifier.Verify(r.Header, body, h.Clock.Now()); err != nil {
		h.Logger.WarnContext(ctx, "ingest refused: signature", "reason", err.Error(), "body_bytes", len(body))
		writeJSON(w, http.StatusUnauthorized, errorBody{Error: "signature verification failed", Reason: err.Error()})
		return
	}
	p, err := parseGeneric(body)
	var fe *relay.FieldError
	if errors.As(err, &fe) {
		h.Logger.WarnContext(ctx, "ingest refused: invalid payment", "field", fe.Field, "reason", fe.Reason)
		code := http.StatusUnprocessableEntity
		if fe.Field == "body" {
			code = http.StatusBadRequest
		}
		writeJSON(w, code, errorBody{Error: "invalid payment", Field: fe.Field, Reason: fe.Reason})
		return
	}
	res, err := h.Service.Ingest(ctx, p)
	switch {
	case errors.Is(err, relay.ErrFactsDiffer):
		h.Logger.ErrorContext(ctx, "ingest refused: callback contradicts the stored payment for the same order",
			"payment_id", res.PaymentID, "provider", p.Provider, "order_id", p.OrderID)
		writeJSON(w, http.StatusConflict, errorBody{Error: "conflict", Reason: "a payment for this order is stored with other facts (amount, currency, ...)"})
		return
	case err != nil:
		h.Logger.ErrorContext(ctx, "ingest failed; the provider will retry", "payment_id", res.PaymentID, "error", err.Error(), "retryable", relay.Retryable(err))
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "temporarily unavailable", Reason: "retry later"})
		return
	}
	h.Logger.InfoContext(ctx, "payment received", "payment_id", res.PaymentID, "provider", p.Provider, "order_id", p.OrderID, "duplicate", res.Duplicate)
	writeJSON(w, http.StatusOK, struct {
		PaymentID string `json:"payment_id"`
		Duplicate bool   `json:"duplicate"`
	}{res.PaymentID, res.Duplicate})
}

type deliverAnswer struct {
	PaymentID string `json:"payment_id,omitempty"`
	Attempt   int    `json:"attempt,omitempty"`
	Outcome   string `json:"outcome"`
	Reason    string `json:"reason,omitempty"`
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
	body, ok := readBody(w, r, MaxDeliverBody, false)
	if !ok {
		log.ErrorContext(ctx, "deliver refused: bad request framing", "method", r.Method)
		return
	}
	var msg relay.TaskMessage
	if err := json.Unmarshal(body, &msg); err != nil || msg.PaymentID == "" || msg.Attempt < 1 {
		// A task that can never succeed: acknowledge it so Cloud Tasks does not retry forever.
		log.ErrorContext(ctx, "deliver rejected a malformed task", "body_bytes", len(body))
		writeJSON(w, http.StatusOK, deliverAnswer{Outcome: string(relay.OutcomeRejected), Reason: "task body must be {\"payment_id\":...,\"attempt\":n}"})
		return
	}
	log = log.With("payment_id", msg.PaymentID, "attempt", msg.Attempt)
	res, err := h.Service.Deliver(ctx, msg.PaymentID, msg.Attempt, d)
	if err != nil {
		log.ErrorContext(ctx, "deliver could not record progress; Cloud Tasks will redeliver", "error", err.Error(), "retryable", relay.Retryable(err))
		writeJSON(w, http.StatusServiceUnavailable, deliverAnswer{PaymentID: msg.PaymentID, Attempt: msg.Attempt, Outcome: "error", Reason: "temporarily unavailable"})
		return
	}
	attrs := []any{"outcome", string(res.Outcome)}
	if res.Reason != "" {
		attrs = append(attrs, "reason", res.Reason)
	}
	if rec := res.Record; rec != nil {
		attrs = append(attrs, "status_code", rec.StatusCode, "error_class", string(rec.ErrorClass), "latency_ms", rec.Duration.Milliseconds())
	}
	if !res.Next.IsZero() {
		attrs = append(attrs, "next_attempt_at", res.Next.UTC().Format(time.RFC3339Nano))
	}
	switch res.Outcome {
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
	writeJSON(w, code, deliverAnswer{PaymentID: msg.PaymentID, Attempt: msg.Attempt, Outcome: string(res.Outcome), Reason: res.Reason})
}
