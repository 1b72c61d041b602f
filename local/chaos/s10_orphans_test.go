package chaos_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/local/gameserver"
	"github.com/payrelay/payrelay/local/stack"
)

// The two games scenario 10 takes away, and the apps that route to them.
const (
	goneGame = "gone-game" // removed from the configuration
	farmGame = "farm-game" // its queue deleted
	goneApp  = "app-gone"
	farmApp  = "app-farm"
)

// sendFor posts a payment of app as a provider does (retrying our 5xx), and counts it sent.
func sendFor(t *testing.T, scenario, app, order string) string {
	t.Helper()
	for try := 0; try < 100; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		code, _, err := stack.Send(ctx, ingestURL(), stack.IngestSecret, stack.SampleBodyFor(app, order, "6.48", "CNY"))
		cancel()
		if err == nil && code == http.StatusOK {
			h.mu.Lock()
			h.summary.Sent++
			h.mu.Unlock()
			return relay.PaymentID(relay.EnvProduction, "generic", app, order)
		}
		if err != nil || code >= 500 {
			h.mu.Lock()
			h.summary.Ingest5xx[scenario]++
			h.mu.Unlock()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: Ingest never accepted it", order)
	return ""
}

// 10. One game is removed from the configuration and another's queue is deleted while their
// notifications are mid-ladder, then every other game's queue is purged: the other game's
// notifications all end delivered (the sweeper heals the purge, past the two bad games'
// items), none lost; the bad games' are orphaned (nothing posted after, an alert each), no
// sweep gives up; once the queue exists again an orphan replays and is delivered.
func TestS10OrphansNeverBlockTheRest(t *testing.T) {
	need(t)
	const scenario = "10-orphans"
	stopSweeper := sweeper(t, 500*time.Millisecond)
	// The bad games' server fails every attempt, so their notifications are still mid-ladder
	// when the faults come however long the sends take on a loaded machine (a fixed number of
	// failures let the sixth attempt through first, once), and a dispatch already in flight when
	// the queue is deleted fails too (Cloud Tasks lets it finish; a server that had turned to
	// 2xx then acknowledged one, once). What reaches the server after a notification is
	// orphaned is counted below.
	others := orders("orph-a", 10)
	othersHook := failFirst(5, http.StatusServiceUnavailable)
	h.hook("orph", func(p gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
		if strings.HasPrefix(p.Data.OrderID, "orph-a") {
			return othersHook(p, attempt)
		}
		return gameserver.Answer{Status: http.StatusServiceUnavailable}, true
	})
	for _, o := range others {
		ingest(t, scenario, o)
	}
	var gone, farm []string
	for _, o := range orders("orph-gone", 3) {
		gone = append(gone, sendFor(t, scenario, goneApp, o))
	}
	for _, o := range orders("orph-farm", 3) {
		farm = append(farm, sendFor(t, scenario, farmApp, o))
	}
	time.Sleep(400 * time.Millisecond)
	// The configuration loses gone-game (a deploy without it), farm-game's queue is deleted,
	// and GameA's queue is purged.
	without := h.fnConf
	without.Games = []stack.GameEnv{h.fnConf.Games[0], h.fnConf.Games[2]}
	without.Providers.Generic.Apps = map[string]string{stack.SampleApp: stack.GameA, farmApp: farmGame}
	ctx := context.Background()
	// Whatever happens below, the scenarios after this one get farm's queue and the whole
	// configuration back.
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		if _, err := h.tasks.CreateQueue(ctx, &cloudtaskspb.CreateQueueRequest{Parent: "projects/" + stack.ProjectID + "/locations/local",
			Queue: &cloudtaskspb.Queue{Name: stack.QueueName(farmGame, 0)}}); err != nil && status.Code(err) != codes.AlreadyExists {
			t.Error(err)
		}
		h.killFn()
		h.setFnEnv(h.fnConf)
		if err := h.startFn(); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(restore)
	h.killFn()
	h.setFnEnv(without)
	if err := h.startFn(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.tasks.DeleteQueue(ctx, &cloudtaskspb.DeleteQueueRequest{Name: stack.QueueName(farmGame, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.tasks.PurgeQueue(ctx, &cloudtaskspb.PurgeQueueRequest{Name: stack.QueueName(stack.GameA, 0)}); err != nil {
		t.Fatal(err)
	}
	waitTerminal(t, others, 60*time.Second)
	check(t, scenario, others, false)
	// The bad ones end orphaned, and stay so: nothing is posted for them once they are.
	bad := append(append([]string{}, gone...), farm...)
	posted := map[string]int{}
	for _, id := range bad {
		var p *relay.Payment
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if p, _, _ = h.store.Get(ctx, id); p != nil && p.Paid().State == relay.StateOrphaned {
				break
			}
		}
		if p == nil || p.Paid().State != relay.StateOrphaned || p.Paid().Reason == "" {
			t.Fatalf("%s: %+v, want orphaned with a reason", id, p)
		}
		// Every POST is a recorded attempt. An attempt whose delivery was killed (the functions
		// restart here) is recorded as lost: its POST may or may not have gone out.
		posts, attempts, lost := len(h.game.Hits(id)), len(p.Paid().Attempts), 0
		for _, a := range p.Paid().Attempts {
			if a.ErrorClass == relay.ErrorLost {
				lost++
			}
		}
		if posts > attempts || posts < attempts-lost {
			t.Errorf("%s: %d POSTs, %d attempts recorded (%d of them lost)", id, posts, attempts, lost)
		}
		posted[id] = posts
	}
	time.Sleep(time.Second) // a few more sweeps, all of them over the orphans
	healed := stopSweeper()
	for _, id := range bad {
		if n := len(h.game.Hits(id)); n != posted[id] {
			t.Errorf("%s: %d POSTs after it was orphaned, want none", id, n-posted[id])
		}
	}
	log, _ := os.ReadFile(h.fnLog)
	if n := strings.Count(string(log), `"event":"orphaned"`); n < len(bad) {
		t.Errorf("%d orphaned events logged (alerts), want at least %d", n, len(bad))
	}
	h.mu.Lock()
	h.summary.Orphaned += len(bad)
	h.summary.Healed += healed
	failedSweeps := h.summary.SweepsFailed
	h.mu.Unlock()
	if failedSweeps != 0 {
		t.Errorf("%d sweeps answered non-2xx", failedSweeps)
	}
	// Put things back: farm's queue again, the whole configuration.
	restore()
	// An orphan is replayable once its queue exists: delivered (its game server now answers).
	h.hook("orph", failFirst(0, http.StatusOK))
	if code, out := adminPost(t, "/api/payments/"+farm[0]+"/notifications/paid/replay", `{"reason":"queue restored"}`); code != http.StatusOK {
		t.Fatalf("replay of an orphan = %d %s", code, out)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if p, _, _ := h.store.Get(ctx, farm[0]); p != nil && p.Paid().State == relay.StateDelivered {
			return
		}
	}
	t.Errorf("the replayed orphan %s was not delivered", farm[0])
}

// adminPost posts body to the Admin function (alone at its root, as Cloud Functions serves it).
func adminPost(t *testing.T, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d%s", h.adminPort, path), "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
