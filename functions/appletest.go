package functions

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
)

// The App Store's test notification, from the dashboard: an operator asks Apple (Request a
// Test Notification) to send an app's server URL a TEST notification, and the dashboard shows
// when each app's last TEST arrived, so the whole path from Apple through Ingest is checked in
// one click.

// appleTest is one app and environment the dashboard can test, and when its last TEST arrived.
type appleTest struct {
	BundleID    string
	Environment relay.Environment
	LastTest    time.Time
}

// appleTests lists the App Store apps with API access and their last TEST's arrival.
func (h *Handler) appleTests(ctx context.Context) []appleTest {
	ap, ok := h.Providers["apple"].(*provider.Apple)
	if !ok {
		return nil
	}
	var out []appleTest
	for _, a := range ap.HistoryAccounts() {
		t := appleTest{BundleID: a.BundleID, Environment: a.Environment}
		t.LastTest, _ = h.Service.Cursor(ctx, provider.TestMarker(a.BundleID, a.Environment))
		out = append(out, t)
	}
	return out
}

// requestAppleTest asks Apple for a test notification; it answers the status and the token or
// the refusal.
func (h *Handler) requestAppleTest(ctx context.Context, op, bundleID, env, reason string) (int, map[string]string) {
	ap, ok := h.Providers["apple"].(*provider.Apple)
	if !ok {
		return http.StatusUnprocessableEntity, map[string]string{"error": "apple is not configured"}
	}
	e, err := relay.ParseEnvironment(env)
	if err != nil {
		return http.StatusUnprocessableEntity, map[string]string{"error": err.Error()}
	}
	token, err := ap.RequestTest(ctx, bundleID, e)
	var qe *provider.QueryError
	switch {
	case errors.As(err, &qe):
		h.Logger.WarnContext(ctx, "apple refused the test notification", "operator", op, "bundle_id", bundleID, "error", qe.Reason)
		return http.StatusBadGateway, map[string]string{"error": "apple refused", "reason": qe.Reason}
	case err != nil:
		h.Logger.ErrorContext(ctx, "test notification request failed", "operator", op, "bundle_id", bundleID, "error", err.Error())
		return http.StatusServiceUnavailable, map[string]string{"error": "temporarily unavailable", "reason": "apple did not answer; retry"}
	}
	h.Logger.WarnContext(ctx, "operator asked apple for a test notification", "operator", op, "bundle_id", bundleID, "environment", env, "reason", reason)
	return http.StatusOK, map[string]string{"test_notification_token": token, "bundle_id": bundleID, "environment": env}
}

// adminAppleTest is POST /api/apple/test {"bundle_id":"...","environment":"production","reason":"..."}.
func (h *Handler) adminAppleTest(w http.ResponseWriter, r *http.Request, op string) {
	raw, ok := h.readAdminJSON(w, r, op)
	if !ok {
		return
	}
	var q struct {
		BundleID    string `json:"bundle_id"`
		Environment string `json:"environment"`
		Reason      string `json:"reason"`
	}
	if err := json.Unmarshal(raw, &q); err != nil || q.BundleID == "" || strings.TrimSpace(q.Reason) == "" || len(q.Reason) > 500 {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: `want {"bundle_id":"...","environment":"production","reason":"..."}`})
		return
	}
	code, out := h.requestAppleTest(h.context(r), op, q.BundleID, q.Environment, q.Reason)
	writeJSON(w, code, out)
}

// formAppleTest is the dashboard's button: the same, then back to the overview.
func (h *Handler) formAppleTest(w http.ResponseWriter, r *http.Request) {
	reason, ok := h.readForm(w, r)
	if !ok {
		return
	}
	code, out := h.requestAppleTest(h.context(r), operator(r), r.PostForm.Get("bundle_id"), r.PostForm.Get("environment"), reason)
	if code != http.StatusOK {
		http.Error(w, out["error"]+": "+out["reason"], code)
		return
	}
	http.Redirect(w, r, "./?apple_test="+out["test_notification_token"], http.StatusSeeOther)
}
