// Package provider turns each payment provider's notification into the relay's normalized
// result (a payment, a refund, or a result deliberately not relayed): it verifies the provider's signature its own way, decodes its format, and answers
// in the shape the provider expects (Alipay's "success", WeChat Pay's 204 or {"code":"FAIL"},
// the generic format's JSON). Ingest picks the provider by the notify URL's query parameter.
package provider

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
)

// Provider is one notification format.
type Provider interface {
	// Name is the provider's name in payment ids and in the notify URL (?provider=NAME).
	Name() string
	// MediaType is the Content-Type the provider posts.
	MediaType() string
	// Parse verifies a notification and decodes it into a payment or a refund, or, for a
	// verified result that is deliberately not relayed (an unpaid or closed trade, a refund
	// that did not complete), a Result with no Type and a Note saying what it was. A
	// notification that must be refused returns a *Refusal.
	Parse(h http.Header, body []byte, now time.Time) (relay.Result, error)
	// Ack answers a notification that was stored and enqueued (or needs nothing).
	Ack(w http.ResponseWriter, res relay.IngestResult)
	// Refuse answers a refusal, or a failure of ours (5xx), in the provider's error shape.
	Refuse(w http.ResponseWriter, r *Refusal)
}

// Completer is a provider whose verified notification may point at facts it does not carry
// (a Stripe charge.refunded that lists no refunds, a refund naming only its PaymentIntent).
// Complete fetches them from the provider's API, after Parse verified body and before Ingest
// stores anything or answers, and returns the results the notification stands for (r alone
// when it needs nothing). An error is a failure of ours (5xx: the provider retries), or an
// *relay.InexactAmount.
type Completer interface {
	Complete(ctx context.Context, body []byte, r relay.Result) ([]relay.Result, error)
}

var _ Completer = (*Stripe)(nil)

// Refusal is a notification refused with an HTTP status and a reason for the logs.
type Refusal struct {
	Code   int
	Reason string
	Field  string
	// Unrouted: a verified notification of an app mapped to no game. It is a failure of our
	// configuration, answered 500 so the provider retries until it is fixed, logged at ERROR.
	Unrouted bool
	// Inexact: a verified notification whose amount does not convert exactly to ISO minor
	// units (relay.InexactAmount): refused 422, logged at ERROR and alerted, never rounded.
	Inexact bool
}

// unrouted refuses a verified notification whose app maps to no game.
func unrouted(format string, args ...any) *Refusal {
	return &Refusal{Code: http.StatusInternalServerError, Reason: fmt.Sprintf(format, args...), Unrouted: true}
}

func (r *Refusal) Error() string { return r.Reason }

