package functions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
)

// Biller is a provider whose daily bills payrelay reconciles against: Alipay and WeChat Pay.
type Biller interface {
	// BillAccounts lists the merchant accounts payrelay can fetch bills for.
	BillAccounts() []string
	// Bill downloads and reads one account's bill of day (yyyy-mm-dd, China Standard Time).
	Bill(ctx context.Context, account, day string) (relay.Bill, error)
}

var (
	_ Biller = (*provider.Alipay)(nil)
	_ Biller = (*provider.WechatPay)(nil)
)

// ReconcileTimeout bounds one reconciliation request (every account's bill): the function's own
// timeout in terraform is 540 s.
const ReconcileTimeout = 8 * time.Minute

func (h *Handler) reconcileTimeout() time.Duration {
	if h.ReconcileTimeout > 0 {
		return h.ReconcileTimeout
	}
	return ReconcileTimeout
}

// billers lists the configured providers with bills, sorted by name.
func (h *Handler) billers() []string {
	var out []string
	for name, p := range h.Providers {
		if b, ok := p.(Biller); ok && len(b.BillAccounts()) > 0 {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// reconcileRun is what one account's reconciliation came to, as the function answers it.
type reconcileRun struct {
	Provider string      `json:"provider"`
	Merchant string      `json:"merchant"`
	Day      string      `json:"day"`
	Report   *reportView `json:"report,omitempty"`
	Error    string      `json:"error,omitempty"`
}

// Reconcile is the daily reconciliation, called by Cloud Scheduler (the function is private to
// the scheduler's identity): every configured account's bill of the day before (China Standard
// Time), or of {"day":"yyyy-mm-dd"}. It answers 200 when every account was reconciled, 503 when
// any could not be (a bill not ready, a provider or store unavailable, a refusal), so that
// Cloud Scheduler retries; reconciling again is safe.
func (h *Handler) Reconcile(w http.ResponseWriter, r *http.Request) {
	if !h.enter(w) {
		return
	}
	defer h.inflight.Done()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.context(r)), h.reconcileTimeout())
	defer cancel()
	raw, refusal := readBody(w, r, MaxAdminBody, "")
	if refusal != nil {
		writeJSON(w, refusal.Code, errorBody{Error: http.StatusText(refusal.Code), Reason: refusal.Reason})
		return
	}
	var body struct {
		Day string `json:"day"`
	}
	if len(strings.TrimSpace(string(raw))) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: "invalid request", Reason: `want {} or {"day":"yyyy-mm-dd"}`})
			return
		}
	}
	day := body.Day
	if day == "" {
		day = relay.BillDay(h.Clock.Now().In(relay.BillZone).AddDate(0, 0, -1))
	} else if _, err := time.Parse(time.DateOnly, day); err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Field: "day", Reason: "want yyyy-mm-dd"})
		return
	}
	var runs []reconcileRun
	failed := 0
	for _, name := range h.billers() {
		b := h.Providers[name].(Biller)
		for _, account := range b.BillAccounts() {
			run := h.reconcileAccount(ctx, "scheduler", name, account, day)
			if run.Error != "" {
				failed++
			}
			runs = append(runs, run)
		}
	}
	code := http.StatusOK
	if failed > 0 {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, struct {
		Day    string         `json:"day"`
		Runs   []reconcileRun `json:"runs"`
		Failed int            `json:"failed"`
	}{day, runs, failed})
}

