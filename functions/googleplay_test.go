package functions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/api/option"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

const (
	gpPkg      = "com.studio.sword"
	gpAudience = "https://payrelay-ingest-123.asia-east1.run.app/?provider=googleplay"
	gpPushSA   = "payrelay-pubsub-push@studio-prod.iam.gserviceaccount.com"
)

func playFixture(t *testing.T) (*fixture, *providertest.PubSubSigner, *providertest.PlayAPI) {
	t.Helper()
	signer := providertest.NewPubSubSigner()
	api := providertest.NewPlayAPI()
	t.Cleanup(api.Close)
	gp, err := provider.NewGooglePlay(provider.GooglePlayConfig{Apps: []provider.GooglePlayApp{{PackageName: gpPkg, Game: "game-1", Environments: []string{"production", "sandbox"}}},
		Audience: gpAudience, ServiceAccount: gpPushSA, APIBase: api.URL + "/"},
		provider.GooglePlayOptions{Validator: signer.Validator(), APIOptions: []option.ClientOption{option.WithTokenSource(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "ya29.test"}))}})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t)
	f.h.Providers["googleplay"] = gp
	return f, signer, api
}

func playSend(f *fixture, token string, body []byte) int {
	req := httptest.NewRequest(http.MethodPost, "/Ingest?provider=googleplay", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	f.h.Ingest(w, req)
	return w.Code
}

// Every refusal of the push's token is a 401 before anything is read or stored.
func TestGooglePlayTokenRefusals(t *testing.T) {
	t.Parallel()
	f, signer, api := playFixture(t)
	body := providertest.PlayPush(providertest.PlayOneTime(gpPkg, 1, "tok-1", "gems_60"), "m-1")
	later := time.Now().Add(time.Hour)
	stranger := providertest.NewPubSubSigner()
	for name, token := range map[string]string{
		"no token":                "",
		"another audience":        signer.Token("https://elsewhere.example.com/", gpPushSA, later),
		"another service account": signer.Token(gpAudience, "someone@evil.iam.gserviceaccount.com", later),
		"expired":                 signer.Token(gpAudience, gpPushSA, time.Now().Add(-time.Minute)),
		"an unknown key":          stranger.Token(gpAudience, gpPushSA, later),
		"not a JWT":               "hello",
	} {
		if code := playSend(f, token, body); code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, code)
		}
	}
	if ops := f.store.Gets + f.store.Creates + f.store.Updates; ops != 0 || len(api.Requests()) != 0 {
		t.Errorf("refused pushes reached the store (%d operations) or the API (%v)", ops, api.Requests())
	}
	// A package no game owns: the 5xx that makes Pub/Sub redeliver.
	if code := playSend(f, signer.Token(gpAudience, gpPushSA, later), providertest.PlayPush(providertest.PlayOneTime("com.unknown", 1, "tok-1", "x"), "m-2")); code != http.StatusInternalServerError {
		t.Errorf("an unrouted package: %d, want 500", code)
	}
}

