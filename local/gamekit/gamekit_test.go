// Package gamekit_test runs the reference game-server handlers (PHP, Node, Go) against real
// deliveries from the local stack: payments and refunds, each handler's first answer to every
// notification lost (a proxy in front of it lets the handler process the POST and answers
// payrelay 503, so payrelay retries), every task dispatched twice at once, payrelay signing with two secrets (a rotation) of which each handler may hold
// either. Each handler's ledger must show every payment granted once and every refund revoked
// once. Each handler also runs as its game's sandbox server (PAYRELAY_ENVIRONMENT=sandbox, the
// sandbox secret, a ledger of its own): sandbox payments are granted there once, and never on
// the production server.
package gamekit_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/local/emulator"
	"github.com/payrelay/payrelay/local/stack"
)

var (
	oldSecret     = webhook.NewSecret([]byte("game-secret-old-game-secret-old!"))
	newSecret     = webhook.NewSecret([]byte("game-secret-new-game-secret-new!"))
	sandboxSecret = webhook.NewSecret([]byte("game-secret-of-the-staging-serve"))
)

// handler is one reference handler, started as its users run it.
type handler struct {
	name    string
	cmd     func(port int) *exec.Cmd
	secrets []webhook.Secret // what this game server holds
	ledger  string
	proxy   *failFirst
	// sandboxLedger is the ledger of the same handler run as the game's sandbox server.
	sandboxLedger string
}

// failFirst is a reverse proxy that loses the handler's first answer to every webhook-id: it
// forwards the POST, lets the handler process it, and answers payrelay 503, as a timeout or a
// dropped connection would. payrelay retries, and the handler must recognize the repeat.
type failFirst struct {
	mu     sync.Mutex
	seen   map[string]bool
	target *httputil.ReverseProxy
	URL    string
}

func (f *failFirst) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("webhook-id")
	f.mu.Lock()
	first := !f.seen[id]
	f.seen[id] = true
	f.mu.Unlock()
	if first {
		f.target.ServeHTTP(httptest.NewRecorder(), r)
		http.Error(w, "forced failure: the handler's answer was lost", http.StatusServiceUnavailable)
		return
	}
	f.target.ServeHTTP(w, r)
}

func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing; .ci/run installs it", tool)
		}
		t.Skipf("%s is missing", tool)
	}
	return p
}

func encode(ss []webhook.Secret) string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Encode())
	}
	return strings.Join(out, ",")
}

