package tasksemu_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudtasks "cloud.google.com/go/cloudtasks/apiv2"
	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/api/iterator"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/payrelay/payrelay/local/tasksemu"
)

const parent = "projects/p1/locations/l1"

// start runs an emulator and returns it with a genuine client connected over plain gRPC.
func start(t *testing.T, opts tasksemu.Options) (*tasksemu.Server, *cloudtasks.Client, string) {
	t.Helper()
	srv, err := tasksemu.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, addr)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	return srv, c, addr
}

func client(t *testing.T, addr string) *cloudtasks.Client {
	t.Helper()
	c, err := tasksemu.NewClient(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func createQueue(t *testing.T, c *cloudtasks.Client, id string, q *cloudtaskspb.Queue) *cloudtaskspb.Queue {
	t.Helper()
	if q == nil {
		q = &cloudtaskspb.Queue{}
	}
	q.Name = parent + "/queues/" + id
	got, err := c.CreateQueue(context.Background(), &cloudtaskspb.CreateQueueRequest{Parent: parent, Queue: q})
	if err != nil {
		t.Fatalf("CreateQueue: %v", err)
	}
	return got
}

func httpTask(name, url string, at time.Time, body string) *cloudtaskspb.Task {
	return &cloudtaskspb.Task{
		Name:         name,
		ScheduleTime: timestamppb.New(at),
		MessageType: &cloudtaskspb.Task_HttpRequest{HttpRequest: &cloudtaskspb.HttpRequest{
			Url: url, HttpMethod: cloudtaskspb.HttpMethod_POST, Body: []byte(body),
			Headers: map[string]string{"Content-Type": "application/json"},
		}},
	}
}

// hit is one request the target received.
type hit struct {
	at     time.Time
	header http.Header
	body   string
}

// target is an HTTP endpoint that answers with the status its answer function picks.
type target struct {
	*httptest.Server
	mu     sync.Mutex
	hits   []hit
	answer func(n int, r *http.Request) int
	got    chan struct{}
}

func newTarget(t *testing.T, answer func(n int, r *http.Request) int) *target {
	tg := &target{answer: answer, got: make(chan struct{}, 1000)}
	tg.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		tg.mu.Lock()
		tg.hits = append(tg.hits, hit{at: time.Now(), header: r.Header.Clone(), body: string(b)})
		n := len(tg.hits)
		tg.mu.Unlock()
		code := http.StatusOK
		if tg.answer != nil {
			code = tg.answer(n, r)
		}
		w.WriteHeader(code)
		tg.got <- struct{}{}
	}))
	t.Cleanup(tg.Close)
	return tg
}

func (tg *target) wait(t *testing.T, n int, within time.Duration) []hit {
	t.Helper()
	deadline := time.After(within)
	for {
		tg.mu.Lock()
		if len(tg.hits) >= n {
			h := append([]hit(nil), tg.hits...)
			tg.mu.Unlock()
			return h
		}
		tg.mu.Unlock()
		select {
		case <-tg.got:
		case <-deadline:
			t.Fatalf("target got %d requests, want %d", len(tg.snapshot()), n)
		}
	}
}

func (tg *target) snapshot() []hit {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([]hit(nil), tg.hits...)
}

func code(err error) codes.Code { return status.Code(err) }

