package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestBenchSmall runs every workload at a small size: the command keeps working, loses
// nothing, and counts exactly the operations the cost targets allow. Speeds are printed, never
// asserted.
func TestBenchSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole stack")
	}
	host := os.Getenv("FIRESTORE_EMULATOR_HOST")
	if host == "" && os.Getenv("CI") == "" {
		t.Skip("set FIRESTORE_EMULATOR_HOST (or CI, to start one) to run the bench smoke test")
	}
	o := Options{Payments: 40, Concurrency: []int{1, 32}, LadderPayments: 5, Compression: 20000, CostPayments: 20,
		Timeout: 2 * time.Minute, FirestoreHost: host, ProfileDir: t.TempDir(),
		ShardPayments: 60, IsolationPayments: 30, IsolationRate: 60, IsolationTimeout: time.Second, E2EPayments: 40}
	r, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r.Print(&out)
	t.Log(out.String())
	// ingest at 2 levels, ingest alone, e2e, ladder, 2 cost runs, warm-up; sharding 60 per queue
	// for K = 1, 2, 4; isolation 30 to B and 6 to A, twice.
	want := 40*2 + 40 + 40 + 5 + 20*2 + 1 + 60*(1+2+4) + 2*(30+6)
	if r.Lost != 0 || r.Sent != want {
		t.Errorf("sent %d, lost %d; want %d sent and none lost", r.Sent, r.Lost, want)
	}
	for _, k := range []int{1, 2, 4} {
		if s := r.Sharding[k]; s.N != 60*k || s.DeliveredPer <= 0 {
			t.Errorf("sharding K=%d: %+v", k, s)
		}
	}
	if r.Isolation.Healthy.N != 30 || r.Isolation.Hanging.N != 30 || r.E2EBaseline.N != 40 || r.E2ERelay.N != 40 {
		t.Errorf("isolation %+v, e2e baseline %+v, payrelay %+v", r.Isolation, r.E2EBaseline, r.E2ERelay)
	}
	if r.Terminal["failed"] != 5 {
		t.Errorf("%d failed, want the 5 ladder payments", r.Terminal["failed"])
	}
	if r.CostFirst != (Cost{1, 3, 1}) || r.CostFurther != (Cost{1, 2, 1}) {
		t.Errorf("cost first %+v, further %+v; want exactly {1 3 1} and {1 2 1}", r.CostFirst, r.CostFurther)
	}
	// A refund of a delivered payment: Ingest reads the payment and writes the refund onto it
	// (1 read, 1 write, its task), then Deliver's read, claim and record.
	if r.CostRefund != (Cost{2, 3, 1}) {
		t.Errorf("cost of a refund %+v; want exactly {2 3 1}", r.CostRefund)
	}
	if len(r.Ladder) != 7 {
		t.Errorf("ladder lateness for %d attempts, want 7 (attempts 2-8)", len(r.Ladder))
	}
	for _, s := range []Stats{r.Baseline[32], r.Ingest[32], r.IngestAlone} {
		if s.N != 40 || s.Errors != 0 || s.Rate <= 0 {
			t.Errorf("stats %+v: want 40 requests, no error", s)
		}
	}
	if fi, err := os.Stat(r.ProfilePath); err != nil || fi.Size() == 0 {
		t.Errorf("no CPU profile at %q: %v", r.ProfilePath, err)
	}
	// The conflicts retried are counted over the run, beside the writes they are a share of.
	if r.Writes == 0 || r.ConflictsRetried < 0 || !strings.Contains(out.String(), "write conflicts retried") {
		t.Errorf("conflicts retried %d of %d writes, or not in the table", r.ConflictsRetried, r.Writes)
	}
	if !strings.Contains(out.String(), "targets:") {
		t.Error("the table lacks the targets")
	}
}
