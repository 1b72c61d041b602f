package functions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"
	"github.com/sethvargo/go-envconfig"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/config"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/infra/logging"
	"github.com/payrelay/payrelay/infra/queue"
	"github.com/payrelay/payrelay/infra/store"
)

// The names the functions are registered under: the Cloud Functions entry points.
const (
	IngestName    = "Ingest"
	DeliverName   = "Deliver"
	AdminName     = "Admin"
	SweepName     = "Sweep"
	ReconcileName = "Reconcile"
	QueryName     = "Query"
	RecoverName   = "Recover"
)

func init() {
	functions.HTTP(IngestName, Ingest)
	functions.HTTP(DeliverName, Deliver)
	functions.HTTP(AdminName, Admin)
	functions.HTTP(SweepName, Sweep)
	functions.HTTP(ReconcileName, Reconcile)
	functions.HTTP(QueryName, Query)
	functions.HTTP(RecoverName, Recover)
	// Deployed (Cloud Run sets K_SERVICE), the whole configuration is checked as the process
	// starts: a permanent error stops it, so the revision never becomes ready and the deploy
	// fails with the reasons in Cloud Logging, instead of a healthy-looking deployment that
	// refuses money when it arrives. Tests and local runs call CheckConfig themselves.
	if config.Deployed(envconfig.OsLookuper()) {
		log := logging.New(os.Stdout, "info")
		cfg, err := CheckConfig(context.Background(), envconfig.OsLookuper())
		if err == nil {
			// Bounded: Cloud Tasks unreachable is transient, and must not hold the start.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = CheckQueues(ctx, cfg, log)
			cancel()
		}
		if err != nil {
			logStartupFailure(log, err)
			os.Exit(1)
		}
	}
}

// logStartupFailure says why the process refuses to start (the startup_failures metric).
func logStartupFailure(log *slog.Logger, err error) {
	log.Error("payrelay cannot start: its configuration is invalid", "event", "startup_failed", "error", err.Error())
}

// CheckConfig loads and checks the whole configuration (environment, games, providers and
// their keys, routes) without connecting to anything, naming every problem at once.
func CheckConfig(ctx context.Context, l envconfig.Lookuper) (*config.Config, error) {
	cfg, err := config.Load(ctx, l)
	if err != nil {
		return nil, err
	}
	if _, err := provider.New(cfg.ProviderConfig.Config, cfg.Ingest()); err != nil {
		return nil, &config.Error{Err: err}
	}
	if _, err := cfg.EffectiveLadder(); err != nil {
		return nil, &config.Error{Err: err}
	}
	if cfg.ProviderConfig.Config.AcknowledgesPurchases() && cfg.OpsQueue == "" {
		return nil, &config.Error{Err: errors.New("PROVIDER_CONFIG googleplay: an app with acknowledge needs OPS_QUEUE (the ops queue retries acknowledgements until Google accepts them)")}
	}
	return cfg, nil
}

// CheckQueues looks up, in Cloud Tasks (or its emulator), every queue cfg enqueues on: a
// missing one (deleted or renamed by mistake, or the runtime account without the right to
// see it) is a configuration error that names it, found as the process starts. Cloud Tasks
// unreachable is transient: logged, and the start goes on (Ingest answers 5xx meanwhile, and
// providers retry).
func CheckQueues(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	q, err := newQueue(ctx, cfg, Options{})
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer q.Close()
	missing, err := q.CheckQueues(ctx)
	if len(missing) > 0 {
		return &config.Error{Err: fmt.Errorf("Cloud Tasks has no queue %s: create it (terraform apply) or fix GAMES / OPS_QUEUE", strings.Join(missing, ", "))}
	}
	if err != nil {
		log.WarnContext(ctx, "could not look up the queues at start; going on", "error", err.Error())
	}
	return nil
}

// newQueue connects the queue adapter cfg describes.
func newQueue(ctx context.Context, cfg *config.Config, opts Options) (*queue.CloudTasks, error) {
	return queue.NewCloudTasks(ctx, queue.Options{
		Queues: cfg.Games.Queues(), SandboxQueues: cfg.Games.SandboxQueues(), DeliverURL: cfg.DeliverURL, ServiceAccount: cfg.InvokerServiceAccount,
		Audience: cfg.Audience(), DispatchDeadline: dispatchDeadline(cfg.DeliverLease), EmulatorHost: cfg.CloudTasksEmulatorHost,
		OnCreate: opts.OnCreate, OpsQueue: cfg.OpsQueue,
	})
}