// One-time purchases end to end: the truth from the API, a pending purchase relayed once paid,
// a partial then a full void each relayed once, in order after the payment; a test purchase is
// a sandbox payment; the API failing at first (Pub/Sub redelivers) loses and doubles nothing.
func TestGooglePlayOneTimePurchases(t *testing.T) {
	t.Parallel()
	f, signer, api := playFixture(t)
	token := signer.Token(gpAudience, gpPushSA, time.Now().Add(time.Hour))
	at := testNow.Add(-time.Hour)
	api.SetProduct("tok-1", "GPA.3301-0001-0001-00001", "gems_60", "PURCHASED", 3, 3, false, "player-42")
	api.SetOrder("GPA.3301-0001-0001-00001", "tok-1", "USD", 2, 970000000, at) // 2.97 USD for 3
	api.FailNext(503)
	push := providertest.PlayPush(providertest.PlayOneTime(gpPkg, 1, "tok-1", "gems_60"), "m-1")
	if code := playSend(f, token, push); code != http.StatusServiceUnavailable {
		t.Fatalf("with the API down: %d, want 503", code)
	}
	for range 2 { // redelivered, then a duplicate messageId
		if code := playSend(f, token, push); code != http.StatusNoContent {
			t.Fatalf("purchase: %d", code)
		}
	}
	id := relay.PaymentID(relay.EnvProduction, "googleplay", gpPkg, "GPA.3301-0001-0001-00001")
	p := f.store.Payment(id)
	if p == nil || p.AmountMinor != 297 || p.Currency != "USD" || p.Metadata["obfuscated_account_id"] != "player-42" || p.Metadata["product_id"] != "gems_60" {
		t.Fatalf("payment %+v", p)
	}
	// A partial void (1 of 3), then the rest.
	api.SetProduct("tok-1", "GPA.3301-0001-0001-00001", "gems_60", "PURCHASED", 3, 2, false, "player-42")
	if code := playSend(f, token, providertest.PlayPush(providertest.PlayVoided(gpPkg, "tok-1", "GPA.3301-0001-0001-00001", 2, 2), "m-2")); code != http.StatusNoContent {
		t.Fatalf("partial void: %d", code)
	}
	api.SetProduct("tok-1", "GPA.3301-0001-0001-00001", "gems_60", "PURCHASED", 3, 0, false, "player-42")
	if code := playSend(f, token, providertest.PlayPush(providertest.PlayVoided(gpPkg, "tok-1", "GPA.3301-0001-0001-00001", 2, 1), "m-3")); code != http.StatusNoContent {
		t.Fatalf("full void: %d", code)
	}
	if p := f.store.Payment(id); refundsOf(p) != "voided-GPA.3301-0001-0001-00001-1:99 voided-GPA.3301-0001-0001-00001:198" || p.RefundedMinor != 297 {
		t.Fatalf("refunds %q, total %d; want 99 then the remaining 198", refundsOf(p), p.RefundedMinor)
	}
	// A pending purchase: recorded, then relayed once paid.
	api.SetProduct("tok-2", "GPA.3301-0002-0002-00002", "gems_60", "PENDING", 1, 1, false, "")
	api.SetOrder("GPA.3301-0002-0002-00002", "tok-2", "USD", 0, 990000000, at)
	push2 := providertest.PlayPush(providertest.PlayOneTime(gpPkg, 1, "tok-2", "gems_60"), "m-4")
	if code := playSend(f, token, push2); code != http.StatusNoContent || f.store.Payment(relay.PaymentID(relay.EnvProduction, "googleplay", gpPkg, "GPA.3301-0002-0002-00002")) != nil {
		t.Fatalf("a pending purchase: %d, stored %v; want acknowledged, nothing relayed", code, f.store.Payment(relay.PaymentID(relay.EnvProduction, "googleplay", gpPkg, "GPA.3301-0002-0002-00002")) != nil)
	}
	api.SetProduct("tok-2", "GPA.3301-0002-0002-00002", "gems_60", "PURCHASED", 1, 1, false, "")
	if code := playSend(f, token, providertest.PlayPush(providertest.PlayOneTime(gpPkg, 1, "tok-2", "gems_60"), "m-5")); code != http.StatusNoContent {
		t.Fatalf("the pending purchase paid: %d", code)
	}
	// A test purchase (a license tester) is a sandbox payment.
	api.SetProduct("tok-3", "GPA.3301-0003-0003-00003", "gems_60", "PURCHASED", 1, 1, true, "")
	api.SetOrder("GPA.3301-0003-0003-00003", "tok-3", "USD", 0, 990000000, at)
	if code := playSend(f, token, providertest.PlayPush(providertest.PlayOneTime(gpPkg, 1, "tok-3", "gems_60"), "m-6")); code != http.StatusNoContent {
		t.Fatalf("a test purchase: %d", code)
	}
	if p := f.store.Payment(relay.PaymentID(relay.EnvSandbox, "googleplay", gpPkg, "GPA.3301-0003-0003-00003")); p == nil || p.Paid().State != relay.StateNotRelayed {
		t.Fatalf("a test purchase: %+v; want a sandbox payment, never posted to production (this game has no sandbox endpoint)", p)
	}
	// A token the API does not know: acknowledged, alerted, never relayed.
	if code := playSend(f, token, providertest.PlayPush(providertest.PlayOneTime(gpPkg, 1, "tok-unknown", "gems_60"), "m-7")); code != http.StatusNoContent {
		t.Fatalf("an unknown token: %d", code)
	}
	drain(t, f)
	if got := postedOf(f, "GPA.3301-0001-0001-00001"); got != "paid "+relay.RefundKey("voided-GPA.3301-0001-0001-00001-1")+" "+relay.RefundKey("voided-GPA.3301-0001-0001-00001") {
		t.Errorf("posted %q: want the payment, then each void once", got)
	}
	if got := postedOf(f, "GPA.3301-0002-0002-00002"); got != "paid" {
		t.Errorf("the pending purchase posted %q, want it once paid", got)
	}
}

