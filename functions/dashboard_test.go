package functions

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/schedule"
)

// The timeline of a notification that walked the whole default ladder (24h22m) draws its eight
// attempts apart: on a linear axis the first four (within 22 minutes) would fall within 12
// pixels of each other. Its axis has readable ticks, and each attempt's planned mark is drawn
// where the ladder planned it.
func TestTimelineSpreadsTheLadder(t *testing.T) {
	t.Parallel()
	ladder := schedule.Default()
	start := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	var n relay.Notification
	at := start
	for i := 1; i <= 8; i++ {
		if i > 1 {
			at = at.Add(ladder.Wait(i)).Add(3 * time.Second) // a little late
		}
		n.Attempts = append(n.Attempts, relay.AttemptRecord{Number: i, StartedAt: at, Duration: 200 * time.Millisecond, StatusCode: 503, ErrorClass: relay.ErrorHTTP})
		at = at.Add(200 * time.Millisecond)
	}
	tl := newTimeline(&n, ladder)
	if len(tl.Rows) != 1 || len(tl.Rows[0].Points) != 8 {
		t.Fatalf("rows %+v", tl.Rows)
	}
	pts := tl.Rows[0].Points
	for i := 1; i < len(pts); i++ {
		if gap := pts[i].X - pts[i-1].X; gap < 12 {
			t.Errorf("attempts %d and %d are %d px apart (x %d, %d): they overlap", i, i+1, gap, pts[i-1].X, pts[i].X)
		}
		if d := pts[i].X - pts[i].PlannedX; d < 0 || d > 3 {
			t.Errorf("attempt %d at x %d, its plan at %d: a 3 s lateness should draw them together", i+1, pts[i].X, pts[i].PlannedX)
		}
		if pts[i].LateMS < 2900 || pts[i].LateMS > 3100 {
			t.Errorf("attempt %d is %d ms late, want about 3000", i+1, pts[i].LateMS)
		}
	}
	ticks := tl.Rows[0].Ticks
	if len(ticks) < 5 || ticks[0].Label != "+0" || ticks[len(ticks)-1].Label != "+1d" {
		t.Fatalf("ticks %+v: want +0 to +1d", ticks)
	}
	for i := 1; i < len(ticks); i++ {
		if ticks[i].X-ticks[i-1].X < 44 {
			t.Errorf("ticks %s and %s crowd each other", ticks[i-1].Label, ticks[i].Label)
		}
	}
	if last := pts[7].X; last > tl.Width || last < tl.Width-40 {
		t.Errorf("the last attempt at x %d of %d: the axis should end near it", last, tl.Width)
	}
}

// The overview's counts are exact past the lists' bound (250 pending, not "200+"), count the
// deliveries of the last hour and day, name the last delivery's time, and list the newest
// payments.
func TestOverviewCountsExactly(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.h.Games = []string{"game-1"}
	for i := range 250 {
		if code, _ := serve(f.h.Ingest, signed(strings.Replace(validBody, "order-1001", fmt.Sprintf("order-%d", 5000+i), 1), testNow)); code != http.StatusOK {
			t.Fatal("ingest failed")
		}
	}
	for i := range 3 {
		id := relay.PaymentID(relay.EnvProduction, "generic", "game-1", fmt.Sprintf("order-%d", 5000+i))
		serve(f.h.Deliver, deliverReq(`{"payment_id":"`+id+`","notification":"paid","attempt":1}`))
	}
	w := httptest.NewRecorder()
	f.h.Admin(w, httptest.NewRequest(http.MethodGet, "/", nil))
	body := w.Body.String()
	row := regexp.MustCompile(`(?s)<tr class="env-production" data-game="game-1".*?</tr>`).FindString(body)
	for _, want := range []string{`<td class="delivered-hour">3</td>`, `<td class="delivered-day">3</td>`, `<td class="pending">247</td>`,
		`<td class="last-delivery">` + testNow.UTC().Format("2006-01-02 15:04:05") + `</td>`} {
		if !strings.Contains(row, want) {
			t.Errorf("the game's row lacks %s:\n%s", want, row)
		}
	}
	newest := regexp.MustCompile(`(?s)<table id="newest">.*?</table>`).FindString(body)
	if n := strings.Count(newest, "<tr class="); n != dashboardNewest || !strings.Contains(newest, "<td>6.48 CNY</td>") {
		t.Errorf("newest payments: %d rows, want %d:\n%s", n, dashboardNewest, newest)
	}
}
