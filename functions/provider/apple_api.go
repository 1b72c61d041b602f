package provider

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// The App Store Server API (version 1.19), called with the studio's In-App Purchase key:
//
//   - Authentication ("Generating JSON Web Tokens for API requests"): a JWT signed ES256 with
//     the key (.p8, PKCS#8 EC P-256), header {"alg":"ES256","kid":<key id>,"typ":"JWT"}, claims
//     iss (the issuer id), iat, exp (at most 60 minutes after iat; payrelay uses 20), aud
//     "appstoreconnect-v1" and bid (the app's bundle id); sent as Authorization: Bearer.
//   - Get Notification History: POST /inApps/v1/notifications/history[?paginationToken=...]
//     with {"startDate","endDate" (ms), "onlyFailures": true}; answers {"notificationHistory":
//     [{"signedPayload",...}], "hasMore", "paginationToken"}; at most 180 days back.
//   - Get Transaction Info: GET /inApps/v1/transactions/{transactionId} → {"signedTransactionInfo"}.
//   - Request a Test Notification: POST /inApps/v1/notifications/test → {"testNotificationToken"};
//     Apple then sends a TEST notification to the app's server URL.
//   - Errors: {"errorCode","errorMessage"}; 401 (the token), 404 with errorCode 4040010
//     (TransactionIdNotFoundError), 429 (rate limited, Retry-After), 5xx.
//
// Production is https://api.storekit.itunes.apple.com, the sandbox
// https://api.storekit-sandbox.itunes.apple.com. Every answer's signed content (a payload, a
// transaction) is verified with the pinned chain like a notification: the API's TLS is not
// what payrelay believes.

// AppleAPIConfig is an app's access to the App Store Server API: the In-App Purchase key's ids
// (App Store Connect → Users and Access → Integrations → In-App Purchase). The key itself is
// not configured here: it is the secret APPLE_API_KEY (Config.AppleAPIKey).
type AppleAPIConfig struct {
	IssuerID string `json:"issuer_id"`
	KeyID    string `json:"key_id"`
	// Base replaces both of Apple's hosts: for a test stand-in only.
	Base string `json:"base,omitempty"`
}

// Apple's API hosts.
const (
	AppleAPIProduction = "https://api.storekit.itunes.apple.com"
	AppleAPISandbox    = "https://api.storekit-sandbox.itunes.apple.com"
	// AppleHistoryDays is how far back Get Notification History reaches.
	AppleHistoryDays = 180
)

// appleAPI is one app's API client.
type appleAPI struct {
	cfg      AppleAPIConfig
	bundleID string
	key      *ecdsa.PrivateKey
	client   *http.Client
	now      func() time.Time
}

// parseAppleKey reads the In-App Purchase key as App Store Connect issues it: a PKCS#8 PEM of
// an EC P-256 key.
func parseAppleKey(s string) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil, errors.New("APPLE_API_KEY: not a PEM (the .p8 file App Store Connect gives)")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("APPLE_API_KEY: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve.Params().Name != "P-256" {
		return nil, errors.New("APPLE_API_KEY: not an EC P-256 key")
	}
	return ek, nil
}

// AppleJWT is the bearer token of a request for bundleID: ES256 over the header and claims
// Apple documents, valid for 20 minutes from now.
func AppleJWT(key *ecdsa.PrivateKey, issuerID, keyID, bundleID string, now time.Time) (string, error) {
	h, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": keyID, "typ": "JWT"})
	c, _ := json.Marshal(map[string]any{"iss": issuerID, "iat": now.Unix(), "exp": now.Add(20 * time.Minute).Unix(), "aud": "appstoreconnect-v1", "bid": bundleID})
	signing := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// base is the API host for env.
func (c *appleAPI) base(env relay.Environment) string {
	switch {
	case c.cfg.Base != "":
		return c.cfg.Base
	case env == relay.EnvSandbox:
		return AppleAPISandbox
	}
	return AppleAPIProduction
}

// appleAPIError is an answer Apple gave with its error body.
type appleAPIError struct {
	Status     int
	Code       int64
	Message    string
	RetryAfter string
}

func (e *appleAPIError) Error() string {
	s := fmt.Sprintf("app store server api: HTTP %d errorCode %d %.80s", e.Status, e.Code, e.Message)
	if e.RetryAfter != "" {
		s += " (Retry-After " + e.RetryAfter + ")"
	}
	return s
}

// call makes one signed request (retried on a transport failure or 5xx by fetchHTTP) and
// decodes a 200 answer into out. Any other answer is an *appleAPIError.
func (c *appleAPI) call(ctx context.Context, env relay.Environment, method, path string, body any, out any) error {
	var raw []byte
	if body != nil {
		raw, _ = json.Marshal(body)
	}
	resp, answer, err := queryHTTP(ctx, c.client, "app store server api", func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, method, c.base(env)+path, bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		token, err := AppleJWT(c.key, c.cfg.IssuerID, c.cfg.KeyID, c.bundleID, c.now())
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if raw != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		return req, nil
	})
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			ErrorCode    int64  `json:"errorCode"`
			ErrorMessage string `json:"errorMessage"`
		}
		json.Unmarshal(answer, &e)
		return &appleAPIError{Status: resp.StatusCode, Code: e.ErrorCode, Message: e.ErrorMessage, RetryAfter: resp.Header.Get("Retry-After")}
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return &QueryError{Reason: "the app store server api's answer is not JSON"}
	}
	return nil
}

