package stack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/local/gameserver"
	"github.com/payrelay/payrelay/local/stack"
)

const (
	aliApp  = providertest.AlipayAppID
	wxMch   = providertest.WechatMchID
	wxApp   = providertest.WechatAppID
	wxSer   = providertest.WechatSerial
	wxAPIv3 = providertest.APIv3Key
	aliApp2 = "2021004100000002" // a second Alipay app, for another game
)

var (
	aliKey, platKey *rsa.PrivateKey
	appleChain      *providertest.AppleChain
	aliGateway      *providertest.AlipayGateway // Alipay's OpenAPI gateway, for order queries
	wxAPI           *providertest.WechatAPI     // WeChat Pay's APIv3, for order queries
	playAPI         *providertest.PlayAPI       // the Play Developer API
	playSigner      *providertest.PubSubSigner  // Pub/Sub's push tokens
)

const (
	appleBundle    = "com.studio.sword"
	appleBundleB   = "com.studio.farm"
	appleAppID     = int64(1234567890)
	playPackage    = "com.studio.sword.android"
	playAudience   = "http://127.0.0.1/Ingest?provider=googleplay"
	playPushSA     = "payrelay-pubsub-push@studio-local.iam.gserviceaccount.com"
	stripeAcct     = "acct_1Studio"
	stripeSecret   = "whsec_test_0123456789abcdefghijklmnopqrstuv"
	stripeAcctA    = "acct_1StudioA"
	stripeSecretA  = "whsec_test_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	aliSandboxApp  = "9021000100000001"
	aliSandboxAppB = "9021000100000002"
)

// providerKeys makes the providers' keys and the PROVIDER_CONFIG the stack runs with.
func providerKeys() provider.Config {
	aliKey, _ = rsa.GenerateKey(rand.Reader, 2048)
	platKey, _ = rsa.GenerateKey(rand.Reader, 2048)
	appleChain = providertest.NewAppleChain(providertest.AppleChainOptions{})
	appKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	aliGateway = providertest.NewAlipayGateway(aliApp, &appKey.PublicKey, aliKey)
	wxAPIKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	wxAPI = providertest.NewWechatAPI(wxMch, "API-SERIAL-1", &wxAPIKey.PublicKey, platKey, wxSer)
	both := []string{"production", "sandbox"}
	playAPI, playSigner = providertest.NewPlayAPI(), providertest.NewPubSubSigner()
	certs := playSigner.ServeCerts()
	return provider.Config{
		GooglePlay: &provider.GooglePlayConfig{Apps: []provider.GooglePlayApp{{PackageName: playPackage, Game: stack.GameA, Environments: both, Acknowledge: true}},
			Audience: playAudience, ServiceAccount: playPushSA, APIBase: playAPI.URL + "/", CertsURL: certs.URL},
		Apple: []provider.AppleApp{{BundleID: appleBundle, AppAppleID: appleAppID, Game: stack.GameA, Environments: both},
			{BundleID: appleBundleB, AppAppleID: appleAppID + 1, Game: stack.GameB, Environments: both}},
		AppleRoot: appleChain.RootPEM(),
		Stripe: []provider.StripeAccount{{Account: stripeAcct, Secrets: []string{stripeSecret}, Game: stack.GameB, Environments: both},
			{Account: stripeAcctA, Secrets: []string{stripeSecretA}, Game: stack.GameA, Environments: both}},
		Alipay: []provider.AlipayApp{{AppID: aliApp, PublicKey: providertest.PublicKeyBase64(aliKey), Game: stack.GameA,
			PrivateKey: providertest.PrivateKeyBase64(appKey), Gateway: aliGateway.URL},
			{AppID: aliApp2, PublicKey: providertest.PublicKeyPEM(aliKey), Game: stack.GameB},
			// Alipay's sandbox apps (开放平台沙箱): their own app ids; their notifications are sandbox.
			{AppID: aliSandboxApp, PublicKey: providertest.PublicKeyBase64(aliKey), Game: stack.GameA, Environment: "sandbox"},
			{AppID: aliSandboxAppB, PublicKey: providertest.PublicKeyBase64(aliKey), Game: stack.GameB, Environment: "sandbox"}},
		WechatPay: []provider.WechatPayMerchant{{MchID: wxMch, APIv3Key: wxAPIv3, AppIDs: map[string]string{wxApp: stack.GameA},
			PlatformKeys:  map[string]string{wxSer: providertest.PublicKeyPEM(platKey)},
			APIPrivateKey: providertest.PrivateKeyPEM(wxAPIKey), APISerial: "API-SERIAL-1", APIBase: wxAPI.URL}},
	}
}

