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
	// API, when set, gives payrelay the App Store Server API for the app: the notification
	// history sweep, the order query by transactionId, the dashboard's test notification.
	API *AppleAPIConfig `json:"api,omitempty"`
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
	envs   []relay.Environment
	client *appleAPI // nil without API access
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

// appleTransaction is JWSTransactionDecodedPayload (App Store Server Notifications 2.20 and
// App Store Server API 1.19: revocationType and revocationPercentage are the newest fields
// read here).
type appleTransaction struct {
	TransactionID         string `json:"transactionId"`
	OriginalTransactionID string `json:"originalTransactionId"`
	BundleID              string `json:"bundleId"`
	ProductID             string `json:"productId"`
	PurchaseDate          int64  `json:"purchaseDate"`
	ExpiresDate           int64  `json:"expiresDate"`
	Type                  string `json:"type"`
	AppAccountToken       string `json:"appAccountToken"`
	Price                 int64  `json:"price"` // milliunits of currency
	Currency              string `json:"currency"`
	Environment           string `json:"environment"`
	OfferType             int    `json:"offerType"`
	OfferIdentifier       string `json:"offerIdentifier"`
	RevocationDate        int64  `json:"revocationDate"`
	RevocationReason      *int   `json:"revocationReason"`
	RevocationType        string `json:"revocationType"`
	RevocationPercentage  *int64 `json:"revocationPercentage"` // milli-percent: 100000 is 100%
	SignedDate            int64  `json:"signedDate"`
}

// Apple's product types (JWSTransactionDecodedPayload.type).
const (
	appleAutoRenewable = "Auto-Renewable Subscription"
	appleNonRenewing   = "Non-Renewing Subscription"
	appleConsumable    = "Consumable"
	appleNonConsumable = "Non-Consumable"
)

// MaxAppleJWS bounds a signed transaction or payload payrelay reads (Apple's are 3 to 5 KiB).
const MaxAppleJWS = 16 << 10

// What each notification type is (App Store Server Notifications V2, notificationType and
// subtype, version 2.20; functions/provider/README.md's table). A charge is a payment keyed by its transactionId;
// a status change that moves no money is recorded on the period's payment and listed in
// NotRelayed, except the three a game needs to end or keep an entitlement on time.
//
//	ONE_TIME_CHARGE                                   a payment
//	SUBSCRIBED (INITIAL_BUY, RESUBSCRIBE)             a period's payment (when it charged)
//	DID_RENEW (any subtype, BILLING_RECOVERY too)     a period's payment
//	OFFER_REDEEMED (any subtype), when it charged     a period's payment
//	DID_CHANGE_RENEWAL_PREF UPGRADE                   the upgraded period's payment (charged at once)
//	REFUND (REFUND_FULL, REFUND_PRORATED, none)       a refund (revocationPercentage of the price)
//	REFUND (FAMILY_REVOKE), REVOKE                    payment.revoked: access ends, no money
//	REFUND_REVERSED                                   payment.refund_reversed, after its refund
//	RENEWAL_EXTENDED                                  subscription.extended: the new expires_at
//	everything else                                   recorded, not relayed (NotRelayed)
var appleCharges = map[string]bool{"ONE_TIME_CHARGE": true, "SUBSCRIBED": true, "DID_RENEW": true, "OFFER_REDEEMED": true,
	"DID_CHANGE_RENEWAL_PREF.UPGRADE": true}

