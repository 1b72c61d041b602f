package provider

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/api/androidpublisher/v3"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/idtoken"
	"google.golang.org/api/option"

	"github.com/payrelay/payrelay/functions/relay"
)

// Google Play: real-time developer notifications (RTDN) as Pub/Sub push, and the Play Developer
// API for the truth. Documents and readings taken (2026-12):
//
//   - Pub/Sub "Authentication for push subscriptions": the push carries Authorization: Bearer
//     <a Google-signed OIDC token> whose aud is the subscription's configured audience and
//     whose email (email_verified) is the push service account; payrelay verifies it with
//     Google's own library (google.golang.org/api/idtoken: signature with Google's certs,
//     audience, expiry) and checks iss (accounts.google.com), email and email_verified itself,
//     before it reads the body.
//   - Push body: {"message":{"data":base64,"messageId","publishTime","attributes"},
//     "subscription"}; data is a DeveloperNotification: version, packageName,
//     eventTimeMillis, and one of oneTimeProductNotification, subscriptionNotification,
//     voidedPurchaseNotification, testNotification. A notification "tells you only that the
//     purchase state changed": the truth comes from the API. Redeliveries and duplicate
//     messageIds are harmless: payments are keyed by Google's order id.
//   - purchases.productsv2.getproductpurchasev2 (one-time products): orderId,
//     purchaseStateContext.purchaseState (PURCHASED, PENDING, CANCELLED), productLineItem
//     (productId, productOfferDetails.quantity and refundableQuantity), testPurchaseContext (a
//     test purchase: sandbox), obfuscatedExternalAccountId (the player),
//     purchaseCompletionTime, acknowledgementState.
//   - purchases.subscriptionsv2.get: latestOrderId (the order of the period just charged, a
//     renewal's "GPA.xxxx..N"), lineItems (productId, expiryTime, offerDetails), testPurchase,
//     externalAccountIdentifiers.obfuscatedExternalAccountId.
//   - orders.get: total (Money: units and nanos in currencyCode) and createTime: the price.
//   - purchases.voidedpurchases.list: voided purchases since startTime (orderId, purchaseToken,
//     voidedTimeMillis, voidedQuantity for a quantity-based partial refund).
//   - purchases.products.acknowledge and purchases.subscriptions.acknowledge (POST
//     .../tokens/{token}:acknowledge, empty body on success) and the Play Billing guide's "If
//     you don't acknowledge a purchase within three days, the user automatically receives a
//     refund, and Google Play revokes the purchase": for an app with acknowledge, payrelay
//     acknowledges a purchase whose acknowledgementState is ACKNOWLEDGEMENT_STATE_PENDING once
//     the game server has acknowledged its delivery. Google does not document the error of
//     acknowledging twice; payrelay reads the purchase again after any 4xx and takes
//     ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED (the app acknowledged or consumed it) or a purchase no
//     longer bought as nothing left to do.
//
// The API is called as the function's own service account (Application Default Credentials),
// which the studio invites in Play Console: there is no key file.

// GooglePlayApp is one Android app (package) of the studio.
type GooglePlayApp struct {
	PackageName string `json:"package_name"`
	Game        string `json:"game"`
	// Environments are those relayed: "production" and, for test purchases (license testers),
	// "sandbox".
	Environments []string `json:"environments,omitempty"`
	// Acknowledge makes payrelay acknowledge the app's purchases to Google once the game
	// server has acknowledged their delivery (never before). Without it the game must: its
	// client (BillingClient.acknowledgePurchase, or consumeAsync for a consumable) or its
	// server, within three days, or Google refunds the purchase.
	Acknowledge bool `json:"acknowledge,omitempty"`
}

// GooglePlayConfig is Google Play's part of PROVIDER_CONFIG.
type GooglePlayConfig struct {
	Apps []GooglePlayApp `json:"apps"`
	// Audience and ServiceAccount are the push subscription's OIDC token's: its audience (the
	// Ingest URL with ?provider=googleplay, terraform's output) and the push service account's
	// email. A token for anything else is refused.
	Audience       string `json:"audience"`
	ServiceAccount string `json:"service_account"`
	// APIBase replaces the Play Developer API's endpoint: for a test stand-in only. A loopback
	// one (http://127.0.0.1:...) is called with a placeholder bearer token instead of the
	// function's credentials, which a local run does not have.
	APIBase string `json:"api_base,omitempty"`
	// CertsURL replaces Google's certificate endpoint (https://www.googleapis.com/oauth2/v3/certs)
	// the push tokens are verified with: for a local stand-in signer only, so it must be a
	// loopback http URL; anything else is refused.
	CertsURL string `json:"certs_url,omitempty"`
}

// GooglePlayOptions are what tests replace: the token validator and the API client's options.
type GooglePlayOptions struct {
	Validator  TokenValidator
	APIOptions []option.ClientOption
}

