package chaos_test

// The fault-injection suite: faults injected into the real stack (Ingest and Deliver served by
// functions-framework in a process of their own, the Firestore emulator, the Cloud Tasks
// emulator, a game server), each scenario ending by reading every payment it made from the
// store and checking the invariants of DESIGN.md: terminal state, attempts recorded match the
// POSTs the game server saw, no attempt twice (at most one extra POST, and only where a
// delivery died mid-attempt and the record says so).
//
// This file is the harness; each scenario is a file of its own (s1_deliver_killed_test.go ...
// s11_dispatcher_test.go). The scenarios share one stack and run one after another (the faults
// are global). Set
// FAULT_REPORT to a file to get the summary there as well as in the test log.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
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