// Parse implements Provider: a notification ({"signedPayload":"<JWS>"}), or a signed
// transaction the game's app (or server) forwards ({"signedTransactionInfo":"<JWS>"}: StoreKit
// 2's Transaction.jwsRepresentation), verified the same way before anything else is read.
func (a *Apple) Parse(_ http.Header, body []byte, _ time.Time) (relay.Result, error) {
	var env struct {
		SignedPayload         string `json:"signedPayload"`
		SignedTransactionInfo string `json:"signedTransactionInfo"`
	}
	if err := json.Unmarshal(body, &env); err != nil || (env.SignedPayload == "") == (env.SignedTransactionInfo == "") {
		return relay.Result{}, refuse(http.StatusBadRequest, "want {\"signedPayload\":\"<JWS>\"} or {\"signedTransactionInfo\":\"<JWS>\"}")
	}
	if len(env.SignedPayload) > MaxAppleJWS || len(env.SignedTransactionInfo) > MaxAppleJWS {
		return relay.Result{}, refuse(http.StatusRequestEntityTooLarge, "a JWS over %d bytes", MaxAppleJWS)
	}
	if env.SignedTransactionInfo != "" {
		return a.appTransaction(env.SignedTransactionInfo)
	}
	var n appleNotification
	if err := a.verifyJWS(env.SignedPayload, &n, func(v any) int64 { return v.(*appleNotification).SignedDate }); err != nil {
		return relay.Result{}, err
	}
	app, ok := a.apps[n.Data.BundleID]
	if !ok {
		return relay.Result{}, refuse(http.StatusForbidden, "bundleId %.80q is not one of ours", n.Data.BundleID)
	}
	environment, err := appleEnvironment(n.Data.Environment)
	if err != nil {
		return relay.Result{}, err
	}
	if environment == relay.EnvProduction && n.Data.AppAppleID != app.AppAppleID {
		return relay.Result{}, refuse(http.StatusForbidden, "appAppleId %d is not %s's", n.Data.AppAppleID, app.BundleID)
	}
	kind := n.NotificationType
	if n.Subtype != "" {
		kind += "." + n.Subtype
	}
	if _, listed := NotRelayed[a.Name()][n.NotificationType]; !listed && !appleCharges[n.NotificationType] && !appleCharges[kind] && !appleRelayed[n.NotificationType] {
		return relay.Result{}, refuse(http.StatusUnprocessableEntity, "notificationType %.40q is unknown", n.NotificationType)
	}
	if n.Data.SignedTransactionInfo == "" {
		// A summary or a test names no transaction: acknowledged and logged (a TEST's arrival
		// is kept for the dashboard: the note names the app and environment).
		return relay.Result{Payment: relay.Payment{Provider: a.Name(), Environment: environment, Merchant: app.BundleID},
			Note: &relay.Note{Kind: fmt.Sprintf("%.60s", kind), Reason: appleNotRelayed(n.NotificationType) + ": not relayed"}}, nil
	}
	var tx appleTransaction
	if err := a.verifyJWS(n.Data.SignedTransactionInfo, &tx, func(v any) int64 { return v.(*appleTransaction).SignedDate }); err != nil {
		return relay.Result{}, err
	}
	if tx.BundleID != app.BundleID || tx.Environment != n.Data.Environment {
		return relay.Result{}, refuse(http.StatusForbidden, "the transaction's bundleId or environment differs from its notification's")
	}
	pay, err := a.transactionPayment(app, environment, tx, kind)
	if err != nil {
		return relay.Result{}, err
	}
	mm := mismatch("apple app "+app.BundleID, environment, app.envs)
	at := time.UnixMilli(tx.RevocationDate).UTC()
	valid := func(r relay.Result) (relay.Result, error) {
		if err := r.Validate(); err != nil {
			return relay.Result{}, asRefusal(err)
		}
		return r, nil
	}
	switch {
	case appleCharges[n.NotificationType] || appleCharges[kind]:
		if tx.Price <= 0 {
			return relay.Result{Payment: pay, Note: &relay.Note{Kind: "FREE_PERIOD",
				Reason: fmt.Sprintf("%.60s with nothing charged (a free trial or free offer): not relayed", kind)}}, nil
		}
		return valid(relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay, Mismatch: mm})
	case n.NotificationType == "REFUND" && tx.RevocationType == "FAMILY_REVOKE", n.NotificationType == "REVOKE":
		if n.NotificationType == "REFUND" && tx.RevocationDate == 0 {
			return relay.Result{}, refuse(http.StatusUnprocessableEntity, "REFUND without revocationDate")
		}
		if tx.RevocationDate == 0 {
			at = time.UnixMilli(n.SignedDate).UTC()
		}
		reason := n.NotificationType
		if tx.RevocationType != "" {
			reason = tx.RevocationType
		}
		return valid(relay.Result{Type: relay.TypePaymentRevoked, Payment: pay, Mismatch: mm, Event: &relay.Event{ID: "revoke-" + tx.TransactionID, Reason: reason, At: at}})
	case n.NotificationType == "REFUND":
		if tx.RevocationDate == 0 {
			return relay.Result{}, refuse(http.StatusUnprocessableEntity, "REFUND without revocationDate")
		}
		amount, err := appleRefundAmount(pay.AmountMinor, tx)
		if err != nil {
			return relay.Result{}, err
		}
		return valid(relay.Result{Type: relay.TypePaymentRefunded, Payment: pay, Mismatch: mm,
			Refund: &relay.RefundFacts{ID: "refund-" + tx.TransactionID, AmountMinor: amount, RefundedAt: at}})
	case n.NotificationType == "REFUND_REVERSED":
		// The transaction no longer carries its revocation (Apple: revocationPercentage "doesn't
		// appear if the refund is reversed"): the reversal is of the one refund payrelay keeps
		// per transaction, dated when Apple signed the notification.
		return valid(relay.Result{Type: relay.TypeRefundReversed, Payment: pay, Mismatch: mm,
			Refund: &relay.RefundFacts{ID: "refund-" + tx.TransactionID, RefundedAt: time.UnixMilli(n.SignedDate).UTC()}})
	case n.NotificationType == "RENEWAL_EXTENDED":
		if pay.Subscription == nil || tx.ExpiresDate == 0 {
			return relay.Result{}, refuse(http.StatusUnprocessableEntity, "RENEWAL_EXTENDED of a transaction with no subscription expiresDate")
		}
		return valid(relay.Result{Type: relay.TypeSubscriptionExtended, Payment: pay, Mismatch: mm, Event: &relay.Event{ID: n.NotificationUUID, Reason: kind,
			At: time.UnixMilli(n.SignedDate).UTC(), ExpiresAt: time.UnixMilli(tx.ExpiresDate).UTC()}})
	}
	// A status change that moves no money: recorded on the period's payment when payrelay
	// holds it (REFUND_DECLINED, EXPIRED, DID_FAIL_TO_RENEW, ...).
	pay.Subscription = nil
	return relay.Result{Payment: pay, Note: &relay.Note{Kind: fmt.Sprintf("%.60s", kind), Reason: appleNotRelayed(n.NotificationType) + ": not relayed"}}, nil
}