// reconcileAccount reconciles one account's bill of day and logs what it found: a line per
// finding (the reconcile_findings metric), a conflict as the conflicts metric counts them, and
// a failure (reconcile_failed).
func (h *Handler) reconcileAccount(ctx context.Context, by, prov, account, day string) reconcileRun {
	run := reconcileRun{Provider: prov, Merchant: account, Day: day}
	log := h.Logger.With("provider", prov, "merchant", account, "day", day, "by", by)
	b, ok := h.Providers[prov].(Biller)
	if !ok || !slices.Contains(b.BillAccounts(), account) {
		run.Error = "no such account to reconcile: " + prov + " " + account
		return run
	}
	bill, err := b.Bill(ctx, account, day)
	var rep *relay.Report
	if err == nil {
		if q, ok := h.Providers[prov].(Querier); ok {
			bill.SettlePending = func(ctx context.Context, pr relay.PendingRefund) (*relay.Result, string, error) {
				return h.settlePending(ctx, log, q, account, pr)
			}
			bill.FindPayment = func(ctx context.Context, order string) (*relay.Result, error) {
				ans, err := q.Query(ctx, account, order)
				var qe *provider.QueryError
				switch {
				case errors.As(err, &qe):
					return nil, err // refused: the refund stays as the bill has it
				case err != nil:
					return nil, fmt.Errorf("%w: %v", relay.ErrUnavailable, err)
				}
				return ans.Result, nil
			}
		}
		rep, err = h.Service.Reconcile(ctx, bill, by)
	}
	if err == nil {
		if q, ok := h.Providers[prov].(Querier); ok {
			err = h.recheckPending(ctx, log, q, by, prov, account, day)
		}
	}
	if err != nil {
		var qe *provider.QueryError
		var big *relay.DayTooLarge
		class := "unavailable"
		switch {
		case errors.As(err, &qe):
			class = "refused"
		case errors.Is(err, provider.ErrBillNotReady):
			class = "not_ready"
		case errors.As(err, &big):
			class = "too_large"
		}
		log.ErrorContext(ctx, "reconciliation failed; it will run again", "event", "reconcile_failed", "reason_class", class, "error", err.Error())
		run.Error = class + ": " + err.Error()
		return run
	}
	for _, f := range rep.Findings {
		attrs := []any{"event", "reconcile_finding", "kind", string(f.Kind), "order_id", f.OrderID, "payment_id", f.PaymentID,
			"refund_id", f.RefundID, "bill_minor", f.BillMinor, "settled_minor", f.SettledMinor, "stored_minor", f.StoredMinor, "action", f.Action, "reason", f.Reason}
		switch f.Kind {
		case relay.FindingConflict:
			log.ErrorContext(ctx, "reconciliation: the provider's bill contradicts what is stored; not relayed", attrs...)
			log.ErrorContext(ctx, "conflict found by reconciliation", "event", "conflict", "payment_id", f.PaymentID, "order_id", f.OrderID, "reason", f.Reason)
		case relay.FindingUnrelayable:
			log.ErrorContext(ctx, "reconciliation: money in the bill payrelay cannot relay; an operator must act", attrs...)
		default:
			log.WarnContext(ctx, "reconciliation: "+strings.ReplaceAll(string(f.Kind), "_", " "), attrs...)
		}
	}
	counts := []any{"event", "reconciled", "bill_payments", rep.BillPayments, "bill_refunds", rep.BillRefunds, "matched", rep.Matched, "runs", rep.Runs}
	for _, k := range relay.FindingKinds {
		counts = append(counts, string(k), rep.Counts[k])
	}
	log.InfoContext(ctx, "reconciliation done", counts...)
	run.Report = viewReport(rep, 0, (len(rep.Findings)+relay.FindingsPage-1)/relay.FindingsPage)
	return run
}

// PendingDays is how many bill days before the one reconciled a run looks back at for refunds
// still pending: WeChat Pay settles a refund within days (a bank card's may take longer; a
// refund pending past this stays reported as pending on its day's report).
const PendingDays = 14

// settlePending asks the provider again about a refund the bill shows unsettled: the refund
// when it settled since, the state it ended in when the money did not go back, neither while it
// is still processing (or the provider could not be asked: it stays pending, asked again on the
// next runs).
func (h *Handler) settlePending(ctx context.Context, log *slog.Logger, q Querier, account string, pr relay.PendingRefund) (*relay.Result, string, error) {
	ra, err := q.QueryRefund(ctx, account, pr.OrderID, pr.RefundNo)
	switch {
	case err != nil:
		log.WarnContext(ctx, "reconciliation: a pending refund could not be asked about; it stays pending", "order_id", pr.OrderID, "refund_id", pr.RefundID, "error", err.Error())
		return nil, "", nil
	case ra.Result != nil:
		return ra.Result, "", nil
	case ra.Final:
		return nil, ra.Reported, nil
	}
	return nil, "", nil
}

