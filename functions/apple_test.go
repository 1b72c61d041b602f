package functions

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

const (
	apBundle = "com.studio.sword"
	apID     = int64(1234567890)
)

func appleFixture(t *testing.T) (*fixture, *providertest.AppleChain) {
	t.Helper()
	chain := providertest.NewAppleChain(providertest.AppleChainOptions{})
	a, err := provider.NewApple([]provider.AppleApp{{BundleID: apBundle, AppAppleID: apID, Game: "game-1"}}, chain.Root)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixtureQuiet(t)
	f.h.Providers["apple"] = a
	return f, chain
}

func appleSend(t *testing.T, f *fixture, body []byte) int {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/Ingest?provider=apple", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	f.h.Ingest(w, req)
	return w.Code
}

// A subscription with three renewals and a prorated refund of the last, end to end: each
// period a payment carrying its subscription, each notification delivered once, the refund
// after its period; the refund reversed, after the refund.
func TestAppleSubscriptionEndToEnd(t *testing.T) {
	t.Parallel()
	f, chain := appleFixture(t)
	start := testNow.Add(-90 * 24 * time.Hour)
	month := 30 * 24 * time.Hour
	const sub = "2000000900000001"
	ids := []string{sub, "2000000900000002", "2000000900000003", "2000000900000004"}
	for i, id := range ids {
		at := start.Add(time.Duration(i) * month)
		typ, subtype := "DID_RENEW", ""
		if i == 0 {
			typ, subtype = "SUBSCRIBED", "INITIAL_BUY"
		}
		tx := providertest.AppleSubscription(apBundle, id, sub, 6990, "USD", "Production", at, at.Add(month))
		for range 2 { // Apple's retry of the same notification: a repeat
			if code := appleSend(t, f, providertest.AppleNotification(chain, typ, subtype, apBundle, apID, "Production", tx, at)); code != 200 {
				t.Fatalf("period %d answered %d", i, code)
			}
		}
	}
	last := providertest.AppleSubscription(apBundle, ids[3], sub, 6990, "USD", "Production", start.Add(3*month), start.Add(4*month))
	last["revocationDate"], last["revocationType"], last["revocationPercentage"] = start.Add(3*month+10*24*time.Hour).UnixMilli(), "REFUND_PRORATED", 66667
	if code := appleSend(t, f, providertest.AppleNotification(chain, "REFUND", "", apBundle, apID, "Production", last, start.Add(3*month+10*24*time.Hour))); code != 200 {
		t.Fatalf("refund answered %d", code)
	}
	// The reversal of a refund that is not recorded yet waits (Apple retries it).
	early := providertest.AppleSubscription(apBundle, ids[2], sub, 6990, "USD", "Production", start.Add(2*month), start.Add(3*month))
	if code := appleSend(t, f, providertest.AppleNotification(chain, "REFUND_REVERSED", "", apBundle, apID, "Production", early, testNow)); code != http.StatusConflict {
		t.Errorf("a reversal before its refund answered %d, want 409", code)
	}
	delete(last, "revocationDate")
	delete(last, "revocationType")
	delete(last, "revocationPercentage")
	if code := appleSend(t, f, providertest.AppleNotification(chain, "REFUND_REVERSED", "", apBundle, apID, "Production", last, testNow)); code != 200 {
		t.Fatalf("reversal answered %d", code)
	}
	for i, id := range ids {
		p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "apple", apBundle, id))
		if p == nil || p.Subscription == nil || p.Subscription.ID != sub || p.AmountMinor != 699 ||
			!p.Subscription.ExpiresAt.Equal(start.Add(time.Duration(i+1)*month)) {
			t.Fatalf("period %d stored as %+v", i, p)
		}
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "apple", apBundle, ids[3]))
	if n := p.RefundByID("refund-" + ids[3]); n == nil || n.Refund.AmountMinor != 466 || p.RefundedMinor != 0 {
		t.Fatalf("the prorated refund (66.667%% of 699 = 466.00) and its reversal: %+v, refunded now %d", n, p.RefundedMinor)
	}
	drain(t, f)
	for i, id := range ids {
		want := "paid"
		if i == 3 {
			want = "paid " + relay.RefundKey("refund-"+id) + " " + relay.ReversalKey("refund-"+id)
		}
		if got := postedOf(f, id); got != want {
			t.Errorf("period %d posted %q, want %q", i, got, want)
		}
	}
}

