package gamehttp

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
)

var secret = webhook.NewSecret([]byte("0123456789abcdef0123456789abcdef"))

// game is a game whose server is at url, signing with secret.
func game(url string, timeout time.Duration) Game {
	return Game{Name: "sword", Environment: relay.EnvProduction, URL: url, Secrets: []webhook.Secret{secret}, Timeout: timeout}
}

func payment() *relay.Payment {
	at := time.Date(2026, 11, 24, 1, 2, 3, 0, time.UTC)
	return &relay.Payment{ID: "pid1", Provider: "generic", Environment: relay.EnvProduction, Merchant: "game-1", OrderID: "o1", TransactionID: "t1", AmountMinor: 1999,
		Currency: "CNY", PaidAt: at, AppID: "game-1", RefundedMinor: 1999,
		Notifications: []relay.Notification{
			{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded, State: relay.StateDelivered, Attempt: 1, CreatedAt: at},
			{Key: relay.RefundKey("r1"), Type: relay.TypePaymentRefunded, State: relay.StatePending, Attempt: 1, CreatedAt: at.Add(time.Hour),
				Refund: &relay.Refund{ID: "r1", MerchantRefundNo: "out-r1", AmountMinor: 1999, CumulativeMinor: 1999, RefundedAt: at.Add(time.Hour)}},
		}}
}

func TestNotifySignsAndDescribesPayment(t *testing.T) {
	t.Parallel()
	verifier, _ := webhook.NewVerifier(secret)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if err := verifier.Verify(r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), b, time.Now()); err != nil {
			http.Error(w, "bad signature: "+err.Error(), http.StatusUnauthorized)
			return
		}
		var p Payload
		json.Unmarshal(b, &p)
		if p.Type != "payment.succeeded" || p.Data.PaymentID != "pid1" || p.Data.Attempt != 2 || p.Data.AmountMinor != 1999 || p.Data.Currency != "CNY" ||
			p.Data.Refund != nil || r.Header.Get("webhook-id") != "pid1-paid" || r.Header.Get(HeaderAttempt) != "2" {
			http.Error(w, "unexpected payload "+string(b), http.StatusBadRequest)
			return
		}
		w.Write([]byte(`{"ok":true}`))
	}))
	defer srv.Close()
	n, err := New(game(srv.URL, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	pay := payment()
	r := n.Notify(context.Background(), pay, pay.Paid(), 2)
	if r.StatusCode != 200 || r.ErrorClass != relay.ErrorNone || r.Response != `{"ok":true}` {
		t.Errorf("Notify = %+v", r)
	}
}

func TestNotifyErrorClasses(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("x", 100_000)
	mux := http.NewServeMux()
	mux.HandleFunc("/500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, huge, 500) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/reset", func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := w.(http.Hijacker).Hijack()
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer other.Close()
	mux.HandleFunc("/away", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL, http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/found", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/same", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusPermanentRedirect) })
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "lost the POST", 405)
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tlsSrv := httptest.NewTLSServer(mux) // its certificate is not trusted by the notifier
	defer tlsSrv.Close()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := "http://" + l.Addr().String()
	l.Close()

	cases := []struct {
		url    string
		status int
		class  relay.ErrorClass
	}{
		{srv.URL + "/500", 500, relay.ErrorHTTP},
		{srv.URL + "/slow", 0, relay.ErrorTimeout},
		{srv.URL + "/reset", 0, relay.ErrorHTTP},
		{srv.URL + "/away", 0, relay.ErrorRedirect},
		{srv.URL + "/found", 0, relay.ErrorRedirect},
		{srv.URL + "/same", 200, relay.ErrorNone},
		{tlsSrv.URL + "/ok", 0, relay.ErrorTLS},
		{refused, 0, relay.ErrorConnect},
		{"http://payrelay-no-such-host.invalid/", 0, relay.ErrorDNS},
	}
	for _, tc := range cases {
		n, err := New(game(tc.url, time.Second))
		if err != nil {
			t.Fatal(err)
		}
		r := n.Notify(context.Background(), payment(), payment().Paid(), 1)
		if r.StatusCode != tc.status || r.ErrorClass != tc.class {
			t.Errorf("%s: status %d class %q (%s), want %d %q", tc.url, r.StatusCode, r.ErrorClass, r.Error, tc.status, tc.class)
		}
		if len(r.Response) > SnippetBytes {
			t.Errorf("%s: kept %d bytes of response, want at most %d", tc.url, len(r.Response), SnippetBytes)
		}
	}
	if _, err := New(game(srv.URL, 11*time.Second)); err == nil {
		t.Error("a timeout over 10s was accepted")
	}
}

