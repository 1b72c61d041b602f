// Command bench measures payrelay against its own limits on this machine, in one run:
//
//	go run ./local/bench [-payments 1000] [-concurrency 1,32,128] [-ladder-payments 100] [-json bench.json]
//
// It starts what it needs (the Firestore emulator, or the one in FIRESTORE_EMULATOR_HOST; the
// Cloud Tasks emulator; a game server; Ingest and Deliver in a process of their own, as Cloud
// Functions runs them), runs bounded workloads, stops everything it started, and prints a table
// (and JSON). Workloads: a baseline of the same Firestore creates and Cloud Tasks creates with
// no HTTP and no payrelay code; Ingest over HTTP; end-to-end latency; ladder precision; and cost
// per payment counted at the adapters, with the functions' CPU time and peak memory.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
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
	"cloud.google.com/go/firestore"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

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

// Options are the bench's knobs.
type Options struct {
	Payments       int   // payments per concurrency level
	Concurrency    []int // Ingest and baseline concurrency levels; 32 is the one targets use
	LadderPayments int
	Compression    int
	CostPayments   int
	Timeout        time.Duration // bound of each workload
	JSON           string
	ProfileDir     string
	FirestoreHost  string
	Progress       io.Writer
	// ShardPayments is the sharding workload's payments per queue (K queues: K times as many).
	ShardPayments int
	// IsolationPayments are sent to game B at IsolationRate per second in each isolation run;
	// game A's server, when hanging, answers after IsolationTimeout (its games' timeout) + 1s.
	IsolationPayments int
	IsolationRate     int
	IsolationTimeout  time.Duration
	// E2EPayments are sent by the minimal end-to-end baseline and by payrelay at concurrency 32.
	E2EPayments int
	// Only runs just these workloads (baseline, ingest, e2e, sharding, isolation, ladder, cost).
	Only []string
}

