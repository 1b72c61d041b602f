package chaos_test

// The fault-injection suite: faults injected into the real stack (Ingest and Deliver served by
// functions-framework in a process of their own, the Firestore emulator, the Cloud Tasks
// emulator, a game server), each scenario ending by reading every payment it made from the
// store and checking the invariants of DESIGN.md: terminal state, attempts recorded match the
// POSTs the game server saw, no attempt twice (at most one extra POST, and only where a
// delivery died mid-attempt and the record says so).
//
// The scenarios share one stack and run one after another (the faults are global). Set
// FAULT_REPORT to a file to get the summary there as well as in the test log.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/infra/store"
	"github.com/payrelay/payrelay/local/chaos"
	"github.com/payrelay/payrelay/local/emulator"
	"github.com/payrelay/payrelay/local/gameserver"
	"github.com/payrelay/payrelay/local/stack"
	"github.com/payrelay/payrelay/local/tasksemu"
	"github.com/payrelay/payrelay/schedule"
)

const (
	compression    = 20000 // the 24h22m ladder in 4.4 s
	deliverTimeout = time.Second
	// lease is longer than the outages injected below plus the time the Firestore client's gRPC
	// connection takes to come back after one: against the emulator it keeps gRPC's default
	// reconnect backoff (1 s growing by 1.6x), so a 5 s refused outage can keep it away ~10 s.
	lease = 20 * time.Second
)

var (
	h        *harness
	setupErr error
	ladder   schedule.Ladder
)

type harness struct {
	fs                              *emulator.Firestore
	fsHost                          string
	fsProxy, tasksProxy, gameProxy  *chaos.Proxy
	tasksAddr, tasksDir             string
	tasks                           *tasksemu.Server
	game                            *gameserver.Server
	fnBin, fnLog                    string
	fnPort, adminPort               int
	fn                              *exec.Cmd
	fnEnv                           []string
	fnConf                          stack.FunctionEnv // what fnEnv was made from
	queues                          []string          // the queues the Cloud Tasks emulator has
	store                           *store.Firestore
	tasks5xx, deliver2xx, dispatchN atomic.Int64

	mu      sync.Mutex
	hooks   map[string]func(p gamehttp.Payload, attempt int) (gameserver.Answer, bool)
	summary summary
}

// summary counts notifications (payments and refunds): sent, and how each settled.
type summary struct {
	Sent, Delivered, Failed, Lost int
	RefundsSent, RefundsDelivered int
	Held                          int // refunds held behind a failed payment, as they must be
	CausalViolations              int
	Healed                        int // notifications the sweeper enqueued again after the purge
	Orphaned                      int // notifications of a removed game or a deleted queue (scenario 10)
	SweepsFailed                  int // sweeps that answered non-2xx (none may)
	InFlightRecorded              int // attempts in flight when the dispatcher died, recorded with the game's answer
	BulkReplayed                  int // failed notifications a bulk replay replayed across a kill
	BulkReplayedTwice             int
	ExtraPosts                    map[string]int
	BadTried, BadRefused          int
	Ingest5xx                     map[string]int
	Deliver5xx                    int
	Scenarios                     []string
	Duration                      string
}

func TestMain(m *testing.M) {
	ladder, _ = schedule.Default().Compress(compression)
	start := time.Now()
	h, setupErr = setup()
	code := m.Run()
	if h != nil {
		h.teardown()
		if setupErr == nil {
			h.summary.Duration = time.Since(start).Round(time.Second).String()
			h.summary.Deliver5xx = int(h.tasks5xx.Load())
			h.report()
		}
	}
	os.Exit(code)
}

func need(t *testing.T) {
	t.Helper()
	if setupErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("fault suite could not start its stack in CI: %v", setupErr)
		}
		t.Skipf("fault suite could not start its stack: %v", setupErr)
	}
}

