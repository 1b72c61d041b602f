// Package gamehttp posts payment notifications to the studio's game server, signed the Standard Webhooks
// way, and classifies what happened: the game server failing is an attempt to record, never
// an error of ours.
package gamehttp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
)

var _ relay.Notifier = (*Notifier)(nil)

// Limits of one notification.
const (
	MaxTimeout   = 10 * time.Second
	SnippetBytes = 1024      // kept on the attempt record
	drainBytes   = 64 * 1024 // read past the snippet so the connection can be reused
)

// HeaderAttempt carries the attempt number next to the body's.
const HeaderAttempt = "X-Payrelay-Attempt"

// Payload is what the game server receives, in the Standard Webhooks payload shape
// (standardwebhooks.com, "Payload structure": type, timestamp, data): the same whatever the
// provider. Type is one of relay.Types (payment.succeeded, payment.refunded,
// payment.refund_reversed, payment.revoked, subscription.extended); Timestamp is when the
// event happened (the payment, the refund, its reversal, the revocation or extension).
type Payload struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      Data      `json:"data"`
}

// Data is a notification's content: the payment's facts, and for a refund the refund.
type Data struct {
	NotificationID string `json:"notification_id"` // also webhook-id: deduplicate by it
	Attempt        int    `json:"attempt"`
	PaymentID      string `json:"payment_id"`
	Provider       string `json:"provider"`
	MerchantID     string `json:"merchant_id"`
	OrderID        string `json:"order_id"`
	TransactionID  string `json:"transaction_id"`
	// AmountMinor is in the currency's ISO 4217 minor unit (cents, yen, fils: whatever the
	// provider's own representation), and Amount the same value as a decimal string in major
	// units with exactly the currency's decimals ("6.48", "500", "1.250"): read either, never
	// a float.
	AmountMinor int64      `json:"amount_minor"`
	Amount      string     `json:"amount"`
	Currency    string     `json:"currency"`
	PaidAt      *time.Time `json:"paid_at,omitempty"` // absent when only a refund told us of the payment and did not say
	AppID       string     `json:"app_id"`
	Game        string     `json:"game"`
	// Environment is "production" or "sandbox": a game server refuses a notification of the
	// environment it does not serve (local/gamekit's handlers do).
	Environment string            `json:"environment"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	// PaymentNotified is false on a refund of a payment payrelay never received: its facts come
	// from the refund notification, and no payment.succeeded preceded it.
	PaymentNotified bool        `json:"payment_notified"`
	Refund          *RefundData `json:"refund,omitempty"`
	// Subscription is present on every notification of a subscription's period.
	Subscription *SubscriptionData `json:"subscription,omitempty"`
	// Event is present on payment.revoked and subscription.extended.
	Event *EventData `json:"event,omitempty"`
}

// SubscriptionData is the subscription a payment paid one period of.
type SubscriptionData struct {
	ID        string     `json:"id"` // the App Store's originalTransactionId, Stripe's sub_...
	ProductID string     `json:"product_id,omitempty"`
	Reason    string     `json:"reason,omitempty"`     // why this period was charged, in the provider's words
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // the period's end: grant until then
	Offer     string     `json:"offer,omitempty"`
}

// EventData is what a notification that moves no money tells.
type EventData struct {
	ID        string     `json:"id"`
	Reason    string     `json:"reason,omitempty"`
	At        time.Time  `json:"at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // subscription.extended: the new end
}

// RefundData is one refund: this refund's amount, and the payment's refunded total with it.
type RefundData struct {
	RefundID           string    `json:"refund_id"`
	MerchantRefundNo   string    `json:"merchant_refund_no,omitempty"`
	AmountMinor        int64     `json:"amount_minor"`
	Amount             string    `json:"amount"`
	RefundedTotalMinor int64     `json:"refunded_total_minor"`
	FullyRefunded      bool      `json:"fully_refunded"`
	RefundedAt         time.Time `json:"refunded_at"`
}

