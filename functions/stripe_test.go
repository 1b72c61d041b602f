package functions

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

const (
	stAcct   = "acct_1Farm"
	stSecret = "whsec_farm_0123456789abcdefghijklmnop"
	stKey    = "rk_live_farm_restricted"
)

// stripeFixture is a handler with a Stripe account whose restricted key reaches the stand-in.
func stripeFixture(t *testing.T) (*fixture, *providertest.StripeAPI) {
	t.Helper()
	api := providertest.NewStripeAPI(stKey)
	t.Cleanup(api.Close)
	f := newFixtureQuiet(t)
	st, err := provider.NewStripe([]provider.StripeAccount{{Account: stAcct, Secrets: []string{stSecret}, Game: "game-1",
		APIKeys: map[string]string{"production": stKey}, APIBase: api.URL}})
	if err != nil {
		t.Fatal(err)
	}
	f.h.Providers["stripe"] = st
	return f, api
}

// stripeSend posts a signed event to Ingest and returns the status.
func stripeSend(t *testing.T, f *fixture, event []byte) int {
	t.Helper()
	now := f.h.Clock.Now()
	req := httptest.NewRequest(http.MethodPost, "/Ingest?provider=stripe", bytes.NewReader(event))
	req.Header = providertest.SignStripe(event, now, stSecret)
	w := httptest.NewRecorder()
	f.h.Ingest(w, req)
	return w.Code
}

// drain delivers every queued task, in due order, until none is left, moving the clock.
func drain(t *testing.T, f *fixture) {
	t.Helper()
	done := map[string]bool{}
	for range 100 {
		var next []relay.Task
		for _, task := range f.queue.Snapshot() {
			if !done[task.Name()] {
				next = append(next, task)
			}
		}
		if len(next) == 0 {
			return
		}
		slices.SortStableFunc(next, func(a, b relay.Task) int { return a.At.Compare(b.At) })
		task := next[0]
		done[task.Name()] = true
		if d := task.At.Sub(f.h.Clock.Now()); d > 0 {
			f.h.Clock.(interface{ Advance(time.Duration) }).Advance(d)
		}
		body, _ := json.Marshal(relay.TaskMessage{PaymentID: task.PaymentID, Notification: task.Key, Generation: task.Generation, Attempt: task.Attempt})
		serve(f.h.Deliver, deliverReq(string(body)))
	}
	t.Fatal("the queue never drained")
}

// postedOf is what the game server received of order's notifications, in order: their keys,
// space-separated.
func postedOf(f *fixture, order string) string {
	var got []string
	for _, p := range f.posted {
		if o, key, _ := strings.Cut(p, "/"); o == order {
			got = append(got, key)
		}
	}
	return strings.Join(got, " ")
}

func refundsOf(p *relay.Payment) string {
	var out []string
	for _, n := range p.Notifications {
		if n.Refund != nil {
			out = append(out, fmt.Sprintf("%s:%d", n.Refund.ID, n.Refund.AmountMinor))
		}
	}
	return strings.Join(out, " ")
}

