package providertest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/api/idtoken"
	"google.golang.org/api/option"
)

// PubSubSigner signs OIDC tokens as Google does for a Pub/Sub push (RS256, kid, iss
// https://accounts.google.com, aud, email, email_verified, iat, exp), and serves its key as
// Google's certificate endpoint does (a JWKS), so that Google's own validator (idtoken) checks
// the tokens in tests.
type PubSubSigner struct {
	Key *rsa.PrivateKey
	Kid string
}

// NewPubSubSigner makes a signer with a fresh key.
func NewPubSubSigner() *PubSubSigner {
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	return &PubSubSigner{Key: k, Kid: "test-kid-1"}
}

// Token is a token for audience and the push account email, valid until exp.
func (s *PubSubSigner) Token(audience, email string, exp time.Time) string {
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": s.Kid, "typ": "JWT"})
	c, _ := json.Marshal(map[string]any{"iss": "https://accounts.google.com", "aud": audience, "email": email, "email_verified": true,
		"sub": "113774264463038321964", "iat": exp.Add(-time.Hour).Unix(), "exp": exp.Unix()})
	signing := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	sum := sha256.Sum256([]byte(signing))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, s.Key, crypto.SHA256, sum[:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// JWKS is the signer's key as Google's certificate endpoint serves its keys.
func (s *PubSubSigner) JWKS() []byte {
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": s.Kid,
		"n": base64.RawURLEncoding.EncodeToString(s.Key.N.Bytes()), "e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(s.Key.E)).Bytes())}}})
	return jwks
}

// ServeCerts serves JWKS over HTTP on a loopback port (PROVIDER_CONFIG googleplay.certs_url).
func (s *PubSubSigner) ServeCerts() *httptest.Server {
	jwks := s.JWKS()
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Write(jwks)
	}))
}

// Validator is Google's idtoken validator, fetching its certificates from this signer instead
// of https://www.googleapis.com/oauth2/v3/certs.
func (s *PubSubSigner) Validator() *idtoken.Validator {
	jwks := s.JWKS()
	client := &http.Client{Transport: roundTripper(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"public, max-age=3600"}},
			Body: io.NopCloser(bytes.NewReader(jwks))}, nil
	})}
	v, err := idtoken.NewValidator(context.Background(), option.WithHTTPClient(client))
	if err != nil {
		panic(err)
	}
	return v
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// PlayPush is a Pub/Sub push request body carrying notification (a DeveloperNotification).
func PlayPush(notification map[string]any, messageID string) []byte {
	data, _ := json.Marshal(notification)
	b, _ := json.Marshal(map[string]any{"message": map[string]any{"data": base64.StdEncoding.EncodeToString(data), "messageId": messageID,
		"publishTime": "2026-11-24T12:00:00.000Z", "attributes": map[string]string{}}, "subscription": "projects/studio/subscriptions/payrelay-googleplay"})
	return b
}

// PlayOneTime is a DeveloperNotification of a one-time product (type 1 purchased, 2 cancelled).
func PlayOneTime(pkg string, typ int, token, sku string) map[string]any {
	return map[string]any{"version": "1.0", "packageName": pkg, "eventTimeMillis": "1764000000000",
		"oneTimeProductNotification": map[string]any{"version": "1.0", "notificationType": typ, "purchaseToken": token, "sku": sku}}
}

// PlaySubscription is a DeveloperNotification of a subscription (type 4 purchased, 2 renewed, ...).
func PlaySubscription(pkg string, typ int, token, id string) map[string]any {
	return map[string]any{"version": "1.0", "packageName": pkg, "eventTimeMillis": "1764000000000",
		"subscriptionNotification": map[string]any{"version": "1.0", "notificationType": typ, "purchaseToken": token, "subscriptionId": id}}
}

// PlayVoided is a DeveloperNotification of a voided purchase (productType 1 subscription, 2
// one-time; refundType 1 full, 2 quantity-based partial).
func PlayVoided(pkg, token, orderID string, productType, refundType int) map[string]any {
	return map[string]any{"version": "1.0", "packageName": pkg, "eventTimeMillis": "1764000000000",
		"voidedPurchaseNotification": map[string]any{"purchaseToken": token, "orderId": orderID, "productType": productType, "refundType": refundType}}
}

