package provider_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
)

var (
	genericSecret = webhook.NewSecret([]byte("generic-secret-generic-secret-32"))
	sandboxSecret = webhook.NewSecret([]byte("sandbox-bound-secret-for-testers"))
)

// genericBody is a paid generic notification, with env as its environment field (none when
// env is "-") and signed with secret.
func genericRequest(env string, secret webhook.Secret) (http.Header, []byte) {
	field := ""
	if env != "-" {
		field = `,"environment":` + env
	}
	body := []byte(`{"order_id":"e-1","transaction_id":"t-1","amount":"6.48","currency":"CNY","status":"paid","paid_at":"2026-11-24T19:59:00+08:00","app_id":"game-1"` + field + `}`)
	h := http.Header{}
	h.Set(webhook.HeaderID, "msg_e")
	h.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	h.Set(webhook.HeaderSignature, secret.Sign("msg_e", now, body))
	return h, body
}

func TestGenericEnvironment(t *testing.T) {
	t.Parallel()
	set, err := provider.New(provider.Config{Generic: provider.GenericConfig{Apps: map[string]string{"game-1": "sword"}}},
		provider.IngestSecrets{Production: []webhook.Secret{genericSecret}, Sandbox: []webhook.Secret{sandboxSecret}})
	if err != nil {
		t.Fatal(err)
	}
	g := set["generic"]
	for _, tc := range []struct {
		name   string
		env    string
		secret webhook.Secret
		want   relay.Environment
		code   int // a refusal's status, 0 when accepted
		field  string
	}{
		{"no field: production", "-", genericSecret, relay.EnvProduction, 0, ""},
		{"production", `"production"`, genericSecret, relay.EnvProduction, 0, ""},
		{"sandbox", `"sandbox"`, genericSecret, relay.EnvSandbox, 0, ""},
		{"an unknown environment", `"staging"`, genericSecret, "", http.StatusUnprocessableEntity, "environment"},
		{"an empty environment", `""`, genericSecret, "", http.StatusUnprocessableEntity, "environment"},
		{"upper case is not the same word", `"Sandbox"`, genericSecret, "", http.StatusUnprocessableEntity, "environment"},
		{"sandbox-bound secret, no field: sandbox", "-", sandboxSecret, relay.EnvSandbox, 0, ""},
		{"sandbox-bound secret, sandbox", `"sandbox"`, sandboxSecret, relay.EnvSandbox, 0, ""},
		{"sandbox-bound secret cannot make production", `"production"`, sandboxSecret, "", http.StatusForbidden, "environment"},
		{"neither secret", "-", webhook.NewSecret([]byte("someone-else-entirely-0123456789")), "", http.StatusUnauthorized, ""},
	} {
		h, body := genericRequest(tc.env, tc.secret)
		r, err := g.Parse(h, body, now)
		if tc.code != 0 {
			var ref *provider.Refusal
			if err == nil || refusalCode(t, err) != tc.code {
				t.Errorf("%s: %+v, %v; want %d", tc.name, r.Payment, err, tc.code)
			} else if asRefusal(err, &ref); ref.Field != tc.field {
				t.Errorf("%s: refusal names field %q, want %q", tc.name, ref.Field, tc.field)
			}
			continue
		}
		if err != nil || r.Payment.Environment != tc.want {
			t.Errorf("%s: environment %q, %v; want %q", tc.name, r.Payment.Environment, err, tc.want)
		}
	}
	// A sandbox-bound secret may not also be a production one.
	if _, err := provider.New(provider.Config{}, provider.IngestSecrets{Production: []webhook.Secret{genericSecret}, Sandbox: []webhook.Secret{genericSecret}}); err == nil {
		t.Error("one secret both production and sandbox-bound was accepted")
	}
}

