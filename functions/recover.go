package functions

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
)

// Recovery sweeps: what a provider failed to deliver, asked of the provider itself and fed
// through Ingest's path (verified facts, Complete, Service.Ingest), so a notification lost on
// the way is relayed within the sweep's period. Duplicates of what arrived cost one read.
// Stripe's undelivered events (Stripe's "Handle undelivered webhook events": list events with
// delivery_success=false; Stripe keeps events 30 days) and the App Store's notification
// history (Get Notification History with onlyFailures: the notifications Apple failed to
// deliver; Apple keeps 180 days, and tells developers to call it when notifications do not
// arrive).

// RecoverTimeout bounds one run (the function's timeout in terraform is 540 s).
const RecoverTimeout = 8 * time.Minute

// StripeEventsKept is how far back Stripe's events can be listed; a sweep never asks for more.
const StripeEventsKept = 30 * 24 * time.Hour

// RecoverOverlap is how far before the last run's start a sweep reads again: an event created
// just before a run whose delivery failed after the run listed it is read by the next.
const RecoverOverlap = 10 * time.Minute

// recoverRun is what one account's sweep came to.
type recoverRun struct {
	Provider    string    `json:"provider"`
	Account     string    `json:"account"`
	Environment string    `json:"environment"`
	Since       time.Time `json:"since"`
	Listed      int       `json:"listed"`
	Recovered   int       `json:"recovered"` // stored now: its webhook never reached payrelay
	Repeated    int       `json:"repeated"`  // already stored (a duplicate: nothing changed)
	Refused     int       `json:"refused"`   // refused as Ingest would (logged with the reason)
	// Failed counts items this run could not store (their own failure: a game's queue gone, a
	// conflict that persisted); the walk went on, and the cursor stays so the next run tries them.
	Failed int    `json:"failed"`
	Error  string `json:"error,omitempty"`
}

// Recover runs the recovery sweeps, called by Cloud Scheduler (hourly by default; the
// function is private to the scheduler's identity). It answers 200 when every account was
// swept, 503 when any could not be (its cursor stays, so the next run reads the same events).
func (h *Handler) Recover(w http.ResponseWriter, r *http.Request) {
	if !h.enter(w) {
		return
	}
	defer h.inflight.Done()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.context(r)), RecoverTimeout)
	defer cancel()
	if _, refusal := readBody(w, r, MaxAdminBody, ""); refusal != nil {
		writeJSON(w, refusal.Code, errorBody{Error: http.StatusText(refusal.Code), Reason: refusal.Reason})
		return
	}
	var runs []recoverRun
	failed := 0
	add := func(run recoverRun) {
		if run.Error != "" {
			failed++
		}
		runs = append(runs, run)
	}
	if st, ok := h.Providers["stripe"].(*provider.Stripe); ok {
		for _, a := range st.EventAccounts() {
			add(h.recoverStripe(ctx, st, a))
		}
	}
	if gp, ok := h.Providers["googleplay"].(*provider.GooglePlay); ok {
		for _, pkg := range gp.VoidedAccounts() {
			add(h.recoverGooglePlay(ctx, gp, pkg))
		}
	}
	if ap, ok := h.Providers["apple"].(*provider.Apple); ok {
		for _, a := range ap.HistoryAccounts() {
			add(h.recoverApple(ctx, ap, a))
		}
	}
	code := http.StatusOK
	if failed > 0 {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, struct {
		Runs   []recoverRun `json:"runs"`
		Failed int          `json:"failed"`
	}{runs, failed})
}

// recoverStripe sweeps one Stripe account's undelivered events of one mode since its cursor.
func (h *Handler) recoverStripe(ctx context.Context, st *provider.Stripe, a provider.StripeEventsAccount) recoverRun {
	return h.sweepRecovery(ctx, recoverRun{Provider: st.Name(), Account: a.Account, Environment: string(a.Environment)}, "stripe_events",
		"stripe-events-"+a.Account+"-"+string(a.Environment), StripeEventsKept,
		func(ctx context.Context, since, _ time.Time) ([][]byte, error) {
			return st.Undelivered(ctx, a.Account, a.Environment, since)
		},
		func(ctx context.Context, body []byte) ([]relay.Result, error) {
			result, err := st.ParseUndelivered(a.Account, body)
			if err != nil {
				return nil, err
			}
			return st.Complete(ctx, body, result)
		})
}

