// Package config loads the functions' configuration from the environment, once, through a
// lookuper so tests can inject values. It is the only place that reads environment variables.
package config

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/schedule"
)

// Config is everything Ingest and Deliver need. Secrets are typed so that they never print.
type Config struct {
	// ProjectID is the Google Cloud project holding Firestore.
	ProjectID string `env:"PROJECT_ID"`
	// FirestoreDatabase is the Firestore database id.
	FirestoreDatabase string `env:"FIRESTORE_DATABASE, default=(default)"`
	// Collection is the Firestore collection of payments.
	Collection string `env:"PAYMENTS_COLLECTION, default=payments"`
	// DeliverURL is the URL of the Deliver function that tasks call.
	DeliverURL string `env:"DELIVER_URL"`
	// InvokerServiceAccount is the account whose OIDC token Cloud Tasks puts on each task;
	// required outside the emulator.
	InvokerServiceAccount string `env:"TASKS_INVOKER_SA"`
	// OIDCAudience is the token's audience; DeliverURL when empty.
	OIDCAudience string `env:"TASKS_OIDC_AUDIENCE"`
	// Games are the studio's games: where each one's notifications go, through which queues.
	// Each game's signing secrets come from GAME_SECRETS_<NAME> (see GameSecretsVar).
	Games Games `env:"GAMES"`
	// IngestSecrets verify generic-format callbacks; several, comma-separated, for rotation.
	IngestSecrets Secrets `env:"INGEST_SECRETS"`
	// IngestSandboxSecrets (optional) verify generic-format callbacks that are sandbox only:
	// what they sign is a sandbox notification, so a test harness may hold one.
	IngestSandboxSecrets Secrets `env:"INGEST_SANDBOX_SECRETS"`
	// ProviderConfig is the providers' configuration (JSON, a secret: it holds WeChat Pay's
	// APIv3 keys): the generic format's apps, Alipay apps and WeChat Pay merchants, each routed
	// to a game; see functions/provider.Config.
	ProviderConfig ProviderConfig `env:"PROVIDER_CONFIG"`
	// AppleAPIKey (optional, a secret of its own) is the App Store In-App Purchase key (.p8
	// PEM) the apps with api access in PROVIDER_CONFIG sign App Store Server API requests with.
	AppleAPIKey string `env:"APPLE_API_KEY"`
	// Ladder is the notification ladder, a comma-separated list of durations.
	Ladder Ladder `env:"LADDER"`
	// LadderCompression divides every step of the ladder; 1 in production.
	LadderCompression int `env:"LADDER_COMPRESSION, default=1"`
	// OpsQueue carries bulk replays' steps, projects/P/locations/L/queues/Q; empty disables
	// bulk replay.
	OpsQueue string `env:"OPS_QUEUE"`
	// ReplayRate bounds a bulk replay's replays per second.
	ReplayRate float64 `env:"REPLAY_RATE, default=20"`
	// ReconcileMaxDay is the largest stored day (payments and refunds) a reconciliation loads:
	// a larger one is reported before it is read, never run out of memory half way. 0: no bound.
	// terraform derives it from reconcile_memory and the measured figure.
	ReconcileMaxDay int `env:"RECONCILE_MAX_DAY_PAYMENTS, default=0"`
	// SweepMargin is how overdue a notification must be before the sweeper enqueues it again.
	SweepMargin time.Duration `env:"SWEEP_MARGIN, default=2m"`
	// DeliverLease is how long a claimed attempt is held before another delivery may take over.
	DeliverLease time.Duration `env:"DELIVER_LEASE, default=60s"`
	// CloudTasksEmulatorHost (host:port) makes the queue talk plain gRPC to an emulator.
	CloudTasksEmulatorHost string `env:"CLOUD_TASKS_EMULATOR_HOST"`
	// FirestoreEmulatorHost is read by the Firestore client itself; kept here to log it.
	FirestoreEmulatorHost string `env:"FIRESTORE_EMULATOR_HOST"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"LOG_LEVEL, default=info"`
	// QueryCallers maps each game server's identity (the email of its service account, which
	// Cloud Run verified) to the one game whose orders it may query through the Query
	// function: JSON {"sword-server@p.iam.gserviceaccount.com":"sword"}.
	QueryCallers QueryCallers `env:"QUERY_CALLERS"`
}

// QueryCallers is QUERY_CALLERS: identity to game.
type QueryCallers map[string]string

// EnvDecode implements envconfig.Decoder.
func (q *QueryCallers) EnvDecode(v string) error {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(v), q); err != nil {
		return fmt.Errorf("QUERY_CALLERS is not a JSON object of identity to game: %w", err)
	}
	return nil
}

