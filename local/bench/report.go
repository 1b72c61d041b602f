package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

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
