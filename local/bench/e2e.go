package main

// The end-to-end workload: payrelay's sustained delivery against a baseline doing the same
// minimal sequence of emulator operations per payment with no payrelay code.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"cloud.google.com/go/firestore"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/payrelay/payrelay/local/stack"
	"github.com/payrelay/payrelay/local/tasksemu"
)

// e2eQueue is the baseline's own queue, at terraform's defaults for a game's queue like
// payrelay's (defaultRate, defaultConcurrent).
var e2eQueue = stack.QueueName("e2e-baseline", 0)

// rawGameServer answers every POST 200 at once and records when each id arrived.
type rawGameServer struct {
	url string
	srv *http.Server
	mu  sync.Mutex
	at  map[string]time.Time
}

func startRawGame() (*rawGameServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &rawGameServer{url: "http://" + l.Addr().String() + "/payments", at: map[string]time.Time{}}
	g.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("webhook-id")
		io.Copy(io.Discard, r.Body)
		g.mu.Lock()
		if _, seen := g.at[id]; !seen {
			g.at[id] = time.Now()
		}
		g.mu.Unlock()
		w.Write([]byte(`{"ok":true}`))
	})}
	go g.srv.Serve(l)
	return g, nil
}

func (g *rawGameServer) arrived(id string) (time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.at[id]
	return t, ok
}

// endToEnd runs the minimal baseline, then payrelay, each sending E2EPayments at concurrency
// 32 and measured the same way: from the moment the payment is stored and enqueued (the
// provider's acknowledgement) to the game server's receipt, and delivered/s from the first
// send to the last receipt.
//
// The baseline per payment: Firestore create; Cloud Tasks create; the emulator dispatches to a
// bare HTTP handler, which reads the document, updates it conditioned on its update time (the
// claim), POSTs to the game server, and updates it again conditioned on the claim's update time
// (the record). Its game server answers at once and verifies nothing; payrelay's demo game
// server checks the HMAC signature.
func (e *env) endToEnd(ctx context.Context, r *Result) error {
	fsc, err := firestore.NewClient(ctx, stack.ProjectID)
	if err != nil {
		return err
	}
	defer fsc.Close()
	coll := fsc.Collection(e.collection + "-e2e-baseline")
	raw, err := startRawGame()
	if err != nil {
		return err
	}
	defer raw.srv.Close()
	client := &http.Client{Timeout: 10 * time.Second}
	deliver := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var msg struct{ ID string }
		if err := json.NewDecoder(io.LimitReader(req.Body, 4<<10)).Decode(&msg); err != nil {
			w.WriteHeader(http.StatusOK)
			return
		}
		doc := coll.Doc(msg.ID)
		snap, err := doc.Get(req.Context())
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		claim, err := doc.Update(req.Context(), []firestore.Update{{Path: "state", Value: "delivering"}}, firestore.LastUpdateTime(snap.UpdateTime))
		if err != nil {
			w.WriteHeader(http.StatusConflict)
			return
		}
		post, _ := http.NewRequestWithContext(req.Context(), http.MethodPost, raw.url, bytes.NewReader([]byte(`{"type":"payment.succeeded"}`)))
		post.Header.Set("webhook-id", msg.ID)
		resp, err := client.Do(post)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if _, err := doc.Update(req.Context(), []firestore.Update{{Path: "state", Value: "delivered"}}, firestore.LastUpdateTime(claim.UpdateTime)); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go deliver.Serve(l)
	defer deliver.Close()
	deliverURL := "http://" + l.Addr().String() + "/deliver"
	tc, err := tasksemu.NewClient(ctx, e.tasksAddr)
	if err != nil {
		return err
	}
	defer tc.Close()

	n := e.o.E2EPayments
	ids := make([]string, n)
	acked := make([]time.Time, n)
	start := time.Now()
	_, errs, _ := e.run(ctx, "e2e: minimal baseline", n, 32, func(i int) error {
		id := fmt.Sprintf("e2e-base-%d", i)
		ids[i] = id
		if _, err := coll.Doc(id).Create(ctx, map[string]any{"order_id": id, "amount_minor": 648, "currency": "CNY", "state": "pending", "received_at": time.Now()}); err != nil {
			return err
		}
		_, err := tc.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: e2eQueue, Task: &cloudtaskspb.Task{
			Name: e2eQueue + "/tasks/" + id + "-1", ScheduleTime: timestamppb.Now(),
			MessageType: &cloudtaskspb.Task_HttpRequest{HttpRequest: &cloudtaskspb.HttpRequest{
				Url: deliverURL, HttpMethod: cloudtaskspb.HttpMethod_POST, Body: []byte(`{"id":"` + id + `"}`)}},
		}})
		acked[i] = time.Now()
		return err
	})
	if errs > 0 {
		return fmt.Errorf("e2e baseline: %d errors", errs)
	}
	arrival := func(i int) (time.Time, bool) { return raw.arrived(ids[i]) }
	if r.E2EBaseline, err = e.e2eStats(ctx, "e2e: minimal baseline deliveries", n, start, acked, arrival); err != nil {
		return err
	}

	orders := make([]string, n)
	start = time.Now()
	_, errs, _ = e.run(ctx, "e2e: payrelay", n, 32, func(i int) error {
		orders[i] = fmt.Sprintf("e2e-relay-%d", i)
		code, body, err := stack.Send(ctx, e.ingestURL(), stack.IngestSecret, stack.SampleBody(orders[i], "6.48", "CNY"))
		acked[i] = time.Now()
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	e.sent = append(e.sent, orders...)
	if errs > 0 {
		return fmt.Errorf("e2e payrelay: %d ingest errors", errs)
	}
	arrival = func(i int) (time.Time, bool) { return e.firstAck(stack.SamplePaymentID(orders[i])) }
	r.E2ERelay, err = e.e2eStats(ctx, "e2e: payrelay deliveries", n, start, acked, arrival)
	return err
}

// e2eStats waits for every arrival and summarizes latency (arrival minus acknowledgement) and
// delivered/s (all of them, from the first send to the last arrival).
func (e *env) e2eStats(ctx context.Context, label string, n int, start time.Time, acked []time.Time, arrival func(int) (time.Time, bool)) (Stats, error) {
	deadline := time.Now().Add(e.o.Timeout)
	for {
		got := 0
		for i := range n {
			if _, ok := arrival(i); ok {
				got++
			}
		}
		e.progress(label, got, n)
		if got == n {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return Stats{}, fmt.Errorf("%s: %d of %d within %v", label, got, n, e.o.Timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var lat []time.Duration
	var last time.Time
	for i := range n {
		t, _ := arrival(i)
		lat = append(lat, t.Sub(acked[i]))
		if t.After(last) {
			last = t
		}
	}
	return stats(lat, 0, last.Sub(start)), nil
}
