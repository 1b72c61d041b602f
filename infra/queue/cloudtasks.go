// Package queue enqueues Deliver tasks on Cloud Tasks with the genuine client, or on an
// emulator over plain gRPC when CLOUD_TASKS_EMULATOR_HOST is set. It classifies the service's
// errors into the relay core's, once, here.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	cloudtasks "cloud.google.com/go/cloudtasks/apiv2"
	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/payrelay/payrelay/functions/relay"
)

var (
	_ relay.Queue    = (*CloudTasks)(nil)
	_ relay.JobQueue = (*CloudTasks)(nil)
)

// Options configure the queue.
type Options struct {
	// Queues maps each game to its queues, projects/P/locations/L/queues/Q: one, or K shards
	// over which the game's notifications spread by a hash of their id.
	Queues map[string][]string
	// SandboxQueues maps each game with a sandbox endpoint to its sandbox queues: a sandbox
	// notification goes through these, never through Queues.
	SandboxQueues map[string][]string
	// DeliverURL is where tasks are sent.
	DeliverURL string
	// ServiceAccount signs the OIDC token on each task; empty sends none (emulator only).
	ServiceAccount string
	// Audience of the token; DeliverURL when empty.
	Audience string
	// DispatchDeadline is how long Cloud Tasks waits for Deliver (15s to 30m).
	DispatchDeadline time.Duration
	// EmulatorHost, if set, is an emulator's host:port, reached with plain gRPC.
	EmulatorHost string
	// OnCreate, if set, is called once per CreateTask call (the benchmark's cost count).
	OnCreate func()
	// OpsQueue carries bulk replays' steps (never a game's queue); empty disables them.
	OpsQueue string
}

// CloudTasks is a relay.Queue over a Cloud Tasks queue.
type CloudTasks struct {
	client *cloudtasks.Client
	opts   Options
}

// NewCloudTasks connects to Cloud Tasks, or to the emulator at opts.EmulatorHost.
func NewCloudTasks(ctx context.Context, opts Options) (*CloudTasks, error) {
	if len(opts.Queues) == 0 || opts.DeliverURL == "" {
		return nil, errors.New("queue: Queues and DeliverURL are required")
	}
	for game, qs := range opts.Queues {
		if len(qs) == 0 {
			return nil, fmt.Errorf("queue: game %s has no queue", game)
		}
	}
	for game, qs := range opts.SandboxQueues {
		if len(qs) == 0 {
			return nil, fmt.Errorf("queue: game %s's sandbox has no queue", game)
		}
	}
	if opts.Audience == "" {
		opts.Audience = opts.DeliverURL
	}
	if opts.DispatchDeadline == 0 {
		opts.DispatchDeadline = time.Minute
	}
	if opts.DispatchDeadline < 15*time.Second || opts.DispatchDeadline > 30*time.Minute {
		return nil, fmt.Errorf("queue: dispatch deadline %s must be between 15s and 30m", opts.DispatchDeadline)
	}
	// As the store's: a reconnect after an outage within seconds, not gRPC's default of up to
	// 120 s, so a blip of the queue does not outlast a delivery's lease.
	clientOpts := []option.ClientOption{option.WithGRPCDialOption(grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
		MinConnectTimeout: 5 * time.Second,
	}))}
	if opts.EmulatorHost != "" {
		clientOpts = append(clientOpts, option.WithEndpoint(opts.EmulatorHost), option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	}
	c, err := cloudtasks.NewClient(ctx, clientOpts...)
	if err != nil {
		return nil, fmt.Errorf("cloudtasks.NewClient: %w", err)
	}
	return &CloudTasks{client: c, opts: opts}, nil
}

// CheckQueues looks up every queue the relay enqueues on (each game's, each sandbox's, the
// ops queue) and names each one Cloud Tasks does not have: a queue deleted or renamed by
// mistake is found as the process starts, not at the first payment of its game. It reports
// missing (NotFound, PermissionDenied: permanent) apart from err (the service unreachable, or
// ctx done: transient, the caller decides). The lookups run 8 at a time: this is on every
// instance's cold start, Ingest's included.
func (q *CloudTasks) CheckQueues(ctx context.Context) (missing []string, err error) {
	var names []string
	for _, m := range []map[string][]string{q.opts.Queues, q.opts.SandboxQueues} {
		for _, qs := range m {
			names = append(names, qs...)
		}
	}
	if q.opts.OpsQueue != "" {
		names = append(names, q.opts.OpsQueue)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var transient []error
	var wg sync.WaitGroup
	slots := make(chan struct{}, 8)
	for _, name := range names {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; wg.Done() }()
			_, e := q.client.GetQueue(ctx, &cloudtaskspb.GetQueueRequest{Name: name})
			mu.Lock()
			defer mu.Unlock()
			switch status.Code(e) {
			case codes.OK:
			case codes.NotFound:
				missing = append(missing, name+" (does not exist)")
			case codes.PermissionDenied:
				missing = append(missing, name+" (permission denied: the runtime account needs cloudtasks.queues.get on it)")
			default:
				// The service is unreachable (or the check's time is up): the other lookups
				// would wait the same, and a start must not.
				transient = append(transient, fmt.Errorf("cloudtasks.GetQueue %s: %w", name, e))
				cancel()
			}
		}()
	}
	wg.Wait()
	slices.Sort(missing)
	if len(transient) > 0 {
		return missing, transient[0]
	}
	return missing, nil
}

