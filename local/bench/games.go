package main

// The many-games workloads: sharding one game over K rate-limited queues, and one game's
// hanging server beside a healthy game.

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

// mainQueue carries the game of every workload but the sharding and isolation ones: the
// sample app's game, one queue at Cloud Tasks' default rates.
var mainQueue = stack.QueueName(stack.GameA, 0)

// benchGame is a game the bench configures: its generic app id, its K queues with their rate
// limits, and its game-server timeout.
type benchGame struct {
	name, app  string
	shards     int
	rate       float64
	concurrent int32
	timeout    time.Duration
}

func (g benchGame) queues() []string {
	var qs []string
	for k := range g.shards {
		qs = append(qs, stack.QueueName(g.name, k))
	}
	return qs
}

// shardRate is each sharded queue's max_dispatches_per_second, set low so the emulator's rate
// limit, not the machine, bounds delivery.
const shardRate = 50

// shardCounts are the K the sharding workload compares.
var shardCounts = []int{1, 2, 4}

func shardGame(k int) benchGame {
	return benchGame{name: fmt.Sprintf("shard-%d", k), app: fmt.Sprintf("app-shard-%d", k), shards: k, rate: shardRate, concurrent: 100, timeout: 10 * time.Second}
}

// The isolation workload's games: A's server hangs in one of the two runs; B is the one
// measured. A's queue lets at most isoConcurrent dispatches wait on its server at once.
const isoConcurrent = 10

func (e *env) isoGames() (a, b benchGame) {
	a = benchGame{name: "iso-a", app: "app-iso-a", shards: 1, rate: 500, concurrent: isoConcurrent, timeout: e.o.IsolationTimeout}
	b = benchGame{name: "iso-b", app: "app-iso-b", shards: 1, rate: 500, concurrent: isoConcurrent, timeout: e.o.IsolationTimeout}
	return a, b
}

// games are the bench's games: the main one, the sharded ones, the isolation pair.
// A game's queue as terraform.tf makes it by default: Cloud Tasks' per-queue maximum rate, the
// game server guarded by the requests in flight. The end-to-end workload (a launch burst with
// -e2e-payments 20000) runs payrelay's queue and the minimal baseline's at these.
const (
	defaultRate       = 500
	defaultConcurrent = 100
)

func (e *env) games() []benchGame {
	gs := []benchGame{{name: stack.GameA, app: stack.SampleApp, shards: 1, rate: defaultRate, concurrent: defaultConcurrent, timeout: 10 * time.Second}}
	for _, k := range shardCounts {
		gs = append(gs, shardGame(k))
	}
	a, b := e.isoGames()
	return append(gs, a, b)
}

// ShardStats is the delivery rate of one game spread over K queues.
type ShardStats struct {
	Queues       int     `json:"queues"`
	LimitPerQ    float64 `json:"limit_per_queue_per_s"`
	N            int     `json:"n"`
	DeliveredPer float64 `json:"delivered_per_s"`
}

// Isolation compares game B with game A healthy and with A's server hanging.
type Isolation struct {
	Healthy     Stats   `json:"b_with_a_healthy"`
	Hanging     Stats   `json:"b_with_a_hanging"`
	OfferedPerS float64 `json:"offered_b_per_s"`
	HangAfter   string  `json:"a_answers_after"`
}

// send sends one sample payment of app, recording its id among those finish checks.
func (e *env) sendApp(ctx context.Context, app, order string) (string, error) {
	code, body, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBodyFor(app, order, "6.48", "CNY"))
	if err == nil && code != 200 {
		err = fmt.Errorf("%d %s", code, body)
	}
	id := relay.PaymentID(relay.EnvProduction, "generic", app, order)
	e.mu.Lock()
	e.sentIDs = append(e.sentIDs, id)
	e.mu.Unlock()
	return id, err
}

// firstAck is when the game server first acknowledged payment id, if it has.
func (e *env) firstAck(id string) (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, h := range e.hits[id] {
		if h.Status < 300 {
			return h.At, true
		}
	}
	return time.Time{}, false
}