// post sends a provider's notification to Ingest as the provider would (stack.AsProvider:
// our 502, 503 or 504, which a loaded machine's slow emulator can cause, is sent again).
func post(t *testing.T, query, contentType string, h http.Header, body []byte) (int, string) {
	t.Helper()
	code, b, err := stack.AsProvider(context.Background(), func() (int, []byte, error) {
		req, _ := http.NewRequest(http.MethodPost, st.FunctionsURL+"/Ingest?provider="+query, bytes.NewReader(body))
		for k, v := range h {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", contentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return code, string(b)
}

func payloadKeys(t *testing.T, p gamehttp.Payload) []string {
	b, _ := json.Marshal(p.Data)
	var m map[string]any
	json.Unmarshal(b, &m)
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func TestProvidersRelayedEndToEnd(t *testing.T) {
	t.Parallel()
	need(t)
	// Alipay, twice (its own retry) and then TRADE_FINISHED: one chain.
	ali := providertest.AlipayFields(aliApp, "ali-e2e-1", "648.00", "TRADE_SUCCESS")
	ali["charset"] = "gbk"
	for _, status := range []string{"TRADE_SUCCESS", "TRADE_SUCCESS", "TRADE_FINISHED"} {
		ali["trade_status"] = status
		code, body := post(t, "alipay", "application/x-www-form-urlencoded", nil, providertest.SignAlipay(aliKey, ali))
		if code != 200 || body != "success" {
			t.Fatalf("Alipay %s answered %d %q, want 200 \"success\"", status, code, body)
		}
	}
	// WeChat Pay, twice.
	h, body := providertest.WechatNotify(platKey, wxSer, wxAPIv3, "TRANSACTION.SUCCESS", providertest.WechatTransaction(wxMch, wxApp, "wx-e2e-1", 64800), time.Now())
	for range 2 {
		if code, b := post(t, "wechatpay", "application/json", h, body); code != http.StatusNoContent {
			t.Fatalf("WeChat Pay answered %d %q, want 204", code, b)
		}
	}
	aliID, wxID := relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "ali-e2e-1"), relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, "wx-e2e-1")
	for _, id := range []string{aliID, wxID} {
		if p := waitTerminal(t, id, 20*time.Second); p.Paid().State != relay.StateDelivered {
			t.Fatalf("payment %s ended %s", id, p.Paid().State)
		}
	}
	time.Sleep(200 * time.Millisecond)
	ah, wh := st.Game.Hits(aliID), st.Game.Hits(wxID)
	if len(ah) != 1 || len(wh) != 1 {
		t.Fatalf("game server got %d Alipay and %d WeChat posts, want one each", len(ah), len(wh))
	}
	a, w := ah[0].Payload.Data, wh[0].Payload.Data
	if ah[0].Payload.Type != "payment.succeeded" || a.Provider != "alipay" || a.MerchantID != aliApp || a.OrderID != "ali-e2e-1" || a.TransactionID != "2026112422001446881000000001" || a.AmountMinor != 64800 || a.Currency != "CNY" || a.AppID != aliApp {
		t.Errorf("Alipay payment at the game server: %+v", a)
	}
	if w.Provider != "wechatpay" || w.MerchantID != wxMch || w.OrderID != "wx-e2e-1" || w.AmountMinor != 64800 || w.Currency != "CNY" || w.AppID != wxApp {
		t.Errorf("WeChat Pay payment at the game server: %+v", w)
	}
	if a.PaidAt == nil || w.PaidAt == nil || !a.PaidAt.Equal(*w.PaidAt) || a.Game != stack.GameA || w.Game != stack.GameA {
		t.Errorf("normalized facts differ: %v vs %v, games %s and %s", a.PaidAt, w.PaidAt, a.Game, w.Game)
	}
	if ka, kw := payloadKeys(t, ah[0].Payload), payloadKeys(t, wh[0].Payload); !slices.Equal(ka, kw) {
		t.Errorf("the game server sees different shapes: %v vs %v", ka, kw)
	}
	// A refused notify stores nothing.
	wrong, _ := rsa.GenerateKey(rand.Reader, 2048)
	code, b := post(t, "alipay", "application/x-www-form-urlencoded", nil, providertest.SignAlipay(wrong, providertest.AlipayFields(aliApp, "ali-e2e-bad", "1.00", "TRADE_SUCCESS")))
	if code != 401 || b != "failure" {
		t.Errorf("wrongly signed Alipay notify answered %d %q", code, b)
	}
	if _, _, err := payments.Get(context.Background(), relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "ali-e2e-bad")); err == nil {
		t.Error("a refused notify was stored")
	}
}

func TestAppleAndStripeEndToEnd(t *testing.T) {
	t.Parallel()
	need(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	// The App Store: a consumable bought, then refunded.
	tx := providertest.AppleTransaction(appleBundle, "2000000899999999", 4990, "USD", "Production", now)
	if code, body := post(t, "apple", "application/json", nil, providertest.AppleNotification(appleChain, "ONE_TIME_CHARGE", "", appleBundle, appleAppID, "Production", tx, now)); code != 200 {
		t.Fatalf("Apple ONE_TIME_CHARGE answered %d %s", code, body)
	}
	tx["revocationDate"] = now.Add(time.Minute).UnixMilli()
	tx["revocationReason"] = 1
	if code, body := post(t, "apple", "application/json", nil, providertest.AppleNotification(appleChain, "REFUND", "", appleBundle, appleAppID, "Production", tx, now.Add(time.Minute))); code != 200 {
		t.Fatalf("Apple REFUND answered %d %s", code, body)
	}
	// Stripe: a Checkout Session paid, then a partial refund (charge.refunded, then the same
	// refund's refund.updated: one refund).
	events := []struct {
		typ string
		obj map[string]any
	}{
		{"checkout.session.completed", providertest.StripeSession("web-e2e-1", "pi_e2e_1", 2000, "EUR", "paid")},
		{"charge.refunded", providertest.StripeCharge("pi_e2e_1", "web-e2e-1", 2000, 500, "EUR", "re_e2e_1", now)},
		{"refund.updated", providertest.StripeRefund("re_e2e_1", "pi_e2e_1", "web-e2e-1", 500, "EUR", "succeeded", now)},
	}
	for _, e := range events {
		b := providertest.StripeEvent(e.typ, e.obj, now)
		if code, body := post(t, "stripe", "application/json", providertest.SignStripe(b, time.Now(), stripeSecret), b); code != 200 {
			t.Fatalf("Stripe %s answered %d %s", e.typ, code, body)
		}
	}
	appleID, stripeID := relay.PaymentID(relay.EnvProduction, "apple", appleBundle, "2000000899999999"), relay.PaymentID(relay.EnvProduction, "stripe", stripeAcct, "web-e2e-1")
	waitNotification(t, appleID, relay.RefundKey("refund-2000000899999999"), 20*time.Second)
	waitNotification(t, stripeID, relay.RefundKey("re_e2e_1"), 20*time.Second)
	time.Sleep(200 * time.Millisecond)
	if got := fmt.Sprint(sequence(st.Game.Hits(appleID))); got != "[paid#1(200) refund refund-2000000899999999#1(200)]" {
		t.Errorf("App Store: game server got %s", got)
	}
	if got := fmt.Sprint(sequence(st.GameB.Hits(stripeID))); got != "[paid#1(200) refund re_e2e_1#1(200)]" {
		t.Errorf("Stripe: game server got %s", got)
	}
	if hits := st.GameB.Hits(stripeID); len(hits) == 2 {
		if r := hits[1].Payload.Data.Refund; r.AmountMinor != 500 || r.RefundedTotalMinor != 500 || r.FullyRefunded {
			t.Errorf("Stripe refund = %+v, want 500 of 2000", r)
		}
	}
	if hits := st.Game.Hits(appleID); len(hits) == 2 {
		if d := hits[0].Payload.Data; d.AmountMinor != 499 || d.Currency != "USD" || d.Game != stack.GameA {
			t.Errorf("App Store payment = %+v", d)
		}
	}
}

// 补单: a payment Alipay never notified is recovered by an operator's query through the Admin
// function, and delivered once, however often it is queried.
func TestOrderQueryRecoversAnUnnotifiedPayment(t *testing.T) {
	t.Parallel()
	need(t)
	aliGateway.SetTrade("ali-lost-1", providertest.AlipayTrade{TradeNo: "2026112422001446881000000009", TotalAmount: "30.00", TradeStatus: "TRADE_SUCCESS", SendPayDate: "2026-11-24 20:00:00"})
	wxAPI.SetTransaction(providertest.WechatTransaction(wxMch, wxApp, "wx-lost-1", 3000))
	for _, c := range []struct{ provider, merchant, order string }{{"alipay", aliApp, "ali-lost-1"}, {"wechatpay", wxMch, "wx-lost-1"}} {
		query := func() (int, map[string]any) {
			t.Helper()
			body := `{"provider":"` + c.provider + `","merchant":"` + c.merchant + `","order_id":"` + c.order + `","reason":"player 1001 paid, no items"}`
			resp, err := http.Post(st.AdminURL()+"/api/query", "application/json", bytes.NewReader([]byte(body)))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var out map[string]any
			json.NewDecoder(resp.Body).Decode(&out)
			return resp.StatusCode, out
		}
		if code, out := query(); code != 200 || out["action"] != "ingested" {
			t.Fatalf("%s: first query: %d %v", c.provider, code, out)
		}
		id := relay.PaymentID(relay.EnvProduction, c.provider, c.merchant, c.order)
		if p := waitTerminal(t, id, 20*time.Second); p.Paid().State != relay.StateDelivered {
			t.Fatalf("%s: recovered payment ended %s", c.provider, p.Paid().State)
		}
		if code, out := query(); code != 200 || out["action"] != "already stored" {
			t.Fatalf("%s: second query: %d %v", c.provider, code, out)
		}
		time.Sleep(300 * time.Millisecond)
		hits := st.Game.Hits(id)
		if len(hits) != 1 || hits[0].Payload.Type != "payment.succeeded" || hits[0].Payload.Data.AmountMinor != 3000 || hits[0].Payload.Data.OrderID != c.order {
			t.Fatalf("%s: game server got %d posts (%+v), want the recovered payment once", c.provider, len(hits), hits)
		}
	}
	if _, refused := aliGateway.Counts(); refused != 0 {
		t.Errorf("Alipay's gateway refused %d of our signed requests", refused)
	}
	if _, refused := wxAPI.Counts(); refused != 0 {
		t.Errorf("WeChat Pay's API refused %d of our signed requests", refused)
	}
}

// Google Play on the emulators: a push verified against the stand-in signer's certificates, the
// truth from the stand-in API, delivered through Cloud Tasks, and acknowledged to Google only
// after the game server's 2xx (here at its fourth attempt); a purchase the app acknowledged
// itself is not acknowledged again.
func TestGooglePlayAcknowledgedAfterTheGame(t *testing.T) {
	t.Parallel()
	need(t)
	now := time.Now().UTC()
	token := playSigner.Token(playAudience, playPushSA, now.Add(time.Hour))
	auth := http.Header{"Authorization": {"Bearer " + token}}
	order, order2 := "fail3-GPA.3301-9001-0001-00001", "GPA.3301-9002-0002-00002"
	playAPI.SetProduct("tok-e2e-1", order, "gems_60", "PURCHASED", 1, 1, false, "player-9")
	playAPI.SetOrder(order, "tok-e2e-1", "USD", 4, 990000000, now)
	playAPI.SetProduct("tok-e2e-2", order2, "gems_60", "PURCHASED", 1, 1, false, "player-9")
	playAPI.SetOrder(order2, "tok-e2e-2", "USD", 0, 990000000, now)
	playAPI.Acknowledge("tok-e2e-2") // the app acknowledged (consumed) it itself
	for i, tok := range []string{"tok-e2e-1", "tok-e2e-2"} {
		push := providertest.PlayPush(providertest.PlayOneTime(playPackage, 1, tok, "gems_60"), fmt.Sprintf("e2e-%d", i))
		if code, body := post(t, "googleplay", "application/json", auth, push); code != http.StatusNoContent {
			t.Fatalf("push %s answered %d %s", tok, code, body)
		}
	}
	if code, _ := post(t, "googleplay", "application/json", http.Header{"Authorization": {"Bearer " + playSigner.Token("https://elsewhere/", playPushSA, now.Add(time.Hour))}},
		providertest.PlayPush(providertest.PlayOneTime(playPackage, 1, "tok-e2e-1", "gems_60"), "e2e-x")); code != http.StatusUnauthorized {
		t.Fatalf("a token for another audience: %d, want 401", code)
	}
	id := relay.PaymentID(relay.EnvProduction, "googleplay", playPackage, order)
	// While the game server fails, Google hears nothing.
	deadline := time.Now().Add(20 * time.Second)
	for len(st.Game.Hits(id)) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if hits := st.Game.Hits(id); len(hits) < 2 || !playAPI.AcknowledgedAt("tok-e2e-1").IsZero() {
		t.Fatalf("%d attempts, acknowledged %v: want failing attempts and no acknowledgement yet", len(hits), playAPI.AcknowledgedAt("tok-e2e-1"))
	}
	waitTerminal(t, id, 20*time.Second)
	hits := st.Game.Hits(id)
	if fmt.Sprint(attemptsOf(hits)) != "[1 2 3 4]" || hits[0].Payload.Data.AmountMinor != 499 || hits[0].Payload.Data.Metadata["obfuscated_account_id"] != "player-9" {
		t.Fatalf("game server got attempts %v, %+v", attemptsOf(hits), hits[0].Payload.Data)
	}
	deadline = time.Now().Add(20 * time.Second)
	for playAPI.AcknowledgedAt("tok-e2e-1").IsZero() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if at := playAPI.AcknowledgedAt("tok-e2e-1"); at.IsZero() || at.Before(hits[3].At) {
		t.Fatalf("acknowledged at %v; want after the game's 2xx at %v", at, hits[3].At)
	}
	deadline = time.Now().Add(10 * time.Second)
	var p *relay.Payment
	for time.Now().Before(deadline) {
		if p, _, _ = payments.Get(context.Background(), id); p != nil && p.StoreAck != nil && p.StoreAck.State == relay.AckDone {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p == nil || p.StoreAck == nil || p.StoreAck.State != relay.AckDone || p.StoreAck.At.IsZero() {
		t.Fatalf("stored acknowledgement %+v", p.StoreAck)
	}
	id2 := relay.PaymentID(relay.EnvProduction, "googleplay", playPackage, order2)
	waitTerminal(t, id2, 20*time.Second)
	time.Sleep(300 * time.Millisecond)
	if p2, _, _ := payments.Get(context.Background(), id2); p2.StoreAck != nil || slices.Contains(playAPI.Acknowledged(), "tok-e2e-2") {
		t.Fatalf("a purchase the app acknowledged: stored %+v, acknowledged again %v", p2.StoreAck, playAPI.Acknowledged())
	}
}

// waitHits polls until the game server's posts of id match want (a sequence), or fails.
func waitHits(t *testing.T, game interface{ Hits(string) []gameserver.Hit }, id, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && fmt.Sprint(sequence(game.Hits(id))) != want {
		time.Sleep(20 * time.Millisecond)
	}
	if got := fmt.Sprint(sequence(game.Hits(id))); got != want {
		t.Fatalf("payment %s: the game server got %s, want %s", id, got, want)
	}
}

// Google Play end to end on the emulators with the stand-in: the API failing at first (Pub/Sub
// redelivers: no loss, no duplicate), a pending purchase that completes, a partial then a full
// void each relayed once in order, a subscription with two renewals, a test purchase to the
// sandbox server only, and the voided-purchases sweep recovering a refund whose notification
// was lost.
func TestGooglePlayEndToEnd(t *testing.T) {
	t.Parallel()
	need(t)
	now := time.Now().UTC()
	auth := http.Header{"Authorization": {"Bearer " + playSigner.Token(playAudience, playPushSA, now.Add(time.Hour))}}
	push := func(n map[string]any, msg string) {
		t.Helper()
		if code, body := post(t, "googleplay", "application/json", auth, providertest.PlayPush(n, msg)); code != http.StatusNoContent {
			t.Fatalf("push %s answered %d %s", msg, code, body)
		}
	}
	pid := func(env relay.Environment, order string) string {
		return relay.PaymentID(env, "googleplay", playPackage, order)
	}
	// A purchase of 3 while the API answers 503 twice: Ingest answers 503, Pub/Sub redelivers
	// (post does, as it would), the purchase is relayed once.
	const bulk = "GPA.3401-0001-0001-00001"
	playAPI.SetProduct("tok-bulk", bulk, "gems_60", "PURCHASED", 3, 3, false, "player-1")
	playAPI.SetOrder(bulk, "tok-bulk", "USD", 2, 970000000, now)
	playAPI.FailNext(503, 503)
	push(providertest.PlayOneTime(playPackage, 1, "tok-bulk", "gems_60"), "bulk-1")
	push(providertest.PlayOneTime(playPackage, 1, "tok-bulk", "gems_60"), "bulk-1") // a duplicate messageId
	waitHits(t, st.Game, pid(relay.EnvProduction, bulk), "[paid#1(200)]")
	// One of the three refunded, then the rest.
	playAPI.SetProduct("tok-bulk", bulk, "gems_60", "PURCHASED", 3, 2, false, "player-1")
	push(providertest.PlayVoided(playPackage, "tok-bulk", bulk, 2, 2), "bulk-2")
	playAPI.SetProduct("tok-bulk", bulk, "gems_60", "PURCHASED", 3, 0, false, "player-1")
	push(providertest.PlayVoided(playPackage, "tok-bulk", bulk, 2, 1), "bulk-3")
	waitHits(t, st.Game, pid(relay.EnvProduction, bulk), "[paid#1(200) refund voided-"+bulk+"-1#1(200) refund voided-"+bulk+"#1(200)]")
	if hits := st.Game.Hits(pid(relay.EnvProduction, bulk)); hits[1].Payload.Data.Refund.AmountMinor != 99 || hits[2].Payload.Data.Refund.AmountMinor != 198 || !hits[2].Payload.Data.Refund.FullyRefunded {
		t.Errorf("refunds %+v then %+v; want 0.99 then the remaining 1.98", hits[1].Payload.Data.Refund, hits[2].Payload.Data.Refund)
	}
	// A pending purchase: nothing relayed until it is paid.
	const pending = "GPA.3401-0002-0002-00002"
	playAPI.SetProduct("tok-pending", pending, "gems_60", "PENDING", 1, 1, false, "")
	playAPI.SetOrder(pending, "tok-pending", "USD", 0, 990000000, now)
	push(providertest.PlayOneTime(playPackage, 1, "tok-pending", "gems_60"), "pending-1")
	playAPI.SetProduct("tok-pending", pending, "gems_60", "PURCHASED", 1, 1, false, "")
	push(providertest.PlayOneTime(playPackage, 1, "tok-pending", "gems_60"), "pending-2")
	waitHits(t, st.Game, pid(relay.EnvProduction, pending), "[paid#1(200)]")
	// A subscription bought, then renewed twice: three payments, each its own order.
	for i, typ := range []int{4, 2, 2} {
		order := "GPA.3402-0001-0001-00001"
		if i > 0 {
			order += fmt.Sprintf("..%d", i-1)
		}
		playAPI.SetSubscription("tok-sub", order, "monthly_card", now.Add(time.Duration(i+1)*30*24*time.Hour), false, "player-2")
		playAPI.SetOrder(order, "tok-sub", "JPY", 480, 0, now.Add(time.Duration(i)*30*24*time.Hour))
		push(providertest.PlaySubscription(playPackage, typ, "tok-sub", "monthly_card"), fmt.Sprintf("sub-%d", i))
		waitHits(t, st.Game, pid(relay.EnvProduction, order), "[paid#1(200)]")
		d := st.Game.Hits(pid(relay.EnvProduction, order))[0].Payload.Data
		if d.AmountMinor != 480 || d.Currency != "JPY" || d.Subscription == nil || d.Subscription.ProductID != "monthly_card" || d.Subscription.ExpiresAt == nil {
			t.Errorf("period %d: %+v", i, d)
		}
	}
	// A license tester's purchase reaches the sandbox server only.
	const test = "GPA.3403-0001-0001-00001"
	playAPI.SetProduct("tok-test", test, "gems_60", "PURCHASED", 1, 1, true, "")
	playAPI.SetOrder(test, "tok-test", "USD", 0, 990000000, now)
	push(providertest.PlayOneTime(playPackage, 1, "tok-test", "gems_60"), "test-1")
	waitHits(t, st.GameSandbox, pid(relay.EnvSandbox, test), "[paid#1(200)]")
	if n := len(st.Game.Hits(pid(relay.EnvSandbox, test))); n != 0 {
		t.Errorf("a test purchase reached the production server %d times", n)
	}
	// A refund whose notification is lost: the Recover sweep finds it among the voided purchases.
	const lost = "GPA.3404-0001-0001-00001"
	playAPI.SetProduct("tok-lost", lost, "gems_60", "PURCHASED", 1, 1, false, "")
	playAPI.SetOrder(lost, "tok-lost", "EUR", 4, 990000000, now)
	push(providertest.PlayOneTime(playPackage, 1, "tok-lost", "gems_60"), "lost-1")
	waitHits(t, st.Game, pid(relay.EnvProduction, lost), "[paid#1(200)]")
	playAPI.AddVoided("tok-lost", lost, time.Now(), 0)
	resp, err := http.Post(st.FunctionsURL+"/Recover", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Recover = %d %s", resp.StatusCode, b)
	}
	waitHits(t, st.Game, pid(relay.EnvProduction, lost), "[paid#1(200) refund voided-"+lost+"#1(200)]")
	if p, _, err := payments.Get(context.Background(), pid(relay.EnvProduction, lost)); err != nil || p.RefundByID("voided-"+lost).Via != relay.ViaRecovery {
		t.Errorf("the recovered refund: %v", err)
	}
	// Pushed again (Pub/Sub redelivers everything eventually): nothing is posted twice.
	push(providertest.PlayOneTime(playPackage, 1, "tok-bulk", "gems_60"), "bulk-1")
	push(providertest.PlayVoided(playPackage, "tok-bulk", bulk, 2, 1), "bulk-3")
	time.Sleep(300 * time.Millisecond)
	if n := len(st.Game.Hits(pid(relay.EnvProduction, bulk))); n != 3 {
		t.Errorf("after redeliveries the game got %d posts of the bulk purchase, want 3", n)
	}
}