// TokenValidator validates a Google-signed ID token for an audience (idtoken.Validator).
type TokenValidator interface {
	Validate(ctx context.Context, token, audience string) (*idtoken.Payload, error)
}

// GooglePlay verifies Pub/Sub pushes of RTDN and reads the truth from the Play Developer API.
type GooglePlay struct {
	cfg       GooglePlayConfig
	apps      map[string]gpApp
	validator TokenValidator
	apiOpts   []option.ClientOption

	mu  sync.Mutex
	api *androidpublisher.Service
}

type gpApp struct {
	GooglePlayApp
	envs []relay.Environment
}

var (
	_ Provider         = (*GooglePlay)(nil)
	_ Completer        = (*GooglePlay)(nil)
	_ relay.StoreAcker = (*GooglePlay)(nil)
)

// GooglePlayAckWindow is how long Google Play waits for a purchase's acknowledgement before
// it refunds it (three days, the Play Billing guide).
const GooglePlayAckWindow = 72 * time.Hour

// ackPending is the acknowledgement a purchase of app needs from payrelay, or nil: the app
// does not ask payrelay to, or the purchase is acknowledged already.
func ackPending(app gpApp, state, product, token string, subscription bool, bought time.Time) *relay.StoreAck {
	if !app.Acknowledge || state != "ACKNOWLEDGEMENT_STATE_PENDING" {
		return nil
	}
	return &relay.StoreAck{Product: fmt.Sprintf("%.256s", product), Token: token, Subscription: subscription, Due: bought.Add(GooglePlayAckWindow), State: relay.AckWaiting}
}

// NewGooglePlay checks the configuration. The validator and the API client are made on first
// use (the API needs credentials a local run may not have).
func NewGooglePlay(cfg GooglePlayConfig, o GooglePlayOptions) (*GooglePlay, error) {
	if cfg.Audience == "" || !strings.HasSuffix(cfg.ServiceAccount, ".iam.gserviceaccount.com") {
		return nil, errors.New("PROVIDER_CONFIG googleplay: audience and service_account (the push subscription's OIDC token's) are required")
	}
	g := &GooglePlay{cfg: cfg, apps: map[string]gpApp{}, validator: o.Validator, apiOpts: o.APIOptions}
	for i, a := range cfg.Apps {
		if a.PackageName == "" || !relay.GamePattern.MatchString(a.Game) {
			return nil, fmt.Errorf("PROVIDER_CONFIG googleplay.apps[%d]: package_name and game are required", i)
		}
		if _, dup := g.apps[a.PackageName]; dup {
			return nil, fmt.Errorf("PROVIDER_CONFIG googleplay: package %s twice", a.PackageName)
		}
		envs, err := environments("googleplay "+a.PackageName, a.Environments)
		if err != nil {
			return nil, err
		}
		g.apps[a.PackageName] = gpApp{GooglePlayApp: a, envs: envs}
	}
	if cfg.APIBase != "" {
		g.apiOpts = append([]option.ClientOption{option.WithEndpoint(cfg.APIBase)}, g.apiOpts...)
		if loopback(cfg.APIBase) && len(o.APIOptions) == 0 {
			g.apiOpts = append(g.apiOpts, option.WithTokenSource(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "local-stand-in"})))
		}
	}
	if cfg.CertsURL != "" {
		if !loopback(cfg.CertsURL) {
			return nil, fmt.Errorf("PROVIDER_CONFIG googleplay.certs_url %.100q: only a loopback http URL (a local stand-in) may replace Google's certificates", cfg.CertsURL)
		}
		if g.validator == nil {
			v, err := certsValidator(cfg.CertsURL)
			if err != nil {
				return nil, err
			}
			g.validator = v
		}
	}
	return g, nil
}

// loopback reports whether raw is an http URL on this machine.
func loopback(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" {
		return false
	}
	ip := net.ParseIP(u.Hostname())
	return u.Hostname() == "localhost" || ip != nil && ip.IsLoopback()
}

// certsValidator is Google's idtoken validator reading its certificates from certs (a local
// stand-in) instead of Google's endpoint.
func certsValidator(certs string) (*idtoken.Validator, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: rewrite{to: certs}}
	return idtoken.NewValidator(context.Background(), option.WithHTTPClient(client))
}

// rewrite sends every request to one URL.
type rewrite struct{ to string }

func (r rewrite) RoundTrip(req *http.Request) (*http.Response, error) {
	out, err := http.NewRequestWithContext(req.Context(), req.Method, r.to, nil)
	if err != nil {
		return nil, err
	}
	return http.DefaultTransport.RoundTrip(out)
}

// Name implements Provider.
func (*GooglePlay) Name() string { return "googleplay" }

// MediaType implements Provider.
func (*GooglePlay) MediaType() string { return "application/json" }

