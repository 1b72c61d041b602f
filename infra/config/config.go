// Package config loads the functions' configuration from the environment, once, through a
// lookuper so tests can inject values. It is the only place that reads environment variables.
package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

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
	// TasksQueue is the Cloud Tasks queue, projects/P/locations/L/queues/Q.
	TasksQueue string `env:"TASKS_QUEUE"`
	// DeliverURL is the URL of the Deliver function that tasks call.
	DeliverURL string `env:"DELIVER_URL"`
	// InvokerServiceAccount is the account whose OIDC token Cloud Tasks puts on each task;
	// required outside the emulator.
	InvokerServiceAccount string `env:"TASKS_INVOKER_SA"`
	// OIDCAudience is the token's audience; DeliverURL when empty.
	OIDCAudience string `env:"TASKS_OIDC_AUDIENCE"`
	// GameServerURL is where Deliver posts payments.
	GameServerURL string `env:"GAME_SERVER_URL"`
	// GameServerSecret signs what Deliver posts (Standard Webhooks, whsec_...).
	GameServerSecret Secret `env:"GAME_SERVER_SECRET"`
	// IngestSecrets verify generic-format callbacks; several, comma-separated, for rotation.
	IngestSecrets Secrets `env:"INGEST_SECRETS"`
	// ProviderConfig is the native providers' configuration (JSON, a secret: it holds WeChat
	// Pay's APIv3 keys): Alipay apps and WeChat Pay merchants, see functions/provider.Config.
	ProviderConfig string `env:"PROVIDER_CONFIG"`
	// Ladder is the notification ladder, a comma-separated list of durations.
	Ladder Ladder `env:"LADDER"`
	// LadderCompression divides every step of the ladder; 1 in production.
	LadderCompression int `env:"LADDER_COMPRESSION, default=1"`
	// DeliverTimeout bounds one POST to the game server.
	DeliverTimeout time.Duration `env:"DELIVER_TIMEOUT, default=10s"`
	// DeliverLease is how long a claimed attempt is held before another delivery may take over.
	DeliverLease time.Duration `env:"DELIVER_LEASE, default=60s"`
	// CloudTasksEmulatorHost (host:port) makes the queue talk plain gRPC to an emulator.
	CloudTasksEmulatorHost string `env:"CLOUD_TASKS_EMULATOR_HOST"`
	// FirestoreEmulatorHost is read by the Firestore client itself; kept here to log it.
	FirestoreEmulatorHost string `env:"FIRESTORE_EMULATOR_HOST"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"LOG_LEVEL, default=info"`
}

// Secret is a Standard Webhooks secret read from the environment.
type Secret struct {
	webhook.Secret
	set bool
}

// EnvDecode implements envconfig.Decoder.
func (s *Secret) EnvDecode(v string) error {
	if v == "" {
		return nil
	}
	sec, err := webhook.ParseSecret(v)
	if err != nil {
		return err
	}
	s.Secret, s.set = sec, true
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

// Load reads the configuration through l and checks every value, reporting all that are
// missing or invalid at once.
func Load(ctx context.Context, l envconfig.Lookuper) (*Config, error) {
	var c Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: l}); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if c.Ladder.Attempts() == 0 {
		if err := c.Ladder.EnvDecode(""); err != nil {
			return nil, err
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) validate() error {
	var errs []error
	need := func(name, v string) {
		if strings.TrimSpace(v) == "" {
			errs = append(errs, fmt.Errorf("%s is required", name))
		}
	}
	need("PROJECT_ID", c.ProjectID)
	need("TASKS_QUEUE", c.TasksQueue)
	need("DELIVER_URL", c.DeliverURL)
	need("GAME_SERVER_URL", c.GameServerURL)
	if c.TasksQueue != "" && !queueRE.MatchString(c.TasksQueue) {
		errs = append(errs, fmt.Errorf("TASKS_QUEUE %q: want projects/P/locations/L/queues/Q", c.TasksQueue))
	}
	if err := checkURL("DELIVER_URL", c.DeliverURL); err != nil {
		errs = append(errs, err)
	}
	if err := checkURL("GAME_SERVER_URL", c.GameServerURL); err != nil {
		errs = append(errs, err)
	}
	if !c.GameServerSecret.set {
		errs = append(errs, errors.New("GAME_SERVER_SECRET is required (whsec_<base64>)"))
	}
	if len(c.IngestSecrets) == 0 {
		errs = append(errs, errors.New("INGEST_SECRETS is required (one or more whsec_<base64>, comma-separated)"))
	}
	if c.InvokerServiceAccount == "" && c.CloudTasksEmulatorHost == "" {
		errs = append(errs, errors.New("TASKS_INVOKER_SA is required outside the emulator: Deliver accepts only OIDC-authenticated tasks"))
	}
	if c.LadderCompression < 1 {
		errs = append(errs, fmt.Errorf("LADDER_COMPRESSION %d: want 1 (real time) or more", c.LadderCompression))
	}
	if c.DeliverTimeout <= 0 || c.DeliverTimeout > 10*time.Second {
		errs = append(errs, fmt.Errorf("DELIVER_TIMEOUT %s: want more than 0 and at most 10s", c.DeliverTimeout))
	}
	if c.DeliverLease < c.DeliverTimeout+5*time.Second || c.DeliverLease > 30*time.Minute {
		errs = append(errs, fmt.Errorf("DELIVER_LEASE %s: want at least DELIVER_TIMEOUT + 5s, so a live delivery is never taken over, and at most 30m", c.DeliverLease))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("LOG_LEVEL %q: want debug, info, warn or error", c.LogLevel))
	}
	if len(errs) > 0 {
		return fmt.Errorf("config: %w", errors.Join(errs...))
	}
	return nil
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
		slog.String("tasks_queue", c.TasksQueue),
		slog.String("deliver_url", c.DeliverURL),
		slog.String("game_server_url", c.GameServerURL),
		slog.String("ladder", c.Ladder.String()),
		slog.Int("ladder_compression", c.LadderCompression),
		slog.Int("ingest_secrets", len(c.IngestSecrets)),
		slog.Duration("deliver_timeout", c.DeliverTimeout),
		slog.Duration("deliver_lease", c.DeliverLease),
		slog.String("cloud_tasks_emulator", c.CloudTasksEmulatorHost),
		slog.String("firestore_emulator", c.FirestoreEmulatorHost),
	)
}
