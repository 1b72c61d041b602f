package provider_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

// Every App Store notification type and subtype to its outcome: relayed as its type, or
// recorded and listed not relayed (functions/provider/README.md's table says the same).
func TestAppleEveryNotificationType(t *testing.T) {
	t.Parallel()
	chain := providertest.NewAppleChain(providertest.AppleChainOptions{})
	a := appleFor(t, chain)
	month := 30 * 24 * time.Hour
	period := providertest.AppleSubscription(bundle, "2000000900000002", "2000000900000001", 6990, "USD", "Production", appleAt, appleAt.Add(month))
	free := providertest.AppleSubscription(bundle, "2000000900000001", "2000000900000001", 0, "USD", "Production", appleAt, appleAt.Add(7*24*time.Hour))
	refunded := func(typ string, pct int64) map[string]any {
		tx := providertest.AppleTransaction(bundle, "2000000800000001", 64800, "CNY", "Production", appleAt)
		tx["revocationDate"], tx["revocationReason"] = appleAt.Add(time.Hour).UnixMilli(), 1
		if typ != "" {
			tx["revocationType"] = typ
		}
		if pct > 0 {
			tx["revocationPercentage"] = pct
		}
		return tx
	}
	cases := []struct {
		typ, subtype string
		tx           map[string]any
		want         relay.Type
		note         string
	}{
		{"ONE_TIME_CHARGE", "", providertest.AppleTransaction(bundle, "2000000800000001", 64800, "CNY", "Production", appleAt), relay.TypePaymentSucceeded, ""},
		{"SUBSCRIBED", "INITIAL_BUY", period, relay.TypePaymentSucceeded, ""},
		{"SUBSCRIBED", "INITIAL_BUY", free, "", "FREE_PERIOD"},
		{"SUBSCRIBED", "RESUBSCRIBE", period, relay.TypePaymentSucceeded, ""},
		{"DID_RENEW", "", period, relay.TypePaymentSucceeded, ""},
		{"DID_RENEW", "BILLING_RECOVERY", period, relay.TypePaymentSucceeded, ""},
		{"OFFER_REDEEMED", "RESUBSCRIBE", period, relay.TypePaymentSucceeded, ""},
		{"OFFER_REDEEMED", "INITIAL_BUY", free, "", "FREE_PERIOD"},
		{"DID_CHANGE_RENEWAL_PREF", "UPGRADE", period, relay.TypePaymentSucceeded, ""},
		{"DID_CHANGE_RENEWAL_PREF", "DOWNGRADE", period, "", "DID_CHANGE_RENEWAL_PREF.DOWNGRADE"},
		{"REFUND", "", refunded("", 0), relay.TypePaymentRefunded, ""},
		{"REFUND", "", refunded("REFUND_FULL", 0), relay.TypePaymentRefunded, ""},
		{"REFUND", "", refunded("REFUND_PRORATED", 40000), relay.TypePaymentRefunded, ""},
		{"REFUND", "", refunded("FAMILY_REVOKE", 0), relay.TypePaymentRevoked, ""},
		{"REVOKE", "", providertest.AppleTransaction(bundle, "2000000800000001", 64800, "CNY", "Production", appleAt), relay.TypePaymentRevoked, ""},
		{"REFUND_REVERSED", "", providertest.AppleTransaction(bundle, "2000000800000001", 64800, "CNY", "Production", appleAt), relay.TypeRefundReversed, ""},
		{"RENEWAL_EXTENDED", "", period, relay.TypeSubscriptionExtended, ""},
		{"REFUND_DECLINED", "", providertest.AppleTransaction(bundle, "2000000800000001", 64800, "CNY", "Production", appleAt), "", "REFUND_DECLINED"},
		{"CONSUMPTION_REQUEST", "", providertest.AppleTransaction(bundle, "2000000800000001", 64800, "CNY", "Production", appleAt), "", "CONSUMPTION_REQUEST"},
		{"DID_CHANGE_RENEWAL_STATUS", "AUTO_RENEW_DISABLED", period, "", "DID_CHANGE_RENEWAL_STATUS.AUTO_RENEW_DISABLED"},
		{"DID_FAIL_TO_RENEW", "GRACE_PERIOD", period, "", "DID_FAIL_TO_RENEW.GRACE_PERIOD"},
		{"DID_FAIL_TO_RENEW", "", period, "", "DID_FAIL_TO_RENEW"},
		{"EXPIRED", "VOLUNTARY", period, "", "EXPIRED.VOLUNTARY"},
		{"EXPIRED", "BILLING_RETRY", period, "", "EXPIRED.BILLING_RETRY"},
		{"GRACE_PERIOD_EXPIRED", "", period, "", "GRACE_PERIOD_EXPIRED"},
		{"PRICE_INCREASE", "PENDING", period, "", "PRICE_INCREASE.PENDING"},
		{"RENEWAL_EXTENSION", "SUMMARY", nil, "", "RENEWAL_EXTENSION.SUMMARY"},
		{"TEST", "", nil, "", "TEST"},
		{"METADATA_UPDATE", "", period, "", "METADATA_UPDATE"},
		{"MIGRATION", "", period, "", "MIGRATION"},
		{"PRICE_CHANGE", "", period, "", "PRICE_CHANGE"},
		{"RESCIND_CONSENT", "", period, "", "RESCIND_CONSENT"},
		{"EXTERNAL_PURCHASE_TOKEN", "UNREPORTED", nil, "", "EXTERNAL_PURCHASE_TOKEN.UNREPORTED"},
	}
	for _, tc := range cases {
		t.Run(tc.typ+" "+tc.subtype, func(t *testing.T) {
			r, err := a.Parse(nil, providertest.AppleNotification(chain, tc.typ, tc.subtype, bundle, appleID, "Production", tc.tx, appleAt.Add(2*time.Hour)), appleAt)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if r.Note != nil {
				got = r.Note.Kind
				typ, _, _ := strings.Cut(got, ".")
				if _, listed := provider.NotRelayed["apple"][typ]; !listed {
					t.Errorf("note %q is not on the documented list", got)
				}
			}
			if r.Type != tc.want || got != tc.note {
				t.Errorf("= %q note %q; want %q note %q", r.Type, got, tc.want, tc.note)
			}
			if r.Type == relay.TypePaymentSucceeded && tc.tx["type"] == "Auto-Renewable Subscription" {
				s := r.Payment.Subscription
				if s == nil || s.ID != "2000000900000001" || r.Payment.OrderID != "2000000900000002" || !s.ExpiresAt.Equal(appleAt.Add(month)) || s.ProductID != "com.studio.monthly_card" ||
					!strings.HasPrefix(s.Reason, tc.typ) || r.Payment.AmountMinor != 699 {
					t.Errorf("a period's payment %+v subscription %+v", r.Payment, s)
				}
			}
		})
	}
	// An unknown type is refused, so Apple retries and the log says what it was.
	if _, err := a.Parse(nil, providertest.AppleNotification(chain, "SOMETHING_NEW", "", bundle, appleID, "Production", nil, appleAt), appleAt); refusalCode(t, err) != http.StatusUnprocessableEntity {
		t.Errorf("an unknown type: %v, want 422", err)
	}
}

