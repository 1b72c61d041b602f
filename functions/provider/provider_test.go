package provider_test

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

const (
	appID    = providertest.AlipayAppID
	mchID    = providertest.WechatMchID
	wxAppID  = providertest.WechatAppID
	serial   = providertest.WechatSerial
	serial2  = "PUB_KEY_ID_0119000001092026112400000000000001"
	apiv3Key = providertest.APIv3Key
)

var (
	keysOnce                               sync.Once
	alipayKey, otherKey, platKey, platKey2 *rsa.PrivateKey
)

func keys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		gen := func() *rsa.PrivateKey {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			return k
		}
		alipayKey, otherKey, platKey, platKey2 = gen(), gen(), gen(), gen()
	})
}

var now = time.Date(2026, 11, 24, 12, 0, 5, 0, time.UTC)

func alipay(t testing.TB) *provider.Alipay {
	keys(t)
	a, err := provider.NewAlipay([]provider.AlipayApp{
		// The bare base64 form, as the Alipay console shows the key.
		{AppID: appID, PublicKey: providertest.PublicKeyBase64(alipayKey), SellerID: "2088102177846881", Game: "sword"},
		{AppID: "2021004100000002", PublicKey: providertest.PublicKeyPEM(alipayKey), Game: "farm"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func wechat(t testing.TB) *provider.WechatPay {
	keys(t)
	w, err := provider.NewWechatPay([]provider.WechatPayMerchant{{
		MchID: mchID, APIv3Key: apiv3Key, AppIDs: map[string]string{wxAppID: "sword"},
		PlatformKeys: map[string]string{serial: providertest.PublicKeyPEM(platKey), serial2: providertest.PublicKeyPEM(platKey2)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func refusalCode(t *testing.T, err error) int {
	t.Helper()
	var r *provider.Refusal
	if !errors.As(err, &r) {
		t.Fatalf("error %v is not a refusal", err)
	}
	return r.Code
}

func TestAlipayValid(t *testing.T) {
	t.Parallel()
	a := alipay(t)
	for _, charset := range []string{"utf-8", "gbk"} {
		f := providertest.AlipayFields(appID, "20261124000001", "648.00", "TRADE_SUCCESS")
		f["charset"] = charset
		r, err := a.Parse(nil, providertest.SignAlipay(alipayKey, f), now)
		if err != nil || r.Type != relay.TypePaymentSucceeded {
			t.Fatalf("%s: Parse = %v, %v", charset, r.Type, err)
		}
		p := r.Payment
		want := relay.Payment{Provider: "alipay", Environment: relay.EnvProduction, Merchant: appID, OrderID: "20261124000001", TransactionID: "2026112422001446881000000001",
			AmountMinor: 64800, Currency: "CNY", AppID: appID, Game: "sword"}
		if p.PaidAt.UTC() != time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC) {
			t.Errorf("%s: paid_at %v, want 20:00 Beijing time", charset, p.PaidAt)
		}
		p.PaidAt = time.Time{}
		if !p.SameFacts(&want) || p.Merchant != want.Merchant || p.Game != want.Game {
			t.Errorf("%s: payment = %+v, want %+v", charset, p, want)
		}
	}
}

func TestAlipayTRADE_FINISHEDIsTheSamePayment(t *testing.T) {
	t.Parallel()
	a := alipay(t)
	sr, err := a.Parse(nil, providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "o-fin", "6.00", "TRADE_SUCCESS")), now)
	if err != nil {
		t.Fatal(err)
	}
	fr, err := a.Parse(nil, providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "o-fin", "6.00", "TRADE_FINISHED")), now)
	if err != nil {
		t.Fatal(err)
	}
	s, f := sr.Payment, fr.Payment
	if fr.Type != relay.TypePaymentSucceeded || !s.SameFacts(&f) || relay.PaymentID(relay.EnvProduction, s.Provider, s.Merchant, s.OrderID) != relay.PaymentID(relay.EnvProduction, f.Provider, f.Merchant, f.OrderID) {
		t.Errorf("TRADE_FINISHED after TRADE_SUCCESS is not the same payment: %+v vs %+v", s, f)
	}
}

func TestAlipayRefusals(t *testing.T) {
	t.Parallel()
	a := alipay(t)
	valid := func() map[string]string { return providertest.AlipayFields(appID, "o-1", "648.00", "TRADE_SUCCESS") }
	tamper := func(k, v string) []byte {
		body := providertest.SignAlipay(alipayKey, valid())
		vals, _ := url.ParseQuery(string(body))
		vals.Set(k, v)
		return []byte(vals.Encode())
	}
	cases := map[string]struct {
		body []byte
		code int
	}{
		"tampered total_amount": {tamper("total_amount", "0.01"), http.StatusUnauthorized},
		"tampered out_trade_no": {tamper("out_trade_no", "o-2"), http.StatusUnauthorized},
		"tampered trade_status": {tamper("trade_status", "TRADE_FINISHED"), http.StatusUnauthorized},
		"tampered subject":      {tamper("subject", "季卡"), http.StatusUnauthorized},
		"tampered gmt_payment":  {tamper("gmt_payment", "2026-11-25 20:00:00"), http.StatusUnauthorized},
		"dropped field":         {tamper("buyer_id", ""), http.StatusUnauthorized},
		"signature garbage":     {tamper("sign", "bm90IGEgc2lnbmF0dXJl"), http.StatusUnauthorized},
		"signature not base64":  {tamper("sign", "%%%"), http.StatusUnauthorized},
		"wrong key":             {providertest.SignAlipay(otherKey, valid()), http.StatusUnauthorized},
		"sign_type RSA":         {tamper("sign_type", "RSA"), http.StatusBadRequest},
		"unknown app":           {providertest.SignAlipay(alipayKey, providertest.AlipayFields("2021009999999999", "o-1", "6.00", "TRADE_SUCCESS")), http.StatusForbidden},
		"wrong seller": {func() []byte {
			f := valid()
			f["seller_id"] = "2088000000000000"
			return providertest.SignAlipay(alipayKey, f)
		}(), http.StatusForbidden},
		"unknown status":         {providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "o-1", "6.00", "TRADE_REFUNDED")), http.StatusUnprocessableEntity},
		"amount with 3 decimals": {providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "o-1", "6.001", "TRADE_SUCCESS")), http.StatusUnprocessableEntity},
		"unknown charset":        {func() []byte { f := valid(); f["charset"] = "latin1"; return providertest.SignAlipay(alipayKey, f) }(), http.StatusBadRequest},
		"malformed form":         {[]byte("app_id=%zz&sign=1"), http.StatusBadRequest},
		"repeated parameter":     {append(providertest.SignAlipay(alipayKey, valid()), []byte("&total_amount=0.01")...), http.StatusBadRequest},
		"empty body":             {nil, http.StatusBadRequest},
		"order id with a slash":  {providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "o/1", "6.00", "TRADE_SUCCESS")), http.StatusUnprocessableEntity},
		"json instead of a form": {[]byte(`{"app_id":"` + appID + `"}`), http.StatusBadRequest},
		"bad gmt_payment in sign": {func() []byte {
			f := valid()
			f["gmt_payment"] = "yesterday"
			return providertest.SignAlipay(alipayKey, f)
		}(), http.StatusUnprocessableEntity},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r, err := a.Parse(nil, tc.body, now)
			if err == nil {
				t.Fatalf("accepted: %+v", r)
			}
			if got := refusalCode(t, err); got != tc.code {
				t.Errorf("refused with %d (%v), want %d", got, err, tc.code)
			}
		})
	}
}

