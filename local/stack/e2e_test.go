package stack_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudtasks "cloud.google.com/go/cloudtasks/apiv2"
	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/infra/store"
	"github.com/payrelay/payrelay/local/gameserver"
	"github.com/payrelay/payrelay/local/stack"
	"github.com/payrelay/payrelay/local/tasksemu"
	"github.com/payrelay/payrelay/schedule"
)

// compression plays the 24h22m ladder in about 4.4 s.
const compression = 20000

// flakyDown makes the game server fail flaky-* payments while it is set.
var flakyDown atomic.Bool

var (
	st       *stack.Stack
	startErr error
	payments *store.Firestore
	ladder   schedule.Ladder
)

func TestMain(m *testing.M) {
	ctx := context.Background()
	ladder, _ = schedule.Default().Compress(compression)
	providerConfig := providerKeys()
	providerConfig.Generic = stack.DefaultProviders().Generic
	st, startErr = stack.Start(ctx, stack.Options{
		Providers:     providerConfig,
		FirestoreHost: os.Getenv("FIRESTORE_EMULATOR_HOST"),
		Compression:   compression,
		Collection:    fmt.Sprintf("e2e-%d", time.Now().UnixNano()),
		LogLevel:      "warn",
	})
	if startErr == nil {
		st.Game.SetDecide(decide)
		st.GameB.SetDecide(decide)
		payments, startErr = st.OpenStore(ctx)
	}
	code := m.Run()
	if st != nil {
		stopCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
		st.Stop(stopCtx)
		cancel()
	}
	os.Exit(code)
}

// decide answers a payment.succeeded by its order id's prefix: ok-* at once, fail3-* fails
// attempts 1-3, fail-* always, slow-* takes 300 ms to acknowledge, gone-* answers 410, later-*
// answers attempt 1 with 429 and Retry-After: 1. Refunds are acknowledged at once.
func decide(p gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
	order := p.Data.OrderID
	switch {
	case p.Type != string(relay.TypePaymentSucceeded):
	case strings.HasPrefix(order, "fail3-") && attempt <= 3:
		return gameserver.Answer{Status: http.StatusServiceUnavailable}, true
	case strings.HasPrefix(order, "fail-"):
		return gameserver.Answer{Status: http.StatusInternalServerError}, true
	case strings.HasPrefix(order, "slow-"):
		return gameserver.Answer{Status: http.StatusOK, Delay: 300 * time.Millisecond}, true
	case strings.HasPrefix(order, "browser-") && browserDown.Load():
		return gameserver.Answer{Status: http.StatusInternalServerError}, true
	case strings.HasPrefix(order, "flaky-") && flakyDown.Load():
		return gameserver.Answer{Status: http.StatusInternalServerError}, true
	case strings.HasPrefix(order, "bdown-"):
		return gameserver.Answer{Status: http.StatusServiceUnavailable}, true
	case strings.HasPrefix(order, "gone-"):
		return gameserver.Answer{Status: http.StatusGone}, true
	case strings.HasPrefix(order, "later-") && attempt == 1:
		return gameserver.Answer{Status: http.StatusTooManyRequests, Custom: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}}, true
	}
	return gameserver.Answer{Status: http.StatusOK}, true
}

func need(t *testing.T) {
	t.Helper()
	if startErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the local stack did not start in CI: %v", startErr)
		}
		t.Skipf("the local stack did not start: %v", startErr)
	}
}

func ingest(t *testing.T, order string) string {
	t.Helper()
	code, body, err := stack.SendAsProvider(context.Background(), st.FunctionsURL+"/Ingest", stack.IngestSecret, stack.SampleBody(order, "6.48", "CNY"))
	if err != nil || code != http.StatusOK {
		t.Fatalf("Ingest(%s) = %d %s %v", order, code, body, err)
	}
	var out struct {
		PaymentID string `json:"payment_id"`
	}
	json.Unmarshal(body, &out)
	return out.PaymentID
}

// waitTerminal polls the store until the payment's payment.succeeded notification reaches a
// terminal state.
func waitTerminal(t *testing.T, id string, within time.Duration) *relay.Payment {
	t.Helper()
	return waitNotification(t, id, relay.KeyPaid, within)
}

