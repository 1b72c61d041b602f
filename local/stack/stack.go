// Package stack brings up the whole relay on one machine, in one process: the Firestore
// emulator (started, or reused from FIRESTORE_EMULATOR_HOST), the Cloud Tasks emulator, a demo
// game server, and the real Ingest and Deliver functions served by functions-framework. The
// local runner, the end-to-end tests and the benchmarks all start it the same way.
//
// The functions read their configuration from the environment, as in the cloud, and
// functions-framework serves from a process-wide registry, so there is one stack per process.
package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"cloud.google.com/go/firestore"
	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"
	"github.com/sethvargo/go-envconfig"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/payrelay/payrelay/functions"
	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/infra/config"
	"github.com/payrelay/payrelay/infra/store"
	"github.com/payrelay/payrelay/local/emulator"
	"github.com/payrelay/payrelay/local/gameserver"
	"github.com/payrelay/payrelay/local/tasksemu"
)

// ProjectID is the project the local stack uses in the emulators.
const ProjectID = "payrelay-local"

// The local secrets: well known on purpose, for local runs only. Their keys are printable so
// local/README.md's curl example can sign with `openssl dgst -hmac`.
const (
	IngestKey        = "payrelay-local-ingest-secret-32b"
	GameKey          = "payrelay-local-game-secret-32byt"
	IngestSandboxKey = "payrelay-local-sandbox-ingest-32"
	GameSandboxKey   = "payrelay-local-sandbox-game-32by"
)

var (
	// IngestSecret verifies what is sent to the local Ingest.
	IngestSecret = webhook.NewSecret([]byte(IngestKey))
	// GameSecret signs what the local Deliver posts to the demo game servers.
	GameSecret = webhook.NewSecret([]byte(GameKey))
	// IngestSandboxSecret verifies generic notifications as sandbox only
	// (INGEST_SANDBOX_SECRETS): what it signs can never be a production payment.
	IngestSandboxSecret = webhook.NewSecret([]byte(IngestSandboxKey))
	// GameSandboxSecret signs what the local Deliver posts to GameA's sandbox server: its own,
	// as a staging server holds no production secret.
	GameSandboxSecret = webhook.NewSecret([]byte(GameSandboxKey))
)

// The demo games every local stack runs: two, each with its own demo game server and queue,
// so a newcomer sees one game's trouble leave the other untouched. Sample payments with app
// SampleApp go to GameA, with SampleAppB to GameB.
const (
	GameA      = "demo-a"
	GameB      = "demo-b"
	SampleAppB = "demo-game-b"
)

// OpsQueue is the local queue of bulk replays' steps.
var OpsQueue = QueueName("ops", 0)

// QueueName is the local Cloud Tasks queue k of a game.
func QueueName(game string, k int) string {
	return fmt.Sprintf("projects/%s/locations/local/queues/%s-%d", ProjectID, game, k)
}

// SandboxQueueName is the local Cloud Tasks queue k of a game's sandbox (terraform's naming).
func SandboxQueueName(game string, k int) string {
	return fmt.Sprintf("projects/%s/locations/local/queues/%s-s%d", ProjectID, game, k)
}

// GameEnv is one game as the functions are told of it (GAMES).
type GameEnv struct {
	Name    string
	URL     string
	Queues  []string
	Timeout time.Duration    // 0: 10s
	Secrets []webhook.Secret // none: GameSecret
	// Sandbox is the game's sandbox endpoint, if it has one.
	Sandbox *SandboxEnv
}

// SandboxEnv is a game's sandbox endpoint.
type SandboxEnv struct {
	URL     string
	Queues  []string
	Secrets []webhook.Secret // none: GameSandboxSecret
}

// DefaultProviders is PROVIDER_CONFIG's routing of the sample apps to the demo games.
func DefaultProviders() provider.Config {
	return provider.Config{Generic: provider.GenericConfig{Apps: map[string]string{SampleApp: GameA, SampleAppB: GameB}}}
}