func TestStripeEnvironmentIsLivemode(t *testing.T) {
	t.Parallel()
	const secret = "whsec_env_test_0123456789abcdefghijklmnop"
	for _, tc := range []struct {
		envs         []string
		live         bool
		want         relay.Environment
		wantMismatch bool
	}{
		{nil, true, relay.EnvProduction, false},
		{nil, false, relay.EnvSandbox, true},
		{[]string{"production", "sandbox"}, false, relay.EnvSandbox, false},
		{[]string{"sandbox"}, false, relay.EnvSandbox, false},
		{[]string{"sandbox"}, true, relay.EnvProduction, true},
	} {
		st, err := provider.NewStripe([]provider.StripeAccount{{Account: "acct_1Env", Secrets: []string{secret}, Game: "sword", Environments: tc.envs}})
		if err != nil {
			t.Fatal(err)
		}
		event := providertest.StripeTestEvent
		if tc.live {
			event = providertest.StripeEvent
		}
		for _, ev := range [][]byte{
			event("checkout.session.completed", providertest.StripeSession("o-1", "pi_1", 500, "USD", "paid"), now),
			event("refund.created", providertest.StripeRefund("re_1", "pi_1", "o-1", 100, "USD", "succeeded", now), now),
		} {
			r, err := st.Parse(providertest.SignStripe(ev, now, secret), ev, now)
			if err != nil || r.Payment.Environment != tc.want || (r.Mismatch != "") != tc.wantMismatch {
				t.Errorf("account for %v, livemode %v: environment %q, mismatch %q, %v", tc.envs, tc.live, r.Payment.Environment, r.Mismatch, err)
			}
		}
	}
	// An event that does not say (no Stripe event lacks livemode) is refused, not guessed.
	st, _ := provider.NewStripe([]provider.StripeAccount{{Account: "acct_1Env", Secrets: []string{secret}, Game: "sword"}})
	ev := []byte(strings.Replace(string(providertest.StripeEvent("checkout.session.completed", providertest.StripeSession("o-1", "pi_1", 500, "USD", "paid"), now)), `"livemode":true,`, "", 1))
	if _, err := st.Parse(providertest.SignStripe(ev, now, secret), ev, now); err == nil || refusalCode(t, err) != http.StatusUnprocessableEntity {
		t.Errorf("an event without livemode: %v, want 422", err)
	}
	if _, err := provider.NewStripe([]provider.StripeAccount{{Account: "acct_1Env", Secrets: []string{secret}, Game: "sword", Environments: []string{"test"}}}); err == nil {
		t.Error("environments [test] accepted")
	}
}

func TestAlipaySandboxApp(t *testing.T) {
	t.Parallel()
	keys(t)
	const sandboxApp = "9021000100000001"
	a, err := provider.NewAlipay([]provider.AlipayApp{
		{AppID: appID, PublicKey: providertest.PublicKeyBase64(alipayKey), Game: "sword"},
		{AppID: sandboxApp, PublicKey: providertest.PublicKeyBase64(alipayKey), Game: "sword", Environment: "sandbox"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for app, want := range map[string]relay.Environment{appID: relay.EnvProduction, sandboxApp: relay.EnvSandbox} {
		r, err := a.Parse(nil, providertest.SignAlipay(alipayKey, providertest.AlipayFields(app, "o-1", "6.48", "TRADE_SUCCESS")), now)
		if err != nil || r.Payment.Environment != want {
			t.Errorf("app %s: environment %q, %v; want %q", app, r.Payment.Environment, err, want)
		}
	}
	// The sandbox gateway is the sandbox's: an app on it must say it is a sandbox app.
	for _, gw := range []string{provider.AlipaySandboxGateway, "https://openapi.alipaydev.com/gateway.do"} {
		if _, err := provider.NewAlipay([]provider.AlipayApp{{AppID: sandboxApp, PublicKey: providertest.PublicKeyBase64(alipayKey), Game: "sword", Gateway: gw}}); err == nil {
			t.Errorf("a production app on the sandbox gateway %s was accepted", gw)
		}
	}
	if _, err := provider.NewAlipay([]provider.AlipayApp{{AppID: sandboxApp, PublicKey: providertest.PublicKeyBase64(alipayKey), Game: "sword", Environment: "test"}}); err == nil {
		t.Error("environment test accepted")
	}
}

func TestWechatPayIsAlwaysProduction(t *testing.T) {
	t.Parallel()
	w := wechat(t)
	h, body := providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", providertest.WechatTransaction(mchID, wxAppID, "wx-e", 100), now)
	r, err := w.Parse(h, body, now)
	if err != nil || r.Payment.Environment != relay.EnvProduction {
		t.Fatalf("environment %q, %v", r.Payment.Environment, err)
	}
}

func asRefusal(err error, into **provider.Refusal) {
	*into = provider.AsRefusal(err)
}
