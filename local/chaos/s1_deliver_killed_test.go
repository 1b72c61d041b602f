package chaos_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/local/chaos"
	"github.com/payrelay/payrelay/local/gameserver"
)

// 1. Deliver dies mid-attempt: after claiming (before its POST reaches the game server), and
// after the game server got the POST (before the result was recorded).
func TestS1DeliverKilledMidAttempt(t *testing.T) {
	need(t)
	// a) Killed after the claim: the game server's port black-holes, so Deliver is stuck
	// connecting when it dies; its POST never arrives.
	h.gameProxy.SetMode(chaos.Blackhole)
	ingest(t, "1-deliver-killed", "killclaim-1")
	select {
	case <-h.gameProxy.Accepted():
	case <-time.After(10 * time.Second):
		t.Fatal("Deliver never tried the game server")
	}
	// A refund arrives while the payment's attempt is claimed: it waits behind it.
	ingestRefund(t, "1-deliver-killed", "killclaim-1", "r1")
	h.killFn()
	h.gameProxy.SetMode(chaos.Pass)
	if err := h.startFn(); err != nil {
		t.Fatal(err)
	}
	// b) Killed after the game server got the POST: the game server holds its answer.
	got := make(chan struct{}, 1)
	var once sync.Once
	h.hook("killpost", func(_ gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
		first := false
		once.Do(func() { first = true })
		if !first {
			return gameserver.Answer{Status: http.StatusOK}, true
		}
		return gameserver.Answer{Status: 0, Custom: func(w http.ResponseWriter, r *http.Request) {
			got <- struct{}{}
			<-r.Context().Done() // until Deliver dies
		}}, true
	})
	ingest(t, "1-deliver-killed", "killpost-1")
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the game server never got the POST")
	}
	ingestRefund(t, "1-deliver-killed", "killpost-1", "r1")
	h.killFn()
	if err := h.startFn(); err != nil {
		t.Fatal(err)
	}
	all := []string{"killclaim-1", "killpost-1"}
	waitTerminal(t, all, 30*time.Second)
	ps := check(t, "1-deliver-killed", all, true)
	for o, wantPosts := range map[string]int{"killclaim-1": 1, "killpost-1": 2} {
		p := ps[o]
		if p == nil {
			continue
		}
		if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 2 || p.Paid().Attempts[0].ErrorClass != relay.ErrorLost || !p.Paid().Attempts[1].Succeeded() {
			t.Errorf("%s: %s with history %+v; want a lost attempt 1, then attempt 1 delivered", o, p.Paid().State, p.Paid().Attempts)
		}
		if n := len(h.game.Hits(p.ID)); n != wantPosts+1 {
			t.Errorf("%s: the game server saw %d POSTs, want %d of the payment and 1 of its refund", o, n, wantPosts)
		}
		if r := p.RefundByID("r1"); r == nil || r.State != relay.StateDelivered || len(r.Attempts) != 1 {
			t.Errorf("%s: refund %+v; want delivered at its first attempt, after the payment", o, r)
		}
	}
}