// recheckPending asks again about the refunds earlier days' reports of the account left
// pending: each that settled is ingested (and relayed) and its finding becomes a recovered
// missing_refund; each that ended without the money going back becomes unrelayable. The
// changed reports are written again. An error means the run must be repeated.
func (h *Handler) recheckPending(ctx context.Context, log *slog.Logger, q Querier, by, prov, account, day string) error {
	d, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return err
	}
	for back := 1; back <= PendingDays; back++ {
		rep, err := h.Service.Report(ctx, relay.ReportID(prov, account, d.AddDate(0, 0, -back).Format(time.DateOnly)))
		switch {
		case errors.Is(err, relay.ErrNotFound):
			continue
		case err != nil:
			return fmt.Errorf("report of %s: %w", d.AddDate(0, 0, -back).Format(time.DateOnly), err)
		}
		changed := false
		for i := range rep.Findings {
			f := &rep.Findings[i]
			if f.Kind != relay.FindingPendingRefund || f.Action != relay.ActionPending || f.RefundNo == "" {
				continue
			}
			ra, err := q.QueryRefund(ctx, account, f.OrderID, f.RefundNo)
			switch {
			case err != nil:
				log.WarnContext(ctx, "reconciliation: a pending refund could not be asked about; it stays pending", "report", rep.ID, "refund_id", f.RefundID, "error", err.Error())
				continue
			case ra.Result != nil:
				in := *ra.Result
				in.Via = relay.ViaReconcile
				res, err := h.Service.Ingest(ctx, in)
				var over *relay.ErrOverRefund
				switch {
				case errors.Is(err, relay.ErrFactsDiffer), errors.As(err, &over):
					f.Kind, f.Action, f.Reason = relay.FindingConflict, "not relayed", err.Error()
				case err != nil && relay.Retryable(err):
					return fmt.Errorf("ingest refund %s: %w", f.RefundID, err)
				case err != nil:
					f.Kind, f.Action, f.Reason = relay.FindingUnrelayable, "failed", fmt.Sprintf("%.300v", err)
				default:
					f.Kind, f.Action, f.Reason = relay.FindingMissingRefund, "ingested", "settled after the bill was made; found by asking again on the run of "+day
					f.PaymentID = res.PaymentID
				}
			case ra.Final:
				f.Kind, f.Action, f.Reason = relay.FindingUnrelayable, "reported", fmt.Sprintf("refund %s ended %.20s after the bill was made: the money did not go back; an operator must act", f.RefundID, ra.Reported)
			default:
				continue
			}
			rep.Counts[relay.FindingPendingRefund]--
			rep.Counts[f.Kind]++
			changed = true
			log.WarnContext(ctx, "reconciliation: a pending refund settled", "event", "reconcile_finding", "kind", string(f.Kind), "report", rep.ID,
				"order_id", f.OrderID, "payment_id", f.PaymentID, "refund_id", f.RefundID, "bill_minor", f.BillMinor, "action", f.Action, "reason", f.Reason)
		}
		if changed {
			rep.By = by
			if err := h.Service.SaveReport(ctx, rep); err != nil {
				return fmt.Errorf("store report %s: %w", rep.ID, err)
			}
		}
	}
	return nil
}

// reportView is a report as the API shows it.
type reportView struct {
	ID           string         `json:"id"`
	Provider     string         `json:"provider"`
	Merchant     string         `json:"merchant"`
	Day          string         `json:"day"`
	BillPayments int            `json:"bill_payments"`
	BillRefunds  int            `json:"bill_refunds"`
	Matched      int            `json:"matched"`
	Counts       map[string]int `json:"counts"`
	// Findings are page Page (from 0) of the report's Pages pages of findings, FindingsPage
	// each; Counts count them all.
	Findings []findingView `json:"findings"`
	Page     int           `json:"page"`
	Pages    int           `json:"pages"`
	Runs     int           `json:"runs"`
	// RelayJob relays the missing payments and refunds when there were more than
	// relay.ReconcileInline (GET /api/jobs/{id} shows its progress).
	RelayJob string    `json:"relay_job,omitempty"`
	By       string    `json:"by"`
	RanAt    time.Time `json:"ran_at"`
}

