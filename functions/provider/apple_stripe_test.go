package provider_test

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

const (
	bundle  = "com.studio.sword"
	appleID = int64(1234567890)
)

var appleAt = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// The pinned root is Apple Root CA - G3, byte for byte: its published SHA-256 fingerprint.
func TestPinnedAppleRoot(t *testing.T) {
	t.Parallel()
	der, err := base64.StdEncoding.DecodeString(provider.AppleRootCAG3)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	if got := hex.EncodeToString(sum[:]); got != "63343abfb89a6a03ebb57e9b3f5fa7be7c4f5c756f3017b3a8c488c3653e9179" {
		t.Errorf("pinned root's SHA-256 = %s", got)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil || c.Subject.CommonName != "Apple Root CA - G3" {
		t.Errorf("pinned root = %v, %v", c.Subject, err)
	}
}

// appleFor is an Apple provider whose one app takes envs (production only when none).
func appleFor(t testing.TB, chain *providertest.AppleChain, envs ...string) *provider.Apple {
	a, err := provider.NewApple([]provider.AppleApp{{BundleID: bundle, AppAppleID: appleID, Game: "sword", Environments: envs}}, chain.Root)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAppleOneTimeChargeAndRefund(t *testing.T) {
	t.Parallel()
	chain := providertest.NewAppleChain(providertest.AppleChainOptions{})
	a := appleFor(t, chain)
	tx := providertest.AppleTransaction(bundle, "2000000812345678", 1990, "USD", "Production", appleAt)
	r, err := a.Parse(nil, providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", bundle, appleID, "Production", tx, appleAt), appleAt)
	if err != nil || r.Type != relay.TypePaymentSucceeded {
		t.Fatalf("ONE_TIME_CHARGE = %+v, %v", r, err)
	}
	p := r.Payment
	if p.OrderID != "2000000812345678" || p.Merchant != bundle || p.AmountMinor != 199 || p.Currency != "USD" || p.Game != "sword" || !p.PaidAt.Equal(appleAt) || p.Metadata["product_id"] != "com.studio.gems60" {
		t.Errorf("payment = %+v", p)
	}
	tx["revocationDate"] = appleAt.Add(time.Hour).UnixMilli()
	tx["revocationReason"] = 0
	r, err = a.Parse(nil, providertest.AppleNotification(chain, "REFUND", "", bundle, appleID, "Production", tx, appleAt.Add(time.Hour)), appleAt)
	if err != nil || r.Type != relay.TypePaymentRefunded || r.Refund.AmountMinor != 199 || r.Refund.ID != "refund-2000000812345678" || !r.Refund.RefundedAt.Equal(appleAt.Add(time.Hour)) {
		t.Fatalf("REFUND = %+v %+v, %v", r, r.Refund, err)
	}
	// JPY has no minor unit: 160000 milliunits are 160 yen.
	jpy := providertest.AppleTransaction(bundle, "2000000812345679", 160000, "JPY", "Production", appleAt)
	if r, err := a.Parse(nil, providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", bundle, appleID, "Production", jpy, appleAt), appleAt); err != nil || r.Payment.AmountMinor != 160 {
		t.Errorf("JPY = %+v, %v", r.Payment, err)
	}
	// Verified, not relayed: listed.
	for _, typ := range []string{"TEST", "CONSUMPTION_REQUEST", "REFUND_DECLINED", "EXPIRED", "DID_CHANGE_RENEWAL_STATUS"} {
		r, err := a.Parse(nil, providertest.AppleNotification(chain, typ, "", bundle, appleID, "Production", nil, appleAt), appleAt)
		if err != nil || r.Type != "" || r.Note == nil {
			t.Errorf("%s = %+v, %v; want a note", typ, r, err)
		}
		if _, listed := provider.NotRelayed["apple"][typ]; !listed {
			t.Errorf("%s is not on the documented list", typ)
		}
	}
}

func TestAppleRefusals(t *testing.T) {
	t.Parallel()
	good := providertest.NewAppleChain(providertest.AppleChainOptions{})
	tx := func(env string) map[string]any {
		return providertest.AppleTransaction(bundle, "2000000812345678", 990, "USD", env, appleAt)
	}
	body := func(c *providertest.AppleChain, bundleID string, id int64, env string) []byte {
		return providertest.AppleNotification(c, "ONE_TIME_CHARGE", "", bundleID, id, env, tx(env), appleAt)
	}
	other := providertest.NewAppleChain(providertest.AppleChainOptions{})
	tampered := func() []byte {
		b := body(good, bundle, appleID, "Production")
		s := string(b)
		// Swap the payload of the outer JWS for another's (same header, other claims).
		parts := strings.Split(strings.TrimSuffix(strings.TrimPrefix(s, `{"signedPayload":"`), `"}`), ".")
		alt := strings.Split(strings.TrimSuffix(strings.TrimPrefix(string(body(good, "com.other.app", appleID, "Production")), `{"signedPayload":"`), `"}`), ".")
		return []byte(`{"signedPayload":"` + parts[0] + "." + alt[1] + "." + parts[2] + `"}`)
	}()
	noLeafOID := providertest.NewAppleChain(providertest.AppleChainOptions{NoLeafOID: true})
	noInterOID := providertest.NewAppleChain(providertest.AppleChainOptions{NoIntermediateOID: true})
	expired := providertest.NewAppleChain(providertest.AppleChainOptions{LeafNotAfter: appleAt.Add(-time.Hour)})
	cases := map[string]struct {
		apple *provider.Apple
		body  []byte
		code  int
	}{
		"another root":                 {appleFor(t, good), body(other, bundle, appleID, "Production"), http.StatusUnauthorized},
		"tampered payload":             {appleFor(t, good), tampered, http.StatusUnauthorized},
		"wrong bundle id":              {appleFor(t, good), body(good, "com.other.app", appleID, "Production"), http.StatusForbidden},
		"wrong app apple id":           {appleFor(t, good), body(good, bundle, 99, "Production"), http.StatusForbidden},
		"not a JWS":                    {appleFor(t, good), []byte(`{"signedPayload":"abc"}`), http.StatusBadRequest},
		"leaf without its OID":         {appleFor(t, noLeafOID), body(noLeafOID, bundle, appleID, "Production"), http.StatusUnauthorized},
		"intermediate without its OID": {appleFor(t, noInterOID), body(noInterOID, bundle, appleID, "Production"), http.StatusUnauthorized},
		"leaf expired at signedDate":   {appleFor(t, expired), body(expired, bundle, appleID, "Production"), http.StatusUnauthorized},
	}
	for name, tc := range cases {
		_, err := tc.apple.Parse(nil, tc.body, appleAt)
		var ref *provider.Refusal
		if !errors.As(err, &ref) || ref.Code != tc.code {
			t.Errorf("%s: %v, want a %d refusal", name, err, tc.code)
		}
	}
	// The environment is Apple's: Sandbox and Xcode are sandbox, Production is production. An
	// app configured for the other environment is a configuration mistake, not a refusal: the
	// result is acknowledged and stored not relayed (Mismatch), so Apple does not retry it for
	// days and the operator is alerted.
	for _, tc := range []struct {
		envs         []string
		apple        string
		want         relay.Environment
		wantMismatch bool
	}{
		{nil, "Production", relay.EnvProduction, false},
		{nil, "Sandbox", relay.EnvSandbox, true},
		{[]string{"production", "sandbox"}, "Sandbox", relay.EnvSandbox, false},
		{[]string{"production", "sandbox"}, "Xcode", relay.EnvSandbox, false},
		{[]string{"sandbox"}, "Production", relay.EnvProduction, true},
		{[]string{"sandbox"}, "Sandbox", relay.EnvSandbox, false},
	} {
		r, err := appleFor(t, good, tc.envs...).Parse(nil, body(good, bundle, appleID, tc.apple), appleAt)
		if err != nil || r.Type != relay.TypePaymentSucceeded || r.Payment.Environment != tc.want || (r.Mismatch != "") != tc.wantMismatch {
			t.Errorf("app for %v, %s notification: environment %q, mismatch %q, %v; want %q, mismatch %v", tc.envs, tc.apple, r.Payment.Environment, r.Mismatch, err, tc.want, tc.wantMismatch)
		}
	}
	if _, err := provider.NewApple([]provider.AppleApp{{BundleID: bundle, AppAppleID: appleID, Game: "sword", Environments: []string{"staging"}}}, good.Root); err == nil {
		t.Error("environments [staging] accepted")
	}
	// The former allow_sandbox is refused by name, with its replacement.
	cfg, err := provider.ParseConfig(`{"apple":[{"bundle_id":"` + bundle + `","app_apple_id":1,"game":"sword","allow_sandbox":true}]}`)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate([]string{"sword"}); err == nil || !strings.Contains(err.Error(), `allow_sandbox is replaced by "environments"`) {
		t.Errorf("a configuration with allow_sandbox: %v", err)
	}
}

const (
	stripeSecret    = "whsec_test_0123456789abcdefghijklmnopqrstuv"
	stripeSecretNew = "whsec_test_newnewnewnewnewnewnewnewnewnewn"
	stripeAcct      = "acct_1Studio"
)

func stripe(t testing.TB) *provider.Stripe {
	s, err := provider.NewStripe([]provider.StripeAccount{{Account: stripeAcct, Secrets: []string{stripeSecret, stripeSecretNew}, Game: "sword"}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStripeEvents(t *testing.T) {
	t.Parallel()
	s := stripe(t)
	at := appleAt
	parse := func(typ string, obj map[string]any, secrets ...string) (relay.Result, error) {
		b := providertest.StripeEvent(typ, obj, at)
		return s.Parse(providertest.SignStripe(b, at, secrets...), b, at)
	}
	r, err := parse("checkout.session.completed", providertest.StripeSession("web-1", "pi_1", 1999, "USD", "paid"), stripeSecret)
	if err != nil || r.Type != relay.TypePaymentSucceeded || r.Payment.OrderID != "web-1" || r.Payment.TransactionID != "pi_1" || r.Payment.AmountMinor != 1999 || r.Payment.Currency != "USD" || r.Payment.Merchant != stripeAcct {
		t.Fatalf("checkout.session.completed = %+v, %v", r, err)
	}
	if r, err := parse("checkout.session.async_payment_succeeded", providertest.StripeSession("web-2", "pi_2", 500, "EUR", "paid"), stripeSecretNew); err != nil || r.Type != relay.TypePaymentSucceeded {
		t.Errorf("async_payment_succeeded with the new secret = %+v, %v", r, err)
	}
	if r, err := parse("checkout.session.completed", providertest.StripeSession("web-3", "pi_3", 500, "EUR", "unpaid"), stripeSecret); err != nil || r.Type != "" || r.Note.Kind != "checkout.session.completed.unpaid" {
		t.Errorf("completed unpaid = %+v, %v; want a note", r, err)
	}
	r, err = parse("charge.refunded", providertest.StripeCharge("pi_1", "web-1", 1999, 500, "USD", "re_1", at), stripeSecret)
	if err != nil || r.Type != relay.TypePaymentRefunded || r.Payment.OrderID != "web-1" || r.Refund.ID != "re_1" || r.Refund.CumulativeMinor != 500 {
		t.Fatalf("charge.refunded = %+v %+v, %v", r, r.Refund, err)
	}
	r, err = parse("refund.updated", providertest.StripeRefund("re_1", "pi_1", "web-1", 500, "USD", "succeeded", at), stripeSecret)
	if err != nil || r.Type != relay.TypePaymentRefunded || r.Refund.ID != "re_1" || r.Refund.AmountMinor != 500 {
		t.Fatalf("refund.updated = %+v, %v", r, err)
	}
	if r, err := parse("refund.updated", providertest.StripeRefund("re_2", "pi_1", "web-1", 500, "USD", "failed", at), stripeSecret); err != nil || r.Note == nil || !r.Note.Alert {
		t.Errorf("a failed refund = %+v, %v; want an alerting note", r, err)
	}
	if r, err := parse("charge.refunded", providertest.StripeCharge("pi_1", "web-1", 1999, 500, "USD", "", at), stripeSecret); err != nil || r.Note == nil {
		t.Errorf("charge.refunded without its refund = %+v, %v; want a note", r, err)
	}
	if r, err := parse("customer.created", map[string]any{"id": "cus_1"}, stripeSecret); err != nil || r.Note == nil || r.Note.Kind != "*" {
		t.Errorf("another event = %+v, %v; want a note", r, err)
	}
	// Refusals.
	b := providertest.StripeEvent("checkout.session.completed", providertest.StripeSession("web-9", "pi_9", 100, "USD", "paid"), at)
	for name, h := range map[string]http.Header{
		"wrong secret":    providertest.SignStripe(b, at, "whsec_someone_else"),
		"stale timestamp": providertest.SignStripe(b, at.Add(-6*time.Minute), stripeSecret),
		"no signature":    {},
	} {
		if _, err := s.Parse(h, b, at); refusalCode(t, err) != http.StatusUnauthorized {
			t.Errorf("%s: %v, want 401", name, err)
		}
	}
	h := providertest.SignStripe(b, at, stripeSecret)
	if _, err := s.Parse(h, []byte(strings.Replace(string(b), `"amount_total":100`, `"amount_total":1`, 1)), at); refusalCode(t, err) != http.StatusUnauthorized {
		t.Errorf("tampered body: %v, want 401", err)
	}
}

func FuzzAppleParse(f *testing.F) {
	chain := providertest.NewAppleChain(providertest.AppleChainOptions{})
	a := appleFor(f, chain, "production", "sandbox")
	f.Add(providertest.AppleNotification(chain, "ONE_TIME_CHARGE", "", bundle, appleID, "Production",
		providertest.AppleTransaction(bundle, "1", 990, "USD", "Production", appleAt), appleAt))
	f.Add([]byte(`{"signedPayload":"a.b.c"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := a.Parse(nil, body, appleAt)
		if err != nil {
			var ref *provider.Refusal
			if !errors.As(err, &ref) || ref.Code < 400 || ref.Code >= 500 || r.Type != "" {
				t.Fatalf("error %v is not a 4xx refusal", err)
			}
		}
	})
}

func FuzzStripeParse(f *testing.F) {
	s := stripe(f)
	b := providertest.StripeEvent("checkout.session.completed", providertest.StripeSession("web-1", "pi_1", 1999, "USD", "paid"), appleAt)
	f.Add(providertest.SignStripe(b, appleAt, stripeSecret).Get(provider.HeaderStripeSignature), b)
	f.Add("t=1,v1=00", []byte(`{}`))
	for _, ev := range [][]byte{
		providertest.StripeEventAt("evt_f1", "invoice.paid", providertest.StripeInvoice("in_1", "sub_1", "", 999, "usd", "subscription_cycle", map[string]string{"p": "1"}, appleAt, "2025-08-27.basil"), appleAt, "2025-08-27.basil", true),
		providertest.StripeEventAt("evt_f2", "invoice.paid", providertest.StripeInvoice("in_2", "sub_1", "pi_2", 50000, "isk", "subscription_cycle", nil, appleAt, "2024-06-20"), appleAt, "2024-06-20", true),
		providertest.StripeEventAt("evt_f3", "charge.refunded", providertest.StripeCharge("pi_1", "o-1", 1999, 500, "USD", "", appleAt), appleAt, "2023-10-16", true),
		providertest.StripeEventAt("evt_f4", "charge.refund.updated", providertest.StripeRefund("re_1", "pi_1", "o-1", 500, "KWD", "succeeded", appleAt), appleAt, "2022-08-01", true),
	} {
		f.Add(providertest.SignStripe(ev, appleAt, stripeSecret).Get(provider.HeaderStripeSignature), ev)
	}
	f.Fuzz(func(t *testing.T, sig string, body []byte) {
		h := http.Header{}
		h.Set(provider.HeaderStripeSignature, sig)
		if _, err := s.Parse(h, body, appleAt); err != nil {
			var ref *provider.Refusal
			if !errors.As(err, &ref) || ref.Code < 400 || ref.Code >= 500 {
				t.Fatalf("error %v is not a 4xx refusal", err)
			}
		}
	})
}
