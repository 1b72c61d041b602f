package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/local/emulator"
)

var probeSecret = webhook.NewSecret([]byte("probe-test-secret-probe-test-32b"))

func runProbe(t *testing.T, url string, extra ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"probe", "-url", url, "-secret", probeSecret.Encode()}, extra...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

// startHandler runs a reference handler serving env and returns its URL.
func startHandler(t *testing.T, name, env string, args ...string) string {
	t.Helper()
	port, _ := emulator.FreePort()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "HOST=127.0.0.1", "GAME_SECRETS="+probeSecret.Encode(),
		"LEDGER="+filepath.Join(t.TempDir(), name+"-"+env+".jsonl"), "PAYRELAY_ENVIRONMENT="+env)
	if name == "php" {
		cmd.Args = append(cmd.Args[:1], "-S", fmt.Sprintf("127.0.0.1:%d", port), "gamekit/php/handler.php")
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return fmt.Sprintf("http://127.0.0.1:%d/payrelay", port)
		}
	}
	t.Fatalf("%s handler did not listen", name)
	return ""
}

// The probe passes the three reference handlers.
func TestProbePassesTheReferenceHandlers(t *testing.T) {
	t.Parallel()
	goBin := filepath.Join(t.TempDir(), "gohandler")
	if out, err := exec.Command("go", "build", "-o", goBin, "./gamekit/gohandler").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	handlers := map[string][]string{"go": {goBin}}
	for tool, args := range map[string][]string{"php": {"php"}, "node": {"node", "gamekit/node/handler.js"}} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing; .ci/run installs it", tool)
			}
			continue
		}
		if tool == "node" {
			if _, err := os.Stat("gamekit/node/node_modules/standardwebhooks"); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatal("gamekit/node/node_modules is missing: .ci/run runs npm ci")
				}
				continue
			}
		}
		handlers[tool] = args
	}
	for name, args := range handlers {
		// A production server, and the same handler as a staging server: each refuses the
		// other environment's notification (the probe's last case).
		for _, env := range []string{"production", "sandbox"} {
			url := startHandler(t, name, env, args...)
			code, out := runProbe(t, url, "-environment", env)
			if code != 0 || !strings.Contains(out, "verdict: PASS") {
				t.Errorf("%s handler serving %s: exit %d\n%s", name, env, code, out)
			}
			other := map[string]string{"production": "sandbox", "sandbox": "production"}[env]
			if !strings.Contains(out, "a "+other+" notification") {
				t.Errorf("%s handler serving %s: the probe sent no %s notification\n%s", name, env, other, out)
			}
		}
	}
}

// verifies is a handler's signature check, the Standard Webhooks way, looking only at the first
// signature when firstOnly.
func verifies(r *http.Request, body []byte, firstOnly bool) bool {
	v, _ := webhook.NewVerifier(probeSecret)
	sig := r.Header.Get("webhook-signature")
	if firstOnly {
		sig, _, _ = strings.Cut(sig, " ")
	}
	return v.Verify(r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), sig, body, time.Now()) == nil
}

// Deliberately broken game servers: the probe names each failure.
func TestProbeNamesEachFailure(t *testing.T) {
	t.Parallel()
	read := func(r *http.Request) []byte {
		b := make([]byte, 0, 4096)
		buf := make([]byte, 4096)
		for {
			n, err := r.Body.Read(buf)
			b = append(b, buf[:n]...)
			if err != nil {
				return b
			}
		}
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	broken := map[string]struct {
		h     http.HandlerFunc
		fails []string
		extra []string
	}{
		"checks no signature": {func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) },
			[]string{"a bad signature", "a stale timestamp"}, nil},
		"fails on a repeat": {func(w http.ResponseWriter, r *http.Request) {
			body := read(r)
			if !verifies(r, body, false) {
				w.WriteHeader(401)
				return
			}
			mu.Lock()
			dup := seen[r.Header.Get("webhook-id")]
			seen[r.Header.Get("webhook-id")] = true
			mu.Unlock()
			if dup {
				w.WriteHeader(500)
				return
			}
			w.WriteHeader(204)
		}, []string{"the same webhook-id again"}, nil},
		"reads only the first signature": {func(w http.ResponseWriter, r *http.Request) {
			if !verifies(r, read(r), true) {
				w.WriteHeader(401)
				return
			}
			w.WriteHeader(204)
		}, []string{"two signatures, the first from a rotated secret"}, nil},
		"grants any environment": {func(w http.ResponseWriter, r *http.Request) {
			if !verifies(r, read(r), false) {
				w.WriteHeader(401)
				return
			}
			w.WriteHeader(204)
		}, []string{"a sandbox notification"}, nil},
		"answers too slowly": {func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(400 * time.Millisecond)
			w.WriteHeader(204)
		}, []string{"a payment", "a refund of it"}, []string{"-timeout", "200ms"}},
	}
	for name, b := range broken {
		srv := httptest.NewServer(b.h)
		defer srv.Close()
		code, out := runProbe(t, srv.URL, b.extra...)
		if code != 1 || !strings.Contains(out, "verdict: FAIL") {
			t.Errorf("%s: exit %d, want a failing verdict\n%s", name, code, out)
		}
		for _, c := range b.fails {
			line := ""
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, c) {
					line = l
				}
			}
			if !strings.Contains(line, "FAIL") {
				t.Errorf("%s: case %q not named as failing:\n%s", name, c, out)
			}
		}
	}
	if code, out := runProbe(t, "http://127.0.0.1:1/", "-environment", "staging"); code != 2 || !strings.Contains(out, "-environment") {
		t.Errorf("-environment staging: exit %d\n%s", code, out)
	}
	// The probe never sends to the metadata server's range.
	if code, out := runProbe(t, "http://169.254.169.254/computeMetadata/v1/"); code != 2 || !strings.Contains(out, "never sends to") {
		t.Errorf("link-local target: exit %d\n%s", code, out)
	}
}

// The probe's flags are checked all at once, each problem in words; a hung server is given
// -timeout per case, and every failure is said in words, never as a Go error.
func TestProbeFlagsAndTimeouts(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(bin, "probe", "-secret", "notasecret", "-timeout", "30s")
	out, _ := cmd.CombinedOutput()
	for _, want := range []string{"-url is required", `-secret "notasecret"...: not a signing secret`, "-timeout 30s: want more than 0 and at most 10s"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bad flags: the probe does not say %q:\n%s", want, out)
		}
	}
	if code := cmd.ProcessState.ExitCode(); code != 2 {
		t.Errorf("bad flags: exit %d, want 2", code)
	}
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release // never answers while the probe runs
	}))
	defer hung.Close()
	defer close(release) // before Close, which waits for the handlers
	code, out2 := runProbe(t, hung.URL, "-timeout", "300ms")
	if code != 1 || !strings.Contains(out2, "timed out: no answer within 300ms") || strings.Contains(out2, "Client.Timeout") || strings.Contains(out2, "context deadline") {
		t.Errorf("a hung server: exit %d, want each case failed in words:\n%s", code, out2)
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	url := closed.URL
	closed.Close()
	if code, out3 := runProbe(t, url); code != 1 || !strings.Contains(out3, "connection refused or unreachable") {
		t.Errorf("nothing listening: exit %d:\n%s", code, out3)
	}
}