func TestReferenceHandlersAgainstRealDeliveries(t *testing.T) {
	php, node := need(t, "php"), need(t, "node")
	if _, err := os.Stat("node/node_modules/standardwebhooks"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node/node_modules is missing: .ci/run runs npm ci in local/gamekit/node")
		}
		t.Skip("run npm ci in local/gamekit/node")
	}
	dir := t.TempDir()
	goBin := filepath.Join(dir, "gohandler")
	if out, err := exec.Command("go", "build", "-o", goBin, "./gohandler").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	handlers := []*handler{
		{name: "php", secrets: []webhook.Secret{newSecret}, cmd: func(port int) *exec.Cmd {
			return exec.Command(php, "-S", fmt.Sprintf("127.0.0.1:%d", port), "php/handler.php")
		}},
		{name: "node", secrets: []webhook.Secret{oldSecret}, cmd: func(port int) *exec.Cmd {
			c := exec.Command(node, "node/handler.js")
			c.Env = append(c.Env, fmt.Sprintf("PORT=%d", port))
			return c
		}},
		{name: "go", secrets: []webhook.Secret{oldSecret, newSecret}, cmd: func(port int) *exec.Cmd {
			c := exec.Command(goBin)
			c.Env = append(c.Env, fmt.Sprintf("PORT=%d", port), "HOST=127.0.0.1")
			return c
		}},
	}
	var games []stack.ExtraGame
	// start runs h serving env with secrets, writing ledger, and returns its URL behind a proxy
	// that loses its first answer to every notification.
	start := func(h *handler, env string, secrets []webhook.Secret, ledger string) string {
		port, _ := emulator.FreePort()
		cmd := h.cmd(port)
		cmd.Env = append(append(os.Environ(), cmd.Env...), "GAME_SECRETS="+encode(secrets), "LEDGER="+ledger, "PAYRELAY_ENVIRONMENT="+env)
		logf, _ := os.Create(filepath.Join(dir, h.name+"-"+env+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s handler (%s) did not listen", h.name, env)
			}
		}
		target, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", port))
		proxy := &failFirst{seen: map[string]bool{}, target: httputil.NewSingleHostReverseProxy(target)}
		if env == "production" {
			h.proxy = proxy
		}
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		go http.Serve(l, proxy)
		return "http://" + l.Addr().String() + "/payrelay"
	}
	for _, h := range handlers {
		h.ledger = filepath.Join(dir, h.name+".jsonl")
		h.sandboxLedger = filepath.Join(dir, h.name+"-sandbox.jsonl")
		prodURL := start(h, "production", h.secrets, h.ledger)
		sandboxURL := start(h, "sandbox", []webhook.Secret{sandboxSecret}, h.sandboxLedger)
		games = append(games, stack.ExtraGame{App: "app-" + h.name, GameEnv: stack.GameEnv{Name: "kit-" + h.name,
			URL: prodURL, Secrets: []webhook.Secret{oldSecret, newSecret},
			Sandbox: &stack.SandboxEnv{URL: sandboxURL, Secrets: []webhook.Secret{sandboxSecret}}}})
	}
	ctx := context.Background()
	st, err := stack.Start(ctx, stack.Options{FirestoreHost: os.Getenv("FIRESTORE_EMULATOR_HOST"), Compression: 20000,
		Collection: fmt.Sprintf("gamekit-%d", time.Now().UnixNano()), LogLevel: "warn", ExtraGames: games, DuplicateDispatch: true})
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the local stack did not start: %v", err)
		}
		t.Skipf("the local stack did not start: %v", err)
	}
	defer st.Stop(ctx)

	send := func(body []byte) {
		t.Helper()
		code, out, err := stack.SendAsProvider(ctx, st.FunctionsURL+"/Ingest", stack.IngestSecret, body)
		if err != nil || code != http.StatusOK {
			t.Fatalf("Ingest = %d %s %v", code, out, err)
		}
	}
	for _, h := range handlers {
		for i := range 3 {
			send(stack.SampleBodyFor("app-"+h.name, fmt.Sprintf("%s-%d", h.name, i), "6.48", "CNY"))
		}
		send(stack.SampleRefundBodyFor("app-"+h.name, h.name+"-0", "6.48", "CNY", "r1", "1.00"))
		send(stack.SampleRefundBodyFor("app-"+h.name, h.name+"-0", "6.48", "CNY", "r2", "5.48"))
		// Sandbox payments, one with the order id of a production one: two payments.
		send(stack.SandboxBody("app-"+h.name, h.name+"-0", "6.48", "CNY"))
		send(stack.SandboxBody("app-"+h.name, h.name+"-sb", "6.48", "CNY"))
	}
	for _, h := range handlers {
		var grants, revokes map[string]int
		for deadline := time.Now().Add(40 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			grants, revokes = readLedger(t, h.ledger)
			if len(grants) == 3 && len(revokes) == 2 || time.Now().After(deadline) {
				break
			}
		}
		time.Sleep(500 * time.Millisecond) // duplicates and retries still in flight land
		grants, revokes = readLedger(t, h.ledger)
		for i := range 3 {
			if n := grants[fmt.Sprintf("%s-%d", h.name, i)]; n != 1 {
				t.Errorf("%s: order %s-%d granted %d times, want once", h.name, h.name, i, n)
			}
		}
		for _, r := range []string{"r1", "r2"} {
			if n := revokes[r]; n != 1 {
				t.Errorf("%s: refund %s revoked %d times, want once", h.name, r, n)
			}
		}
		// Revoked after the grant, and r1 before r2: the ledger is in the order the handler wrote.
		if order := ledgerOrder(t, h.ledger); fmt.Sprint(order) != fmt.Sprintf("[grant %s-0 revoke r1 revoke r2]", h.name) {
			t.Errorf("%s: ledger order for %s-0 is %v, want its grant, then r1, then r2", h.name, h.name, order)
		}
		// payrelay's side: each notification acknowledged, on a retry after the lost first answer,
		// so the handler answered 2xx to a repeat without acting on it twice.
		payments, err := st.OpenStore(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			p, _, err := payments.Get(ctx, relay.PaymentID(relay.EnvProduction, "generic", "app-"+h.name, fmt.Sprintf("%s-%d", h.name, i)))
			if err != nil {
				t.Fatalf("%s: payment %d: %v", h.name, i, err)
			}
			for _, n := range p.Notifications {
				if n.State != relay.StateDelivered || n.Attempt < 2 {
					t.Errorf("%s: %s/%s is %s at attempt %d, want delivered on a retry", h.name, p.ID, n.Key, n.State, n.Attempt)
				}
			}
		}
		// The sandbox server granted both sandbox payments once; production saw neither (its
		// grants are the three production orders alone).
		var sbGrants map[string]int
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			sbGrants, _ = readLedger(t, h.sandboxLedger)
			if len(sbGrants) == 2 || time.Now().After(deadline) {
				break
			}
		}
		if sbGrants[h.name+"-0"] != 1 || sbGrants[h.name+"-sb"] != 1 || len(sbGrants) != 2 {
			t.Errorf("%s: the sandbox server's grants %v, want %s-0 and %s-sb once each", h.name, sbGrants, h.name, h.name)
		}
		if grants[h.name+"-sb"] != 0 || len(grants) != 3 {
			t.Errorf("%s: the production server granted %v: a sandbox payment reached it", h.name, grants)
		}
		for _, order := range []string{h.name + "-0", h.name + "-sb"} {
			p, _, err := payments.Get(ctx, stack.SandboxPaymentID("app-"+h.name, order))
			if err != nil || p.Paid().State != relay.StateDelivered {
				t.Errorf("%s: sandbox payment %s: %+v, %v", h.name, order, p, err)
			}
		}
		payments.Close()
		b, _ := os.ReadFile(filepath.Join(dir, h.name+"-production.log"))
		t.Logf("%s handler: %d grants, %d revokes; its log:\n%s", h.name, len(grants), len(revokes), tailOf(string(b)))
	}
}

