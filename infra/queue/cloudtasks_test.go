package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/queue"
	"github.com/payrelay/payrelay/local/tasksemu"
)

func emulator(t *testing.T) (*tasksemu.Server, string) {
	t.Helper()
	srv, err := tasksemu.New(tasksemu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	return srv, addr
}

func TestEnqueueDispatchesSignedTask(t *testing.T) {
	t.Parallel()
	srv, addr := emulator(t)
	got := make(chan *http.Request, 1)
	bodies := make(chan []byte, 1)
	deliver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r
		bodies <- b
	}))
	t.Cleanup(deliver.Close)
	q, err := queue.NewCloudTasks(context.Background(), queue.Options{
		Queue: tasksemu.DefaultQueue, DeliverURL: deliver.URL + "/Deliver", EmulatorHost: addr,
		ServiceAccount: "invoker@p.iam.gserviceaccount.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	at := time.Now().Add(200 * time.Millisecond)
	task := relay.Task{PaymentID: "abc123", Key: relay.KeyPaid, Attempt: 3, At: at}
	if err := q.Enqueue(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(context.Background(), task); !errors.Is(err, relay.ErrTaskExists) {
		t.Errorf("second Enqueue = %v, want ErrTaskExists", err)
	}
	var r *http.Request
	select {
	case r = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("task never dispatched")
	}
	if time.Now().Before(at) {
		t.Error("dispatched before its schedule time")
	}
	var msg relay.TaskMessage
	if err := json.Unmarshal(<-bodies, &msg); err != nil || msg != (relay.TaskMessage{PaymentID: "abc123", Notification: relay.KeyPaid, Attempt: 3}) {
		t.Errorf("task body = %+v, %v", msg, err)
	}
	if name := r.Header.Get("X-CloudTasks-TaskName"); name != "abc123-paid-3" {
		t.Errorf("task name = %q, want abc123-paid-3", name)
	}
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	claims, err := tasksemu.VerifyIDToken(tok, srv.PublicKey(), deliver.URL+"/Deliver", time.Now())
	if err != nil || claims.Email != "invoker@p.iam.gserviceaccount.com" {
		t.Errorf("OIDC token: %+v, %v; want audience = the Deliver URL, email = the invoker", claims, err)
	}
}

func TestEnqueueClassifiesErrors(t *testing.T) {
	t.Parallel()
	_, addr := emulator(t)
	ctx := context.Background()
	missing, err := queue.NewCloudTasks(ctx, queue.Options{Queue: "projects/p/locations/l/queues/missing", DeliverURL: "http://127.0.0.1:1/", EmulatorHost: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	if err := missing.Enqueue(ctx, relay.Task{PaymentID: "x", Key: relay.KeyPaid, Attempt: 1, At: time.Now()}); err == nil || relay.Retryable(err) {
		t.Errorf("Enqueue on a missing queue = %v, want a permanent error", err)
	}
	// A port nobody listens on: the queue is unavailable, which is worth retrying.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	down, err := queue.NewCloudTasks(ctx, queue.Options{Queue: tasksemu.DefaultQueue, DeliverURL: "http://127.0.0.1:1/", EmulatorHost: dead})
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := down.Enqueue(cctx, relay.Task{PaymentID: "x", Key: relay.KeyPaid, Attempt: 1, At: time.Now()}); !relay.Retryable(err) {
		t.Errorf("Enqueue with the queue down = %v, want a retryable error", err)
	}
	if _, err := queue.NewCloudTasks(ctx, queue.Options{Queue: tasksemu.DefaultQueue, DeliverURL: "http://x/", DispatchDeadline: time.Second}); err == nil {
		t.Error("a 1s dispatch deadline was accepted")
	}
}
