package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/infra/gamehttp"
)

// probeCase is one notification the probe sends and what a correct game server answers.
type probeCase struct {
	name   string
	want   string // "2xx" or "4xx"
	why    string
	result string
	took   time.Duration
	ok     bool
}

// probe sends a game server payrelay's notifications, each awkward case a real deployment
// meets, and says case by case whether it behaved.
func probe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("payrelay local probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("url", "", "the game server's payrelay endpoint (required)")
	secret := fs.String("secret", "", "the game's signing secret, whsec_... (required)")
	timeout := fs.Duration("timeout", gamehttp.MaxTimeout, "how long payrelay waits for an answer")
	envName := fs.String("environment", string(relay.EnvProduction), "the environment the server serves: production, or sandbox for a staging server")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	// Every flag's problem, each in words, all at once.
	var bad []string
	if *target == "" {
		bad = append(bad, "-url is required: the game server's payrelay endpoint, e.g. https://game.example.com/payrelay")
	}
	sec, err := webhook.ParseSecret(*secret)
	switch {
	case *secret == "":
		bad = append(bad, "-secret is required: the game's signing secret, whsec_<base64> (the same the game server verifies with)")
	case err != nil:
		bad = append(bad, fmt.Sprintf("-secret %.12q...: not a signing secret (%v); want whsec_<base64>", *secret, err))
	}
	if *timeout <= 0 || *timeout > gamehttp.MaxTimeout {
		bad = append(bad, fmt.Sprintf("-timeout %s: want more than 0 and at most %s (payrelay waits at most that long)", *timeout, gamehttp.MaxTimeout))
	}
	env, err := relay.ParseEnvironment(*envName)
	if err != nil {
		bad = append(bad, "-environment "+err.Error())
	}
	if len(bad) > 0 {
		for _, b := range bad {
			fmt.Fprintln(stderr, "payrelay local probe:", b)
		}
		return 2
	}
	if err := probeTarget(*target); err != nil {
		fmt.Fprintln(stderr, "payrelay local probe:", err)
		return 2
	}
	fmt.Fprintf(stdout, "probing %s with TEST notifications (orders probe-*, not real payments)\n\n", *target)
	// Each case gets -timeout, as each attempt gets the game's timeout from payrelay.
	client := &http.Client{Timeout: *timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	pay := &relay.Payment{ID: "probe-pay-" + stamp, Provider: "generic", Environment: env, Merchant: "probe", OrderID: "probe-" + stamp, TransactionID: "probe-txn-" + stamp,
		AmountMinor: 648, Currency: "CNY", PaidAt: time.Now().UTC().Truncate(time.Second), AppID: "probe", Game: "probe"}
	paid := relay.Notification{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded, Attempt: 1}
	refund := relay.Notification{Key: relay.RefundKey("probe-r1"), Type: relay.TypePaymentRefunded, Attempt: 1,
		Refund: &relay.Refund{ID: "probe-r1", AmountMinor: 148, CumulativeMinor: 148, RefundedAt: time.Now().UTC().Truncate(time.Second)}}
	pay.Notifications = []relay.Notification{paid, refund}
	orphan := *pay
	orphan.ID, orphan.OrderID = "probe-orphan-"+stamp, "probe-unknown-"+stamp
	orphan.Notifications = []relay.Notification{refund}
	other := webhook.NewSecret([]byte("not-the-game-secret-not-the-one!"))
	// The same payment from the other environment, under its own id as payrelay gives it.
	otherEnv := *pay
	otherEnv.ID, otherEnv.OrderID, otherEnv.Environment = "probe-env-"+stamp, "probe-env-"+stamp, relay.EnvSandbox
	if env == relay.EnvSandbox {
		otherEnv.Environment = relay.EnvProduction
	}
	otherEnv.Notifications = []relay.Notification{paid}

	send := func(p *relay.Payment, n *relay.Notification, ts time.Time, sign func(id string, ts time.Time, body []byte) string) (int, time.Duration, error) {
		body, _ := json.Marshal(gamehttp.NewPayload(p, n, 1))
		id := relay.NotificationID(p.ID, n.Key)
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, *target, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "payrelay-probe/1")
		req.Header.Set(webhook.HeaderID, id)
		req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
		req.Header.Set(webhook.HeaderSignature, sign(id, ts, body))
		req.Header.Set(gamehttp.HeaderAttempt, "1")
		start := time.Now()
		resp, err := client.Do(req)
		took := time.Since(start)
		if err != nil {
			return 0, took, err
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return resp.StatusCode, took, nil
	}
	good := func(id string, ts time.Time, body []byte) string { return sec.Sign(id, ts, body) }
	cases := []struct {
		probeCase
		p    *relay.Payment
		n    *relay.Notification
		ts   time.Time
		sign func(string, time.Time, []byte) string
	}{
		{probeCase{name: "a payment", want: "2xx", why: "grant it, then acknowledge"}, pay, &pay.Notifications[0], time.Now(), good},
		{probeCase{name: "the same webhook-id again", want: "2xx", why: "a repeat: acknowledge without granting twice"}, pay, &pay.Notifications[0], time.Now(), good},
		{probeCase{name: "a refund of it", want: "2xx", why: "revoke, then acknowledge"}, pay, &pay.Notifications[1], time.Now(), good},
		{probeCase{name: "a refund of an order never seen", want: "2xx", why: "payment_notified false: record it (revoke what you can) and acknowledge"}, &orphan, &orphan.Notifications[0], time.Now(), good},
		{probeCase{name: "a bad signature", want: "4xx", why: "refuse what payrelay did not sign"}, pay, &pay.Notifications[0], time.Now(),
			func(id string, ts time.Time, body []byte) string { return other.Sign(id, ts, body) }},
		{probeCase{name: "a stale timestamp (10 min old)", want: "4xx", why: "refuse replays older than 5 minutes"}, pay, &pay.Notifications[0], time.Now().Add(-10 * time.Minute), good},
		{probeCase{name: "two signatures, the first from a rotated secret", want: "2xx", why: "accept when any v1 signature verifies"}, pay, &pay.Notifications[0], time.Now(),
			func(id string, ts time.Time, body []byte) string {
				return other.Sign(id, ts, body) + " " + sec.Sign(id, ts, body)
			}},
		{probeCase{name: "a " + string(otherEnv.Environment) + " notification", want: "4xx",
			why: fmt.Sprintf("refuse data.environment %s: this server serves %s (a test payment must never grant on production)", otherEnv.Environment, env)},
			&otherEnv, &otherEnv.Notifications[0], time.Now(), good},
	}
	failed := 0
	fmt.Fprintf(stdout, "%-48s %-6s %-10s %-9s %s\n", "case", "want", "got", "took", "")
	for _, c := range cases {
		code, took, err := send(c.p, c.n, c.ts, c.sign)
		c.took = took
		switch {
		case err != nil:
			c.result = "no answer"
			c.why = inWords(err, *timeout)
		case took > *timeout:
			c.result = strconv.Itoa(code)
			c.why = fmt.Sprintf("slower than payrelay's %s timeout: payrelay counts it failed", *timeout)
		default:
			c.result = strconv.Itoa(code)
			c.ok = c.want == "2xx" && code >= 200 && code < 300 || c.want == "4xx" && code >= 400 && code < 500
		}
		mark := "ok"
		if !c.ok {
			mark = "FAIL: " + c.why
			failed++
		}
		fmt.Fprintf(stdout, "%-48s %-6s %-10s %-9s %s\n", c.name, c.want, c.result, took.Round(time.Millisecond), mark)
	}
	if failed > 0 {
		fmt.Fprintf(stdout, "\nverdict: FAIL (%d of %d cases)\n", failed, len(cases))
		return 1
	}
	fmt.Fprintf(stdout, "\nverdict: PASS (all %d cases)\n", len(cases))
	return 0
}

// inWords says why a case got no answer, as a person would: what payrelay's attempt would
// record (its error class), not a Go error.
func inWords(err error, timeout time.Duration) string {
	switch gamehttp.Classify(err) {
	case relay.ErrorTimeout:
		return fmt.Sprintf("timed out: no answer within %s; payrelay counts the attempt failed", timeout)
	case relay.ErrorConnect:
		return "connection refused or unreachable: nothing listens at that address and port"
	case relay.ErrorDNS:
		return "the host name does not resolve (DNS)"
	case relay.ErrorTLS:
		return "the TLS handshake failed: the server's certificate is not valid for this host, or not trusted"
	}
	return "the connection broke before an answer (reset or closed)"
}

// probeTarget refuses a URL the probe must not send to: not http(s), or a host that is (or
// resolves to) a link-local, unspecified or multicast address (the metadata server's range).
func probeTarget(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-url %q: want an http(s) URL", raw)
	}
	ips, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip", u.Hostname())
	if err != nil {
		return fmt.Errorf("-url %q: %v", raw, err)
	}
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() || ip.IsMulticast() || ip == netip.IPv4Unspecified() {
			return fmt.Errorf("-url %q resolves to %s, an address the probe never sends to", raw, ip)
		}
	}
	return nil
}
