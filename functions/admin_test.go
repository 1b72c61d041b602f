package functions

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

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