// An endpoint pinned to an API version before 2024-10-28.acacia gets charge.refunded without
// its refunds listed and no refund.* event for a card refund: payrelay fetches the charge's
// refunds from Stripe and relays each once, in order; a later refund.updated (after the
// endpoint moves to a newer version) changes nothing.
func TestStripeChargeRefundedOnAnOldAPIVersion(t *testing.T) {
	t.Parallel()
	f, api := stripeFixture(t)
	now := f.h.Clock.Now()
	const old = "2024-06-20"
	if code := stripeSend(t, f, providertest.StripeEventAt("evt_pay", "checkout.session.completed", providertest.StripeSession("web-1", "pi_1", 1999, "USD", "paid"), now, old, true)); code != 200 {
		t.Fatalf("payment answered %d", code)
	}
	api.AddRefund("ch_pi_1", providertest.StripeAPIRefund("re_1", "ch_pi_1", "pi_1", 500, "usd", "succeeded", now.Add(time.Minute)))
	api.AddRefund("ch_pi_1", providertest.StripeAPIRefund("re_2", "ch_pi_1", "pi_1", 300, "usd", "succeeded", now.Add(2*time.Minute)))
	api.AddRefund("ch_pi_1", providertest.StripeAPIRefund("re_3", "ch_pi_1", "pi_1", 200, "usd", "pending", now.Add(3*time.Minute)))
	charge := providertest.StripeCharge("pi_1", "web-1", 1999, 800, "USD", "", now)
	for range 2 { // Stripe's retry of the same event is a repeat
		if code := stripeSend(t, f, providertest.StripeEventAt("evt_ref", "charge.refunded", charge, now.Add(2*time.Minute), old, true)); code != 200 {
			t.Fatalf("charge.refunded answered %d", code)
		}
	}
	id := relay.PaymentID(relay.EnvProduction, "stripe", stAcct, "web-1")
	if got := refundsOf(f.store.Payment(id)); got != "re_1:500 re_2:300" {
		t.Fatalf("refunds stored %q, want re_1:500 re_2:300 (re_3 is pending)", got)
	}
	// The same refund's own event, on a newer version: a repeat, nothing changes.
	if code := stripeSend(t, f, providertest.StripeEventAt("evt_upd", "refund.updated", providertest.StripeRefund("re_2", "pi_1", "web-1", 300, "USD", "succeeded", now.Add(2*time.Minute)), now.Add(3*time.Minute), "2024-10-28.acacia", true)); code != 200 {
		t.Fatalf("refund.updated answered %d", code)
	}
	// The pending one succeeds: on the old version its charge.refund.updated tells it.
	if code := stripeSend(t, f, providertest.StripeEventAt("evt_re3", "charge.refund.updated", providertest.StripeRefund("re_3", "pi_1", "web-1", 200, "USD", "succeeded", now.Add(3*time.Minute)), now.Add(4*time.Minute), old, true)); code != 200 {
		t.Fatalf("charge.refund.updated answered %d", code)
	}
	p := f.store.Payment(id)
	if got := refundsOf(p); got != "re_1:500 re_2:300 re_3:200" || p.RefundedMinor != 1000 {
		t.Fatalf("refunds %q, total %d; want re_1:500 re_2:300 re_3:200 = 1000", got, p.RefundedMinor)
	}
	drain(t, f)
	want := []string{"web-1/paid", "web-1/" + relay.RefundKey("re_1"), "web-1/" + relay.RefundKey("re_2"), "web-1/" + relay.RefundKey("re_3")}
	if !slices.Equal(f.posted, want) {
		t.Errorf("posted %v, want each once in order %v", f.posted, want)
	}
	// The refunds were read with the restricted key, by charge.
	if reqs := api.Requests(); len(reqs) == 0 || !strings.HasPrefix(reqs[0], "GET /v1/refunds?") || !strings.Contains(reqs[0], "charge=ch_pi_1") {
		t.Errorf("API requests %v, want the charge's refunds listed", reqs)
	}
}

// Stripe's API failing: Ingest answers 5xx (Stripe retries the event) and stores nothing of
// the refunds; the retry, once the API answers, relays them; nothing is lost or doubled.
func TestStripeAPIFailingThenAnswering(t *testing.T) {
	t.Parallel()
	f, api := stripeFixture(t)
	now := f.h.Clock.Now()
	stripeSend(t, f, providertest.StripeEventAt("evt_pay", "checkout.session.completed", providertest.StripeSession("web-2", "pi_2", 1000, "EUR", "paid"), now, "2023-10-16", true))
	api.AddRefund("ch_pi_2", providertest.StripeAPIRefund("re_9", "ch_pi_2", "pi_2", 1000, "eur", "succeeded", now))
	ev := providertest.StripeEventAt("evt_ref2", "charge.refunded", providertest.StripeCharge("pi_2", "web-2", 1000, 1000, "EUR", "", now), now, "2023-10-16", true)
	api.FailNext(500, 500, 500) // the library's two retries fail too
	if code := stripeSend(t, f, ev); code != http.StatusServiceUnavailable {
		t.Fatalf("with Stripe's API down, charge.refunded answered %d, want 503", code)
	}
	id := relay.PaymentID(relay.EnvProduction, "stripe", stAcct, "web-2")
	if got := refundsOf(f.store.Payment(id)); got != "" {
		t.Fatalf("stored %q while the API was down", got)
	}
	api.FailNext(429) // rate limited once: tried again after a pause
	if code := stripeSend(t, f, ev); code != 200 {
		t.Fatalf("Stripe's retry answered %d; API requests %q", code, api.Requests())
	}
	if got := refundsOf(f.store.Payment(id)); got != "re_9:1000" {
		t.Fatalf("refunds %q, want re_9:1000", got)
	}
}

