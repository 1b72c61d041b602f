package provider

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// AppleRootCAG3 is Apple Root CA - G3 (DER, base64), from Apple's PKI page
// (apple.com/certificateauthority, AppleRootCA-G3.cer): SHA-256 fingerprint
// 63:34:3A:BF:B8:9A:6A:03:EB:B5:7E:9B:3F:5F:A7:BE:7C:4F:5C:75:6F:30:17:B3:A8:C4:88:C3:65:3E:91:79,
// checked by a test. App Store Server Notifications V2 chain to it.
const AppleRootCAG3 = "MIICQzCCAcmgAwIBAgIILcX8iNLFS5UwCgYIKoZIzj0EAwMwZzEbMBkGA1UEAwwSQXBwbGUgUm9vdCBDQSAtIEczMSYwJAYDVQQLDB1BcHBsZSBDZXJ0aWZpY2F0aW9uIEF1dGhvcml0eTETMBEGA1UECgwKQXBwbGUgSW5jLjELMAkGA1UEBhMCVVMwHhcNMTQwNDMwMTgxOTA2WhcNMzkwNDMwMTgxOTA2WjBnMRswGQYDVQQDDBJBcHBsZSBSb290IENBIC0gRzMxJjAkBgNVBAsMHUFwcGxlIENlcnRpZmljYXRpb24gQXV0aG9yaXR5MRMwEQYDVQQKDApBcHBsZSBJbmMuMQswCQYDVQQGEwJVUzB2MBAGByqGSM49AgEGBSuBBAAiA2IABJjpLz1AcqTtkyJygRMc3RCV8cWjTnHcFBbZDuWmBSp3ZHtfTjjTuxxEtX/1H7YyYl3J6YRbTzBPEVoA/VhYDKX1DyxNB0cTddqXl5dvMVztK517IDvYuVTZXpmkOlEKMaNCMEAwHQYDVR0OBBYEFLuw3qFYM4iapIqZ3r6966/ayySrMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoGCCqGSM49BAMDA2gAMGUCMQCD6cHEFl4aXTQY2e3v9GwOAEZLuN+yRhHFD/3meoyhpmvOwgPUnPWTxnS4at+qIxUCMG1mihDK1A3UT82NQz60imOlM27jbdoXt2QfyFMm+YhidDkLF1vLUagM6BgD56KyKA=="

// The marker OIDs Apple's server libraries require (app-store-server-library's chain
// verifier): the leaf is an App Store receipt-signing certificate, the intermediate Apple's
// WWDR intermediate.
var (
	oidAppleLeaf         = asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 11, 1}
	oidAppleIntermediate = asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 2, 1}
)

// AppleApp is one App Store app of the studio.
type AppleApp struct {
	BundleID string `json:"bundle_id"`
	// AppAppleID is the app's numeric Apple ID; production notifications must carry it.
	AppAppleID int64  `json:"app_apple_id"`
	Game       string `json:"game"`
	// Environments are those the app's notifications are relayed from: "production" (the
	// default), "sandbox" (the Sandbox and Xcode environments: TestFlight, sandbox testers,
	// StoreKit testing), or both. App Store Connect sends each environment to its own URL; both
	// may point at the same Ingest.
	Environments []string `json:"environments,omitempty"`
	// AllowSandbox is the former switch, which sent sandbox notifications to the game's
	// production endpoint. It is refused, naming its replacement, so that a configuration
	// written for it does not silently change meaning.
	AllowSandbox *bool `json:"allow_sandbox,omitempty"`
}

// Apple verifies App Store Server Notifications V2: a JWS signed ES256 by a certificate chained
// to Apple Root CA - G3 (Apple's documentation "App Store Server Notifications V2" and
// "JWSDecodedHeader"; the checks are those of Apple's app-store-server-library).
type Apple struct {
	root *x509.Certificate
	apps map[string]appleApp // by bundle id
}

type appleApp struct {
	AppleApp
	envs []relay.Environment
}

var _ Provider = (*Apple)(nil)

// NewApple checks the apps and pins root (AppleRootCAG3 when nil).
func NewApple(apps []AppleApp, root *x509.Certificate) (*Apple, error) {
	if root == nil {
		der, _ := base64.StdEncoding.DecodeString(AppleRootCAG3)
		r, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("apple root: %w", err)
		}
		root = r
	}
	a := &Apple{root: root, apps: map[string]appleApp{}}
	for i, app := range apps {
		if app.BundleID == "" || !relay.GamePattern.MatchString(app.Game) {
			return nil, fmt.Errorf("PROVIDER_CONFIG apple[%d]: bundle_id and game are required", i)
		}
		if app.AllowSandbox != nil {
			return nil, fmt.Errorf("PROVIDER_CONFIG apple[%d] (%s): allow_sandbox is replaced by \"environments\": [\"production\", \"sandbox\"], and sandbox notifications now go to the game's sandbox endpoint (GAMES sandbox), never to production", i, app.BundleID)
		}
		if app.AppAppleID <= 0 {
			return nil, fmt.Errorf("PROVIDER_CONFIG apple[%d] (%s): app_apple_id is required (production notifications carry it)", i, app.BundleID)
		}
		if _, dup := a.apps[app.BundleID]; dup {
			return nil, fmt.Errorf("PROVIDER_CONFIG apple: bundle_id %s twice", app.BundleID)
		}
		envs, err := environments("apple "+app.BundleID, app.Environments)
		if err != nil {
			return nil, err
		}
		a.apps[app.BundleID] = appleApp{AppleApp: app, envs: envs}
	}
	return a, nil
}

