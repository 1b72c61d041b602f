package functions

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// The dashboard is served by the Admin function: server-rendered HTML with no external
// assets (it is opened through `gcloud run services proxy`, often from a laptop on call).

const csrfCookie = "payrelay_csrf"

// dashboardLimit bounds each list and count on the overview page.
const dashboardLimit = 200

// dashboard serves the HTML pages: the overview at /, a payment at /payments/{id}, and the
// replay and cancel forms' posts.
func (h *Handler) dashboard(w http.ResponseWriter, r *http.Request, parts []string) {
	switch {
	case r.Method == http.MethodGet && (len(parts) == 0 || len(parts) == 1 && parts[0] == ""):
		h.overview(w, r)
	case r.Method == http.MethodGet && len(parts) == 2 && parts[0] == "payments":
		h.paymentPage(w, r, parts[1])
	case r.Method == http.MethodGet && len(parts) == 1 && parts[0] == "find":
		q := r.URL.Query()
		env, err := queryEnvironment(q, relay.EnvProduction)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id := relay.PaymentID(env, q.Get("provider"), q.Get("merchant"), q.Get("order"))
		http.Redirect(w, r, "payments/"+url.PathEscape(id), http.StatusSeeOther)
	case r.Method == http.MethodPost && len(parts) == 5 && parts[0] == "payments" && parts[2] == "notifications" && (parts[4] == "replay" || parts[4] == "cancel"):
		h.formPost(w, r, parts[1], parts[3], parts[4])
	case r.Method == http.MethodPost && len(parts) == 1 && parts[0] == "query":
		h.formQuery(w, r)
	case r.Method == http.MethodGet && len(parts) == 1 && parts[0] == "reconciliations":
		h.reportsPage(w, r)
	case r.Method == http.MethodGet && len(parts) == 2 && parts[0] == "reconciliations":
		h.reportPage(w, r, parts[1])
	case r.Method == http.MethodPost && len(parts) == 1 && parts[0] == "reconcile":
		h.formReconcile(w, r)
	case r.Method == http.MethodPost && len(parts) == 1 && parts[0] == "apple-test":
		h.formAppleTest(w, r)
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}

// csrfToken returns the browser's anti-forgery token, setting the cookie on first use. Forms
// carry it in a hidden field; a post is accepted only when field and cookie agree (another
// site can make a browser send the cookie, but cannot read it to fill the field).
func csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 32 {
		return c.Value
	}
	var b [16]byte
	rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: tok, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	return tok
}

// readForm reads a dashboard form's post: bounded, its anti-forgery token matching the cookie,
// same-site, with a reason. It answers the refusal itself and returns ok false.
func (h *Handler) readForm(w http.ResponseWriter, r *http.Request) (reason string, ok bool) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxAdminBody)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return "", false
	}
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) != 32 || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostForm.Get("csrf"))) != 1 {
		h.Logger.WarnContext(h.context(r), "dashboard refused a post without a matching anti-forgery token", "operator", operator(r))
		http.Error(w, "forbidden: the form's anti-forgery token does not match; reload the page", http.StatusForbidden)
		return "", false
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		http.Error(w, "forbidden: cross-site post", http.StatusForbidden)
		return "", false
	}
	reason = strings.TrimSpace(r.PostForm.Get("reason"))
	if reason == "" || len(reason) > 500 {
		http.Error(w, "a reason (1-500 characters) is required", http.StatusUnprocessableEntity)
		return "", false
	}
	return reason, true
}