func setup() (*harness, error) {
	hs := &harness{hooks: map[string]func(gamehttp.Payload, int) (gameserver.Answer, bool){},
		summary: summary{ExtraPosts: map[string]int{}, Ingest5xx: map[string]int{}}}
	var err error
	ctx := context.Background()
	hs.fsHost = os.Getenv("FIRESTORE_EMULATOR_HOST")
	if hs.fsHost == "" {
		if hs.fs, err = emulator.StartFirestore(ctx, 0, nil); err != nil {
			return hs, err
		}
		hs.fsHost = hs.fs.Host
		os.Setenv("FIRESTORE_EMULATOR_HOST", hs.fsHost) // for this process's own store client
	}
	if hs.fsProxy, err = chaos.NewProxy("127.0.0.1:0", hs.fsHost); err != nil {
		return hs, err
	}
	dir, err := os.MkdirTemp("", "payrelay-fault")
	if err != nil {
		return hs, err
	}
	hs.tasksDir = filepath.Join(dir, "tasks")
	// GameA, and two games scenario 10 takes away (one from the configuration, one's queue).
	hs.queues = []string{stack.QueueName(stack.GameA, 0), stack.OpsQueue, stack.QueueName(goneGame, 0), stack.QueueName(farmGame, 0)}
	port, _ := emulator.FreePort()
	hs.tasksAddr = fmt.Sprintf("127.0.0.1:%d", port)
	if err = hs.startTasks(false); err != nil {
		return hs, err
	}
	if hs.tasksProxy, err = chaos.NewProxy("127.0.0.1:0", hs.tasksAddr); err != nil {
		return hs, err
	}
	if hs.game, err = gameserver.Start("127.0.0.1:0", stack.GameSecret, gameserver.Behaviour{}); err != nil {
		return hs, err
	}
	hs.game.SetDecide(hs.decide)
	gameHost := strings.TrimSuffix(strings.TrimPrefix(hs.game.URL, "http://"), "/payments")
	if hs.gameProxy, err = chaos.NewProxy("127.0.0.1:0", gameHost); err != nil {
		return hs, err
	}
	hs.fnBin = filepath.Join(dir, "fnserver")
	if out, err := exec.Command("go", "build", "-o", hs.fnBin, "../fnserver").CombinedOutput(); err != nil {
		return hs, fmt.Errorf("build fnserver: %v\n%s", err, out)
	}
	hs.fnLog = filepath.Join(dir, "fnserver.log")
	hs.fnPort, _ = emulator.FreePort()
	collection := fmt.Sprintf("fault-%d", time.Now().UnixNano())
	gameURL := "http://" + hs.gameProxy.Addr() + "/payments"
	hs.fnConf = stack.FunctionEnv{
		Port: hs.fnPort, FunctionsURL: fmt.Sprintf("http://127.0.0.1:%d", hs.fnPort),
		Games: []stack.GameEnv{
			{Name: stack.GameA, URL: gameURL, Queues: []string{stack.QueueName(stack.GameA, 0)}, Timeout: deliverTimeout},
			{Name: goneGame, URL: gameURL, Queues: []string{stack.QueueName(goneGame, 0)}, Timeout: deliverTimeout},
			{Name: farmGame, URL: gameURL, Queues: []string{stack.QueueName(farmGame, 0)}, Timeout: deliverTimeout},
		},
		TasksAddr: hs.tasksProxy.Addr(), FirestoreHost: hs.fsProxy.Addr(),
		Collection: collection, Compression: compression, Lease: lease, LogLevel: "warn",
		Providers: provider.Config{Generic: provider.GenericConfig{Apps: map[string]string{stack.SampleApp: stack.GameA, goneApp: goneGame, farmApp: farmGame}}},
		// A step replays 100 notifications at 100/s: a kill lands inside one.
		OpsQueue: stack.OpsQueue, ReplayRate: 100,
	}
	hs.adminPort, _ = emulator.FreePort()
	hs.setFnEnv(hs.fnConf)
	if err = hs.startFn(); err != nil {
		return hs, err
	}
	hs.store, err = store.NewFirestore(ctx, stack.ProjectID, "", collection)
	return hs, err
}

// setFnEnv makes conf the functions' environment at their next start.
func (hs *harness) setFnEnv(conf stack.FunctionEnv) {
	hs.fnEnv = append(conf.Environ(), fmt.Sprintf("PAYRELAY_ADMIN_ADDR=127.0.0.1:%d", hs.adminPort))
}

func (hs *harness) startTasks(duplicate bool) error {
	srv, err := tasksemu.New(tasksemu.Options{DataDir: hs.tasksDir, DuplicateDispatch: duplicate, Queues: hs.queues,
		OnDispatch: func(d tasksemu.Dispatch) {
			hs.dispatchN.Add(1)
			if d.Status >= 500 {
				hs.tasks5xx.Add(1)
			}
		}})
	if err != nil {
		return err
	}
	for _, q := range hs.queues {
		if _, err := srv.UpdateQueue(context.Background(), &cloudtaskspb.UpdateQueueRequest{Queue: &cloudtaskspb.Queue{
			Name: q,
			RetryConfig: &cloudtaskspb.RetryConfig{MaxAttempts: -1, MinBackoff: durationpb.New(50 * time.Millisecond),
				MaxBackoff: durationpb.New(500 * time.Millisecond), MaxDoublings: 3},
		}}); err != nil {
			return err
		}
	}
	if _, err := srv.Start(hs.tasksAddr); err != nil {
		return err
	}
	hs.tasks = srv
	return nil
}

func (hs *harness) stopTasks() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs.tasks.Close(ctx)
}