// Name implements Provider.
func (*Apple) Name() string { return "apple" }

// MediaType implements Provider.
func (*Apple) MediaType() string { return "application/json" }

type appleNotification struct {
	NotificationType string `json:"notificationType"`
	Subtype          string `json:"subtype"`
	NotificationUUID string `json:"notificationUUID"`
	SignedDate       int64  `json:"signedDate"`
	Data             struct {
		AppAppleID            int64  `json:"appAppleId"`
		BundleID              string `json:"bundleId"`
		Environment           string `json:"environment"`
		SignedTransactionInfo string `json:"signedTransactionInfo"`
	} `json:"data"`
}

type appleTransaction struct {
	TransactionID         string `json:"transactionId"`
	OriginalTransactionID string `json:"originalTransactionId"`
	BundleID              string `json:"bundleId"`
	ProductID             string `json:"productId"`
	PurchaseDate          int64  `json:"purchaseDate"`
	Type                  string `json:"type"`
	AppAccountToken       string `json:"appAccountToken"`
	Price                 int64  `json:"price"` // milliunits of currency
	Currency              string `json:"currency"`
	Environment           string `json:"environment"`
	RevocationDate        int64  `json:"revocationDate"`
	RevocationReason      *int   `json:"revocationReason"`
	SignedDate            int64  `json:"signedDate"`
}

