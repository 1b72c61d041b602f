package functions

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Before the process can serve (here its environment is incomplete, as a transient failure
// would leave it), Ingest answers each provider in its own failure shape with 503 and keeps
// no half-built handler: the next request builds again, and serves once it can.
func TestProcessHandlerRetriesAFailedBuild(t *testing.T) {
	for _, k := range []string{"PROJECT_ID", "GAMES", "INGEST_SECRETS", "DELIVER_URL", "PROVIDER_CONFIG", "GAME_SECRETS_SWORD",
		"CLOUD_TASKS_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "TASKS_INVOKER_SA"} {
		t.Setenv(k, "")
	}
	for name, want := range map[string]string{"alipay": "failure", "wechatpay": `"code":"FAIL"`, "": `"error"`} {
		w := httptest.NewRecorder()
		Ingest(w, httptest.NewRequest(http.MethodPost, "/Ingest?provider="+name, strings.NewReader("x")))
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), want) {
			t.Errorf("%q before the build: %d %q, want 503 with %s", name, w.Code, w.Body.String(), want)
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