func (hs *harness) startFn() error {
	logf, err := os.OpenFile(hs.fnLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(hs.fnBin)
	cmd.Env = hs.fnEnv
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	hs.fn = cmd
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", hs.fnPort)); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("fnserver did not listen on %d", hs.fnPort)
}

// killFn SIGKILLs the process serving Deliver (and Ingest), as a crashed instance.
func (hs *harness) killFn() {
	hs.fn.Process.Kill()
	hs.fn.Wait()
}

func (hs *harness) teardown() {
	if hs.fn != nil && hs.fn.ProcessState == nil {
		hs.killFn()
	}
	if hs.tasks != nil {
		hs.stopTasks()
	}
	for _, p := range []*chaos.Proxy{hs.fsProxy, hs.tasksProxy, hs.gameProxy} {
		if p != nil {
			p.Close()
		}
	}
	if hs.game != nil {
		hs.game.Close()
	}
	if hs.fs != nil {
		hs.fs.Stop()
	}
}

func (hs *harness) report() {
	b, _ := json.MarshalIndent(hs.summary, "", "  ")
	fmt.Printf("fault-injection summary:\n%s\n", b)
	if path := os.Getenv("FAULT_REPORT"); path != "" {
		os.WriteFile(path, append(b, '\n'), 0o644)
	}
}

// decide answers by the hook registered for the order id's prefix (up to its first "-").
func (hs *harness) decide(p gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
	prefix, _, _ := strings.Cut(p.Data.OrderID, "-")
	hs.mu.Lock()
	f := hs.hooks[prefix]
	hs.mu.Unlock()
	if f == nil {
		return gameserver.Answer{Status: http.StatusOK}, true
	}
	return f(p, attempt)
}

func (hs *harness) hook(prefix string, f func(p gamehttp.Payload, attempt int) (gameserver.Answer, bool)) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.hooks[prefix] = f
}

func failFirst(n int, code int) func(gamehttp.Payload, int) (gameserver.Answer, bool) {
	return func(_ gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
		if attempt <= n {
			return gameserver.Answer{Status: code}, true
		}
		return gameserver.Answer{Status: http.StatusOK}, true
	}
}

func ingestURL() string { return fmt.Sprintf("http://127.0.0.1:%d/Ingest", h.fnPort) }

// send posts one signed callback and returns the status (0 when no answer came).
func send(order string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, _, err := stack.Send(ctx, ingestURL(), stack.IngestSecret, stack.SampleBody(order, "6.48", "CNY"))
	if err != nil {
		return 0
	}
	return code
}