func refuse(code int, format string, args ...any) *Refusal {
	return &Refusal{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// asRefusal classifies any error from parsing: a FieldError is a 422 naming the field.
func asRefusal(err error) *Refusal {
	var r *Refusal
	if errors.As(err, &r) {
		return r
	}
	var inexact *relay.InexactAmount
	if errors.As(err, &inexact) {
		return &Refusal{Code: http.StatusUnprocessableEntity, Reason: inexact.Error(), Field: "amount", Inexact: true}
	}
	var fe *relay.FieldError
	if errors.As(err, &fe) {
		return &Refusal{Code: http.StatusUnprocessableEntity, Reason: fe.Error(), Field: fe.Field}
	}
	return &Refusal{Code: http.StatusBadRequest, Reason: err.Error()}
}

// AsRefusal is asRefusal for the handler.
func AsRefusal(err error) *Refusal { return asRefusal(err) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Config is the providers' part of the configuration (PROVIDER_CONFIG, a JSON secret): each
// provider's keys, and the routing of each app to its game.
type Config struct {
	Generic   GenericConfig       `json:"generic"`
	Alipay    []AlipayApp         `json:"alipay"`
	WechatPay []WechatPayMerchant `json:"wechatpay"`
	Apple     []AppleApp          `json:"apple"`
	Stripe    []StripeAccount     `json:"stripe"`
	// GooglePlay is the Android apps and the push subscription's token (see GooglePlayConfig).
	GooglePlay *GooglePlayConfig `json:"googleplay,omitempty"`
	// AppleRoot replaces the pinned Apple Root CA - G3 (PEM): only for a test environment whose
	// notifications are signed by a chain of its own. Leave it unset in production.
	AppleRoot string `json:"apple_root,omitempty"`
	// AppleAPIKey is the App Store In-App Purchase key (the .p8 PEM) the apps with api access
	// sign their App Store Server API requests with. Not part of PROVIDER_CONFIG: it is the
	// secret APPLE_API_KEY, a Secret Manager secret of its own.
	AppleAPIKey string `json:"-"`
}

// appleRoot parses AppleRoot; nil (the pinned root) when unset.
func (c Config) appleRoot() (*x509.Certificate, error) {
	if c.AppleRoot == "" {
		return nil, nil
	}
	block, _ := pem.Decode([]byte(c.AppleRoot))
	if block == nil {
		return nil, errors.New("PROVIDER_CONFIG apple_root: not a PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("PROVIDER_CONFIG apple_root: %w", err)
	}
	return cert, nil
}

// GenericConfig routes the generic format's app ids to games.
type GenericConfig struct {
	// Apps maps each app_id the generic format may carry to its game.
	Apps map[string]string `json:"apps"`
}

// Games lists every game the configuration routes to, with where each route comes from.
func (c Config) Games() map[string][]string {
	out := map[string][]string{}
	for app, g := range c.Generic.Apps {
		out[g] = append(out[g], "generic app "+app)
	}
	for _, a := range c.Alipay {
		out[a.Game] = append(out[a.Game], "alipay app "+a.AppID)
	}
	for _, m := range c.WechatPay {
		for app, g := range m.AppIDs {
			out[g] = append(out[g], "wechatpay merchant "+m.MchID+" app "+app)
		}
	}
	for _, a := range c.Apple {
		out[a.Game] = append(out[a.Game], "apple app "+a.BundleID)
	}
	for _, a := range c.Stripe {
		out[a.Game] = append(out[a.Game], "stripe account "+a.Account)
	}
	if c.GooglePlay != nil {
		for _, a := range c.GooglePlay.Apps {
			out[a.Game] = append(out[a.Game], "googleplay app "+a.PackageName)
		}
	}
	return out
}

// MerchantGames lists the games a provider's merchant account sells for: an Alipay app's game,
// every game a WeChat Pay merchant's apps route to, a generic app's game.
func (c Config) MerchantGames(provider, merchant string) []string {
	var out []string
	switch provider {
	case "alipay":
		for _, a := range c.Alipay {
			if a.AppID == merchant {
				out = append(out, a.Game)
			}
		}
	case "wechatpay":
		for _, m := range c.WechatPay {
			if m.MchID == merchant {
				for _, g := range m.AppIDs {
					out = append(out, g)
				}
			}
		}
	case "generic":
		if g, ok := c.Generic.Apps[merchant]; ok {
			out = append(out, g)
		}
	case "apple":
		for _, a := range c.Apple {
			if a.BundleID == merchant {
				out = append(out, a.Game)
			}
		}
	case "googleplay":
		if c.GooglePlay != nil {
			for _, a := range c.GooglePlay.Apps {
				if a.PackageName == merchant {
					out = append(out, a.Game)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Validate checks the whole configuration against the configured games and returns every
// problem at once: keys that do not parse, apps that route to no game or to an unknown one.
func (c Config) Validate(games []string) error {
	var errs []error
	for game, routes := range c.Games() {
		if !slices.Contains(games, game) {
			slices.Sort(routes)
			errs = append(errs, fmt.Errorf("PROVIDER_CONFIG routes %s to game %q, which GAMES does not configure", strings.Join(routes, ", "), game))
		}
	}
	if _, err := NewGeneric(c.Generic.Apps, webhook.NewSecret([]byte("validation-only"))); err != nil {
		errs = append(errs, err)
	}
	if len(c.Alipay) > 0 {
		if _, err := NewAlipay(c.Alipay); err != nil {
			errs = append(errs, err)
		}
	}
	if len(c.WechatPay) > 0 {
		if _, err := NewWechatPay(c.WechatPay); err != nil {
			errs = append(errs, err)
		}
	}
	if len(c.Apple) > 0 {
		root, err := c.appleRoot()
		var a *Apple
		if err == nil {
			a, err = NewApple(c.Apple, root)
		}
		if err == nil {
			err = a.WithAPIKey(c.AppleAPIKey, nil)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(c.Stripe) > 0 {
		if _, err := NewStripe(slices.Clone(c.Stripe)); err != nil {
			errs = append(errs, err)
		}
	}
	if gp := c.googlePlay(); gp != nil {
		if _, err := NewGooglePlay(*gp, GooglePlayOptions{}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ParseConfig reads PROVIDER_CONFIG. Empty means no native provider.
func ParseConfig(raw string) (Config, error) {
	var c Config
	if raw == "" {
		return c, nil
	}
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return c, fmt.Errorf("PROVIDER_CONFIG is not valid JSON: %w", err)
	}
	return c, nil
}

// Set is the providers Ingest knows, by name.
type Set map[string]Provider

var _ relay.StoreAcker = Set(nil)

// AcknowledgePurchase implements relay.StoreAcker: p's provider acknowledges it.
func (s Set) AcknowledgePurchase(ctx context.Context, p *relay.Payment) (string, error) {
	a, ok := s[p.Provider].(relay.StoreAcker)
	if !ok {
		return "", fmt.Errorf("provider %q acknowledges no purchases", p.Provider)
	}
	return a.AcknowledgePurchase(ctx, p)
}

// AcknowledgesPurchases reports whether a provider is configured to acknowledge purchases to
// its store (Google Play apps with acknowledge), which needs the ops queue.
func (c Config) AcknowledgesPurchases() bool {
	if gp := c.googlePlay(); gp != nil {
		for _, a := range gp.Apps {
			if a.Acknowledge {
				return true
			}
		}
	}
	return false
}

// IngestSecrets verify the generic format: Production secrets sign notifications of either
// environment (the body's environment field says which, production by default); Sandbox
// secrets (optional) sign sandbox notifications only, so a test harness can hold one without
// being able to make a production payment.
type IngestSecrets struct {
	Production, Sandbox []webhook.Secret
}

// New builds the providers: the generic format always (verified with ingest's secrets), the
// others when configured.
func New(c Config, ingest IngestSecrets) (Set, error) {
	generic, err := NewGeneric(c.Generic.Apps, ingest.Production...)
	if err != nil {
		return nil, err
	}
	if err := generic.BindSandbox(ingest.Sandbox...); err != nil {
		return nil, err
	}
	s := Set{generic.Name(): generic}
	if len(c.Alipay) > 0 {
		a, err := NewAlipay(c.Alipay)
		if err != nil {
			return nil, err
		}
		s[a.Name()] = a
	}
	if len(c.WechatPay) > 0 {
		wp, err := NewWechatPay(c.WechatPay)
		if err != nil {
			return nil, err
		}
		s[wp.Name()] = wp
	}
	if len(c.Apple) > 0 {
		root, err := c.appleRoot()
		if err != nil {
			return nil, err
		}
		a, err := NewApple(c.Apple, root)
		if err != nil {
			return nil, err
		}
		if err := a.WithAPIKey(c.AppleAPIKey, nil); err != nil {
			return nil, err
		}
		s[a.Name()] = a
	}
	if len(c.Stripe) > 0 {
		st, err := NewStripe(slices.Clone(c.Stripe))
		if err != nil {
			return nil, err
		}
		s[st.Name()] = st
	}
	if cfg := c.googlePlay(); cfg != nil {
		gp, err := NewGooglePlay(*cfg, GooglePlayOptions{})
		if err != nil {
			return nil, err
		}
		s[gp.Name()] = gp
	}
	return s, nil
}

// googlePlay is Google Play's configuration, nil when it configures nothing (a decoder may
// leave an empty one in place of none).
func (c Config) googlePlay() *GooglePlayConfig {
	if gp := c.GooglePlay; gp != nil && (len(gp.Apps) > 0 || gp.Audience != "" || gp.ServiceAccount != "") {
		return gp
	}
	return nil
}

// NotRelayed is the documented list of verified results that Ingest acknowledges (2xx) without
// relaying to the game server, by provider, each with the Note kind it is recorded under on the
// payment when payrelay holds it (invariant 7). Every other verified result is stored and
// relayed, or refused. functions/provider/README.md lists the same.
var NotRelayed = map[string]map[string]string{
	"alipay": {
		"WAIT_BUYER_PAY": "the trade is created and not paid",
		"TRADE_CLOSED":   "closed unpaid (TRADE_CLOSED without refund_fee)",
	},
	"wechatpay": {
		"REFUND.ABNORMAL":        "the refund failed (the money did not go back); an operator must act",
		"REFUND.CLOSED":          "the refund was closed (the money did not go back); an operator must act",
		"trade_state NOTPAY":     "not paid",
		"trade_state CLOSED":     "closed unpaid",
		"trade_state REVOKED":    "revoked before payment",
		"trade_state USERPAYING": "the user is still paying",
		"trade_state PAYERROR":   "the payment failed",
		"trade_state REFUND":     "a transaction notification of a refunded trade; its refunds come as REFUND.SUCCESS",
	},
	// The App Store: what a game needs to end or keep an entitlement on time is relayed
	// (charges, refunds, REVOKE, REFUND_REVERSED, RENEWAL_EXTENDED: see Apple.Parse); each
	// period's payment carries its subscription's expires_at, so a status that moves no money
	// and does not move that end is recorded on the payment and listed here, with why the
	// game needs no message.
	"apple": {
		"FREE_PERIOD":               "a purchase or period with nothing charged (a free trial or free offer): the app's StoreKit grants it; the first charged period is relayed",
		"CONSUMPTION_REQUEST":       "Apple asks for consumption data to decide a refund request; the refund, if granted, is relayed",
		"TEST":                      "a test notification requested from App Store Connect or the dashboard (its arrival is shown on the dashboard)",
		"REFUND_DECLINED":           "Apple declined a refund request: nothing changes for the game",
		"DID_CHANGE_RENEWAL_PREF":   "the customer changed the plan of the next period (a downgrade or crossgrade at renewal): the renewal's payment is relayed then; an UPGRADE is charged at once and relayed",
		"DID_CHANGE_RENEWAL_STATUS": "auto-renew turned off or on: access continues until the period's expires_at either way",
		"DID_FAIL_TO_RENEW":         "a renewal's billing failed: access ends at the period's expires_at unless DID_RENEW (BILLING_RECOVERY) is relayed; the billing grace period is not relayed",
		"EXPIRED":                   "the subscription ended: the last period's payment carried its expires_at, when access ends",
		"GRACE_PERIOD_EXPIRED":      "the billing grace period ended without recovery: access ends, as after the period's expires_at",
		"PRICE_INCREASE":            "a price increase was announced or consented to: no money moved",
		"RENEWAL_EXTENSION":         "a summary of a mass renewal-date extension; each extended subscription's RENEWAL_EXTENDED is relayed",
		"EXTERNAL_PURCHASE_TOKEN":   "an external purchase token report",
		"METADATA_UPDATE":           "subscription metadata changed: no money moved",
		"MIGRATION":                 "a subscription migrated: no money moved",
		"PRICE_CHANGE":              "a price change: no money moved",
		"RESCIND_CONSENT":           "consent rescinded (a parent's): access ends like a revocation of the app's own choosing; no money moved",
	},
	"stripe": {
		"*":                                 "any event but checkout.session.completed (paid), checkout.session.async_payment_succeeded, invoice.paid of a subscription, charge.refunded, charge.refund.updated, refund.created and refund.updated (succeeded)",
		"checkout.session.completed.unpaid": "a session completed whose asynchronous payment is not paid yet",
		"checkout.session.completed.subscription": "a subscription's Checkout Session: its first invoice's invoice.paid is the payment",
		"invoice.paid.no_subscription":            "an invoice of no subscription (a one-off invoice)",
		"invoice.paid.zero":                       "a subscription's invoice paid with no money (a trial, a 100% coupon)",
		"charge.refunded":                         "a charge refunded that does not list its refunds, for an account without api_keys (its refunds' own events relay them; on API versions before 2024-10-28.acacia there are none: alerted)",
		"refund.pending":                          "a refund not completed yet (its refund.updated relays it once succeeded)",
		"refund.requires_action":                  "a refund waiting for the customer's action",
		"refund.failed":                           "a refund that failed (the money did not go back); an operator must act",
		"refund.canceled":                         "a refund cancelled",
	},
	// Google Play: the charges (a one-time purchase PURCHASED; SUBSCRIPTION_PURCHASED,
	// RENEWED, RECOVERED, RESTARTED), voided purchases (refunds) and SUBSCRIPTION_REVOKED
	// (payment.revoked) are relayed; every period's payment carries its expires_at, so the
	// status changes below need no message to end an entitlement on time.
	"googleplay": {
		"TEST":                                   "a test notification from Play Console",
		"API_CONTRADICTS":                        "a notification the Play Developer API does not bear out (an unknown token, another package): alerted, an operator must look",
		"PURCHASE_PENDING":                       "a one-time purchase pending payment (cash, a bank transfer): relayed by its ONE_TIME_PRODUCT_PURCHASED once paid",
		"PURCHASE_CANCELLED":                     "a pending one-time purchase cancelled before it was paid",
		"ONE_TIME_PRODUCT_CANCELED":              "a pending one-time purchase cancelled before it was paid",
		"SUBSCRIPTION_CANCELED":                  "auto-renewal cancelled: access continues until the period's expires_at",
		"SUBSCRIPTION_ON_HOLD":                   "account hold after a failed renewal: access ends at the period's expires_at unless SUBSCRIPTION_RECOVERED is relayed",
		"SUBSCRIPTION_IN_GRACE_PERIOD":           "a renewal's billing failed and Google's grace period began: not relayed (as the App Store's)",
		"SUBSCRIPTION_PRICE_CHANGE_CONFIRMED":    "a price change confirmed: no money moved",
		"SUBSCRIPTION_DEFERRED":                  "the next renewal deferred by the developer: no money moved",
		"SUBSCRIPTION_PAUSED":                    "paused: access ends at the period's expires_at; SUBSCRIPTION_RESTARTED is relayed when it resumes with a charge",
		"SUBSCRIPTION_PAUSE_SCHEDULE_CHANGED":    "a pause scheduled or changed: no money moved",
		"SUBSCRIPTION_EXPIRED":                   "the subscription ended: the last period's payment carried its expires_at",
		"SUBSCRIPTION_ITEMS_CHANGED":             "the subscription's items changed: the next charge is relayed as a period",
		"SUBSCRIPTION_CANCELLATION_SCHEDULED":    "a cancellation scheduled: access continues until expires_at",
		"SUBSCRIPTION_PRICE_CHANGE_UPDATED":      "a price change announced: no money moved",
		"SUBSCRIPTION_PENDING_PURCHASE_CANCELED": "a pending subscription purchase cancelled before it was paid",
	},
	// Any provider whose refunds carry a cumulative total (Alipay's refund_fee): a refund whose
	// money a later refund, delivered first, already counted.
	"*": {
		"refund_covered": "a refund already counted by a later refund's cumulative total",
	},
}

// environments reads a provider app's "environments" (production, sandbox or both); absent
// means production only. what names the app for the error.
func environments(what string, names []string) ([]relay.Environment, error) {
	if len(names) == 0 {
		return []relay.Environment{relay.EnvProduction}, nil
	}
	var out []relay.Environment
	for _, n := range names {
		e, err := relay.ParseEnvironment(n)
		if err != nil {
			return nil, fmt.Errorf("PROVIDER_CONFIG %s: environments: %w", what, err)
		}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	return out, nil
}

// mismatch says why a verified notification of environment env does not fit an app configured
// for allowed, or "" when it does. Such a notification is acknowledged and stored not relayed
// (a configuration mistake, alerted), never refused: the provider would retry it for days.
func mismatch(what string, env relay.Environment, allowed []relay.Environment) string {
	if slices.Contains(allowed, env) {
		return ""
	}
	return fmt.Sprintf("a %s notification for %s, which PROVIDER_CONFIG configures for %s only (environments)", env, what, allowed[0])
}

// RefuseUnready answers a notification that arrived before payrelay could serve (a failure of
// ours: code 503 when transient, 500 when its configuration is invalid) in the shape of the
// provider the notify URL names, so it retries: Alipay's "failure", WeChat Pay's
// {"code":"FAIL"}, the generic format's JSON error.
func RefuseUnready(w http.ResponseWriter, name string, code int) {
	r := &Refusal{Code: code, Reason: "payrelay is not ready; retry later"}
	switch name {
	case "alipay":
		(*Alipay)(nil).Refuse(w, r)
	case "wechatpay":
		(*WechatPay)(nil).Refuse(w, r)
	default:
		(*Generic)(nil).Refuse(w, r)
	}
}