// appleRelayed are the types relayed without being charges.
var appleRelayed = map[string]bool{"REFUND": true, "REFUND_REVERSED": true, "REVOKE": true, "RENEWAL_EXTENDED": true}

// appleNotRelayed says why a type is not relayed (its NotRelayed entry).
func appleNotRelayed(typ string) string {
	if r, ok := NotRelayed["apple"][typ]; ok {
		return r
	}
	return "not a charge"
}

// appleEnvironment reads the environment as Apple states it (App Store Server Notifications
// V2, data.environment: "Sandbox" or "Production"; the App Store Server Library's
// Environment adds "Xcode" and "LocalTesting" for StoreKit testing in Xcode).
func appleEnvironment(s string) (relay.Environment, error) {
	switch s {
	case "Production":
		return relay.EnvProduction, nil
	case "Sandbox", "Xcode", "LocalTesting":
		return relay.EnvSandbox, nil
	}
	return "", refuse(http.StatusUnprocessableEntity, "environment %.20q is unknown", s)
}

// transactionPayment reads a verified transaction's payment: keyed by its transactionId (each
// period of a subscription is a transaction of its own), the original transaction as the
// transaction id, the price converted exactly, productId and appAccountToken (how a game ties
// a purchase to a player) in metadata, and for an auto-renewable subscription its block.
func (a *Apple) transactionPayment(app appleApp, env relay.Environment, tx appleTransaction, reason string) (relay.Payment, error) {
	pay := relay.Payment{Provider: a.Name(), Environment: env, Merchant: app.BundleID, AppID: app.BundleID, Game: app.Game,
		OrderID: tx.TransactionID, TransactionID: tx.OriginalTransactionID, Currency: tx.Currency}
	if pay.TransactionID == "" {
		pay.TransactionID = tx.TransactionID
	}
	if tx.Price > 0 {
		amount, err := relay.FromMilli(tx.Price, tx.Currency)
		if err != nil {
			return relay.Payment{}, asRefusal(err)
		}
		pay.AmountMinor = amount
	}
	pay.PaidAt = time.UnixMilli(tx.PurchaseDate).UTC()
	pay.Metadata = map[string]string{"product_id": fmt.Sprintf("%.256s", tx.ProductID)}
	if tx.AppAccountToken != "" {
		pay.Metadata["app_account_token"] = fmt.Sprintf("%.256s", tx.AppAccountToken)
	}
	if tx.Type == appleAutoRenewable {
		sub := &relay.Subscription{ID: tx.OriginalTransactionID, ProductID: fmt.Sprintf("%.256s", tx.ProductID), Reason: fmt.Sprintf("%.64s", reason)}
		if tx.ExpiresDate > 0 {
			sub.ExpiresAt = time.UnixMilli(tx.ExpiresDate).UTC()
		}
		if tx.OfferType != 0 {
			sub.Offer = fmt.Sprintf("%d/%.200s", tx.OfferType, tx.OfferIdentifier)
		}
		pay.Subscription = sub
	}
	return pay, nil
}