// ingest sends a callback as a provider does: retrying until it gets 200, counting 5xx.
func ingest(t *testing.T, scenario, order string) {
	t.Helper()
	for try := 0; try < 100; try++ {
		code := send(order)
		if code == http.StatusOK {
			h.mu.Lock()
			h.summary.Sent++
			h.mu.Unlock()
			return
		}
		if code >= 500 || code == 0 {
			h.mu.Lock()
			h.summary.Ingest5xx[scenario]++
			h.mu.Unlock()
		} else {
			t.Fatalf("%s: Ingest answered %d", order, code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: Ingest never answered 200", order)
}

// ingestRefund sends a refund of the sample payment of order as a provider does, retrying
// until it gets 200.
func ingestRefund(t *testing.T, scenario, order, refundID string) {
	t.Helper()
	for try := 0; try < 100; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		code, body, err := stack.Send(ctx, ingestURL(), stack.IngestSecret, stack.SampleRefundBody(order, "6.48", "CNY", refundID, "1.00"))
		cancel()
		switch {
		case err == nil && code == http.StatusOK:
			h.mu.Lock()
			h.summary.Sent++
			h.summary.RefundsSent++
			h.mu.Unlock()
			return
		case err != nil || code >= 500:
			h.mu.Lock()
			h.summary.Ingest5xx[scenario]++
			h.mu.Unlock()
		default:
			t.Fatalf("%s refund %s: Ingest answered %d %s", order, refundID, code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s refund %s: Ingest never answered 200", order, refundID)
}

func id(order string) string { return stack.SamplePaymentID(order) }

// settled reports whether every notification of p is where it rests: terminal, or held
// behind one that failed (it waits for an operator's replay).
func settled(p *relay.Payment) bool {
	for i, n := range p.Notifications {
		if !n.State.Terminal() && !(n.State == relay.StateHeld && i > 0 && p.Notifications[i-1].State == relay.StateFailed) {
			return false
		}
	}
	return len(p.Notifications) > 0
}

// waitTerminal waits until every notification of every order's payment is settled.
func waitTerminal(t *testing.T, orders []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for _, o := range orders {
		for {
			p, _, err := h.store.Get(context.Background(), id(o))
			if err == nil && settled(p) {
				break
			}
			if time.Now().After(deadline) {
				state := "not stored"
				if p != nil {
					state = ""
					for _, n := range p.Notifications {
						state += fmt.Sprintf("%s %s at attempt %d, %d records; ", n.Key, n.State, n.Attempt, len(n.Attempts))
					}
				}
				t.Fatalf("%s not settled after %v: %s (%v)\nfnserver log tail:\n%s", o, within, state, err, tail(h.fnLog))
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// check reads each payment and checks the invariants, notification by notification, against
// what the game server saw: every notification settled; every attempt recorded once and POSTed
// once (allowExtra permits one extra POST for an attempt whose record says a delivery was
// lost); no notification acknowledged twice; no refund POSTed before the notification ahead of
// it was acknowledged (causal order).
func check(t *testing.T, scenario string, orders []string, allowExtra bool) map[string]*relay.Payment {
	t.Helper()
	out := map[string]*relay.Payment{}
	time.Sleep(300 * time.Millisecond) // let stray redeliveries play out before counting POSTs
	for _, o := range orders {
		p, _, err := h.store.Get(context.Background(), id(o))
		if err != nil {
			h.mu.Lock()
			h.summary.Lost++
			h.mu.Unlock()
			t.Errorf("%s: LOST: %v", o, err)
			continue
		}
		out[o] = p
		if !settled(p) {
			h.mu.Lock()
			h.summary.Lost++
			h.mu.Unlock()
			t.Errorf("%s: not settled: %+v", o, p.Notifications)
			continue
		}
		hits := h.game.Hits(p.ID)
		for i := range p.Notifications {
			checkNotification(t, scenario, o, p, i, hits, allowExtra)
		}
	}
	h.mu.Lock()
	h.summary.Scenarios = append(h.summary.Scenarios, scenario)
	h.mu.Unlock()
	return out
}

func checkNotification(t *testing.T, scenario, o string, p *relay.Payment, i int, hits []gameserver.Hit, allowExtra bool) {
	t.Helper()
	n := p.Notifications[i]
	nid := relay.NotificationID(p.ID, n.Key)
	what := o + " " + n.Key
	posts, acks, firstPost := map[int]int{}, 0, -1
	for k, hit := range hits {
		if hit.Payload.Data.NotificationID != nid {
			continue
		}
		posts[hit.Attempt]++
		if hit.Status >= 200 && hit.Status < 300 {
			acks++
		}
		if firstPost < 0 {
			firstPost = k
		}
	}
	if acks > 1 {
		t.Errorf("%s: acknowledged by the game server %d times", what, acks)
	}
	// Causal order: the first POST of a notification comes after the acknowledged POST of the
	// one before it.
	if i > 0 && firstPost >= 0 {
		prev := relay.NotificationID(p.ID, p.Notifications[i-1].Key)
		ok := false
		for _, hit := range hits[:firstPost] {
			if hit.Payload.Data.NotificationID == prev && hit.Status >= 200 && hit.Status < 300 {
				ok = true
			}
		}
		if !ok {
			h.mu.Lock()
			h.summary.CausalViolations++
			h.mu.Unlock()
			t.Errorf("%s: POSTed before %s was acknowledged", what, p.Notifications[i-1].Key)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if n.State == relay.StateHeld {
		h.summary.Held++
		if len(posts) != 0 {
			t.Errorf("%s: held, yet POSTed %v", what, posts)
		}
		return
	}
	recorded, lost := map[int]int{}, map[int]int{}
	for _, r := range n.Attempts {
		if r.ErrorClass == relay.ErrorLost {
			lost[r.Number]++
		} else {
			recorded[r.Number]++
		}
	}
	last := n.Attempts[len(n.Attempts)-1]
	for a := 1; a <= last.Number; a++ {
		if recorded[a] != 1 {
			t.Errorf("%s: attempt %d recorded %d times", what, a, recorded[a])
		}
		extra := posts[a] - 1
		switch {
		case posts[a] < 1:
			t.Errorf("%s: attempt %d recorded but the game server never saw it", what, a)
		case extra > 0 && (!allowExtra || extra > lost[a]):
			t.Errorf("%s: attempt %d POSTed %d times with %d lost deliveries recorded", what, a, posts[a], lost[a])
		case extra > 0:
			h.summary.ExtraPosts[scenario] += extra
		}
	}
	if posts[last.Number+1] != 0 {
		t.Errorf("%s: the game server saw attempt %d, which was never recorded", what, last.Number+1)
	}
	switch n.State {
	case relay.StateDelivered:
		h.summary.Delivered++
		if n.Type == relay.TypePaymentRefunded {
			h.summary.RefundsDelivered++
		}
		if !last.Succeeded() {
			t.Errorf("%s: delivered, but its last attempt %+v did not succeed", what, last)
		}
	case relay.StateFailed:
		h.summary.Failed++
		if last.Number != ladder.Attempts() || last.Succeeded() {
			t.Errorf("%s: failed at attempt %d (%+v), want after %d", what, last.Number, last, ladder.Attempts())
		}
	}
}

func orders(prefix string, n int) []string {
	var os []string
	for i := 1; i <= n; i++ {
		os = append(os, fmt.Sprintf("%s-%d", prefix, i))
	}
	return os
}

// 1. Deliver dies mid-attempt: after claiming (before its POST reaches the game server), and
// after the game server got the POST (before the result was recorded).
func TestS1DeliverKilledMidAttempt(t *testing.T) {
	need(t)
	// a) Killed after the claim: the game server's port black-holes, so Deliver is stuck
	// connecting when it dies; its POST never arrives.
	h.gameProxy.SetMode(chaos.Blackhole)
	ingest(t, "1-deliver-killed", "killclaim-1")
	select {
	case <-h.gameProxy.Accepted():
	case <-time.After(10 * time.Second):
		t.Fatal("Deliver never tried the game server")
	}
	// A refund arrives while the payment's attempt is claimed: it waits behind it.
	ingestRefund(t, "1-deliver-killed", "killclaim-1", "r1")
	h.killFn()
	h.gameProxy.SetMode(chaos.Pass)
	if err := h.startFn(); err != nil {
		t.Fatal(err)
	}
	// b) Killed after the game server got the POST: the game server holds its answer.
	got := make(chan struct{}, 1)
	var once sync.Once
	h.hook("killpost", func(_ gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
		first := false
		once.Do(func() { first = true })
		if !first {
			return gameserver.Answer{Status: http.StatusOK}, true
		}
		return gameserver.Answer{Status: 0, Custom: func(w http.ResponseWriter, r *http.Request) {
			got <- struct{}{}
			<-r.Context().Done() // until Deliver dies
		}}, true
	})
	ingest(t, "1-deliver-killed", "killpost-1")
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the game server never got the POST")
	}
	ingestRefund(t, "1-deliver-killed", "killpost-1", "r1")
	h.killFn()
	if err := h.startFn(); err != nil {
		t.Fatal(err)
	}
	all := []string{"killclaim-1", "killpost-1"}
	waitTerminal(t, all, 30*time.Second)
	ps := check(t, "1-deliver-killed", all, true)
	for o, wantPosts := range map[string]int{"killclaim-1": 1, "killpost-1": 2} {
		p := ps[o]
		if p == nil {
			continue
		}
		if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 2 || p.Paid().Attempts[0].ErrorClass != relay.ErrorLost || !p.Paid().Attempts[1].Succeeded() {
			t.Errorf("%s: %s with history %+v; want a lost attempt 1, then attempt 1 delivered", o, p.Paid().State, p.Paid().Attempts)
		}
		if n := len(h.game.Hits(p.ID)); n != wantPosts+1 {
			t.Errorf("%s: the game server saw %d POSTs, want %d of the payment and 1 of its refund", o, n, wantPosts)
		}
		if r := p.RefundByID("r1"); r == nil || r.State != relay.StateDelivered || len(r.Attempts) != 1 {
			t.Errorf("%s: refund %+v; want delivered at its first attempt, after the payment", o, r)
		}
	}
}

// 2. Firestore unavailable (refused, then black-holed): Ingest answers 5xx and stores
// nothing; Deliver answers 5xx and Cloud Tasks redelivers; after recovery all complete.
func TestS2FirestoreUnavailable(t *testing.T) {
	need(t)
	h.hook("fs", failFirst(2, http.StatusServiceUnavailable))
	before := orders("fs-before", 5)
	for _, o := range before {
		ingest(t, "2-firestore-down", o)
	}
	t5xx := h.tasks5xx.Load()
	for _, mode := range []chaos.Mode{chaos.Refuse, chaos.Blackhole} {
		h.fsProxy.SetMode(mode)
		// An outage of about 5 s, shorter than the lease: no delivery caught in it may need a
		// second POST.
		outage := time.Now()
		during := orders(fmt.Sprintf("fs-during%d", mode), 3)
		var wg sync.WaitGroup
		for _, o := range during {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				code := send(o)
				if code < 500 {
					t.Errorf("%s: Ingest with Firestore down answered %d, want 5xx", o, code)
				}
				h.mu.Lock()
				h.summary.Ingest5xx["2-firestore-down"]++
				h.mu.Unlock()
				t.Logf("%s: %d after %v", o, code, time.Since(start).Round(time.Millisecond))
			}()
		}
		wg.Wait()
		time.Sleep(time.Until(outage.Add(5 * time.Second))) // deliveries fail meanwhile
		h.fsProxy.SetMode(chaos.Pass)
		for _, o := range during {
			if _, _, err := h.store.Get(context.Background(), id(o)); err == nil {
				t.Errorf("%s: stored although Ingest answered 5xx", o)
			}
			ingest(t, "2-firestore-down", o) // the provider's retry
		}
		before = append(before, during...)
	}
	waitTerminal(t, before, 60*time.Second)
	check(t, "2-firestore-down", before, false)
	if h.tasks5xx.Load() == t5xx {
		t.Error("Deliver never answered 5xx while Firestore was down")
	}
}

// 3. The Cloud Tasks emulator unreachable during Ingest, and during Deliver's enqueue of the
// next attempt: no payment is left pending without a task once it is back.
func TestS3CloudTasksUnavailable(t *testing.T) {
	need(t)
	h.tasksProxy.SetMode(chaos.Refuse)
	ingestOrders := orders("ctin", 3)
	for _, o := range ingestOrders {
		if code := send(o); code < 500 {
			t.Errorf("%s: Ingest with Cloud Tasks down answered %d, want 5xx", o, code)
		}
		h.summary.Ingest5xx["3-cloudtasks-down"]++
	}
	h.tasksProxy.SetMode(chaos.Pass)
	for _, o := range ingestOrders {
		ingest(t, "3-cloudtasks-down", o) // the provider's retry creates the missing task
	}
	// Deliver: attempt 1 fails, and the queue goes down just before Deliver enqueues attempt 2.
	var downOnce sync.Once
	h.hook("ctdel", func(_ gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
		if attempt == 1 {
			downOnce.Do(func() {
				h.tasksProxy.SetMode(chaos.Refuse)
				time.AfterFunc(1500*time.Millisecond, func() { h.tasksProxy.SetMode(chaos.Pass) })
			})
			return gameserver.Answer{Status: http.StatusBadGateway}, true
		}
		return gameserver.Answer{Status: http.StatusOK}, true
	})
	deliverOrders := orders("ctdel", 3)
	for _, o := range deliverOrders {
		ingest(t, "3-cloudtasks-down", o)
	}
	all := append(ingestOrders, deliverOrders...)
	waitTerminal(t, all, 60*time.Second)
	ps := check(t, "3-cloudtasks-down", all, false)
	for _, o := range deliverOrders {
		if p := ps[o]; p != nil && (p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 2) {
			t.Errorf("%s: %s after %d attempts, want delivered at attempt 2", o, p.Paid().State, len(p.Paid().Attempts))
		}
	}
}

// 4. Duplicates everywhere: every callback twice at once, every task dispatched twice at once.
func TestS4DuplicatesEverywhere(t *testing.T) {
	need(t)
	h.stopTasks()
	if err := h.startTasks(true); err != nil {
		t.Fatal(err)
	}
	defer func() {
		h.stopTasks()
		if err := h.startTasks(false); err != nil {
			t.Fatal(err)
		}
	}()
	h.hook("dup", failFirst(2, http.StatusInternalServerError))
	all := orders("dup", 10)
	var wg sync.WaitGroup
	for _, o := range all {
		for range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); ingest(t, "4-duplicates", o) }()
		}
	}
	wg.Wait()
	// Each payment's refund, twice at once too, while the payment is still failing.
	for _, o := range all {
		for range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); ingestRefund(t, "4-duplicates", o, "r1") }()
		}
	}
	wg.Wait()
	h.mu.Lock()
	h.summary.Sent -= 2 * len(all) // each payment and refund was sent twice; count it once
	h.summary.RefundsSent -= len(all)
	h.mu.Unlock()
	waitTerminal(t, all, 30*time.Second)
	for o, p := range check(t, "4-duplicates", all, false) {
		if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 3 {
			t.Errorf("%s: %s after %d attempts, want delivered at attempt 3", o, p.Paid().State, len(p.Paid().Attempts))
		}
		if r := p.RefundByID("r1"); len(p.Notifications) != 2 || r == nil || r.State != relay.StateDelivered || len(r.Attempts) != 3 {
			t.Errorf("%s: %d notifications, refund %+v; want one refund, delivered at attempt 3", o, len(p.Notifications), r)
		}
	}
}

// 5. Game server chaos: random 500s, timeouts, resets, slow bodies, redirects to another host,
// huge bodies; each ends where the ladder says, with the right error classes, and a slow game
// server never stalls deliveries to a healthy one.
func TestS5GameServerChaos(t *testing.T) {
	need(t)
	rng := rand.New(rand.NewPCG(5, 5))
	var rngMu sync.Mutex
	h.hook("c500", func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		rngMu.Lock()
		defer rngMu.Unlock()
		if rng.IntN(2) == 0 {
			return gameserver.Answer{Status: http.StatusInternalServerError}, true
		}
		return gameserver.Answer{Status: http.StatusOK}, true
	})
	once := func(first func(w http.ResponseWriter, r *http.Request)) func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		return func(_ gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
			if attempt == 1 {
				return gameserver.Answer{Custom: first}, true
			}
			return gameserver.Answer{Status: http.StatusOK}, true
		}
	}
	h.hook("ctimeout", once(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(deliverTimeout + 500*time.Millisecond):
		case <-r.Context().Done():
		}
	}))
	h.hook("creset", once(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}))
	h.hook("credirect", once(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.2:9/elsewhere", http.StatusTemporaryRedirect)
	}))
	h.hook("cslowbody", func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		return gameserver.Answer{Custom: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			for range 20 {
				io.WriteString(w, "x")
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		}}, true
	})
	h.hook("chuge", func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		return gameserver.Answer{Custom: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			w.Write(bytes.Repeat([]byte("y"), 5<<20))
		}}, true
	})
	slow := orders("ctimeout", 4)
	for _, o := range slow {
		ingest(t, "5-game-chaos", o)
	}
	sentHealthy := time.Now()
	healthy := orders("healthy", 10)
	for _, o := range healthy {
		ingest(t, "5-game-chaos", o)
	}
	var rest []string
	for _, p := range []string{"c500", "creset", "credirect", "cslowbody", "chuge"} {
		for _, o := range orders(p, 4) {
			ingest(t, "5-game-chaos", o)
			rest = append(rest, o)
		}
	}
	all := append(append(append([]string{}, slow...), healthy...), rest...)
	waitTerminal(t, all, 60*time.Second)
	ps := check(t, "5-game-chaos", all, false)
	// Healthy payments were not queued behind the slow ones: each reached the game server
	// before the first slow attempt had even timed out.
	for _, o := range healthy {
		if hits := h.game.Hits(id(o)); len(hits) != 1 || hits[0].At.Sub(sentHealthy) >= deliverTimeout {
			t.Errorf("%s: %d posts, first %v after sending; want one, before the slow ones' %v timeout", o, len(hits), hits[0].At.Sub(sentHealthy), deliverTimeout)
		}
	}
	wantClass := map[string]relay.ErrorClass{"ctimeout": relay.ErrorTimeout, "creset": relay.ErrorHTTP, "credirect": relay.ErrorRedirect}
	for o, p := range ps {
		prefix, _, _ := strings.Cut(o, "-")
		switch prefix {
		case "ctimeout", "creset", "credirect":
			if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 2 || p.Paid().Attempts[0].ErrorClass != wantClass[prefix] {
				t.Errorf("%s: %s, history %+v; want attempt 1 failed with class %s, then delivered", o, p.Paid().State, p.Paid().Attempts, wantClass[prefix])
			}
		case "cslowbody", "chuge":
			if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 1 || len(p.Paid().Attempts[0].Response) > gamehttp.SnippetBytes {
				t.Errorf("%s: %s, history %+v; want delivered at once, at most 1 KiB of response kept", o, p.Paid().State, p.Paid().Attempts)
			}
		case "c500":
			// Delivered at the first 2xx the game server gave, or failed after all 8.
			hits := h.game.Hits(p.ID)
			firstOK := 0
			for _, hit := range hits {
				if hit.Status < 300 {
					firstOK = hit.Attempt
					break
				}
			}
			if (firstOK == 0 && p.Paid().State != relay.StateFailed) || (firstOK != 0 && (p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != firstOK)) {
				t.Errorf("%s: %s after %d attempts; the game server first said 2xx at attempt %d", o, p.Paid().State, len(p.Paid().Attempts), firstOK)
			}
			for _, r := range p.Paid().Attempts[:len(p.Paid().Attempts)-1] {
				if r.StatusCode != 500 || r.ErrorClass != relay.ErrorHTTP {
					t.Errorf("%s: failed attempt recorded as %+v", o, r)
				}
			}
		}
	}
}

