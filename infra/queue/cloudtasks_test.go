package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cloudtasks "cloud.google.com/go/cloudtasks/apiv2"
	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"

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
		Queues: map[string][]string{"sword": {tasksemu.DefaultQueue}}, DeliverURL: deliver.URL + "/Deliver", EmulatorHost: addr,
		ServiceAccount: "invoker@p.iam.gserviceaccount.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	at := time.Now().Add(200 * time.Millisecond)
	task := relay.Task{PaymentID: "abc123", Game: "sword", Environment: relay.EnvProduction, Key: relay.KeyPaid, Attempt: 3, At: at}
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
	missing, err := queue.NewCloudTasks(ctx, queue.Options{Queues: map[string][]string{"sword": {"projects/p/locations/l/queues/missing"}}, DeliverURL: "http://127.0.0.1:1/", EmulatorHost: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	if err := missing.Enqueue(ctx, relay.Task{PaymentID: "x", Game: "sword", Environment: relay.EnvProduction, Key: relay.KeyPaid, Attempt: 1, At: time.Now()}); err == nil || relay.Retryable(err) {
		t.Errorf("Enqueue on a missing queue = %v, want a permanent error", err)
	}
	// A port nobody listens on: the queue is unavailable, which is worth retrying.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	down, err := queue.NewCloudTasks(ctx, queue.Options{Queues: map[string][]string{"sword": {tasksemu.DefaultQueue}}, DeliverURL: "http://127.0.0.1:1/", EmulatorHost: dead})
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := down.Enqueue(cctx, relay.Task{PaymentID: "x", Game: "sword", Environment: relay.EnvProduction, Key: relay.KeyPaid, Attempt: 1, At: time.Now()}); !relay.Retryable(err) {
		t.Errorf("Enqueue with the queue down = %v, want a retryable error", err)
	}
	if _, err := queue.NewCloudTasks(ctx, queue.Options{Queues: map[string][]string{"sword": {tasksemu.DefaultQueue}}, DeliverURL: "http://x/", DispatchDeadline: time.Second}); err == nil {
		t.Error("a 1s dispatch deadline was accepted")
	}
}

// A game's notifications spread over its K queues by their id; every attempt of one
// notification lands on the same queue, where its task name deduplicates.
func TestShardsSpreadAGameOverItsQueues(t *testing.T) {
	t.Parallel()
	srv, err := tasksemu.New(tasksemu.Options{Queues: []string{"projects/p/locations/l/queues/farm-0", "projects/p/locations/l/queues/farm-1",
		"projects/p/locations/l/queues/farm-2", "projects/p/locations/l/queues/farm-3", "projects/p/locations/l/queues/sword-0"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"farm-0", "farm-1", "farm-2", "farm-3", "sword-0"} {
		srv.PauseQueue(context.Background(), &cloudtaskspb.PauseQueueRequest{Name: "projects/p/locations/l/queues/" + q})
	}
	addr, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	farm := []string{"projects/p/locations/l/queues/farm-0", "projects/p/locations/l/queues/farm-1", "projects/p/locations/l/queues/farm-2", "projects/p/locations/l/queues/farm-3"}
	q, err := queue.NewCloudTasks(context.Background(), queue.Options{
		Queues: map[string][]string{"farm": farm, "sword": {"projects/p/locations/l/queues/sword-0"}}, DeliverURL: "http://127.0.0.1:1/Deliver", EmulatorHost: addr,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	ctx := context.Background()
	const n = 400
	for i := range n {
		task := relay.Task{PaymentID: fmt.Sprintf("p%03d", i), Game: "farm", Environment: relay.EnvProduction, Key: relay.KeyPaid, Attempt: 1, At: time.Now()}
		if err := q.Enqueue(ctx, task); err != nil {
			t.Fatal(err)
		}
		task.Attempt = 1 // the same attempt again: the same queue, so a duplicate
		if err := q.Enqueue(ctx, task); !errors.Is(err, relay.ErrTaskExists) {
			t.Fatalf("repeat of %s = %v, want ErrTaskExists", task.Name(), err)
		}
	}
	if err := q.Enqueue(ctx, relay.Task{PaymentID: "s1", Game: "sword", Environment: relay.EnvProduction, Key: relay.KeyPaid, Attempt: 1, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	c, err := tasksemu.NewClient(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	total := 0
	for _, name := range farm {
		k := countTasks(ctx, c, name)
		total += k
		// 400 notifications over 4 queues: each gets its share, give or take.
		if k < n/4/2 || k > n/4*2 {
			t.Errorf("queue %s holds %d of %d notifications", name, k, n)
		}
	}
	if total != n {
		t.Errorf("the farm queues hold %d tasks, want %d", total, n)
	}
	if err := q.Enqueue(ctx, relay.Task{PaymentID: "x", Game: "ghost", Environment: relay.EnvProduction, Key: relay.KeyPaid, Attempt: 1, At: time.Now()}); !errors.Is(err, relay.ErrNoQueue) || relay.Retryable(err) {
		t.Errorf("Enqueue for a game with no queue = %v, want ErrNoQueue, not retryable", err)
	}
	// A queue deleted under a configured game: Cloud Tasks' NotFound is ErrNoQueue too.
	if _, err := srv.DeleteQueue(ctx, &cloudtaskspb.DeleteQueueRequest{Name: "projects/p/locations/l/queues/sword-0"}); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, relay.Task{PaymentID: "s2", Game: "sword", Environment: relay.EnvProduction, Key: relay.KeyPaid, Attempt: 1, At: time.Now()}); !errors.Is(err, relay.ErrNoQueue) || relay.Retryable(err) {
		t.Errorf("Enqueue on a deleted queue = %v, want ErrNoQueue, not retryable", err)
	}
}

// TestSandboxTasksTakeOnlySandboxQueues: a sandbox notification's task goes to its game's
// sandbox queue, never to a production one, and a game without sandbox queues gets none.
func TestSandboxTasksTakeOnlySandboxQueues(t *testing.T) {
	t.Parallel()
	const prod, sandbox, other = "projects/p/locations/l/queues/sword-0", "projects/p/locations/l/queues/sword-sandbox-0", "projects/p/locations/l/queues/farm-0"
	srv, err := tasksemu.New(tasksemu.Options{Queues: []string{prod, sandbox, other}})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{prod, sandbox, other} {
		srv.PauseQueue(context.Background(), &cloudtaskspb.PauseQueueRequest{Name: q})
	}
	addr, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	ctx := context.Background()
	q, err := queue.NewCloudTasks(ctx, queue.Options{
		Queues:        map[string][]string{"sword": {prod}, "farm": {other}},
		SandboxQueues: map[string][]string{"sword": {sandbox}},
		DeliverURL:    "http://127.0.0.1:1/Deliver", EmulatorHost: addr,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	for i := range 20 {
		if err := q.Enqueue(ctx, relay.Task{PaymentID: fmt.Sprintf("sb%02d", i), Game: "sword", Environment: relay.EnvSandbox, Key: relay.KeyPaid, Attempt: 1, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	err = q.Enqueue(ctx, relay.Task{PaymentID: "sb-farm", Game: "farm", Environment: relay.EnvSandbox, Key: relay.KeyPaid, Attempt: 1, At: time.Now()})
	if err == nil || relay.Retryable(err) {
		t.Errorf("a sandbox task of a game without sandbox queues = %v, want a permanent error", err)
	}
	c, err := tasksemu.NewClient(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for name, want := range map[string]int{prod: 0, sandbox: 20, other: 0} {
		if k := countTasks(ctx, c, name); k != want {
			t.Errorf("queue %s holds %d tasks, want %d", name, k, want)
		}
	}
}

// countTasks is how many tasks queue holds.
func countTasks(ctx context.Context, c *cloudtasks.Client, queue string) int {
	it := c.ListTasks(ctx, &cloudtaskspb.ListTasksRequest{Parent: queue})
	k := 0
	for {
		if _, err := it.Next(); err != nil {
			return k
		}
		k++
	}
}