// service is the Play Developer API client, made once.
func (g *GooglePlay) service(ctx context.Context) (*androidpublisher.Service, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.api != nil {
		return g.api, nil
	}
	opts := append([]option.ClientOption{option.WithScopes(androidpublisher.AndroidpublisherScope)}, g.apiOpts...)
	s, err := androidpublisher.NewService(context.WithoutCancel(ctx), opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: play developer api: %v", relay.ErrUnavailable, err)
	}
	g.api = s
	return s, nil
}

// tokenValidator is the ID-token validator, made once.
func (g *GooglePlay) tokenValidator(ctx context.Context) (TokenValidator, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.validator == nil {
		v, err := idtoken.NewValidator(context.WithoutCancel(ctx))
		if err != nil {
			return nil, err
		}
		g.validator = v
	}
	return g.validator, nil
}

// developerNotification is the RTDN message (DeveloperNotification).
type developerNotification struct {
	Version         string `json:"version"`
	PackageName     string `json:"packageName"`
	EventTimeMillis string `json:"eventTimeMillis"`
	OneTime         *struct {
		NotificationType int    `json:"notificationType"`
		PurchaseToken    string `json:"purchaseToken"`
		SKU              string `json:"sku"`
	} `json:"oneTimeProductNotification"`
	Subscription *struct {
		NotificationType int    `json:"notificationType"`
		PurchaseToken    string `json:"purchaseToken"`
		SubscriptionID   string `json:"subscriptionId"`
	} `json:"subscriptionNotification"`
	Voided *struct {
		PurchaseToken string `json:"purchaseToken"`
		OrderID       string `json:"orderId"`
		ProductType   int    `json:"productType"` // 1 subscription, 2 one-time
		RefundType    int    `json:"refundType"`  // 1 full, 2 quantity-based partial
	} `json:"voidedPurchaseNotification"`
	Test *struct {
		Version string `json:"version"`
	} `json:"testNotification"`
}

// The RTDN types (oneTimeProductNotification and subscriptionNotification notificationType).
var (
	gpOneTimeTypes = map[int]string{1: "ONE_TIME_PRODUCT_PURCHASED", 2: "ONE_TIME_PRODUCT_CANCELED"}
	gpSubTypes     = map[int]string{1: "SUBSCRIPTION_RECOVERED", 2: "SUBSCRIPTION_RENEWED", 3: "SUBSCRIPTION_CANCELED", 4: "SUBSCRIPTION_PURCHASED",
		5: "SUBSCRIPTION_ON_HOLD", 6: "SUBSCRIPTION_IN_GRACE_PERIOD", 7: "SUBSCRIPTION_RESTARTED", 8: "SUBSCRIPTION_PRICE_CHANGE_CONFIRMED",
		9: "SUBSCRIPTION_DEFERRED", 10: "SUBSCRIPTION_PAUSED", 11: "SUBSCRIPTION_PAUSE_SCHEDULE_CHANGED", 12: "SUBSCRIPTION_REVOKED",
		13: "SUBSCRIPTION_EXPIRED", 17: "SUBSCRIPTION_ITEMS_CHANGED", 18: "SUBSCRIPTION_CANCELLATION_SCHEDULED", 19: "SUBSCRIPTION_PRICE_CHANGE_UPDATED",
		20: "SUBSCRIPTION_PENDING_PURCHASE_CANCELED"}
	// gpCharges are the subscription types that charge a period.
	gpCharges = map[string]bool{"SUBSCRIPTION_RECOVERED": true, "SUBSCRIPTION_RENEWED": true, "SUBSCRIPTION_PURCHASED": true, "SUBSCRIPTION_RESTARTED": true}
)