func TestQueueLifecycle(t *testing.T) {
	t.Parallel()
	_, c, _ := start(t, tasksemu.Options{})
	ctx := context.Background()

	def, err := c.GetQueue(ctx, &cloudtaskspb.GetQueueRequest{Name: tasksemu.DefaultQueue})
	if err != nil || def.State != cloudtaskspb.Queue_RUNNING {
		t.Fatalf("default queue = %v, %v; want it created at start", def, err)
	}
	q := createQueue(t, c, "q1", &cloudtaskspb.Queue{
		RateLimits:  &cloudtaskspb.RateLimits{MaxDispatchesPerSecond: 10, MaxConcurrentDispatches: 3},
		RetryConfig: &cloudtaskspb.RetryConfig{MaxAttempts: -1, MinBackoff: durationpb.New(time.Second), MaxBackoff: durationpb.New(time.Minute)},
	})
	if q.RateLimits.MaxBurstSize != 10 || q.RetryConfig.MaxDoublings != 16 || q.RetryConfig.MaxAttempts != -1 {
		t.Errorf("created queue = %v; want burst 10 derived, max_doublings defaulted to 16, max_attempts -1 kept", q)
	}
	if _, err := c.CreateQueue(ctx, &cloudtaskspb.CreateQueueRequest{Parent: parent, Queue: &cloudtaskspb.Queue{Name: q.Name}}); code(err) != codes.AlreadyExists {
		t.Errorf("second CreateQueue: %v, want AlreadyExists", err)
	}
	for i := 2; i <= 4; i++ {
		createQueue(t, c, fmt.Sprint("q", i), nil)
	}
	var names []string
	it := c.ListQueues(ctx, &cloudtaskspb.ListQueuesRequest{Parent: parent, PageSize: 3})
	for {
		q, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, q.Name[strings.LastIndex(q.Name, "/")+1:])
	}
	if got := strings.Join(names, ","); got != "q1,q2,q3,q4" {
		t.Errorf("ListQueues over pages = %s, want q1,q2,q3,q4", got)
	}
	up, err := c.UpdateQueue(ctx, &cloudtaskspb.UpdateQueueRequest{
		Queue:      &cloudtaskspb.Queue{Name: q.Name, RateLimits: &cloudtaskspb.RateLimits{MaxDispatchesPerSecond: 2}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"rate_limits.max_dispatches_per_second"}},
	})
	if err != nil || up.RateLimits.MaxDispatchesPerSecond != 2 || up.RateLimits.MaxConcurrentDispatches != 3 || up.RetryConfig.MaxAttempts != -1 {
		t.Errorf("UpdateQueue with a mask = %v, %v; want only the rate changed", up, err)
	}
	if p, err := c.PauseQueue(ctx, &cloudtaskspb.PauseQueueRequest{Name: q.Name}); err != nil || p.State != cloudtaskspb.Queue_PAUSED {
		t.Errorf("PauseQueue = %v, %v", p, err)
	}
	if r, err := c.ResumeQueue(ctx, &cloudtaskspb.ResumeQueueRequest{Name: q.Name}); err != nil || r.State != cloudtaskspb.Queue_RUNNING {
		t.Errorf("ResumeQueue = %v, %v", r, err)
	}
	future := time.Now().Add(time.Hour)
	for i := range 3 {
		if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask("", "http://127.0.0.1:1/x", future, fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := c.PurgeQueue(ctx, &cloudtaskspb.PurgeQueueRequest{Name: q.Name}); err != nil || p.PurgeTime == nil {
		t.Errorf("PurgeQueue = %v, %v", p, err)
	}
	if n := countTasks(t, c, q.Name); n != 0 {
		t.Errorf("%d tasks after purge, want 0", n)
	}
	if err := c.DeleteQueue(ctx, &cloudtaskspb.DeleteQueueRequest{Name: q.Name}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetQueue(ctx, &cloudtaskspb.GetQueueRequest{Name: q.Name}); code(err) != codes.NotFound {
		t.Errorf("GetQueue after delete: %v, want NotFound", err)
	}
	if _, err := c.GetQueue(ctx, &cloudtaskspb.GetQueueRequest{Name: "queues/bad"}); code(err) != codes.InvalidArgument {
		t.Errorf("GetQueue(bad name): %v, want InvalidArgument", err)
	}
	if _, err := c.UpdateQueue(ctx, &cloudtaskspb.UpdateQueueRequest{Queue: &cloudtaskspb.Queue{Name: parent + "/queues/made-by-update"}}); err != nil {
		t.Errorf("UpdateQueue of a missing queue: %v, want it created", err)
	}
}

func countTasks(t *testing.T, c *cloudtasks.Client, queue string) int {
	t.Helper()
	n := 0
	it := c.ListTasks(context.Background(), &cloudtaskspb.ListTasksRequest{Parent: queue, PageSize: 2})
	for {
		_, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
}

func TestTaskCalls(t *testing.T) {
	t.Parallel()
	_, c, _ := start(t, tasksemu.Options{DedupeWindow: 300 * time.Millisecond})
	ctx := context.Background()
	q := createQueue(t, c, "tasks", nil)
	future := time.Now().Add(time.Hour)
	name := q.Name + "/tasks/order-1"
	created, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(name, "http://127.0.0.1:1/x", future, "payload")})
	if err != nil || created.Name != name || created.GetHttpRequest().GetBody() != nil {
		t.Fatalf("CreateTask = %v, %v; want the named task, BASIC view without body", created, err)
	}
	full, err := c.GetTask(ctx, &cloudtaskspb.GetTaskRequest{Name: name, ResponseView: cloudtaskspb.Task_FULL})
	if err != nil || string(full.GetHttpRequest().GetBody()) != "payload" || !full.ScheduleTime.AsTime().Equal(future.Truncate(time.Microsecond)) && full.ScheduleTime.AsTime().Sub(future).Abs() > time.Microsecond {
		t.Errorf("GetTask(FULL) = %v, %v", full, err)
	}
	if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(name, "http://127.0.0.1:1/x", future, "again")}); code(err) != codes.AlreadyExists {
		t.Errorf("CreateTask of an existing name: %v, want AlreadyExists", err)
	}
	unnamed, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask("", "http://127.0.0.1:1/x", future, "")})
	if err != nil || !strings.HasPrefix(unnamed.Name, q.Name+"/tasks/") || len(unnamed.Name) <= len(q.Name)+7 {
		t.Errorf("unnamed CreateTask = %v, %v; want a generated name", unnamed, err)
	}
	if n := countTasks(t, c, q.Name); n != 2 {
		t.Errorf("ListTasks found %d, want 2", n)
	}
	if err := c.DeleteTask(ctx, &cloudtaskspb.DeleteTaskRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetTask(ctx, &cloudtaskspb.GetTaskRequest{Name: name}); code(err) != codes.NotFound {
		t.Errorf("GetTask after delete: %v, want NotFound", err)
	}
	if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(name, "http://127.0.0.1:1/x", future, "")}); code(err) != codes.AlreadyExists {
		t.Errorf("CreateTask of a name deleted within the dedupe window: %v, want AlreadyExists", err)
	}
	time.Sleep(350 * time.Millisecond)
	if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(name, "http://127.0.0.1:1/x", future, "")}); err != nil {
		t.Errorf("CreateTask after the dedupe window: %v, want success", err)
	}

	invalid := map[string]*cloudtaskspb.CreateTaskRequest{
		"malformed name":  {Parent: q.Name, Task: httpTask(q.Name+"/tasks/has.dot", "http://h/x", future, "")},
		"other queue":     {Parent: q.Name, Task: httpTask(parent+"/queues/other/tasks/t1", "http://h/x", future, "")},
		"beyond 30 days":  {Parent: q.Name, Task: httpTask("", "http://h/x", time.Now().Add(31*24*time.Hour), "")},
		"over 100 KB":     {Parent: q.Name, Task: httpTask("", "http://h/x", future, strings.Repeat("x", 101*1024))},
		"relative url":    {Parent: q.Name, Task: httpTask("", "/x", future, "")},
		"non-HTTP target": {Parent: q.Name, Task: &cloudtaskspb.Task{MessageType: &cloudtaskspb.Task_AppEngineHttpRequest{AppEngineHttpRequest: &cloudtaskspb.AppEngineHttpRequest{RelativeUri: "/x"}}}},
		"deadline too low": {Parent: q.Name, Task: func() *cloudtaskspb.Task {
			tk := httpTask("", "http://h/x", future, "")
			tk.DispatchDeadline = durationpb.New(time.Second)
			return tk
		}()},
	}
	for what, req := range invalid {
		if _, err := c.CreateTask(ctx, req); code(err) != codes.InvalidArgument {
			t.Errorf("CreateTask with %s: %v, want InvalidArgument", what, err)
		}
	}
	if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: parent + "/queues/missing", Task: httpTask("", "http://h/x", future, "")}); code(err) != codes.NotFound {
		t.Errorf("CreateTask on a missing queue: %v, want NotFound", err)
	}
}