// api is app bundleID's API client; a *QueryError when it has none.
func (a *Apple) api(bundleID string) (*appleAPI, appleApp, error) {
	app, ok := a.apps[bundleID]
	if !ok {
		return nil, app, &QueryError{Reason: fmt.Sprintf("bundle id %.80q is not one of ours", bundleID)}
	}
	if app.client == nil {
		return nil, app, &QueryError{Reason: fmt.Sprintf("app %s has no App Store Server API access: configure its api (issuer_id, key_id) and the APPLE_API_KEY secret", bundleID)}
	}
	return app.client, app, nil
}

// HistoryAccount is one app and environment the notification-history sweep asks.
type HistoryAccount struct {
	BundleID    string
	Environment relay.Environment
}

// HistoryAccounts lists the apps with API access, each environment they are configured for.
func (a *Apple) HistoryAccounts() []HistoryAccount {
	var out []HistoryAccount
	for _, id := range slices.Sorted(maps.Keys(a.apps)) {
		app := a.apps[id]
		if app.client == nil {
			continue
		}
		for _, env := range app.envs {
			out = append(out, HistoryAccount{BundleID: id, Environment: env})
		}
	}
	return out
}

// MaxHistory bounds the notifications one sweep of one app reads; past it the sweep fails so
// that its cursor stays, and the next run reads on.
const MaxHistory = 5000

// ErrHistoryTooLong: more failed notifications than one sweep reads.
var ErrHistoryTooLong = errors.New("apple: more notifications in the history than one sweep reads")

// History asks Apple for the notifications of app bundleID in env that failed to reach the
// server (onlyFailures) between since and until, oldest first, each as the body Apple posts
// ({"signedPayload":...}), to feed through Parse.
func (a *Apple) History(ctx context.Context, bundleID string, env relay.Environment, since, until time.Time) ([][]byte, error) {
	c, _, err := a.api(bundleID)
	if err != nil {
		return nil, err
	}
	if oldest := until.AddDate(0, 0, -AppleHistoryDays); since.Before(oldest) {
		since = oldest
	}
	var out [][]byte
	token := ""
	for {
		path := "/inApps/v1/notifications/history"
		if token != "" {
			path += "?paginationToken=" + url.QueryEscape(token)
		}
		var page struct {
			NotificationHistory []struct {
				SignedPayload string `json:"signedPayload"`
			} `json:"notificationHistory"`
			HasMore         bool   `json:"hasMore"`
			PaginationToken string `json:"paginationToken"`
		}
		err := c.call(ctx, env, http.MethodPost, path, map[string]any{"startDate": since.UnixMilli(), "endDate": until.UnixMilli(), "onlyFailures": true}, &page)
		if err != nil {
			return nil, err
		}
		for _, h := range page.NotificationHistory {
			if len(out) >= MaxHistory {
				return nil, ErrHistoryTooLong
			}
			b, _ := json.Marshal(map[string]string{"signedPayload": h.SignedPayload})
			out = append(out, b)
		}
		if !page.HasMore || page.PaginationToken == "" {
			return out, nil
		}
		token = page.PaginationToken
	}
}