func (h *Handler) formPost(w http.ResponseWriter, r *http.Request, pid, key, verb string) {
	ctx := h.context(r)
	op := operator(r)
	reason, ok := h.readForm(w, r)
	if !ok {
		return
	}
	var err error
	o := relay.Operator{By: op, Reason: reason}
	if verb == "replay" {
		_, err = h.Service.Replay(ctx, pid, key, r.PostForm.Get("force") == "on", o)
	} else {
		_, err = h.Service.Cancel(ctx, pid, key, o)
	}
	var stateErr *relay.StateError
	switch {
	case errors.As(err, &stateErr):
		http.Error(w, stateErr.Error(), http.StatusConflict)
		return
	case errors.Is(err, relay.ErrNotFound):
		http.Error(w, "no such payment or notification", http.StatusNotFound)
		return
	case err != nil:
		h.Logger.ErrorContext(ctx, "dashboard "+verb+" failed", "operator", op, "payment_id", pid, "error", err.Error())
	}
	h.Logger.WarnContext(ctx, "operator "+verb, "operator", op, "payment_id", pid, "notification_id", relay.NotificationID(pid, key), "reason", reason, "via", "dashboard")
	http.Redirect(w, r, "../../../"+url.PathEscape(pid), http.StatusSeeOther)
}

type overviewData struct {
	Now                   time.Time
	States                []relay.State
	Games                 []gameCounts
	Failed, Held, Overdue []relay.Listed
	NotRelayed, Orphaned  []relay.Listed
	Newest                []*relay.Payment
	// Environment filters the page ("" for both); Environments are the choices.
	Environment  relay.Environment
	Environments []relay.Environment
	Limit        int
	CSRF         string
	Queryable    []string // providers whose orders can be queried (补单)
	// AppleTests are the App Store apps with API access and when their last TEST arrived.
	AppleTests []appleTest
}

type gameCounts struct {
	Game        string
	Environment relay.Environment
	// Counts are payments with a notification in each state; DeliveredHour and DeliveredDay
	// payments received in the last hour and day and delivered; LastDelivery when the newest
	// delivered payment's game server last acknowledged (zero if none).
	Counts                      map[relay.State]int
	DeliveredHour, DeliveredDay int
	LastDelivery                time.Time
}

// dashboardNewest is how many of the newest payments the overview shows.
const dashboardNewest = 10

