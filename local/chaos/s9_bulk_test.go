package chaos_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

// 9. A bulk replay of 1,000 failed notifications: the process running it is killed mid-way
// and restarted; the job finishes, and every notification is replayed exactly once and
// delivered.
func TestS9BulkReplaySurvivesAKill(t *testing.T) {
	need(t)
	const n = 1000
	ctx := context.Background()
	// As in production, the sweeper runs: a replay recorded by the killed step whose task it
	// had not yet enqueued is found overdue and enqueued.
	stopSweeper := sweeper(t, 500*time.Millisecond)
	defer stopSweeper()
	// 1,000 payments that ended failed (seeded in the store: walking 8,000 attempts would only
	// make the test slower), received after everything earlier scenarios left failed.
	from := time.Now().UTC().Truncate(time.Microsecond)
	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			order := fmt.Sprintf("replayjob-%d", i)
			now := time.Now().UTC().Truncate(time.Microsecond)
			p := &relay.Payment{ID: id(order), Provider: "generic", Environment: relay.EnvProduction, Merchant: stack.SampleApp, OrderID: order, TransactionID: "txn-" + order,
				AmountMinor: 648, Currency: "CNY", PaidAt: now, AppID: stack.SampleApp, Game: stack.GameA, ReceivedAt: now, UpdatedAt: now,
				Notifications: []relay.Notification{{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded, State: relay.StateFailed, Attempt: 8, CreatedAt: now,
					Reason: "the ladder is exhausted after 8 attempts"}}}
			ids[i] = p.ID
			if _, _, _, err := h.store.Create(ctx, p); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("seeding: %v", err)
	}
	admin := fmt.Sprintf("http://127.0.0.1:%d", h.adminPort)
	body, _ := json.Marshal(map[string]any{"state": "failed", "game": stack.GameA, "from": from, "reason": "game server back after the outage"})
	resp, err := http.Post(admin+"/api/jobs/replay", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var job relay.Job
	json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || job.ID == "" {
		t.Fatalf("start = %d %+v", resp.StatusCode, job)
	}
	progress := func() relay.Job {
		var j relay.Job
		if resp, err := http.Get(admin + "/api/jobs/" + job.ID); err == nil {
			json.NewDecoder(resp.Body).Decode(&j)
			resp.Body.Close()
		}
		return j
	}
	// Kill the process running the job once it is a few pages in, then start it again.
	deadline := time.Now().Add(60 * time.Second)
	for progress().Step < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the job did not reach step 3 in 60 s: %+v\n%s", progress(), tail(h.fnLog))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // into step 3's page (a step takes at least 1 s)
	killedAt := progress()
	h.killFn()
	if err := h.startFn(); err != nil {
		t.Fatal(err)
	}
	var j relay.Job
	for j = progress(); j.State != relay.JobDone; j = progress() {
		if time.Now().After(deadline.Add(60 * time.Second)) {
			t.Fatalf("the job did not finish: %+v\n%s", j, tail(h.fnLog))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("killed during step %d (%d replayed and recorded before it); finished at step %d: %d replayed, %d skipped, %d refused",
		killedAt.Step, killedAt.Replayed, j.Step, j.Replayed, j.Skipped, j.Refused)
	if j.Replayed >= n {
		t.Errorf("the job counted all %d replays: the kill did not interrupt a step", n)
	}
	// Every notification: replayed exactly once, by this job, and delivered on its new ladder.
	for time.Now().Before(deadline.Add(90 * time.Second)) {
		pending := 0
		for _, pid := range ids {
			if p, _, err := h.store.Get(ctx, pid); err != nil || p.Paid().State != relay.StateDelivered {
				pending++
			}
		}
		if pending == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	twice := 0
	for _, pid := range ids {
		p, _, err := h.store.Get(ctx, pid)
		if err != nil {
			t.Fatalf("%s: %v", pid, err)
		}
		paid := p.Paid()
		replays := 0
		for _, a := range paid.Actions {
			if a.Kind == relay.ActionReplay && a.Job == job.ID {
				replays++
			}
		}
		if replays > 1 {
			twice++
		}
		if replays != 1 || paid.Generation != 1 || paid.State != relay.StateDelivered {
			t.Errorf("%s: %d replays by the job, generation %d, %s; want once, delivered", p.OrderID, replays, paid.Generation, paid.State)
		}
	}
	h.mu.Lock()
	h.summary.BulkReplayed, h.summary.BulkReplayedTwice = n, twice
	h.mu.Unlock()
}
