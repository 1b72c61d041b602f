package functions

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"github.com/sethvargo/go-envconfig"

	"github.com/payrelay/payrelay/local/tasksemu"
)

// Before the process can serve (here its environment is incomplete: an invalid configuration,
// permanent until fixed), Ingest answers each provider in its own failure shape with 500, and
// keeps no half-built handler: the next request builds again, and serves once it can.
func TestProcessHandlerRetriesAFailedBuild(t *testing.T) {
	for _, k := range []string{"PROJECT_ID", "GAMES", "INGEST_SECRETS", "DELIVER_URL", "PROVIDER_CONFIG", "GAME_SECRETS_SWORD",
		"CLOUD_TASKS_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "TASKS_INVOKER_SA"} {
		t.Setenv(k, "")
	}
	for name, want := range map[string]string{"alipay": "failure", "wechatpay": `"code":"FAIL"`, "": `"error"`} {
		w := httptest.NewRecorder()
		Ingest(w, httptest.NewRequest(http.MethodPost, "/Ingest?provider="+name, strings.NewReader("x")))
		if w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), want) {
			t.Errorf("%q before the build: %d %q, want 500 (permanent until fixed) with %s", name, w.Code, w.Body.String(), want)
		}
	}
	t.Setenv("PROJECT_ID", "studio-prod")
	t.Setenv("DELIVER_URL", "http://127.0.0.1:1/Deliver")
	t.Setenv("GAMES", `[{"name":"sword","url":"http://127.0.0.1:1/p","queues":["projects/p/locations/l/queues/q"]}]`)
	t.Setenv("GAME_SECRETS_SWORD", "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	t.Setenv("INGEST_SECRETS", "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	t.Setenv("PROVIDER_CONFIG", `{"generic":{"apps":{"game-1":"sword"}}}`)
	t.Setenv("CLOUD_TASKS_EMULATOR_HOST", "127.0.0.1:1")
	t.Setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
	w := httptest.NewRecorder()
	Ingest(w, httptest.NewRequest(http.MethodPost, "/Ingest", strings.NewReader(`{}`)))
	if w.Code != http.StatusUnsupportedMediaType { // served: the request itself is refused now
		t.Errorf("after the environment is complete: %d %s, want the built handler's 415", w.Code, w.Body)
	}
	mu.Lock()
	built := current != nil
	current = nil
	mu.Unlock()
	if !built {
		t.Error("the handler was not kept once built")
	}
}

// A configured queue Cloud Tasks does not have (deleted or renamed by mistake) stops the start
// with its name, all of them at once; the queues that exist pass.
func TestCheckQueuesNamesAMissingQueue(t *testing.T) {
	t.Parallel()
	const have, sandbox, gone, ops = "projects/p/locations/l/queues/sword-0", "projects/p/locations/l/queues/sword-s0",
		"projects/p/locations/l/queues/farm-0", "projects/p/locations/l/queues/ops-0"
	srv, err := tasksemu.New(tasksemu.Options{Queues: []string{have, sandbox, ops}})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	secret := "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	env := map[string]string{
		"PROJECT_ID": "p", "DELIVER_URL": "http://127.0.0.1:1/Deliver", "CLOUD_TASKS_EMULATOR_HOST": addr, "INGEST_SECRETS": secret, "OPS_QUEUE": ops,
		"GAMES": `[{"name":"sword","url":"http://127.0.0.1:1/p","queues":["` + have + `"],"sandbox":{"url":"http://127.0.0.1:2/p","queues":["` + sandbox + `"]}},
		           {"name":"farm","url":"http://127.0.0.1:1/f","queues":["` + gone + `"]}]`,
		"GAME_SECRETS_SWORD": secret, "GAME_SECRETS_FARM": secret, "PROVIDER_CONFIG": `{}`,
		"GAME_SANDBOX_SECRETS_SWORD": "whsec_c2FuZGJveC1zYW5kYm94LXNhbmRib3gtc2FuZGJveCE=",
	}
	cfg, err := CheckConfig(context.Background(), envconfig.MapLookuper(env))
	if err != nil {
		t.Fatal(err)
	}
	err = CheckQueues(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), gone) || strings.Contains(err.Error(), have) || strings.Contains(err.Error(), sandbox) {
		t.Fatalf("CheckQueues = %v; want an error naming %s alone", err, gone)
	}
	// Restored: the start goes on.
	if _, err := srv.CreateQueue(context.Background(), &cloudtaskspb.CreateQueueRequest{Parent: "projects/p/locations/l", Queue: &cloudtaskspb.Queue{Name: gone}}); err != nil {
		t.Fatal(err)
	}
	if err := CheckQueues(context.Background(), cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("with every queue there: %v", err)
	}
}

// A Google Play app with acknowledge needs the ops queue that retries acknowledgements: without
// OPS_QUEUE the configuration is refused, naming why; a certificate endpoint that is not a
// loopback stand-in is refused too.
func TestCheckConfigAcknowledgeNeedsTheOpsQueue(t *testing.T) {
	t.Parallel()
	secret := "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	play := func(ack bool, certs string) string {
		return fmt.Sprintf(`{"googleplay":{"apps":[{"package_name":"com.studio.sword","game":"sword","acknowledge":%t}],"audience":"https://x/?provider=googleplay","service_account":"push@p.iam.gserviceaccount.com","certs_url":%q}}`, ack, certs)
	}
	env := func(providers, ops string) envconfig.Lookuper {
		m := map[string]string{
			"PROJECT_ID": "p", "DELIVER_URL": "http://127.0.0.1:1/Deliver", "CLOUD_TASKS_EMULATOR_HOST": "127.0.0.1:1", "INGEST_SECRETS": secret, "GAME_SECRETS_SWORD": secret, "PROVIDER_CONFIG": providers,
			"GAMES": `[{"name":"sword","url":"http://127.0.0.1:1/p","queues":["projects/p/locations/l/queues/sword-0"]}]`,
		}
		if ops != "" {
			m["OPS_QUEUE"] = ops
		}
		return envconfig.MapLookuper(m)
	}
	if _, err := CheckConfig(context.Background(), env(play(true, ""), "")); err == nil || !strings.Contains(err.Error(), "OPS_QUEUE") {
		t.Errorf("acknowledge without OPS_QUEUE: %v, want a refusal naming OPS_QUEUE", err)
	}
	if _, err := CheckConfig(context.Background(), env(play(true, ""), "projects/p/locations/l/queues/ops")); err != nil {
		t.Errorf("acknowledge with OPS_QUEUE: %v", err)
	}
	if _, err := CheckConfig(context.Background(), env(play(false, ""), "")); err != nil {
		t.Errorf("without acknowledge, no ops queue needed: %v", err)
	}
	if _, err := CheckConfig(context.Background(), env(play(false, "https://attacker.example/certs"), "")); err == nil || !strings.Contains(err.Error(), "certs_url") {
		t.Errorf("a remote certs_url: %v, want it refused", err)
	}
}