// waitAcked waits until every payment in ids is acknowledged.
func (e *env) waitAcked(ctx context.Context, ids []string, label string) error {
	deadline := time.Now().Add(e.o.Timeout)
	for {
		n := 0
		for _, id := range ids {
			if _, ok := e.firstAck(id); ok {
				n++
			}
		}
		e.progress(label, n, len(ids))
		if n == len(ids) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			fmt.Fprintln(e.o.Progress)
			return fmt.Errorf("%s: only %d of %d delivered within %v", label, n, len(ids), e.o.Timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shardBurst is each sharded queue's burst allowance: Cloud Tasks (and the emulator) let
// min(100, rate) tasks go at once before the rate applies.
const shardBurst = min(100, shardRate)

// sharding: for K = 1, 2, 4, one game over K queues of shardRate/s each. Its queues are paused
// while its payments are ingested and then resumed, so every task is due at once and only the
// queues' rate limits pace delivery; the delivered rate is measured over the steady part, after
// the K queues' burst allowance has gone out.
func (e *env) sharding(ctx context.Context, r *Result) error {
	r.Sharding = map[int]ShardStats{}
	for _, k := range shardCounts {
		g := shardGame(k)
		n := e.o.ShardPayments * k
		ids := make([]string, n)
		for _, q := range g.queues() {
			if _, err := e.tasks.PauseQueue(ctx, &cloudtaskspb.PauseQueueRequest{Name: q}); err != nil {
				return err
			}
		}
		_, errs, _ := e.run(ctx, fmt.Sprintf("sharding K=%d: ingest", k), n, 32, func(i int) error {
			var err error
			ids[i], err = e.sendApp(ctx, g.app, fmt.Sprintf("sh%d-%d", k, i))
			return err
		})
		if errs > 0 {
			return fmt.Errorf("sharding K=%d: %d ingest errors", k, errs)
		}
		for _, q := range g.queues() {
			if _, err := e.tasks.ResumeQueue(ctx, &cloudtaskspb.ResumeQueueRequest{Name: q}); err != nil {
				return err
			}
		}
		if err := e.waitAcked(ctx, ids, fmt.Sprintf("sharding K=%d: deliveries", k)); err != nil {
			return err
		}
		var at []time.Time
		for _, id := range ids {
			t, _ := e.firstAck(id)
			at = append(at, t)
		}
		slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
		i0 := shardBurst * k
		st := ShardStats{Queues: k, LimitPerQ: shardRate, N: n}
		if i0 < len(at)-1 {
			if d := at[len(at)-1].Sub(at[i0]); d > 0 {
				st.DeliveredPer = float64(len(at)-1-i0) / d.Seconds()
			}
		}
		r.Sharding[k] = st
	}
	return nil
}

// isolation: the same offered load on game B (and a fifth of it on game A) twice: once with A's
// server healthy, once with it answering only after A's timeout (every attempt of A times out).
// B's end-to-end latency (sent to its server's receipt) and delivered rate are compared.
func (e *env) isolation(ctx context.Context, r *Result) error {
	a, b := e.isoGames()
	offered := float64(e.o.IsolationRate)
	run := func(label string, hang bool) (Stats, error) {
		e.isoHang.Store(hang)
		n := e.o.IsolationPayments
		nA := max(1, n/5)
		tick := time.Duration(float64(time.Second) / offered)
		sentAt := make([]time.Time, n)
		ids := make([]string, n)
		var idsA []string
		var mu sync.Mutex
		var wg sync.WaitGroup
		var errs int
		start := time.Now()
		for i := range n {
			at := start.Add(time.Duration(i) * tick)
			time.Sleep(time.Until(at))
			wg.Add(1)
			go func() {
				defer wg.Done()
				sentAt[i] = time.Now()
				id, err := e.sendApp(ctx, b.app, fmt.Sprintf("%s-b-%d", label, i))
				ids[i] = id
				if err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
				}
			}()
			if i%5 == 0 && len(idsA) < nA {
				order := fmt.Sprintf("%s-a-%d", label, i)
				idsA = append(idsA, relay.PaymentID(relay.EnvProduction, "generic", a.app, order))
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := e.sendApp(ctx, a.app, order); err != nil {
						mu.Lock()
						errs++
						mu.Unlock()
					}
				}()
			}
			e.progress("isolation "+label+": send", i+1, n)
		}
		wg.Wait()
		if errs > 0 {
			return Stats{}, fmt.Errorf("isolation %s: %d ingest errors", label, errs)
		}
		if err := e.waitAcked(ctx, ids, "isolation "+label+": B delivered"); err != nil {
			return Stats{}, err
		}
		var lat []time.Duration
		var last time.Time
		for i, id := range ids {
			t, _ := e.firstAck(id)
			lat = append(lat, t.Sub(sentAt[i]))
			if t.After(last) {
				last = t
			}
		}
		st := stats(lat, 0, last.Sub(start))
		// A's server recovers; its notifications end delivered on their ladder.
		e.isoHang.Store(false)
		if err := e.waitAcked(ctx, idsA, "isolation "+label+": A delivered"); err != nil {
			return Stats{}, err
		}
		return st, nil
	}
	healthy, err := run("healthy", false)
	if err != nil {
		return err
	}
	hanging, err := run("hanging", true)
	if err != nil {
		return err
	}
	r.Isolation = Isolation{Healthy: healthy, Hanging: hanging, OfferedPerS: offered, HangAfter: (e.o.IsolationTimeout + time.Second).String()}
	return nil
}
