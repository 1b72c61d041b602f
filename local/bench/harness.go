package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/infra/store"
	"github.com/payrelay/payrelay/local/emulator"
	"github.com/payrelay/payrelay/local/gameserver"
	"github.com/payrelay/payrelay/local/stack"
	"github.com/payrelay/payrelay/local/tasksemu"
	"github.com/payrelay/payrelay/schedule"
)

type env struct {
	o          Options
	fs         *emulator.Firestore
	fsHost     string
	tasks      *tasksemu.Server
	tasksAddr  string
	game       *gameserver.Server
	fn         *exec.Cmd
	fnPort     int
	debugAddr  string
	store      *store.Firestore
	collection string
	dir        string
	ladder     schedule.Ladder
	mu         sync.Mutex
	hits       map[string][]gameserver.Hit
	dispatches map[string]tasksemu.Dispatch
	sent       []string // sample orders of game GameA
	sentIDs    []string // payment ids of the other games' workloads
	isoHang    atomic.Bool
	progressMu sync.Mutex
}

// Run starts the stack, runs every workload, and stops what it started.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	e := &env{o: o, hits: map[string][]gameserver.Hit{}, dispatches: map[string]tasksemu.Dispatch{}}
	defer e.stop()
	if err := e.start(ctx); err != nil {
		return nil, err
	}
	r := &Result{
		Date: time.Now().UTC().Format(time.RFC3339), Baseline: map[int]Stats{}, Ingest: map[int]Stats{},
		Machine:     fmt.Sprintf("%s/%s, %d cores, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version()),
		Compression: o.Compression, Terminal: map[string]int{}, CPUCores: map[string]float64{},
	}
	steps := []struct {
		name string
		run  func(context.Context, *Result) error
	}{{"baseline", e.baseline}, {"ingest", e.ingest}, {"e2e", e.endToEnd}, {"sharding", e.sharding},
		{"isolation", e.isolation}, {"ladder", e.ladderWorkload}, {"cost", e.cost}}
	for _, step := range steps {
		if len(o.Only) > 0 && !slices.Contains(o.Only, step.name) {
			continue
		}
		if err := step.run(ctx, r); err != nil {
			return r, err
		}
	}
	e.finish(ctx, r)
	return r, nil
}

func (e *env) progress(label string, done, total int) {
	if e.o.Progress == nil {
		return
	}
	e.progressMu.Lock()
	defer e.progressMu.Unlock()
	const width = 30
	filled := width * done / max(total, 1)
	fmt.Fprintf(e.o.Progress, "\r%-34s [%s%s] %d/%d ", label, strings.Repeat("#", filled), strings.Repeat(".", width-filled), done, total)
	if done == total {
		fmt.Fprintln(e.o.Progress)
	}
}