// FunctionEnv is the environment the functions read when they run against local emulators, in
// this process or in one of their own: the one place that knows the local wiring of every
// variable infra/config reads.
type FunctionEnv struct {
	Port          int // PORT, for a process of their own; 0 leaves it out
	FunctionsURL  string
	Games         []GameEnv
	TasksAddr     string
	FirestoreHost string
	Collection    string
	Ladder        string
	Compression   int
	Lease         time.Duration
	SweepMargin   time.Duration // 0: 2s
	OpsQueue      string        // "": bulk replay off
	ReplayRate    float64       // 0: 20/s
	LogLevel      string
	Providers     provider.Config
}

// Map returns the variables by name.
func (f FunctionEnv) Map() map[string]string {
	type endpointJSON struct {
		URL     string   `json:"url"`
		Timeout string   `json:"timeout,omitempty"`
		Queues  []string `json:"queues"`
	}
	type gameJSON struct {
		Name string `json:"name"`
		endpointJSON
		Sandbox *endpointJSON `json:"sandbox,omitempty"`
	}
	var games []gameJSON
	for _, g := range f.Games {
		gj := gameJSON{Name: g.Name, endpointJSON: endpointJSON{URL: g.URL, Queues: g.Queues}}
		if g.Timeout > 0 {
			gj.Timeout = g.Timeout.String()
		}
		if sb := g.Sandbox; sb != nil {
			gj.Sandbox = &endpointJSON{URL: sb.URL, Queues: sb.Queues, Timeout: gj.Timeout}
		}
		games = append(games, gj)
	}
	gamesJSON, _ := json.Marshal(games)
	providers, _ := json.Marshal(f.Providers)
	m := map[string]string{
		"PROJECT_ID":                ProjectID,
		"PAYMENTS_COLLECTION":       f.Collection,
		"DELIVER_URL":               f.FunctionsURL + "/Deliver",
		"GAMES":                     string(gamesJSON),
		"INGEST_SECRETS":            IngestSecret.Encode(),
		"INGEST_SANDBOX_SECRETS":    IngestSandboxSecret.Encode(),
		"LADDER":                    f.Ladder,
		"LADDER_COMPRESSION":        strconv.Itoa(max(f.Compression, 1)),
		"CLOUD_TASKS_EMULATOR_HOST": f.TasksAddr,
		"FIRESTORE_EMULATOR_HOST":   f.FirestoreHost,
		"LOG_LEVEL":                 f.LogLevel,
		"PROVIDER_CONFIG":           string(providers),
	}
	encode := func(secrets []webhook.Secret, def webhook.Secret) string {
		if len(secrets) == 0 {
			return def.Encode()
		}
		var enc []string
		for _, s := range secrets {
			enc = append(enc, s.Encode())
		}
		return strings.Join(enc, ",")
	}
	for _, g := range f.Games {
		m[config.GameSecretsVar(g.Name)] = encode(g.Secrets, GameSecret)
		if g.Sandbox != nil {
			m[config.GameSandboxSecretsVar(g.Name)] = encode(g.Sandbox.Secrets, GameSandboxSecret)
		}
	}
	if f.Lease > 0 {
		m["DELIVER_LEASE"] = f.Lease.String()
	}
	m["SWEEP_MARGIN"] = "2s"
	if f.OpsQueue != "" {
		m["OPS_QUEUE"] = f.OpsQueue
	}
	if f.ReplayRate > 0 {
		m["REPLAY_RATE"] = strconv.FormatFloat(f.ReplayRate, 'f', -1, 64)
	}
	if f.SweepMargin > 0 {
		m["SWEEP_MARGIN"] = f.SweepMargin.String()
	}
	if f.Port != 0 {
		m["PORT"] = strconv.Itoa(f.Port)
	}
	return m
}

// Environ is this process's environment with the functions' variables set, for a child.
func (f FunctionEnv) Environ() []string {
	env := os.Environ()
	for k, v := range f.Map() {
		env = append(env, k+"="+v)
	}
	return env
}