// A subscription with two renewals: each period a payment keyed by its order (GPA.xxxx..N),
// with the subscription block.
func TestGooglePlaySubscriptionRenewals(t *testing.T) {
	t.Parallel()
	f, signer, api := playFixture(t)
	token := signer.Token(gpAudience, gpPushSA, time.Now().Add(time.Hour))
	start := testNow.Add(-60 * 24 * time.Hour)
	for i, typ := range []int{4, 2, 2} {
		order := "GPA.3302-0001-0001-00001"
		if i > 0 {
			order += fmt.Sprintf("..%d", i-1)
		}
		at := start.Add(time.Duration(i) * 30 * 24 * time.Hour)
		api.SetSubscription("sub-tok", order, "monthly_card", at.Add(30*24*time.Hour), false, "player-7")
		api.SetOrder(order, "sub-tok", "JPY", 480, 0, at)
		if code := playSend(f, token, providertest.PlayPush(providertest.PlaySubscription(gpPkg, typ, "sub-tok", "monthly_card"), fmt.Sprintf("s-%d", i))); code != http.StatusNoContent {
			t.Fatalf("period %d: %d", i, code)
		}
		p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "googleplay", gpPkg, order))
		if p == nil || p.AmountMinor != 480 || p.Subscription == nil || p.Subscription.ProductID != "monthly_card" || !p.Subscription.ExpiresAt.Equal(at.Add(30*24*time.Hour)) {
			t.Fatalf("period %d stored %+v", i, p)
		}
	}
	// A status change moves no money: recorded, not relayed.
	if code := playSend(f, token, providertest.PlayPush(providertest.PlaySubscription(gpPkg, 3, "sub-tok", "monthly_card"), "s-9")); code != http.StatusNoContent || f.store.Len() != 3 {
		t.Fatalf("a cancellation: %d, %d payments", code, f.store.Len())
	}
}