// A subscription on Stripe: the Checkout Session that starts it is not the payment (its
// invoice is), each period's invoice.paid is a payment keyed by the invoice in either layout,
// and a refund naming only its PaymentIntent finds its invoice through the API.
func TestStripeSubscriptionRenewals(t *testing.T) {
	t.Parallel()
	f, api := stripeFixture(t)
	now := f.h.Clock.Now()
	md := map[string]string{"player_id": "p-42"}
	sess := providertest.StripeSession("sub-order-1", "", 999, "USD", "paid")
	sess["mode"] = "subscription"
	if code := stripeSend(t, f, providertest.StripeEventAt("evt_cs", "checkout.session.completed", sess, now, "2025-08-27.basil", true)); code != 200 {
		t.Fatalf("a subscription's session answered %d", code)
	}
	for i, tc := range []struct{ version, reason string }{
		{"2025-08-27.basil", "subscription_create"}, {"2025-08-27.basil", "subscription_cycle"}, {"2024-06-20", "subscription_cycle"},
	} {
		at := now.AddDate(0, i, 0)
		in := providertest.StripeInvoice(fmt.Sprintf("in_%d", i+1), "sub_1", fmt.Sprintf("pi_in_%d", i+1), 999, "usd", tc.reason, md, at, tc.version)
		if code := stripeSend(t, f, providertest.StripeEventAt(fmt.Sprintf("evt_in_%d", i+1), "invoice.paid", in, at, tc.version, true)); code != 200 {
			t.Fatalf("invoice.paid %d answered %d", i+1, code)
		}
	}
	for i := 1; i <= 3; i++ {
		p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "stripe", stAcct, fmt.Sprintf("in_%d", i)))
		if p == nil || p.AmountMinor != 999 || p.Currency != "USD" || p.Subscription == nil || p.Subscription.ID != "sub_1" || p.Metadata["player_id"] != "p-42" || p.Paid() == nil ||
			!p.Subscription.ExpiresAt.Equal(now.AddDate(0, i-1, 0).AddDate(0, 1, 0).Truncate(time.Second)) {
			t.Fatalf("period %d stored as %+v", i, p)
		}
	}
	if f.store.Len() != 3 {
		t.Fatalf("stored %d payments, want the 3 periods (the session is not one)", f.store.Len())
	}
	// The second period refunded: the refund names pi_in_2 only.
	api.AddInvoicePayment("pi_in_2", "in_2")
	rf := providertest.StripeRefund("re_s2", "pi_in_2", "", 999, "USD", "succeeded", now.AddDate(0, 1, 1))
	rf["metadata"] = map[string]string{}
	if code := stripeSend(t, f, providertest.StripeEventAt("evt_rs2", "refund.created", rf, now.AddDate(0, 1, 1), "2025-08-27.basil", true)); code != 200 {
		t.Fatalf("the period's refund answered %d", code)
	}
	if got := refundsOf(f.store.Payment(relay.PaymentID(relay.EnvProduction, "stripe", stAcct, "in_2"))); got != "re_s2:999" {
		t.Fatalf("in_2's refunds %q, want re_s2:999", got)
	}
	drain(t, f)
	if len(f.posted) != 4 {
		t.Errorf("posted %v, want 3 periods and 1 refund", f.posted)
	}
}