// The two payloads, exactly as the game server receives them (local/gamekit/README.md shows the same).
func TestPayloads(t *testing.T) {
	t.Parallel()
	p := payment()
	p.Game, p.Metadata = "sword", map[string]string{"sku": "gems_60"}
	for _, tc := range []struct {
		n    *relay.Notification
		want string
	}{
		{p.Paid(), `{"type":"payment.succeeded","timestamp":"2026-11-24T01:02:03Z","data":{"notification_id":"pid1-paid","attempt":1,` +
			`"payment_id":"pid1","provider":"generic","merchant_id":"game-1","order_id":"o1","transaction_id":"t1","amount_minor":1999,` +
			`"amount":"19.99","currency":"CNY","paid_at":"2026-11-24T01:02:03Z","app_id":"game-1","game":"sword","environment":"production","metadata":{"sku":"gems_60"},"payment_notified":true}}`},
		{&p.Notifications[1], `{"type":"payment.refunded","timestamp":"2026-11-24T02:02:03Z","data":{"notification_id":"pid1-` + relay.RefundKey("r1") + `","attempt":1,` +
			`"payment_id":"pid1","provider":"generic","merchant_id":"game-1","order_id":"o1","transaction_id":"t1","amount_minor":1999,` +
			`"amount":"19.99","currency":"CNY","paid_at":"2026-11-24T01:02:03Z","app_id":"game-1","game":"sword","environment":"production","metadata":{"sku":"gems_60"},"payment_notified":true,` +
			`"refund":{"refund_id":"r1","merchant_refund_no":"out-r1","amount_minor":1999,"amount":"19.99","refunded_total_minor":1999,"fully_refunded":true,"refunded_at":"2026-11-24T02:02:03Z"}}}`},
	} {
		b, err := json.Marshal(NewPayload(p, tc.n, 1))
		if err != nil || string(b) != tc.want {
			t.Errorf("payload of %s =\n%s\nwant\n%s", tc.n.Key, b, tc.want)
		}
	}
	// A refund of a payment payrelay never received says so, and has no paid_at when the
	// refund did not tell it.
	alone := payment()
	alone.Notifications = alone.Notifications[1:]
	alone.PaidAt = time.Time{}
	pl := NewPayload(alone, &alone.Notifications[0], 1)
	if pl.Data.PaymentNotified || pl.Data.PaidAt != nil || pl.Type != "payment.refunded" {
		t.Errorf("refund alone: payment_notified %v, paid_at %v, type %s", pl.Data.PaymentNotified, pl.Data.PaidAt, pl.Type)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Time{
		"":                              {},
		"120":                           now.Add(2 * time.Minute),
		" 5 ":                           now.Add(5 * time.Second),
		"0":                             {},
		"-3":                            {},
		"soon":                          {},
		"Tue, 24 Nov 2026 12:30:00 GMT": now.Add(30 * time.Minute),
		"Tue, 24 Nov 2026 11:00:00 GMT": {}, // in the past
		"99999999999":                   {}, // beyond any ladder: ignored, not overflowed
	} {
		if got := RetryAfter(v, now); !got.Equal(want) {
			t.Errorf("RetryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestNotifyReadsTheGameServersSignals(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("/429", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "90")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	mux.HandleFunc("/503", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/500", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30") // only 429 and 503 carry a Retry-After we honour
		w.WriteHeader(http.StatusInternalServerError)
	})
	mux.HandleFunc("/410", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusGone) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for path, want := range map[string]struct {
		after time.Duration
		gone  bool
	}{"/429": {90 * time.Second, false}, "/503": {30 * time.Second, false}, "/500": {0, false}, "/410": {0, true}} {
		n, _ := New(game(srv.URL+path, 2*time.Second))
		n.now = func() time.Time { return now }
		r := n.Notify(context.Background(), payment(), payment().Paid(), 1)
		var after time.Duration
		if !r.RetryAfter.IsZero() {
			after = r.RetryAfter.Sub(now)
		}
		if after != want.after || r.Gone != want.gone || r.ErrorClass != relay.ErrorHTTP {
			t.Errorf("%s: retry after %v, gone %v, class %s; want %v, %v, http", path, after, r.Gone, r.ErrorClass, want.after, want.gone)
		}
	}
}

// The guard decides after DNS resolution: a name that resolves to the metadata server, a
// link-local, unspecified or private address never gets a connection, whatever the URL says.
func TestDialGuard(t *testing.T) {
	t.Parallel()
	answer := map[string][]netip.Addr{
		"metadata.example.com":   {netip.MustParseAddr("169.254.169.254")},
		"linklocal6.example.com": {netip.MustParseAddr("fe80::1")},
		"zero.example.com":       {netip.MustParseAddr("0.0.0.0")},
		"private.example.com":    {netip.MustParseAddr("10.0.3.7")},
		"private6.example.com":   {netip.MustParseAddr("fd12::7")},
		"mapped.example.com":     {netip.MustParseAddr("::ffff:169.254.169.254")},
		"loop.example.com":       {netip.MustParseAddr("127.0.0.1")},
	}
	resolver := func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := answer[host]; ok {
			return a, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	for _, tc := range []struct {
		url          string
		allowPrivate bool
		blocked      bool
	}{
		{"https://metadata.example.com/p", true, true},
		{"https://linklocal6.example.com/p", true, true},
		{"https://zero.example.com/p", true, true},
		{"https://mapped.example.com/p", true, true},
		{"http://169.254.169.254/computeMetadata/v1/", true, true},
		{"https://private.example.com/p", false, true},
		{"https://private6.example.com/p", false, true},
		{"https://loop.example.com/p", true, true}, // loopback only when the URL itself names it
	} {
		g := game(tc.url, time.Second)
		g.AllowPrivate = tc.allowPrivate
		n, err := New(g)
		if err != nil {
			t.Fatal(err)
		}
		n.guard.lookup = resolver
		r := n.Notify(context.Background(), payment(), payment().Paid(), 1)
		if tc.blocked && r.ErrorClass != relay.ErrorBlocked {
			t.Errorf("%s (allow private %v): class %q (%s), want blocked", tc.url, tc.allowPrivate, r.ErrorClass, r.Error)
		}
	}
	// A game allowed private addresses may reach them (checked without dialling: no test sends
	// traffic beyond this machine's loopback).
	if err := newGuard(true, false).check(netip.MustParseAddr("10.0.3.7")); err != nil {
		t.Errorf("a game allowed private addresses: %v", err)
	}
	// The guard's rules, address by address.
	gd := newGuard(false, false)
	for addr, ok := range map[string]bool{"8.8.8.8": true, "2001:4860::8888": true, "169.254.1.1": false, "172.16.0.1": false,
		"192.168.1.1": false, "100.64.0.1": true, "224.0.0.1": false, "::": false, "::1": false} {
		if err := gd.check(netip.MustParseAddr(addr)); (err == nil) != ok {
			t.Errorf("check(%s) = %v, want allowed %v", addr, err, ok)
		}
	}
}

// TestGamesRouteByEnvironment: a sandbox payment's notification reaches the game's sandbox
// server signed with the sandbox secret, and the production server receives nothing; a game
// with no sandbox endpoint gets nothing posted anywhere.
func TestGamesRouteByEnvironment(t *testing.T) {
	t.Parallel()
	sandboxSecret := webhook.NewSecret([]byte("sandbox-secret-of-the-staging-server"))
	type hit struct {
		env        string
		verifiedBy string
	}
	var mu sync.Mutex
	hits := map[string][]hit{}
	server := func(name string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			var p Payload
			json.Unmarshal(b, &p)
			by := "none"
			for secretName, s := range map[string]webhook.Secret{"production": secret, "sandbox": sandboxSecret} {
				v, _ := webhook.NewVerifier(s)
				if v.Verify(r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), b, time.Now()) == nil {
					by = secretName
				}
			}
			mu.Lock()
			hits[name] = append(hits[name], hit{p.Data.Environment, by})
			mu.Unlock()
		}))
	}
	prod, staging, farm := server("sword production"), server("sword sandbox"), server("farm production")
	defer prod.Close()
	defer staging.Close()
	defer farm.Close()
	gs, err := NewGames(
		[]Game{game(prod.URL, time.Second), {Name: "farm", URL: farm.URL, Secrets: []webhook.Secret{secret}, Timeout: time.Second}},
		[]Game{{Name: "sword", URL: staging.URL, Secrets: []webhook.Secret{sandboxSecret}, Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	sandboxPay := payment()
	sandboxPay.Game, sandboxPay.Environment = "sword", relay.EnvSandbox
	if r := gs.Notify(context.Background(), sandboxPay, sandboxPay.Paid(), 1); r.StatusCode != 200 {
		t.Fatalf("sandbox notify = %+v", r)
	}
	prodPay := payment()
	prodPay.Game = "sword"
	if r := gs.Notify(context.Background(), prodPay, prodPay.Paid(), 1); r.StatusCode != 200 {
		t.Fatalf("production notify = %+v", r)
	}
	farmSandbox := payment()
	farmSandbox.Game, farmSandbox.Environment = "farm", relay.EnvSandbox
	if r := gs.Notify(context.Background(), farmSandbox, farmSandbox.Paid(), 1); r.ErrorClass != relay.ErrorConfig || r.StatusCode != 0 {
		t.Errorf("a sandbox notification of a game without a sandbox endpoint = %+v, want a config error and no POST", r)
	}
	// An environment that is neither (a document written by hand) goes nowhere either.
	odd := payment()
	odd.Game, odd.Environment = "sword", "staging"
	if r := gs.Notify(context.Background(), odd, odd.Paid(), 1); r.ErrorClass != relay.ErrorConfig {
		t.Errorf("environment %q = %+v, want a config error", odd.Environment, r)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string][]hit{
		"sword sandbox":    {{"sandbox", "sandbox"}},
		"sword production": {{"production", "production"}},
	}
	if diff := cmp.Diff(want, hits, cmp.AllowUnexported(hit{})); diff != "" {
		t.Errorf("posts by server (-want +got):\n%s", diff)
	}
	// One endpoint alone refuses the other environment too: defence in depth behind Games.
	n, err := New(game(prod.URL, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if r := n.Notify(context.Background(), sandboxPay, sandboxPay.Paid(), 1); r.ErrorClass != relay.ErrorConfig {
		t.Errorf("a production endpoint given a sandbox payment = %+v, want a config error", r)
	}
}