// Parse implements Provider: the push's OIDC token first (401 for anything but Google's token
// for our audience and push account), then the envelope and the notification, routed by
// package name. What the notification stands for is read from the API by Complete.
func (g *GooglePlay) Parse(h http.Header, body []byte, _ time.Time) (relay.Result, error) {
	token, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return relay.Result{}, refuse(http.StatusUnauthorized, "no Authorization: Bearer token (a Pub/Sub push is authenticated)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	v, err := g.tokenValidator(ctx)
	if err != nil {
		return relay.Result{}, &Refusal{Code: http.StatusServiceUnavailable, Reason: "token validator unavailable: " + err.Error()}
	}
	p, err := v.Validate(ctx, token, g.cfg.Audience)
	if err != nil {
		return relay.Result{}, refuse(http.StatusUnauthorized, "token: %.200v", err)
	}
	email, _ := p.Claims["email"].(string)
	verified, _ := p.Claims["email_verified"].(bool)
	switch {
	case p.Issuer != "accounts.google.com" && p.Issuer != "https://accounts.google.com":
		return relay.Result{}, refuse(http.StatusUnauthorized, "token issuer %.60q is not Google's accounts", p.Issuer)
	case email != g.cfg.ServiceAccount || !verified:
		return relay.Result{}, refuse(http.StatusUnauthorized, "token of %.80q, not the push service account", email)
	}
	n, msgID, err := decodePush(body)
	if err != nil {
		return relay.Result{}, err
	}
	app, ok := g.apps[n.PackageName]
	if !ok {
		return relay.Result{}, unrouted("googleplay package %.100q maps to no game (PROVIDER_CONFIG googleplay.apps)", n.PackageName)
	}
	pay := relay.Payment{Provider: g.Name(), Environment: relay.EnvProduction, Merchant: app.PackageName, AppID: app.PackageName, Game: app.Game}
	switch {
	case n.Test != nil:
		return relay.Result{Payment: pay, Note: &relay.Note{Kind: "TEST", Reason: "a test notification from Play Console: not relayed"}}, nil
	case n.OneTime != nil && gpOneTimeTypes[n.OneTime.NotificationType] != "" && n.OneTime.PurchaseToken != "":
		return relay.Result{Payment: pay, Note: &relay.Note{Kind: gpOneTimeTypes[n.OneTime.NotificationType], Reason: "read from the API"}}, nil
	case n.Subscription != nil && gpSubTypes[n.Subscription.NotificationType] != "" && n.Subscription.PurchaseToken != "":
		return relay.Result{Payment: pay, Note: &relay.Note{Kind: gpSubTypes[n.Subscription.NotificationType], Reason: "read from the API"}}, nil
	case n.Voided != nil && n.Voided.OrderID != "" && n.Voided.PurchaseToken != "":
		return relay.Result{Payment: pay, Note: &relay.Note{Kind: "VOIDED_PURCHASE", Reason: "read from the API"}}, nil
	}
	return relay.Result{}, refuse(http.StatusUnprocessableEntity, "message %.60s is no developer notification payrelay knows", msgID)
}

// decodePush reads a Pub/Sub push envelope and its DeveloperNotification.
func decodePush(body []byte) (developerNotification, string, error) {
	var env struct {
		Message struct {
			Data      string `json:"data"`
			MessageID string `json:"messageId"`
		} `json:"message"`
		Subscription string `json:"subscription"`
	}
	var n developerNotification
	if err := json.Unmarshal(body, &env); err != nil || env.Message.Data == "" {
		return n, "", refuse(http.StatusBadRequest, "not a Pub/Sub push envelope")
	}
	data, err := base64.StdEncoding.DecodeString(env.Message.Data)
	if err != nil {
		return n, "", refuse(http.StatusBadRequest, "message.data is not base64")
	}
	if err := json.Unmarshal(data, &n); err != nil || n.PackageName == "" {
		return n, "", refuse(http.StatusBadRequest, "message.data is not a DeveloperNotification")
	}
	return n, env.Message.MessageID, nil
}

// Complete implements Completer: the notification's truth from the Play Developer API, before
// Ingest stores or answers anything. The API unavailable is an error (Pub/Sub redelivers).
func (g *GooglePlay) Complete(ctx context.Context, body []byte, r relay.Result) ([]relay.Result, error) {
	if r.Note == nil || r.Note.Kind == "TEST" {
		return []relay.Result{r}, nil
	}
	n, _, err := decodePush(body)
	if err != nil {
		return nil, err
	}
	app := g.apps[n.PackageName]
	switch {
	case n.OneTime != nil:
		return g.oneTime(ctx, app, n.OneTime.PurchaseToken, r.Note.Kind)
	case n.Subscription != nil:
		return g.subscription(ctx, app, n.Subscription.PurchaseToken, r.Note.Kind)
	case n.Voided != nil:
		res, err := g.voided(ctx, app, n.Voided.OrderID, n.Voided.PurchaseToken, n.Voided.ProductType, n.Voided.RefundType, time.Now())
		if err != nil {
			return nil, err
		}
		return []relay.Result{res}, nil
	}
	return []relay.Result{r}, nil
}

// apiError classifies an API failure: Google's 404 (an unknown token, another package) is an
// answer to record and alert, not to retry; 429, 5xx and no answer are a failure of ours.
func apiError(what string, err error) (contradiction string, _ error) {
	var ge *googleapi.Error
	if errors.As(err, &ge) && ge.Code < 500 && ge.Code != http.StatusTooManyRequests {
		return fmt.Sprintf("%s: HTTP %d %.100s", what, ge.Code, ge.Message), nil
	}
	return "", fmt.Errorf("%w: play developer api: %s: %v", relay.ErrUnavailable, what, err)
}

// contradicted is the result of a notification the API does not bear out: recorded, alerted,
// never relayed.
func contradicted(app gpApp, kind, why string) relay.Result {
	return relay.Result{Payment: relay.Payment{Provider: "googleplay", Environment: relay.EnvProduction, Merchant: app.PackageName},
		Note: &relay.Note{Kind: "API_CONTRADICTS", Alert: true, Reason: fmt.Sprintf("%s: the Play Developer API does not bear it out (%s): not relayed", kind, why)}}
}

// order reads an order's price and creation time; "" with a contradiction when Google answers
// it does not exist.
func (g *GooglePlay) order(ctx context.Context, app gpApp, orderID string) (*androidpublisher.Order, string, error) {
	api, err := g.service(ctx)
	if err != nil {
		return nil, "", err
	}
	o, err := api.Orders.Get(app.PackageName, orderID).Context(ctx).Do()
	if err != nil {
		c, err := apiError("orders.get "+orderID, err)
		return nil, c, err
	}
	return o, "", nil
}

// money converts Google's Money to ISO minor units exactly.
func money(m *androidpublisher.Money) (int64, string, error) {
	if m == nil || m.CurrencyCode == "" {
		return 0, "", &relay.FieldError{Field: "amount", Reason: "the order states no total"}
	}
	exp, ok := relay.CurrencyExponent(m.CurrencyCode)
	if !ok {
		return 0, "", &relay.FieldError{Field: "currency", Reason: fmt.Sprintf("%.10q is not an ISO 4217 currency code", m.CurrencyCode)}
	}
	// units + nanos/1e9, in units of 10^-exp: exact only when nanos is a multiple of 10^(9-exp).
	nano := new(big.Int).Add(new(big.Int).Mul(big.NewInt(m.Units), big.NewInt(1e9)), big.NewInt(m.Nanos))
	step := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(9-exp)), nil)
	q, rem := new(big.Int).QuoRem(nano, step, new(big.Int))
	if rem.Sign() != 0 || !q.IsInt64() {
		return 0, "", &relay.InexactAmount{Amount: q.Int64(), Exponent: exp, Currency: m.CurrencyCode, Source: "Google Money"}
	}
	if q.Sign() <= 0 {
		return 0, "", &relay.FieldError{Field: "amount", Reason: "must be positive"}
	}
	return q.Int64(), m.CurrencyCode, nil
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t.UTC()
}