func TestDispatchHeadersAndOIDC(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, nil)
	srv, c, _ := start(t, tasksemu.Options{})
	ctx := context.Background()
	q := createQueue(t, c, "oidc", nil)
	eta := time.Now().Add(300 * time.Millisecond)
	task := httpTask(q.Name+"/tasks/pay-1", tg.URL+"/Deliver", eta, `{"payment_id":"p"}`)
	task.GetHttpRequest().AuthorizationHeader = &cloudtaskspb.HttpRequest_OidcToken{OidcToken: &cloudtaskspb.OidcToken{
		ServiceAccountEmail: "invoker@p1.iam.gserviceaccount.com", Audience: "https://deliver.example"}}
	if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: task}); err != nil {
		t.Fatal(err)
	}
	h := tg.wait(t, 1, 5*time.Second)[0]
	if h.at.Before(eta) {
		t.Errorf("dispatched %v before its ETA", eta.Sub(h.at))
	}
	t.Logf("dispatch lateness: %v", h.at.Sub(eta))
	want := map[string]string{
		"User-Agent": "Google-Cloud-Tasks", "X-Cloudtasks-Queuename": "oidc", "X-Cloudtasks-Taskname": "pay-1",
		"X-Cloudtasks-Taskretrycount": "0", "X-Cloudtasks-Taskexecutioncount": "0", "Content-Type": "application/json",
	}
	for k, v := range want {
		if got := h.header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if etaHdr, err := strconv.ParseFloat(h.header.Get("X-CloudTasks-TaskETA"), 64); err != nil || time.Duration(float64(time.Second)*etaHdr-float64(eta.UnixNano())).Abs() > time.Millisecond {
		t.Errorf("X-CloudTasks-TaskETA = %q, want %v in seconds", h.header.Get("X-CloudTasks-TaskETA"), eta)
	}
	if h.body != `{"payment_id":"p"}` {
		t.Errorf("body = %q", h.body)
	}
	tok, ok := strings.CutPrefix(h.header.Get("Authorization"), "Bearer ")
	if !ok {
		t.Fatal("no bearer token on a task with oidc_token")
	}
	claims, err := tasksemu.VerifyIDToken(tok, srv.PublicKey(), "https://deliver.example", time.Now())
	if err != nil || claims.Email != "invoker@p1.iam.gserviceaccount.com" {
		t.Errorf("token claims = %+v, %v", claims, err)
	}
	if _, err := tasksemu.VerifyIDToken(tok, srv.PublicKey(), "https://other.example", time.Now()); err == nil {
		t.Error("token verified for another audience")
	}
	// A 2xx deletes the task, and its name stays reserved.
	waitGone(t, c, q.Name+"/tasks/pay-1")
	if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(q.Name+"/tasks/pay-1", tg.URL, time.Now(), "")}); code(err) != codes.AlreadyExists {
		t.Errorf("re-create of an executed task: %v, want AlreadyExists", err)
	}
}