// The app's signed transaction and Apple's notification of it are one payment, whichever
// comes first; Family Sharing's REVOKE ends access without money.
func TestAppleSignedTransactionAndNotificationAreOnePayment(t *testing.T) {
	t.Parallel()
	f, chain := appleFixture(t)
	// A transaction Apple never signed costs what any refused body does: refused before any
	// store operation (and there is no outbound call to make).
	forger := providertest.NewAppleChain(providertest.AppleChainOptions{})
	forged := providertest.AppleTransaction(apBundle, "2000000812359999", 64800, "CNY", "Production", testNow)
	if code := appleSend(t, f, providertest.AppleSignedTransaction(forger, forged)); code != http.StatusUnauthorized || f.store.Gets+f.store.Creates+f.store.Updates != 0 {
		t.Fatalf("a forged signed transaction answered %d after %d store operations; want 401 after none", code, f.store.Gets+f.store.Creates+f.store.Updates)
	}
	appFirst := providertest.AppleTransaction(apBundle, "2000000812350001", 64800, "CNY", "Production", testNow)
	appleFirst := providertest.AppleTransaction(apBundle, "2000000812350002", 64800, "CNY", "Production", testNow)
	steps := [][]byte{
		providertest.AppleSignedTransaction(chain, appFirst),
		providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", apBundle, apID, "Production", appFirst, testNow),
		providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", apBundle, apID, "Production", appleFirst, testNow),
		providertest.AppleSignedTransaction(chain, appleFirst),
		providertest.AppleNotification(chain, "REVOKE", "", apBundle, apID, "Production", appleFirst, testNow.Add(time.Hour)),
	}
	for i, body := range steps {
		if code := appleSend(t, f, body); code != 200 {
			t.Fatalf("step %d answered %d", i, code)
		}
	}
	if f.store.Len() != 2 {
		t.Fatalf("stored %d payments, want 2", f.store.Len())
	}
	drain(t, f)
	if got := postedOf(f, "2000000812350001"); got != "paid" {
		t.Errorf("app first: posted %q", got)
	}
	if got := postedOf(f, "2000000812350002"); got != "paid "+relay.KeyRevoked {
		t.Errorf("Apple first, then revoked: posted %q", got)
	}
}

// appleAPIFixture is appleFixture with the App Store Server API at a stand-in.
func appleAPIFixture(t *testing.T) (*fixture, *providertest.AppleChain, *providertest.AppleAPI) {
	t.Helper()
	chain := providertest.NewAppleChain(providertest.AppleChainOptions{})
	api := providertest.NewAppleAPI(chain, apBundle)
	t.Cleanup(api.Close)
	a, err := provider.NewApple([]provider.AppleApp{{BundleID: apBundle, AppAppleID: apID, Game: "game-1",
		API: &provider.AppleAPIConfig{IssuerID: api.IssuerID, KeyID: api.KeyID, Base: api.URL}}}, chain.Root)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.WithAPIKey(api.KeyPEM(), nil); err != nil {
		t.Fatal(err)
	}
	f := newFixtureQuiet(t)
	f.h.Providers["apple"] = a
	f.h.ProviderConfig = provider.Config{Apple: []provider.AppleApp{{BundleID: apBundle, AppAppleID: apID, Game: "game-1"}}}
	return f, chain, api
}