// NewPayload describes attempt `attempt` of notification n of payment p.
func NewPayload(p *relay.Payment, n *relay.Notification, attempt int) Payload {
	pl := Payload{Type: string(n.Type), Timestamp: p.PaidAt, Data: Data{
		NotificationID: relay.NotificationID(p.ID, n.Key), Attempt: attempt, PaymentID: p.ID, Provider: p.Provider,
		MerchantID: p.Merchant, OrderID: p.OrderID, TransactionID: p.TransactionID, AmountMinor: p.AmountMinor,
		Amount: relay.FormatAmount(p.AmountMinor, p.Currency), Currency: p.Currency, AppID: p.AppID, Game: p.Game, Environment: string(p.Environment), Metadata: p.Metadata,
	}}
	if !p.PaidAt.IsZero() {
		t := p.PaidAt
		pl.Data.PaidAt = &t
	}
	pl.Data.PaymentNotified = p.PaymentFirst(n.Key)
	if sub := p.Subscription; sub != nil {
		pl.Data.Subscription = &SubscriptionData{ID: sub.ID, ProductID: sub.ProductID, Reason: sub.Reason, Offer: sub.Offer, ExpiresAt: timePtr(sub.ExpiresAt)}
	}
	if e := n.Event; e != nil {
		pl.Timestamp = e.At
		pl.Data.Event = &EventData{ID: e.ID, Reason: e.Reason, At: e.At, ExpiresAt: timePtr(e.ExpiresAt)}
	}
	if r := n.Refund; r != nil {
		pl.Timestamp = r.RefundedAt
		pl.Data.Refund = &RefundData{
			RefundID: r.ID, MerchantRefundNo: r.MerchantRefundNo, AmountMinor: r.AmountMinor, Amount: relay.FormatAmount(r.AmountMinor, p.Currency),
			RefundedTotalMinor: r.CumulativeMinor, FullyRefunded: r.CumulativeMinor >= p.AmountMinor, RefundedAt: r.RefundedAt,
		}
	}
	return pl
}

// timePtr is t, or nil when it is zero.
func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Game is one game's endpoint of one environment, as Deliver reaches it.
type Game struct {
	Name string
	// Environment is the one environment this endpoint receives: a notification of a payment
	// of the other is never posted to it.
	Environment relay.Environment
	URL         string
	// Secrets sign every notification, one signature each: two during a rotation.
	Secrets []webhook.Secret
	Timeout time.Duration
	// AllowPrivate lets Deliver reach private addresses (a game server on a private network).
	AllowPrivate bool
}

// Notifier posts to one game's URL.
type Notifier struct {
	game   Game
	client *http.Client
	guard  *guard
	now    func() time.Time
}

var errRedirect = errors.New("redirect refused")

// New returns a game's notifier. It follows a redirect only to the same host with 307 or 308
// (which keep the method and body), never elsewhere, and dials only the addresses its guard
// allows; it uses no proxy from the environment, which would bypass the guard.
func New(g Game) (*Notifier, error) {
	u, err := url.Parse(g.URL)
	if g.URL == "" || err != nil || u.Host == "" {
		return nil, fmt.Errorf("gamehttp: game %s: an absolute url is required", g.Name)
	}
	if g.Timeout <= 0 || g.Timeout > MaxTimeout {
		return nil, fmt.Errorf("gamehttp: game %s: timeout %s must be in (0, %s]", g.Name, g.Timeout, MaxTimeout)
	}
	if len(g.Secrets) == 0 {
		return nil, fmt.Errorf("gamehttp: game %s: at least one signing secret is required", g.Name)
	}
	if _, err := relay.ParseEnvironment(string(g.Environment)); err != nil {
		return nil, fmt.Errorf("gamehttp: game %s: %w", g.Name, err)
	}
	host := u.Hostname()
	ip, err := netip.ParseAddr(host)
	loopbackURL := host == "localhost" || (err == nil && ip.IsLoopback())
	gd := newGuard(g.AllowPrivate, loopbackURL)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = gd.DialContext
	tr.MaxIdleConnsPerHost = 64
	client := &http.Client{
		Timeout:   g.Timeout,
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			code := req.Response.StatusCode
			if len(via) >= 3 || req.URL.Host != via[0].URL.Host || (code != http.StatusTemporaryRedirect && code != http.StatusPermanentRedirect) {
				return fmt.Errorf("%w: %d to %s", errRedirect, code, req.URL.Redacted())
			}
			return nil
		},
	}
	return &Notifier{game: g, client: client, guard: gd, now: time.Now}, nil
}

// Games routes each notification to its payment's game's endpoint of the payment's
// environment: production notifications to the production endpoints, sandbox ones to the
// sandbox endpoints. The two are separate maps, looked up by the payment's environment alone,
// so no game name, typo or missing entry can send a sandbox notification to a production
// server (invariant 11).
type Games struct {
	production, sandbox map[string]*Notifier
}

var _ relay.Notifier = Games{}

// NewGames builds a notifier per game and environment: production from games, sandbox from
// sandboxes (the games that have a sandbox endpoint, by the same names).
func NewGames(games, sandboxes []Game) (Games, error) {
	gs := Games{production: map[string]*Notifier{}, sandbox: map[string]*Notifier{}}
	for _, set := range []struct {
		env   relay.Environment
		games []Game
		into  map[string]*Notifier
	}{{relay.EnvProduction, games, gs.production}, {relay.EnvSandbox, sandboxes, gs.sandbox}} {
		for _, g := range set.games {
			g.Environment = set.env
			n, err := New(g)
			if err != nil {
				return Games{}, err
			}
			set.into[g.Name] = n
		}
	}
	return gs, nil
}

