package chaos_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/local/gameserver"
)

// 11. The dispatcher (the Cloud Tasks emulator) dies while Deliver's POSTs are in flight: each
// attempt owns its deadline, so every one is recorded with what the game server answered (200,
// after the dispatcher was gone), delivered at attempt 1, and no notification is POSTed twice.
func TestS11DispatcherKilledMidPost(t *testing.T) {
	need(t)
	const scenario = "11-dispatcher-killed"
	// The game server takes 600 ms to answer (inside the 1 s game timeout): long enough for the
	// dispatcher to die meanwhile.
	h.hook("inflight", func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		return gameserver.Answer{Status: http.StatusOK, Delay: 600 * time.Millisecond}, true
	})
	all := orders("inflight", 6)
	for _, o := range all {
		ingest(t, scenario, o)
	}
	// Wait until every POST reached the game server (and is still being answered).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		reached := 0
		for _, o := range all {
			if len(h.game.Hits(id(o))) > 0 {
				reached++
			}
		}
		if reached == len(all) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d POSTs reached the game server", reached, len(all))
		}
	}
	// The dispatcher dies: a Close that does not wait cancels its in-flight requests.
	dead, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	h.tasks.Close(dead)
	cancel()
	time.Sleep(800 * time.Millisecond) // the game server answers; Deliver records
	if err := h.startTasks(false); err != nil {
		t.Fatal(err)
	}
	waitTerminal(t, all, 30*time.Second)
	ps := check(t, scenario, all, false)
	recorded := 0
	for o, p := range ps {
		n := p.Paid()
		if n.State != relay.StateDelivered || len(n.Attempts) != 1 || n.Attempts[0].StatusCode != http.StatusOK {
			t.Errorf("%s: %s, attempts %+v; want delivered at attempt 1 with the game server's 200", o, n.State, n.Attempts)
			continue
		}
		recorded++
	}
	h.mu.Lock()
	h.summary.InFlightRecorded += recorded
	h.mu.Unlock()
}