// Close releases the client.
func (q *CloudTasks) Close() error { return q.client.Close() }

// Shard picks the queue of a notification among its game's queues: a hash of the notification
// id, so every attempt of one notification goes to the same queue, where its task names
// deduplicate, and a game's notifications spread evenly over its K queues.
func Shard(queues []string, notificationID string) string {
	h := fnv.New32a()
	h.Write([]byte(notificationID))
	return queues[h.Sum32()%uint32(len(queues))]
}

// Enqueue implements relay.Queue: it creates the task named {notification}-{attempt} at t.At
// on the notification's queue among its game's queues of its environment; there is no
// fallback from a sandbox task to a production queue.
func (q *CloudTasks) Enqueue(ctx context.Context, t relay.Task) error {
	var queues []string
	switch t.Environment {
	case relay.EnvProduction:
		queues = q.opts.Queues[t.Game]
	case relay.EnvSandbox:
		queues = q.opts.SandboxQueues[t.Game]
	}
	if len(queues) == 0 {
		return fmt.Errorf("queue: game %q has no %s queue (GAMES): %w", t.Game, t.Environment, relay.ErrNoQueue)
	}
	queue := Shard(queues, relay.NotificationID(t.PaymentID, t.Key))
	return q.create(ctx, queue, t.Name(), t.At, relay.TaskMessage{PaymentID: t.PaymentID, Notification: t.Key, Generation: t.Generation, Attempt: t.Attempt})
}

// EnqueueJob implements relay.JobQueue: the task named {job}-{step} on the ops queue, now.
func (q *CloudTasks) EnqueueJob(ctx context.Context, jobID string, step int) error {
	if q.opts.OpsQueue == "" {
		return relay.ErrNoJobs
	}
	return q.create(ctx, q.opts.OpsQueue, fmt.Sprintf("%s-%d", jobID, step), time.Now(), relay.TaskMessage{Job: jobID, Step: step})
}

// EnqueueAck implements relay.JobQueue: the task name on the ops queue, now, acknowledging
// payment paymentID's purchase to its store (retried by the ops queue until the store accepts).
func (q *CloudTasks) EnqueueAck(ctx context.Context, name, paymentID string) error {
	if q.opts.OpsQueue == "" {
		return relay.ErrNoStoreAcks
	}
	return q.create(ctx, q.opts.OpsQueue, name, time.Now(), relay.TaskMessage{Ack: paymentID})
}

func (q *CloudTasks) create(ctx context.Context, queue, name string, at time.Time, msg relay.TaskMessage) error {
	body, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encode task: %w", err)
	}
	hr := &cloudtaskspb.HttpRequest{
		Url: q.opts.DeliverURL, HttpMethod: cloudtaskspb.HttpMethod_POST, Body: body,
		Headers: map[string]string{"Content-Type": "application/json"},
	}
	if q.opts.ServiceAccount != "" {
		hr.AuthorizationHeader = &cloudtaskspb.HttpRequest_OidcToken{OidcToken: &cloudtaskspb.OidcToken{
			ServiceAccountEmail: q.opts.ServiceAccount, Audience: q.opts.Audience,
		}}
	}
	req := &cloudtaskspb.CreateTaskRequest{
		Parent: queue,
		Task: &cloudtaskspb.Task{
			Name:             queue + "/tasks/" + name,
			ScheduleTime:     timestamppb.New(at),
			DispatchDeadline: durationpb.New(q.opts.DispatchDeadline),
			MessageType:      &cloudtaskspb.Task_HttpRequest{HttpRequest: hr},
		},
	}
	if q.opts.OnCreate != nil {
		q.opts.OnCreate()
	}
	if _, err := q.client.CreateTask(ctx, req); err != nil {
		return classify(err)
	}
	return nil
}

func classify(err error) error {
	switch status.Code(err) {
	case codes.AlreadyExists:
		return fmt.Errorf("cloudtasks.CreateTask: %w", relay.ErrTaskExists)
	case codes.NotFound:
		// CreateTask answers NotFound for its parent: the queue was deleted (or never made).
		return fmt.Errorf("cloudtasks.CreateTask: %w: %w", relay.ErrNoQueue, err)
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted, codes.Internal, codes.Unknown:
		return fmt.Errorf("cloudtasks.CreateTask: %w: %w", relay.ErrUnavailable, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("cloudtasks.CreateTask: %w: %w", relay.ErrUnavailable, err)
	}
	return fmt.Errorf("cloudtasks.CreateTask: %w", err)
}