func TestAlipayNonPaymentStatusIsAcknowledgedNotRelayed(t *testing.T) {
	t.Parallel()
	a := alipay(t)
	for _, status := range []string{"WAIT_BUYER_PAY", "TRADE_CLOSED"} {
		r, err := a.Parse(nil, providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "o-w", "6.00", status)), now)
		if err != nil || r.Type != "" || r.Note == nil || r.Note.Kind != status || r.Payment.OrderID != "o-w" {
			t.Errorf("%s: %+v, %v; want a note of %s on order o-w, not relayed", status, r, err, status)
		}
	}
	// Unsigned, it is refused like anything else.
	body := providertest.SignAlipay(otherKey, providertest.AlipayFields(appID, "o-w", "6.00", "TRADE_CLOSED"))
	if _, err := a.Parse(nil, body, now); err == nil {
		t.Error("an unverified TRADE_CLOSED was acknowledged")
	}
}

func TestAlipayConfig(t *testing.T) {
	t.Parallel()
	keys(t)
	bad := map[string][]provider.AlipayApp{
		"no key":    {{AppID: appID, Game: "g"}},
		"bad key":   {{AppID: appID, Game: "g", PublicKey: "not a key"}},
		"no game":   {{AppID: appID, PublicKey: providertest.PublicKeyPEM(alipayKey)}},
		"duplicate": {{AppID: appID, Game: "g", PublicKey: providertest.PublicKeyPEM(alipayKey)}, {AppID: appID, Game: "h", PublicKey: providertest.PublicKeyPEM(alipayKey)}},
	}
	for name, apps := range bad {
		if _, err := provider.NewAlipay(apps); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWechatValid(t *testing.T) {
	t.Parallel()
	w := wechat(t)
	for _, s := range []struct {
		serial string
		key    *rsa.PrivateKey
	}{{serial, platKey}, {serial2, platKey2}} { // two platform keys at once, for rotation
		h, body := providertest.WechatNotify(s.key, s.serial, apiv3Key, "TRANSACTION.SUCCESS", providertest.WechatTransaction(mchID, wxAppID, "wx-order-1", 64800), now)
		r, err := w.Parse(h, body, now)
		if err != nil || r.Type != relay.TypePaymentSucceeded {
			t.Fatalf("serial %s: Parse = %v, %v", s.serial, r.Type, err)
		}
		p := r.Payment
		want := relay.Payment{Provider: "wechatpay", Environment: relay.EnvProduction, Merchant: mchID, OrderID: "wx-order-1", TransactionID: "4200001234202611240000000001",
			AmountMinor: 64800, Currency: "CNY", AppID: wxAppID, Game: "sword",
			PaidAt: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
		if !p.SameFacts(&want) || p.Merchant != mchID || p.Game != "sword" {
			t.Errorf("payment = %+v, want %+v", p, want)
		}
	}
}

func TestWechatRefusals(t *testing.T) {
	t.Parallel()
	w := wechat(t)
	tx := func() map[string]any { return providertest.WechatTransaction(mchID, wxAppID, "wx-1", 100) }
	notify := func(mut func(m map[string]any)) (http.Header, []byte) {
		m := tx()
		if mut != nil {
			mut(m)
		}
		return providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", m, now)
	}
	type req struct {
		h    http.Header
		body []byte
	}
	tampered := func() req {
		h, b := notify(nil)
		return req{h, []byte(strings.Replace(string(b), `"summary":"`, `"summary":"x`, 1))}
	}
	resigned := func(edit func(string) string) req {
		_, b := notify(nil)
		nb := []byte(edit(string(b)))
		return req{providertest.SignWechat(platKey, serial, nb, now), nb}
	}
	cases := map[string]struct {
		r    req
		code int
	}{
		"tampered body": {tampered(), http.StatusUnauthorized},
		"wrong platform key (probe)": {func() req {
			h, b := providertest.WechatNotify(otherKey, serial, apiv3Key, "TRANSACTION.SUCCESS", tx(), now)
			return req{h, b}
		}(), http.StatusUnauthorized},
		"unknown serial": {func() req {
			h, b := notify(nil)
			h.Set(provider.HeaderWechatSerial, "0000")
			return req{h, b}
		}(), http.StatusUnauthorized},
		"expired timestamp": {func() req {
			h, b := providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", tx(), now.Add(-6*time.Minute))
			return req{h, b}
		}(), http.StatusUnauthorized},
		"future timestamp": {func() req {
			h, b := providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", tx(), now.Add(6*time.Minute))
			return req{h, b}
		}(), http.StatusUnauthorized},
		"missing signature": {func() req {
			h, b := notify(nil)
			h.Del(provider.HeaderWechatSignature)
			return req{h, b}
		}(), http.StatusUnauthorized},
		"wrong merchant": {func() req {
			h, b := notify(func(m map[string]any) { m["mchid"] = "1900000999" })
			return req{h, b}
		}(), http.StatusForbidden},
		// Verified, but an app our configuration routes to no game: a failure of ours, so WeChat
		// retries until the configuration is fixed.
		"app id mapped to no game": {func() req {
			h, b := notify(func(m map[string]any) { m["appid"] = "wx0000000000000000" })
			return req{h, b}
		}(), http.StatusInternalServerError},
		"corrupted ciphertext": {resigned(func(s string) string {
			i := strings.Index(s, `"ciphertext":"`) + len(`"ciphertext":"`)
			c := []byte(s)
			if c[i] == 'A' {
				c[i] = 'B'
			} else {
				c[i] = 'A'
			}
			return string(c)
		}), http.StatusBadRequest},
		"wrong APIv3 key": {func() req {
			h, b := providertest.WechatNotify(platKey, serial, "ffffffffffffffffffffffffffffffff", "TRANSACTION.SUCCESS", tx(), now)
			return req{h, b}
		}(), http.StatusBadRequest},
		"other algorithm": {resigned(func(s string) string { return strings.Replace(s, "AEAD_AES_256_GCM", "AES_CBC", 1) }), http.StatusBadRequest},
		"malformed JSON":  {resigned(func(s string) string { return s[:len(s)/2] }), http.StatusBadRequest},
		"zero amount": {func() req {
			h, b := notify(func(m map[string]any) { m["amount"] = map[string]any{"total": 0, "currency": "CNY"} })
			return req{h, b}
		}(), http.StatusUnprocessableEntity},
		"unknown currency": {func() req {
			h, b := notify(func(m map[string]any) { m["amount"] = map[string]any{"total": 5, "currency": "RMB"} })
			return req{h, b}
		}(), http.StatusUnprocessableEntity},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r, err := w.Parse(tc.r.h, tc.r.body, now)
			if err == nil {
				t.Fatalf("accepted: %+v", r)
			}
			if got := refusalCode(t, err); got != tc.code {
				t.Errorf("refused with %d (%v), want %d", got, err, tc.code)
			}
		})
	}
}

func TestWechatNonPaymentIsAcknowledgedNotRelayed(t *testing.T) {
	t.Parallel()
	w := wechat(t)
	tx := providertest.WechatTransaction(mchID, wxAppID, "wx-2", 100)
	tx["trade_state"] = "NOTPAY"
	h, body := providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", tx, now)
	if r, err := w.Parse(h, body, now); err != nil || r.Type != "" || r.Note == nil || r.Payment.OrderID != "wx-2" {
		t.Errorf("trade_state NOTPAY: %+v, %v; want a note on wx-2, not relayed", r, err)
	}
}

func TestWechatConfig(t *testing.T) {
	t.Parallel()
	keys(t)
	good := provider.WechatPayMerchant{MchID: mchID, APIv3Key: apiv3Key, AppIDs: map[string]string{wxAppID: "g"}, PlatformKeys: map[string]string{serial: providertest.PublicKeyPEM(platKey)}}
	short := good
	short.APIv3Key = "short"
	noKeys := good
	noKeys.PlatformKeys = nil
	for name, m := range map[string]provider.WechatPayMerchant{"short APIv3 key": short, "no platform keys": noKeys} {
		if _, err := provider.NewWechatPay([]provider.WechatPayMerchant{m}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := provider.ParseConfig(`{"alipay":[`); err == nil {
		t.Error("malformed PROVIDER_CONFIG accepted")
	}
}

// FuzzAlipayParse: whatever the body, Parse does not panic and never asks for a 5xx.
func FuzzAlipayParse(f *testing.F) {
	a := alipay(f)
	f.Add(providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "o-1", "648.00", "TRADE_SUCCESS")))
	gbk := providertest.AlipayFields(appID, "o-2", "6.00", "TRADE_FINISHED")
	gbk["charset"] = "gbk"
	f.Add(providertest.SignAlipay(alipayKey, gbk))
	f.Add([]byte("sign_type=RSA2&app_id=" + appID + "&sign=" + base64.StdEncoding.EncodeToString([]byte("x"))))
	f.Add([]byte("%"))
	f.Add([]byte("a=1&a=2"))
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := a.Parse(nil, body, now)
		if err != nil {
			var r *provider.Refusal
			if !errors.As(err, &r) || r.Code < 400 || r.Code >= 500 {
				t.Fatalf("error %v is not a 4xx refusal", err)
			}
			if res.Type != "" {
				t.Fatal("refused and relayed at once")
			}
		}
	})
}

