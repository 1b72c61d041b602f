// Package tasksemu is a Cloud Tasks emulator: a gRPC server implementing the Cloud Tasks v2
// API (cloudtaskspb.CloudTasksServer) that the genuine cloud.google.com/go/cloudtasks client
// talks to over plain gRPC, and that dispatches HTTP tasks at their schedule time the way
// Cloud Tasks does: its headers, an OIDC token, the queue's rate limits and retry policy, and
// task-name deduplication. Google ships no such emulator; payrelay's local runner and tests use
// this one, and any other project can run it on its own (go run ./local tasks-emulator).
package tasksemu

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"cloud.google.com/go/iam/apiv1/iampb"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Limits of the real service that the emulator enforces the same way.
const (
	MaxScheduleAhead   = 30 * 24 * time.Hour
	MaxTaskSize        = 100 * 1024
	MinDispatchDeadine = 15 * time.Second
	MaxDispatchDeadine = 30 * time.Minute
	DefaultDeadline    = 10 * time.Minute
	// DefaultDedupeWindow is how long the name of a deleted or executed task stays taken.
	DefaultDedupeWindow = time.Hour
)

// DefaultQueue is the queue every emulator creates at start, so a local runner needs no setup.
const DefaultQueue = "projects/payrelay-local/locations/local/queues/deliveries"

