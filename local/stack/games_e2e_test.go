package stack_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

// Two games, two queues: game B's server fails every attempt while game A's payments go out
// at once, each to its own game's server and nowhere else.
func TestTwoGamesOneFailingTheOtherOnTime(t *testing.T) {
	t.Parallel()
	need(t)
	var aIDs, bIDs []string
	for i := range 5 {
		for _, g := range []struct {
			app, prefix string
			ids         *[]string
		}{{stack.SampleAppB, "bdown", &bIDs}, {stack.SampleApp, "ok-games", &aIDs}} {
			order := fmt.Sprintf("%s-%d", g.prefix, i)
			code, body, err := stack.SendAsProvider(context.Background(), st.FunctionsURL+"/Ingest", stack.IngestSecret, stack.SampleBodyFor(g.app, order, "6.48", "CNY"))
			if err != nil || code != http.StatusOK {
				t.Fatalf("%s: %d %s %v", order, code, body, err)
			}
			var out struct {
				PaymentID string `json:"payment_id"`
			}
			json.Unmarshal(body, &out)
			*g.ids = append(*g.ids, out.PaymentID)
		}
	}
	for _, id := range aIDs {
		p := waitTerminal(t, id, 20*time.Second)
		hits := st.Game.Hits(id)
		if p.Game != stack.GameA || p.Paid().State != relay.StateDelivered || len(hits) != 1 || hits[0].Payload.Data.Game != stack.GameA {
			t.Errorf("game A payment %s: game %s, %s after %d POSTs", id, p.Game, p.Paid().State, len(hits))
			continue
		}
		// Not held back by game B's failures (its queue full of retries): A's went out at its
		// first attempt, with no failed or lost attempt before it. How soon is the benchmark's
		// figure (its isolation ratio), not a timer in a test.
		if n := p.Paid(); n.Attempt != 1 || len(n.Attempts) != 1 {
			t.Errorf("game A payment %s needed attempt %d (%d recorded) while game B failed", id, n.Attempt, len(n.Attempts))
		}
		if n := len(st.GameB.Hits(id)); n != 0 {
			t.Errorf("game A payment %s was posted to game B's server %d times", id, n)
		}
	}
	for _, id := range bIDs {
		p := waitTerminal(t, id, 20*time.Second)
		if p.Game != stack.GameB || p.Paid().State != relay.StateFailed || len(st.GameB.Hits(id)) != 8 || len(st.Game.Hits(id)) != 0 {
			t.Errorf("game B payment %s: game %s, %s after %d POSTs to B and %d to A; want failed after 8, all to B",
				id, p.Game, p.Paid().State, len(st.GameB.Hits(id)), len(st.Game.Hits(id)))
		}
	}
}

// A notification of an app routed to no game is refused as a failure of ours (500, so the
// provider retries until the configuration is fixed), and nothing is stored.
func TestUnroutedAppRefusedNothingStored(t *testing.T) {
	t.Parallel()
	need(t)
	code, body, err := stack.SendAsProvider(context.Background(), st.FunctionsURL+"/Ingest", stack.IngestSecret, stack.SampleBodyFor("forgotten-app", "unrouted-1", "6.48", "CNY"))
	if err != nil || code != http.StatusInternalServerError {
		t.Fatalf("unrouted app answered %d %s %v, want 500", code, body, err)
	}
	if _, _, err := payments.Get(context.Background(), relay.PaymentID(relay.EnvProduction, "generic", "forgotten-app", "unrouted-1")); err == nil {
		t.Error("a payment of an unrouted app was stored")
	}
}

// A configuration file: every malformed line named at once; a variable the runner owns refused
// by name; its GAMES replace the demo games and their secrets.
func TestConfigFileAndOverlay(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.env")
	os.WriteFile(bad, []byte("# fine\nGAMES=[]\nnot a line\nlower=x\nGAMES=[1]\n"), 0o600)
	if _, err := stack.ReadConfigFile(bad); err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "line 4") || !strings.Contains(err.Error(), "line 5: GAMES set twice") {
		t.Errorf("ReadConfigFile(bad) = %v; want lines 3, 4 and 5 named", err)
	}
	vars, err := stack.ReadConfigFile("../config.example.env")
	if err != nil || !strings.HasPrefix(vars["GAMES"], `[{"name":"sword"`) || vars["INGEST_SECRETS"] != stack.IngestSecret.Encode() || vars["GAME_SECRETS_SWORD"] != stack.GameSecret.Encode() {
		t.Fatalf("the example: %v %v", vars, err)
	}
	env := stack.FunctionEnv{FunctionsURL: "http://127.0.0.1:1", Games: []stack.GameEnv{{Name: stack.GameA, URL: "http://127.0.0.1:2/p", Queues: []string{stack.QueueName(stack.GameA, 0)}}}}
	opts := stack.Options{ConfigEnv: map[string]string{"DELIVER_URL": "x", "CLOUD_TASKS_EMULATOR_HOST": "y"}}
	if _, err := stack.Overlay(env.Map(), opts.ConfigEnv); err == nil || !strings.Contains(err.Error(), "CLOUD_TASKS_EMULATOR_HOST, DELIVER_URL") {
		t.Errorf("a file setting the runner's wiring: %v", err)
	}
	m, err := stack.Overlay(env.Map(), vars)
	if err != nil || m["GAMES"] != vars["GAMES"] || m["GAME_SECRETS_SWORD"] == "" || m["GAME_SECRETS_DEMO_A"] != "" || m["DELIVER_URL"] != "http://127.0.0.1:1/Deliver" {
		t.Errorf("overlay = %v, %v", m, err)
	}
}