func main() {
	var o Options
	var conc string
	flag.IntVar(&o.Payments, "payments", 1000, "payments per concurrency level")
	flag.StringVar(&conc, "concurrency", "1,32,128", "concurrency levels (targets use 32)")
	flag.IntVar(&o.LadderPayments, "ladder-payments", 100, "payments walking the whole ladder, game server always failing")
	flag.IntVar(&o.Compression, "compression", 1000, "ladder compression for the ladder workload (1000: 88 s)")
	flag.IntVar(&o.CostPayments, "cost-payments", 300, "payments per cost workload")
	flag.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "bound of each workload")
	flag.IntVar(&o.ShardPayments, "shard-payments", 150, "sharding workload: payments per queue (rate limit 50/s each)")
	flag.IntVar(&o.IsolationPayments, "isolation-payments", 300, "isolation workload: payments to the healthy game per run")
	flag.IntVar(&o.IsolationRate, "isolation-rate", 100, "isolation workload: offered payments per second to the healthy game")
	flag.DurationVar(&o.IsolationTimeout, "isolation-timeout", 10*time.Second, "isolation workload: the games' timeout (the hanging game answers 1s later)")
	flag.IntVar(&o.E2EPayments, "e2e-payments", 1000, "end-to-end workload: payments through the minimal baseline and through payrelay, both queues at terraform's defaults (a launch burst: 20000)")
	only := flag.String("only", "", "run only these workloads, comma-separated: baseline, ingest, e2e, sharding, isolation, ladder, cost")
	flag.StringVar(&o.JSON, "json", "", "also write the results as JSON to this file")
	flag.StringVar(&o.ProfileDir, "profile", "", "write a CPU profile of the functions' process during Ingest at concurrency 32 here")
	flag.Parse()
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	for _, c := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench: -concurrency %q: want positive integers\n", conc)
			os.Exit(2)
		}
		o.Concurrency = append(o.Concurrency, n)
	}
	if o.Payments < 1 || o.LadderPayments < 0 || o.Compression < 1 || o.CostPayments < 1 || o.ShardPayments < 1 || o.IsolationPayments < 1 ||
		o.IsolationRate < 1 || o.IsolationTimeout <= 0 || o.IsolationTimeout > 10*time.Second || o.E2EPayments < 1 {
		fmt.Fprintln(os.Stderr, "bench: counts, rates and -compression must be positive; -isolation-timeout at most 10s")
		os.Exit(2)
	}
	o.FirestoreHost = os.Getenv("FIRESTORE_EMULATOR_HOST")
	o.Progress = os.Stderr
	ctx, stop := signalContext()
	defer stop()
	res, err := Run(ctx, o)
	if res != nil {
		res.Print(os.Stdout)
		if o.JSON != "" {
			b, _ := json.MarshalIndent(res, "", "  ")
			if werr := os.WriteFile(o.JSON, b, 0o644); werr != nil {
				fmt.Fprintln(os.Stderr, "bench:", werr)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Stats summarizes one latency workload.
type Stats struct {
	N      int     `json:"n"`
	Errors int     `json:"errors"`
	Rate   float64 `json:"rate_per_s"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
}

// Lateness is the ladder precision of one attempt number.
type Lateness struct {
	Attempt         int     `json:"attempt"`
	StepMS          float64 `json:"step_ms"`
	N               int     `json:"n"`
	DispatchP50     float64 `json:"dispatch_p50_frac"`
	DispatchP99     float64 `json:"dispatch_p99_frac"`
	DispatchMax     float64 `json:"dispatch_max_frac"`
	DeliveryP50     float64 `json:"delivery_p50_frac"`
	DeliveryP99     float64 `json:"delivery_p99_frac"`
	DeliveryMax     float64 `json:"delivery_max_frac"`
	DeliveryP99MS   float64 `json:"delivery_p99_ms"`
	RealStepP99Frac float64 `json:"delivery_p99_frac_of_real_step"`
}

// Cost is billable operations per payment, counted at the adapters.
type Cost struct {
	Reads  float64 `json:"firestore_reads"`
	Writes float64 `json:"firestore_writes"`
	Tasks  float64 `json:"tasks_created"`
}

// Target is one goal and whether this run met it.
type Target struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Goal  string `json:"goal"`
	Met   bool   `json:"met"`
}

// Result is one run.
type Result struct {
	Date         string             `json:"date"`
	Machine      string             `json:"machine"`
	Baseline     map[int]Stats      `json:"baseline"`
	Ingest       map[int]Stats      `json:"ingest"`
	IngestAlone  Stats              `json:"ingest_alone_c32"`
	CPUCores     map[string]float64 `json:"cpu_cores_during_ingest_c32"`
	EndToEnd     Stats              `json:"end_to_end"`
	DeliveryRate float64            `json:"delivery_rate_per_s"`
	Ladder       []Lateness         `json:"ladder"`
	CostFirst    Cost               `json:"cost_first_attempt"`
	CostFurther  Cost               `json:"cost_per_further_attempt"`
	CostRefund   Cost               `json:"cost_refund_first_attempt"`
	E2EBaseline  Stats              `json:"e2e_baseline"`
	E2ERelay     Stats              `json:"e2e_payrelay"`
	Sharding     map[int]ShardStats `json:"sharding"`
	Isolation    Isolation          `json:"isolation"`
	CPUPer1000   float64            `json:"functions_cpu_seconds_per_1000"`
	PeakRSSMB    float64            `json:"functions_peak_rss_mb"`
	// ConflictsRetried counts the payment writes re-applied after a version conflict over the
	// whole run, out of Writes: races between Ingest, Deliver and operators, none a 5xx.
	ConflictsRetried int64          `json:"conflicts_retried"`
	Writes           int64          `json:"firestore_writes"`
	Sent             int            `json:"payments_sent"`
	Terminal         map[string]int `json:"payments_by_state"`
	Lost             int            `json:"payments_lost"`
	Targets          []Target       `json:"targets"`
	Compression      int            `json:"ladder_compression"`
	ProfilePath      string         `json:"profile,omitempty"`
}

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

// baseline: the same creates with the same clients and concurrency, no HTTP, no payrelay code.
func (e *env) baseline(ctx context.Context, r *Result) error {
	fsc, err := firestore.NewClient(ctx, stack.ProjectID)
	if err != nil {
		return err
	}
	defer fsc.Close()
	tc, err := tasksemu.NewClient(ctx, e.tasksAddr)
	if err != nil {
		return err
	}
	defer tc.Close()
	queue := "projects/payrelay-local/locations/local/queues/bench-baseline"
	if _, err := tc.CreateQueue(ctx, &cloudtaskspb.CreateQueueRequest{Parent: "projects/payrelay-local/locations/local",
		Queue: &cloudtaskspb.Queue{Name: queue}}); err != nil {
		return err
	}
	defer tc.DeleteQueue(context.Background(), &cloudtaskspb.DeleteQueueRequest{Name: queue})
	// Paused: its tasks are created, stored and deduplicated, but never dispatched.
	if _, err := tc.PauseQueue(ctx, &cloudtaskspb.PauseQueueRequest{Name: queue}); err != nil {
		return err
	}
	coll := fsc.Collection(e.collection + "-baseline")
	// Warm the emulators' JVM and caches up with the same operations, unmeasured, so the
	// baseline is not measured cold while the workloads after it run warm.
	e.run(ctx, "warm-up", e.o.Payments, 32, func(i int) error {
		_, err := coll.Doc(fmt.Sprintf("warm-%d", i)).Create(ctx, map[string]any{"n": i})
		return err
	})
	for _, c := range e.o.Concurrency {
		lat, errs, wall := e.run(ctx, fmt.Sprintf("baseline c=%d", c), e.o.Payments, c, func(i int) error {
			id := relay.PaymentID(relay.EnvProduction, "baseline", "bench", fmt.Sprintf("%d-%d", c, i))
			if _, err := coll.Doc(id).Create(ctx, map[string]any{"order_id": id, "amount_minor": 648, "currency": "CNY", "state": "pending", "received_at": time.Now()}); err != nil {
				return err
			}
			_, err := tc.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: queue, Task: &cloudtaskspb.Task{
				Name: queue + "/tasks/" + id + "-1", ScheduleTime: timestamppb.Now(),
				MessageType: &cloudtaskspb.Task_HttpRequest{HttpRequest: &cloudtaskspb.HttpRequest{
					Url: "http://127.0.0.1:1/Deliver", Body: []byte(`{"payment_id":"` + id + `","notification":"paid","attempt":1}`)}},
			}})
			return err
		})
		r.Baseline[c] = stats(lat, errs, wall)
	}
	return nil
}

// ingest: signed payments over HTTP at each concurrency, the game server acknowledging at once;
// end to end from the acknowledgement the client saw to the game server's receipt.
func (e *env) ingest(ctx context.Context, r *Result) error {
	for _, c := range e.o.Concurrency {
		acked := make([]time.Time, e.o.Payments)
		ordersC := make([]string, e.o.Payments)
		var profileDone chan error
		if c == 32 && e.o.ProfileDir != "" {
			profileDone = e.profile(ctx, r)
		}
		cpu0 := e.cpuByProcess()
		lat, errs, wall := e.run(ctx, fmt.Sprintf("ingest c=%d", c), e.o.Payments, c, func(i int) error {
			o := fmt.Sprintf("ing-%d-%d", c, i)
			ordersC[i] = o
			code, body, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBody(o, "6.48", "CNY"))
			acked[i] = time.Now()
			if err != nil {
				return err
			}
			if code != 200 {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
		if profileDone != nil {
			<-profileDone
		}
		r.Ingest[c] = stats(lat, errs, wall)
		if c == 32 {
			for who, sec := range e.cpuByProcess() {
				r.CPUCores[who] = (sec - cpu0[who]) / wall.Seconds()
			}
		}
		e.sent = append(e.sent, ordersC...)
		if err := e.waitDelivered(ctx, ordersC, fmt.Sprintf("deliveries c=%d", c)); err != nil {
			return err
		}
		if c == 32 || (len(e.o.Concurrency) == 1) {
			var e2e []time.Duration
			var first, last time.Time
			e.mu.Lock()
			for i, o := range ordersC {
				hits := e.hits[stack.SamplePaymentID(o)]
				if len(hits) == 0 {
					continue
				}
				e2e = append(e2e, hits[0].At.Sub(acked[i]))
				if first.IsZero() || hits[0].At.Before(first) {
					first = hits[0].At
				}
				if hits[0].At.After(last) {
					last = hits[0].At
				}
			}
			e.mu.Unlock()
			r.EndToEnd = stats(e2e, 0, last.Sub(first))
			if err := e.ingestAlone(ctx, r); err != nil {
				return err
			}
			r.EndToEnd.Rate = 0
			if d := last.Sub(first); d > 0 {
				r.DeliveryRate = float64(len(e2e)) / d.Seconds()
			}
		}
	}
	return nil
}

// ingestAlone runs Ingest at concurrency 32 with the queue paused, so that no delivery shares
// the Firestore emulator and the two cores with it, then lets the deliveries run.
func (e *env) ingestAlone(ctx context.Context, r *Result) error {
	if _, err := e.tasks.PauseQueue(ctx, &cloudtaskspb.PauseQueueRequest{Name: mainQueue}); err != nil {
		return err
	}
	orders := make([]string, e.o.Payments)
	lat, errs, wall := e.run(ctx, "ingest c=32, deliveries paused", e.o.Payments, 32, func(i int) error {
		orders[i] = fmt.Sprintf("alone-%d", i)
		code, body, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBody(orders[i], "6.48", "CNY"))
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	r.IngestAlone = stats(lat, errs, wall)
	e.sent = append(e.sent, orders...)
	if _, err := e.tasks.ResumeQueue(ctx, &cloudtaskspb.ResumeQueueRequest{Name: mainQueue}); err != nil {
		return err
	}
	return e.waitDelivered(ctx, orders, "deliveries after the pause")
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

func (e *env) profile(ctx context.Context, r *Result) chan error {
	done := make(chan error, 1)
	path := filepath.Join(e.o.ProfileDir, "functions-ingest-c32.pprof")
	r.ProfilePath = path
	go func() {
		resp, err := http.Get("http://" + e.debugAddr + "/debug/pprof/profile?seconds=8")
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		os.MkdirAll(e.o.ProfileDir, 0o755)
		b, _ := io.ReadAll(resp.Body)
		done <- os.WriteFile(path, b, 0o644)
	}()
	return done
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

// ladderWorkload: many payments at once, the game server always failing, the whole ladder.
func (e *env) ladderWorkload(ctx context.Context, r *Result) error {
	if e.o.LadderPayments == 0 {
		return nil
	}
	var orders []string
	for i := range e.o.LadderPayments {
		orders = append(orders, fmt.Sprintf("lad-%d", i))
	}
	_, errs, _ := e.run(ctx, "ladder: ingest", len(orders), 16, func(i int) error {
		code, _, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBody(orders[i], "6.48", "CNY"))
		if err == nil && code != 200 {
			err = fmt.Errorf("status %d", code)
		}
		return err
	})
	if errs > 0 {
		return fmt.Errorf("ladder: %d ingest errors", errs)
	}
	e.sent = append(e.sent, orders...)
	total := e.ladder.Elapsed(e.ladder.Attempts())
	deadline := time.Now().Add(total + e.o.Timeout)
	want := len(orders) * e.ladder.Attempts()
	for {
		n := 0
		e.mu.Lock()
		for _, o := range orders {
			n += len(e.hits[stack.SamplePaymentID(o)])
		}
		e.mu.Unlock()
		e.progress(fmt.Sprintf("ladder: attempts (%s)", total.Round(time.Second)), min(n, want), want)
		if n >= want {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			fmt.Fprintln(e.o.Progress)
			return fmt.Errorf("ladder: %d of %d attempts within %v", n, want, total+e.o.Timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // the last records land
	byAttempt := map[int]*struct {
		dispatch, delivery []float64
		deliveryAbs        []time.Duration
	}{}
	real := schedule.Default()
	for _, o := range orders {
		p, _, err := e.store.Get(ctx, stack.SamplePaymentID(o))
		if err != nil {
			return err
		}
		for i := 1; i < len(p.Paid().Attempts); i++ {
			prev, cur := p.Paid().Attempts[i-1], p.Paid().Attempts[i]
			n := cur.Number
			step := e.ladder.Wait(n)
			planned := prev.StartedAt.Add(prev.Duration).Add(step)
			b := byAttempt[n]
			if b == nil {
				b = &struct {
					dispatch, delivery []float64
					deliveryAbs        []time.Duration
				}{}
				byAttempt[n] = b
			}
			late := cur.StartedAt.Sub(planned)
			b.delivery = append(b.delivery, float64(late)/float64(step))
			b.deliveryAbs = append(b.deliveryAbs, late)
			e.mu.Lock()
			d, ok := e.dispatches[fmt.Sprintf("%s/tasks/%s-%d", mainQueue, p.ID, n)]
			e.mu.Unlock()
			if ok {
				b.dispatch = append(b.dispatch, float64(d.SentAt.Sub(d.ETA))/float64(step))
			}
		}
	}
	for n := 2; n <= e.ladder.Attempts(); n++ {
		b := byAttempt[n]
		if b == nil {
			continue
		}
		slices.Sort(b.dispatch)
		slices.Sort(b.delivery)
		slices.Sort(b.deliveryAbs)
		l := Lateness{Attempt: n, StepMS: float64(e.ladder.Wait(n).Microseconds()) / 1000, N: len(b.delivery)}
		if len(b.dispatch) > 0 {
			l.DispatchP50, l.DispatchP99, l.DispatchMax = pct(b.dispatch, .5), pct(b.dispatch, .99), b.dispatch[len(b.dispatch)-1]
		}
		l.DeliveryP50, l.DeliveryP99, l.DeliveryMax = pct(b.delivery, .5), pct(b.delivery, .99), b.delivery[len(b.delivery)-1]
		p99 := pct(b.deliveryAbs, .99)
		l.DeliveryP99MS = float64(p99.Microseconds()) / 1000
		l.RealStepP99Frac = float64(p99) / float64(real.Wait(n))
		r.Ladder = append(r.Ladder, l)
	}
	return nil
}

type counters struct {
	Reads     int64 `json:"firestore_reads"`
	Writes    int64 `json:"firestore_writes"`
	Tasks     int64 `json:"tasks_created"`
	Conflicts int64 `json:"conflicts_retried"`
}

func (e *env) counters() (counters, error) {
	resp, err := http.Get("http://" + e.debugAddr + "/debug/counters")
	if err != nil {
		return counters{}, err
	}
	defer resp.Body.Close()
	var c counters
	return c, json.NewDecoder(resp.Body).Decode(&c)
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

// cost counts operations per payment delivered first time, and per further attempt.
func (e *env) cost(ctx context.Context, r *Result) error {
	// measure sends one notification for each of CostPayments orders: the payment, or with
	// refund a refund of the (delivered) payment, and counts the operations until the game
	// server has acknowledged them all.
	measure := func(prefix string, refund bool) (counters, float64, error) {
		var orders []string
		for i := range e.o.CostPayments {
			orders = append(orders, fmt.Sprintf("%s-%d", prefix, i))
		}
		before, err := e.counters()
		if err != nil {
			return counters{}, 0, err
		}
		cpu0 := e.cpuSeconds()
		label, typ := "cost: "+prefix, string(relay.TypePaymentSucceeded)
		if refund {
			label, typ = "cost: refunds of "+prefix, string(relay.TypePaymentRefunded)
		}
		_, errs, _ := e.run(ctx, label, len(orders), 8, func(i int) error {
			body := stack.SampleBody(orders[i], "6.48", "CNY")
			if refund {
				body = stack.SampleRefundBody(orders[i], "6.48", "CNY", "r1", "1.00")
			}
			code, _, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, body)
			if err == nil && code != 200 {
				err = fmt.Errorf("status %d", code)
			}
			return err
		})
		if errs > 0 {
			return counters{}, 0, fmt.Errorf("cost: %d ingest errors", errs)
		}
		if !refund {
			e.sent = append(e.sent, orders...)
		}
		if err := e.waitAcknowledged(ctx, orders, label+": deliveries", typ); err != nil {
			return counters{}, 0, err
		}
		time.Sleep(300 * time.Millisecond) // the last records land
		after, err := e.counters()
		cpu := e.cpuSeconds() - cpu0
		return counters{after.Reads - before.Reads, after.Writes - before.Writes, after.Tasks - before.Tasks, after.Conflicts - before.Conflicts}, cpu, err
	}
	first, cpu, err := measure("cost1", false)
	if err != nil {
		return err
	}
	second, _, err := measure("cost2", false)
	if err != nil {
		return err
	}
	refund, _, err := measure("cost1", true)
	if err != nil {
		return err
	}
	k := float64(e.o.CostPayments)
	r.CostFirst = Cost{float64(first.Reads) / k, float64(first.Writes) / k, float64(first.Tasks) / k}
	r.CostFurther = Cost{float64(second.Reads-first.Reads) / k, float64(second.Writes-first.Writes) / k, float64(second.Tasks-first.Tasks) / k}
	r.CostRefund = Cost{float64(refund.Reads) / k, float64(refund.Writes) / k, float64(refund.Tasks) / k}
	r.CPUPer1000 = cpu / k * 1000
	r.PeakRSSMB = e.peakRSSMB()
	if c, err := e.counters(); err == nil {
		r.ConflictsRetried, r.Writes = c.Conflicts, c.Writes
	}
	return nil
}

// finish reads every payment back and scores the targets.
func (e *env) finish(ctx context.Context, r *Result) {
	r.Sent = len(e.sent)
	for _, o := range e.sent {
		p, _, err := e.store.Get(ctx, stack.SamplePaymentID(o))
		switch {
		case err != nil:
			r.Lost++
		case strings.HasPrefix(o, "lad-") && p.Paid().State == relay.StateFailed, !strings.HasPrefix(o, "lad-") && p.Paid().State == relay.StateDelivered:
			r.Terminal[string(p.Paid().State)]++
		default:
			r.Terminal[string(p.Paid().State)]++
			r.Lost++
		}
	}
	for _, id := range e.sentIDs {
		p, _, err := e.store.Get(ctx, id)
		switch {
		case err != nil:
			r.Lost++
		default:
			r.Terminal[string(p.Paid().State)]++
			if p.Paid().State != relay.StateDelivered {
				r.Lost++
			}
		}
	}
	r.Sent += len(e.sentIDs)
	add := func(name, value, goal string, met bool) {
		r.Targets = append(r.Targets, Target{name, value, goal, met})
	}
	if b, p := r.E2EBaseline, r.E2ERelay; b.Rate > 0 && b.P99 > 0 {
		add("end to end rate / minimal baseline (c=32)", fmt.Sprintf("%.2f (%.0f/s vs %.0f/s)", p.Rate/b.Rate, p.Rate, b.Rate), ">= 0.80", p.Rate >= 0.8*b.Rate)
		add("end to end p99 / minimal baseline (c=32)", fmt.Sprintf("%.2f (%.1f ms vs %.1f ms)", p.P99/b.P99, p.P99, b.P99), "<= 2.00", p.P99 <= 2*b.P99)
	}
	for _, k := range shardCounts {
		if s, ok := r.Sharding[k]; ok {
			want := float64(k) * shardRate
			add(fmt.Sprintf("sharding K=%d: delivered/s / (K x %d/s)", k, shardRate), fmt.Sprintf("%.2f (%.0f/s)", s.DeliveredPer/want, s.DeliveredPer), ">= 0.80", s.DeliveredPer >= 0.8*want)
		}
	}
	if h, g := r.Isolation.Healthy, r.Isolation.Hanging; h.P99 > 0 && h.Rate > 0 {
		add("isolation: B p50 with A hanging / A healthy", fmt.Sprintf("%.2f (%.1f vs %.1f ms)", g.P50/h.P50, g.P50, h.P50), "<= 1.20", g.P50 <= 1.2*h.P50)
		add("isolation: B p99 with A hanging / A healthy", fmt.Sprintf("%.2f (%.1f vs %.1f ms)", g.P99/h.P99, g.P99, h.P99), "<= 1.20", g.P99 <= 1.2*h.P99)
		add("isolation: B rate with A hanging / A healthy", fmt.Sprintf("%.2f (%.0f vs %.0f /s)", g.Rate/h.Rate, g.Rate, h.Rate), ">= 0.83", g.Rate >= h.Rate/1.2)
	}
	if b, ok := r.Baseline[32]; ok {
		i, a := r.Ingest[32], r.IngestAlone
		add("Ingest rate / baseline rate (c=32)", fmt.Sprintf("%.2f (%.0f/s vs %.0f/s)", i.Rate/b.Rate, i.Rate, b.Rate), ">= 0.80", i.Rate >= 0.8*b.Rate)
		add("Ingest p99 / baseline p99 (c=32)", fmt.Sprintf("%.2f (%.1f ms vs %.1f ms)", i.P99/b.P99, i.P99, b.P99), "<= 2.00", i.P99 <= 2*b.P99)
		add("  same, deliveries paused: rate ratio", fmt.Sprintf("%.2f (%.0f/s)", a.Rate/b.Rate, a.Rate), ">= 0.80", a.Rate >= 0.8*b.Rate)
		add("  same, deliveries paused: p99 ratio", fmt.Sprintf("%.2f (%.1f ms)", a.P99/b.P99, a.P99), "<= 2.00", a.P99 <= 2*b.P99)
	}
	if len(r.Ladder) > 0 {
		worst, worstReal := 0.0, 0.0
		for _, l := range r.Ladder {
			worst, worstReal = max(worst, l.DeliveryP99), max(worstReal, l.RealStepP99Frac)
		}
		add(fmt.Sprintf("ladder lateness p99, worst step (compressed %dx)", r.Compression), fmt.Sprintf("%.2f%%", worst*100), "<= 1% of the step", worst <= 0.01)
		add("ladder lateness p99 as a share of the real step", fmt.Sprintf("%.4f%%", worstReal*100), "<= 1% of the step", worstReal <= 0.01)
	}
	if r.CostFirst != (Cost{}) { // the cost workload ran
		add("cost, delivered first time", fmt.Sprintf("%.2f reads, %.2f writes, %.2f tasks", r.CostFirst.Reads, r.CostFirst.Writes, r.CostFirst.Tasks), "<= 1, 3, 1",
			r.CostFirst.Reads <= 1 && r.CostFirst.Writes <= 3 && r.CostFirst.Tasks <= 1)
		add("cost, per further attempt", fmt.Sprintf("%.2f reads, %.2f writes, %.2f tasks", r.CostFurther.Reads, r.CostFurther.Writes, r.CostFurther.Tasks), "<= 1, 2, 1",
			r.CostFurther.Reads <= 1 && r.CostFurther.Writes <= 2 && r.CostFurther.Tasks <= 1)
		add("cost, a refund of a delivered payment, delivered first time", fmt.Sprintf("%.2f reads, %.2f writes, %.2f tasks", r.CostRefund.Reads, r.CostRefund.Writes, r.CostRefund.Tasks), "<= 2, 3, 1",
			r.CostRefund.Reads <= 2 && r.CostRefund.Writes <= 3 && r.CostRefund.Tasks <= 1)
	}
	errs := 0
	for _, s := range r.Ingest {
		errs += s.Errors
	}
	for _, s := range r.Baseline {
		errs += s.Errors
	}
	add("errors and lost payments", fmt.Sprintf("%d errors, %d lost of %d", errs, r.Lost, r.Sent), "0 and 0", errs == 0 && r.Lost == 0)
}

// Print writes the results as a table.
func (r *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "\npayrelay bench, %s, %s\n\n", r.Date, r.Machine)
	fmt.Fprintf(w, "%-26s %8s %10s %10s %10s %7s\n", "workload", "rate/s", "p50 ms", "p99 ms", "max ms", "errors")
	levels := slices.Sorted(func(yield func(int) bool) {
		for c := range r.Ingest {
			if !yield(c) {
				return
			}
		}
	})
	for _, c := range levels {
		b, i := r.Baseline[c], r.Ingest[c]
		fmt.Fprintf(w, "%-26s %8.0f %10.1f %10.1f %10.1f %7d\n", fmt.Sprintf("baseline c=%d", c), b.Rate, b.P50, b.P99, b.Max, b.Errors)
		fmt.Fprintf(w, "%-26s %8.0f %10.1f %10.1f %10.1f %7d\n", fmt.Sprintf("ingest c=%d", c), i.Rate, i.P50, i.P99, i.Max, i.Errors)
	}
	if r.IngestAlone.N > 0 {
		a := r.IngestAlone
		fmt.Fprintf(w, "%-26s %8.0f %10.1f %10.1f %10.1f %7d\n", "ingest c=32, no delivery", a.Rate, a.P50, a.P99, a.Max, a.Errors)
	}
	fmt.Fprintf(w, "%-26s %8.0f %10.1f %10.1f %10.1f %7s\n", "ack -> game server (c=32)", r.DeliveryRate, r.EndToEnd.P50, r.EndToEnd.P99, r.EndToEnd.Max, "-")
	for _, x := range []struct {
		name string
		s    Stats
	}{{"e2e minimal baseline c=32", r.E2EBaseline}, {"e2e payrelay c=32", r.E2ERelay},
		{"iso: B, A healthy", r.Isolation.Healthy}, {"iso: B, A hanging", r.Isolation.Hanging}} {
		if x.s.N > 0 {
			fmt.Fprintf(w, "%-26s %8.0f %10.1f %10.1f %10.1f %7d\n", x.name, x.s.Rate, x.s.P50, x.s.P99, x.s.Max, x.s.Errors)
		}
	}
	if len(r.Sharding) > 0 {
		fmt.Fprintf(w, "\nsharding (each queue limited to %d/s):", shardRate)
		for _, k := range shardCounts {
			fmt.Fprintf(w, " K=%d %.0f delivered/s;", k, r.Sharding[k].DeliveredPer)
		}
		fmt.Fprintln(w)
	}
	if len(r.Ladder) > 0 {
		fmt.Fprintf(w, "\nladder (compressed %dx): lateness as a fraction of the step\n", r.Compression)
		fmt.Fprintf(w, "%-8s %10s %5s %12s %12s %12s %12s %12s %14s\n", "attempt", "step ms", "n", "dispatch p99", "deliver p50", "deliver p99", "deliver max", "p99 ms", "p99/real step")
		for _, l := range r.Ladder {
			fmt.Fprintf(w, "%-8d %10.0f %5d %11.3f%% %11.3f%% %11.3f%% %11.3f%% %12.1f %13.5f%%\n", l.Attempt, l.StepMS, l.N,
				l.DispatchP99*100, l.DeliveryP50*100, l.DeliveryP99*100, l.DeliveryMax*100, l.DeliveryP99MS, l.RealStepP99Frac*100)
		}
	}
	fmt.Fprintf(w, "\ncost per payment (counted at the adapters): first attempt %.2f reads, %.2f writes, %.2f tasks; each further attempt %.2f reads, %.2f writes, %.2f tasks\n",
		r.CostFirst.Reads, r.CostFirst.Writes, r.CostFirst.Tasks, r.CostFurther.Reads, r.CostFurther.Writes, r.CostFurther.Tasks)
	fmt.Fprintf(w, "cost per refund of a delivered payment, delivered first time: %.2f reads, %.2f writes, %.2f tasks\n",
		r.CostRefund.Reads, r.CostRefund.Writes, r.CostRefund.Tasks)
	fmt.Fprintf(w, "functions' process: %.2f CPU seconds per 1000 payments, peak RSS %.0f MB\n", r.CPUPer1000, r.PeakRSSMB)
	fmt.Fprintf(w, "write conflicts retried (re-read and applied again, never a 5xx): %d, of %d Firestore writes\n", r.ConflictsRetried, r.Writes)
	if len(r.CPUCores) > 0 {
		fmt.Fprint(w, "CPU cores in use during ingest c=32 (of 2):")
		for _, who := range slices.Sorted(maps.Keys(r.CPUCores)) {
			fmt.Fprintf(w, " %s %.2f;", who, r.CPUCores[who])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "payments: %d sent, by state %v, %d lost\n", r.Sent, r.Terminal, r.Lost)
	if r.ProfilePath != "" {
		fmt.Fprintf(w, "CPU profile of the functions during ingest c=32: %s (go tool pprof -top %s)\n", r.ProfilePath, r.ProfilePath)
	}
	fmt.Fprintln(w, "\ntargets:")
	for _, t := range r.Targets {
		mark := "met"
		if !t.Met {
			mark = "NOT MET"
		}
		fmt.Fprintf(w, "  %-52s %-40s goal %-18s %s\n", t.Name, t.Value, t.Goal, mark)
	}
}
