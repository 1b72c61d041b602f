package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

func (e *env) counters() (counters, error) {
	resp, err := http.Get("http://" + e.debugAddr + "/debug/counters")
	if err != nil {
		return counters{}, err
	}
	defer resp.Body.Close()
	var c counters
	return c, json.NewDecoder(resp.Body).Decode(&c)
}

// cost counts operations per payment delivered first time, and per further attempt.
func (e *env) cost(ctx context.Context, r *Result) error {
	// measure sends one notification for each of CostPayments orders: the payment, or with
	// refund a refund of the (delivered) payment, and counts the operations until the game
	// server has acknowledged them all.
	measure := func(prefix string, refund bool) (counters, float64, error) {
		var orders []string
		for i := range e.o.CostPayments {
			orders = append(orders, fmt.Sprintf("%s-%d", prefix, i))
		}
		before, err := e.counters()
		if err != nil {
			return counters{}, 0, err
		}
		cpu0 := e.cpuSeconds()
		label, typ := "cost: "+prefix, string(relay.TypePaymentSucceeded)
		if refund {
			label, typ = "cost: refunds of "+prefix, string(relay.TypePaymentRefunded)
		}
		_, errs, _ := e.run(ctx, label, len(orders), 8, func(i int) error {
			body := stack.SampleBody(orders[i], "6.48", "CNY")
			if refund {
				body = stack.SampleRefundBody(orders[i], "6.48", "CNY", "r1", "1.00")
			}
			code, _, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, body)
			if err == nil && code != 200 {
				err = fmt.Errorf("status %d", code)
			}
			return err
		})
		if errs > 0 {
			return counters{}, 0, fmt.Errorf("cost: %d ingest errors", errs)
		}
		if !refund {
			e.sent = append(e.sent, orders...)
		}
		if err := e.waitAcknowledged(ctx, orders, label+": deliveries", typ); err != nil {
			return counters{}, 0, err
		}
		time.Sleep(300 * time.Millisecond) // the last records land
		after, err := e.counters()
		cpu := e.cpuSeconds() - cpu0
		return counters{after.Reads - before.Reads, after.Writes - before.Writes, after.Tasks - before.Tasks, after.Conflicts - before.Conflicts}, cpu, err
	}
	first, cpu, err := measure("cost1", false)
	if err != nil {
		return err
	}
	second, _, err := measure("cost2", false)
	if err != nil {
		return err
	}
	refund, _, err := measure("cost1", true)
	if err != nil {
		return err
	}
	k := float64(e.o.CostPayments)
	r.CostFirst = Cost{float64(first.Reads) / k, float64(first.Writes) / k, float64(first.Tasks) / k}
	r.CostFurther = Cost{float64(second.Reads-first.Reads) / k, float64(second.Writes-first.Writes) / k, float64(second.Tasks-first.Tasks) / k}
	r.CostRefund = Cost{float64(refund.Reads) / k, float64(refund.Writes) / k, float64(refund.Tasks) / k}
	r.CPUPer1000 = cpu / k * 1000
	r.PeakRSSMB = e.peakRSSMB()
	if c, err := e.counters(); err == nil {
		r.ConflictsRetried, r.Writes = c.Conflicts, c.Writes
	}
	return nil
}