func readLedger(t *testing.T, path string) (grants, revokes map[string]int) {
	grants, revokes = map[string]int{}, map[string]int{}
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r struct{ Kind, OrderID, RefundID string }
		var raw map[string]any
		json.Unmarshal(sc.Bytes(), &raw)
		r.Kind, _ = raw["kind"].(string)
		r.OrderID, _ = raw["order_id"].(string)
		r.RefundID, _ = raw["refund_id"].(string)
		if r.Kind == "grant" {
			grants[r.OrderID]++
		} else {
			revokes[r.RefundID]++
		}
	}
	return
}

// ledgerOrder lists the ledger's rows for order <handler>-0 as "grant <order>" or "revoke <refund>".
func ledgerOrder(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r struct {
			Kind     string `json:"kind"`
			OrderID  string `json:"order_id"`
			RefundID string `json:"refund_id"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("ledger row %q: %v", line, err)
		}
		if !strings.HasSuffix(r.OrderID, "-0") {
			continue
		}
		if r.Kind == "grant" {
			out = append(out, "grant "+r.OrderID)
		} else {
			out = append(out, "revoke "+r.RefundID)
		}
	}
	return out
}

func tailOf(s string) string {
	if len(s) > 600 {
		return s[len(s)-600:]
	}
	return s
}