// recoverApple sweeps one App Store app's notification history of one environment since its
// cursor: each notification Apple failed to deliver, verified by Parse as if Apple had posted it.
func (h *Handler) recoverApple(ctx context.Context, ap *provider.Apple, a provider.HistoryAccount) recoverRun {
	return h.sweepRecovery(ctx, recoverRun{Provider: ap.Name(), Account: a.BundleID, Environment: string(a.Environment)}, "apple_history",
		"apple-history-"+a.BundleID+"-"+string(a.Environment), provider.AppleHistoryDays*24*time.Hour,
		func(ctx context.Context, since, until time.Time) ([][]byte, error) {
			return ap.History(ctx, a.BundleID, a.Environment, since, until)
		},
		func(_ context.Context, body []byte) ([]relay.Result, error) {
			r, err := ap.Parse(nil, body, h.Clock.Now())
			return []relay.Result{r}, err
		})
}

// recoverGooglePlay sweeps one Android package's voided purchases since its cursor: a refund
// whose voidedPurchaseNotification was lost is relayed within the period.
func (h *Handler) recoverGooglePlay(ctx context.Context, gp *provider.GooglePlay, pkg string) recoverRun {
	var results []relay.Result
	return h.sweepRecovery(ctx, recoverRun{Provider: gp.Name(), Account: pkg}, "googleplay_voided",
		"googleplay-voided-"+pkg, provider.GooglePlayVoidedKept,
		func(ctx context.Context, since, _ time.Time) ([][]byte, error) {
			var err error
			results, err = gp.Voided(ctx, pkg, since)
			bodies := make([][]byte, len(results))
			for i := range results {
				bodies[i] = []byte(strconv.Itoa(i)) // each stands for results[i]
			}
			return bodies, err
		},
		func(_ context.Context, body []byte) ([]relay.Result, error) {
			i, _ := strconv.Atoi(string(body))
			return []relay.Result{results[i]}, nil
		})
}

// sweepRecovery lists what the provider failed to deliver since the cursor id (at most kept
// back, less RecoverOverlap), feeds each through Ingest's path, and moves the cursor to this
// run's start only when everything listed was ingested or refused as Ingest would. An item's
// own failure does not stop the walk (invariant 12): it is counted and logged, the cursor stays,
// and the next run tries it again (the others are then repeats, a read each). An outage (the
// store or the queue unavailable) ends the run.
func (h *Handler) sweepRecovery(ctx context.Context, run recoverRun, sweep, id string, kept time.Duration,
	list func(ctx context.Context, since, until time.Time) ([][]byte, error), read func(ctx context.Context, body []byte) ([]relay.Result, error)) recoverRun {
	log := h.Logger.With("provider", run.Provider, "merchant", run.Account, "environment", run.Environment, "sweep", sweep)
	fail := func(err error) recoverRun {
		run.Error = fmt.Sprintf("%.300v", err)
		log.ErrorContext(ctx, "recovery sweep failed; the next run reads the same again", "event", "recover_failed", "error", run.Error,
			"listed", run.Listed, "recovered", run.Recovered)
		return run
	}
	start := h.Clock.Now()
	cursor, err := h.Service.Cursor(ctx, id)
	if err != nil {
		return fail(err)
	}
	run.Since = start.Add(-kept)
	if !cursor.IsZero() && cursor.Add(-RecoverOverlap).After(run.Since) {
		run.Since = cursor.Add(-RecoverOverlap)
	}
	bodies, err := list(ctx, run.Since, start)
	if err != nil {
		return fail(err)
	}
	run.Listed = len(bodies)
	for _, body := range bodies {
		results, err := read(ctx, body)
		if err != nil {
			refusal := provider.AsRefusal(err)
			if refusal.Code >= 500 || errors.Is(err, context.DeadlineExceeded) {
				return fail(err)
			}
			run.Refused++
			level := log.WarnContext
			if refusal.Inexact {
				level = log.ErrorContext
			}
			level(ctx, "recovered notification refused", "event", "ingest_refused", "reason_class", reasonClass(refusal), "status", refusal.Code,
				"reason", refusal.Reason, "via", relay.ViaRecovery)
			continue
		}
		for _, res := range results {
			res.Via = relay.ViaRecovery
			got, refusal, err := h.ingest(ctx, log, res)
			switch {
			case refusal != nil && refusal.Code >= 500 && relay.Retryable(err):
				return fail(err)
			case refusal != nil && refusal.Code >= 500:
				run.Failed++ // logged by ingest (ingest_failed)
			case refusal != nil:
				run.Refused++
			case res.Type == "":
			case got.Duplicate:
				run.Repeated++
			default:
				run.Recovered++
			}
		}
	}
	if run.Failed > 0 {
		return fail(fmt.Errorf("%d of %d items could not be stored (each logged, event=ingest_failed); the next run tries them again", run.Failed, run.Listed))
	}
	if err := h.Service.SetCursor(ctx, id, start); err != nil {
		return fail(err)
	}
	log.InfoContext(ctx, "recovery sweep done", "event", "recover", "since", run.Since.UTC().Format(time.RFC3339), "listed", run.Listed,
		"recovered", run.Recovered, "repeated", run.Repeated, "refused", run.Refused)
	return run
}