// gameCounts counts one game's payments of one environment (Firestore COUNT() queries).
func (h *Handler) gameCounts(ctx context.Context, game string, env relay.Environment, states []relay.State, now time.Time) (gameCounts, error) {
	gc := gameCounts{Game: game, Environment: env, Counts: map[relay.State]int{}}
	for _, st := range states {
		n, err := h.Service.Count(ctx, relay.Filter{State: st, Game: game, Environment: env})
		if err != nil {
			return gc, err
		}
		gc.Counts[st] = n
	}
	for _, w := range []struct {
		n    *int
		back time.Duration
	}{{&gc.DeliveredHour, time.Hour}, {&gc.DeliveredDay, 24 * time.Hour}} {
		n, err := h.Service.Count(ctx, relay.Filter{State: relay.StateDelivered, Game: game, Environment: env, From: now.Add(-w.back)})
		if err != nil {
			return gc, err
		}
		*w.n = n
	}
	last, _, err := h.Service.List(ctx, relay.Filter{State: relay.StateDelivered, Game: game, Environment: env}, "", 1)
	if err != nil {
		return gc, err
	}
	for _, l := range last {
		for _, a := range l.Notification.Attempts {
			if end := a.StartedAt.Add(a.Duration); a.Succeeded() && end.After(gc.LastDelivery) {
				gc.LastDelivery = end
			}
		}
	}
	return gc, nil
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) {
	ctx := h.context(r)
	env, err := queryEnvironment(r.URL.Query(), "")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	d := overviewData{Now: h.Clock.Now().UTC(), States: []relay.State{relay.StatePending, relay.StateDelivering, relay.StateHeld, relay.StateFailed, relay.StateCancelled, relay.StateNotRelayed, relay.StateOrphaned}, Limit: dashboardLimit,
		CSRF: csrfToken(w, r), Queryable: h.queryable(), Environment: env, Environments: relay.Environments}
	fail := func(err error) {
		http.Error(w, "temporarily unavailable: "+err.Error(), http.StatusServiceUnavailable)
	}
	// The lists (at most dashboardLimit each)...
	for _, st := range []relay.State{relay.StateFailed, relay.StateHeld, relay.StateNotRelayed, relay.StateOrphaned} {
		items, _, err := h.Service.List(ctx, relay.Filter{State: st, Environment: env}, "", dashboardLimit)
		if err != nil {
			fail(err)
			return
		}
		switch st {
		case relay.StateFailed:
			d.Failed = items
		case relay.StateHeld:
			d.Held = items
		case relay.StateNotRelayed:
			d.NotRelayed = items
		case relay.StateOrphaned:
			d.Orphaned = items
		}
	}
	// ...and the counts, exact: Firestore's COUNT() of the same queries, never capped. A row per
	// game and environment: production for every game, sandbox where the game has a sandbox
	// endpoint or sandbox payments.
	for _, g := range h.Games {
		for _, e := range relay.Environments {
			if env != "" && e != env {
				continue
			}
			if e == relay.EnvSandbox && !h.Routes.Has(g, e) {
				if n, err := h.Service.Count(ctx, relay.Filter{Game: g, Environment: e}); err != nil {
					fail(err)
					return
				} else if n == 0 {
					continue
				}
			}
			gc, err := h.gameCounts(ctx, g, e, d.States, d.Now)
			if err != nil {
				fail(err)
				return
			}
			d.Games = append(d.Games, gc)
		}
	}
	newest, _, err := h.Service.List(ctx, relay.Filter{Environment: env}, "", dashboardNewest*3)
	if err != nil {
		fail(err)
		return
	}
	for _, it := range newest {
		if len(d.Newest) < dashboardNewest && (len(d.Newest) == 0 || d.Newest[len(d.Newest)-1].ID != it.Payment.ID) {
			d.Newest = append(d.Newest, it.Payment)
		}
	}
	overdue, err := h.Service.Overdue(ctx, dashboardLimit)
	if err != nil {
		http.Error(w, "temporarily unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	if env != "" {
		overdue = slices.DeleteFunc(overdue, func(l relay.Listed) bool { return l.Payment.Environment != env })
	}
	d.Overdue = overdue
	d.AppleTests = h.appleTests(ctx)
	render(w, overviewPage, d)
}

type paymentData struct {
	P             *relay.Payment
	Notifications []notificationData
	CSRF          string
}

type notificationData struct {
	ID       string
	N        *relay.Notification
	Timeline timeline
}

func (h *Handler) paymentPage(w http.ResponseWriter, r *http.Request, id string) {
	p, err := h.Service.Show(h.context(r), id)
	switch {
	case errors.Is(err, relay.ErrNotFound):
		http.Error(w, "no payment "+id, http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, "temporarily unavailable", http.StatusServiceUnavailable)
		return
	}
	d := paymentData{P: p, CSRF: csrfToken(w, r)}
	for i := range p.Notifications {
		n := &p.Notifications[i]
		d.Notifications = append(d.Notifications, notificationData{ID: relay.NotificationID(p.ID, n.Key), N: n, Timeline: newTimeline(n, h.Service.Ladder())})
	}
	render(w, paymentPage, d)
}

func render(w http.ResponseWriter, t *template.Template, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	w.Header().Set("X-Frame-Options", "DENY")
	if err := t.Execute(w, data); err != nil {
		fmt.Fprintf(w, "<p>render error: %s</p>", template.HTMLEscapeString(err.Error()))
	}
}

// timeline is the picture of one notification's attempts: each attempt's actual start against
// the time the ladder planned for it, on one time axis per generation.
type timeline struct {
	Width, Height int
	Rows          []timelineRow
}

type timelineRow struct {
	Generation int
	Y          int
	Points     []timelinePoint
	Label      string
	Ticks      []timelineTick
}

// timelineTick is one mark of a row's time axis: time since the row's first attempt.
type timelineTick struct {
	X     int
	Label string
}

type timelinePoint struct {
	Attempt            relay.AttemptRecord
	X, PlannedX        int
	Color, Title       string
	LateMS, DurationMS int64
}

// The time axis is logarithmic in the time since the row's first attempt: the ladder's waits
// grow from minutes to hours, so on a linear axis the first attempts would fall on one spot.
// Its unit is a thousandth of the row's span (at least a millisecond), so attempts minutes
// apart stay apart at the start of a day-long ladder, and a compressed ladder draws alike.
func newTimeline(n *relay.Notification, ladder interface{ Wait(int) time.Duration }) timeline {
	const width, left, right, rowH = 760, 60, 20, 58
	tl := timeline{Width: width}
	byGen := map[int][]relay.AttemptRecord{}
	var gens []int
	for _, a := range n.Attempts {
		if _, ok := byGen[a.Generation]; !ok {
			gens = append(gens, a.Generation)
		}
		byGen[a.Generation] = append(byGen[a.Generation], a)
	}
	for i, g := range gens {
		as := byGen[g]
		start := as[0].StartedAt
		type mark struct {
			a       relay.AttemptRecord
			planned time.Time
		}
		var marks []mark
		end := start
		for j, a := range as {
			planned := a.StartedAt
			if j > 0 && a.ErrorClass != relay.ErrorLost {
				prev := as[j-1]
				planned = prev.StartedAt.Add(prev.Duration).Add(ladder.Wait(a.Number))
			}
			marks = append(marks, mark{a, planned})
			for _, t := range []time.Time{a.StartedAt.Add(a.Duration), planned} {
				if t.After(end) {
					end = t
				}
			}
		}
		span := max(end.Sub(start), 10*time.Millisecond)
		unit := max(span/1000, time.Millisecond)
		scale := func(d time.Duration) float64 { return math.Log1p(float64(max(d, 0)) / float64(unit)) }
		x := func(d time.Duration) int {
			return left + int(float64(width-left-right)*scale(d)/scale(span))
		}
		row := timelineRow{Generation: g, Y: 20 + i*rowH, Label: fmt.Sprintf("gen %d", g)}
		// Ticks at round durations, each far enough from the one before to be read.
		lastX := -100
		for _, d := range []time.Duration{0, 10 * time.Millisecond, 100 * time.Millisecond, time.Second, 10 * time.Second, time.Minute, 2 * time.Minute, 10 * time.Minute,
			30 * time.Minute, time.Hour, 2 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour, 48 * time.Hour, 7 * 24 * time.Hour} {
			if d > span {
				break
			}
			if tx := x(d); tx-lastX >= 44 {
				row.Ticks = append(row.Ticks, timelineTick{X: tx, Label: "+" + shortDuration(d)})
				lastX = tx
			}
		}
		for _, m := range marks {
			a := m.a
			color := "#c0392b" // failed
			switch {
			case a.Succeeded():
				color = "#27ae60"
			case a.ErrorClass == relay.ErrorLost:
				color = "#7f8c8d"
			}
			title := fmt.Sprintf("attempt %d: %s", a.Number, a.StartedAt.UTC().Format("2006-01-02 15:04:05.000"))
			if a.StatusCode != 0 {
				title += fmt.Sprintf(", status %d", a.StatusCode)
			}
			if a.ErrorClass != relay.ErrorNone {
				title += ", " + string(a.ErrorClass)
			}
			row.Points = append(row.Points, timelinePoint{Attempt: a, X: x(a.StartedAt.Sub(start)), PlannedX: x(m.planned.Sub(start)), Color: color, Title: title,
				LateMS: a.StartedAt.Sub(m.planned).Milliseconds(), DurationMS: a.Duration.Milliseconds()})
		}
		tl.Rows = append(tl.Rows, row)
	}
	tl.Height = 20 + len(gens)*rowH
	return tl
}

// shortDuration is d as the axis labels it: 10ms, 1s, 2m, 6h, 2d.
func shortDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

var funcs = template.FuncMap{
	"add": func(a, b int) int { return a + b },
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:12] + "…"
		}
		return s
	},
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05")
	},
	"money": func(minor int64, currency string) string {
		exp, _ := relay.CurrencyExponent(currency)
		if exp == 0 {
			return fmt.Sprintf("%d %s", minor, currency)
		}
		div := int64(1)
		for range exp {
			div *= 10
		}
		return fmt.Sprintf("%d.%0*d %s", minor/div, exp, minor%div, currency)
	},
	"replayable": func(s relay.State) bool {
		return s == relay.StateFailed || s == relay.StateCancelled || s == relay.StateNotRelayed || s == relay.StateOrphaned
	},
	"cancellable": func(s relay.State) bool { return s == relay.StatePending || s == relay.StateHeld },
	"path":        url.PathEscape,
}