func waitGone(t *testing.T, c *cloudtasks.Client, name string) {
	t.Helper()
	for range 200 {
		if _, err := c.GetTask(context.Background(), &cloudtaskspb.GetTaskRequest{Name: name}); code(err) == codes.NotFound {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("task %s still exists", name)
}

func TestRetriesWithBackoff(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, func(n int, _ *http.Request) int {
		if n <= 3 {
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	})
	_, c, _ := start(t, tasksemu.Options{})
	q := createQueue(t, c, "retry", &cloudtaskspb.Queue{RetryConfig: &cloudtaskspb.RetryConfig{
		MaxAttempts: 10, MinBackoff: durationpb.New(100 * time.Millisecond), MaxBackoff: durationpb.New(250 * time.Millisecond), MaxDoublings: 1,
	}})
	if _, err := c.CreateTask(context.Background(), &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(q.Name+"/tasks/r1", tg.URL, time.Now(), "")}); err != nil {
		t.Fatal(err)
	}
	hits := tg.wait(t, 4, 10*time.Second)
	// min 100ms, one doubling to 200ms, then linear steps of 200ms capped at 250ms.
	wantGaps := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond}
	for i, want := range wantGaps {
		if gap := hits[i+1].at.Sub(hits[i].at); gap < want {
			t.Errorf("retry %d came %v after the previous attempt, want at least %v", i+1, gap, want)
		}
		if got := hits[i+1].header.Get("X-CloudTasks-TaskRetryCount"); got != strconv.Itoa(i+1) {
			t.Errorf("retry %d has X-CloudTasks-TaskRetryCount %s", i+1, got)
		}
		if got := hits[i+1].header.Get("X-CloudTasks-TaskExecutionCount"); got != strconv.Itoa(i+1) {
			t.Errorf("retry %d has X-CloudTasks-TaskExecutionCount %s", i+1, got)
		}
	}
	waitGone(t, c, q.Name+"/tasks/r1")
	time.Sleep(400 * time.Millisecond)
	if n := len(tg.snapshot()); n != 4 {
		t.Errorf("target got %d requests, want 4 (3 failures, then success, then nothing)", n)
	}
}

