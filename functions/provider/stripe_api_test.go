package provider_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

const stripeKey = "rk_live_0123456789"

func stripeWithAPI(t *testing.T) (*provider.Stripe, *providertest.StripeAPI) {
	t.Helper()
	api := providertest.NewStripeAPI(stripeKey)
	t.Cleanup(api.Close)
	s, err := provider.NewStripe([]provider.StripeAccount{{Account: stripeAcct, Secrets: []string{stripeSecret}, Game: "sword",
		APIKeys: map[string]string{"production": stripeKey}, APIBase: api.URL}})
	if err != nil {
		t.Fatal(err)
	}
	return s, api
}

// Every Stripe event type payrelay takes, in the layouts of the API versions in the field,
// to its outcome: relayed (the type), or a note on the documented list.
func TestStripeEventTable(t *testing.T) {
	t.Parallel()
	s := stripe(t)
	at := appleAt
	sub := providertest.StripeSession("s-1", "", 999, "USD", "paid")
	sub["mode"] = "subscription"
	md := map[string]string{"player_id": "p-1"}
	noSub := providertest.StripeInvoice("in_x", "", "pi_x", 999, "usd", "manual", nil, at, "2024-06-20")
	delete(noSub, "subscription")
	for _, tc := range []struct {
		name, typ, version string
		obj                map[string]any
		want               relay.Type
		note               string
		order              string
		amount             int64
	}{
		{"paid session", "checkout.session.completed", "2024-06-20", providertest.StripeSession("o-1", "pi_1", 1999, "USD", "paid"), relay.TypePaymentSucceeded, "", "o-1", 1999},
		{"unpaid session", "checkout.session.completed", "2024-06-20", providertest.StripeSession("o-2", "pi_2", 1999, "USD", "unpaid"), "", "checkout.session.completed.unpaid", "o-2", 1999},
		{"subscription session", "checkout.session.completed", "2025-08-27.basil", sub, "", "checkout.session.completed.subscription", "s-1", 999},
		{"invoice.paid basil", "invoice.paid", "2025-08-27.basil", providertest.StripeInvoice("in_1", "sub_1", "", 999, "usd", "subscription_cycle", md, at, "2025-08-27.basil"), relay.TypePaymentSucceeded, "", "in_1", 999},
		{"invoice.paid acacia", "invoice.paid", "2024-10-28.acacia", providertest.StripeInvoice("in_2", "sub_1", "pi_in_2", 999, "usd", "subscription_cycle", md, at, "2024-10-28.acacia"), relay.TypePaymentSucceeded, "", "in_2", 999},
		{"invoice.paid MGA", "invoice.paid", "2025-08-27.basil", providertest.StripeInvoice("in_3", "sub_1", "", 5000, "mga", "subscription_cycle", md, at, "2025-08-27.basil"), relay.TypePaymentSucceeded, "", "in_3", 500000},
		{"invoice.paid trial", "invoice.paid", "2025-08-27.basil", providertest.StripeInvoice("in_4", "sub_1", "", 0, "usd", "subscription_create", md, at, "2025-08-27.basil"), "", "invoice.paid.zero", "in_4", 0},
		{"invoice.paid one-off", "invoice.paid", "2024-06-20", noSub, "", "invoice.paid.no_subscription", "", 0},
		{"charge.refunded listing", "charge.refunded", "2022-08-01", providertest.StripeCharge("pi_1", "o-1", 1999, 500, "USD", "re_1", at), relay.TypePaymentRefunded, "", "o-1", 1999},
		{"charge.refunded unlisted, new version", "charge.refunded", "2024-10-28.acacia", providertest.StripeCharge("pi_1", "o-1", 1999, 500, "USD", "", at), "", "charge.refunded", "o-1", 1999},
		{"refund.updated succeeded", "refund.updated", "2024-10-28.acacia", providertest.StripeRefund("re_1", "pi_1", "o-1", 500, "USD", "succeeded", at), relay.TypePaymentRefunded, "", "o-1", 0},
		{"charge.refund.updated succeeded", "charge.refund.updated", "2022-08-01", providertest.StripeRefund("re_1", "pi_1", "o-1", 500, "USD", "succeeded", at), relay.TypePaymentRefunded, "", "o-1", 0},
		{"refund.created pending", "refund.created", "2024-10-28.acacia", providertest.StripeRefund("re_2", "pi_1", "o-1", 500, "USD", "pending", at), "", "refund.pending", "o-1", 0},
		{"other", "customer.created", "2024-06-20", map[string]any{"id": "cus_1"}, "", "*", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := providertest.StripeEventAt("evt_"+strings.ReplaceAll(tc.name, " ", "_"), tc.typ, tc.obj, at, tc.version, true)
			r, err := s.Parse(providertest.SignStripe(b, at, stripeSecret), b, at)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if r.Note != nil {
				got = r.Note.Kind
				if _, listed := provider.NotRelayed["stripe"][got]; !listed {
					t.Errorf("note %q is not on the documented list", got)
				}
			}
			if r.Type != tc.want || got != tc.note || r.Payment.OrderID != tc.order || r.Payment.AmountMinor != tc.amount {
				t.Errorf("= type %q note %q order %q amount %d; want %q %q %q %d", r.Type, got, r.Payment.OrderID, r.Payment.AmountMinor, tc.want, tc.note, tc.order, tc.amount)
			}
			if tc.typ == "invoice.paid" && r.Type != "" && (r.Payment.Subscription == nil || r.Payment.Subscription.ID != "sub_1" || r.Payment.Subscription.Reason != "subscription_cycle" || r.Payment.Metadata["player_id"] != "p-1" || r.Payment.TransactionID != tc.order) {
				t.Errorf("a period's payment carries %v (transaction %s); want its subscription, the subscription's metadata, the invoice as transaction", r.Payment.Metadata, r.Payment.TransactionID)
			}
		})
	}
	// Without a key, an old version's unlisted charge.refunded alerts: nothing else would relay it.
	b := providertest.StripeEventAt("evt_old", "charge.refunded", providertest.StripeCharge("pi_1", "o-1", 1999, 500, "USD", "", at), at, "2024-06-20", true)
	if r, err := s.Parse(providertest.SignStripe(b, at, stripeSecret), b, at); err != nil || r.Note == nil || !r.Note.Alert {
		t.Errorf("an unlisted charge.refunded on 2024-06-20 without api_keys = %+v, %v; want an alerting note", r.Note, err)
	}
	// An ISK amount in Stripe's two-decimal representation that is not whole krónur: refused.
	b = providertest.StripeEventAt("evt_isk", "checkout.session.completed", providertest.StripeSession("o-isk", "pi_isk", 50050, "ISK", "paid"), at, "2024-06-20", true)
	_, err := s.Parse(providertest.SignStripe(b, at, stripeSecret), b, at)
	var ref *provider.Refusal
	if !errors.As(err, &ref) || ref.Code != http.StatusUnprocessableEntity || !ref.Inexact {
		t.Errorf("ISK 500.50 = %v; want a 422 inexact refusal", err)
	}
}

