package stack_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

// In a real browser: the overview has a sandbox row for demo-a (which has a sandbox endpoint),
// visibly marked, lists demo-b's sandbox payment as not relayed, and filters by environment;
// the payment's page marks it sandbox, and its replay is refused while demo-b has no sandbox
// endpoint.
func TestSandboxOnTheDashboard(t *testing.T) {
	t.Parallel()
	need(t)
	exe := chromium(t)
	order := fmt.Sprintf("browser-sbx-%d", time.Now().UnixNano())
	for _, app := range []string{stack.SampleApp, stack.SampleAppB} {
		code, body, err := stack.SendAsProvider(context.Background(), st.FunctionsURL+"/Ingest", stack.IngestSecret, stack.SandboxBody(app, order, "6.48", "CNY"))
		if err != nil || code != http.StatusOK {
			t.Fatalf("Ingest(%s) = %d %s %v", app, code, body, err)
		}
	}
	waitTerminal(t, stack.SandboxPaymentID(stack.SampleApp, order), 20*time.Second)
	notRelayed := stack.SandboxPaymentID(stack.SampleAppB, order)
	waitTerminal(t, notRelayed, 5*time.Second)

	ctx := browser(t, exe, 1600)
	var shot []byte
	var sandboxRowA, sandboxRowB, badges, listed, productionRowsFiltered, sandboxRowsFiltered int
	err := chromedp.Run(ctx,
		chromedp.Navigate(st.AdminURL()+"/"),
		chromedp.WaitVisible(`#counts`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll('#counts tr[data-environment="sandbox"][data-game="demo-a"] span.sandbox').length`, &sandboxRowA),
		chromedp.Evaluate(`document.querySelectorAll('#counts tr[data-environment="sandbox"][data-game="demo-b"]').length`, &sandboxRowB),
		chromedp.Evaluate(`document.querySelectorAll('tr.env-sandbox span.sandbox').length`, &badges),
		chromedp.Evaluate(fmt.Sprintf(`document.querySelectorAll('a[href="payments/%s"]').length`, notRelayed), &listed),
		chromedp.FullScreenshot(&shot, 100),
		chromedp.Navigate(st.AdminURL()+"/?environment=sandbox"),
		chromedp.WaitVisible(`#counts`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll('#counts tr[data-environment="production"]').length`, &productionRowsFiltered),
		chromedp.Evaluate(`document.querySelectorAll('#counts tr[data-environment="sandbox"]').length`, &sandboxRowsFiltered),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	os.WriteFile(filepath.Join(artifacts(t), "dashboard-sandbox.png"), shot, 0o644)
	if sandboxRowA != 1 || sandboxRowB != 1 || badges < 3 || listed < 1 {
		t.Errorf("overview: demo-a sandbox row marked %d, demo-b sandbox row %d (it has sandbox notifications), %d sandbox badges, demo-b's payment listed %d times",
			sandboxRowA, sandboxRowB, badges, listed)
	}
	if productionRowsFiltered != 0 || sandboxRowsFiltered != 2 {
		t.Errorf("filtered to sandbox: %d production rows, %d sandbox rows; want 0 and 2", productionRowsFiltered, sandboxRowsFiltered)
	}

	var marked, state string
	err = chromedp.Run(ctx,
		chromedp.Navigate(st.AdminURL()+"/payments/"+notRelayed),
		chromedp.WaitVisible(`#sandbox`, chromedp.ByQuery),
		chromedp.Text(`#environment`, &marked, chromedp.ByQuery),
		chromedp.AttributeValue(`section.notification`, "data-state", &state, nil, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("payment page: %v", err)
	}
	if !strings.EqualFold(marked, "sandbox") || state != string(relay.StateNotRelayed) {
		t.Fatalf("payment page: environment %q, state %q", marked, state)
	}
	resp, err := chromedp.RunResponse(ctx,
		chromedp.SendKeys(`section.notification form input[name=reason]`, "try it", chromedp.ByQuery),
		chromedp.Click(`section.notification button.replay`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("replay in the browser: %v", err)
	}
	if resp.Status != http.StatusConflict {
		t.Errorf("replaying a sandbox notification of a game without a sandbox endpoint answered %d, want 409", resp.Status)
	}
	if p := waitTerminal(t, notRelayed, time.Second); p.Paid().State != relay.StateNotRelayed || len(p.Paid().Attempts) != 0 {
		t.Errorf("after the refused replay: %s, %d attempts", p.Paid().State, len(p.Paid().Attempts))
	}
}
