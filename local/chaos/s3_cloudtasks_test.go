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

// 3. The Cloud Tasks emulator unreachable during Ingest, and during Deliver's enqueue of the
// next attempt: no payment is left pending without a task once it is back.
func TestS3CloudTasksUnavailable(t *testing.T) {
	need(t)
	h.tasksProxy.SetMode(chaos.Refuse)
	ingestOrders := orders("ctin", 3)
	for _, o := range ingestOrders {
		if code := send(o); code < 500 {
			t.Errorf("%s: Ingest with Cloud Tasks down answered %d, want 5xx", o, code)
		}
		h.summary.Ingest5xx["3-cloudtasks-down"]++
	}
	h.tasksProxy.SetMode(chaos.Pass)
	for _, o := range ingestOrders {
		ingest(t, "3-cloudtasks-down", o) // the provider's retry creates the missing task
	}
	// Deliver: attempt 1 fails, and the queue goes down just before Deliver enqueues attempt 2.
	var downOnce sync.Once
	h.hook("ctdel", func(_ gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
		if attempt == 1 {
			downOnce.Do(func() {
				h.tasksProxy.SetMode(chaos.Refuse)
				time.AfterFunc(1500*time.Millisecond, func() { h.tasksProxy.SetMode(chaos.Pass) })
			})
			return gameserver.Answer{Status: http.StatusBadGateway}, true
		}
		return gameserver.Answer{Status: http.StatusOK}, true
	})
	deliverOrders := orders("ctdel", 3)
	for _, o := range deliverOrders {
		ingest(t, "3-cloudtasks-down", o)
	}
	all := append(ingestOrders, deliverOrders...)
	waitTerminal(t, all, 60*time.Second)
	ps := check(t, "3-cloudtasks-down", all, false)
	for _, o := range deliverOrders {
		if p := ps[o]; p != nil && (p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 2) {
			t.Errorf("%s: %s after %d attempts, want delivered at attempt 2", o, p.Paid().State, len(p.Paid().Attempts))
		}
	}
}
