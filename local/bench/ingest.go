package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"

	"github.com/payrelay/payrelay/local/stack"
)

// ingest: signed payments over HTTP at each concurrency, the game server acknowledging at once;
// end to end from the acknowledgement the client saw to the game server's receipt.
func (e *env) ingest(ctx context.Context, r *Result) error {
	for _, c := range e.o.Concurrency {
		acked := make([]time.Time, e.o.Payments)
		ordersC := make([]string, e.o.Payments)
		var profileDone chan error
		if c == 32 && e.o.ProfileDir != "" {
			profileDone = e.profile(ctx, r)
		}
		cpu0 := e.cpuByProcess()
		lat, errs, wall := e.run(ctx, fmt.Sprintf("ingest c=%d", c), e.o.Payments, c, func(i int) error {
			o := fmt.Sprintf("ing-%d-%d", c, i)
			ordersC[i] = o
			code, body, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBody(o, "6.48", "CNY"))
			acked[i] = time.Now()
			if err != nil {
				return err
			}
			if code != 200 {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
		if profileDone != nil {
			<-profileDone
		}
		r.Ingest[c] = stats(lat, errs, wall)
		if c == 32 {
			for who, sec := range e.cpuByProcess() {
				r.CPUCores[who] = (sec - cpu0[who]) / wall.Seconds()
			}
		}
		e.sent = append(e.sent, ordersC...)
		if err := e.waitDelivered(ctx, ordersC, fmt.Sprintf("deliveries c=%d", c)); err != nil {
			return err
		}
		if c == 32 || (len(e.o.Concurrency) == 1) {
			var e2e []time.Duration
			var first, last time.Time
			e.mu.Lock()
			for i, o := range ordersC {
				hits := e.hits[stack.SamplePaymentID(o)]
				if len(hits) == 0 {
					continue
				}
				e2e = append(e2e, hits[0].At.Sub(acked[i]))
				if first.IsZero() || hits[0].At.Before(first) {
					first = hits[0].At
				}
				if hits[0].At.After(last) {
					last = hits[0].At
				}
			}
			e.mu.Unlock()
			r.EndToEnd = stats(e2e, 0, last.Sub(first))
			if err := e.ingestAlone(ctx, r); err != nil {
				return err
			}
			r.EndToEnd.Rate = 0
			if d := last.Sub(first); d > 0 {
				r.DeliveryRate = float64(len(e2e)) / d.Seconds()
			}
		}
	}
	return nil
}

// ingestAlone runs Ingest at concurrency 32 with the queue paused, so that no delivery shares
// the Firestore emulator and the two cores with it, then lets the deliveries run.
func (e *env) ingestAlone(ctx context.Context, r *Result) error {
	if _, err := e.tasks.PauseQueue(ctx, &cloudtaskspb.PauseQueueRequest{Name: mainQueue}); err != nil {
		return err
	}
	orders := make([]string, e.o.Payments)
	lat, errs, wall := e.run(ctx, "ingest c=32, deliveries paused", e.o.Payments, 32, func(i int) error {
		orders[i] = fmt.Sprintf("alone-%d", i)
		code, body, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBody(orders[i], "6.48", "CNY"))
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	r.IngestAlone = stats(lat, errs, wall)
	e.sent = append(e.sent, orders...)
	if _, err := e.tasks.ResumeQueue(ctx, &cloudtaskspb.ResumeQueueRequest{Name: mainQueue}); err != nil {
		return err
	}
	return e.waitDelivered(ctx, orders, "deliveries after the pause")
}

func (e *env) profile(ctx context.Context, r *Result) chan error {
	done := make(chan error, 1)
	path := filepath.Join(e.o.ProfileDir, "functions-ingest-c32.pprof")
	r.ProfilePath = path
	go func() {
		resp, err := http.Get("http://" + e.debugAddr + "/debug/pprof/profile?seconds=8")
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		os.MkdirAll(e.o.ProfileDir, 0o755)
		b, _ := io.ReadAll(resp.Body)
		done <- os.WriteFile(path, b, 0o644)
	}()
	return done
}