// paymentOf is the payment of order o of app, in env, for the player.
func (g *GooglePlay) paymentOf(app gpApp, env relay.Environment, o *androidpublisher.Order, product, player string) (relay.Payment, error) {
	amount, cur, err := money(o.Total)
	if err != nil {
		return relay.Payment{}, err
	}
	pay := relay.Payment{Provider: g.Name(), Environment: env, Merchant: app.PackageName, OrderID: o.OrderId, TransactionID: o.OrderId, AmountMinor: amount,
		Currency: cur, PaidAt: parseTime(o.CreateTime), AppID: app.PackageName, Game: app.Game, Metadata: map[string]string{"product_id": fmt.Sprintf("%.256s", product)}}
	if player != "" {
		pay.Metadata["obfuscated_account_id"] = fmt.Sprintf("%.256s", player)
	}
	return pay, nil
}

// oneTime reads a one-time product purchase: a purchased one is a payment; a pending one is
// recorded (its ONE_TIME_PRODUCT_PURCHASED relays it once paid); a cancelled one is recorded.
func (g *GooglePlay) oneTime(ctx context.Context, app gpApp, token, kind string) ([]relay.Result, error) {
	api, err := g.service(ctx)
	if err != nil {
		return nil, err
	}
	pp, err := api.Purchases.Productsv2.Getproductpurchasev2(app.PackageName, token).Context(ctx).Do()
	if err != nil {
		c, err := apiError("productsv2", err)
		if err != nil {
			return nil, err
		}
		return []relay.Result{contradicted(app, kind, c)}, nil
	}
	env := relay.EnvProduction
	if pp.TestPurchaseContext != nil {
		env = relay.EnvSandbox
	}
	state := ""
	if pp.PurchaseStateContext != nil {
		state = pp.PurchaseStateContext.PurchaseState
	}
	product := ""
	if len(pp.ProductLineItem) > 0 {
		product = pp.ProductLineItem[0].ProductId
	}
	if pp.OrderId == "" {
		return []relay.Result{{Payment: relay.Payment{Provider: g.Name(), Environment: env, Merchant: app.PackageName},
			Note: &relay.Note{Kind: "PURCHASE_" + state, Reason: "a one-time purchase with no order yet: not relayed"}}}, nil
	}
	o, c, err := g.order(ctx, app, pp.OrderId)
	if err != nil {
		return nil, err
	}
	if c != "" {
		return []relay.Result{contradicted(app, kind, c)}, nil
	}
	pay, err := g.paymentOf(app, env, o, product, pp.ObfuscatedExternalAccountId)
	if err != nil {
		return nil, err
	}
	if t := parseTime(pp.PurchaseCompletionTime); !t.IsZero() {
		pay.PaidAt = t
	}
	if state != "PURCHASED" {
		return []relay.Result{{Payment: pay, Note: &relay.Note{Kind: "PURCHASE_" + fmt.Sprintf("%.20s", state),
			Reason: "a one-time purchase not paid (pending, or a pending one cancelled): not relayed; its ONE_TIME_PRODUCT_PURCHASED relays it once paid"}}}, nil
	}
	pay.StoreAck = ackPending(app, pp.AcknowledgementState, product, token, false, pay.PaidAt)
	r := relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay, Mismatch: mismatch("googleplay app "+app.PackageName, env, app.envs)}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return []relay.Result{r}, nil
}