type findingView struct {
	Kind        string `json:"kind"`
	OrderID     string `json:"order_id"`
	PaymentID   string `json:"payment_id,omitempty"`
	RefundID    string `json:"refund_id,omitempty"`
	BillMinor   int64  `json:"bill_minor"`
	StoredMinor int64  `json:"stored_minor"`
	// SettledMinor is a refund's settlement amount where the bill states one apart
	// (WeChat Pay's 退款金额, less 免充值 coupons).
	SettledMinor int64  `json:"settled_minor,omitempty"`
	Action       string `json:"action"`
	Reason       string `json:"reason,omitempty"`
}

// viewReport is a report as the API shows it, with page page of its pages of findings (a
// report read whole shows its first).
func viewReport(r *relay.Report, page, pages int) *reportView {
	v := &reportView{ID: r.ID, Provider: r.Provider, Merchant: r.Merchant, Day: r.Day, BillPayments: r.BillPayments, BillRefunds: r.BillRefunds,
		Matched: r.Matched, Counts: map[string]int{}, Findings: []findingView{}, Runs: r.Runs, By: r.By, RanAt: r.RanAt, Page: page, Pages: pages, RelayJob: r.RelayJob}
	for _, k := range relay.FindingKinds {
		v.Counts[string(k)] = r.Counts[k]
	}
	findings := r.Findings
	if len(findings) > relay.FindingsPage { // a whole report: its first page
		v.Pages = (len(findings) + relay.FindingsPage - 1) / relay.FindingsPage
		findings = findings[:relay.FindingsPage]
	}
	for _, f := range findings {
		v.Findings = append(v.Findings, findingView{Kind: string(f.Kind), OrderID: f.OrderID, PaymentID: f.PaymentID, RefundID: f.RefundID,
			BillMinor: f.BillMinor, StoredMinor: f.StoredMinor, SettledMinor: f.SettledMinor, Action: f.Action, Reason: f.Reason})
	}
	return v
}

// adminReconcile runs one account's reconciliation for an operator:
// POST /api/reconcile {"provider":"alipay","merchant":"<app id>","day":"yyyy-mm-dd","reason":"..."}.
func (h *Handler) adminReconcile(w http.ResponseWriter, r *http.Request, op string) {
	raw, ok := h.readAdminJSON(w, r, op)
	if !ok {
		return
	}
	var q struct{ Provider, Merchant, Day, Reason string }
	if err := json.Unmarshal(raw, &q); err != nil || strings.TrimSpace(q.Reason) == "" || len(q.Reason) > 500 {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: `want {"provider":"alipay","merchant":"...","day":"yyyy-mm-dd","reason":"why"}`})
		return
	}
	code, out := h.operatorReconcile(h.context(r), op, q.Provider, q.Merchant, q.Day, q.Reason)
	writeJSON(w, code, out)
}

// operatorReconcile checks an operator's request, runs it and logs who asked and why.
func (h *Handler) operatorReconcile(ctx context.Context, op, prov, merchant, day, reason string) (int, reconcileRun) {
	run := reconcileRun{Provider: prov, Merchant: merchant, Day: day}
	if _, err := time.Parse(time.DateOnly, day); err != nil {
		run.Error = "day: want yyyy-mm-dd"
		return http.StatusUnprocessableEntity, run
	}
	if b, ok := h.Providers[prov].(Biller); !ok || !slices.Contains(b.BillAccounts(), merchant) {
		run.Error = "no account " + prov + " " + merchant + " to reconcile; accounts with bill access: " + strings.Join(h.billAccounts(), ", ")
		return http.StatusUnprocessableEntity, run
	}
	h.Logger.WarnContext(ctx, "operator reconcile", "operator", op, "provider", prov, "merchant", merchant, "day", day, "reason", reason)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.reconcileTimeout())
	defer cancel()
	run = h.reconcileAccount(ctx, op, prov, merchant, day)
	if run.Error != "" {
		return http.StatusServiceUnavailable, run
	}
	return http.StatusOK, run
}