// REFUND_PRORATED refunds revocationPercentage (milli-percent) of the price, in exact integer
// arithmetic rounded half up to the minor unit.
func TestAppleProratedRefund(t *testing.T) {
	t.Parallel()
	chain := providertest.NewAppleChain(providertest.AppleChainOptions{})
	a := appleFor(t, chain)
	for _, tc := range []struct {
		price    int64 // milliunits
		currency string
		pct      int64
		want     int64 // minor units
	}{
		{6990, "USD", 50000, 350},      // 50% of 6.99: 3.495 -> 3.50
		{6990, "USD", 67932, 475},      // 67.932% of 699 cents: 474.84 -> 475
		{6990, "USD", 15, 0},           // 0.015%: 0.1 cent rounds to nothing: refused
		{160000, "JPY", 33333, 53},     // 33.333% of 160 yen: 53.33 -> 53
		{1250, "KWD", 40000, 500},      // 40% of 1.250 KWD: 0.500
		{648000, "CNY", 100000, 64800}, // 100%
	} {
		tx := providertest.AppleTransaction(bundle, "2000000800000009", tc.price, tc.currency, "Production", appleAt)
		tx["revocationDate"], tx["revocationType"], tx["revocationPercentage"] = appleAt.Add(time.Hour).UnixMilli(), "REFUND_PRORATED", tc.pct
		r, err := a.Parse(nil, providertest.AppleNotification(chain, "REFUND", "", bundle, appleID, "Production", tx, appleAt), appleAt)
		if tc.want == 0 {
			if refusalCode(t, err) != http.StatusUnprocessableEntity {
				t.Errorf("%d%% of %d %s: %v, want refused", tc.pct, tc.price, tc.currency, err)
			}
			continue
		}
		if err != nil || r.Refund.AmountMinor != tc.want {
			t.Errorf("%d milli-percent of %d milli%s = %+v, %v; want %d", tc.pct, tc.price, tc.currency, r.Refund, err, tc.want)
		}
	}
}