// Query implements the order query (补单) for the App Store: orderID is a transactionId, asked
// with Get Transaction Info, in production first and then, for an app configured for it, in
// the sandbox (Apple's advice for a transaction of unknown environment). The signed
// transaction is verified and read as its ONE_TIME_CHARGE or renewal would be; a revoked one is
// the payment and its refund.
func (a *Apple) Query(ctx context.Context, bundleID, orderID string) (QueryAnswer, error) {
	c, app, err := a.api(bundleID)
	if err != nil {
		return QueryAnswer{}, err
	}
	if orderID == "" || len(orderID) > 64 {
		return QueryAnswer{}, &QueryError{Reason: "order_id must be an App Store transactionId"}
	}
	var signed string
	for _, env := range app.envs {
		var ans struct {
			SignedTransactionInfo string `json:"signedTransactionInfo"`
		}
		err := c.call(ctx, env, http.MethodGet, "/inApps/v1/transactions/"+url.PathEscape(orderID), nil, &ans)
		var ae *appleAPIError
		switch {
		case errors.As(err, &ae) && ae.Status == http.StatusNotFound:
			continue
		case errors.As(err, &ae):
			return QueryAnswer{}, &QueryError{Reason: ae.Error()}
		case err != nil:
			return QueryAnswer{}, err
		}
		signed = ans.SignedTransactionInfo
		break
	}
	if signed == "" {
		return QueryAnswer{Reported: "TRANSACTION_NOT_FOUND"}, nil
	}
	var tx appleTransaction
	if err := a.verifyJWS(signed, &tx, func(v any) int64 { return v.(*appleTransaction).SignedDate }); err != nil {
		return QueryAnswer{}, &QueryError{Reason: "apple's answer: " + err.Error()}
	}
	if tx.BundleID != bundleID || tx.TransactionID != orderID {
		return QueryAnswer{}, &QueryError{Reason: "apple's answer names another transaction or bundle"}
	}
	env, err := appleEnvironment(tx.Environment)
	if err != nil {
		return QueryAnswer{}, &QueryError{Reason: "apple's answer: " + err.Error()}
	}
	pay, err := a.transactionPayment(app, env, tx, "QUERY")
	if err != nil {
		return QueryAnswer{}, &QueryError{Reason: "apple's answer: " + err.Error()}
	}
	ans := QueryAnswer{Reported: "PURCHASED"}
	if tx.Price <= 0 {
		ans.Reported = "NOTHING_CHARGED"
		return ans, nil
	}
	r := relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay, Mismatch: mismatch("apple app "+app.BundleID, env, app.envs)}
	if err := r.Validate(); err != nil {
		return QueryAnswer{}, &QueryError{Reason: "apple's answer: " + err.Error()}
	}
	ans.Result = &r
	if tx.RevocationDate != 0 {
		ans.Reported = "REVOKED"
		if tx.RevocationType == "FAMILY_REVOKE" {
			return ans, nil // access revoked, no money: its REVOKE notification says so
		}
		amount, err := appleRefundAmount(pay.AmountMinor, tx)
		if err != nil {
			return QueryAnswer{}, &QueryError{Reason: "apple's answer: " + err.Error()}
		}
		ans.Refunds = []relay.Result{{Type: relay.TypePaymentRefunded, Payment: pay, Refund: &relay.RefundFacts{ID: "refund-" + tx.TransactionID, AmountMinor: amount,
			RefundedAt: time.UnixMilli(tx.RevocationDate).UTC()}}}
	}
	return ans, nil
}

// QueryRefund implements the order query's refund lookup: the App Store tells a transaction's
// refund with the transaction itself (Query).
func (a *Apple) QueryRefund(context.Context, string, string, string) (RefundAnswer, error) {
	return RefundAnswer{}, &QueryError{Reason: "the App Store tells a refund with its transaction: query the transactionId"}
}

// RequestTest asks Apple to send app bundleID's server URL for env a TEST notification, and
// returns Apple's token for it.
func (a *Apple) RequestTest(ctx context.Context, bundleID string, env relay.Environment) (string, error) {
	c, _, err := a.api(bundleID)
	if err != nil {
		return "", err
	}
	var ans struct {
		TestNotificationToken string `json:"testNotificationToken"`
	}
	if err := c.call(ctx, env, http.MethodPost, "/inApps/v1/notifications/test", map[string]any{}, &ans); err != nil {
		var ae *appleAPIError
		if errors.As(err, &ae) {
			return "", &QueryError{Reason: ae.Error()}
		}
		return "", err
	}
	return ans.TestNotificationToken, nil
}

// TestMarker is the cursor id under which the arrival of app bundleID's last TEST notification
// in env is kept (the dashboard shows it).
func TestMarker(bundleID string, env relay.Environment) string {
	return "apple-test-" + bundleID + "-" + string(env)
}

// WithAPIKey gives the apps configured with api access their client, signing with the In-App
// Purchase key (the APPLE_API_KEY secret's PEM), through client (nil: one that follows no
// redirect, each request bounded by its context).
func (a *Apple) WithAPIKey(pemKey string, client *http.Client) error {
	if client == nil {
		client = noRedirects
	}
	var key *ecdsa.PrivateKey
	for id, app := range a.apps {
		if app.API == nil {
			continue
		}
		if app.API.IssuerID == "" || app.API.KeyID == "" {
			return fmt.Errorf("PROVIDER_CONFIG apple %s: api needs issuer_id and key_id", id)
		}
		if key == nil {
			if pemKey == "" {
				return fmt.Errorf("PROVIDER_CONFIG apple %s: api is configured, but the APPLE_API_KEY secret is empty", id)
			}
			k, err := parseAppleKey(pemKey)
			if err != nil {
				return err
			}
			key = k
		}
		app.client = &appleAPI{cfg: *app.API, bundleID: id, key: key, client: client, now: time.Now}
		a.apps[id] = app
	}
	return nil
}