// Options configure a stack. Zero ports pick free ones.
type Options struct {
	Host          string // default 127.0.0.1
	Port          int    // the functions
	TasksPort     int
	GamePort      int
	FirestorePort int
	// FirestoreHost reuses a running Firestore emulator instead of starting one.
	FirestoreHost string
	// Compression divides the ladder (default 1000: 24h22m in 88 s).
	Compression int
	// Ladder overrides the default ladder.
	Ladder string
	// Game and GameB are the demo game servers' behaviours (games GameA and GameB);
	// GameSandbox is GameA's sandbox (staging) server's. GameB has no sandbox endpoint, so a
	// newcomer sees both routes: sandbox payments of GameA reach its staging server, GameB's
	// are stored and shown, never posted.
	Game, GameB, GameSandbox gameserver.Behaviour
	// GameBPort is GameB's demo game server's port; GameSandboxPort GameA's sandbox server's.
	GameBPort, GameSandboxPort int
	// TasksDataDir makes the Cloud Tasks emulator durable.
	TasksDataDir string
	// FirestoreDataDir keeps the Firestore emulator's documents across runs: imported as it
	// starts, exported at Stop (the emulator the stack starts only; a SIGKILL loses what
	// changed since the start).
	FirestoreDataDir string
	// Collection holds the payments (default "payments").
	Collection string
	Observer   relay.Observer
	// LogLevel of the functions' JSON logs (default "error": the runner shows progress itself).
	LogLevel string
	// Lease overrides DELIVER_LEASE (default 60s); DeliverTimeout is each game's timeout
	// (default 10s).
	Lease          time.Duration
	DeliverTimeout time.Duration
	// Providers is PROVIDER_CONFIG; its generic apps default to DefaultProviders'.
	Providers provider.Config
	// FirestoreLog receives the emulator's output.
	FirestoreLog io.Writer
	// ExtraGames are games beside the two demo ones, their servers someone else's (the
	// reference game-server handlers' test); App routes generic payments to each.
	ExtraGames []ExtraGame
	// DuplicateDispatch makes the Cloud Tasks emulator dispatch every task twice at once.
	DuplicateDispatch bool
	// AdminPort serves the Admin function alone at its root, as Cloud Functions serves it
	// (functions-framework serves it beside the others only at the exact path /Admin).
	AdminPort int
	// ProvidersPort serves the providers' stand-ins (StandIns: the console `send -provider`
	// plays payments through, Google Play's API and push certificates; Alipay's and WeChat
	// Pay's APIs on ports of their own) and wires every provider to them, each routed to GameA;
	// 0: none (Providers as given).
	ProvidersPort int
	// ConfigEnv is a configuration of one's own, in production's variables (the runner's
	// -config file): laid over the demo's, so its GAMES, secrets and PROVIDER_CONFIG replace
	// the demo's. The local wiring (the emulators, DELIVER_URL, the tasks' identity) stays the
	// runner's. Without PROVIDER_CONFIG, every provider's stand-in routes to its first game.
	ConfigEnv map[string]string
	// SweepEvery is how often the stack calls the Sweep function, as Cloud Scheduler does
	// every minute in the cloud (default 1s; the local SWEEP_MARGIN is 2s).
	SweepEvery time.Duration
}

// Stack is a running relay.
type Stack struct {
	Opts          Options
	FunctionsURL  string // http://host:port; Ingest at /Ingest, Deliver at /Deliver
	FirestoreHost string
	TasksAddr     string
	Tasks         *tasksemu.Server
	Game          *gameserver.Server // GameA's
	GameB         *gameserver.Server
	GameSandbox   *gameserver.Server  // GameA's sandbox (staging) server
	StandIns      *StandIns           // with Options.ProvidersPort
	firestore     *emulator.Firestore // started by us
	sweepStop     chan struct{}
	sweepDone     chan struct{}
	admin         *http.Server
	adminURL      string
	games         []string // the configured games
	closeFn       func() error
}

var (
	startedMu sync.Mutex
	started   bool
)

// ErrPortInUse says which port could not be had.
var ErrPortInUse = errors.New("port in use")

// CheckPort fails when port cannot be listened on at host.
func CheckPort(host string, port int, what string) error {
	if port == 0 {
		return nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("%w: %s port %d on %s: %v", ErrPortInUse, what, port, host, err)
	}
	return l.Close()
}

func pick(port int) (int, error) {
	if port != 0 {
		return port, nil
	}
	return emulator.FreePort()
}