// Complete: an unlisted charge.refunded becomes the charge's succeeded refunds, oldest first,
// in ISO minor units; a refund naming only its PaymentIntent finds its Checkout Session's order.
func TestStripeComplete(t *testing.T) {
	t.Parallel()
	s, api := stripeWithAPI(t)
	at := appleAt
	api.AddRefund("ch_pi_1", providertest.StripeAPIRefund("re_1", "ch_pi_1", "pi_1", 100000, "mga", "succeeded", at))
	api.AddRefund("ch_pi_1", providertest.StripeAPIRefund("re_2", "ch_pi_1", "pi_1", 2000, "mga", "succeeded", at.Add(time.Minute)))
	api.AddRefund("ch_pi_1", providertest.StripeAPIRefund("re_3", "ch_pi_1", "pi_1", 1000, "mga", "failed", at.Add(2*time.Minute)))
	b := providertest.StripeEventAt("evt_1", "charge.refunded", providertest.StripeCharge("pi_1", "o-1", 500000, 102000, "MGA", "", at), at, "2023-10-16", true)
	r, err := s.Parse(providertest.SignStripe(b, at, stripeSecret), b, at)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := s.Complete(context.Background(), b, r)
	if err != nil || len(rs) != 2 || rs[0].Refund.ID != "re_1" || rs[0].Refund.AmountMinor != 10000000 || rs[1].Refund.ID != "re_2" || rs[1].Refund.AmountMinor != 200000 || rs[0].Payment.AmountMinor != 50000000 {
		t.Fatalf("Complete = %+v, %v; want re_1 then re_2 in ISO minor units of MGA", rs, err)
	}
	api.AddSession(providertest.StripeSession("o-77", "pi_77", 1000, "USD", "paid"))
	rf := providertest.StripeRefund("re_77", "pi_77", "", 1000, "USD", "succeeded", at)
	rf["metadata"] = map[string]string{}
	b = providertest.StripeEventAt("evt_2", "refund.created", rf, at, "2024-10-28.acacia", true)
	r, err = s.Parse(providertest.SignStripe(b, at, stripeSecret), b, at)
	if err != nil || r.Payment.OrderID != "pi_77" {
		t.Fatalf("a refund without order metadata reads as order %q, %v", r.Payment.OrderID, err)
	}
	if rs, err := s.Complete(context.Background(), b, r); err != nil || len(rs) != 1 || rs[0].Payment.OrderID != "o-77" || rs[0].Payment.TransactionID != "pi_77" {
		t.Fatalf("Complete = %+v, %v; want the session's order o-77", rs, err)
	}
	// A wrong key is Stripe's 401: not retried, an error (Ingest answers 5xx, an operator fixes the key).
	bad, err := provider.NewStripe([]provider.StripeAccount{{Account: stripeAcct, Secrets: []string{stripeSecret}, Game: "sword",
		APIKeys: map[string]string{"production": "rk_live_wrong"}, APIBase: api.URL}})
	if err != nil {
		t.Fatal(err)
	}
	b = providertest.StripeEventAt("evt_3", "charge.refunded", providertest.StripeCharge("pi_1", "o-1", 500000, 102000, "MGA", "", at), at, "2023-10-16", true)
	r, _ = bad.Parse(providertest.SignStripe(b, at, stripeSecret), b, at)
	if _, err := bad.Complete(context.Background(), b, r); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("with a wrong key Complete = %v; want the 401 named", err)
	}
}