func TestMaxAttemptsDropsTask(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, func(int, *http.Request) int { return http.StatusInternalServerError })
	_, c, _ := start(t, tasksemu.Options{})
	q := createQueue(t, c, "drop", &cloudtaskspb.Queue{RetryConfig: &cloudtaskspb.RetryConfig{
		MaxAttempts: 2, MinBackoff: durationpb.New(50 * time.Millisecond), MaxBackoff: durationpb.New(50 * time.Millisecond),
	}})
	if _, err := c.CreateTask(context.Background(), &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(q.Name+"/tasks/d1", tg.URL, time.Now(), "")}); err != nil {
		t.Fatal(err)
	}
	tg.wait(t, 2, 5*time.Second)
	waitGone(t, c, q.Name+"/tasks/d1")
	time.Sleep(200 * time.Millisecond)
	if n := len(tg.snapshot()); n != 2 {
		t.Errorf("target got %d requests, want exactly max_attempts=2", n)
	}
}

func TestUnreachableTargetIsRetried(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, nil)
	url := tg.URL
	tg.Close() // connection refused from now on
	_, c, _ := start(t, tasksemu.Options{})
	q := createQueue(t, c, "refused", &cloudtaskspb.Queue{RetryConfig: &cloudtaskspb.RetryConfig{
		MaxAttempts: -1, MinBackoff: durationpb.New(20 * time.Millisecond), MaxBackoff: durationpb.New(20 * time.Millisecond),
	}})
	name := q.Name + "/tasks/u1"
	if _, err := c.CreateTask(context.Background(), &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(name, url, time.Now(), "")}); err != nil {
		t.Fatal(err)
	}
	for range 200 {
		tk, err := c.GetTask(context.Background(), &cloudtaskspb.GetTaskRequest{Name: name})
		if err != nil {
			t.Fatalf("a task with unlimited attempts disappeared: %v", err)
		}
		if tk.DispatchCount >= 3 && tk.LastAttempt.GetResponseStatus() != nil { // a finished dispatch
			if tk.ResponseCount != 0 || tk.LastAttempt.GetResponseStatus().GetCode() != int32(codes.Unavailable) {
				t.Errorf("refused dispatches: response_count %d, last status %v", tk.ResponseCount, tk.LastAttempt.GetResponseStatus())
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("a refused connection was not retried")
}

func TestDispatchDeadline(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var calls atomic.Int32
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	t.Cleanup(func() { close(release); slow.Close() })
	_, c, _ := start(t, tasksemu.Options{})
	q := createQueue(t, c, "deadline", &cloudtaskspb.Queue{RetryConfig: &cloudtaskspb.RetryConfig{MinBackoff: durationpb.New(10 * time.Millisecond)}})
	tk := httpTask(q.Name+"/tasks/slow", slow.URL, time.Now(), "")
	tk.DispatchDeadline = durationpb.New(15 * time.Second)
	if _, err := c.CreateTask(context.Background(), &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: tk}); err != nil {
		t.Fatal(err)
	}
	// The first dispatch hangs until the 15 s deadline cuts it; the retry then succeeds.
	waitGoneWithin(t, c, q.Name+"/tasks/slow", 25*time.Second)
	if calls.Load() != 2 {
		t.Errorf("handler called %d times, want 2 (cut by the deadline, then retried)", calls.Load())
	}
}

func waitGoneWithin(t *testing.T, c *cloudtasks.Client, name string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if _, err := c.GetTask(context.Background(), &cloudtaskspb.GetTaskRequest{Name: name}); code(err) == codes.NotFound {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("task %s still exists after %v", name, d)
}

func TestRateLimits(t *testing.T) {
	t.Parallel()
	var cur, peak atomic.Int32
	tg := newTarget(t, func(int, *http.Request) int {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		cur.Add(-1)
		return http.StatusOK
	})
	_, c, _ := start(t, tasksemu.Options{})
	rateQ := createQueue(t, c, "rate", &cloudtaskspb.Queue{RateLimits: &cloudtaskspb.RateLimits{MaxDispatchesPerSecond: 10}})
	concQ := createQueue(t, c, "conc", &cloudtaskspb.Queue{RateLimits: &cloudtaskspb.RateLimits{MaxConcurrentDispatches: 2}})
	now := time.Now()
	for i := range 20 {
		if _, err := c.CreateTask(context.Background(), &cloudtaskspb.CreateTaskRequest{Parent: rateQ.Name, Task: httpTask("", tg.URL+"/rate", now, "")}); err != nil {
			t.Fatal(err)
		}
		_ = i
	}
	hits := tg.wait(t, 20, 10*time.Second)
	// A burst of 10 at once, then 10 more at 10 per second: at least 0.9 s from first to last.
	if span := hits[19].at.Sub(hits[0].at); span < 900*time.Millisecond {
		t.Errorf("20 dispatches at 10/s with a burst of 10 took %v, want at least 900ms", span)
	}
	peak.Store(0)
	for range 8 {
		if _, err := c.CreateTask(context.Background(), &cloudtaskspb.CreateTaskRequest{Parent: concQ.Name, Task: httpTask("", tg.URL+"/conc", now, "")}); err != nil {
			t.Fatal(err)
		}
	}
	tg.wait(t, 28, 10*time.Second)
	if p := peak.Load(); p > 2 || p < 1 {
		t.Errorf("peak concurrent dispatches %d, want at most max_concurrent_dispatches=2", p)
	}
}

func TestPausedQueueAndRunTask(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, nil)
	_, c, _ := start(t, tasksemu.Options{})
	ctx := context.Background()
	q := createQueue(t, c, "paused", nil)
	if _, err := c.PauseQueue(ctx, &cloudtaskspb.PauseQueueRequest{Name: q.Name}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(q.Name+"/tasks/"+id, tg.URL+"/"+id, time.Now(), "")}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(tg.snapshot()); n != 0 {
		t.Fatalf("paused queue dispatched %d tasks", n)
	}
	if _, err := c.RunTask(ctx, &cloudtaskspb.RunTaskRequest{Name: q.Name + "/tasks/a"}); err != nil {
		t.Fatal(err)
	}
	if h := tg.wait(t, 1, 5*time.Second); !strings.HasSuffix(h[0].header.Get("X-CloudTasks-TaskName"), "a") {
		t.Errorf("RunTask dispatched %s, want a", h[0].header.Get("X-CloudTasks-TaskName"))
	}
	if _, err := c.ResumeQueue(ctx, &cloudtaskspb.ResumeQueueRequest{Name: q.Name}); err != nil {
		t.Fatal(err)
	}
	tg.wait(t, 2, 5*time.Second)
	if _, err := c.RunTask(ctx, &cloudtaskspb.RunTaskRequest{Name: q.Name + "/tasks/missing"}); code(err) != codes.NotFound {
		t.Errorf("RunTask(missing): %v, want NotFound", err)
	}
}

func TestRestartWithDataDirLosesNothing(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, nil)
	dir := t.TempDir()
	ctx := context.Background()

	first, err := tasksemu.New(tasksemu.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := first.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, addr)
	q := createQueue(t, c, "durable", &cloudtaskspb.Queue{RateLimits: &cloudtaskspb.RateLimits{MaxDispatchesPerSecond: 7}})
	soon := time.Now().Add(600 * time.Millisecond)
	later := time.Now().Add(1500 * time.Millisecond)
	for i, at := range []time.Time{soon, later} {
		if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(fmt.Sprintf("%s/tasks/t%d", q.Name, i), tg.URL, at, "")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(q.Name+"/tasks/gone", tg.URL, later, "")}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteTask(ctx, &cloudtaskspb.DeleteTaskRequest{Name: q.Name + "/tasks/gone"}); err != nil {
		t.Fatal(err)
	}
	closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := first.Close(closeCtx); err != nil {
		t.Fatal(err)
	}
	// Down past the first task's ETA: it must be dispatched as soon as the emulator is back.
	time.Sleep(time.Until(soon) + 100*time.Millisecond)
	if n := len(tg.snapshot()); n != 0 {
		t.Fatalf("%d dispatches while the emulator was down", n)
	}
	second, err := tasksemu.New(tasksemu.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr2, err := second.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close(context.Background()) })
	c2 := client(t, addr2)
	got, err := c2.GetQueue(ctx, &cloudtaskspb.GetQueueRequest{Name: q.Name})
	if err != nil || got.RateLimits.MaxDispatchesPerSecond != 7 {
		t.Fatalf("queue after restart = %v, %v", got, err)
	}
	if _, err := c2.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: q.Name, Task: httpTask(q.Name+"/tasks/gone", tg.URL, later, "")}); code(err) != codes.AlreadyExists {
		t.Errorf("a deleted task's name after restart: %v, want AlreadyExists (tombstones survive)", err)
	}
	hits := tg.wait(t, 2, 5*time.Second)
	if hits[1].at.Before(later) {
		t.Errorf("the later task ran %v before its ETA after the restart", later.Sub(hits[1].at))
	}
	for i, h := range hits {
		if got := h.header.Get("X-CloudTasks-TaskName"); got != fmt.Sprint("t", i) {
			t.Errorf("dispatch %d was %s, want t%d", i, got, i)
		}
	}
}

func TestKilledEmulatorKeepsAcknowledgedTasks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	first, err := tasksemu.New(tasksemu.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := first.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, addr)
	future := time.Now().Add(time.Hour)
	for i := range 50 {
		if _, err := c.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: tasksemu.DefaultQueue, Task: httpTask(fmt.Sprintf("%s/tasks/k%d", tasksemu.DefaultQueue, i), "http://127.0.0.1:1/", future, "")}); err != nil {
			t.Fatal(err)
		}
	}
	// No Close: the journal as written so far is all a killed emulator leaves behind.
	second, err := tasksemu.New(tasksemu.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr2, err := second.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close(ctx); first.Close(ctx) })
	if n := countTasks(t, client(t, addr2), tasksemu.DefaultQueue); n != 50 {
		t.Errorf("%d tasks after an unclean stop, want 50", n)
	}
}