// PlayAPI stands in for the Play Developer API's calls payrelay makes, in its documented JSON:
// purchases.productsv2, purchases.subscriptionsv2, orders.get, purchases.voidedpurchases.list,
// and purchases.products/subscriptions.acknowledge (acknowledging one acknowledged already is
// refused 400, as a guess at Google's undocumented answer).
// It refuses a request without a bearer token (401) and answers 404 for what it does not know;
// Acknowledge marks token's purchase acknowledged, as the app's BillingClient.acknowledgePurchase
// would.
func (a *PlayAPI) Acknowledge(token string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range []map[string]map[string]any{a.products, a.subscriptions} {
		if p, ok := m[token]; ok {
			p["acknowledgementState"] = "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
		}
	}
}

// Acknowledged lists the tokens acknowledged through the API, in order.
func (a *PlayAPI) Acknowledged() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.acked...)
}

// AcknowledgedAt is when token was acknowledged through the API (zero if it was not).
func (a *PlayAPI) AcknowledgedAt(token string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ackedAt[token]
}

// FailNext makes the next requests answer 429 or 5xx.
type PlayAPI struct {
	*httptest.Server
	mu            sync.Mutex
	products      map[string]map[string]any // by token
	subscriptions map[string]map[string]any // by token
	orders        map[string]map[string]any // by order id
	voided        []map[string]any
	failNext      []int
	requests      []string
	acked         []string // tokens acknowledged, in order
	ackedAt       map[string]time.Time
}

// NewPlayAPI starts the stand-in on a port of its own.
func NewPlayAPI() *PlayAPI {
	a := NewPlayAPIHandler()
	a.Server = httptest.NewServer(a)
	return a
}

// NewPlayAPIHandler is the stand-in without a server of its own (serve it under
// /androidpublisher/v3/); its Server is nil.
func NewPlayAPIHandler() *PlayAPI {
	return &PlayAPI{products: map[string]map[string]any{}, subscriptions: map[string]map[string]any{}, orders: map[string]map[string]any{}}
}

// ServeHTTP answers the API's requests.
func (a *PlayAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.serve(w, r) }

// SetProduct records a one-time purchase of token: its order, state (PURCHASED, PENDING,
// CANCELLED), quantity and refundable quantity, a test purchase or not, the player.
func (a *PlayAPI) SetProduct(token, orderID, productID, state string, quantity, refundable int64, test bool, player string) {
	p := map[string]any{"kind": "androidpublisher#productPurchaseV2", "orderId": orderID, "obfuscatedExternalAccountId": player,
		"purchaseStateContext": map[string]any{"purchaseState": state}, "purchaseCompletionTime": "2026-11-24T12:00:00Z",
		"acknowledgementState": "ACKNOWLEDGEMENT_STATE_PENDING",
		"productLineItem":      []map[string]any{{"productId": productID, "productOfferDetails": map[string]any{"quantity": quantity, "refundableQuantity": refundable}}}}
	if test {
		p["testPurchaseContext"] = map[string]any{"fopType": "TEST"}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.products[token]; ok {
		p["acknowledgementState"] = old["acknowledgementState"] // the purchase's, not the call's
	}
	a.products[token] = p
}

// SetSubscription records a subscription of token: its latest order and period end.
func (a *PlayAPI) SetSubscription(token, latestOrderID, productID string, expiry time.Time, test bool, player string) {
	s := map[string]any{"kind": "androidpublisher#subscriptionPurchaseV2", "latestOrderId": latestOrderID, "subscriptionState": "SUBSCRIPTION_STATE_ACTIVE",
		"externalAccountIdentifiers": map[string]any{"obfuscatedExternalAccountId": player},
		"lineItems":                  []map[string]any{{"productId": productID, "expiryTime": expiry.UTC().Format(time.RFC3339)}}}
	if test {
		s["testPurchase"] = map[string]any{}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s["acknowledgementState"] = "ACKNOWLEDGEMENT_STATE_PENDING"
	if old, ok := a.subscriptions[token]; ok {
		s["acknowledgementState"] = old["acknowledgementState"]
	}
	a.subscriptions[token] = s
}

// SetOrder records an order's total (units and nanos of currency) and creation time.
func (a *PlayAPI) SetOrder(orderID, token, currency string, units, nanos int64, created time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.orders[orderID] = map[string]any{"orderId": orderID, "purchaseToken": token, "state": "PROCESSED", "createTime": created.UTC().Format(time.RFC3339),
		"total": map[string]any{"currencyCode": currency, "units": strconv.FormatInt(units, 10), "nanos": nanos}} // int64 travels as a string
}

// AddVoided records a voided purchase, as voidedpurchases.list lists it.
func (a *PlayAPI) AddVoided(token, orderID string, voided time.Time, quantity int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.voided = append(a.voided, map[string]any{"kind": "androidpublisher#voidedPurchase", "purchaseToken": token, "orderId": orderID,
		"voidedTimeMillis": strconv.FormatInt(voided.UnixMilli(), 10), "purchaseTimeMillis": strconv.FormatInt(voided.Add(-time.Hour).UnixMilli(), 10),
		"voidedSource": 1, "voidedReason": 1, "voidedQuantity": quantity})
}

// FailNext makes the next requests answer these statuses, one each.
func (a *PlayAPI) FailNext(codes ...int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failNext = append(a.failNext, codes...)
}

// Requests lists the requests answered, as "METHOD path".
func (a *PlayAPI) Requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.requests...)
}