// subscription reads a subscription: a charging notification is the payment of its latest
// order (a renewal's GPA.xxxx..N), with a subscription block; SUBSCRIPTION_REVOKED takes
// access back (payment.revoked); the others are recorded on the latest period's payment.
func (g *GooglePlay) subscription(ctx context.Context, app gpApp, token, kind string) ([]relay.Result, error) {
	api, err := g.service(ctx)
	if err != nil {
		return nil, err
	}
	sp, err := api.Purchases.Subscriptionsv2.Get(app.PackageName, token).Context(ctx).Do()
	if err != nil {
		c, err := apiError("subscriptionsv2", err)
		if err != nil {
			return nil, err
		}
		return []relay.Result{contradicted(app, kind, c)}, nil
	}
	env := relay.EnvProduction
	if sp.TestPurchase != nil {
		env = relay.EnvSandbox
	}
	if sp.LatestOrderId == "" {
		return []relay.Result{contradicted(app, kind, "the subscription names no order")}, nil
	}
	o, c, err := g.order(ctx, app, sp.LatestOrderId)
	if err != nil {
		return nil, err
	}
	if c != "" {
		return []relay.Result{contradicted(app, kind, c)}, nil
	}
	player, product := "", ""
	if sp.ExternalAccountIdentifiers != nil {
		player = sp.ExternalAccountIdentifiers.ObfuscatedExternalAccountId
	}
	sub := &relay.Subscription{ID: fmt.Sprintf("%.64s", subscriptionID(token)), Reason: kind}
	if len(sp.LineItems) > 0 {
		li := sp.LineItems[0]
		product = li.ProductId
		sub.ProductID, sub.ExpiresAt = fmt.Sprintf("%.256s", li.ProductId), parseTime(li.ExpiryTime)
		if li.OfferDetails != nil && li.OfferDetails.OfferId != "" {
			sub.Offer = fmt.Sprintf("%.200s", li.OfferDetails.OfferId)
		}
	}
	pay, err := g.paymentOf(app, env, o, product, player)
	if err != nil {
		return nil, err
	}
	pay.Subscription = sub
	mm := mismatch("googleplay app "+app.PackageName, env, app.envs)
	var r relay.Result
	switch {
	case gpCharges[kind]:
		// A subscription is acknowledged once, at its first purchase; its renewals find it
		// acknowledged.
		pay.StoreAck = ackPending(app, sp.AcknowledgementState, product, token, true, pay.PaidAt)
		r = relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay, Mismatch: mm}
	case kind == "SUBSCRIPTION_REVOKED":
		r = relay.Result{Type: relay.TypePaymentRevoked, Payment: pay, Mismatch: mm, Event: &relay.Event{ID: "revoke-" + o.OrderId, Reason: kind, At: time.Now().UTC()}}
	default:
		pay.Subscription = nil
		return []relay.Result{{Payment: pay, Note: &relay.Note{Kind: kind, Reason: NotRelayed["googleplay"][kind] + ": not relayed"}}}, nil
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return []relay.Result{r}, nil
}

// subscriptionID names a subscription by its purchase token (Google has no other stable id
// across renewals): a hash, as tokens are long.
func subscriptionID(token string) string {
	h := relay.PaymentID(relay.EnvProduction, "googleplay", "subscription", token)
	return "gps-" + h[:24]
}

