package config

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
)

var (
	secretA = "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	secretB = "whsec_" + base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
)

func valid() map[string]string {
	return map[string]string{
		"PROJECT_ID":         "studio-prod",
		"TASKS_QUEUE":        "projects/studio-prod/locations/asia-east1/queues/deliveries",
		"DELIVER_URL":        "https://deliver-abc.a.run.app",
		"TASKS_INVOKER_SA":   "payrelay-invoker@studio-prod.iam.gserviceaccount.com",
		"GAME_SERVER_URL":    "https://game.example.com/payments",
		"GAME_SERVER_SECRET": secretA,
		"INGEST_SECRETS":     secretA + "," + secretB,
	}
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(context.Background(), envconfig.MapLookuper(valid()))
	if err != nil {
		t.Fatal(err)
	}
	if c.Ladder.String() != "0s,2m0s,10m0s,10m0s,1h0m0s,2h0m0s,6h0m0s,15h0m0s" || c.LadderCompression != 1 {
		t.Errorf("ladder = %s x%d, want the default at real time", c.Ladder, c.LadderCompression)
	}
	if c.DeliverTimeout != 10*time.Second || c.DeliverLease != time.Minute || c.Collection != "payments" || c.FirestoreDatabase != "(default)" {
		t.Errorf("defaults = %+v", c)
	}
	if len(c.IngestSecrets) != 2 || c.Audience() != c.DeliverURL {
		t.Errorf("ingest secrets %d, audience %q", len(c.IngestSecrets), c.Audience())
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := Load(context.Background(), envconfig.MapLookuper(map[string]string{"DELIVER_TIMEOUT": "30s"}))
	if err == nil {
		t.Fatal("Load of an empty environment succeeded")
	}
	for _, name := range []string{"PROJECT_ID", "TASKS_QUEUE", "DELIVER_URL", "GAME_SERVER_URL", "GAME_SERVER_SECRET", "INGEST_SECRETS", "TASKS_INVOKER_SA", "DELIVER_TIMEOUT"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

func TestLoadInvalid(t *testing.T) {
	t.Parallel()
	cases := map[string]struct{ key, val, want string }{
		"queue path":       {"TASKS_QUEUE", "deliveries", "TASKS_QUEUE"},
		"http game server": {"GAME_SERVER_URL", "http://game.example.com/x", "plain http"},
		"relative url":     {"DELIVER_URL", "/Deliver", "not an absolute URL"},
		"bad secret":       {"GAME_SERVER_SECRET", "hunter2", "whsec_"},
		"bad ladder":       {"LADDER", "0s,soon", `step 2 ("soon")`},
		"compression":      {"LADDER_COMPRESSION", "0", "LADDER_COMPRESSION"},
		"short lease":      {"DELIVER_LEASE", "12s", "DELIVER_LEASE"},
		"log level":        {"LOG_LEVEL", "loud", "LOG_LEVEL"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := valid()
			env[tc.key] = tc.val
			_, err := Load(context.Background(), envconfig.MapLookuper(env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load with %s=%q: %v, want an error containing %q", tc.key, tc.val, err, tc.want)
			}
		})
	}
	env := valid()
	delete(env, "TASKS_INVOKER_SA")
	env["CLOUD_TASKS_EMULATOR_HOST"] = "127.0.0.1:8123"
	env["DELIVER_URL"] = "http://127.0.0.1:8080/Deliver"
	if _, err := Load(context.Background(), envconfig.MapLookuper(env)); err != nil {
		t.Errorf("emulator config without an invoker account: %v", err)
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	c, err := Load(context.Background(), envconfig.MapLookuper(valid()))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	slog.New(slog.NewJSONHandler(&b, nil)).Info("config", "config", c)
	out := b.String() + fmt.Sprintf("%v %+v", c.GameServerSecret, c.IngestSecrets)
	for _, s := range []string{secretA, secretB, strings.TrimPrefix(secretA, "whsec_")} {
		if strings.Contains(out, s) {
			t.Fatalf("a secret reached the output: %s", out)
		}
	}
	if !strings.Contains(out, "studio-prod") {
		t.Errorf("logged config lacks the project: %s", out)
	}
}
