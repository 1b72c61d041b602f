package stack_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

func adminDo(t *testing.T, method, path, contentType string, body string, header http.Header) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, st.AdminURL()+path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

// A payment fails all 8 attempts (its refund held behind it), the game server is fixed, an
// operator replays it through the API: it is delivered, its refund follows, and its history
// holds both ladders and the replay.
func TestReplayThroughTheAdminAPI(t *testing.T) {
	t.Parallel()
	need(t)
	flakyDown.Store(true)
	id := ingest(t, "flaky-1")
	waitTerminal(t, id, 30*time.Second)
	refund(t, "flaky-1", "r1", "1.00")

	code, out := adminDo(t, "GET", "/api/notifications?state=failed&game="+stack.GameA, "", "", nil)
	if code != 200 || !strings.Contains(fmt.Sprint(out["notifications"]), id+"-paid") {
		t.Fatalf("list of failed notifications = %d %v; want it to hold %s", code, out, id)
	}
	code, out = adminDo(t, "GET", fmt.Sprintf("/api/payments?provider=generic&merchant=%s&order=flaky-1", stack.SampleApp), "", "", nil)
	if code != 200 || out["payment_id"] != id {
		t.Fatalf("find by order id = %d %v", code, out)
	}

	path := fmt.Sprintf("/api/payments/%s/notifications/paid/replay", id)
	for name, tc := range map[string]struct {
		ct, body string
		header   http.Header
		want     int
	}{
		"a cross-site form":    {"application/x-www-form-urlencoded", "reason=x", nil, http.StatusForbidden},
		"another origin":       {"application/json", `{"reason":"x"}`, http.Header{"Origin": {"https://evil.example"}}, http.StatusForbidden},
		"a cross-site fetch":   {"application/json", `{"reason":"x"}`, http.Header{"Sec-Fetch-Site": {"cross-site"}}, http.StatusForbidden},
		"no reason":            {"application/json", `{}`, nil, http.StatusUnprocessableEntity},
		"a held refund":        {"application/json", `{"reason":"x"}`, nil, 0},
		"unknown notification": {"application/json", `{"reason":"x"}`, nil, 0},
	} {
		p := path
		switch name {
		case "a held refund":
			p, tc.want = strings.Replace(path, "/paid/", "/"+relay.RefundKey("r1")+"/", 1), http.StatusConflict
		case "unknown notification":
			p, tc.want = strings.Replace(path, "/paid/", "/refund-0000/", 1), http.StatusNotFound
		}
		if code, out := adminDo(t, "POST", p, tc.ct, tc.body, tc.header); code != tc.want {
			t.Errorf("%s: %d %v, want %d", name, code, out, tc.want)
		}
	}
	if n := len(st.Game.Hits(id)); n != 8 {
		t.Fatalf("refused replays reached the game server: %d POSTs", n)
	}

	flakyDown.Store(false)
	code, out = adminDo(t, "POST", path, "application/json", `{"reason":"game server fixed"}`, nil)
	if code != 200 {
		t.Fatalf("replay = %d %v", code, out)
	}
	p := waitNotification(t, id, relay.RefundKey("r1"), 20*time.Second)
	paid := p.Paid()
	if paid.State != relay.StateDelivered || paid.Generation != 1 || len(paid.Attempts) != 9 || len(paid.Actions) != 1 || paid.Actions[0].Reason != "game server fixed" {
		t.Fatalf("after the replay: %s, generation %d, %d attempts, actions %+v", paid.State, paid.Generation, len(paid.Attempts), paid.Actions)
	}
	if got := fmt.Sprint(sequence(st.Game.Hits(id))); got != "[paid#1(500) paid#2(500) paid#3(500) paid#4(500) paid#5(500) paid#6(500) paid#7(500) paid#8(500) paid#1(200) refund r1#1(200)]" {
		t.Errorf("game server got %s", got)
	}
	code, out = adminDo(t, "GET", "/api/payments/"+id, "", "", nil)
	notifications, _ := out["notifications"].([]any)
	if code != 200 || len(notifications) != 2 {
		t.Fatalf("show = %d %v", code, out)
	}
	gens := map[float64]int{}
	for _, a := range notifications[0].(map[string]any)["attempts"].([]any) {
		gens[a.(map[string]any)["generation"].(float64)]++
	}
	if gens[0] != 8 || gens[1] != 1 {
		t.Errorf("the payment's history holds ladders %v; want 8 attempts of generation 0 and 1 of generation 1", gens)
	}
	// Cancel refuses what is not pending.
	if code, _ := adminDo(t, "POST", strings.Replace(path, "/replay", "/cancel", 1), "application/json", `{"reason":"x"}`, nil); code != http.StatusConflict {
		t.Errorf("cancel of a delivered notification = %d, want 409", code)
	}
}