// A signed transaction forwarded by the app: verified like a notification's, the same payment
// (keyed by transactionId) as its notification; refusals for another bundle, the wrong
// environment, a broken chain, a product type payrelay does not relay.
func TestAppleSignedTransactionFromTheApp(t *testing.T) {
	t.Parallel()
	chain := providertest.NewAppleChain(providertest.AppleChainOptions{})
	a := appleFor(t, chain)
	tx := providertest.AppleTransaction(bundle, "2000000812340001", 1990, "USD", "Production", appleAt)
	fromApp, err := a.Parse(nil, providertest.AppleSignedTransaction(chain, tx), appleAt)
	if err != nil || fromApp.Type != relay.TypePaymentSucceeded || fromApp.Payment.Metadata["app_account_token"] != "7e3fb20b-4cdb-47cc-936d-99d65f608138" {
		t.Fatalf("from the app: %+v, %v", fromApp, err)
	}
	fromApple, err := a.Parse(nil, providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", bundle, appleID, "Production", tx, appleAt), appleAt)
	if err != nil || !fromApple.Payment.SameFacts(&fromApp.Payment) || fromApple.Payment.OrderID != fromApp.Payment.OrderID {
		t.Fatalf("the app's and Apple's readings differ:\n%+v\n%+v", fromApp.Payment, fromApple.Payment)
	}
	other := providertest.NewAppleChain(providertest.AppleChainOptions{})
	sandbox := providertest.AppleTransaction(bundle, "2000000812340002", 1990, "USD", "Sandbox", appleAt)
	foreign := providertest.AppleTransaction("com.someone.else", "2000000812340003", 1990, "USD", "Production", appleAt)
	auto := providertest.AppleTransaction(bundle, "2000000812340004", 1990, "USD", "Production", appleAt)
	auto["type"] = "Something New"
	revoked := providertest.AppleTransaction(bundle, "2000000812340005", 1990, "USD", "Production", appleAt)
	revoked["revocationDate"] = appleAt.UnixMilli()
	for name, tc := range map[string]struct {
		body []byte
		code int
	}{
		"another bundle":          {providertest.AppleSignedTransaction(chain, foreign), http.StatusForbidden},
		"sandbox, production app": {providertest.AppleSignedTransaction(chain, sandbox), http.StatusForbidden},
		"signed by another chain": {providertest.AppleSignedTransaction(other, tx), http.StatusUnauthorized},
		"an unknown product type": {providertest.AppleSignedTransaction(chain, auto), http.StatusUnprocessableEntity},
		"revoked":                 {providertest.AppleSignedTransaction(chain, revoked), http.StatusUnprocessableEntity},
		"both payloads":           {[]byte(`{"signedPayload":"a.b.c","signedTransactionInfo":"a.b.c"}`), http.StatusBadRequest},
		"not a JWS":               {[]byte(`{"signedTransactionInfo":"hello"}`), http.StatusBadRequest},
		"oversized":               {[]byte(`{"signedTransactionInfo":"` + strings.Repeat("a", provider.MaxAppleJWS+1) + `"}`), http.StatusRequestEntityTooLarge},
	} {
		_, err := a.Parse(nil, tc.body, appleAt)
		var ref *provider.Refusal
		if !errors.As(err, &ref) || ref.Code != tc.code {
			t.Errorf("%s: %v, want %d", name, err, tc.code)
		}
	}
	// The sandbox's signed transaction for an app configured for it: a sandbox payment.
	both := appleFor(t, chain, "production", "sandbox")
	if r, err := both.Parse(nil, providertest.AppleSignedTransaction(chain, sandbox), appleAt); err != nil || r.Payment.Environment != relay.EnvSandbox {
		t.Errorf("sandbox for a sandbox app: %+v, %v", r.Payment, err)
	}
}

func FuzzAppleSignedTransaction(f *testing.F) {
	chain := providertest.NewAppleChain(providertest.AppleChainOptions{})
	a := appleFor(f, chain, "production", "sandbox")
	f.Add(providertest.AppleSignedTransaction(chain, providertest.AppleTransaction(bundle, "1", 990, "USD", "Production", appleAt)))
	f.Add(providertest.AppleSignedTransaction(chain, providertest.AppleSubscription(bundle, "2", "1", 6990, "USD", "Sandbox", appleAt, appleAt.Add(time.Hour))))
	f.Add([]byte(`{"signedTransactionInfo":"a.b.c"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := a.Parse(nil, body, appleAt)
		if err != nil {
			var ref *provider.Refusal
			if !errors.As(err, &ref) || ref.Code < 400 || ref.Code >= 500 || r.Type != "" {
				t.Fatalf("error %v is not a 4xx refusal", err)
			}
			return
		}
		if r.Type != "" {
			if verr := r.Validate(); verr != nil {
				t.Fatalf("a result that does not validate: %v", verr)
			}
		}
	})
}
