package chaos_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// 6. The Cloud Tasks emulator restarts with its data directory while tasks are scheduled:
// none lost, none dispatched before its time.
func TestS6CloudTasksRestart(t *testing.T) {
	need(t)
	h.hook("rs", failFirst(7, http.StatusServiceUnavailable))
	all := orders("rs", 10)
	for _, o := range all {
		ingest(t, "6-tasks-restart", o)
	}
	time.Sleep(1200 * time.Millisecond) // mid-ladder: attempts 7 and 8 are scheduled ahead
	h.stopTasks()
	time.Sleep(800 * time.Millisecond)
	if err := h.startTasks(false); err != nil {
		t.Fatal(err)
	}
	waitTerminal(t, all, 30*time.Second)
	for o, p := range check(t, "6-tasks-restart", all, false) {
		if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 8 {
			t.Errorf("%s: %s after %d attempts, want delivered at attempt 8", o, p.Paid().State, len(p.Paid().Attempts))
		}
		hits := h.game.Hits(p.ID)
		for i := 1; i < len(hits); i++ {
			if gap, want := hits[i].At.Sub(hits[i-1].At), ladder.Wait(hits[i].Attempt); gap < want {
				t.Errorf("%s: attempt %d came %v after attempt %d, before the ladder's %v", o, hits[i].Attempt, gap, hits[i-1].Attempt, want)
			}
		}
	}
}