// 6. The Cloud Tasks emulator restarts with its data directory while tasks are scheduled:
// none lost, none dispatched before its time.
func TestS6CloudTasksRestart(t *testing.T) {
	need(t)
	h.hook("rs", failFirst(7, http.StatusServiceUnavailable))
	all := orders("rs", 10)
	for _, o := range all {
		ingest(t, "6-tasks-restart", o)
	}
	time.Sleep(1200 * time.Millisecond) // mid-ladder: attempts 7 and 8 are scheduled ahead
	h.stopTasks()
	time.Sleep(800 * time.Millisecond)
	if err := h.startTasks(false); err != nil {
		t.Fatal(err)
	}
	waitTerminal(t, all, 30*time.Second)
	for o, p := range check(t, "6-tasks-restart", all, false) {
		if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 8 {
			t.Errorf("%s: %s after %d attempts, want delivered at attempt 8", o, p.Paid().State, len(p.Paid().Attempts))
		}
		hits := h.game.Hits(p.ID)
		for i := 1; i < len(hits); i++ {
			if gap, want := hits[i].At.Sub(hits[i-1].At), ladder.Wait(hits[i].Attempt); gap < want {
				t.Errorf("%s: attempt %d came %v after attempt %d, before the ladder's %v", o, hits[i].Attempt, gap, hits[i-1].Attempt, want)
			}
		}
	}
}