// waitNotification polls the store until notification key of payment id is terminal.
func waitNotification(t *testing.T, id, key string, within time.Duration) *relay.Payment {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		p, _, err := payments.Get(context.Background(), id)
		if err == nil {
			if n := p.Notification(key); n != nil && n.State.Terminal() {
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	p, _, err := payments.Get(context.Background(), id)
	t.Fatalf("notification %s-%s not terminal after %v: %+v %v", id, key, within, p, err)
	return nil
}

func attemptsOf(hits []gameserver.Hit) []int {
	var n []int
	for _, h := range hits {
		n = append(n, h.Attempt)
	}
	return n
}

func TestDeliveredAtOnce(t *testing.T) {
	t.Parallel()
	need(t)
	id := ingest(t, "ok-1")
	p := waitTerminal(t, id, 20*time.Second)
	hits := st.Game.Hits(id)
	n := p.Paid()
	if n.State != relay.StateDelivered || len(hits) != 1 || len(n.Attempts) != 1 || n.Attempts[0].StatusCode != 200 {
		t.Fatalf("state %s, %d posts, attempts %+v; want delivered after one", n.State, len(hits), n.Attempts)
	}
	got := hits[0].Payload
	if got.Type != "payment.succeeded" || got.Data.NotificationID != id+"-paid" || got.Data.OrderID != "ok-1" || got.Data.AmountMinor != 648 ||
		got.Data.Currency != "CNY" || got.Data.Provider != "generic" || got.Data.AppID != "demo-game" || got.Data.MerchantID != "demo-game" || !got.Data.PaymentNotified {
		t.Errorf("game server got %+v", got)
	}
}

func TestDeliveredAtAttemptFour(t *testing.T) {
	t.Parallel()
	need(t)
	id := ingest(t, "fail3-1")
	p := waitTerminal(t, id, 20*time.Second)
	hits := st.Game.Hits(id)
	if p.Paid().State != relay.StateDelivered || fmt.Sprint(attemptsOf(hits)) != "[1 2 3 4]" {
		t.Fatalf("state %s after posts for attempts %v; want delivered at attempt 4", p.Paid().State, attemptsOf(hits))
	}
	for i := 1; i < len(hits); i++ {
		gap, want := hits[i].At.Sub(hits[i-1].At), ladder.Wait(i+1)
		if gap < want {
			t.Errorf("attempt %d came %v after attempt %d, before the ladder's %v", i+1, gap, i, want)
		}
		t.Logf("attempt %d: planned wait %v, actual %v", i+1, want, gap)
	}
	for i, a := range p.Paid().Attempts {
		wantCode, wantClass := 503, relay.ErrorHTTP
		if i == 3 {
			wantCode, wantClass = 200, relay.ErrorNone
		}
		if a.Number != i+1 || a.StatusCode != wantCode || a.ErrorClass != wantClass || a.Response == "" {
			t.Errorf("record %d = %+v", i, a)
		}
	}
}

func TestAlwaysFailingGivesEightAttempts(t *testing.T) {
	t.Parallel()
	need(t)
	id := ingest(t, "fail-1")
	p := waitTerminal(t, id, 40*time.Second)
	hits := st.Game.Hits(id)
	if p.Paid().State != relay.StateFailed || fmt.Sprint(attemptsOf(hits)) != "[1 2 3 4 5 6 7 8]" || len(p.Paid().Attempts) != 8 {
		t.Fatalf("state %s after posts %v and %d records; want failed after exactly 8", p.Paid().State, attemptsOf(hits), len(p.Paid().Attempts))
	}
	if total, want := hits[7].At.Sub(hits[0].At), ladder.Elapsed(8); total < want {
		t.Errorf("8 attempts took %v, less than the ladder's %v", total, want)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(st.Game.Hits(id)); n != 8 {
		t.Errorf("%d posts after failing, want no more than 8", n)
	}
}

func TestRepeatedCallbackGivesOneChain(t *testing.T) {
	t.Parallel()
	need(t)
	body := stack.SampleBody("repeat-1", "30.00", "CNY")
	var wg sync.WaitGroup
	codes := make(chan int, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, err := stack.SendAsProvider(context.Background(), st.FunctionsURL+"/Ingest", stack.IngestSecret, body)
			if err != nil {
				t.Error(err)
			}
			codes <- code
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusOK {
			t.Errorf("a repeated callback got %d, want 200", c)
		}
	}
	id := stack.SamplePaymentID("repeat-1")
	waitTerminal(t, id, 20*time.Second)
	if code, _, _ := stack.SendAsProvider(context.Background(), st.FunctionsURL+"/Ingest", stack.IngestSecret, body); code != http.StatusOK {
		t.Errorf("callback after delivery got %d", code)
	}
	time.Sleep(300 * time.Millisecond)
	if hits := st.Game.Hits(id); len(hits) != 1 {
		t.Errorf("game server got %d posts for one payment called back 7 times, want 1", len(hits))
	}
}

func TestDuplicatedTaskGivesNoSecondPost(t *testing.T) {
	t.Parallel()
	need(t)
	id := ingest(t, "slow-dup-1")
	// While attempt 1 is in flight (the game server takes 300 ms), Cloud Tasks "delivers" the
	// same attempt again: three copies through the emulator and two straight to Deliver.
	c := newTasksClient(t)
	body := fmt.Appendf(nil, `{"payment_id":%q,"notification":"paid","attempt":1}`, id)
	for i := range 3 {
		_, err := c.CreateTask(context.Background(), &cloudtaskspb.CreateTaskRequest{Parent: stack.QueueName(stack.GameA, 0), Task: &cloudtaskspb.Task{
			Name:         fmt.Sprintf("%s/tasks/copy-%s-%d", stack.QueueName(stack.GameA, 0), id, i),
			ScheduleTime: timestamppb.Now(),
			MessageType: &cloudtaskspb.Task_HttpRequest{HttpRequest: &cloudtaskspb.HttpRequest{
				Url: st.FunctionsURL + "/Deliver", HttpMethod: cloudtaskspb.HttpMethod_POST, Body: body}},
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(st.FunctionsURL+"/Deliver", "application/json", strings.NewReader(string(body)))
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	p := waitTerminal(t, id, 20*time.Second)
	time.Sleep(500 * time.Millisecond) // let the copies' retries play out
	if hits := st.Game.Hits(id); len(hits) != 1 || p.Paid().State != relay.StateDelivered {
		t.Errorf("game server got %d posts (attempts %v) for one attempt dispatched 6 times, want 1", len(hits), attemptsOf(hits))
	}
}

func newTasksClient(t *testing.T) *cloudtasks.Client {
	t.Helper()
	c, err := tasksemu.NewClient(context.Background(), st.TasksAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestGameServerSignalsEndToEnd(t *testing.T) {
	t.Parallel()
	need(t)
	gone := ingest(t, "gone-1")
	later := ingest(t, "later-1")
	p := waitTerminal(t, gone, 20*time.Second)
	if n := p.Paid(); n.State != relay.StateFailed || len(n.Attempts) != 1 || n.Attempts[0].StatusCode != 410 || !strings.Contains(n.Reason, "410") {
		t.Errorf("410: %s after %d attempts (%q); want failed at once", n.State, len(n.Attempts), n.Reason)
	}
	p = waitTerminal(t, later, 20*time.Second)
	hits := st.Game.Hits(later)
	if n := p.Paid(); n.State != relay.StateDelivered || len(hits) != 2 || n.Attempts[0].RetryAfter.IsZero() {
		t.Fatalf("429: %s after %d POSTs, record %+v", n.State, len(hits), n.Attempts)
	}
	// The ladder's compressed 2m step is 6 ms; the game server asked for a second.
	if gap := hits[1].At.Sub(hits[0].At); gap < time.Second {
		t.Errorf("attempt 2 came %v after a Retry-After of 1s", gap)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(st.Game.Hits(gone)); n != 1 {
		t.Errorf("the game server that answered 410 got %d POSTs, want 1", n)
	}
}
