package webhook

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

func mustSecret(t testing.TB, b byte) Secret {
	t.Helper()
	s, err := ParseSecret("whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The example from the Standard Webhooks specification's reference implementations.
func TestSignKnownVector(t *testing.T) {
	t.Parallel()
	s, err := ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := s.Sign("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	cur, old, other := mustSecret(t, 1), mustSecret(t, 2), mustSecret(t, 3)
	v, err := NewVerifier(cur, old)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"order_id":"1"}`)
	ts := strconv.FormatInt(now.Unix(), 10)
	cases := []struct {
		name      string
		id, ts    string
		sig       string
		body      []byte
		want      error
		wantValid bool
	}{
		{name: "current secret", id: "m1", ts: ts, sig: cur.Sign("m1", now, body), body: body, wantValid: true},
		{name: "old secret during rotation", id: "m1", ts: ts, sig: old.Sign("m1", now, body), body: body, wantValid: true},
		{name: "several signatures", id: "m1", ts: ts, sig: other.Sign("m1", now, body) + " " + cur.Sign("m1", now, body), body: body, wantValid: true},
		{name: "edge of tolerance", id: "m1", ts: strconv.FormatInt(now.Add(-Tolerance).Unix(), 10), sig: cur.Sign("m1", now.Add(-Tolerance), body), body: body, wantValid: true},
		{name: "unknown secret", id: "m1", ts: ts, sig: other.Sign("m1", now, body), body: body, want: ErrNoSignature},
		{name: "tampered body", id: "m1", ts: ts, sig: cur.Sign("m1", now, body), body: []byte(`{"order_id":"2"}`), want: ErrNoSignature},
		{name: "tampered id", id: "m2", ts: ts, sig: cur.Sign("m1", now, body), body: body, want: ErrNoSignature},
		{name: "stale", id: "m1", ts: strconv.FormatInt(now.Add(-Tolerance-time.Second).Unix(), 10), sig: cur.Sign("m1", now.Add(-Tolerance-time.Second), body), body: body, want: ErrStale},
		{name: "future", id: "m1", ts: strconv.FormatInt(now.Add(Tolerance+time.Second).Unix(), 10), sig: cur.Sign("m1", now.Add(Tolerance+time.Second), body), body: body, want: ErrStale},
		{name: "milliseconds timestamp", id: "m1", ts: ts + "000", sig: cur.Sign("m1", now, body), body: body, want: ErrStale},
		{name: "bad timestamp", id: "m1", ts: "yesterday", sig: cur.Sign("m1", now, body), body: body, want: ErrBadTimestamp},
		{name: "missing id", ts: ts, sig: cur.Sign("m1", now, body), body: body, want: ErrMissingHeaders},
		{name: "v2 only", id: "m1", ts: ts, sig: strings.Replace(cur.Sign("m1", now, body), "v1,", "v2,", 1), body: body, want: ErrNoSignature},
		{name: "garbage", id: "m1", ts: ts, sig: "v1,%%% v1 ,,", body: body, want: ErrNoSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := v.Verify(tc.id, tc.ts, tc.sig, tc.body, now)
			if tc.wantValid {
				if err != nil {
					t.Fatalf("Verify = %v, want valid", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseSecret(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!", "whsec_" + base64.StdEncoding.EncodeToString([]byte("short"))} {
		if _, err := ParseSecret(bad); err == nil {
			t.Errorf("ParseSecret(%q) succeeded", bad)
		}
	}
	s := mustSecret(t, 7)
	if strings.Contains(fmt.Sprint(s), base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))) {
		t.Error("a Secret prints its key")
	}
	if back, err := ParseSecret(s.Encode()); err != nil || !bytes.Equal(back.key, s.key) {
		t.Errorf("Encode does not round-trip: %v", err)
	}
}

func BenchmarkSign(b *testing.B) {
	s := mustSecret(b, 1)
	body := bytes.Repeat([]byte("x"), 600)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		s.Sign("0123456789abcdef0123456789abcdef", now, body)
	}
}

func BenchmarkVerify(b *testing.B) {
	s := mustSecret(b, 1)
	v, _ := NewVerifier(s)
	body := bytes.Repeat([]byte("x"), 600)
	now := time.Now()
	sig := s.Sign("m1", now, body)
	ts := strconv.FormatInt(now.Unix(), 10)
	b.ReportAllocs()
	for b.Loop() {
		if err := v.Verify("m1", ts, sig, body, now); err != nil {
			b.Fatal(err)
		}
	}
}

// During a rotation every message carries a signature per secret; a receiver holding only
// the old secret, only the new one, or both verifies it, and one holding neither does not.
func TestSignAllVerifiesAgainstEachSecret(t *testing.T) {
	t.Parallel()
	old, next := NewSecret([]byte("old-secret-old-secret-old-secret")), NewSecret([]byte("new-secret-new-secret-new-secret"))
	now := time.Unix(1795003200, 0)
	body := []byte(`{"type":"payment.succeeded"}`)
	header := SignAll([]Secret{old, next}, "msg_1", now, body)
	if n := len(strings.Fields(header)); n != 2 {
		t.Fatalf("header %q has %d signatures, want 2", header, n)
	}
	for name, secrets := range map[string][]Secret{"old": {old}, "new": {next}, "both": {old, next}} {
		v, _ := NewVerifier(secrets...)
		if err := v.Verify("msg_1", "1795003200", header, body, now); err != nil {
			t.Errorf("receiver with the %s secret: %v", name, err)
		}
	}
	other, _ := NewVerifier(NewSecret([]byte("neither-secret-neither-secret-32")))
	if err := other.Verify("msg_1", "1795003200", header, body, now); err == nil {
		t.Error("a receiver with neither secret verified the message")
	}
}
