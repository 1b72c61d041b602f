package functions

import (
	"bytes"
	"net/http"
	"net/http/httptest"
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
