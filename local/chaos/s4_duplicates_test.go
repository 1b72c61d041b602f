package chaos_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

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