var (
	queueNameRE = regexp.MustCompile(`^projects/([A-Za-z0-9.:_-]{1,100})/locations/([A-Za-z0-9_-]{1,63})/queues/([A-Za-z0-9-]{1,100})$`)
	taskIDRE    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,500}$`)
	parentRE    = regexp.MustCompile(`^projects/([A-Za-z0-9.:_-]{1,100})/locations/([A-Za-z0-9_-]{1,63})$`)
)

// Options configure an emulator.
type Options struct {
	// DataDir, if set, makes queues, tasks and deduplication tombstones survive a restart.
	DataDir string
	// DedupeWindow is how long a deleted or executed task's name stays taken (default 1h).
	DedupeWindow time.Duration
	// Queues are created at start if they do not exist (default: DefaultQueue).
	Queues []string
	// Logger receives one line per dispatch; nil discards.
	Logger *slog.Logger
	// Client makes the dispatches; its Timeout is overridden by each task's deadline.
	Client *http.Client
	// OnDispatch, if set, is told of every dispatch once it has an outcome.
	OnDispatch func(Dispatch)
	// DuplicateDispatch sends every dispatch twice at once: a fault to inject, showing that a
	// target survives Cloud Tasks' at-least-once delivery. Off by default.
	DuplicateDispatch bool
	// Now is the clock; nil is time.Now. Scheduling uses real timers, so tests that change it
	// must keep it close to real time.
	Now func() time.Time
}

// Dispatch describes one dispatch: the task, when it was due and sent, and its outcome
// (Status 0 with Err when no response came back).
type Dispatch struct {
	Task   string
	ETA    time.Time
	SentAt time.Time
	Status int
	Err    error
}

// Server is a running emulator.
type Server struct {
	cloudtaskspb.UnimplementedCloudTasksServer

	opts   Options
	key    *rsa.PrivateKey
	keyID  string
	client *http.Client
	log    *slog.Logger

	mu         sync.Mutex
	queues     map[string]*queue
	tombstones map[string]time.Time // task name → when its name is free again
	journal    *journal
	closed     bool

	wake     chan struct{}
	stop     chan struct{}
	loopDone chan struct{}
	inflight sync.WaitGroup
	cancel   context.CancelFunc // cancels in-flight dispatches at the shutdown deadline
	ctx      context.Context

	grpc *grpc.Server
	lis  net.Listener
}

type queue struct {
	pb      *cloudtaskspb.Queue
	tasks   map[string]*task
	due     taskHeap // tasks waiting for their schedule time, earliest first
	forced  []*task  // tasks RunTask asked to dispatch now
	limiter *rate.Limiter
	running int // dispatches in flight
}

type task struct {
	pb       *cloudtaskspb.Task
	running  bool
	forced   bool // RunTask: dispatch now, paused queue or not
	deleted  bool // deleted while a dispatch was in flight
	sequence uint64
}

// New starts an emulator's state and dispatcher; call Serve or Start to accept gRPC.
func New(opts Options) (*Server, error) {
	if opts.DedupeWindow == 0 {
		opts.DedupeWindow = DefaultDedupeWindow
	}
	if opts.Queues == nil {
		opts.Queues = []string{DefaultQueue}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	client := opts.Client
	if client == nil {
		client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("tasksemu: generate OIDC key: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts: opts, key: key, keyID: randomID(16), client: client, log: opts.Logger,
		queues: map[string]*queue{}, tombstones: map[string]time.Time{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), loopDone: make(chan struct{}),
		ctx: ctx, cancel: cancel,
	}
	if opts.DataDir != "" {
		j, err := openJournal(opts.DataDir, s)
		if err != nil {
			cancel()
			return nil, err
		}
		s.journal = j
	}
	for _, name := range opts.Queues {
		if !queueNameRE.MatchString(name) {
			cancel()
			return nil, fmt.Errorf("tasksemu: queue name %q: want projects/P/locations/L/queues/Q", name)
		}
		if _, ok := s.queues[name]; !ok {
			q := newQueue(&cloudtaskspb.Queue{Name: name})
			s.queues[name] = q
			s.record(queueRecord(q))
		}
	}
	go s.loop()
	return s, nil
}

// Serve accepts gRPC connections on lis until Close.
func (s *Server) Serve(lis net.Listener) error {
	g := grpc.NewServer(grpc.MaxRecvMsgSize(4 << 20))
	cloudtaskspb.RegisterCloudTasksServer(g, s)
	s.mu.Lock()
	s.grpc, s.lis = g, lis
	s.mu.Unlock()
	return g.Serve(lis)
}

// Start listens on addr ("127.0.0.1:8123"; port 0 picks one) and serves in the background.
// It returns the address clients should use (CLOUD_TASKS_EMULATOR_HOST).
func (s *Server) Start(addr string) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("tasksemu: listen on %s: %w", addr, err)
	}
	go func() {
		if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("tasks emulator stopped serving", "error", err)
		}
	}()
	return lis.Addr().String(), nil
}

// Close stops dispatching, stops accepting calls, waits for dispatches in flight until ctx is
// done (then cancels them: their tasks stay queued for a retry), and saves state.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	g := s.grpc
	s.mu.Unlock()
	close(s.stop)
	<-s.loopDone
	if g != nil {
		stopped := make(chan struct{})
		go func() { g.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			g.Stop()
		}
	}
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.cancel()
		<-done
	}
	s.cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.journal != nil {
		return s.journal.close(s)
	}
	return nil
}

func newQueue(pb *cloudtaskspb.Queue) *queue {
	applyQueueDefaults(pb)
	return &queue{pb: pb, tasks: map[string]*task{}, limiter: newLimiter(pb)}
}

func newLimiter(pb *cloudtaskspb.Queue) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(pb.RateLimits.MaxDispatchesPerSecond), int(pb.RateLimits.MaxBurstSize))
}

// applyQueueDefaults fills what the real service fills for a queue created without it.
func applyQueueDefaults(pb *cloudtaskspb.Queue) {
	if pb.RateLimits == nil {
		pb.RateLimits = &cloudtaskspb.RateLimits{}
	}
	rl := pb.RateLimits
	if rl.MaxDispatchesPerSecond <= 0 {
		rl.MaxDispatchesPerSecond = 500
	}
	if rl.MaxConcurrentDispatches <= 0 {
		rl.MaxConcurrentDispatches = 1000
	}
	// The real service derives the burst from the rate; so does the emulator.
	rl.MaxBurstSize = int32(max(1, min(100, int(rl.MaxDispatchesPerSecond))))
	if pb.RetryConfig == nil {
		pb.RetryConfig = &cloudtaskspb.RetryConfig{}
	}
	rc := pb.RetryConfig
	if rc.MaxAttempts == 0 {
		rc.MaxAttempts = 100
	}
	if rc.MinBackoff == nil {
		rc.MinBackoff = durationpb.New(100 * time.Millisecond)
	}
	if rc.MaxBackoff == nil {
		rc.MaxBackoff = durationpb.New(time.Hour)
	}
	if rc.MaxDoublings == 0 {
		rc.MaxDoublings = 16
	}
	if rc.MaxRetryDuration == nil {
		rc.MaxRetryDuration = durationpb.New(0)
	}
	if pb.State == cloudtaskspb.Queue_STATE_UNSPECIFIED {
		pb.State = cloudtaskspb.Queue_RUNNING
	}
}

func validateQueueConfig(pb *cloudtaskspb.Queue) error {
	if rl := pb.GetRateLimits(); rl != nil {
		if rl.MaxDispatchesPerSecond < 0 || rl.MaxDispatchesPerSecond > 500 {
			return status.Errorf(codes.InvalidArgument, "rate_limits.max_dispatches_per_second must be in (0, 500], got %v", rl.MaxDispatchesPerSecond)
		}
		if rl.MaxConcurrentDispatches < 0 || rl.MaxConcurrentDispatches > 5000 {
			return status.Errorf(codes.InvalidArgument, "rate_limits.max_concurrent_dispatches must be in [1, 5000], got %d", rl.MaxConcurrentDispatches)
		}
	}
	if rc := pb.GetRetryConfig(); rc != nil {
		if rc.MaxAttempts < -1 {
			return status.Errorf(codes.InvalidArgument, "retry_config.max_attempts must be -1 (unlimited) or positive, got %d", rc.MaxAttempts)
		}
		if rc.MinBackoff != nil && rc.MaxBackoff != nil && rc.MinBackoff.AsDuration() > rc.MaxBackoff.AsDuration() {
			return status.Error(codes.InvalidArgument, "retry_config.min_backoff exceeds max_backoff")
		}
		for _, d := range []*durationpb.Duration{rc.MinBackoff, rc.MaxBackoff, rc.MaxRetryDuration} {
			if d != nil && d.AsDuration() < 0 {
				return status.Error(codes.InvalidArgument, "retry_config durations must not be negative")
			}
		}
		if rc.MaxDoublings < 0 {
			return status.Error(codes.InvalidArgument, "retry_config.max_doublings must not be negative")
		}
	}
	if pb.GetAppEngineRoutingOverride() != nil {
		return status.Error(codes.InvalidArgument, "App Engine routing is not supported by this emulator")
	}
	return nil
}

func (s *Server) queueLocked(name string) (*queue, error) {
	if !queueNameRE.MatchString(name) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid queue name %q: want projects/P/locations/L/queues/Q", name)
	}
	q, ok := s.queues[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "queue %s does not exist", name)
	}
	return q, nil
}

func (s *Server) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// ListQueues implements cloudtaskspb.CloudTasksServer.
func (s *Server) ListQueues(_ context.Context, req *cloudtaskspb.ListQueuesRequest) (*cloudtaskspb.ListQueuesResponse, error) {
	if !parentRE.MatchString(req.GetParent()) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid parent %q: want projects/P/locations/L", req.GetParent())
	}
	if req.GetFilter() != "" {
		return nil, status.Error(codes.InvalidArgument, "filter is not supported by this emulator")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for name := range s.queues {
		if strings.HasPrefix(name, req.GetParent()+"/queues/") {
			names = append(names, name)
		}
	}
	page, next, err := paginate(names, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &cloudtaskspb.ListQueuesResponse{NextPageToken: next}
	for _, name := range page {
		resp.Queues = append(resp.Queues, proto.CloneOf(s.queues[name].pb))
	}
	return resp, nil
}

// paginate sorts names and returns one page of them with the token for the next.
func paginate(names []string, size int32, token string) ([]string, string, error) {
	slices.Sort(names)
	if size <= 0 || size > 1000 {
		size = 1000
	}
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(names) {
			return nil, "", status.Errorf(codes.InvalidArgument, "invalid page_token %q", token)
		}
		start = n
	}
	end := min(len(names), start+int(size))
	next := ""
	if end < len(names) {
		next = strconv.Itoa(end)
	}
	return names[start:end], next, nil
}

// GetQueue implements cloudtaskspb.CloudTasksServer.
func (s *Server) GetQueue(_ context.Context, req *cloudtaskspb.GetQueueRequest) (*cloudtaskspb.Queue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, err := s.queueLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	return proto.CloneOf(q.pb), nil
}

// CreateQueue implements cloudtaskspb.CloudTasksServer.
func (s *Server) CreateQueue(_ context.Context, req *cloudtaskspb.CreateQueueRequest) (*cloudtaskspb.Queue, error) {
	pb := proto.CloneOf(req.GetQueue())
	if pb == nil {
		return nil, status.Error(codes.InvalidArgument, "queue is required")
	}
	if !parentRE.MatchString(req.GetParent()) || !strings.HasPrefix(pb.GetName(), req.GetParent()+"/queues/") || !queueNameRE.MatchString(pb.GetName()) {
		return nil, status.Errorf(codes.InvalidArgument, "queue name %q must be %s/queues/QUEUE_ID", pb.GetName(), req.GetParent())
	}
	if err := validateQueueConfig(pb); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.queues[pb.Name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "queue %s already exists", pb.Name)
	}
	pb.State = cloudtaskspb.Queue_RUNNING
	pb.PurgeTime = nil
	q := newQueue(pb)
	s.queues[pb.Name] = q
	s.record(queueRecord(q))
	return proto.CloneOf(q.pb), nil
}

// UpdateQueue implements cloudtaskspb.CloudTasksServer: it creates the queue if it does not
// exist, like the real service, and applies only the fields in update_mask when one is given.
func (s *Server) UpdateQueue(_ context.Context, req *cloudtaskspb.UpdateQueueRequest) (*cloudtaskspb.Queue, error) {
	in := req.GetQueue()
	if in == nil || !queueNameRE.MatchString(in.GetName()) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid queue name %q", in.GetName())
	}
	if err := validateQueueConfig(in); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	q, ok := s.queues[in.Name]
	var pb *cloudtaskspb.Queue
	if ok {
		pb = proto.CloneOf(q.pb)
	} else {
		pb = &cloudtaskspb.Queue{Name: in.Name}
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		paths = []string{"rate_limits", "retry_config", "http_target", "stackdriver_logging_config"}
	}
	for _, path := range paths {
		if err := applyMaskPath(pb, in, path); err != nil {
			return nil, err
		}
	}
	applyQueueDefaults(pb)
	if ok {
		q.pb = pb
		q.limiter = newLimiter(pb)
	} else {
		q = newQueue(pb)
		s.queues[in.Name] = q
	}
	s.record(queueRecord(q))
	s.poke()
	return proto.CloneOf(q.pb), nil
}

func applyMaskPath(dst, src *cloudtaskspb.Queue, path string) error {
	if dst.RateLimits == nil {
		dst.RateLimits = &cloudtaskspb.RateLimits{}
	}
	if dst.RetryConfig == nil {
		dst.RetryConfig = &cloudtaskspb.RetryConfig{}
	}
	srl, src2 := src.GetRateLimits(), src.GetRetryConfig()
	switch path {
	case "rate_limits":
		dst.RateLimits = proto.CloneOf(srl)
	case "rate_limits.max_dispatches_per_second":
		dst.RateLimits.MaxDispatchesPerSecond = srl.GetMaxDispatchesPerSecond()
	case "rate_limits.max_concurrent_dispatches":
		dst.RateLimits.MaxConcurrentDispatches = srl.GetMaxConcurrentDispatches()
	case "rate_limits.max_burst_size":
		// Output only in the real API: derived from the rate.
	case "retry_config":
		dst.RetryConfig = proto.CloneOf(src2)
	case "retry_config.max_attempts":
		dst.RetryConfig.MaxAttempts = src2.GetMaxAttempts()
	case "retry_config.min_backoff":
		dst.RetryConfig.MinBackoff = src2.GetMinBackoff()
	case "retry_config.max_backoff":
		dst.RetryConfig.MaxBackoff = src2.GetMaxBackoff()
	case "retry_config.max_doublings":
		dst.RetryConfig.MaxDoublings = src2.GetMaxDoublings()
	case "retry_config.max_retry_duration":
		dst.RetryConfig.MaxRetryDuration = src2.GetMaxRetryDuration()
	case "http_target":
		dst.HttpTarget = proto.CloneOf(src.GetHttpTarget())
	case "stackdriver_logging_config":
		dst.StackdriverLoggingConfig = proto.CloneOf(src.GetStackdriverLoggingConfig())
	default:
		return status.Errorf(codes.InvalidArgument, "update_mask path %q is not supported", path)
	}
	if dst.RateLimits == nil {
		dst.RateLimits = &cloudtaskspb.RateLimits{}
	}
	if dst.RetryConfig == nil {
		dst.RetryConfig = &cloudtaskspb.RetryConfig{}
	}
	return nil
}

// DeleteQueue implements cloudtaskspb.CloudTasksServer.
func (s *Server) DeleteQueue(_ context.Context, req *cloudtaskspb.DeleteQueueRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, err := s.queueLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	for _, t := range q.tasks {
		t.deleted = true
	}
	q.tasks = map[string]*task{}
	delete(s.queues, req.GetName())
	s.record(record{Op: opDeleteQueue, Name: req.GetName()})
	return &emptypb.Empty{}, nil
}

// PurgeQueue implements cloudtaskspb.CloudTasksServer.
func (s *Server) PurgeQueue(_ context.Context, req *cloudtaskspb.PurgeQueueRequest) (*cloudtaskspb.Queue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, err := s.queueLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	now := s.opts.Now()
	for name, t := range q.tasks {
		s.removeTaskLocked(q, name, t, now)
	}
	q.pb.PurgeTime = timestamppb.New(now)
	s.record(queueRecord(q))
	return proto.CloneOf(q.pb), nil
}

func (s *Server) setState(name string, st cloudtaskspb.Queue_State) (*cloudtaskspb.Queue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, err := s.queueLocked(name)
	if err != nil {
		return nil, err
	}
	q.pb.State = st
	s.record(queueRecord(q))
	s.poke()
	return proto.CloneOf(q.pb), nil
}

// PauseQueue implements cloudtaskspb.CloudTasksServer.
func (s *Server) PauseQueue(_ context.Context, req *cloudtaskspb.PauseQueueRequest) (*cloudtaskspb.Queue, error) {
	return s.setState(req.GetName(), cloudtaskspb.Queue_PAUSED)
}

// ResumeQueue implements cloudtaskspb.CloudTasksServer.
func (s *Server) ResumeQueue(_ context.Context, req *cloudtaskspb.ResumeQueueRequest) (*cloudtaskspb.Queue, error) {
	return s.setState(req.GetName(), cloudtaskspb.Queue_RUNNING)
}

// GetIamPolicy implements cloudtaskspb.CloudTasksServer: the emulator enforces no IAM.
func (s *Server) GetIamPolicy(context.Context, *iampb.GetIamPolicyRequest) (*iampb.Policy, error) {
	return &iampb.Policy{}, nil
}

func splitTaskName(name string) (queueName, id string, err error) {
	i := strings.LastIndex(name, "/tasks/")
	if i < 0 || !queueNameRE.MatchString(name[:i]) || !taskIDRE.MatchString(name[i+len("/tasks/"):]) {
		return "", "", status.Errorf(codes.InvalidArgument, "invalid task name %q: want projects/P/locations/L/queues/Q/tasks/T with T of letters, digits, _ or -, at most 500", name)
	}
	return name[:i], name[i+len("/tasks/"):], nil
}

func view(t *cloudtaskspb.Task, v cloudtaskspb.Task_View) *cloudtaskspb.Task {
	c := proto.CloneOf(t)
	if v == cloudtaskspb.Task_FULL {
		c.View = cloudtaskspb.Task_FULL
		return c
	}
	c.View = cloudtaskspb.Task_BASIC
	if hr := c.GetHttpRequest(); hr != nil {
		hr.Body = nil
	}
	return c
}

// ListTasks implements cloudtaskspb.CloudTasksServer.
func (s *Server) ListTasks(_ context.Context, req *cloudtaskspb.ListTasksRequest) (*cloudtaskspb.ListTasksResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, err := s.queueLocked(req.GetParent())
	if err != nil {
		return nil, err
	}
	names := slices.Collect(maps.Keys(q.tasks)) // deleted tasks leave the map at once
	page, next, err := paginate(names, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &cloudtaskspb.ListTasksResponse{NextPageToken: next}
	for _, name := range page {
		resp.Tasks = append(resp.Tasks, view(q.tasks[name].pb, req.GetResponseView()))
	}
	return resp, nil
}

func (s *Server) taskLocked(name string) (*queue, *task, error) {
	qn, _, err := splitTaskName(name)
	if err != nil {
		return nil, nil, err
	}
	q, err := s.queueLocked(qn)
	if err != nil {
		return nil, nil, err
	}
	t, ok := q.tasks[name]
	if !ok {
		return nil, nil, status.Errorf(codes.NotFound, "task %s does not exist", name)
	}
	return q, t, nil
}

// GetTask implements cloudtaskspb.CloudTasksServer.
func (s *Server) GetTask(_ context.Context, req *cloudtaskspb.GetTaskRequest) (*cloudtaskspb.Task, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, t, err := s.taskLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	return view(t.pb, req.GetResponseView()), nil
}

// CreateTask implements cloudtaskspb.CloudTasksServer.
func (s *Server) CreateTask(_ context.Context, req *cloudtaskspb.CreateTaskRequest) (*cloudtaskspb.Task, error) {
	in := req.GetTask()
	if in == nil {
		return nil, status.Error(codes.InvalidArgument, "task is required")
	}
	if proto.Size(in) > MaxTaskSize {
		return nil, status.Errorf(codes.InvalidArgument, "task is %d bytes, over the %d byte limit", proto.Size(in), MaxTaskSize)
	}
	hr := in.GetHttpRequest()
	if hr == nil {
		return nil, status.Error(codes.InvalidArgument, "only HTTP targets (http_request) are supported")
	}
	if err := validateHTTPRequest(hr); err != nil {
		return nil, err
	}
	now := s.opts.Now()
	if st := in.GetScheduleTime(); st != nil {
		if err := st.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "schedule_time: %v", err)
		}
		if st.AsTime().After(now.Add(MaxScheduleAhead)) {
			return nil, status.Error(codes.InvalidArgument, "schedule_time is more than 30 days in the future")
		}
	}
	if d := in.GetDispatchDeadline(); d != nil && (d.AsDuration() < MinDispatchDeadine || d.AsDuration() > MaxDispatchDeadine) {
		return nil, status.Errorf(codes.InvalidArgument, "dispatch_deadline must be between 15s and 30m, got %s", d.AsDuration())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, status.Error(codes.Unavailable, "emulator is shutting down")
	}
	q, err := s.queueLocked(req.GetParent())
	if err != nil {
		return nil, err
	}
	pb := proto.CloneOf(in)
	if pb.Name == "" {
		pb.Name = req.GetParent() + "/tasks/" + randomDigits(19)
	} else {
		qn, _, err := splitTaskName(pb.Name)
		if err != nil {
			return nil, err
		}
		if qn != req.GetParent() {
			return nil, status.Errorf(codes.InvalidArgument, "task name %q is not in queue %s", pb.Name, req.GetParent())
		}
		if _, ok := q.tasks[pb.Name]; ok {
			return nil, status.Errorf(codes.AlreadyExists, "task %s already exists", pb.Name)
		}
		if until, ok := s.tombstones[pb.Name]; ok && now.Before(until) {
			return nil, status.Errorf(codes.AlreadyExists, "task %s was deleted or executed recently; its name is reserved until %s", pb.Name, until.UTC().Format(time.RFC3339))
		}
	}
	if pb.ScheduleTime == nil || pb.ScheduleTime.AsTime().Before(now) {
		pb.ScheduleTime = timestamppb.New(now)
	}
	if pb.DispatchDeadline == nil {
		pb.DispatchDeadline = durationpb.New(DefaultDeadline)
	}
	if pb.GetHttpRequest().HttpMethod == cloudtaskspb.HttpMethod_HTTP_METHOD_UNSPECIFIED {
		pb.GetHttpRequest().HttpMethod = cloudtaskspb.HttpMethod_POST
	}
	pb.CreateTime = timestamppb.New(now)
	pb.DispatchCount, pb.ResponseCount = 0, 0
	pb.FirstAttempt, pb.LastAttempt = nil, nil
	pb.View = cloudtaskspb.Task_FULL
	t := &task{pb: pb}
	q.tasks[pb.Name] = t
	q.schedule(t)
	s.record(record{Op: opTask, Task: pb})
	s.poke()
	return view(pb, req.GetResponseView()), nil
}

func validateHTTPRequest(hr *cloudtaskspb.HttpRequest) error {
	u := hr.GetUrl()
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return status.Errorf(codes.InvalidArgument, "http_request.url %q must start with http:// or https://", u)
	}
	if len(u) > 2083 {
		return status.Error(codes.InvalidArgument, "http_request.url is longer than 2083 characters")
	}
	if hr.GetOauthToken() != nil {
		return status.Error(codes.InvalidArgument, "oauth_token is not supported by this emulator; use oidc_token")
	}
	if o := hr.GetOidcToken(); o != nil && o.GetServiceAccountEmail() == "" {
		return status.Error(codes.InvalidArgument, "oidc_token.service_account_email is required")
	}
	return nil
}

// DeleteTask implements cloudtaskspb.CloudTasksServer.
func (s *Server) DeleteTask(_ context.Context, req *cloudtaskspb.DeleteTaskRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, t, err := s.taskLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	s.removeTaskLocked(q, req.GetName(), t, s.opts.Now())
	return &emptypb.Empty{}, nil
}

// removeTaskLocked deletes a task and reserves its name for the dedupe window.
func (s *Server) removeTaskLocked(q *queue, name string, t *task, now time.Time) {
	t.deleted = true // a dispatch in flight, the heap and the forced list all skip it now
	delete(q.tasks, name)
	until := now.Add(s.opts.DedupeWindow)
	s.tombstones[name] = until
	s.record(record{Op: opDeleteTask, Name: name, Until: until})
}

// RunTask implements cloudtaskspb.CloudTasksServer: the task is dispatched now, whatever its
// schedule time and even if the queue is paused, and the call returns without waiting for it.
func (s *Server) RunTask(_ context.Context, req *cloudtaskspb.RunTaskRequest) (*cloudtaskspb.Task, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, t, err := s.taskLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	if !t.running && !t.forced {
		t.forced = true
		q.forced = append(q.forced, t)
		s.poke()
	}
	return view(t.pb, req.GetResponseView()), nil
}

func randomDigits(n int) string {
	var b strings.Builder
	for range n {
		d, _ := rand.Int(rand.Reader, big.NewInt(10))
		b.WriteByte(byte('0' + d.Int64()))
	}
	return b.String()
}

func randomID(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b strings.Builder
	for range n {
		d, _ := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		b.WriteByte(alphabet[d.Int64()])
	}
	return b.String()
}