// 7. Bad input at volume, mixed with valid callbacks: every bad one gets a 4xx, none a 5xx, no
// panic, nothing stored; every valid one is delivered.
func TestS7BadInputAtVolume(t *testing.T) {
	need(t)
	const bad, valid, workers = 3000, 100, 16
	type job struct {
		order string
		req   func() (*http.Request, error)
		good  bool
	}
	rng := rand.New(rand.NewPCG(7, 7))
	other := webhook.NewSecret([]byte("not-the-ingest-secret-0123456789"))
	build := func(body []byte, secret webhook.Secret, ts time.Time, contentType string) func() (*http.Request, error) {
		return func() (*http.Request, error) {
			r, err := http.NewRequest(http.MethodPost, ingestURL(), bytes.NewReader(body))
			if err != nil {
				return nil, err
			}
			msgID := "msg_" + strconv.Itoa(rand.Int())
			r.Header.Set("Content-Type", contentType)
			r.Header.Set(webhook.HeaderID, msgID)
			r.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
			r.Header.Set(webhook.HeaderSignature, secret.Sign(msgID, ts, body))
			return r, nil
		}
	}
	var jobs []job
	for i := range bad {
		o := fmt.Sprintf("bad-%d", i)
		body := stack.SampleBody(o, "6.48", "CNY")
		var j job
		switch i % 8 {
		case 0: // random bytes, signed
			junk := make([]byte, rng.IntN(2000))
			for k := range junk {
				junk[k] = byte(rng.IntN(256))
			}
			j = job{o, build(junk, stack.IngestSecret, time.Now(), "application/json"), false}
		case 1: // truncated, signed as truncated
			j = job{o, build(body[:rng.IntN(len(body)-1)], stack.IngestSecret, time.Now(), "application/json"), false}
		case 2: // oversized
			big := bytes.Replace(body, []byte(`"gems_60"`), []byte(`"`+strings.Repeat("z", 70_000)+`"`), 1)
			j = job{o, build(big, stack.IngestSecret, time.Now(), "application/json"), false}
		case 3: // wrongly signed
			j = job{o, build(body, other, time.Now(), "application/json"), false}
		case 4: // replayed: an old timestamp
			j = job{o, build(body, stack.IngestSecret, time.Now().Add(-time.Hour), "application/json"), false}
		case 5: // well-formed but invalid: amount beyond the minor unit, unknown currency, zero
			inv := [][]byte{stack.SampleBody(o, "6.485", "CNY"), stack.SampleBody(o, "6", "XYZ"), stack.SampleBody(o, "0", "JPY")}[rng.IntN(3)]
			j = job{o, build(inv, stack.IngestSecret, time.Now(), "application/json"), false}
		case 6: // wrong content type
			j = job{o, build(body, stack.IngestSecret, time.Now(), "text/plain"), false}
		case 7: // a body tampered after signing
			sig := build(body, stack.IngestSecret, time.Now(), "application/json")
			j = job{o, func() (*http.Request, error) {
				r, err := sig()
				if err != nil {
					return nil, err
				}
				tampered := bytes.Replace(body, []byte(`"6.48"`), []byte(`"0.01"`), 1)
				r.Body = io.NopCloser(bytes.NewReader(tampered))
				r.ContentLength = int64(len(tampered))
				return r, nil
			}, false}
		}
		jobs = append(jobs, j)
	}
	for _, o := range orders("bulk", valid) {
		jobs = append(jobs, job{o, build(stack.SampleBody(o, "6.48", "CNY"), stack.IngestSecret, time.Now(), "application/json"), true})
	}
	rng.Shuffle(len(jobs), func(i, k int) { jobs[i], jobs[k] = jobs[k], jobs[i] })
	var refused, fivexx, okBad atomic.Int64
	ch := make(chan job)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				for try := 0; ; try++ {
					r, err := j.req()
					if err != nil {
						t.Error(err)
						break
					}
					resp, err := http.DefaultClient.Do(r)
					if err != nil {
						t.Errorf("%s: %v", j.order, err)
						break
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch {
					case resp.StatusCode >= 500:
						fivexx.Add(1)
						if j.good && try < 20 {
							continue // a provider retries
						}
					case j.good && resp.StatusCode != 200:
						t.Errorf("%s: valid callback answered %d", j.order, resp.StatusCode)
					case !j.good && resp.StatusCode >= 400:
						refused.Add(1)
					case !j.good:
						okBad.Add(1)
						t.Errorf("%s: bad callback answered %d", j.order, resp.StatusCode)
					}
					break
				}
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	h.mu.Lock()
	h.summary.BadTried += bad
	h.summary.BadRefused += int(refused.Load())
	h.summary.Sent += valid
	h.summary.Ingest5xx["7-bad-input"] += int(fivexx.Load())
	h.mu.Unlock()
	if fivexx.Load() != 0 {
		t.Errorf("%d answers were 5xx under bad input at volume, want none", fivexx.Load())
	}
	if refused.Load() != bad {
		t.Errorf("%d of %d bad callbacks were refused with a 4xx", refused.Load(), bad)
	}
	for i := range bad {
		if _, _, err := h.store.Get(context.Background(), id(fmt.Sprintf("bad-%d", i))); err == nil {
			t.Errorf("bad-%d was stored", i)
		}
	}
	waitTerminal(t, orders("bulk", valid), 60*time.Second)
	for o, p := range check(t, "7-bad-input", orders("bulk", valid), false) {
		if p.Paid().State != relay.StateDelivered {
			t.Errorf("%s: %s", o, p.Paid().State)
		}
	}
	// The process serving the functions is still the one we started: nothing crashed it.
	if h.fn.ProcessState != nil {
		t.Errorf("fnserver exited: %v", h.fn.ProcessState)
	}
}

var jsonUnmarshal = json.Unmarshal