// Start brings the stack up; on any error, what was started is stopped again.
func Start(ctx context.Context, o Options) (s *Stack, err error) {
	startedMu.Lock()
	defer startedMu.Unlock()
	if started {
		return nil, errors.New("stack: one stack per process (functions-framework serves a process-wide registry)")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Compression == 0 {
		o.Compression = 1000
	}
	if o.Collection == "" {
		o.Collection = "payments"
	}
	if o.LogLevel == "" {
		o.LogLevel = "error"
	}
	if o.Lease == 0 {
		o.Lease = time.Minute
	}
	if o.DeliverTimeout == 0 {
		o.DeliverTimeout = 10 * time.Second
	}
	for _, p := range []struct {
		port int
		what string
	}{{o.Port, "functions (-port or PORT)"}, {o.TasksPort, "Cloud Tasks emulator (-tasks-port)"}, {o.GamePort, "demo game server (-game-port)"},
		{o.GameBPort, "demo game server of " + GameB + " (-game-b-port)"}, {o.GameSandboxPort, "sandbox game server of " + GameA + " (-sandbox-port)"},
		{o.AdminPort, "Admin (-admin-port)"}, {o.ProvidersPort, "the providers' stand-ins (-providers-port)"}} {
		if err := CheckPort(o.Host, p.port, p.what); err != nil {
			return nil, err
		}
	}
	if o.FirestoreHost == "" {
		if err := CheckPort("127.0.0.1", o.FirestorePort, "Firestore emulator (-firestore-port)"); err != nil {
			return nil, err
		}
	}
	if o.Port, err = pick(o.Port); err != nil {
		return nil, err
	}
	s = &Stack{Opts: o}
	defer func() {
		if err != nil {
			s.Stop(context.Background())
			s = nil
		}
	}()

	s.FirestoreHost = o.FirestoreHost
	if s.FirestoreHost == "" {
		s.firestore, err = emulator.StartFirestoreFrom(ctx, o.FirestorePort, o.FirestoreLog, o.FirestoreDataDir)
		if err != nil {
			return s, err
		}
		s.FirestoreHost = s.firestore.Host
	}

	queues := []string{QueueName(GameA, 0), QueueName(GameB, 0), OpsQueue, SandboxQueueName(GameA, 0)}
	ownGames, ownQueues, err := configGames(o.ConfigEnv)
	if err != nil {
		return s, err
	}
	queues = append(queues, ownQueues...)
	for _, g := range o.ExtraGames {
		queues = append(queues, QueueName(g.Name, 0))
		if g.Sandbox != nil {
			queues = append(queues, SandboxQueueName(g.Name, 0))
		}
	}
	if s.Tasks, s.TasksAddr, err = StartTasks(ctx, net.JoinHostPort(o.Host, strconv.Itoa(o.TasksPort)), o.TasksDataDir, o.DuplicateDispatch, queues...); err != nil {
		return s, err
	}
	if s.Game, err = gameserver.Start(net.JoinHostPort(o.Host, strconv.Itoa(o.GamePort)), GameSecret, o.Game); err != nil {
		return s, fmt.Errorf("demo game server of %s: %w", GameA, err)
	}
	if s.GameB, err = gameserver.Start(net.JoinHostPort(o.Host, strconv.Itoa(o.GameBPort)), GameSecret, o.GameB); err != nil {
		return s, fmt.Errorf("demo game server of %s: %w", GameB, err)
	}
	if s.GameSandbox, err = gameserver.Start(net.JoinHostPort(o.Host, strconv.Itoa(o.GameSandboxPort)), GameSandboxSecret, o.GameSandbox); err != nil {
		return s, fmt.Errorf("sandbox game server of %s: %w", GameA, err)
	}
	s.GameSandbox.SetEnvironment(string(relay.EnvSandbox))

	s.FunctionsURL = "http://" + net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
	providers := o.Providers
	if providers.Generic.Apps == nil {
		providers.Generic = DefaultProviders().Generic
	}
	for _, g := range o.ExtraGames {
		providers.Generic.Apps[g.App] = g.Name
	}
	if o.ProvidersPort != 0 {
		if s.StandIns, err = StartStandIns(net.JoinHostPort(o.Host, strconv.Itoa(o.ProvidersPort)), s.FunctionsURL+"/Ingest"); err != nil {
			return s, err
		}
		apps, game := providers.Generic.Apps, GameA
		if len(ownGames) > 0 {
			// A configuration of one's own without PROVIDER_CONFIG: the stand-ins, and the
			// sample app, route to its first game.
			game, apps = ownGames[0], map[string]string{SampleApp: ownGames[0]}
		}
		providers = s.StandIns.Config(game)
		providers.Generic.Apps = apps
	}
	var extra []GameEnv
	for _, g := range o.ExtraGames {
		ge := g.GameEnv
		ge.Queues = []string{QueueName(g.Name, 0)}
		if g.Sandbox != nil {
			sb := *g.Sandbox
			sb.Queues = []string{SandboxQueueName(g.Name, 0)}
			ge.Sandbox = &sb
		}
		extra = append(extra, ge)
	}
	env := FunctionEnv{
		FunctionsURL: s.FunctionsURL, TasksAddr: s.TasksAddr, FirestoreHost: s.FirestoreHost,
		Games: []GameEnv{
			{Name: GameA, URL: s.Game.URL, Queues: queues[:1], Timeout: o.DeliverTimeout,
				Sandbox: &SandboxEnv{URL: s.GameSandbox.URL, Queues: []string{SandboxQueueName(GameA, 0)}}},
			{Name: GameB, URL: s.GameB.URL, Queues: queues[1:2], Timeout: o.DeliverTimeout},
		},
		Collection: o.Collection, Ladder: o.Ladder, Compression: o.Compression,
		Lease: o.Lease, LogLevel: o.LogLevel, Providers: providers, OpsQueue: OpsQueue,
	}
	env.Games = append(env.Games, extra...)
	// The same check a deployed function makes as it starts.
	vars, err := Overlay(env.Map(), o.ConfigEnv)
	if err != nil {
		return s, err
	}
	cfg, err := functions.CheckConfig(ctx, envconfig.MapLookuper(vars))
	if err == nil {
		s.games = cfg.Games.Names()
	}
	if err != nil {
		return s, err
	}
	if err = functions.CheckQueues(ctx, cfg, slog.New(slog.DiscardHandler)); err != nil {
		return s, err
	}
	for k, v := range vars {
		if err = os.Setenv(k, v); err != nil {
			return s, err
		}
	}
	// The functions served are built here, with the runner's observer, not from the
	// environment on their first request.
	h, closeFn, err := functions.Build(ctx, cfg, functions.Options{Observer: o.Observer})
	if err != nil {
		return s, err
	}
	s.closeFn = closeFn
	functions.Use(h)
	served := make(chan error, 1)
	go func() { served <- funcframework.StartHostPort(o.Host, strconv.Itoa(o.Port)) }()
	if err = waitListening(ctx, net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), served); err != nil {
		return s, fmt.Errorf("functions-framework: %w", err)
	}
	started = true
	if s.admin, err = serveAdmin(net.JoinHostPort(o.Host, strconv.Itoa(o.AdminPort))); err != nil {
		return s, fmt.Errorf("admin: %w", err)
	}
	s.adminURL = "http://" + s.admin.Addr
	if o.SweepEvery == 0 {
		o.SweepEvery = time.Second
	}
	s.sweepStop = make(chan struct{})
	s.sweepDone = make(chan struct{})
	go s.sweepLoop(o.SweepEvery)
	// Ready means ready: a write read back through Firestore, and a task dispatched by Cloud
	// Tasks and answered, before anyone is told to send.
	if err := s.roundTrip(ctx, queues[0]); err != nil {
		return s, fmt.Errorf("the stack started but is not ready: %w", err)
	}
	return s, nil
}