// FuzzWechatParse: whatever the headers and body, Parse does not panic and never asks for a 5xx.
func FuzzWechatParse(f *testing.F) {
	w := wechat(f)
	h, body := providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", providertest.WechatTransaction(mchID, wxAppID, "wx-1", 100), now)
	f.Add(h.Get(provider.HeaderWechatSerial), h.Get(provider.HeaderWechatTimestamp), h.Get(provider.HeaderWechatNonce), h.Get(provider.HeaderWechatSignature), body)
	f.Add(serial, "1795003205", "n", "", []byte(`{"resource":{}}`))
	f.Add("", "", "", "", []byte{})
	f.Fuzz(func(t *testing.T, ser, ts, nonce, sig string, body []byte) {
		hh := http.Header{}
		hh.Set(provider.HeaderWechatSerial, ser)
		hh.Set(provider.HeaderWechatTimestamp, ts)
		hh.Set(provider.HeaderWechatNonce, nonce)
		hh.Set(provider.HeaderWechatSignature, sig)
		_, err := w.Parse(hh, body, now)
		if err != nil {
			var r *provider.Refusal
			if !errors.As(err, &r) || r.Code < 400 || r.Code >= 500 {
				t.Fatalf("error %v is not a 4xx refusal", err)
			}
		}
	})
}

func BenchmarkAlipayParse(b *testing.B) {
	a := alipay(b)
	body := providertest.SignAlipay(alipayKey, providertest.AlipayFields(appID, "o-1", "648.00", "TRADE_SUCCESS"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Parse(nil, body, now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWechatParse(b *testing.B) {
	w := wechat(b)
	h, body := providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", providertest.WechatTransaction(mchID, wxAppID, "wx-1", 100), now)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.Parse(h, body, now); err != nil {
			b.Fatal(err)
		}
	}
}
