package stack_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

// A payment's refunds, each sent twice, race its delivery and an operator's forced replay,
// round after round, on the real emulators: every writer re-reads and re-applies on a version
// conflict, so Ingest never answers 5xx (a provider would otherwise wait out its backoff), and
// each refund reaches the game server once, after the payment, in the order of its chain.
func TestRefundsRacingDeliveriesAndReplays(t *testing.T) {
	t.Parallel()
	need(t)
	const rounds, refunds = 8, 5
	for round := range rounds {
		order := fmt.Sprintf("race-%d-%d", round, time.Now().UnixNano())
		id := ingest(t, order)
		var wg sync.WaitGroup
		codes := make(chan int, 2*refunds+1)
		for r := range refunds {
			for range 2 { // the provider's repeat, at the same time
				wg.Add(1)
				go func() {
					defer wg.Done()
					code, _, err := stack.Send(context.Background(), st.FunctionsURL+"/Ingest", stack.IngestSecret,
						stack.SampleRefundBody(order, "6.48", "CNY", fmt.Sprintf("rf-%d", r), "1.00"))
					if err != nil {
						t.Error(err)
					}
					codes <- code
				}()
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Forced replay of the payment while its refunds arrive: 200, or 409 when it is not
			// delivered yet at that moment. Either way it changes the payment under the refunds.
			waitTerminal(t, id, 10*time.Second)
			code, out := adminDo(t, http.MethodPost, "/api/payments/"+id+"/notifications/paid/replay", "application/json",
				`{"reason":"stress","force":true}`, nil)
			if code != http.StatusOK && code != http.StatusConflict {
				t.Errorf("replay answered %d %v", code, out)
			}
		}()
		wg.Wait()
		close(codes)
		for code := range codes {
			if code != http.StatusOK {
				t.Fatalf("round %d: Ingest answered %d to a refund racing other writers", round, code)
			}
		}
		var p *relay.Payment
		for r := range refunds {
			p = waitNotification(t, id, relay.RefundKey(fmt.Sprintf("rf-%d", r)), 20*time.Second)
		}
		// Each refund once, each after a payment.succeeded, in the chain's order.
		var chain []string
		for _, n := range p.Notifications {
			if n.Refund != nil {
				chain = append(chain, n.Refund.ID)
			}
		}
		var posted []string
		paidSeen := false
		for _, h := range st.Game.Hits(id) {
			if h.Payload.Data.Refund == nil {
				paidSeen = true
				continue
			}
			if !paidSeen {
				t.Errorf("round %d: refund %s posted before its payment", round, h.Payload.Data.Refund.RefundID)
			}
			posted = append(posted, h.Payload.Data.Refund.RefundID)
		}
		if fmt.Sprint(posted) != fmt.Sprint(chain) || len(chain) != refunds {
			t.Errorf("round %d: refunds posted %v, the chain holds %v: want each once, in its order", round, posted, chain)
		}
	}
}