const style = `<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;font-size:13px}th{background:#f4f4f4}
.failed{color:#c0392b;font-weight:600}.held{color:#8e44ad}.delivered{color:#27ae60}.pending{color:#2c3e50}.cancelled{color:#7f8c8d}.not_relayed{color:#b9770e}.orphaned{color:#c0392b}
.sandbox{background:#fff4d6;color:#7a5200;border:1px solid #e0b84d;border-radius:3px;padding:0 4px;font-size:11px;font-weight:600;text-transform:uppercase}
tr.env-sandbox td{background:#fffaf0}
form{display:inline-block;margin:4px 8px 4px 0}input[type=text]{width:220px}code{font-size:12px}
</style>`

var overviewPage = template.Must(template.New("overview").Funcs(funcs).Parse(`<!doctype html><html><head><meta charset="utf-8"><title>payrelay</title>` + style + `</head><body>
<h1>payrelay</h1><p>{{ts .Now}} UTC. Counts are exact; each list shows its newest {{.Limit}}. <a href="reconciliations" id="reconciliations">Reconciliation against the providers' bills</a></p>
<form action="find" method="get">find a payment: <select name="environment"><option>production</option><option>sandbox</option></select> <input name="provider" placeholder="provider" size="9"> <input name="merchant" placeholder="merchant / app id" size="18"> <input name="order" placeholder="order id" size="18"> <button>open</button></form>
{{if .Queryable}}<form action="query" method="post" id="query">query the provider (补单): <select name="provider">{{range .Queryable}}<option>{{.}}</option>{{end}}</select> <input name="merchant" placeholder="merchant / app id" size="18" required> <input name="order" placeholder="order id" size="18" required> <input type="text" name="reason" placeholder="why" required><input type="hidden" name="csrf" value="{{.CSRF}}"> <button>query</button></form>{{end}}
<form action="./" method="get" id="environment">environment: <select name="environment"><option value="">both</option>{{range .Environments}}<option{{if eq . $.Environment}} selected{{end}}>{{.}}</option>{{end}}</select> <button>show</button></form>
{{if .AppleTests}}<h2>App Store test notifications</h2><table id="apple-tests"><tr><th>app</th><th>environment</th><th>last TEST arrived</th><th></th></tr>
{{range .AppleTests}}<tr data-bundle="{{.BundleID}}" data-environment="{{.Environment}}"><td>{{.BundleID}}</td><td>{{template "env" .Environment}}</td><td class="last-test">{{if .LastTest.IsZero}}never{{else}}{{ts .LastTest}} UTC{{end}}</td>
<td><form action="apple-test" method="post"><input type="hidden" name="bundle_id" value="{{.BundleID}}"><input type="hidden" name="environment" value="{{.Environment}}"><input type="hidden" name="reason" value="check the path from Apple"><input type="hidden" name="csrf" value="{{$.CSRF}}"><button>send a test notification</button></form></td></tr>{{end}}</table>{{end}}
<h2>Payments by game</h2>
<table id="counts"><tr><th>game</th><th>environment</th><th>delivered, last hour</th><th>delivered, last day</th><th>last delivery</th>{{range .States}}<th>{{.}}</th>{{end}}</tr>
{{range $g := .Games}}<tr class="env-{{$g.Environment}}" data-game="{{$g.Game}}" data-environment="{{$g.Environment}}"><td>{{$g.Game}}</td><td>{{template "env" $g.Environment}}</td><td class="delivered-hour">{{$g.DeliveredHour}}</td><td class="delivered-day">{{$g.DeliveredDay}}</td><td class="last-delivery">{{if $g.LastDelivery.IsZero}}never{{else}}{{ts $g.LastDelivery}}{{end}}</td>{{range $.States}}<td class="{{.}}">{{index $g.Counts .}}</td>{{end}}</tr>{{end}}</table>
<p style="font-size:12px;color:#666">Exact counts of payments (Firestore COUNT(), never capped): a payment counts once in each state one of its notifications is in. "Delivered, last hour / day": payments received in that window whose notification the game server acknowledged. Times are UTC.</p>
<h2>Newest payments</h2>
<table id="newest"><tr><th>received</th><th>game</th><th>environment</th><th>provider</th><th>order</th><th>amount</th><th>state</th></tr>
{{range .Newest}}<tr class="env-{{.Environment}}"><td>{{ts .ReceivedAt}}</td><td>{{.Game}}</td><td>{{template "env" .Environment}}</td><td>{{.Provider}}</td><td><a href="payments/{{path .ID}}">{{.OrderID}}</a></td><td>{{money .AmountMinor .Currency}}</td><td>{{with .Paid}}<span class="{{.State}}">{{.State}}</span>{{else}}refund only{{end}}</td></tr>{{end}}</table>
<h2>Failed ({{len .Failed}})</h2>{{template "list" .Failed}}
{{if .Orphaned}}<h2 class="failed" id="orphaned">Orphaned ({{len .Orphaned}}): their game, its endpoint or its queue is gone; nothing was posted. Restore it, then replay</h2>{{template "list" .Orphaned}}{{end}}
<h2>Not relayed ({{len .NotRelayed}}): stored, never posted (no endpoint for their environment, or an app configured for the other); replay once it has one</h2>{{template "list" .NotRelayed}}
<h2>Overdue ({{len .Overdue}}): pending past their time or holding an expired lease; the sweeper heals them</h2>{{template "list" .Overdue}}
<h2>Held ({{len .Held}}): refunds waiting behind their payment</h2>{{template "list" .Held}}
</body></html>
{{define "env"}}{{if eq . "sandbox"}}<span class="sandbox">sandbox</span>{{else}}{{.}}{{end}}{{end}}
{{define "list"}}<table><tr><th>payment</th><th>game</th><th>environment</th><th>provider</th><th>order</th><th>notification</th><th>state</th><th>attempt</th><th>received</th><th>reason</th></tr>
{{range .}}<tr class="env-{{.Payment.Environment}}"><td><a href="payments/{{path .Payment.ID}}">{{short .Payment.ID}}</a></td><td>{{.Payment.Game}}</td><td>{{template "env" .Payment.Environment}}</td><td>{{.Payment.Provider}}</td><td>{{.Payment.OrderID}}</td>
<td>{{.Notification.Type}}</td><td class="{{.Notification.State}}">{{.Notification.State}}</td><td>{{.Notification.Attempt}}</td><td>{{ts .Payment.ReceivedAt}}</td><td>{{.Notification.Reason}}</td></tr>{{end}}</table>{{end}}`))