// voided reads a voided purchase as the refund of its order: the whole order, or for a
// quantity-based partial refund the voided quantity's share of the price (refunded so far /
// quantity, the cumulative total; rounded down to the minor unit, the reading taken).
func (g *GooglePlay) voided(ctx context.Context, app gpApp, orderID, token string, productType, refundType int, at time.Time) (relay.Result, error) {
	o, c, err := g.order(ctx, app, orderID)
	if err != nil {
		return relay.Result{}, err
	}
	if c != "" {
		return contradicted(app, "VOIDED_PURCHASE", c), nil
	}
	env, product, player := relay.EnvProduction, "", ""
	cum, id := int64(0), "voided-"+orderID
	if productType != 1 {
		api, err := g.service(ctx)
		if err != nil {
			return relay.Result{}, err
		}
		pp, err := api.Purchases.Productsv2.Getproductpurchasev2(app.PackageName, token).Context(ctx).Do()
		var ge *googleapi.Error
		switch {
		case err != nil && productType == 0 && errors.As(err, &ge) && ge.Code == http.StatusNotFound:
			// From the voided-purchases list, which does not say: not a one-time product, so
			// a subscription's period.
			pp = &androidpublisher.ProductPurchaseV2{}
		case err != nil:
			c, err := apiError("productsv2", err)
			if err != nil {
				return relay.Result{}, err
			}
			return contradicted(app, "VOIDED_PURCHASE", c), nil
		}
		if pp.TestPurchaseContext != nil {
			env = relay.EnvSandbox
		}
		player = pp.ObfuscatedExternalAccountId
		if len(pp.ProductLineItem) > 0 {
			product = pp.ProductLineItem[0].ProductId
			if d := pp.ProductLineItem[0].ProductOfferDetails; refundType == 2 && d != nil && d.Quantity > 1 && d.RefundableQuantity > 0 {
				pay, err := g.paymentOf(app, env, o, product, player)
				if err != nil {
					return relay.Result{}, err
				}
				refunded := d.Quantity - d.RefundableQuantity
				cum = pay.AmountMinor * refunded / d.Quantity
				id = fmt.Sprintf("voided-%s-%d", orderID, refunded)
			}
		}
	}
	pay, err := g.paymentOf(app, env, o, product, player)
	if err != nil {
		return relay.Result{}, err
	}
	if cum == 0 {
		cum = pay.AmountMinor
	}
	// A refund carries its payment's facts but not when or what exactly was granted: the
	// stored payment supplies those (as a WeChat Pay refund does).
	pay.PaidAt, pay.Metadata = time.Time{}, nil
	r := relay.Result{Type: relay.TypePaymentRefunded, Payment: pay, Mismatch: mismatch("googleplay app "+app.PackageName, env, app.envs),
		Refund: &relay.RefundFacts{ID: id, CumulativeMinor: cum, RefundedAt: at.UTC()}}
	if err := r.Validate(); err != nil {
		return relay.Result{}, err
	}
	return r, nil
}

// VoidedAccounts lists the packages the voided-purchases sweep asks about.
func (g *GooglePlay) VoidedAccounts() []string {
	return slices.Sorted(maps.Keys(g.apps))
}

// GooglePlayVoidedKept is how far back purchases.voidedpurchases.list reaches (30 days).
const GooglePlayVoidedKept = 30 * 24 * time.Hour

// Voided lists package pkg's purchases voided since since, each as the refund it is, oldest
// first (purchases.voidedpurchases.list; its notification may have been lost). A voided
// purchase the API cannot bear out is its contradiction's note.
func (g *GooglePlay) Voided(ctx context.Context, pkg string, since time.Time) ([]relay.Result, error) {
	app, ok := g.apps[pkg]
	if !ok {
		return nil, &QueryError{Reason: fmt.Sprintf("googleplay package %.100q is not configured", pkg)}
	}
	api, err := g.service(ctx)
	if err != nil {
		return nil, err
	}
	var out []relay.Result
	for next := ""; ; {
		call := api.Purchases.Voidedpurchases.List(pkg).StartTime(since.UnixMilli()).Type(1). // 1: subscriptions and one-time products
													IncludeQuantityBasedPartialRefund(true).Context(ctx)
		if next != "" {
			call = call.Token(next)
		}
		page, err := call.Do()
		if err != nil {
			if c, e := apiError("voidedpurchases.list", err); e != nil {
				return nil, e
			} else {
				return nil, &QueryError{Reason: c}
			}
		}
		for _, v := range page.VoidedPurchases {
			refundType := 1
			if v.VoidedQuantity > 0 {
				refundType = 2
			}
			r, err := g.voided(ctx, app, v.OrderId, v.PurchaseToken, 0, refundType, time.UnixMilli(v.VoidedTimeMillis))
			if err != nil {
				return nil, err
			}
			if out = append(out, r); len(out) > MaxUndelivered {
				return nil, errors.New("googleplay: more voided purchases than one sweep reads")
			}
		}
		if page.TokenPagination == nil || page.TokenPagination.NextPageToken == "" {
			break
		}
		next = page.TokenPagination.NextPageToken
	}
	slices.SortStableFunc(out, func(a, b relay.Result) int {
		if a.Refund == nil || b.Refund == nil {
			return 0
		}
		return a.Refund.RefundedAt.Compare(b.Refund.RefundedAt)
	})
	return out, nil
}

