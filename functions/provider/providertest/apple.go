package providertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// AppleChain is a three-certificate chain built like Apple's (root, intermediate with OID
// 1.2.840.113635.100.6.2.1, leaf with OID 1.2.840.113635.100.6.11.1), for tests: payrelay pins
// its root in their place.
type AppleChain struct {
	Root, Intermediate, Leaf *x509.Certificate
	LeafKey                  *ecdsa.PrivateKey
}

// AppleChainOptions bend the chain to test each refusal.
type AppleChainOptions struct {
	NoLeafOID, NoIntermediateOID bool
	LeafNotAfter                 time.Time // zero: ten years on
}

var (
	oidLeaf  = asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 11, 1}
	oidInter = asn1.ObjectIdentifier{1, 2, 840, 113635, 100, 6, 2, 1}
)

// NewAppleChain generates a chain.
func NewAppleChain(o AppleChainOptions) *AppleChain {
	key := func() *ecdsa.PrivateKey { k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader); return k }
	start := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	end := start.AddDate(20, 0, 0)
	rootKey, interKey, leafKey := key(), key(), key()
	mk := func(serial int64, cn string, ca bool, notAfter time.Time, ext []pkix.Extension, pub, signer any, parent *x509.Certificate) *x509.Certificate {
		tpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"Test"}},
			NotBefore: start, NotAfter: notAfter, IsCA: ca, BasicConstraintsValid: true, ExtraExtensions: ext,
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
		if parent == nil {
			parent = tpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tpl, parent, pub, signer)
		if err != nil {
			panic(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	root := mk(1, "Test Root CA - G3", true, end, nil, &rootKey.PublicKey, rootKey, nil)
	var interExt, leafExt []pkix.Extension
	if !o.NoIntermediateOID {
		interExt = []pkix.Extension{{Id: oidInter, Value: []byte{5, 0}}}
	}
	if !o.NoLeafOID {
		leafExt = []pkix.Extension{{Id: oidLeaf, Value: []byte{5, 0}}}
	}
	inter := mk(2, "Test WWDR - G6", true, end, interExt, &interKey.PublicKey, rootKey, root)
	leafEnd := o.LeafNotAfter
	if leafEnd.IsZero() {
		leafEnd = end
	}
	leaf := mk(3, "Test Mac App Store and iTunes Store Receipt Signing", false, leafEnd, leafExt, &leafKey.PublicKey, interKey, inter)
	return &AppleChain{Root: root, Intermediate: inter, Leaf: leaf, LeafKey: leafKey}
}

// RootPEM is the root as PROVIDER_CONFIG's apple_root takes it.
func (c *AppleChain) RootPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Root.Raw}))
}

// Sign makes a compact JWS of payload, ES256 with the leaf key, its header carrying the chain.
func (c *AppleChain) Sign(payload any) string {
	h, _ := json.Marshal(map[string]any{"alg": "ES256", "x5c": []string{
		base64.StdEncoding.EncodeToString(c.Leaf.Raw), base64.StdEncoding.EncodeToString(c.Intermediate.Raw), base64.StdEncoding.EncodeToString(c.Root.Raw)}})
	p, _ := json.Marshal(payload)
	signing := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, c.LeafKey, sum[:])
	if err != nil {
		panic(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// AppleTransaction is a JWSTransactionDecodedPayload of a consumable bought for price
// milliunits of currency, as Apple documents it.
func AppleTransaction(bundleID, transactionID string, price int64, currency, env string, at time.Time) map[string]any {
	return map[string]any{
		"transactionId": transactionID, "originalTransactionId": transactionID, "bundleId": bundleID,
		"productId": "com.studio.gems60", "purchaseDate": at.UnixMilli(), "originalPurchaseDate": at.UnixMilli(),
		"quantity": 1, "type": "Consumable", "inAppOwnershipType": "PURCHASED", "signedDate": at.UnixMilli(),
		"environment": env, "transactionReason": "PURCHASE", "storefront": "USA", "storefrontId": "143441",
		"price": price, "currency": currency, "appAccountToken": "7e3fb20b-4cdb-47cc-936d-99d65f608138",
	}
}

// AppleSubscription is a JWSTransactionDecodedPayload of one period of an auto-renewable
// subscription: transactionID is the period's, originalTransactionID the subscription's,
// bought at, expiring at expires.
func AppleSubscription(bundleID, transactionID, originalTransactionID string, price int64, currency, env string, at, expires time.Time) map[string]any {
	tx := AppleTransaction(bundleID, transactionID, price, currency, env, at)
	tx["originalTransactionId"], tx["type"], tx["productId"] = originalTransactionID, "Auto-Renewable Subscription", "com.studio.monthly_card"
	tx["expiresDate"], tx["subscriptionGroupIdentifier"], tx["transactionReason"] = expires.UnixMilli(), "21000001", "RENEWAL"
	if transactionID == originalTransactionID {
		tx["transactionReason"] = "PURCHASE"
	}
	return tx
}

// AppleSignedTransaction is the body a game's app posts: {"signedTransactionInfo": the
// transaction signed as StoreKit 2's jwsRepresentation}.
func AppleSignedTransaction(c *AppleChain, tx map[string]any) []byte {
	body, _ := json.Marshal(map[string]string{"signedTransactionInfo": c.Sign(tx)})
	return body
}

// AppleNotification is a signed ResponseBodyV2 ({"signedPayload":...}) of type with the signed
// transaction in its data, as Apple posts it.
func AppleNotification(c *AppleChain, typ, subtype, bundleID string, appAppleID int64, env string, tx map[string]any, at time.Time) []byte {
	data := map[string]any{"appAppleId": appAppleID, "bundleId": bundleID, "bundleVersion": "42", "environment": env}
	if tx != nil {
		data["signedTransactionInfo"] = c.Sign(tx)
	}
	// Each notification its own UUID, as Apple sends them (a repeat of one keeps it).
	sum := sha256.Sum256(fmt.Appendf(nil, "%s|%s|%v|%d", typ, subtype, tx["transactionId"], at.UnixMilli()))
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
	n := map[string]any{"notificationType": typ, "notificationUUID": uuid,
		"data": data, "version": "2.0", "signedDate": at.UnixMilli()}
	if subtype != "" {
		n["subtype"] = subtype
	}
	body, _ := json.Marshal(map[string]string{"signedPayload": c.Sign(n)})
	return body
}