// roundTrip writes a document and reads it back, then has the Cloud Tasks emulator dispatch a
// task to a probe endpoint and waits for its 2xx, retrying within a minute: a cold emulator's
// first calls are slow. (Not to Deliver: a probe task there would be logged as a rejected
// delivery.)
func (s *Stack) roundTrip(ctx context.Context, queue string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	fs, err := firestore.NewClient(ctx, ProjectID)
	if err != nil {
		return err
	}
	defer fs.Close()
	doc := fs.Collection(s.Opts.Collection + "-ready").Doc("probe")
	for {
		_, err = doc.Set(ctx, map[string]any{"at": time.Now()})
		if err == nil {
			_, err = doc.Get(ctx)
		}
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("Firestore: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	answered := make(chan struct{}, 1)
	probe := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		select {
		case answered <- struct{}{}:
		default:
		}
	}))
	defer probe.Close()
	name := fmt.Sprintf("%s/tasks/ready-probe-%d", queue, time.Now().UnixNano())
	if _, err := s.Tasks.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: queue, Task: &cloudtaskspb.Task{Name: name,
		MessageType: &cloudtaskspb.Task_HttpRequest{HttpRequest: &cloudtaskspb.HttpRequest{Url: probe.URL, HttpMethod: cloudtaskspb.HttpMethod_POST}}}}); err != nil {
		return fmt.Errorf("Cloud Tasks: %w", err)
	}
	select {
	case <-answered:
	case <-ctx.Done():
		return errors.New("Cloud Tasks did not dispatch a probe task within a minute")
	}
	for {
		if _, err := s.Tasks.GetTask(ctx, &cloudtaskspb.GetTaskRequest{Name: name}); status.Code(err) == codes.NotFound {
			return nil // dispatched, answered 2xx, and done
		}
		select {
		case <-ctx.Done():
			return errors.New("Cloud Tasks kept a probe task answered 2xx")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sweepLoop calls the Sweep function every interval, as Cloud Scheduler would, until Stop.
func (s *Stack) sweepLoop(every time.Duration) {
	defer close(s.sweepDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.sweepStop:
			return
		case <-t.C:
			resp, err := http.Post(s.FunctionsURL+"/Sweep", "application/json", nil)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}
}

// AdminURL is the Admin function's base URL.
func (s *Stack) AdminURL() string { return s.adminURL }

// Games lists the configured games' names.
func (s *Stack) Games() []string { return s.games }

// serveAdmin serves the Admin function at every path on addr.
func serveAdmin(addr string) (*http.Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Addr: l.Addr().String(), Handler: http.HandlerFunc(functions.Admin), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	return srv, nil
}

func waitListening(ctx context.Context, addr string, served <-chan error) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-served:
			return err
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not listening on %s after 10s", addr)
}

// Stop drains the functions (new requests get 503; those in flight finish, bounded by ctx),
// stops the Cloud Tasks emulator and the game server, and stops the Firestore emulator if it
// started it. functions-framework's listener closes with the process.
func (s *Stack) Stop(ctx context.Context) error {
	var errs []error
	if s.sweepStop != nil {
		close(s.sweepStop)
		<-s.sweepDone
		s.sweepStop = nil
	}
	if s.admin != nil {
		errs = append(errs, s.admin.Close())
	}
	errs = append(errs, functions.Drain(ctx))
	if s.closeFn != nil {
		errs = append(errs, s.closeFn())
	}
	if s.Tasks != nil {
		errs = append(errs, s.Tasks.Close(ctx))
	}
	if s.Game != nil {
		errs = append(errs, s.Game.Close())
	}
	if s.GameB != nil {
		errs = append(errs, s.GameB.Close())
	}
	if s.GameSandbox != nil {
		errs = append(errs, s.GameSandbox.Close())
	}
	if s.StandIns != nil {
		errs = append(errs, s.StandIns.Close())
	}
	if s.firestore != nil {
		if dir := s.Opts.FirestoreDataDir; dir != "" {
			// Nothing writes any more: keep the documents for the next start.
			errs = append(errs, emulator.Export(s.FirestoreHost, ProjectID, dir))
		}
		errs = append(errs, s.firestore.Stop())
	}
	return errors.Join(errs...)
}

// FirestorePid is the process group of the Firestore emulator the stack started, or 0.
func (s *Stack) FirestorePid() int {
	if s.firestore == nil {
		return 0
	}
	return s.firestore.Pid()
}

// OpenStore opens the stack's payments collection, for checks and progress.
func (s *Stack) OpenStore(ctx context.Context) (*store.Firestore, error) {
	return store.NewFirestore(ctx, ProjectID, "", s.Opts.Collection)
}

// SamplePaidAt is the paid_at of sample payments: fixed, so that sending the same order again
// is a repeated callback (one chain), not a contradicting one (409).
const SamplePaidAt = "2026-11-24T20:00:00+08:00"

// SampleBody is a valid generic-format payment for order, of app SampleApp (game GameA).
func SampleBody(order, amount, currency string) []byte {
	return SampleBodyFor(SampleApp, order, amount, currency)
}

// SampleBodyFor is a valid generic-format payment for order of app.
func SampleBodyFor(app, order, amount, currency string) []byte {
	return fmt.Appendf(nil, `{"order_id":%q,"transaction_id":"txn-%s","amount":%q,"currency":%q,"status":"paid","paid_at":%q,"app_id":%q,"metadata":{"sku":"gems_60"}}`,
		order, order, amount, currency, SamplePaidAt, app)
}

// SandboxBody is SampleBodyFor marked as a sandbox payment (the generic format's environment).
func SandboxBody(app, order, amount, currency string) []byte {
	return InSandbox(SampleBodyFor(app, order, amount, currency))
}

// InSandbox marks a generic-format body (a payment or a refund) as sandbox.
func InSandbox(body []byte) []byte {
	b := bytes.TrimSuffix(bytes.TrimSpace(body), []byte("}"))
	return append(b[:len(b):len(b)], `,"environment":"sandbox"}`...)
}

// SampleRefundedAt is the refunded_at of sample refunds: fixed, like SamplePaidAt.
const SampleRefundedAt = "2026-11-24T21:00:00+08:00"

// SampleRefundBody is a valid generic-format refund of refundAmount of the sample payment of
// order (whose amount is amount).
func SampleRefundBody(order, amount, currency, refundID, refundAmount string) []byte {
	return SampleRefundBodyFor(SampleApp, order, amount, currency, refundID, refundAmount)
}

// SampleRefundBodyFor is SampleRefundBody for a payment of app.
func SampleRefundBodyFor(app, order, amount, currency, refundID, refundAmount string) []byte {
	return fmt.Appendf(nil, `{"order_id":%q,"transaction_id":"txn-%s","amount":%q,"currency":%q,"status":"refunded","paid_at":%q,"app_id":%q,"metadata":{"sku":"gems_60"},"refund_id":%q,"refund_amount":%q,"refunded_at":%q}`,
		order, order, amount, currency, SamplePaidAt, app, refundID, refundAmount, SampleRefundedAt)
}

// Send posts body to an Ingest URL signed with secret, as a provider would.
func Send(ctx context.Context, ingestURL string, secret webhook.Secret, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ingestURL, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	now := time.Now()
	id := fmt.Sprintf("msg_%d", now.UnixNano())
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(webhook.HeaderID, id)
	req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(webhook.HeaderSignature, secret.Sign(id, now, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, out, err
}

// SendAsProvider is Send as providers send (AsProvider).
func SendAsProvider(ctx context.Context, ingestURL string, secret webhook.Secret, body []byte) (int, []byte, error) {
	return AsProvider(ctx, func() (int, []byte, error) { return Send(ctx, ingestURL, secret, body) })
}

// AsProvider calls send as providers send their notifications: an answer that says "a failure
// of ours, try again" (502, 503, 504) is sent again after a growing pause (100 ms doubling, at
// most 2 s), up to 8 times within ctx, as every provider retries; the last answer is
// returned. Tests that play a provider use it: on a loaded machine a slow emulator may make
// Ingest answer 503 once, and a provider would simply retry. (500, a notification routed to no
// game or a configuration that is invalid, is returned at once: tests check it.)
func AsProvider(ctx context.Context, send func() (int, []byte, error)) (int, []byte, error) {
	pause := 100 * time.Millisecond
	for try := 1; ; try++ {
		code, out, err := send()
		if err != nil || try == 8 || code != http.StatusBadGateway && code != http.StatusServiceUnavailable && code != http.StatusGatewayTimeout {
			return code, out, err
		}
		select {
		case <-ctx.Done():
			return code, out, nil
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// SampleApp is the app id (and so the merchant account) of sample payments.
const SampleApp = "demo-game"

// SamplePaymentID is the payment id of the sample payment of order (app SampleApp).
func SamplePaymentID(order string) string {
	return relay.PaymentID(relay.EnvProduction, "generic", SampleApp, order)
}

// SandboxPaymentID is the payment id of the sandbox payment of order of app.
func SandboxPaymentID(app, order string) string {
	return relay.PaymentID(relay.EnvSandbox, "generic", app, order)
}

// ExtraGame is a game of Options.ExtraGames.
type ExtraGame struct {
	GameEnv
	App string
}

// StartTasks starts a Cloud Tasks emulator on addr with queues, each configured like the
// deployed ones: our own failures retried without end, with bounded backoff.
func StartTasks(ctx context.Context, addr, dataDir string, duplicate bool, queues ...string) (*tasksemu.Server, string, error) {
	t, err := tasksemu.New(tasksemu.Options{DataDir: dataDir, Queues: queues, DuplicateDispatch: duplicate})
	if err != nil {
		return nil, "", err
	}
	for _, q := range queues {
		if _, err := t.UpdateQueue(ctx, &cloudtaskspb.UpdateQueueRequest{Queue: &cloudtaskspb.Queue{
			Name: q,
			RetryConfig: &cloudtaskspb.RetryConfig{MaxAttempts: -1, MinBackoff: durationpb.New(100 * time.Millisecond),
				MaxBackoff: durationpb.New(5 * time.Second), MaxDoublings: 5},
		}}); err != nil {
			t.Close(ctx)
			return nil, "", err
		}
	}
	bound, err := t.Start(addr)
	if err != nil {
		t.Close(ctx)
		return nil, "", err
	}
	return t, bound, nil
}

// RunnerOwned are the variables a local run sets itself: the emulators and how Cloud Tasks
// reaches Deliver. A -config file naming one is refused.
var RunnerOwned = []string{"CLOUD_TASKS_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "DELIVER_URL", "TASKS_INVOKER_SA", "TASKS_OIDC_AUDIENCE", "PAYMENTS_COLLECTION"}

// Overlay lays a configuration of one's own over the demo's variables: its GAMES replace the
// demo games (and their secrets), the rest replace variable by variable.
func Overlay(demo, own map[string]string) (map[string]string, error) {
	if own == nil {
		return demo, nil
	}
	var bad []string
	for k := range own {
		if slices.Contains(RunnerOwned, k) {
			bad = append(bad, k)
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		return nil, fmt.Errorf("config: %s: set by the local runner (its emulators and Deliver), not by the file", strings.Join(bad, ", "))
	}
	out := maps.Clone(demo)
	if own["GAMES"] != "" {
		for k := range out {
			if strings.HasPrefix(k, "GAME_SECRETS_") || strings.HasPrefix(k, "GAME_SANDBOX_SECRETS_") {
				delete(out, k)
			}
		}
	}
	maps.Copy(out, own)
	return out, nil
}

// configGames reads the game names and queues a configuration's GAMES and OPS_QUEUE name: the
// local Cloud Tasks emulator must hold those queues.
func configGames(env map[string]string) (names, queues []string, err error) {
	if env["GAMES"] != "" {
		var games []struct {
			Name    string   `json:"name"`
			Queues  []string `json:"queues"`
			Sandbox *struct {
				Queues []string `json:"queues"`
			} `json:"sandbox"`
		}
		if err := json.Unmarshal([]byte(env["GAMES"]), &games); err != nil {
			return nil, nil, fmt.Errorf("config: GAMES: %w", err)
		}
		for _, g := range games {
			names = append(names, g.Name)
			queues = append(queues, g.Queues...)
			if g.Sandbox != nil {
				queues = append(queues, g.Sandbox.Queues...)
			}
		}
	}
	if q := env["OPS_QUEUE"]; q != "" && q != OpsQueue {
		queues = append(queues, q)
	}
	return names, queues, nil
}

// ReadConfigFile reads a configuration of one's own: production's variables (see
// infra/config/README.md), one NAME=value per line, the value taken as written to the end of
// the line (JSON on one line; no quotes, no expansion); blank lines and lines starting with #
// are skipped. Every malformed line is named.
func ReadConfigFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-config: %w", err)
	}
	vars := map[string]string{}
	var bad []string
	name := regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		switch {
		case !ok || !name.MatchString(k):
			bad = append(bad, fmt.Sprintf("line %d: want NAME=value", i+1))
		case vars[k] != "":
			bad = append(bad, fmt.Sprintf("line %d: %s set twice", i+1, k))
		default:
			vars[k] = v
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("-config %s: %s", path, strings.Join(bad, "; "))
	}
	return vars, nil
}
