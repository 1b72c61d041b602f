package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/payrelay/payrelay/local/stack"
	"github.com/payrelay/payrelay/schedule"
)

// ladderWorkload: many payments at once, the game server always failing, the whole ladder.
func (e *env) ladderWorkload(ctx context.Context, r *Result) error {
	if e.o.LadderPayments == 0 {
		return nil
	}
	var orders []string
	for i := range e.o.LadderPayments {
		orders = append(orders, fmt.Sprintf("lad-%d", i))
	}
	_, errs, _ := e.run(ctx, "ladder: ingest", len(orders), 16, func(i int) error {
		code, _, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBody(orders[i], "6.48", "CNY"))
		if err == nil && code != 200 {
			err = fmt.Errorf("status %d", code)
		}
		return err
	})
	if errs > 0 {
		return fmt.Errorf("ladder: %d ingest errors", errs)
	}
	e.sent = append(e.sent, orders...)
	total := e.ladder.Elapsed(e.ladder.Attempts())
	deadline := time.Now().Add(total + e.o.Timeout)
	want := len(orders) * e.ladder.Attempts()
	for {
		n := 0
		e.mu.Lock()
		for _, o := range orders {
			n += len(e.hits[stack.SamplePaymentID(o)])
		}
		e.mu.Unlock()
		e.progress(fmt.Sprintf("ladder: attempts (%s)", total.Round(time.Second)), min(n, want), want)
		if n >= want {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			fmt.Fprintln(e.o.Progress)
			return fmt.Errorf("ladder: %d of %d attempts within %v", n, want, total+e.o.Timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // the last records land
	byAttempt := map[int]*struct {
		dispatch, delivery []float64
		deliveryAbs        []time.Duration
	}{}
	real := schedule.Default()
	for _, o := range orders {
		p, _, err := e.store.Get(ctx, stack.SamplePaymentID(o))
		if err != nil {
			return err
		}
		for i := 1; i < len(p.Paid().Attempts); i++ {
			prev, cur := p.Paid().Attempts[i-1], p.Paid().Attempts[i]
			n := cur.Number
			step := e.ladder.Wait(n)
			planned := prev.StartedAt.Add(prev.Duration).Add(step)
			b := byAttempt[n]
			if b == nil {
				b = &struct {
					dispatch, delivery []float64
					deliveryAbs        []time.Duration
				}{}
				byAttempt[n] = b
			}
			late := cur.StartedAt.Sub(planned)
			b.delivery = append(b.delivery, float64(late)/float64(step))
			b.deliveryAbs = append(b.deliveryAbs, late)
			e.mu.Lock()
			d, ok := e.dispatches[fmt.Sprintf("%s/tasks/%s-%d", mainQueue, p.ID, n)]
			e.mu.Unlock()
			if ok {
				b.dispatch = append(b.dispatch, float64(d.SentAt.Sub(d.ETA))/float64(step))
			}
		}
	}
	for n := 2; n <= e.ladder.Attempts(); n++ {
		b := byAttempt[n]
		if b == nil {
			continue
		}
		slices.Sort(b.dispatch)
		slices.Sort(b.delivery)
		slices.Sort(b.deliveryAbs)
		l := Lateness{Attempt: n, StepMS: float64(e.ladder.Wait(n).Microseconds()) / 1000, N: len(b.delivery)}
		if len(b.dispatch) > 0 {
			l.DispatchP50, l.DispatchP99, l.DispatchMax = pct(b.dispatch, .5), pct(b.dispatch, .99), b.dispatch[len(b.dispatch)-1]
		}
		l.DeliveryP50, l.DeliveryP99, l.DeliveryMax = pct(b.delivery, .5), pct(b.delivery, .99), b.delivery[len(b.delivery)-1]
		p99 := pct(b.deliveryAbs, .99)
		l.DeliveryP99MS = float64(p99.Microseconds()) / 1000
		l.RealStepP99Frac = float64(p99) / float64(real.Wait(n))
		r.Ladder = append(r.Ladder, l)
	}
	return nil
}