// Secrets is a comma-separated list of secrets.
type Secrets []webhook.Secret

// EnvDecode implements envconfig.Decoder.
func (s *Secrets) EnvDecode(v string) error {
	for i, part := range strings.Split(v, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		sec, err := webhook.ParseSecret(part)
		if err != nil {
			return fmt.Errorf("secret %d: %w", i+1, err)
		}
		*s = append(*s, sec)
	}
	return nil
}

// ProviderConfig wraps provider.Config for decoding.
type ProviderConfig struct{ provider.Config }

// EnvDecode implements envconfig.Decoder.
func (p *ProviderConfig) EnvDecode(v string) error {
	c, err := provider.ParseConfig(v)
	if err != nil {
		return err
	}
	p.Config = c
	return nil
}

// Game is one game as the functions see it: the studio sets these in terraform's games
// variable, which writes GAMES; the secrets come from Secret Manager. Its production endpoint's
// fields sit at the top level; Sandbox, when set, is where its sandbox notifications go.
type Game struct {
	Name string `json:"name"`
	Endpoint
	// Sandbox is the game's sandbox endpoint (a staging server): its own URL, queues and
	// signing secrets (GameSandboxSecretsVar). Without it, sandbox notifications of the game
	// are stored and shown, never posted.
	Sandbox *Endpoint `json:"sandbox,omitempty"`
}

// Endpoint is where one environment's notifications of a game go.
type Endpoint struct {
	URL     string        `json:"url"`
	Timeout time.Duration `json:"-"`
	// TimeoutText is the JSON form of Timeout ("10s"); empty means 10s.
	TimeoutText string `json:"timeout"`
	// AllowPrivate lets Deliver reach the game server on private addresses.
	AllowPrivate bool `json:"allow_private"`
	// Queues are the endpoint's Cloud Tasks queues (K shards; a notification's id picks one).
	Queues []string `json:"queues"`
	// Secrets sign the endpoint's notifications; read from GameSecretsVar(Name) for
	// production, GameSandboxSecretsVar(Name) for the sandbox.
	Secrets Secrets `json:"-"`
}

// Games is GAMES: a JSON list of games.
type Games []Game

// EnvDecode implements envconfig.Decoder.
func (g *Games) EnvDecode(v string) error {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(v))
	dec.DisallowUnknownFields()
	if err := dec.Decode(g); err != nil {
		return fmt.Errorf("GAMES is not a JSON list of games: %w", err)
	}
	return nil
}

// GameSecretsVar is the environment variable holding a game's signing secrets
// (whsec_...[,whsec_...]): GAME_SECRETS_ and the name in upper case, - as _.
func GameSecretsVar(game string) string {
	return "GAME_SECRETS_" + strings.ToUpper(strings.ReplaceAll(game, "-", "_"))
}

// GameSandboxSecretsVar is the environment variable holding a game's sandbox signing secrets:
// GAME_SANDBOX_SECRETS_ and the name as in GameSecretsVar. (A suffix would collide: game
// "sword"'s sandbox and game "sword-sandbox" would both be GAME_SECRETS_SWORD_SANDBOX.)
func GameSandboxSecretsVar(game string) string {
	return "GAME_SANDBOX_SECRETS_" + strings.ToUpper(strings.ReplaceAll(game, "-", "_"))
}

// Names lists the games' names.
func (g Games) Names() []string {
	var ns []string
	for _, x := range g {
		ns = append(ns, x.Name)
	}
	return ns
}

// Queues maps each game to its production queues.
func (g Games) Queues() map[string][]string {
	m := map[string][]string{}
	for _, x := range g {
		m[x.Name] = x.Queues
	}
	return m
}

// SandboxQueues maps each game with a sandbox endpoint to its sandbox queues.
func (g Games) SandboxQueues() map[string][]string {
	m := map[string][]string{}
	for _, x := range g {
		if x.Sandbox != nil {
			m[x.Name] = x.Sandbox.Queues
		}
	}
	return m
}

// Routes lists each game's environments: production, and sandbox where it has an endpoint.
func (g Games) Routes() relay.Routes {
	r := relay.Routes{}
	for _, x := range g {
		r[x.Name] = []relay.Environment{relay.EnvProduction}
		if x.Sandbox != nil {
			r[x.Name] = append(r[x.Name], relay.EnvSandbox)
		}
	}
	return r
}

// Ladder wraps schedule.Ladder for decoding.
type Ladder struct{ schedule.Ladder }

