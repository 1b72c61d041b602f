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
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
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

type counters struct {
	Reads     int64 `json:"firestore_reads"`
	Writes    int64 `json:"firestore_writes"`
	Tasks     int64 `json:"tasks_created"`
	Conflicts int64 `json:"conflicts_retried"`
}
