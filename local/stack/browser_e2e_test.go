package stack_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

// browserDown makes the game server fail browser-* payments while it is set.
var browserDown atomic.Bool

// chromium finds Debian's chromium (CI installs it); missing, the test fails under CI and is
// skipped elsewhere.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is missing; .ci/run installs it (apt-get install chromium)")
	}
	t.Skip("chromium is missing: apt-get install chromium")
	return ""
}

// artifacts is where screenshots go: PAYRELAY_ARTIFACTS (CI keeps it), else a temporary dir.
func artifacts(t *testing.T) string {
	if dir := os.Getenv("PAYRELAY_ARTIFACTS"); dir != "" {
		os.MkdirAll(dir, 0o755)
		return dir
	}
	return t.TempDir()
}

// browser starts headless Chromium at exe, a window 1200 wide and height tall, for at most a
// minute; it stops with the test.
func browser(t *testing.T, exe string, height int) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.Headless,
		chromedp.DisableGPU, chromedp.WindowSize(1200, height))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() { cancel(); cancelCtx(); cancelAlloc() })
	return ctx
}

// In a real browser: a payment that failed its whole ladder shows its 8 attempts on the
// timeline; the replay button replays it, and the page then shows the new ladder's delivery.
func TestDashboardInABrowser(t *testing.T) {
	t.Parallel()
	need(t)
	exe := chromium(t)
	browserDown.Store(true)
	// An order of its own each run, so -count=N does not find the last run's replayed payment.
	order := fmt.Sprintf("browser-%d", time.Now().UnixNano())
	id := ingest(t, order)
	waitTerminal(t, id, 30*time.Second)
	refund(t, order, "r1", "2.00")

	ctx := browser(t, exe, 1400)

	dir := artifacts(t)
	var overview, page []byte
	var attempts, rows, ticks, xs int
	var failedCount, lastDelivery, newestOrder string
	err := chromedp.Run(ctx,
		chromedp.Navigate(st.AdminURL()+"/"),
		chromedp.WaitVisible(`#counts`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelector('#counts tr[data-game="demo-a"][data-environment="production"] td.failed').textContent`, &failedCount),
		chromedp.Evaluate(`document.querySelector('#counts tr[data-game="demo-a"][data-environment="production"] td.last-delivery').textContent`, &lastDelivery),
		chromedp.Evaluate(`[...document.querySelectorAll('#newest a')].map(a => a.textContent).join(' ')`, &newestOrder),
		chromedp.FullScreenshot(&overview, 100),
		chromedp.Navigate(st.AdminURL()+"/payments/"+id),
		chromedp.WaitVisible(`svg.timeline`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll('section[data-state="failed"] circle.attempt').length`, &attempts),
		chromedp.Evaluate(`document.querySelectorAll('tr.attempt-row').length`, &rows),
		chromedp.Evaluate(`document.querySelectorAll('section[data-state="failed"] line.tick').length`, &ticks),
		chromedp.Evaluate(`new Set([...document.querySelectorAll('section[data-state="failed"] circle.attempt')].map(c => Math.round(c.cx.baseVal.value / 8))).size`, &xs),
		chromedp.FullScreenshot(&page, 100),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	// The overview: exact counts (this payment among the failed), the last delivery's time, the
	// newest payments (other tests' payments, sent at the same time, may fill it).
	if n, err := strconv.Atoi(failedCount); err != nil || n < 1 || lastDelivery == "" || lastDelivery == "never" || newestOrder == "" {
		t.Errorf("overview: failed %q, last delivery %q, newest %q; want a count, a time and payments listed", failedCount, lastDelivery, newestOrder)
	}
	// The timeline: a time axis with ticks, the 8 attempts apart (no two within 8 px).
	if ticks < 3 || xs != 8 {
		t.Errorf("timeline: %d ticks, attempts at %d distinct places; want an axis and 8 apart", ticks, xs)
	}
	os.WriteFile(filepath.Join(dir, "dashboard-overview.png"), overview, 0o644)
	os.WriteFile(filepath.Join(dir, "dashboard-payment-failed.png"), page, 0o644)
	if attempts != 8 || rows != 8 {
		t.Fatalf("the failed payment's timeline shows %d attempts and its table %d rows; want 8", attempts, rows)
	}

	browserDown.Store(false)
	var after []byte
	var delivered int
	// The form's post answers 303 to the payment's page. RunResponse waits until the browser
	// has loaded that page: a command sent while the navigation is still under way fails with
	// "Not attached to an active page", which is what a plain Click then Reload raced into.
	resp, err := chromedp.RunResponse(ctx,
		chromedp.SendKeys(`section[data-state="failed"] form input[name=reason]`, "game server fixed", chromedp.ByQuery),
		chromedp.Click(`section[data-state="failed"] button.replay`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("replay in the browser: %v", err)
	}
	if resp.Status != http.StatusOK || !strings.HasSuffix(resp.URL, "/payments/"+id) {
		t.Fatalf("the replay's post led to %d %s, want 200 from the payment's page", resp.Status, resp.URL)
	}
	p := waitNotification(t, id, relay.RefundKey("r1"), 20*time.Second)
	err = chromedp.Run(ctx,
		chromedp.Navigate(st.AdminURL()+"/payments/"+id),
		chromedp.WaitVisible(`svg.timeline`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll('circle.attempt[data-generation="1"][data-status="200"]').length`, &delivered),
		chromedp.FullScreenshot(&after, 100),
	)
	if err != nil {
		t.Fatalf("browser after the replay: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "dashboard-payment-replayed.png"), after, 0o644)
	if paid := p.Paid(); paid.State != relay.StateDelivered || paid.Generation != 1 || !strings.HasPrefix(paid.Actions[0].By, "anonymous") || paid.Actions[0].Reason != "game server fixed" {
		t.Errorf("after the browser's replay: %s, generation %d, actions %+v", paid.State, paid.Generation, paid.Actions)
	}
	if delivered != 1 {
		t.Errorf("the page shows %d delivered attempts of generation 1, want 1", delivered)
	}
	t.Logf("screenshots in %s", dir)
}

// In a real browser: an operator runs a day's reconciliation from the dashboard's form and
// reads its report: the payment the bill shows and payrelay lacked, recovered.
func TestReconciliationInABrowser(t *testing.T) {
	t.Parallel()
	need(t)
	exe := chromium(t)
	const day = "2026-11-19"
	aliGateway.SetBill(day, providertest.AlipayBillZip("2088102177846881", day, []providertest.AlipayBillLine{
		{TradeNo: "2026111922001446881000000001", OutTradeNo: "rec-browser-1", Kind: "交易", Finished: day + " 12:00:00", Amount: "68.00"},
	}))
	ctx := browser(t, exe, 900)
	var shot []byte
	var findings int
	var kind string
	// Each click that navigates runs under RunResponse, which returns once the new page has
	// loaded, so no command meets a page still navigating.
	err := chromedp.Run(ctx, chromedp.Navigate(st.AdminURL()+"/"))
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	if resp, err := chromedp.RunResponse(ctx, chromedp.Click(`#reconciliations`, chromedp.ByQuery)); err != nil || resp.Status != http.StatusOK {
		t.Fatalf("the reconciliations link: %v %v", resp, err)
	}
	resp, err := chromedp.RunResponse(ctx,
		chromedp.SetValue(`#reconcile select[name=account]`, "alipay "+aliApp, chromedp.ByQuery),
		chromedp.SetValue(`#reconcile input[name=day]`, day, chromedp.ByQuery),
		chromedp.SendKeys(`#reconcile input[name=reason]`, "bill re-issued", chromedp.ByQuery),
		chromedp.Click(`#reconcile button`, chromedp.ByQuery),
	)
	if err != nil || resp.Status != http.StatusOK {
		t.Fatalf("the reconcile form: %v %v", resp, err)
	}
	err = chromedp.Run(ctx,
		chromedp.WaitVisible(`#findings`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll('#findings tr.finding').length`, &findings),
		chromedp.Evaluate(`document.querySelector('#findings tr.finding').dataset.kind`, &kind),
		chromedp.FullScreenshot(&shot, 100),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	os.WriteFile(filepath.Join(artifacts(t), "dashboard-reconciliation.png"), shot, 0o644)
	if findings != 1 || kind != string(relay.FindingMissingPayment) {
		t.Fatalf("the report page lists %d findings (first %q), want the one missing payment", findings, kind)
	}
	if p := waitTerminal(t, relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "rec-browser-1"), 20*time.Second); p.Paid().State != relay.StateDelivered {
		t.Errorf("the recovered payment ended %s", p.Paid().State)
	}
}
