package chaos_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

// sweeper calls the Sweep function every interval until stop is called, as Cloud Scheduler
// does every minute in the cloud, and counts what it healed. It stops when its test ends too,
// failed or not: a sweeper left running heals the next scenario's notifications and hides what
// that scenario's own sweeper finds (a fatal in scenario 10 once made scenario 8's count 0).
func sweeper(t *testing.T, every time.Duration) (stop func() int) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	healed := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/Sweep", h.fnPort), "application/json", nil)
				if err != nil {
					continue // the functions are being restarted
				}
				if resp.StatusCode != http.StatusOK {
					// No sweep may give up: one bad item never blocks the walk (invariant 12).
					h.mu.Lock()
					h.summary.SweepsFailed++
					h.mu.Unlock()
				}
				var out struct{ Healed int }
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if jsonUnmarshal(b, &out) == nil {
					mu.Lock()
					healed += out.Healed
					mu.Unlock()
				}
			}
		}
	}()
	var once sync.Once
	stop = func() int {
		once.Do(func() { close(done) })
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return healed
	}
	t.Cleanup(func() { stop() })
	return stop
}

// 8. The queue is purged by mistake mid-ladder: every task waiting in it is lost. The sweeper
// finds the notifications overdue and enqueues them again under fresh names; every payment and
// refund still ends delivered (or failed after its whole ladder), none lost.
func TestS8QueuePurgedSweeperHeals(t *testing.T) {
	need(t)
	stopSweeper := sweeper(t, 500*time.Millisecond)
	// Attempts 1-5 fail, so after the purge every payment waits on the ladder with a task
	// scheduled ahead; refunds wait held behind them.
	h.hook("purge", failFirst(5, http.StatusServiceUnavailable))
	all := orders("purge", 10)
	for _, o := range all {
		ingest(t, "8-queue-purged", o)
		ingestRefund(t, "8-queue-purged", o, "r1")
	}
	time.Sleep(400 * time.Millisecond) // mid-ladder: attempts 4 to 6 are scheduled ahead
	if _, err := h.tasks.PurgeQueue(context.Background(), &cloudtaskspb.PurgeQueueRequest{Name: stack.QueueName(stack.GameA, 0)}); err != nil {
		t.Fatal(err)
	}
	purged := time.Now()
	waitTerminal(t, all, 60*time.Second)
	healed := stopSweeper()
	ps := check(t, "8-queue-purged", all, false)
	if healed == 0 {
		t.Error("the sweeper healed nothing, yet every payment completed: was anything lost?")
	}
	h.mu.Lock()
	h.summary.Healed += healed
	h.mu.Unlock()
	t.Logf("the sweeper healed %d notifications; all settled %v after the purge", healed, time.Since(purged).Round(time.Millisecond))
	for o, p := range ps {
		if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 6 {
			t.Errorf("%s: %s after %d attempts, want delivered at attempt 6", o, p.Paid().State, len(p.Paid().Attempts))
		}
		if r := p.RefundByID("r1"); r == nil || r.State != relay.StateDelivered {
			t.Errorf("%s: refund %+v, want delivered after its payment", o, r)
		}
	}
}