// The voided-purchases sweep recovers a refund whose notification was lost, once; 补单 reads a
// purchase by its order id.
func TestGooglePlayVoidedSweepAndQuery(t *testing.T) {
	t.Parallel()
	f, signer, api := playFixture(t)
	f.h.ProviderConfig = provider.Config{GooglePlay: &provider.GooglePlayConfig{Apps: []provider.GooglePlayApp{{PackageName: gpPkg, Game: "game-1"}}}}
	token := signer.Token(gpAudience, gpPushSA, time.Now().Add(time.Hour))
	at := testNow.Add(-2 * time.Hour)
	api.SetProduct("tok-9", "GPA.3309-0009-0009-00009", "gems_60", "PURCHASED", 1, 1, false, "")
	api.SetOrder("GPA.3309-0009-0009-00009", "tok-9", "EUR", 4, 990000000, at)
	if code := playSend(f, token, providertest.PlayPush(providertest.PlayOneTime(gpPkg, 1, "tok-9", "gems_60"), "v-1")); code != http.StatusNoContent {
		t.Fatalf("purchase: %d", code)
	}
	api.AddVoided("tok-9", "GPA.3309-0009-0009-00009", testNow.Add(-time.Hour), 0) // its notification lost
	run := func() map[string]any {
		w := httptest.NewRecorder()
		f.h.Recover(w, httptest.NewRequest(http.MethodPost, "/", nil))
		var out struct{ Runs []map[string]any }
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || w.Code != 200 || len(out.Runs) != 1 {
			t.Fatalf("Recover = %d %s", w.Code, w.Body)
		}
		return out.Runs[0]
	}
	if r := run(); r["recovered"] != 1.0 {
		t.Fatalf("first sweep %v, want the lost refund recovered", r)
	}
	f.h.Clock.(interface{ Advance(time.Duration) }).Advance(time.Hour)
	if r := run(); r["recovered"] != 0.0 {
		t.Fatalf("second sweep %v, want nothing twice", r)
	}
	p := f.store.Payment(relay.PaymentID(relay.EnvProduction, "googleplay", gpPkg, "GPA.3309-0009-0009-00009"))
	if refundsOf(p) != "voided-GPA.3309-0009-0009-00009:499" || p.RefundByID("voided-GPA.3309-0009-0009-00009").Via != relay.ViaRecovery {
		t.Fatalf("refunds %q", refundsOf(p))
	}
	// 补单 by order id: a purchase never notified.
	api.SetProduct("tok-10", "GPA.3310-0010-0010-00010", "gems_60", "PURCHASED", 1, 1, false, "player-1")
	api.SetOrder("GPA.3310-0010-0010-00010", "tok-10", "EUR", 0, 990000000, at)
	w := record(f.h.Admin, queryReq(`{"provider":"googleplay","merchant":"`+gpPkg+`","order_id":"GPA.3310-0010-0010-00010","reason":"player 1 reports no gems"}`))
	var out queryAnswer
	json.Unmarshal(w.Body.Bytes(), &out)
	if w.Code != 200 || out.Action != "ingested" || out.Reported != "PURCHASED" {
		t.Fatalf("补单: %d %s", w.Code, w.Body)
	}
}