func (e *env) start(ctx context.Context) error {
	var err error
	if e.dir, err = os.MkdirTemp("", "payrelay-bench"); err != nil {
		return err
	}
	e.fsHost = e.o.FirestoreHost
	if e.fsHost == "" {
		fmt.Fprintln(e.o.Progress, "bench: starting the Firestore emulator...")
		if e.fs, err = emulator.StartFirestore(ctx, 0, nil); err != nil {
			return err
		}
		e.fsHost = e.fs.Host
	}
	os.Setenv("FIRESTORE_EMULATOR_HOST", e.fsHost) // for this process's own clients
	games := e.games()
	queues := []string{e2eQueue}
	for _, g := range games {
		queues = append(queues, g.queues()...)
	}
	e.tasks, err = tasksemu.New(tasksemu.Options{Queues: queues, OnDispatch: func(d tasksemu.Dispatch) {
		e.mu.Lock()
		if _, seen := e.dispatches[d.Task]; !seen {
			e.dispatches[d.Task] = d
		}
		e.mu.Unlock()
	}})
	if err != nil {
		return err
	}
	if _, err := e.tasks.UpdateQueue(ctx, &cloudtaskspb.UpdateQueueRequest{Queue: &cloudtaskspb.Queue{Name: e2eQueue,
		RateLimits: &cloudtaskspb.RateLimits{MaxDispatchesPerSecond: defaultRate, MaxConcurrentDispatches: defaultConcurrent}}}); err != nil {
		return err
	}
	for _, g := range games {
		for _, q := range g.queues() {
			if _, err := e.tasks.UpdateQueue(ctx, &cloudtaskspb.UpdateQueueRequest{Queue: &cloudtaskspb.Queue{
				Name:       q,
				RateLimits: &cloudtaskspb.RateLimits{MaxDispatchesPerSecond: g.rate, MaxConcurrentDispatches: g.concurrent},
				RetryConfig: &cloudtaskspb.RetryConfig{MaxAttempts: -1, MinBackoff: durationpb.New(100 * time.Millisecond),
					MaxBackoff: durationpb.New(5 * time.Second), MaxDoublings: 5},
			}}); err != nil {
				return err
			}
		}
	}
	if e.tasksAddr, err = e.tasks.Start("127.0.0.1:0"); err != nil {
		return err
	}
	if e.game, err = gameserver.Start("127.0.0.1:0", stack.GameSecret, gameserver.Behaviour{}); err != nil {
		return err
	}
	isoA, _ := e.isoGames()
	e.game.SetDecide(func(p gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
		switch {
		case p.Data.Game == isoA.name && e.isoHang.Load():
			return gameserver.Answer{Status: http.StatusOK, Delay: e.o.IsolationTimeout + time.Second}, true
		case strings.HasPrefix(p.Data.OrderID, "lad-"):
			return gameserver.Answer{Status: http.StatusServiceUnavailable}, true
		case strings.HasPrefix(p.Data.OrderID, "cost2-") && attempt == 1:
			return gameserver.Answer{Status: http.StatusServiceUnavailable}, true
		}
		return gameserver.Answer{Status: http.StatusOK}, true
	})
	e.game.OnHit(func(hit gameserver.Hit) {
		e.mu.Lock()
		e.hits[hit.Payload.Data.PaymentID] = append(e.hits[hit.Payload.Data.PaymentID], hit)
		e.mu.Unlock()
	})
	e.ladder, _ = schedule.Default().Compress(e.o.Compression)
	return e.startFn(ctx)
}

func (e *env) startFn(ctx context.Context) error {
	bin := filepath.Join(e.dir, "fnserver")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/payrelay/payrelay/local/fnserver")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build fnserver: %v\n%s", err, out)
	}
	e.fnPort, _ = emulator.FreePort()
	dport, _ := emulator.FreePort()
	e.debugAddr = fmt.Sprintf("127.0.0.1:%d", dport)
	e.collection = fmt.Sprintf("bench-%d", time.Now().UnixNano())
	cmd := exec.Command(bin)
	fenv := stack.FunctionEnv{
		Port: e.fnPort, FunctionsURL: fmt.Sprintf("http://127.0.0.1:%d", e.fnPort),
		TasksAddr: e.tasksAddr, FirestoreHost: e.fsHost, Collection: e.collection, Compression: e.o.Compression, LogLevel: "error",
		Providers: provider.Config{Generic: provider.GenericConfig{Apps: map[string]string{}}},
	}
	for _, g := range e.games() {
		fenv.Games = append(fenv.Games, stack.GameEnv{Name: g.name, URL: e.game.URL, Queues: g.queues(), Timeout: g.timeout})
		fenv.Providers.Generic.Apps[g.app] = g.name
	}
	cmd.Env = append(fenv.Environ(), "PAYRELAY_DEBUG_ADDR="+e.debugAddr)
	logf, err := os.Create(filepath.Join(e.dir, "fnserver.log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	e.fn = cmd
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", e.fnPort)); err == nil {
			c.Close()
			if e.store, err = store.NewFirestore(ctx, stack.ProjectID, "", e.collection); err != nil {
				return err
			}
			// Warm the functions' clients up so the first measured request is not a cold start.
			code, _, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBody("warmup-1", "1.00", "CNY"))
			if err != nil || code != 200 {
				return fmt.Errorf("warm-up Ingest answered %d: %v", code, err)
			}
			e.sent = append(e.sent, "warmup-1")
			return nil
		}
	}
	return errors.New("fnserver did not start listening")
}