// The events sweep: an event Stripe failed to deliver is listed with delivery_success=false
// and relayed through Ingest's path (a charge.refunded's refunds fetched as for a webhook); a
// delivered one is not asked for; the next run recovers nothing twice.
func TestStripeEventsSweep(t *testing.T) {
	t.Parallel()
	f, api := stripeFixture(t)
	now := f.h.Clock.Now()
	at := now.Add(-2 * time.Hour)
	api.AddEvent(providertest.StripeEventAt("evt_ok", "checkout.session.completed", providertest.StripeSession("web-ok", "pi_ok", 500, "USD", "paid"), at, "2024-06-20", true), true)
	api.AddEvent(providertest.StripeEventAt("evt_lost", "checkout.session.completed", providertest.StripeSession("web-lost", "pi_lost", 700, "JPY", "paid"), at, "2024-06-20", true), false)
	api.AddRefund("ch_pi_lost", providertest.StripeAPIRefund("re_lost", "ch_pi_lost", "pi_lost", 200, "jpy", "succeeded", at.Add(time.Minute)))
	api.AddEvent(providertest.StripeEventAt("evt_lost_ref", "charge.refunded", providertest.StripeCharge("pi_lost", "web-lost", 700, 200, "JPY", "", at.Add(time.Minute)), at.Add(time.Minute), "2024-06-20", true), false)
	run := func() map[string]any {
		w := httptest.NewRecorder()
		f.h.Recover(w, httptest.NewRequest(http.MethodPost, "/", nil))
		var out struct {
			Runs   []map[string]any
			Failed int
		}
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || w.Code != 200 || len(out.Runs) != 1 {
			t.Fatalf("Recover = %d %s", w.Code, w.Body)
		}
		return out.Runs[0]
	}
	first := run()
	if first["listed"] != 2.0 || first["recovered"] != 2.0 {
		t.Fatalf("first sweep %v, want 2 listed, 2 recovered (the payment and its refund)", first)
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "stripe", stAcct, "web-lost"))
	if p == nil || p.AmountMinor != 700 || refundsOf(p) != "re_lost:200" || p.Paid().Via != relay.ViaRecovery {
		t.Fatalf("recovered payment %+v", p)
	}
	if f.store.Payment(relay.PaymentID(relay.EnvProduction, "stripe", stAcct, "web-ok")) != nil {
		t.Error("a delivered event was recovered: the sweep must ask for undelivered ones only")
	}
	if reqs := api.Requests(); !strings.Contains(reqs[0], "delivery_success=false") {
		t.Errorf("the sweep asked %q", reqs[0])
	}
	f.h.Clock.(interface{ Advance(time.Duration) }).Advance(time.Hour)
	if second := run(); second["recovered"] != 0.0 || second["listed"] != 0.0 {
		t.Errorf("second sweep %v, want nothing listed or recovered again", second)
	}
	drain(t, f)
	if want := []string{"web-lost/paid", "web-lost/" + relay.RefundKey("re_lost")}; !slices.Equal(f.posted, want) {
		t.Errorf("posted %v, want %v", f.posted, want)
	}
}

// One item's own failure does not stop a recovery sweep (invariant 12): the others are
// recovered, the run answers 503 naming it, the cursor stays, and the next run recovers it.
func TestRecoverySweepGoesOnPastAFailingItem(t *testing.T) {
	t.Parallel()
	f, api := stripeFixture(t)
	at := f.h.Clock.Now().Add(-time.Hour)
	for _, o := range []string{"web-a", "web-b", "web-c"} {
		api.AddEvent(providertest.StripeEventAt("evt_"+o, "checkout.session.completed", providertest.StripeSession(o, "pi_"+o, 500, "USD", "paid"), at, "2024-06-20", true), false)
	}
	broken := relay.PaymentID(relay.EnvProduction, "stripe", stAcct, "web-b")
	f.queue.Fail = func(task relay.Task) error {
		if task.PaymentID == broken {
			return fmt.Errorf("cloudtasks.CreateTask: %w", relay.ErrNoQueue)
		}
		return nil
	}
	run := func() (int, map[string]any) {
		w := httptest.NewRecorder()
		f.h.Recover(w, httptest.NewRequest(http.MethodPost, "/", nil))
		var out struct{ Runs []map[string]any }
		json.Unmarshal(w.Body.Bytes(), &out)
		return w.Code, out.Runs[0]
	}
	code, r := run()
	if code != http.StatusServiceUnavailable || r["recovered"] != 2.0 || r["failed"] != 1.0 {
		t.Fatalf("with one item failing: %d %v; want 503, 2 recovered, 1 failed", code, r)
	}
	f.queue.Fail = nil
	f.h.Clock.(interface{ Advance(time.Duration) }).Advance(time.Hour)
	if code, r := run(); code != 200 || r["failed"] != 0.0 || r["listed"] != 3.0 {
		t.Fatalf("the next run: %d %v; want the same window read again", code, r)
	}
	drain(t, f)
	for _, o := range []string{"web-a", "web-b", "web-c"} {
		if got := postedOf(f, o); got != "paid" {
			t.Errorf("%s posted %q, want its payment once", o, got)
		}
	}
}