func FuzzGooglePlayEnvelope(f *testing.F) {
	signer := providertest.NewPubSubSigner()
	gp, err := provider.NewGooglePlay(provider.GooglePlayConfig{Apps: []provider.GooglePlayApp{{PackageName: gpPkg, Game: "game-1"}}, Audience: gpAudience, ServiceAccount: gpPushSA},
		provider.GooglePlayOptions{Validator: signer.Validator()})
	if err != nil {
		f.Fatal(err)
	}
	h := http.Header{}
	h.Set("Authorization", "Bearer "+signer.Token(gpAudience, gpPushSA, time.Now().Add(24*time.Hour)))
	f.Add(providertest.PlayPush(providertest.PlayOneTime(gpPkg, 1, "tok-1", "gems_60"), "m-1"))
	f.Add(providertest.PlayPush(providertest.PlayVoided(gpPkg, "tok-1", "GPA.1", 2, 2), "m-2"))
	f.Add(providertest.PlayPush(map[string]any{"packageName": gpPkg, "testNotification": map[string]any{"version": "1.0"}}, "m-3"))
	f.Add([]byte(`{"message":{"data":"!!"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := gp.Parse(h, body, time.Now())
		if err != nil {
			var ref *provider.Refusal
			if !errors.As(err, &ref) || ref.Code < 400 || ref.Code >= 600 {
				t.Fatalf("error %v is not a refusal", err)
			}
			return
		}
		if r.Note == nil || r.Type != "" {
			t.Fatalf("a push read as %+v: Parse only verifies and routes; the API tells what it is", r)
		}
	})
}

// Every RTDN type to its outcome: relayed as its type, or listed not relayed (functions/provider/README.md's table).
func TestGooglePlayEveryNotificationType(t *testing.T) {
	t.Parallel()
	_, signer, api := playFixture(t)
	gp, err := provider.NewGooglePlay(provider.GooglePlayConfig{Apps: []provider.GooglePlayApp{{PackageName: gpPkg, Game: "game-1"}}, Audience: gpAudience, ServiceAccount: gpPushSA, APIBase: api.URL + "/"},
		provider.GooglePlayOptions{Validator: signer.Validator(), APIOptions: []option.ClientOption{option.WithTokenSource(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "t"}))}})
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("Authorization", "Bearer "+signer.Token(gpAudience, gpPushSA, time.Now().Add(time.Hour)))
	api.SetSubscription("s-tok", "GPA.1-1..3", "monthly", testNow.Add(24*time.Hour), false, "")
	api.SetOrder("GPA.1-1..3", "s-tok", "USD", 4, 990000000, testNow)
	api.SetProduct("p-tok", "GPA.2-2", "gems", "PURCHASED", 1, 1, false, "")
	api.SetProduct("pending-tok", "GPA.3-3", "gems", "PENDING", 1, 1, false, "")
	api.SetOrder("GPA.2-2", "p-tok", "USD", 0, 990000000, testNow)
	api.SetOrder("GPA.3-3", "pending-tok", "USD", 0, 990000000, testNow)
	check := func(name string, n map[string]any, want relay.Type, note string) {
		t.Helper()
		body := providertest.PlayPush(n, name)
		r, err := gp.Parse(h, body, testNow)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		rs, err := gp.Complete(context.Background(), body, r)
		if err != nil || len(rs) != 1 {
			t.Fatalf("%s: %v %v", name, rs, err)
		}
		got := ""
		if rs[0].Note != nil {
			got = rs[0].Note.Kind
			if _, listed := provider.NotRelayed["googleplay"][got]; !listed {
				t.Errorf("%s: note %q is not on the documented list", name, got)
			}
		}
		if rs[0].Type != want || got != note {
			t.Errorf("%s = %q note %q; want %q note %q", name, rs[0].Type, got, want, note)
		}
	}
	for typ, name := range map[int]string{1: "SUBSCRIPTION_RECOVERED", 2: "SUBSCRIPTION_RENEWED", 3: "SUBSCRIPTION_CANCELED", 4: "SUBSCRIPTION_PURCHASED",
		5: "SUBSCRIPTION_ON_HOLD", 6: "SUBSCRIPTION_IN_GRACE_PERIOD", 7: "SUBSCRIPTION_RESTARTED", 8: "SUBSCRIPTION_PRICE_CHANGE_CONFIRMED", 9: "SUBSCRIPTION_DEFERRED",
		10: "SUBSCRIPTION_PAUSED", 11: "SUBSCRIPTION_PAUSE_SCHEDULE_CHANGED", 12: "SUBSCRIPTION_REVOKED", 13: "SUBSCRIPTION_EXPIRED", 17: "SUBSCRIPTION_ITEMS_CHANGED",
		18: "SUBSCRIPTION_CANCELLATION_SCHEDULED", 19: "SUBSCRIPTION_PRICE_CHANGE_UPDATED", 20: "SUBSCRIPTION_PENDING_PURCHASE_CANCELED"} {
		want, note := relay.Type(""), name
		switch typ {
		case 1, 2, 4, 7:
			want, note = relay.TypePaymentSucceeded, ""
		case 12:
			want, note = relay.TypePaymentRevoked, ""
		}
		check(name, providertest.PlaySubscription(gpPkg, typ, "s-tok", "monthly"), want, note)
	}
	check("ONE_TIME_PRODUCT_PURCHASED", providertest.PlayOneTime(gpPkg, 1, "p-tok", "gems"), relay.TypePaymentSucceeded, "")
	check("pending", providertest.PlayOneTime(gpPkg, 1, "pending-tok", "gems"), "", "PURCHASE_PENDING")
	check("ONE_TIME_PRODUCT_CANCELED of a pending one", providertest.PlayOneTime(gpPkg, 2, "pending-tok", "gems"), "", "PURCHASE_PENDING")
	check("voided", providertest.PlayVoided(gpPkg, "p-tok", "GPA.2-2", 2, 1), relay.TypePaymentRefunded, "")
	check("an unknown token", providertest.PlayOneTime(gpPkg, 1, "nope", "gems"), "", "API_CONTRADICTS")
	check("test", map[string]any{"packageName": gpPkg, "testNotification": map[string]any{"version": "1.0"}}, "", "TEST")
}