// billAccounts lists "provider merchant" of every account that can be reconciled.
func (h *Handler) billAccounts() []string {
	var out []string
	for _, name := range h.billers() {
		for _, a := range h.Providers[name].(Biller).BillAccounts() {
			out = append(out, name+" "+a)
		}
	}
	return out
}

// adminReports answers GET /api/reconciliations[?limit=] and GET
// /api/reconciliations/{id}[?page=N] (a page of FindingsPage findings, from 0).
func (h *Handler) adminReports(w http.ResponseWriter, r *http.Request, id string) {
	ctx := h.context(r)
	if id != "" {
		page, err := reportPageParam(r)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "invalid request", Reason: err.Error(), Field: "page"})
			return
		}
		rep, pages, err := h.Service.ReportPage(ctx, id, page)
		switch {
		case errors.Is(err, relay.ErrNotFound):
			writeJSON(w, http.StatusNotFound, errorBody{Error: "not found", Reason: "no report " + id})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "temporarily unavailable", Reason: "retry"})
		case page > 0 && page >= pages:
			writeJSON(w, http.StatusNotFound, errorBody{Error: "not found", Reason: fmt.Sprintf("report %s has %d pages of findings", id, pages)})
		default:
			writeJSON(w, http.StatusOK, viewReport(rep, page, pages))
		}
		return
	}
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	if limit <= 0 || limit > 200 {
		limit = 30
	}
	reps, err := h.Service.Reports(ctx, limit)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "temporarily unavailable", Reason: "retry"})
		return
	}
	out := struct {
		Reports []*reportView `json:"reports"`
	}{Reports: []*reportView{}}
	for _, rep := range reps {
		out.Reports = append(out.Reports, viewReport(rep, 0, 0))
	}
	writeJSON(w, http.StatusOK, out)
}

// reportsPage is the dashboard's list of reconciliation reports, with a form to run one.
func (h *Handler) reportsPage(w http.ResponseWriter, r *http.Request) {
	reps, err := h.Service.Reports(h.context(r), 60)
	if err != nil {
		http.Error(w, "temporarily unavailable", http.StatusServiceUnavailable)
		return
	}
	var views []*reportView
	for _, rep := range reps {
		views = append(views, viewReport(rep, 0, 0))
	}
	render(w, reportsTemplate, struct {
		Reports  []*reportView
		Kinds    []relay.FindingKind
		Accounts []string
		Day      string
		CSRF     string
	}{views, relay.FindingKinds, h.billAccounts(), relay.BillDay(h.Clock.Now().AddDate(0, 0, -1)), csrfToken(w, r)})
}

// reportPage shows one report's findings, a page at a time, each linking to its payment.
func (h *Handler) reportPage(w http.ResponseWriter, r *http.Request, id string) {
	page, err := reportPageParam(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rep, pages, err := h.Service.ReportPage(h.context(r), id, page)
	switch {
	case errors.Is(err, relay.ErrNotFound), err == nil && page > 0 && page >= pages:
		http.Error(w, "no report "+id+" (or no such page of its findings)", http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, "temporarily unavailable", http.StatusServiceUnavailable)
		return
	}
	render(w, reportTemplate, struct {
		R     *reportView
		Kinds []relay.FindingKind
	}{viewReport(rep, page, pages), relay.FindingKinds})
}

// reportPageParam reads ?page= (from 0; absent: 0).
func reportPageParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("page")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("page %.20q: want a number from 0", v)
	}
	return n, nil
}

// formReconcile is the dashboard's "reconcile now" form.
func (h *Handler) formReconcile(w http.ResponseWriter, r *http.Request) {
	reason, ok := h.readForm(w, r)
	if !ok {
		return
	}
	prov, merchant, _ := strings.Cut(r.PostForm.Get("account"), " ")
	code, run := h.operatorReconcile(h.context(r), operator(r), prov, merchant, strings.TrimSpace(r.PostForm.Get("day")), reason)
	if code != http.StatusOK {
		http.Error(w, run.Error, code)
		return
	}
	http.Redirect(w, r, "reconciliations/"+run.Report.ID, http.StatusSeeOther)
}