// The notification-history sweep recovers what Apple reports it failed to deliver (across
// pages), leaves what it delivered, and a second run recovers nothing twice; a rate-limited
// run fails without moving its cursor and the next one reads the same again.
func TestAppleHistorySweep(t *testing.T) {
	t.Parallel()
	f, chain, api := appleAPIFixture(t)
	now := f.h.Clock.Now()
	sent := now.Add(-2 * time.Hour)
	tx := func(id string) map[string]any {
		return providertest.AppleTransaction(apBundle, id, 64800, "CNY", "Production", sent)
	}
	api.AddHistory(providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", apBundle, apID, "Production", tx("2000000700000001"), sent), sent, true)
	api.AddHistory(providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", apBundle, apID, "Production", tx("2000000700000002"), sent), sent, false)
	api.AddHistory(providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", apBundle, apID, "Production", tx("2000000700000003"), sent), sent.Add(time.Minute), true)
	sub := providertest.AppleSubscription(apBundle, "2000000700000005", "2000000700000004", 6990, "USD", "Production", sent, sent.Add(30*24*time.Hour))
	api.AddHistory(providertest.AppleNotification(chain, "DID_RENEW", "", apBundle, apID, "Production", sub, sent), sent.Add(2*time.Minute), true)
	run := func() (int, map[string]any) {
		w := httptest.NewRecorder()
		f.h.Recover(w, httptest.NewRequest(http.MethodPost, "/", nil))
		var out struct {
			Runs []map[string]any
		}
		json.Unmarshal(w.Body.Bytes(), &out)
		if len(out.Runs) != 1 {
			t.Fatalf("Recover = %d %s", w.Code, w.Body)
		}
		return w.Code, out.Runs[0]
	}
	api.RateLimitNext(1)
	if code, r := run(); code != http.StatusServiceUnavailable || !strings.Contains(r["error"].(string), "429") {
		t.Fatalf("rate limited: %d %v, want 503 naming the 429", code, r)
	}
	if code, r := run(); code != 200 || r["listed"] != 3.0 || r["recovered"] != 3.0 {
		t.Fatalf("first sweep: %d %v, want the 3 failed notifications recovered", code, r)
	}
	for _, id := range []string{"2000000700000001", "2000000700000003", "2000000700000005"} {
		if p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "apple", apBundle, id)); p == nil || p.Paid().Via != relay.ViaRecovery {
			t.Errorf("%s not recovered: %+v", id, p)
		}
	}
	if f.store.Payment(relay.PaymentID(relay.EnvProduction, "apple", apBundle, "2000000700000002")) != nil {
		t.Error("a delivered notification was recovered: the sweep asks for failures only")
	}
	f.h.Clock.(interface{ Advance(time.Duration) }).Advance(time.Hour)
	if code, r := run(); code != 200 || r["recovered"] != 0.0 {
		t.Errorf("second sweep: %d %v, want nothing recovered twice", code, r)
	}
}

// 补单 for the App Store: an operator (or game server) asks for a transactionId; Get
// Transaction Info answers it signed, and it is relayed as its notification would be; a
// refunded one relays its refund after it; an unknown one is reported, not an error.
func TestAppleQueryByTransactionID(t *testing.T) {
	t.Parallel()
	f, _, api := appleAPIFixture(t)
	api.SetTransaction(providertest.AppleTransaction(apBundle, "2000000600000001", 64800, "CNY", "Production", testNow))
	refunded := providertest.AppleTransaction(apBundle, "2000000600000002", 64800, "CNY", "Production", testNow)
	refunded["revocationDate"], refunded["revocationType"], refunded["revocationPercentage"] = testNow.Add(time.Hour).UnixMilli(), "REFUND_PRORATED", 50000
	api.SetTransaction(refunded)
	ask := func(order string) (int, queryAnswer) {
		w := record(f.h.Admin, queryReq(`{"provider":"apple","merchant":"`+apBundle+`","order_id":"`+order+`","reason":"player 7 reports no gems"}`))
		var out queryAnswer
		json.Unmarshal(w.Body.Bytes(), &out)
		return w.Code, out
	}
	if code, out := ask("2000000600000001"); code != 200 || out.Action != "ingested" || out.Reported != "PURCHASED" {
		t.Fatalf("a purchase: %d %+v", code, out)
	}
	if code, out := ask("2000000600000002"); code != 200 || out.Action != "ingested" || len(out.Refunds) != 1 || out.Refunds[0].Action != "ingested" {
		t.Fatalf("a refunded purchase: %d %+v", code, out)
	}
	if p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "apple", apBundle, "2000000600000002")); p.RefundedMinor != 3240 {
		t.Errorf("the prorated refund: refunded %d, want 32.40 CNY (half of 64.80)", p.RefundedMinor)
	}
	if code, out := ask("2000000600000099"); code != 200 || out.Reported != "TRANSACTION_NOT_FOUND" || out.Action != "nothing to relay" {
		t.Errorf("an unknown transaction: %d %+v", code, out)
	}
	drain(t, f)
	if got := postedOf(f, "2000000600000002"); got != "paid "+relay.RefundKey("refund-2000000600000002") {
		t.Errorf("posted %q", got)
	}
}

// "Send a test notification": the dashboard asks Apple, Apple's TEST arrives at Ingest, the
// dashboard shows when.
func TestAppleTestNotificationFromTheDashboard(t *testing.T) {
	t.Parallel()
	f, chain, api := appleAPIFixture(t)
	w := httptest.NewRecorder()
	f.h.Admin(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if !strings.Contains(w.Body.String(), `id="apple-tests"`) || !strings.Contains(w.Body.String(), `<td class="last-test">never</td>`) {
		t.Fatalf("the overview lacks the App Store test row:\n%s", w.Body)
	}
	req := httptest.NewRequest(http.MethodPost, "/api/apple/test", strings.NewReader(`{"bundle_id":"`+apBundle+`","environment":"production","reason":"after the deploy"}`))
	req.Header.Set("Content-Type", "application/json")
	if w := record(f.h.Admin, req); w.Code != 200 || !strings.Contains(w.Body.String(), "test_notification_token") || api.Tests() != 1 {
		t.Fatalf("POST /api/apple/test: %d %s (apple asked %d times)", w.Code, w.Body, api.Tests())
	}
	// Apple sends the TEST.
	if code := appleSend(t, f, providertest.AppleNotification(chain, "TEST", "", apBundle, apID, "Production", nil, testNow)); code != 200 {
		t.Fatalf("TEST answered %d", code)
	}
	w = httptest.NewRecorder()
	f.h.Admin(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if !strings.Contains(w.Body.String(), `<td class="last-test">`+testNow.UTC().Format("2006-01-02 15:04:05")+` UTC</td>`) {
		t.Errorf("the overview does not show the TEST's arrival:\n%s", w.Body)
	}
}
