package chaos_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/local/chaos"
)

// 2. Firestore unavailable (refused, then black-holed): Ingest answers 5xx and stores
// nothing; Deliver answers 5xx and Cloud Tasks redelivers; after recovery all complete.
func TestS2FirestoreUnavailable(t *testing.T) {
	need(t)
	h.hook("fs", failFirst(2, http.StatusServiceUnavailable))
	before := orders("fs-before", 5)
	for _, o := range before {
		ingest(t, "2-firestore-down", o)
	}
	t5xx := h.tasks5xx.Load()
	for _, mode := range []chaos.Mode{chaos.Refuse, chaos.Blackhole} {
		h.fsProxy.SetMode(mode)
		// An outage of about 5 s, shorter than the lease: no delivery caught in it may need a
		// second POST.
		outage := time.Now()
		during := orders(fmt.Sprintf("fs-during%d", mode), 3)
		var wg sync.WaitGroup
		for _, o := range during {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				code := send(o)
				if code < 500 {
					t.Errorf("%s: Ingest with Firestore down answered %d, want 5xx", o, code)
				}
				h.mu.Lock()
				h.summary.Ingest5xx["2-firestore-down"]++
				h.mu.Unlock()
				t.Logf("%s: %d after %v", o, code, time.Since(start).Round(time.Millisecond))
			}()
		}
		wg.Wait()
		time.Sleep(time.Until(outage.Add(5 * time.Second))) // deliveries fail meanwhile
		h.fsProxy.SetMode(chaos.Pass)
		for _, o := range during {
			if _, _, err := h.store.Get(context.Background(), id(o)); err == nil {
				t.Errorf("%s: stored although Ingest answered 5xx", o)
			}
			ingest(t, "2-firestore-down", o) // the provider's retry
		}
		before = append(before, during...)
	}
	waitTerminal(t, before, 60*time.Second)
	check(t, "2-firestore-down", before, false)
	if h.tasks5xx.Load() == t5xx {
		t.Error("Deliver never answered 5xx while Firestore was down")
	}
}