// EnvDecode implements envconfig.Decoder.
func (l *Ladder) EnvDecode(v string) error {
	if v == "" {
		v = schedule.DefaultSpec
	}
	parsed, err := schedule.Parse(v)
	if err != nil {
		return err
	}
	l.Ladder = parsed
	return nil
}

var queueRE = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]+$`)

// Error is an invalid configuration: permanent, until someone fixes it and deploys again (as
// opposed to a dependency that is unreachable for now).
type Error struct{ Err error }

func (e *Error) Error() string { return "config: " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// parsers check the values that envconfig would otherwise stop at, one decode error hiding
// every other problem: Load parses them first, reports each that does not parse, and hands
// envconfig the rest.
var parsers = map[string]func(string) error{
	"GAMES":                  func(v string) error { var g Games; return g.EnvDecode(v) },
	"PROVIDER_CONFIG":        func(v string) error { var p ProviderConfig; return p.EnvDecode(v) },
	"INGEST_SECRETS":         func(v string) error { var s Secrets; return s.EnvDecode(v) },
	"INGEST_SANDBOX_SECRETS": func(v string) error { var s Secrets; return s.EnvDecode(v) },
	"QUERY_CALLERS":          func(v string) error { var q QueryCallers; return q.EnvDecode(v) },
	"LADDER":                 func(v string) error { var l Ladder; return l.EnvDecode(v) },
	"LADDER_COMPRESSION":     func(v string) error { _, err := strconv.Atoi(v); return err },
	"REPLAY_RATE":            func(v string) error { _, err := strconv.ParseFloat(v, 64); return err },
	"RECONCILE_MAX_DAY_PAYMENTS": func(v string) error {
		if n, err := strconv.Atoi(v); err != nil || n < 0 {
			return fmt.Errorf("%q: want a count of payments, 0 for no bound", v)
		}
		return nil
	},
	"SWEEP_MARGIN":  func(v string) error { _, err := time.ParseDuration(v); return err },
	"DELIVER_LEASE": func(v string) error { _, err := time.ParseDuration(v); return err },
}

// parsed is a lookuper that hides the values that did not parse (Load reports them itself).
type parsed struct {
	l   envconfig.Lookuper
	bad map[string]bool
}

func (p parsed) Lookup(key string) (string, bool) {
	if p.bad[key] {
		return "", false
	}
	return p.l.Lookup(key)
}

// Load reads the configuration through l and checks every value, reporting all that are
// missing or invalid at once, as an *Error.
func Load(ctx context.Context, l envconfig.Lookuper) (*Config, error) {
	var c Config
	var errs []error
	lk := parsed{l: l, bad: map[string]bool{}}
	for _, name := range slices.Sorted(maps.Keys(parsers)) {
		if v, ok := l.Lookup(name); ok && v != "" {
			if err := parsers[name](v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				lk.bad[name] = true
			}
		}
	}
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: lk}); err != nil {
		return nil, &Error{errors.Join(append(errs, err)...)}
	}
	if c.Ladder.Attempts() == 0 {
		if err := c.Ladder.EnvDecode(""); err != nil {
			return nil, err
		}
	}
	if !lk.bad["GAMES"] {
		errs = append(errs, c.loadGames(l)...)
	}
	if err := c.validate(errs, lk.bad); err != nil {
		return nil, err
	}
	return &c, nil
}

// loadGames reads each game's secrets and checks each game, naming every problem.
func (c *Config) loadGames(l envconfig.Lookuper) []error {
	var errs []error
	if len(c.Games) == 0 {
		return []error{errors.New("GAMES is required: a JSON list of games, each with name, url and queues")}
	}
	seen := map[string]bool{}
	queueOwner := map[string]string{} // queue path to the endpoint using it
	for i := range c.Games {
		g := &c.Games[i]
		name := g.Name
		if !relay.GamePattern.MatchString(name) {
			errs = append(errs, fmt.Errorf("GAMES[%d]: name %q: want 1-30 lowercase letters, digits or -, starting with a letter", i, name))
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("GAMES: game %s twice", name))
		}
		seen[name] = true
		errs = append(errs, g.Endpoint.load(l, "GAMES "+name, GameSecretsVar(name), "game "+name+"'s signing secrets", queueOwner)...)
		if g.Sandbox != nil {
			sb := g.Sandbox
			errs = append(errs, sb.load(l, "GAMES "+name+" sandbox", GameSandboxSecretsVar(name), "game "+name+"'s sandbox signing secrets", queueOwner)...)
			// Invariant 11: nothing of the sandbox may lead to production.
			if sb.URL != "" && sameURL(sb.URL, g.URL) {
				errs = append(errs, fmt.Errorf("GAMES %s sandbox: url is the production url; a sandbox endpoint must be another server (a staging one)", name))
			}
			for _, s := range sb.Secrets {
				if slices.ContainsFunc(g.Secrets, s.Equal) {
					errs = append(errs, fmt.Errorf("%s: a sandbox secret is also one of %s: a staging server must not hold production secrets", GameSandboxSecretsVar(name), GameSecretsVar(name)))
					break
				}
			}
		}
	}
	c.ProviderConfig.AppleAPIKey = c.AppleAPIKey
	if err := c.ProviderConfig.Validate(c.Games.Names()); err != nil {
		errs = append(errs, err)
	}
	for who, game := range c.QueryCallers {
		if !seen[game] {
			errs = append(errs, fmt.Errorf("QUERY_CALLERS: %s may query game %q, which GAMES does not configure", who, game))
		}
	}
	return errs
}

func (c *Config) validate(errs []error, bad map[string]bool) error {
	need := func(name, v string) {
		if strings.TrimSpace(v) == "" {
			errs = append(errs, fmt.Errorf("%s is required", name))
		}
	}
	need("PROJECT_ID", c.ProjectID)
	need("DELIVER_URL", c.DeliverURL)
	if err := checkURL("DELIVER_URL", c.DeliverURL); err != nil {
		errs = append(errs, err)
	}
	if len(c.IngestSecrets) == 0 && !bad["INGEST_SECRETS"] {
		errs = append(errs, errors.New("INGEST_SECRETS is required (one or more whsec_<base64>, comma-separated)"))
	}
	if c.InvokerServiceAccount == "" && c.CloudTasksEmulatorHost == "" {
		errs = append(errs, errors.New("TASKS_INVOKER_SA is required outside the emulator: Deliver accepts only OIDC-authenticated tasks"))
	}
	if c.LadderCompression < 1 {
		errs = append(errs, fmt.Errorf("LADDER_COMPRESSION %d: want 1 (real time) or more", c.LadderCompression))
	}
	if longest := c.LongestTimeout(); !bad["DELIVER_LEASE"] && (c.DeliverLease < longest+5*time.Second || c.DeliverLease > 30*time.Minute) {
		errs = append(errs, fmt.Errorf("DELIVER_LEASE %s: want at least the longest game timeout (%s) + 5s, so a live delivery is never taken over, and at most 30m", c.DeliverLease, longest))
	}
	if c.OpsQueue != "" && !queueRE.MatchString(c.OpsQueue) {
		errs = append(errs, fmt.Errorf("OPS_QUEUE %q: want projects/P/locations/L/queues/Q", c.OpsQueue))
	}
	if c.ReplayRate <= 0 || c.ReplayRate > 500 {
		errs = append(errs, fmt.Errorf("REPLAY_RATE %g: want more than 0 and at most 500 per second", c.ReplayRate))
	}
	if c.SweepMargin < time.Second || c.SweepMargin > time.Hour {
		errs = append(errs, fmt.Errorf("SWEEP_MARGIN %s: want between 1s and 1h", c.SweepMargin))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("LOG_LEVEL %q: want debug, info, warn or error", c.LogLevel))
	}
	if len(errs) > 0 {
		return &Error{errors.Join(errs...)}
	}
	return nil
}

// load reads an endpoint's secrets from secretsVar and checks its URL, timeout and queues;
// each queue may serve one endpoint only (queueOwner records which).
func (e *Endpoint) load(l envconfig.Lookuper, what, secretsVar, secretsWhat string, queueOwner map[string]string) []error {
	var errs []error
	if e.URL == "" {
		errs = append(errs, fmt.Errorf("%s: url is required", what))
	} else if err := checkURL(what+" url", e.URL); err != nil {
		errs = append(errs, err)
	}
	e.Timeout = 10 * time.Second
	if e.TimeoutText != "" {
		d, err := time.ParseDuration(e.TimeoutText)
		if err != nil || d <= 0 || d > 10*time.Second {
			errs = append(errs, fmt.Errorf("%s: timeout %q: want more than 0 and at most 10s", what, e.TimeoutText))
		} else {
			e.Timeout = d
		}
	}
	if len(e.Queues) == 0 {
		errs = append(errs, fmt.Errorf("%s: queues: at least one Cloud Tasks queue is required", what))
	}
	for _, q := range e.Queues {
		if !queueRE.MatchString(q) {
			errs = append(errs, fmt.Errorf("%s: queue %q: want projects/P/locations/L/queues/Q", what, q))
		} else if other, dup := queueOwner[q]; dup {
			errs = append(errs, fmt.Errorf("%s: queue %q is also %s's: each endpoint has queues of its own", what, q, other))
		} else {
			queueOwner[q] = what
		}
	}
	raw, _ := l.Lookup(secretsVar)
	if err := e.Secrets.EnvDecode(raw); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", secretsVar, err))
	} else if len(e.Secrets) == 0 {
		errs = append(errs, fmt.Errorf("%s is required: %s (one or more whsec_<base64>, comma-separated)", secretsVar, secretsWhat))
	}
	return errs
}

// sameURL reports whether two URLs name the same endpoint, whatever their case of scheme and
// host, default port or trailing slash.
func sameURL(a, b string) bool {
	norm := func(raw string) string {
		u, err := url.Parse(raw)
		if err != nil {
			return raw
		}
		host := strings.ToLower(u.Hostname())
		port := u.Port()
		if (u.Scheme == "https" && port == "443") || (u.Scheme == "http" && port == "80") {
			port = ""
		}
		return strings.ToLower(u.Scheme) + "://" + host + ":" + port + strings.TrimRight(u.EscapedPath(), "/") + "?" + u.RawQuery
	}
	return norm(a) == norm(b)
}

// checkURL accepts https, and plain http only to a loopback host (local runs and tests).
func checkURL(name, raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%s %q is not an absolute URL", name, raw)
	}
	if u.User != nil {
		return fmt.Errorf("%s must not carry credentials in the URL", name)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return fmt.Errorf("%s %q: plain http is allowed only to a loopback host; use https", name, raw)
	}
	return fmt.Errorf("%s %q: want an https URL", name, raw)
}

// Ingest is the generic format's secrets, by what they may sign.
func (c *Config) Ingest() provider.IngestSecrets {
	return provider.IngestSecrets{Production: c.IngestSecrets, Sandbox: c.IngestSandboxSecrets}
}

// LongestTimeout is the longest of the games' timeouts.
func (c *Config) LongestTimeout() time.Duration {
	var m time.Duration
	for _, g := range c.Games {
		m = max(m, g.Timeout)
		if g.Sandbox != nil {
			m = max(m, g.Sandbox.Timeout)
		}
	}
	return m
}

// EffectiveLadder is the ladder after compression.
func (c *Config) EffectiveLadder() (schedule.Ladder, error) {
	return c.Ladder.Compress(c.LadderCompression)
}

// Audience is the OIDC audience of the tasks' tokens.
func (c *Config) Audience() string {
	if c.OIDCAudience != "" {
		return c.OIDCAudience
	}
	return c.DeliverURL
}

// LogValue implements slog.LogValuer: everything an operator needs, no secret.
func (c *Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("project_id", c.ProjectID),
		slog.String("firestore_database", c.FirestoreDatabase),
		slog.String("collection", c.Collection),
		slog.String("deliver_url", c.DeliverURL),
		slog.Any("games", c.gameSummary()),
		slog.String("ladder", c.Ladder.String()),
		slog.Int("ladder_compression", c.LadderCompression),
		slog.Int("ingest_secrets", len(c.IngestSecrets)),
		slog.Int("ingest_sandbox_secrets", len(c.IngestSandboxSecrets)),
		slog.Bool("apple_api_key", c.AppleAPIKey != ""),
		slog.Duration("deliver_lease", c.DeliverLease),
		slog.String("cloud_tasks_emulator", c.CloudTasksEmulatorHost),
		slog.String("firestore_emulator", c.FirestoreEmulatorHost),
	)
}

// gameSummary is what the log says of the games: names, URLs, queues, how many secrets.
func (c *Config) gameSummary() []map[string]any {
	var out []map[string]any
	for _, g := range c.Games {
		m := map[string]any{"name": g.Name, "url": g.URL, "queues": len(g.Queues), "secrets": len(g.Secrets),
			"timeout": g.Timeout.String(), "allow_private": g.AllowPrivate}
		if sb := g.Sandbox; sb != nil {
			m["sandbox"] = map[string]any{"url": sb.URL, "queues": len(sb.Queues), "secrets": len(sb.Secrets), "timeout": sb.Timeout.String()}
		}
		out = append(out, m)
	}
	return out
}

// Deployed reports whether the process runs on Cloud Run (Cloud Functions 2nd gen), which sets
// K_SERVICE: there the configuration is checked as the process starts.
func Deployed(l envconfig.Lookuper) bool {
	v, _ := l.Lookup("K_SERVICE")
	return v != ""
}
