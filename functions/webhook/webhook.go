// Package webhook signs and verifies messages the Standard Webhooks way: an HMAC-SHA256 over
// "id.timestamp.body", sent as "v1,<base64>" in the webhook-signature header, with the id and
// the Unix timestamp in webhook-id and webhook-timestamp. Ingest verifies providers with it;
// Deliver signs what it posts to the game server with it.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header names of the Standard Webhooks specification.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Tolerance is how far a message's timestamp may be from now, either way, before it is refused
// as a replay (or a badly wrong clock).
const Tolerance = 5 * time.Minute

const secretPrefix = "whsec_"

// Secret is a signing key. Its String never shows the key, so it is safe to log by mistake.
type Secret struct{ key []byte }

// ParseSecret reads a "whsec_<base64>" secret, the form Standard Webhooks providers hand out.
func ParseSecret(s string) (Secret, error) {
	raw, ok := strings.CutPrefix(strings.TrimSpace(s), secretPrefix)
	if !ok {
		return Secret{}, errors.New("webhook: secret must start with " + secretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return Secret{}, errors.New("webhook: secret is not valid base64 after " + secretPrefix)
	}
	if len(key) < 24 || len(key) > 64 {
		return Secret{}, fmt.Errorf("webhook: secret key is %d bytes, want 24 to 64", len(key))
	}
	return Secret{key: key}, nil
}

// String hides the key.
func (Secret) String() string { return secretPrefix + "<redacted>" }

// Encode returns the secret in its "whsec_" form, for configuration files and tests only.
func (s Secret) Encode() string { return secretPrefix + base64.StdEncoding.EncodeToString(s.key) }

// Equal reports whether s and o are the same key, in constant time (the configuration checks
// that no secret serves two purposes).
func (s Secret) Equal(o Secret) bool { return hmac.Equal(s.key, o.key) }

// NewSecret wraps raw key bytes.
func NewSecret(key []byte) Secret { return Secret{key: append([]byte(nil), key...)} }

func (s Secret) mac(id string, ts int64, body []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write(strconv.AppendInt(nil, ts, 10))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Sign returns the webhook-signature header value for a message.
func (s Secret) Sign(id string, ts time.Time, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(s.mac(id, ts.Unix(), body))
}

// SignAll returns the webhook-signature header value with one v1 signature per secret,
// space-separated as Standard Webhooks allows: during a rotation a receiver holding either
// secret verifies the message, so it can switch at its own pace.
func SignAll(secrets []Secret, id string, ts time.Time, body []byte) string {
	sigs := make([]string, len(secrets))
	for i, s := range secrets {
		sigs[i] = s.Sign(id, ts, body)
	}
	return strings.Join(sigs, " ")
}

// Errors of Verify; each says what a sender must fix.
var (
	ErrMissingHeaders = errors.New("missing webhook-id, webhook-timestamp or webhook-signature header")
	ErrBadTimestamp   = errors.New("webhook-timestamp is not a Unix time in seconds")
	ErrStale          = errors.New("webhook-timestamp is more than 5 minutes from now")
	ErrNoSignature    = errors.New("no v1 signature matches")
)

// maxSignatures bounds the work one request can ask of us.
const maxSignatures = 8

// Verifier checks messages against one or more secrets: several are accepted at once so a
// secret can be rolled without refusing messages signed with the old one.
type Verifier struct {
	secrets []Secret
}

// NewVerifier returns a Verifier for the given secrets.
func NewVerifier(secrets ...Secret) (*Verifier, error) {
	if len(secrets) == 0 {
		return nil, errors.New("webhook: at least one secret is required")
	}
	return &Verifier{secrets: secrets}, nil
}

// Holds reports whether s is one of the verifier's secrets.
func (v *Verifier) Holds(s Secret) bool {
	for _, have := range v.secrets {
		if have.Equal(s) {
			return true
		}
	}
	return false
}

// Verify checks the three headers against body at time now. Signatures are compared in
// constant time; every secret is tried against every v1 signature.
func (v *Verifier) Verify(id, timestamp, signatures string, body []byte, now time.Time) error {
	if id == "" || timestamp == "" || signatures == "" {
		return ErrMissingHeaders
	}
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return ErrBadTimestamp
	}
	sent := time.Unix(ts, 0)
	if sent.Before(now.Add(-Tolerance)) || sent.After(now.Add(Tolerance)) {
		return ErrStale
	}
	var candidates [][]byte
	for _, part := range strings.Fields(signatures) {
		version, sig, ok := strings.Cut(part, ",")
		if !ok || version != "v1" {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(sig)
		if err != nil || len(raw) != sha256.Size {
			continue
		}
		candidates = append(candidates, raw)
		if len(candidates) == maxSignatures {
			break
		}
	}
	for _, s := range v.secrets {
		want := s.mac(id, ts, body)
		for _, c := range candidates {
			if hmac.Equal(want, c) {
				return nil
			}
		}
	}
	return ErrNoSignature
}