func (e *env) ingestURL() string { return fmt.Sprintf("http://127.0.0.1:%d/Ingest", e.fnPort) }

func (e *env) stop() {
	if e.fn != nil && e.fn.Process != nil {
		e.fn.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { e.fn.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			e.fn.Process.Kill()
			<-done
		}
	}
	if e.store != nil {
		e.store.Close()
	}
	if e.tasks != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		e.tasks.Close(ctx)
		cancel()
	}
	if e.game != nil {
		e.game.Close()
	}
	if e.fs != nil {
		e.fs.Stop()
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

// run executes n jobs at concurrency c and returns per-job latencies and the wall time.
func (e *env) run(ctx context.Context, label string, n, c int, job func(i int) error) ([]time.Duration, int, time.Duration) {
	lat := make([]time.Duration, n)
	var errs, done atomic.Int64
	next := atomic.Int64{}
	ctx, cancel := context.WithTimeout(ctx, e.o.Timeout)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := job(i); err != nil {
					errs.Add(1)
				}
				lat[i] = time.Since(t0)
				d := int(done.Add(1))
				if d%max(1, n/100) == 0 || d == n {
					e.progress(label, d, n)
				}
			}
		}()
	}
	wg.Wait()
	return lat[:min(n, int(done.Load()))], int(errs.Load()), time.Since(start)
}

func stats(lat []time.Duration, errs int, wall time.Duration) Stats {
	s := slices.Clone(lat)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	st := Stats{N: len(s), Errors: errs}
	if len(s) == 0 {
		return st
	}
	st.Rate = float64(len(s)) / wall.Seconds()
	st.P50, st.P99, st.Max = ms(pct(s, 0.50)), ms(pct(s, 0.99)), ms(s[len(s)-1])
	return st
}

// pct is the nearest-rank percentile of sorted values.
func pct[T any](sorted []T, q float64) T {
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// cpuByProcess is the CPU seconds used so far by the functions' process, the Firestore
// emulator's process group (when the bench started it), and this process (the Cloud Tasks
// emulator, the game server and the load generator).
func (e *env) cpuByProcess() map[string]float64 {
	out := map[string]float64{"functions": procCPU(e.fn.Process.Pid), "bench (tasks emulator, game server, client)": procCPU(os.Getpid())}
	if e.fs != nil {
		pgid := e.fs.Pid()
		dirs, _ := os.ReadDir("/proc")
		total := 0.0
		for _, d := range dirs {
			pid, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			if g, err := syscall.Getpgid(pid); err == nil && g == pgid {
				total += procCPU(pid)
			}
		}
		out["firestore emulator (java)"] = total
	}
	return out
}

// procCPU is a process's user+system CPU seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// waitDelivered waits until the game server has acknowledged every order (or the bound).
func (e *env) waitDelivered(ctx context.Context, orders []string, label string) error {
	return e.waitAcknowledged(ctx, orders, label, string(relay.TypePaymentSucceeded))
}

// waitAcknowledged waits until the game server acknowledged a notification of type typ of
// every order's payment.
func (e *env) waitAcknowledged(ctx context.Context, orders []string, label, typ string) error {
	deadline := time.Now().Add(e.o.Timeout)
	for {
		n := 0
		e.mu.Lock()
		for _, o := range orders {
			for _, h := range e.hits[stack.SamplePaymentID(o)] {
				if h.Status < 300 && h.Payload.Type == typ {
					n++
					break
				}
			}
		}
		e.mu.Unlock()
		e.progress(label, n, len(orders))
		if n == len(orders) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			fmt.Fprintln(e.o.Progress)
			return fmt.Errorf("%s: only %d of %d delivered within %v", label, n, len(orders), e.o.Timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpuSeconds is the functions' process's user+system CPU time so far.
func (e *env) cpuSeconds() float64 { return procCPU(e.fn.Process.Pid) }

func (e *env) peakRSSMB() float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.fn.Process.Pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
