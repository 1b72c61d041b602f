package config

import (
	"context"
	"encoding/base64"
	"errors"
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

const games = `[
 {"name":"sword","url":"https://sword.example.com/payrelay","queues":["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-0"]},
 {"name":"farm-valley","url":"https://10.0.3.7/payrelay","timeout":"5s","allow_private":true,
  "queues":["projects/studio-prod/locations/asia-east1/queues/payrelay-farm-valley-0","projects/studio-prod/locations/asia-east1/queues/payrelay-farm-valley-1"]}]`

func valid() map[string]string {
	return map[string]string{
		"PROJECT_ID":               "studio-prod",
		"DELIVER_URL":              "https://deliver-abc.a.run.app",
		"TASKS_INVOKER_SA":         "payrelay-invoker@studio-prod.iam.gserviceaccount.com",
		"GAMES":                    games,
		"GAME_SECRETS_SWORD":       secretA,
		"GAME_SECRETS_FARM_VALLEY": secretA + "," + secretB,
		"INGEST_SECRETS":           secretA + "," + secretB,
		"PROVIDER_CONFIG":          `{"generic":{"apps":{"web-shop":"sword","farm-web":"farm-valley"}}}`,
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
	if c.DeliverLease != time.Minute || c.Collection != "payments" || c.FirestoreDatabase != "(default)" {
		t.Errorf("defaults = %+v", c)
	}
	sword, farm := c.Games[0], c.Games[1]
	if sword.Name != "sword" || sword.Timeout != 10*time.Second || len(sword.Secrets) != 1 || sword.AllowPrivate || len(sword.Queues) != 1 {
		t.Errorf("game sword = %+v", sword)
	}
	if farm.Name != "farm-valley" || farm.Timeout != 5*time.Second || len(farm.Secrets) != 2 || !farm.AllowPrivate || len(farm.Queues) != 2 {
		t.Errorf("game farm-valley = %+v", farm)
	}
	if c.ProviderConfig.Generic.Apps["web-shop"] != "sword" {
		t.Errorf("provider config = %+v", c.ProviderConfig)
	}
	if len(c.IngestSecrets) != 2 || c.Audience() != c.DeliverURL {
		t.Errorf("ingest secrets %d, audience %q", len(c.IngestSecrets), c.Audience())
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := Load(context.Background(), envconfig.MapLookuper(map[string]string{"LOG_LEVEL": "loud"}))
	if err == nil {
		t.Fatal("Load of an empty environment succeeded")
	}
	for _, name := range []string{"PROJECT_ID", "DELIVER_URL", "GAMES", "INGEST_SECRETS", "TASKS_INVOKER_SA", "LOG_LEVEL"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

// Every problem of the games and their routing is named at once.
func TestLoadNamesEveryGameProblem(t *testing.T) {
	t.Parallel()
	env := valid()
	env["GAMES"] = `[
 {"name":"Sword","url":"https://sword.example.com/x","queues":["projects/p/locations/l/queues/q"]},
 {"name":"farm","url":"http://farm.example.com/x","timeout":"30s","queues":[]},
 {"name":"mine","url":"https://mine.example.com/x","queues":["mine-0"]},
 {"name":"mine","url":"https://mine.example.com/y","queues":["projects/p/locations/l/queues/mine-1"]}]`
	env["GAME_SECRETS_MINE"] = "hunter2"
	env["PROVIDER_CONFIG"] = `{"generic":{"apps":{"web-shop":"sword"}}}`
	_, err := Load(context.Background(), envconfig.MapLookuper(env))
	if err == nil {
		t.Fatal("Load accepted broken games")
	}
	for _, want := range []string{
		`name "Sword"`,                  // not a game name
		"plain http",                    // farm's URL
		`timeout "30s"`,                 // farm's timeout
		"GAMES farm: queues",            // farm has none
		"GAME_SECRETS_FARM is required", // farm's secrets missing
		`queue "mine-0"`,                // not a queue path
		"game mine twice",
		"GAME_SECRETS_MINE",                    // not whsec_
		`generic app web-shop to game "sword"`, // routes to a game not configured
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %q:\n%v", want, err)
		}
	}
	env = valid()
	env["GAMES"] = "not json"
	if _, err := Load(context.Background(), envconfig.MapLookuper(env)); err == nil || !strings.Contains(err.Error(), "GAMES") {
		t.Errorf("GAMES not JSON: %v", err)
	}
}

func TestLoadInvalid(t *testing.T) {
	t.Parallel()
	cases := map[string]struct{ key, val, want string }{
		"relative url":     {"DELIVER_URL", "/Deliver", "not an absolute URL"},
		"bad secret":       {"GAME_SECRETS_SWORD", "hunter2", "whsec_"},
		"unrouted game":    {"PROVIDER_CONFIG", `{"generic":{"apps":{"web":"ghost"}}}`, `"ghost"`},
		"bad provider key": {"PROVIDER_CONFIG", `{"alipay":[{"app_id":"1","public_key":"x","game":"sword"}]}`, "public_key"},
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
	out := b.String() + fmt.Sprintf("%v %+v %+v", c.Games, c.IngestSecrets, c.Games[1].Secrets)
	for _, s := range []string{secretA, secretB, strings.TrimPrefix(secretA, "whsec_")} {
		if strings.Contains(out, s) {
			t.Fatalf("a secret reached the output: %s", out)
		}
	}
	if !strings.Contains(out, "studio-prod") {
		t.Errorf("logged config lacks the project: %s", out)
	}
}

const sandboxQueue = "projects/studio-prod/locations/asia-east1/queues/payrelay-sword-s0"

// withSandbox is valid() with sword given a sandbox block (JSON) and its sandbox secrets.
func withSandbox(sandbox, secrets string) map[string]string {
	m := valid()
	m["GAMES"] = strings.Replace(games, `"queues":["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-0"]}`,
		`"queues":["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-0"],"sandbox":`+sandbox+`}`, 1)
	if secrets != "" {
		m["GAME_SANDBOX_SECRETS_SWORD"] = secrets
	}
	return m
}

func TestLoadSandboxEndpoint(t *testing.T) {
	t.Parallel()
	sandboxSecret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("sandbox-only-secret-0123456789ab"))
	c, err := Load(context.Background(), envconfig.MapLookuper(withSandbox(
		`{"url":"https://staging.sword.example.com/payrelay","timeout":"3s","queues":["`+sandboxQueue+`"]}`, sandboxSecret)))
	if err != nil {
		t.Fatal(err)
	}
	sb := c.Games[0].Sandbox
	if sb == nil || sb.URL != "https://staging.sword.example.com/payrelay" || sb.Timeout != 3*time.Second || len(sb.Secrets) != 1 || len(sb.Queues) != 1 {
		t.Fatalf("sword's sandbox = %+v", sb)
	}
	if c.Games[1].Sandbox != nil {
		t.Errorf("farm-valley has a sandbox: %+v", c.Games[1].Sandbox)
	}
	routes := c.Games.Routes()
	if len(routes["sword"]) != 2 || len(routes["farm-valley"]) != 1 {
		t.Errorf("routes = %v, want sword production and sandbox, farm-valley production only", routes)
	}
	if q := c.Games.SandboxQueues(); len(q) != 1 || q["sword"][0] != sandboxQueue {
		t.Errorf("sandbox queues = %v", q)
	}
	if logged := fmt.Sprint(c.LogValue()); !strings.Contains(logged, "staging.sword.example.com") || strings.Contains(logged, strings.TrimPrefix(sandboxSecret, "whsec_")) {
		t.Errorf("the log names the sandbox's URL, never its secret: %v", c.LogValue())
	}
}

// No configuration can lead a sandbox notification to production: the production URL, a
// production secret or a production queue in a sandbox block each stop the start.
func TestLoadRefusesASandboxThatLeadsToProduction(t *testing.T) {
	t.Parallel()
	other := "whsec_" + base64.StdEncoding.EncodeToString([]byte("sandbox-only-secret-0123456789ab"))
	for name, tc := range map[string]struct {
		sandbox, secrets, want string
	}{
		"the production url": {`{"url":"https://SWORD.example.com:443/payrelay/","queues":["` + sandboxQueue + `"]}`, other,
			"sandbox: url is the production url"},
		"a production secret": {`{"url":"https://staging.sword.example.com/payrelay","queues":["` + sandboxQueue + `"]}`, other + "," + secretA,
			"a staging server must not hold production secrets"},
		"a production queue": {`{"url":"https://staging.sword.example.com/payrelay","queues":["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-0"]}`, other,
			"each endpoint has queues of its own"},
		"another game's queue": {`{"url":"https://staging.sword.example.com/payrelay","queues":["projects/studio-prod/locations/asia-east1/queues/payrelay-farm-valley-1"]}`, other,
			"each endpoint has queues of its own"},
		"no secrets": {`{"url":"https://staging.sword.example.com/payrelay","queues":["` + sandboxQueue + `"]}`, "",
			"GAME_SANDBOX_SECRETS_SWORD is required"},
		"no queue":       {`{"url":"https://staging.sword.example.com/payrelay"}`, other, "GAMES sword sandbox: queues"},
		"no url":         {`{"queues":["` + sandboxQueue + `"]}`, other, "GAMES sword sandbox: url is required"},
		"plain http":     {`{"url":"http://staging.sword.example.com/p","queues":["` + sandboxQueue + `"]}`, other, "plain http"},
		"an unknown key": {`{"url":"https://staging.sword.example.com/p","queues":["` + sandboxQueue + `"],"fallback":true}`, other, "unknown field"},
	} {
		_, err := Load(context.Background(), envconfig.MapLookuper(withSandbox(tc.sandbox, tc.secrets)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}

func TestGameSandboxSecretsVarCannotCollide(t *testing.T) {
	t.Parallel()
	// Game sword's sandbox and a game named sword-sandbox read different variables.
	if GameSandboxSecretsVar("sword") == GameSecretsVar("sword-sandbox") {
		t.Fatal("a game's sandbox secrets share a variable with another game's")
	}
}

// A value that does not even parse (GAMES' JSON cut short, a duration with no unit) is named
// with every other problem, not instead of them; the error says it is the configuration's.
func TestLoadNamesEveryProblemEvenWhenAValueDoesNotParse(t *testing.T) {
	t.Parallel()
	m := valid()
	m["GAMES"] = `[{"name":"sword",`
	m["PROVIDER_CONFIG"] = `{"alipay":`
	m["DELIVER_LEASE"] = "60"
	m["INGEST_SECRETS"] = "not-a-secret"
	delete(m, "PROJECT_ID")
	_, err := Load(context.Background(), envconfig.MapLookuper(m))
	var cfgErr *Error
	if !errors.As(err, &cfgErr) {
		t.Fatalf("Load = %v, want a *config.Error", err)
	}
	for _, want := range []string{"GAMES is not a JSON list", "PROVIDER_CONFIG is not valid JSON", "DELIVER_LEASE: time: missing unit", "INGEST_SECRETS: secret 1", "PROJECT_ID is required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %q:\n%v", want, err)
		}
	}
	for _, noise := range []string{"GAMES is required", "INGEST_SECRETS is required", "DELIVER_LEASE 0s"} {
		if strings.Contains(err.Error(), noise) {
			t.Errorf("the error repeats a value it already named as unparsable (%q):\n%v", noise, err)
		}
	}
}
