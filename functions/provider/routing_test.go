package provider_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/webhook"
)

// Every payment is routed to exactly one game, by the provider's own app or merchant; a
// verified notification of an app routed nowhere is refused as a failure of our configuration.
func TestRoutingTable(t *testing.T) {
	t.Parallel()
	keys(t)
	cfg := provider.Config{
		Generic: provider.GenericConfig{Apps: map[string]string{"web-shop": "sword", "farm-web": "farm"}},
		Alipay: []provider.AlipayApp{
			{AppID: appID, PublicKey: providertest.PublicKeyPEM(alipayKey), Game: "sword"},
			{AppID: "2021004100000002", PublicKey: providertest.PublicKeyPEM(alipayKey), Game: "farm"},
		},
		WechatPay: []provider.WechatPayMerchant{{MchID: mchID, APIv3Key: apiv3Key,
			AppIDs:       map[string]string{wxAppID: "sword", "wxfarm00000000000": "farm"},
			PlatformKeys: map[string]string{serial: providertest.PublicKeyPEM(platKey)}}},
	}
	secret := webhook.NewSecret([]byte("generic-secret-generic-secret-32"))
	set, err := provider.New(cfg, provider.IngestSecrets{Production: []webhook.Secret{secret}})
	if err != nil {
		t.Fatal(err)
	}
	generic := func(app string) (http.Header, []byte) {
		body := []byte(`{"order_id":"r-1","transaction_id":"t-1","amount":"6.48","currency":"CNY","status":"paid","paid_at":"2026-11-24T19:59:00+08:00","app_id":"` + app + `"}`)
		h := http.Header{}
		h.Set(webhook.HeaderID, "msg_r")
		h.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
		h.Set(webhook.HeaderSignature, secret.Sign("msg_r", now, body))
		return h, body
	}
	wechatTx := func(app string) (http.Header, []byte) {
		return providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", providertest.WechatTransaction(mchID, app, "wx-r", 100), now)
	}
	for _, tc := range []struct {
		name, provider string
		req            func() (http.Header, []byte)
		game           string // "" when the app routes nowhere
	}{
		{"generic web-shop", "generic", func() (http.Header, []byte) { return generic("web-shop") }, "sword"},
		{"generic farm-web", "generic", func() (http.Header, []byte) { return generic("farm-web") }, "farm"},
		{"generic unrouted", "generic", func() (http.Header, []byte) { return generic("forgotten-app") }, ""},
		{"alipay sword app", "alipay", func() (http.Header, []byte) {
			return nil, providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "a-r", "6.00", "TRADE_SUCCESS"))
		}, "sword"},
		{"alipay farm app", "alipay", func() (http.Header, []byte) {
			return nil, providertest.SignAlipay(alipayKey, providertest.AlipayFields("2021004100000002", "a-r", "6.00", "TRADE_SUCCESS"))
		}, "farm"},
		{"wechatpay sword app", "wechatpay", func() (http.Header, []byte) { return wechatTx(wxAppID) }, "sword"},
		{"wechatpay farm app", "wechatpay", func() (http.Header, []byte) { return wechatTx("wxfarm00000000000") }, "farm"},
		{"wechatpay unrouted app", "wechatpay", func() (http.Header, []byte) { return wechatTx("wxunknown00000000") }, ""},
	} {
		h, body := tc.req()
		r, err := set[tc.provider].Parse(h, body, now)
		if tc.game == "" {
			var ref *provider.Refusal
			if !errors.As(err, &ref) || !ref.Unrouted || ref.Code != http.StatusInternalServerError {
				t.Errorf("%s: %+v, %v; want a 500 refusal naming the unrouted app", tc.name, r, err)
			}
			continue
		}
		if err != nil || r.Payment.Game != tc.game {
			t.Errorf("%s: game %q, %v; want %s", tc.name, r.Payment.Game, err, tc.game)
		}
	}
}

// The configuration is checked as a whole, every problem named at once.
func TestConfigValidateNamesEveryProblem(t *testing.T) {
	t.Parallel()
	keys(t)
	cfg := provider.Config{
		Generic: provider.GenericConfig{Apps: map[string]string{"web": "nowhere"}},
		Alipay:  []provider.AlipayApp{{AppID: appID, PublicKey: "not a key", Game: "sword"}},
		WechatPay: []provider.WechatPayMerchant{{MchID: mchID, APIv3Key: "short", AppIDs: map[string]string{wxAppID: "ghost"},
			PlatformKeys: map[string]string{serial: providertest.PublicKeyPEM(platKey)}}},
	}
	err := cfg.Validate([]string{"sword"})
	if err == nil {
		t.Fatal("Validate accepted a broken configuration")
	}
	for _, want := range []string{`generic app web to game "nowhere"`, "public_key", "apiv3_key", `app wxd678efh567hg6787 to game "ghost"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %q:\n%v", want, err)
		}
	}
	good := provider.Config{Generic: provider.GenericConfig{Apps: map[string]string{"web": "sword"}}}
	if err := good.Validate([]string{"sword"}); err != nil {
		t.Errorf("a good configuration: %v", err)
	}
}

// Before payrelay can serve (a failure of ours), each provider is answered in its own failure
// shape with a 5xx, so it retries.
func TestRefuseUnreadyInEachProvidersShape(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{"alipay": "failure", "wechatpay": `"code":"FAIL"`, "generic": `"error"`, "": `"error"`} {
		for _, code := range []int{http.StatusServiceUnavailable, http.StatusInternalServerError} {
			w := httptest.NewRecorder()
			provider.RefuseUnready(w, name, code)
			if w.Code != code || !strings.Contains(w.Body.String(), want) {
				t.Errorf("%q: %d %q, want %d with %s", name, w.Code, w.Body.String(), code, want)
			}
		}
	}
}