var paymentPage = template.Must(template.New("payment").Funcs(funcs).Parse(`<!doctype html><html><head><meta charset="utf-8"><title>payment {{.P.OrderID}}</title>` + style + `</head><body>
<p><a href="../">← overview</a></p>
<h1>{{.P.Provider}} order {{.P.OrderID}}{{if eq .P.Environment "sandbox"}} <span class="sandbox" id="sandbox">sandbox</span>{{end}}</h1>
<table><tr><th>payment</th><td><code>{{.P.ID}}</code></td></tr><tr><th>game</th><td>{{.P.Game}}</td></tr>
<tr><th>environment</th><td id="environment">{{template "env" .P.Environment}}</td></tr>
<tr><th>merchant</th><td>{{.P.Merchant}}</td></tr><tr><th>transaction</th><td>{{.P.TransactionID}}</td></tr>
<tr><th>amount</th><td>{{money .P.AmountMinor .P.Currency}} (refunded {{money .P.RefundedMinor .P.Currency}})</td></tr>
<tr><th>received</th><td>{{ts .P.ReceivedAt}}</td></tr></table>
{{range .P.Notes}}<p class="cancelled">note: {{.Kind}} {{.RefundID}}: {{.Reason}}</p>{{end}}
{{range $n := .Notifications}}
<section class="notification" id="{{$n.ID}}" data-state="{{$n.N.State}}">
<h2>{{$n.N.Type}}{{with $n.N.Refund}}: refund {{.ID}}, {{money .AmountMinor $.P.Currency}} (refunded in all {{money .CumulativeMinor $.P.Currency}}){{end}} — <span class="{{$n.N.State}}">{{$n.N.State}}</span></h2>
<p>learnt via {{$n.N.Via}}; attempt {{$n.N.Attempt}}, generation {{$n.N.Generation}}{{if eq $n.N.State "pending"}}, due at {{ts $n.N.NextAttemptAt}}{{end}}{{with $n.N.Reason}}; {{.}}{{end}}</p>
<p class="legend" style="font-size:12px;color:#666"><svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="#27ae60"/></svg> acknowledged <svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="#c0392b"/></svg> failed <svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="#7f8c8d"/></svg> lost (the delivery died) <svg width="4" height="12"><rect width="2" height="12" fill="#999"/></svg> when the ladder planned it; the axis is the time since the first attempt, on a log scale so that minutes and hours both read</p>
<svg class="timeline" width="{{$n.Timeline.Width}}" height="{{$n.Timeline.Height}}" role="img" aria-label="attempts of {{$n.ID}}">
{{range $row := $n.Timeline.Rows}}<text x="4" y="{{$row.Y}}" font-size="11" dominant-baseline="middle">{{$row.Label}}</text>
<line x1="60" x2="{{$n.Timeline.Width}}" y1="{{$row.Y}}" y2="{{$row.Y}}" stroke="#ccc"/>
{{range $row.Ticks}}<line class="tick" x1="{{.X}}" x2="{{.X}}" y1="{{$row.Y}}" y2="{{add $row.Y 12}}" stroke="#bbb"/><text x="{{.X}}" y="{{add $row.Y 24}}" font-size="10" fill="#666" text-anchor="middle">{{.Label}}</text>{{end}}
{{range $row.Points}}<rect class="planned" x="{{.PlannedX}}" y="{{$row.Y}}" width="2" height="16" fill="#999" transform="translate(0,-8)"><title>planned time of attempt {{.Attempt.Number}}</title></rect>
<circle class="attempt" data-attempt="{{.Attempt.Number}}" data-generation="{{.Attempt.Generation}}" data-status="{{.Attempt.StatusCode}}" cx="{{.X}}" cy="{{$row.Y}}" r="6" fill="{{.Color}}"><title>{{.Title}}</title></circle>{{end}}{{end}}
</svg>
<table class="attempts"><tr><th>gen</th><th>#</th><th>started</th><th>late vs ladder</th><th>latency</th><th>status</th><th>error class</th><th>error</th></tr>
{{range $row := $n.Timeline.Rows}}{{range $row.Points}}<tr class="attempt-row"><td>{{.Attempt.Generation}}</td><td>{{.Attempt.Number}}</td><td>{{ts .Attempt.StartedAt}}</td><td>{{.LateMS}} ms</td><td>{{.DurationMS}} ms</td><td>{{.Attempt.StatusCode}}</td><td>{{.Attempt.ErrorClass}}</td><td>{{.Attempt.Error}}</td></tr>{{end}}{{end}}</table>
{{range $n.N.Actions}}<p>{{.Kind}} by {{.By}} at {{ts .At}}: {{.Reason}}{{if .Job}} (job {{.Job}}){{end}}</p>{{end}}
{{if replayable $n.N.State}}<form method="post" action="{{path $.P.ID}}/notifications/{{path $n.N.Key}}/replay"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="text" name="reason" placeholder="why replay" required><button class="replay">replay</button></form>{{end}}
{{if eq $n.N.State "delivered"}}<form method="post" action="{{path $.P.ID}}/notifications/{{path $n.N.Key}}/replay"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="force" value="on"><input type="text" name="reason" placeholder="why send again" required><button>send again (forced)</button></form>{{end}}
{{if cancellable $n.N.State}}<form method="post" action="{{path $.P.ID}}/notifications/{{path $n.N.Key}}/cancel"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="text" name="reason" placeholder="why cancel" required><button class="cancel">cancel</button></form>{{end}}
</section>{{end}}
</body></html>
{{define "env"}}{{if eq . "sandbox"}}<span class="sandbox">sandbox</span>{{else}}{{.}}{{end}}{{end}}`))