func playError(w http.ResponseWriter, code int, status, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": msg, "status": status}})
}

func (a *PlayAPI) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests = append(a.requests, r.Method+" "+r.URL.Path)
	if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		playError(w, http.StatusUnauthorized, "UNAUTHENTICATED", "Request is missing required authentication credential.")
		return
	}
	if len(a.failNext) > 0 {
		code := a.failNext[0]
		a.failNext = a.failNext[1:]
		playError(w, code, "UNAVAILABLE", "The service is currently unavailable.")
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/androidpublisher/v3/applications/")
	pkg, rest, _ := strings.Cut(rest, "/")
	if !ok || pkg == "" {
		playError(w, http.StatusNotFound, "NOT_FOUND", "not found")
		return
	}
	answer := func(v map[string]any, found bool) {
		if !found {
			playError(w, http.StatusNotFound, "NOT_FOUND", "The purchase token was not found.")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}
	switch {
	case r.Method == http.MethodPost && strings.HasSuffix(rest, ":acknowledge"):
		// purchases/products/{productId}/tokens/{token}:acknowledge or
		// purchases/subscriptions/{subscriptionId}/tokens/{token}:acknowledge
		parts := strings.Split(strings.TrimSuffix(rest, ":acknowledge"), "/")
		if len(parts) != 5 || parts[0] != "purchases" || parts[3] != "tokens" || (parts[1] != "products" && parts[1] != "subscriptions") {
			playError(w, http.StatusNotFound, "NOT_FOUND", "not served by the stand-in")
			return
		}
		m, id := a.products, "productLineItem"
		if parts[1] == "subscriptions" {
			m, id = a.subscriptions, "lineItems"
		}
		p, ok := m[parts[4]]
		switch {
		case !ok:
			playError(w, http.StatusNotFound, "NOT_FOUND", "The purchase token was not found.")
		case p[id].([]map[string]any)[0]["productId"] != parts[2]:
			playError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "The product id does not match the purchase.")
		case p["acknowledgementState"] == "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED":
			playError(w, http.StatusBadRequest, "FAILED_PRECONDITION", "The purchase is not in a valid state to perform the desired operation.")
		default:
			p["acknowledgementState"] = "ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED"
			a.acked = append(a.acked, parts[4])
			if a.ackedAt == nil {
				a.ackedAt = map[string]time.Time{}
			}
			a.ackedAt[parts[4]] = time.Now()
			w.WriteHeader(http.StatusOK)
		}
	case strings.HasPrefix(rest, "purchases/productsv2/tokens/"):
		p, ok := a.products[strings.TrimPrefix(rest, "purchases/productsv2/tokens/")]
		answer(p, ok)
	case strings.HasPrefix(rest, "purchases/subscriptionsv2/tokens/"):
		s, ok := a.subscriptions[strings.TrimPrefix(rest, "purchases/subscriptionsv2/tokens/")]
		answer(s, ok)
	case strings.HasPrefix(rest, "orders/"):
		o, ok := a.orders[strings.TrimPrefix(rest, "orders/")]
		answer(o, ok)
	case rest == "purchases/voidedpurchases":
		var list []map[string]any
		start := r.URL.Query().Get("startTime")
		for _, v := range a.voided {
			if start == "" || atoi64(v["voidedTimeMillis"].(string)) >= atoi64(start) {
				list = append(list, v)
			}
		}
		answer(map[string]any{"voidedPurchases": list}, true)
	default:
		playError(w, http.StatusNotFound, "NOT_FOUND", "not served by the stand-in")
	}
}

func atoi64(s string) int64 {
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}
