package providertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AppleAPI stands in for the App Store Server API (version 1.19) of one app: it verifies each
// request's bearer JWT as Apple does (ES256 with the In-App Purchase key's public half; header
// alg ES256, kid, typ JWT; claims iss, aud "appstoreconnect-v1", bid, iat, exp at most 60
// minutes after iat and not passed), answers 401 otherwise, and serves Get Notification History
// (paginated, filtered by date and onlyFailures), Get Transaction Info (signed with the test
// chain; 404 errorCode 4040010), Request a Test Notification, and a 429 with Retry-After on
// demand, each in Apple's documented shape.
type AppleAPI struct {
	*httptest.Server
	// Key is the In-App Purchase key whose PEM payrelay is given (KeyPEM).
	Key                       *ecdsa.PrivateKey
	IssuerID, KeyID, BundleID string
	// PageSize is how many notifications a history page holds (Apple's are larger).
	PageSize int

	chain        *AppleChain
	mu           sync.Mutex
	history      []appleHistoryEntry
	transactions map[string]map[string]any
	tests        int
	rateLimited  int
	requests     []string
}

type appleHistoryEntry struct {
	body   []byte // {"signedPayload":...}
	sentAt time.Time
	failed bool
}

// NewAppleAPI starts the stand-in for bundleID, signing its answers with chain.
func NewAppleAPI(chain *AppleChain, bundleID string) *AppleAPI {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a := &AppleAPI{Key: key, IssuerID: "57246542-96fe-1a63-e053-0824d011072a", KeyID: "2X9R4HXF34", BundleID: bundleID, PageSize: 2,
		chain: chain, transactions: map[string]map[string]any{}}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	return a
}

// KeyPEM is the key as App Store Connect hands it out (.p8: PKCS#8 PEM).
func (a *AppleAPI) KeyPEM() string {
	der, _ := x509.MarshalPKCS8PrivateKey(a.Key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// AddHistory records a notification (AppleNotification's body) Apple sent at sentAt, failed or
// delivered.
func (a *AppleAPI) AddHistory(body []byte, sentAt time.Time, failed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.history = append(a.history, appleHistoryEntry{body: body, sentAt: sentAt, failed: failed})
}

// SetTransaction makes Get Transaction Info know a transaction (AppleTransaction).
func (a *AppleAPI) SetTransaction(tx map[string]any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.transactions[tx["transactionId"].(string)] = tx
}

// RateLimitNext makes the next n requests answer 429 with Retry-After.
func (a *AppleAPI) RateLimitNext(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rateLimited = n
}

// Tests counts the test notifications asked for.
func (a *AppleAPI) Tests() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tests
}

// Requests lists the requests answered, as "METHOD path".
func (a *AppleAPI) Requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.requests...)
}

func appleError(w http.ResponseWriter, code int, errorCode int64, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"errorCode": errorCode, "errorMessage": msg})
}

// checkJWT verifies the bearer token as Apple does; "" when it holds.
func (a *AppleAPI) checkJWT(auth string, now time.Time) string {
	token, ok := strings.CutPrefix(auth, "Bearer ")
	parts := strings.Split(token, ".")
	if !ok || len(parts) != 3 {
		return "no bearer JWT"
	}
	var h struct{ Alg, Kid, Typ string }
	var c struct {
		Iss string `json:"iss"`
		Aud string `json:"aud"`
		Bid string `json:"bid"`
		Iat int64  `json:"iat"`
		Exp int64  `json:"exp"`
	}
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if json.Unmarshal(hb, &h) != nil || json.Unmarshal(cb, &c) != nil || err != nil || len(sig) != 64 {
		return "malformed JWT"
	}
	switch {
	case h.Alg != "ES256" || h.Typ != "JWT":
		return "alg must be ES256, typ JWT"
	case h.Kid != a.KeyID:
		return "unknown kid"
	case c.Iss != a.IssuerID:
		return "unknown issuer"
	case c.Aud != "appstoreconnect-v1":
		return "aud must be appstoreconnect-v1"
	case c.Bid != a.BundleID:
		return "bid is not this app"
	case c.Exp-c.Iat > 3600 || c.Iat > now.Add(time.Minute).Unix() || c.Exp <= now.Unix():
		return "expired, or valid for more than 60 minutes"
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(&a.Key.PublicKey, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return "signature"
	}
	return ""
}

func (a *AppleAPI) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests = append(a.requests, r.Method+" "+r.URL.Path)
	if why := a.checkJWT(r.Header.Get("Authorization"), time.Now()); why != "" {
		w.WriteHeader(http.StatusUnauthorized) // Apple answers 401 with no body
		return
	}
	if a.rateLimited > 0 {
		a.rateLimited--
		w.Header().Set("Retry-After", "2")
		appleError(w, http.StatusTooManyRequests, 4290000, "Rate limit exceeded.")
		return
	}
	answer := func(v any) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/inApps/v1/notifications/history":
		var q struct {
			StartDate    int64 `json:"startDate"`
			EndDate      int64 `json:"endDate"`
			OnlyFailures bool  `json:"onlyFailures"`
		}
		if json.NewDecoder(r.Body).Decode(&q) != nil || q.StartDate == 0 || q.EndDate < q.StartDate {
			appleError(w, http.StatusBadRequest, 4000006, "Invalid start date or end date.")
			return
		}
		var match []map[string]any
		for _, h := range a.history {
			at := h.sentAt.UnixMilli()
			if at < q.StartDate || at > q.EndDate || q.OnlyFailures && !h.failed {
				continue
			}
			var body map[string]string
			json.Unmarshal(h.body, &body)
			attempts := []map[string]any{{"attemptDate": at, "sendAttemptResult": "SUCCESS"}}
			if h.failed {
				attempts[0]["sendAttemptResult"] = "TIMED_OUT"
			}
			match = append(match, map[string]any{"signedPayload": body["signedPayload"], "sendAttempts": attempts})
		}
		from, _ := strconv.Atoi(r.URL.Query().Get("paginationToken"))
		to := min(from+a.PageSize, len(match))
		page := map[string]any{"notificationHistory": match[min(from, len(match)):to], "hasMore": to < len(match)}
		if to < len(match) {
			page["paginationToken"] = strconv.Itoa(to)
		}
		answer(page)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/inApps/v1/transactions/"):
		tx, ok := a.transactions[strings.TrimPrefix(r.URL.Path, "/inApps/v1/transactions/")]
		if !ok {
			appleError(w, http.StatusNotFound, 4040010, "Transaction id not found.")
			return
		}
		answer(map[string]string{"signedTransactionInfo": a.chain.Sign(tx)})
	case r.Method == http.MethodPost && r.URL.Path == "/inApps/v1/notifications/test":
		a.tests++
		answer(map[string]string{"testNotificationToken": "ce3af791-365e-4c60-841b-1674b43c1609_" + strconv.Itoa(a.tests)})
	default:
		appleError(w, http.StatusNotFound, 4040000, "not served by the stand-in")
	}
}
