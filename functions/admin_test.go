package functions

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// The dashboard renders a payment's timeline, and its forms are protected: a post without the
// browser's anti-forgery cookie, or from another site, changes nothing.
func TestDashboardPagesAndForms(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.h.Games = []string{"game-1"}
	if code, _ := serve(f.h.Ingest, signed(validBody, testNow)); code != http.StatusOK {
		t.Fatal("ingest failed")
	}
	pid := paymentIDOf(t, f)
	// A failing attempt, so the timeline has a point.
	f.fail = true
	serve(f.h.Deliver, deliverReq(`{"payment_id":"`+pid+`","notification":"paid","attempt":1}`))

	get := func(path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		f.h.Admin(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w
	}
	w := get("/")
	if w.Code != 200 || !strings.Contains(w.Body.String(), `id="counts"`) || !strings.Contains(w.Body.String(), "game-1") {
		t.Fatalf("overview = %d\n%s", w.Code, w.Body.String())
	}
	// A first visit gets one anti-forgery cookie, and the forms carry its token.
	cookies := w.Result().Cookies()
	if len(cookies) != 1 {
		t.Fatalf("the overview set %d cookies (%v); want one", len(cookies), cookies)
	}
	for _, m := range regexp.MustCompile(`name="csrf" value="([0-9a-f]*)"`).FindAllStringSubmatch(w.Body.String(), -1) {
		if m[1] != cookies[0].Value {
			t.Errorf("a form carries token %s, the cookie %s", m[1], cookies[0].Value)
		}
	}
	w = get("/payments/" + pid)
	body := w.Body.String()
	if w.Code != 200 || !strings.Contains(body, `class="attempt" data-attempt="1" data-generation="0" data-status="500"`) || !strings.Contains(body, `class="cancel"`) {
		t.Fatalf("payment page = %d\n%s", w.Code, body)
	}
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("no strict CSP: %q", csp)
	}
	var cookie *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == csrfCookie {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || !strings.Contains(body, cookie.Value) {
		t.Fatalf("anti-forgery cookie %+v not set or not in the form", cookie)
	}
	post := func(form url.Values, withCookie bool, site string) int {
		r := httptest.NewRequest(http.MethodPost, "/payments/"+pid+"/notifications/paid/cancel", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if withCookie {
			r.AddCookie(cookie)
		}
		if site != "" {
			r.Header.Set("Sec-Fetch-Site", site)
		}
		w := httptest.NewRecorder()
		f.h.Admin(w, r)
		return w.Code
	}
	if code := post(url.Values{"reason": {"x"}, "csrf": {cookie.Value}}, false, ""); code != http.StatusForbidden {
		t.Errorf("post without the cookie = %d, want 403", code)
	}
	if code := post(url.Values{"reason": {"x"}, "csrf": {strings.Repeat("0", 32)}}, true, ""); code != http.StatusForbidden {
		t.Errorf("post with another token = %d, want 403", code)
	}
	if code := post(url.Values{"reason": {"x"}, "csrf": {cookie.Value}}, true, "cross-site"); code != http.StatusForbidden {
		t.Errorf("cross-site post = %d, want 403", code)
	}
	if n := f.store.Payment(pid).Paid(); n.State != "pending" {
		t.Fatalf("a refused post changed the notification: %s", n.State)
	}
	if code := post(url.Values{"reason": {"order voided"}, "csrf": {cookie.Value}}, true, "same-origin"); code != http.StatusSeeOther {
		t.Errorf("a good post = %d, want 303", code)
	}
	if n := f.store.Payment(pid).Paid(); n.State != "cancelled" || n.Actions[0].Reason != "order voided" {
		t.Errorf("after the cancel: %s, %+v", n.State, n.Actions)
	}
}

func TestOperatorFromIdentityToken(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	// header.payload.signature; the payload is {"email":"ops@studio.example"}.
	r.Header.Set("Authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJlbWFpbCI6Im9wc0BzdHVkaW8uZXhhbXBsZSJ9.c2ln")
	if got := operator(r); got != "ops@studio.example" {
		t.Errorf("operator = %q", got)
	}
	if got := operator(httptest.NewRequest(http.MethodGet, "/", nil)); !strings.HasPrefix(got, "anonymous") {
		t.Errorf("operator without a token = %q", got)
	}
}

// An orphaned notification is listed on the overview, counted in its own column, and its page
// offers the replay that brings it back once its game exists.
func TestDashboardShowsOrphans(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.h.Games = []string{"game-1"}
	if code, _ := serve(f.h.Ingest, signed(validBody, testNow)); code != http.StatusOK {
		t.Fatal("ingest failed")
	}
	pid := paymentIDOf(t, f)
	f.store.Mutate(pid, func(p *relay.Payment) {
		p.Paid().State, p.Paid().Reason = relay.StateOrphaned, "orphaned: game \"game-1\" has no production endpoint in the configuration"
	})
	get := func(path string) string {
		w := httptest.NewRecorder()
		f.h.Admin(w, httptest.NewRequest(http.MethodGet, path, nil))
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s = %d", path, w.Code)
		}
		return w.Body.String()
	}
	overview := get("/")
	if !strings.Contains(overview, `id="orphaned"`) || !strings.Contains(overview, `<th>orphaned</th>`) || !strings.Contains(overview, "payments/"+pid) {
		t.Errorf("the overview does not show the orphan:\n%s", overview)
	}
	if page := get("/payments/" + pid); !strings.Contains(page, `class="replay"`) || !strings.Contains(page, "no production endpoint") {
		t.Errorf("the orphan's page offers no replay or hides the reason:\n%s", page)
	}
}

// Every field the Admin API answers with is snake_case, at every depth: a payment with a
// refund, a note, an operator's action and a store acknowledgement, the lists, a bulk replay
// job, the reconciliation reports.
func TestAdminJSONIsSnakeCase(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	h := f.h
	serve(h.Ingest, signed(validBody, testNow))
	serve(h.Ingest, signed(refundBody("r1", "1.00"), testNow))
	id := paymentIDOf(t, f)
	f.store.Mutate(id, func(p *relay.Payment) {
		p.Notes = append(p.Notes, relay.Note{Kind: "REFUND.ABNORMAL", Reason: "r", Alert: true, RefundID: "r2", ReceivedAt: testNow})
		p.StoreAck = &relay.StoreAck{Product: "gems", Token: "secret-token", Due: testNow.Add(72 * time.Hour), State: relay.AckWaiting, Tries: 1, Error: "HTTP 503"}
	})
	f.fail = true
	for n := 1; n <= 8; n++ {
		serve(h.Deliver, deliverReq(fmt.Sprintf(`{"payment_id":%q,"notification":"paid","attempt":%d}`, id, n)))
	}
	post := func(path, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		return record(h.Admin, r)
	}
	if w := post("/api/payments/"+id+"/notifications/paid/replay", `{"reason":"game server back"}`); w.Code != http.StatusOK {
		t.Fatalf("replay: %d %s", w.Code, w.Body)
	}
	job := post("/api/jobs/replay", `{"reason":"outage","state":"failed"}`)
	var j struct {
		ID string `json:"id"`
	}
	json.Unmarshal(job.Body.Bytes(), &j)
	if job.Code != http.StatusAccepted || j.ID == "" {
		t.Fatalf("job: %d %s", job.Code, job.Body)
	}
	answers := map[string][]byte{"job": job.Body.Bytes()}
	for _, path := range []string{"/api/payments/" + id, "/api/notifications?state=pending", "/api/notifications?state=held", "/api/jobs/" + j.ID, "/api/reconciliations"} {
		w := record(h.Admin, httptest.NewRequest(http.MethodGet, path, nil))
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, w.Code, w.Body)
		}
		answers[path] = w.Body.Bytes()
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if !snake.MatchString(k) {
					t.Errorf("%s: field %q is not snake_case", where, k)
				}
				walk(where+"."+k, e)
			}
		case []any:
			for _, e := range v {
				walk(where+"[]", e)
			}
		}
	}
	fields := 0
	for path, b := range answers {
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		walk(path, v)
		fields += strings.Count(string(b), `":`)
	}
	show := string(answers["/api/payments/"+id])
	for _, want := range []string{`"refund_id":"r2"`, `"store_ack":{`, `"actions":[{`, `"cumulative_minor":100`} {
		if !strings.Contains(show, want) {
			t.Errorf("the payment's answer lacks %s: %s", want, show)
		}
	}
	if strings.Contains(show, "secret-token") {
		t.Error("the payment's answer shows the purchase token")
	}
	if fields < 100 {
		t.Fatalf("only %d fields walked", fields)
	}
}