// appleRefundAmount is what a REFUND gives back of the price, in minor units: the whole price
// for REFUND_FULL or a notification without revocationType (versions before 2.20); for
// REFUND_PRORATED, revocationPercentage (milli-percent) of it, computed exactly in integers
// and rounded half up to the minor unit (Apple states the percentage to 0.001% and not the
// amount; half up is the reading taken).
func appleRefundAmount(price int64, tx appleTransaction) (int64, error) {
	switch tx.RevocationType {
	case "", "REFUND_FULL":
		return price, nil
	case "REFUND_PRORATED":
		if tx.RevocationPercentage == nil || *tx.RevocationPercentage <= 0 || *tx.RevocationPercentage > 100000 {
			return 0, &Refusal{Code: http.StatusUnprocessableEntity, Field: "revocationPercentage", Reason: "REFUND_PRORATED needs a revocationPercentage in (0, 100000]"}
		}
		n := new(big.Int).Mul(big.NewInt(price), big.NewInt(*tx.RevocationPercentage))
		n.Add(n, big.NewInt(50000))
		n.Quo(n, big.NewInt(100000))
		if n.Sign() <= 0 {
			return 0, &Refusal{Code: http.StatusUnprocessableEntity, Field: "revocationPercentage", Reason: "the prorated refund rounds to nothing"}
		}
		return n.Int64(), nil
	}
	return 0, refuse(http.StatusUnprocessableEntity, "revocationType %.30q is unknown", tx.RevocationType)
}

// appTransaction reads a signed transaction the game's app forwards (StoreKit 2's
// jwsRepresentation): verified exactly as a notification's nested transaction (chain, OIDs,
// ES256, signedDate) before anything is looked up, then its bundle and environment checked. It
// is the same payment as the transaction's notification (keyed by transactionId), whichever
// comes first. A transaction with nothing charged, revoked, or of a product type payrelay does
// not know is refused: nothing is stored.
func (a *Apple) appTransaction(jws string) (relay.Result, error) {
	var tx appleTransaction
	if err := a.verifyJWS(jws, &tx, func(v any) int64 { return v.(*appleTransaction).SignedDate }); err != nil {
		return relay.Result{}, err
	}
	app, ok := a.apps[tx.BundleID]
	if !ok {
		return relay.Result{}, refuse(http.StatusForbidden, "bundleId %.80q is not one of ours", tx.BundleID)
	}
	environment, err := appleEnvironment(tx.Environment)
	if err != nil {
		return relay.Result{}, err
	}
	if mm := mismatch("apple app "+app.BundleID, environment, app.envs); mm != "" {
		// From the app, unlike from Apple, a wrong environment is refused: the client retries
		// nothing for days, and a sandbox receipt must never be taken for production.
		return relay.Result{}, refuse(http.StatusForbidden, "%s", mm)
	}
	switch {
	case tx.Type != appleConsumable && tx.Type != appleNonConsumable && tx.Type != appleNonRenewing && tx.Type != appleAutoRenewable:
		return relay.Result{}, refuse(http.StatusUnprocessableEntity, "product type %.40q is not one payrelay relays", tx.Type)
	case tx.RevocationDate != 0:
		return relay.Result{}, refuse(http.StatusUnprocessableEntity, "the transaction is revoked: its REFUND notification relays that")
	case tx.Price <= 0:
		return relay.Result{}, refuse(http.StatusUnprocessableEntity, "the transaction charged nothing (a free trial or offer): nothing to relay")
	}
	pay, err := a.transactionPayment(app, environment, tx, "APP")
	if err != nil {
		return relay.Result{}, err
	}
	r := relay.Result{Type: relay.TypePaymentSucceeded, Payment: pay}
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
