package tasksemu

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The emulator signs OIDC tokens as Google does for a task with oidc_token: an RS256 JWT whose
// audience is the token's audience (or the task URL) and whose email is the service account.
// Its key is its own, made at start; VerifyIDToken checks a token against it.

// Issuer is the iss claim of the emulator's tokens, Google's own.
const Issuer = "https://accounts.google.com"

// Claims are the claims of an emulator OIDC token.
type Claims struct {
	Issuer        string `json:"iss"`
	Audience      string `json:"aud"`
	Subject       string `json:"sub"`
	Email         string `json:"email"`
	EmailVerified bool   `json:"email_verified"`
	IssuedAt      int64  `json:"iat"`
	Expires       int64  `json:"exp"`
}

var b64 = base64.RawURLEncoding

func (s *Server) idToken(audience, email string, now time.Time) (string, error) {
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": s.keyID})
	claims, _ := json.Marshal(Claims{
		Issuer: Issuer, Audience: audience, Subject: email, Email: email, EmailVerified: true,
		IssuedAt: now.Unix(), Expires: now.Add(time.Hour).Unix(),
	})
	signing := b64.EncodeToString(header) + "." + b64.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(nil, s.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("tasksemu: sign OIDC token: %w", err)
	}
	return signing + "." + b64.EncodeToString(sig), nil
}

// PublicKey is the key the emulator's OIDC tokens are signed with.
func (s *Server) PublicKey() *rsa.PublicKey { return &s.key.PublicKey }

// VerifyIDToken checks a token's signature against key, its expiry at now, and its audience.
func VerifyIDToken(token string, key *rsa.PublicKey, audience string, now time.Time) (Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return Claims{}, errors.New("token is not a JWT")
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		return Claims{}, errors.New("token signature is not base64url")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], sig); err != nil {
		return Claims{}, errors.New("token signature does not verify")
	}
	raw, err := b64.DecodeString(parts[1])
	if err != nil {
		return Claims{}, errors.New("token claims are not base64url")
	}
	var c Claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return Claims{}, errors.New("token claims are not JSON")
	}
	switch {
	case c.Issuer != Issuer:
		return c, fmt.Errorf("token issuer %q, want %q", c.Issuer, Issuer)
	case c.Audience != audience:
		return c, fmt.Errorf("token audience %q, want %q", c.Audience, audience)
	case now.Unix() >= c.Expires:
		return c, errors.New("token expired")
	}
	return c, nil
}