// The process-wide handler the registered functions serve (functions-framework's registry is
// the process's): built from the environment on first use, or the one Use installed. A failed
// build is answered with 500 and tried again on the next request, never cached.
var (
	mu      sync.Mutex
	current *Handler
)

// Use makes the registered functions serve h: a handler its caller built with Build and the
// Options it needs (the local runner's observer, the benchmark's counters). Call it before
// the first request.
func Use(h *Handler) {
	mu.Lock()
	defer mu.Unlock()
	current = h
}

func handler(ctx context.Context) (*Handler, error) {
	mu.Lock()
	defer mu.Unlock()
	if current != nil {
		return current, nil
	}
	cfg, err := CheckConfig(ctx, envconfig.OsLookuper())
	if err != nil {
		return nil, err
	}
	h, _, err := Build(ctx, cfg, Options{})
	if err != nil {
		return nil, err
	}
	current = h
	return h, nil
}

// ConflictsRetried is how many payment writes the process's handler re-applied after a
// version conflict (0 before it is built): the benchmark's figure.
func ConflictsRetried() int64 {
	mu.Lock()
	h := current
	mu.Unlock()
	if h == nil {
		return 0
	}
	return h.Service.ConflictsRetried()
}

// Drain drains the process's handler, if one was built (see Handler.Drain).
func Drain(ctx context.Context) error {
	mu.Lock()
	h := current
	mu.Unlock()
	if h == nil {
		return nil
	}
	return h.Drain(ctx)
}

// Options are what Build takes besides the configuration.
type Options struct {
	Observer relay.Observer
	Logger   *slog.Logger   // nil: JSON on stdout at the configured level
	Counter  *store.Counter // counts Firestore operations (benchmarks)
	OnCreate func()         // counts Cloud Tasks creates (benchmarks)
}

// Build wires the real adapters from cfg into a Handler, and returns a function that releases
// them.
func Build(ctx context.Context, cfg *config.Config, opts Options) (*Handler, func() error, error) {
	log := opts.Logger
	if log == nil {
		log = logging.New(os.Stdout, cfg.LogLevel)
	}
	ladder, err := cfg.EffectiveLadder()
	if err != nil {
		return nil, nil, err
	}
	for _, w := range ladder.Warnings() {
		log.WarnContext(ctx, "ladder: "+w)
	}
	var games, sandboxes []gamehttp.Game
	endpoint := func(name string, e config.Endpoint) gamehttp.Game {
		return gamehttp.Game{Name: name, URL: e.URL, Secrets: e.Secrets, Timeout: e.Timeout, AllowPrivate: e.AllowPrivate}
	}
	for _, g := range cfg.Games {
		games = append(games, endpoint(g.Name, g.Endpoint))
		if g.Sandbox != nil {
			sandboxes = append(sandboxes, endpoint(g.Name, *g.Sandbox))
		}
	}
	notifier, err := gamehttp.NewGames(games, sandboxes)
	if err != nil {
		return nil, nil, err
	}
	providers, err := provider.New(cfg.ProviderConfig.Config, cfg.Ingest())
	if err != nil {
		return nil, nil, err
	}
	st, err := store.NewFirestore(ctx, cfg.ProjectID, cfg.FirestoreDatabase, cfg.Collection)
	if err != nil {
		return nil, nil, err
	}
	st.WithCounter(opts.Counter)
	q, err := newQueue(ctx, cfg, opts)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	closeAll := func() error { return errors.Join(st.Close(), q.Close()) }
	var acker relay.StoreAcker
	if cfg.OpsQueue != "" {
		acker = providers
	}
	svc, err := relay.NewService(relay.Config{
		Store: st, Finder: st, Queue: q, Notifier: notifier, Ladder: ladder, Clock: relay.SystemClock{},
		Logger: log, Observer: opts.Observer, Lease: cfg.DeliverLease, SweepMargin: cfg.SweepMargin,
		Jobs: st, JobQueue: q, ReplayRate: cfg.ReplayRate, Reports: st, Days: st, Cursors: st, Routes: cfg.Games.Routes(),
		MaxDayPayments: cfg.ReconcileMaxDay,
		StoreAcker:     acker,
	})
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	log.InfoContext(ctx, "payrelay configured", "config", cfg)
	return &Handler{Service: svc, Providers: providers, Logger: log, Clock: relay.SystemClock{}, ProjectID: cfg.ProjectID, Games: cfg.Games.Names(), Routes: cfg.Games.Routes(),
		ProviderConfig: cfg.ProviderConfig.Config, QueryCallers: cfg.QueryCallers}, closeAll, nil
}