// Parse implements Provider.
func (a *Apple) Parse(_ http.Header, body []byte, _ time.Time) (relay.Result, error) {
	var env struct {
		SignedPayload string `json:"signedPayload"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.SignedPayload == "" {
		return relay.Result{}, refuse(http.StatusBadRequest, "want {\"signedPayload\":\"<JWS>\"}")
	}
	var n appleNotification
	if err := a.verifyJWS(env.SignedPayload, &n, func(v any) int64 { return v.(*appleNotification).SignedDate }); err != nil {
		return relay.Result{}, err
	}
	app, ok := a.apps[n.Data.BundleID]
	if !ok {
		return relay.Result{}, refuse(http.StatusForbidden, "bundleId %.80q is not one of ours", n.Data.BundleID)
	}
	// The environment as Apple states it (App Store Server Notifications V2, data.environment:
	// "Sandbox" or "Production"; the App Store Server Library's Environment adds "Xcode" and
	// "LocalTesting" for StoreKit testing in Xcode, which sign with the same chain in tests).
	var environment relay.Environment
	switch n.Data.Environment {
	case "Production":
		environment = relay.EnvProduction
		if n.Data.AppAppleID != app.AppAppleID {
			return relay.Result{}, refuse(http.StatusForbidden, "appAppleId %d is not %s's", n.Data.AppAppleID, app.BundleID)
		}
	case "Sandbox", "Xcode", "LocalTesting":
		environment = relay.EnvSandbox
	default:
		return relay.Result{}, refuse(http.StatusUnprocessableEntity, "environment %.20q is unknown", n.Data.Environment)
	}
	kind := n.NotificationType
	if n.Subtype != "" {
		kind += "." + n.Subtype
	}
	pay := relay.Payment{Provider: a.Name(), Environment: environment, Merchant: app.BundleID, AppID: app.BundleID, Game: app.Game}
	if n.NotificationType != "ONE_TIME_CHARGE" && n.NotificationType != "REFUND" {
		if _, listed := NotRelayed[a.Name()][n.NotificationType]; !listed {
			return relay.Result{}, refuse(http.StatusUnprocessableEntity, "notificationType %.40q is unknown", n.NotificationType)
		}
		return relay.Result{Note: &relay.Note{Kind: fmt.Sprintf("%.60s", kind), Reason: NotRelayed[a.Name()][n.NotificationType] + ": not relayed"}}, nil
	}
	var tx appleTransaction
	if err := a.verifyJWS(n.Data.SignedTransactionInfo, &tx, func(v any) int64 { return v.(*appleTransaction).SignedDate }); err != nil {
		return relay.Result{}, err
	}
	if tx.BundleID != app.BundleID || tx.Environment != n.Data.Environment {
		return relay.Result{}, refuse(http.StatusForbidden, "the transaction's bundleId or environment differs from its notification's")
	}
	pay.OrderID, pay.TransactionID = tx.TransactionID, tx.OriginalTransactionID
	if pay.TransactionID == "" {
		pay.TransactionID = tx.TransactionID
	}
	pay.Currency = tx.Currency
	amount, err := relay.FromMilli(tx.Price, tx.Currency)
	if err != nil {
		return relay.Result{}, asRefusal(err)
	}
	pay.AmountMinor = amount
	pay.PaidAt = time.UnixMilli(tx.PurchaseDate).UTC()
	pay.Metadata = map[string]string{"product_id": fmt.Sprintf("%.256s", tx.ProductID)}
	if tx.AppAccountToken != "" {
		pay.Metadata["app_account_token"] = fmt.Sprintf("%.256s", tx.AppAccountToken)
	}
	r := relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay, Mismatch: mismatch("apple app "+app.BundleID, environment, app.envs)}
	if n.NotificationType == "REFUND" {
		if tx.RevocationDate == 0 {
			return relay.Result{}, refuse(http.StatusUnprocessableEntity, "REFUND without revocationDate")
		}
		// A one-time purchase is refunded whole: this refund is the transaction's price.
		r.Type = relay.TypePaymentRefunded
		r.Refund = &relay.RefundFacts{ID: "refund-" + tx.TransactionID, AmountMinor: amount, RefundedAt: time.UnixMilli(tx.RevocationDate).UTC()}
	}
	if err := r.Validate(); err != nil {
		return relay.Result{}, asRefusal(err)
	}
	return r, nil
}

// verifyJWS checks a compact JWS as Apple's libraries do: alg ES256; an x5c chain of exactly
// three certificates, the last the pinned root, the intermediate a CA signed by the root with
// Apple's intermediate OID, the leaf signed by the intermediate with Apple's leaf OID, each
// valid at the payload's signedDate; then the ES256 signature with the leaf's key. It decodes
// the payload into v; signedDate reads v's signing time.
func (a *Apple) verifyJWS(jws string, v any, signedDate func(any) int64) error {
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return refuse(http.StatusBadRequest, "not a compact JWS")
	}
	rawHeader, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	rawPayload, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return refuse(http.StatusBadRequest, "JWS parts are not base64url")
	}
	var header struct {
		Alg string   `json:"alg"`
		X5C []string `json:"x5c"`
	}
	if err := json.Unmarshal(rawHeader, &header); err != nil {
		return refuse(http.StatusBadRequest, "JWS header is not JSON")
	}
	if header.Alg != "ES256" {
		return refuse(http.StatusUnauthorized, "JWS alg %.20q: want ES256", header.Alg)
	}
	if len(header.X5C) != 3 {
		return refuse(http.StatusUnauthorized, "x5c holds %d certificates: want leaf, intermediate, root", len(header.X5C))
	}
	var chain [3]*x509.Certificate
	for i, c := range header.X5C {
		der, err := base64.StdEncoding.DecodeString(c)
		if err != nil {
			return refuse(http.StatusUnauthorized, "x5c[%d] is not base64", i)
		}
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return refuse(http.StatusUnauthorized, "x5c[%d] is not a certificate", i)
		}
	}
	if err := json.Unmarshal(rawPayload, v); err != nil {
		return refuse(http.StatusBadRequest, "JWS payload is not JSON")
	}
	leaf, inter, root := chain[0], chain[1], chain[2]
	if !bytes.Equal(root.Raw, a.root.Raw) {
		return refuse(http.StatusUnauthorized, "x5c root is not Apple Root CA - G3")
	}
	at := time.UnixMilli(signedDate(v))
	if signedDate(v) == 0 {
		return refuse(http.StatusUnauthorized, "payload has no signedDate")
	}
	for name, c := range map[string]*x509.Certificate{"leaf": leaf, "intermediate": inter, "root": root} {
		if at.Before(c.NotBefore) || at.After(c.NotAfter) {
			return refuse(http.StatusUnauthorized, "the %s certificate is not valid at signedDate %s", name, at.UTC().Format(time.RFC3339))
		}
	}
	if !inter.IsCA || !hasExtension(inter, oidAppleIntermediate) {
		return refuse(http.StatusUnauthorized, "the intermediate is not Apple's (CA with OID 1.2.840.113635.100.6.2.1)")
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return refuse(http.StatusUnauthorized, "the intermediate is not signed by the root")
	}
	if !hasExtension(leaf, oidAppleLeaf) {
		return refuse(http.StatusUnauthorized, "the leaf lacks Apple's OID 1.2.840.113635.100.6.11.1")
	}
	if err := leaf.CheckSignatureFrom(inter); err != nil {
		return refuse(http.StatusUnauthorized, "the leaf is not signed by the intermediate")
	}
	key, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || len(sig) != 64 {
		return refuse(http.StatusUnauthorized, "the leaf's key is not ECDSA P-256 or the signature is not 64 bytes")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(key, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return refuse(http.StatusUnauthorized, "JWS signature verification failed")
	}
	return nil
}

func hasExtension(c *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return true
		}
	}
	return false
}

// Ack implements Provider: 200 (Apple retries anything else after 1, 12, 24, 48 and 72 hours).
func (*Apple) Ack(w http.ResponseWriter, _ relay.IngestResult) { w.WriteHeader(http.StatusOK) }

// Refuse implements Provider: the status, and a short JSON reason.
func (*Apple) Refuse(w http.ResponseWriter, r *Refusal) {
	writeJSON(w, r.Code, errorBody{Error: http.StatusText(r.Code), Reason: r.Reason})
}