// Notify implements relay.Notifier. A payment of a game (or a game's sandbox) no longer
// configured is a failed attempt that says so, with nothing posted: the ladder moves on, and
// an operator can replay it once the endpoint is back.
func (gs Games) Notify(ctx context.Context, p *relay.Payment, n *relay.Notification, attempt int) relay.NotifyResult {
	var g *Notifier
	switch p.Environment {
	case relay.EnvProduction:
		g = gs.production[p.Game]
	case relay.EnvSandbox:
		g = gs.sandbox[p.Game]
	}
	if g == nil {
		return relay.NotifyResult{ErrorClass: relay.ErrorConfig, Error: fmt.Sprintf("game %q has no %s endpoint configured (GAMES)", p.Game, p.Environment)}
	}
	return g.Notify(ctx, p, n, attempt)
}

// Notify implements relay.Notifier. webhook-id is the notification's id, the same on every
// attempt, so the game server can deduplicate by it.
func (n *Notifier) Notify(ctx context.Context, p *relay.Payment, nt *relay.Notification, attempt int) relay.NotifyResult {
	if p.Environment != n.game.Environment {
		return relay.NotifyResult{ErrorClass: relay.ErrorConfig,
			Error: fmt.Sprintf("a %s notification is never posted to game %s's %s endpoint", p.Environment, n.game.Name, n.game.Environment)}
	}
	pl := NewPayload(p, nt, attempt)
	msgID := pl.Data.NotificationID
	body, err := json.Marshal(pl)
	if err != nil {
		return relay.NotifyResult{ErrorClass: relay.ErrorHTTP, Error: "encode payload: " + err.Error()}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.game.URL, bytes.NewReader(body))
	if err != nil {
		return relay.NotifyResult{ErrorClass: relay.ErrorConnect, Error: err.Error()}
	}
	ts := n.now()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "payrelay/1")
	req.Header.Set(webhook.HeaderID, msgID)
	req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set(webhook.HeaderSignature, webhook.SignAll(n.game.Secrets, msgID, ts, body))
	req.Header.Set(HeaderAttempt, strconv.Itoa(attempt))
	resp, err := n.client.Do(req)
	if err != nil {
		return relay.NotifyResult{ErrorClass: Classify(err), Error: err.Error()}
	}
	defer resp.Body.Close()
	snippet, readErr := io.ReadAll(io.LimitReader(resp.Body, SnippetBytes))
	io.Copy(io.Discard, io.LimitReader(resp.Body, drainBytes))
	res := relay.NotifyResult{StatusCode: resp.StatusCode, Response: string(snippet)}
	switch {
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		res.ErrorClass = relay.ErrorHTTP
		res.Error = "game server answered " + resp.Status
		res.Gone = resp.StatusCode == http.StatusGone
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			res.RetryAfter = RetryAfter(resp.Header.Get("Retry-After"), n.now())
		}
	case readErr != nil:
		// A 2xx status line is the acknowledgement; a body cut short does not undo it.
		res.Error = "reading the acknowledgement's body: " + readErr.Error()
	}
	return res
}

// RetryAfter reads a Retry-After header (RFC 9110 section 10.2.3: a number of seconds, or an
// HTTP-date) into the time it names, relative to now. An absent, malformed or past value is
// zero: the ladder alone decides. How far ahead is honoured is the core's to cap.
func RetryAfter(v string, now time.Time) time.Time {
	v = strings.TrimSpace(v)
	if v == "" {
		return time.Time{}
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 || secs > 30*24*3600 {
			return time.Time{}
		}
		return now.Add(time.Duration(secs) * time.Second)
	}
	t, err := http.ParseTime(v)
	if err != nil || !t.After(now) {
		return time.Time{}
	}
	return t
}

// Classify names the first thing that went wrong in a failed request.
func Classify(err error) relay.ErrorClass {
	var dnsErr *net.DNSError
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var hostErr x509.HostnameError
	var authErr x509.UnknownAuthorityError
	var recErr tls.RecordHeaderError
	var alert tls.AlertError
	var opErr *net.OpError
	switch {
	case errors.Is(err, errRedirect):
		return relay.ErrorRedirect
	case errors.Is(err, ErrBlockedAddress):
		return relay.ErrorBlocked
	case errors.As(err, &dnsErr):
		return relay.ErrorDNS
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return relay.ErrorTimeout
	case errors.As(err, &certErr), errors.As(err, &hostErr), errors.As(err, &authErr), errors.As(err, &recErr), errors.As(err, &alert):
		return relay.ErrorTLS
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return relay.ErrorConnect
	}
	// Resets and early closes after the connection was made: the exchange broke mid-way.
	return relay.ErrorHTTP
}