// dispatchDeadline is how long Cloud Tasks waits for Deliver: the lease (by then another
// delivery may take the attempt over), within the 15s to 30m Cloud Tasks accepts.
func dispatchDeadline(lease time.Duration) time.Duration {
	return min(max(lease, 15*time.Second), 30*time.Minute)
}

// unready says, in the log, why the process cannot serve, and returns the status to answer: an
// invalid configuration is permanent (500; logged as startup_failed, so its alert fires, in
// words that say it stays so until it is fixed and deployed again); anything else, a
// dependency unreachable while building, is transient (503; the next request builds again).
// The reason goes to the log only: it may name configuration.
func unready(err error) int {
	log := logging.New(os.Stdout, "info")
	var cfgErr *config.Error
	if errors.As(err, &cfgErr) {
		log.Error("payrelay cannot serve: its configuration is invalid, and stays so until it is fixed and deployed again (a permanent error, not retried)",
			"event", "startup_failed", "error", err.Error())
		return http.StatusInternalServerError
	}
	log.Error("payrelay cannot serve yet (a transient failure); it builds again on the next request", "error", err.Error())
	return http.StatusServiceUnavailable
}

func notConfigured(w http.ResponseWriter, err error) {
	code := unready(err)
	writeJSON(w, code, errorBody{Error: "payrelay is not ready", Reason: http.StatusText(code)})
}

// Ingest is the Ingest function: providers' payment notifications.
func Ingest(w http.ResponseWriter, r *http.Request) {
	h, err := handler(context.WithoutCancel(r.Context()))
	if err != nil {
		// A failure of ours, in the provider's own failure shape, so the provider retries (and,
		// once the configuration is fixed, its retry is served).
		provider.RefuseUnready(w, r.URL.Query().Get("provider"), unready(err))
		return
	}
	h.Ingest(w, r)
}

// Admin is the operators' function: their JSON API (private; see Handler.Admin).
func Admin(w http.ResponseWriter, r *http.Request) {
	h, err := handler(context.WithoutCancel(r.Context()))
	if err != nil {
		notConfigured(w, fmt.Errorf("admin: %w", err))
		return
	}
	h.Admin(w, r)
}

// Sweep is the sweeper, called every minute by Cloud Scheduler.
func Sweep(w http.ResponseWriter, r *http.Request) {
	h, err := handler(context.WithoutCancel(r.Context()))
	if err != nil {
		notConfigured(w, fmt.Errorf("sweep: %w", err))
		return
	}
	h.Sweep(w, r)
}

// Reconcile is the daily reconciliation against the providers' bills, called by Cloud
// Scheduler.
func Reconcile(w http.ResponseWriter, r *http.Request) {
	h, err := handler(context.WithoutCancel(r.Context()))
	if err != nil {
		notConfigured(w, fmt.Errorf("reconcile: %w", err))
		return
	}
	h.Reconcile(w, r)
}

// Recover runs the recovery sweeps (Stripe's undelivered events), called by Cloud Scheduler.
func Recover(w http.ResponseWriter, r *http.Request) {
	h, err := handler(context.WithoutCancel(r.Context()))
	if err != nil {
		notConfigured(w, fmt.Errorf("recover: %w", err))
		return
	}
	h.Recover(w, r)
}

// Query is the game servers' order query (补单), private to their identities.
func Query(w http.ResponseWriter, r *http.Request) {
	h, err := handler(context.WithoutCancel(r.Context()))
	if err != nil {
		notConfigured(w, fmt.Errorf("query: %w", err))
		return
	}
	h.GameQuery(w, r)
}

// Deliver is the Deliver function: one attempt of the ladder, called by Cloud Tasks.
func Deliver(w http.ResponseWriter, r *http.Request) {
	h, err := handler(context.WithoutCancel(r.Context()))
	if err != nil {
		notConfigured(w, fmt.Errorf("deliver: %w", err))
		return
	}
	h.Deliver(w, r)
}