var reportsTemplate = template.Must(template.New("reports").Funcs(funcs).Parse(`<!doctype html><html><head><meta charset="utf-8"><title>payrelay: reconciliation</title>` + style + `</head><body>
<p><a href="./">← overview</a></p>
<h1>Reconciliation against the providers' bills</h1>
<p>Every day at 10:00 China Standard Time each account's bill of the day before is compared with what payrelay stored.</p>
{{if .Accounts}}<form action="reconcile" method="post" id="reconcile">reconcile now: <select name="account">{{range .Accounts}}<option>{{.}}</option>{{end}}</select> day <input name="day" value="{{.Day}}" size="10"> <input type="text" name="reason" placeholder="why" required><input type="hidden" name="csrf" value="{{.CSRF}}"> <button>reconcile</button></form>{{end}}
<table id="reports"><tr><th>day</th><th>provider</th><th>merchant</th><th>in the bill</th><th>matched</th>{{range .Kinds}}<th>{{.}}</th>{{end}}<th>runs</th><th>last run</th></tr>
{{range $r := .Reports}}<tr><td><a href="reconciliations/{{path $r.ID}}">{{$r.Day}}</a></td><td>{{$r.Provider}}</td><td>{{$r.Merchant}}</td><td>{{$r.BillPayments}} paid, {{$r.BillRefunds}} refunds</td><td>{{$r.Matched}}</td>
{{range $.Kinds}}<td{{if index $r.Counts (print .)}} class="failed"{{end}}>{{index $r.Counts (print .)}}</td>{{end}}<td>{{$r.Runs}}</td><td>{{ts $r.RanAt}} by {{$r.By}}</td></tr>{{end}}</table>
</body></html>`))

var reportTemplate = template.Must(template.New("report").Funcs(funcs).Parse(`<!doctype html><html><head><meta charset="utf-8"><title>payrelay: reconciliation {{.R.Day}}</title>` + style + `</head><body>
<p><a href="../reconciliations">← reconciliation reports</a></p>
<h1>{{.R.Provider}} {{.R.Merchant}}, bill of {{.R.Day}}</h1>
<p>{{.R.BillPayments}} payments and {{.R.BillRefunds}} refunds in the bill; {{.R.Matched}} matched what payrelay stored. Run {{.R.Runs}} time(s), last at {{ts .R.RanAt}} by {{.R.By}}.{{with .R.RelayJob}} What it found missing is relayed by job <code id="relay-job">{{.}}</code> on the ops queue, at the bulk replay's rate (its progress: <code>GET /api/jobs/{{.}}</code>).{{end}}</p>
<table id="report-counts"><tr>{{range .Kinds}}<th>{{.}}</th>{{end}}</tr><tr>{{range .Kinds}}<td>{{index $.R.Counts (print .)}}</td>{{end}}</tr></table>
<table id="findings"><tr><th>finding</th><th>order</th><th>refund</th><th>bill (minor)</th><th>settled (minor)</th><th>payrelay (minor)</th><th>action</th><th>why</th></tr>
{{range .R.Findings}}<tr class="finding" data-kind="{{.Kind}}"><td>{{.Kind}}</td><td>{{if .PaymentID}}<a href="../payments/{{path .PaymentID}}">{{.OrderID}}</a>{{else}}{{.OrderID}}{{end}}</td><td>{{.RefundID}}</td><td>{{.BillMinor}}</td><td>{{if .SettledMinor}}{{.SettledMinor}}{{end}}</td><td>{{.StoredMinor}}</td><td>{{.Action}}</td><td>{{.Reason}}</td></tr>{{end}}</table>
{{if gt .R.Pages 1}}<p id="pages">findings, page {{add .R.Page 1}} of {{.R.Pages}} ({{len .R.Findings}} here; the counts above count them all): {{if gt .R.Page 0}}<a href="?page={{add .R.Page -1}}" id="prev">previous</a> {{end}}{{if lt (add .R.Page 1) .R.Pages}}<a href="?page={{add .R.Page 1}}" id="next">next</a>{{end}}</p>{{end}}
</body></html>`))