// Keys: restricted keys only, of the environment they are listed under.
func TestStripeAPIKeys(t *testing.T) {
	t.Parallel()
	for keys, ok := range map[string]bool{
		"production=rk_live_1": true, "sandbox=rk_test_1": true,
		"production=sk_live_1": false, "production=rk_test_1": false, "sandbox=rk_live_1": false, "staging=rk_test_1": false,
	} {
		name, key, _ := strings.Cut(keys, "=")
		_, err := provider.NewStripe([]provider.StripeAccount{{Account: stripeAcct, Secrets: []string{stripeSecret}, Game: "sword", APIKeys: map[string]string{name: key}}})
		if (err == nil) != ok {
			t.Errorf("api_keys %s: %v, want accepted %v", keys, err, ok)
		}
	}
}

// The events sweep's parser reads events fetched from Stripe's API (no signature to check):
// whatever the body, a 4xx refusal or a result that validates, never a panic.
func FuzzStripeUndelivered(f *testing.F) {
	s := stripe(f)
	for _, ev := range [][]byte{
		providertest.StripeEventAt("evt_u1", "checkout.session.completed", providertest.StripeSession("o-1", "pi_1", 1999, "USD", "paid"), appleAt, "2024-06-20", true),
		providertest.StripeEventAt("evt_u2", "invoice.paid", providertest.StripeInvoice("in_1", "sub_1", "", 999, "mga", "subscription_cycle", nil, appleAt, "2025-08-27.basil"), appleAt, "2025-08-27.basil", false),
		providertest.StripeEventAt("evt_u3", "refund.updated", providertest.StripeRefund("re_1", "pi_1", "o-1", 500, "ISK", "succeeded", appleAt), appleAt, "2024-10-28.acacia", true),
		[]byte(`{"livemode":true,"type":"charge.refunded","data":{"object":{}}}`),
	} {
		f.Add(ev)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := s.ParseUndelivered(stripeAcct, body)
		if err != nil {
			var ref *provider.Refusal
			if !errors.As(err, &ref) || ref.Code < 400 || ref.Code >= 500 {
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