// Query implements the order query (补单) for Google Play: orderID is Google's order id
// (GPA....) or a purchase token; the order's purchase is read as its notification would be.
func (g *GooglePlay) Query(ctx context.Context, pkg, orderID string) (QueryAnswer, error) {
	app, ok := g.apps[pkg]
	if !ok {
		return QueryAnswer{}, &QueryError{Reason: fmt.Sprintf("googleplay package %.100q is not configured", pkg)}
	}
	token := orderID
	if strings.HasPrefix(orderID, "GPA.") {
		o, c, err := g.order(ctx, app, orderID)
		if err != nil {
			return QueryAnswer{}, err
		}
		if c != "" {
			return QueryAnswer{Reported: "ORDER_NOT_FOUND"}, nil
		}
		token = o.PurchaseToken
	}
	rs, err := g.oneTime(ctx, app, token, "QUERY")
	if err == nil && len(rs) == 1 && rs[0].Note != nil && rs[0].Note.Kind == "API_CONTRADICTS" {
		rs, err = g.subscription(ctx, app, token, "SUBSCRIPTION_PURCHASED") // not a one-time product: a subscription's latest period
	}
	if err != nil {
		return QueryAnswer{}, err
	}
	ans := QueryAnswer{Reported: "NOT_FOUND"}
	if len(rs) == 1 && rs[0].Type == relay.TypePaymentSucceeded {
		ans.Reported, ans.Result = "PURCHASED", &rs[0]
	} else if len(rs) == 1 && rs[0].Note != nil && rs[0].Note.Kind != "API_CONTRADICTS" {
		ans.Reported = rs[0].Note.Kind
	}
	return ans, nil
}

// QueryRefund implements the order query's refund lookup: Google tells refunds as voided
// purchases (the sweep recovers them).
func (g *GooglePlay) QueryRefund(context.Context, string, string, string) (RefundAnswer, error) {
	return RefundAnswer{}, &QueryError{Reason: "Google Play tells refunds as voided purchases: the hourly sweep recovers them"}
}

// AcknowledgePurchase implements relay.StoreAcker: purchases.products.acknowledge (or
// purchases.subscriptions.acknowledge) for p's purchase. 429, 5xx and no answer are errors of
// ours (retried); after any other refusal the purchase is read again: acknowledged already
// (by the app) or no longer bought is nothing left to do, anything else an error (retried,
// recorded, alerted as the deadline nears).
func (g *GooglePlay) AcknowledgePurchase(ctx context.Context, p *relay.Payment) (string, error) {
	a := p.StoreAck
	app, ok := g.apps[p.Merchant]
	if a == nil || !ok {
		return "", fmt.Errorf("googleplay: package %.100q is not configured, or the payment has nothing to acknowledge", p.Merchant)
	}
	api, err := g.service(ctx)
	if err != nil {
		return "", err
	}
	if a.Subscription {
		err = api.Purchases.Subscriptions.Acknowledge(app.PackageName, a.Product, a.Token, &androidpublisher.SubscriptionPurchasesAcknowledgeRequest{}).Context(ctx).Do()
	} else {
		err = api.Purchases.Products.Acknowledge(app.PackageName, a.Product, a.Token, &androidpublisher.ProductPurchasesAcknowledgeRequest{}).Context(ctx).Do()
	}
	if err == nil {
		return "", nil
	}
	refused, err := apiError("acknowledge", err)
	if err != nil {
		return "", err
	}
	// Google refused it: is there anything left to acknowledge?
	var ackState, bought string
	if a.Subscription {
		sp, err := api.Purchases.Subscriptionsv2.Get(app.PackageName, a.Token).Context(ctx).Do()
		if err != nil {
			_, err = apiError("subscriptionsv2", err)
			return "", errors.Join(errors.New(refused), err)
		}
		ackState, bought = sp.AcknowledgementState, sp.SubscriptionState
		if bought == "SUBSCRIPTION_STATE_PENDING_PURCHASE_CANCELED" || bought == "SUBSCRIPTION_STATE_EXPIRED" {
			return fmt.Sprintf("the subscription is %s", bought), nil
		}
	} else {
		pp, err := api.Purchases.Productsv2.Getproductpurchasev2(app.PackageName, a.Token).Context(ctx).Do()
		if err != nil {
			_, err = apiError("productsv2", err)
			return "", errors.Join(errors.New(refused), err)
		}
		ackState = pp.AcknowledgementState
		if pp.PurchaseStateContext != nil && pp.PurchaseStateContext.PurchaseState != "PURCHASED" {
			return fmt.Sprintf("the purchase is %.20s", pp.PurchaseStateContext.PurchaseState), nil
		}
	}
	if ackState == "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED" {
		return "acknowledged already (by the app or the game server)", nil
	}
	return "", errors.New(refused)
}

// Ack implements Provider: 204 (Pub/Sub takes any 2xx as acknowledged).
func (*GooglePlay) Ack(w http.ResponseWriter, _ relay.IngestResult) {
	w.WriteHeader(http.StatusNoContent)
}

// Refuse implements Provider: Pub/Sub redelivers on any non-2xx (with the subscription's
// retry policy, then to the dead-letter topic).
func (*GooglePlay) Refuse(w http.ResponseWriter, r *Refusal) {
	writeJSON(w, r.Code, errorBody{Error: http.StatusText(r.Code), Reason: r.Reason})
}
