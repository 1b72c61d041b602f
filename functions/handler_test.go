package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/schedule"
)

var (
	testNow    = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	testSecret = webhook.NewSecret([]byte("0123456789abcdef0123456789abcdef"))
)

type fixture struct {
	h     *Handler
	store *relaytest.Store
	queue *relaytest.Queue
	posts int
	fail  bool // the game server answers 500
	// posted lists each notification POSTed to the game server, as "order/key".
	posted []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return buildFixture(t, slog.New(slog.NewTextHandler(tWriter{t}, nil)))
}

// newFixtureQuiet discards logs (fuzzing).
func newFixtureQuiet(t *testing.T) *fixture {
	t.Helper()
	return buildFixture(t, slog.New(slog.DiscardHandler))
}

func buildFixture(t *testing.T, log *slog.Logger) *fixture {
	t.Helper()
	f := &fixture{store: relaytest.NewStore(), queue: relaytest.NewQueue()}
	clock := relaytest.NewClock(testNow)
	svc, err := relay.NewService(relay.Config{
		Store: f.store, Finder: f.store, Queue: f.queue, Clock: clock, Ladder: schedule.Default(), Lease: time.Minute, Logger: log,
		Reports: relaytest.NewReports(), Days: f.store, Cursors: relaytest.NewCursors(),
		Jobs: relaytest.NewJobs(), JobQueue: f.queue, StoreAcker: ackerFunc(func(ctx context.Context, p *relay.Payment) (string, error) {
			return f.h.Providers.AcknowledgePurchase(ctx, p)
		}),
		Notifier: relaytest.NotifierFunc(func(_ context.Context, p *relay.Payment, n *relay.Notification, _ int) relay.NotifyResult {
			f.posts++
			f.posted = append(f.posted, p.OrderID+"/"+n.Key)
			if f.fail {
				return relay.NotifyResult{StatusCode: 500, ErrorClass: relay.ErrorHTTP}
			}
			return relay.NotifyResult{StatusCode: 200}
		}),
		Backoff: func() retry.Backoff { return retry.WithMaxRetries(1, retry.NewConstant(time.Millisecond)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	generic, _ := provider.NewGeneric(map[string]string{"game-1": "game-1"}, testSecret)
	f.h = &Handler{Service: svc, Providers: provider.Set{"generic": generic}, Logger: log, Clock: clock}
	return f
}

// ackerFunc is a relay.StoreAcker of a function: the fixture's providers, as Build wires them.
type ackerFunc func(context.Context, *relay.Payment) (string, error)

func (f ackerFunc) AcknowledgePurchase(ctx context.Context, p *relay.Payment) (string, error) {
	return f(ctx, p)
}

// tWriter sends logs to t.Log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

const validBody = `{"order_id":"order-1001","transaction_id":"txn-77","amount":"6.48","currency":"CNY","status":"paid","paid_at":"2026-11-24T19:59:00+08:00","app_id":"game-1","metadata":{"sku":"gems_60"}}`

func signed(body string, ts time.Time) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/Ingest", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("webhook-id", "msg_1")
	r.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	r.Header.Set("webhook-signature", testSecret.Sign("msg_1", ts, []byte(body)))
	return r
}

func serve(hf http.HandlerFunc, r *http.Request) (int, map[string]any) {
	w := httptest.NewRecorder()
	hf(w, r)
	var out map[string]any
	json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out
}

func TestIngestValid(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	code, out := serve(f.h.Ingest, signed(validBody, testNow))
	if code != http.StatusOK || out["duplicate"] != false {
		t.Fatalf("Ingest = %d %v", code, out)
	}
	id := relay.PaymentID(relay.EnvProduction, "generic", "game-1", "order-1001")
	p := f.store.Payment(id)
	if p == nil || p.AmountMinor != 648 || p.Currency != "CNY" || p.Paid().State != relay.StatePending || out["payment_id"] != id {
		t.Fatalf("stored %+v", p)
	}
	if tasks := f.queue.Snapshot(); len(tasks) != 1 || tasks[0].Name() != id+"-paid-1" || !tasks[0].At.Equal(testNow) {
		t.Fatalf("tasks = %+v, want %s-paid-1 now", tasks, id)
	}
	code, out = serve(f.h.Ingest, signed(validBody, testNow))
	if code != http.StatusOK || out["duplicate"] != true || len(f.queue.Snapshot()) != 1 {
		t.Errorf("repeat = %d %v with %d tasks; want 200, duplicate, one task", code, out, len(f.queue.Snapshot()))
	}
	changed := strings.Replace(validBody, `"6.48"`, `"0.01"`, 1)
	if code, _ := serve(f.h.Ingest, signed(changed, testNow)); code != http.StatusConflict {
		t.Errorf("same order, other amount = %d, want 409", code)
	}
	if f.store.Payment(id).AmountMinor != 648 {
		t.Error("the conflicting callback changed the stored payment")
	}
}

// refundBody is a generic-format refund of refundAmount of validBody's payment.
func refundBody(refundID, refundAmount string) string {
	return strings.Replace(validBody, `"status":"paid"`, fmt.Sprintf(`"status":"refunded","refund_id":%q,"refund_amount":%q,"refunded_at":"2026-11-24T21:00:00+08:00"`, refundID, refundAmount), 1)
}

func TestIngestRefunds(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := relay.PaymentID(relay.EnvProduction, "generic", "game-1", "order-1001")
	if code, out := serve(f.h.Ingest, signed(validBody, testNow)); code != http.StatusOK {
		t.Fatalf("payment = %d %v", code, out)
	}
	code, out := serve(f.h.Ingest, signed(refundBody("r1", "1.48"), testNow))
	if code != http.StatusOK || out["state"] != "held" || out["notification_id"] != id+"-"+relay.RefundKey("r1") {
		t.Fatalf("refund while the payment is pending = %d %v; want 200, held", code, out)
	}
	if n := len(f.queue.Snapshot()); n != 1 {
		t.Errorf("%d tasks; the held refund must wait for its payment", n)
	}
	if code, out := serve(f.h.Ingest, signed(refundBody("r1", "1.48"), testNow)); code != http.StatusOK || out["duplicate"] != true {
		t.Errorf("repeated refund = %d %v, want 200 duplicate", code, out)
	}
	if code, _ := serve(f.h.Ingest, signed(refundBody("r1", "1.00"), testNow)); code != http.StatusConflict {
		t.Errorf("same refund id, other amount = %d, want 409", code)
	}
	if code, _ := serve(f.h.Ingest, signed(refundBody("r2", "5.01"), testNow)); code != http.StatusConflict {
		t.Errorf("refund beyond the 5.00 that remains = %d, want 409", code)
	}
	p := f.store.Payment(id)
	if len(p.Notifications) != 2 || p.RefundedMinor != 148 {
		t.Errorf("stored %d notifications, refunded %d; want the payment and one refund of 148", len(p.Notifications), p.RefundedMinor)
	}
}

func TestIngestRefusals(t *testing.T) {
	t.Parallel()
	replace := func(old, new string) string { return strings.Replace(validBody, old, new, 1) }
	cases := []struct {
		name  string
		req   func() *http.Request
		code  int
		field string
	}{
		{"bad signature", func() *http.Request {
			r := signed(validBody, testNow)
			r.Header.Set("webhook-signature", webhook.NewSecret([]byte("another-secret-another-secret-32")).Sign("msg_1", testNow, []byte(validBody)))
			return r
		}, http.StatusUnauthorized, ""},
		{"tampered body", func() *http.Request {
			r := signed(validBody, testNow)
			r.Body = http.NoBody
			r2 := httptest.NewRequest(http.MethodPost, "/Ingest", strings.NewReader(replace(`"6.48"`, `"648.00"`)))
			r2.Header = r.Header
			return r2
		}, http.StatusUnauthorized, ""},
		{"stale timestamp", func() *http.Request { return signed(validBody, testNow.Add(-6*time.Minute)) }, http.StatusUnauthorized, ""},
		{"missing signature", func() *http.Request {
			r := signed(validBody, testNow)
			r.Header.Del("webhook-signature")
			return r
		}, http.StatusUnauthorized, ""},
		{"malformed JSON", func() *http.Request { return signed(`{"order_id":`, testNow) }, http.StatusBadRequest, "body"},
		{"missing order", func() *http.Request { return signed(replace(`"order_id":"order-1001",`, ""), testNow) }, http.StatusUnprocessableEntity, "order_id"},
		{"missing transaction", func() *http.Request { return signed(replace(`"transaction_id":"txn-77",`, ""), testNow) }, http.StatusUnprocessableEntity, "transaction_id"},
		{"order charset", func() *http.Request { return signed(replace(`order-1001`, `order/1001`), testNow) }, http.StatusUnprocessableEntity, "order_id"},
		{"zero amount", func() *http.Request { return signed(replace(`"6.48"`, `"0.00"`), testNow) }, http.StatusUnprocessableEntity, "amount"},
		{"negative amount", func() *http.Request { return signed(replace(`"6.48"`, `"-6.48"`), testNow) }, http.StatusUnprocessableEntity, "amount"},
		{"amount beyond minor unit", func() *http.Request { return signed(replace(`"6.48"`, `"6.485"`), testNow) }, http.StatusUnprocessableEntity, "amount"},
		{"numeric amount", func() *http.Request { return signed(replace(`"6.48"`, `6.48`), testNow) }, http.StatusBadRequest, "body"},
		{"unknown currency", func() *http.Request { return signed(replace(`"CNY"`, `"RMB"`), testNow) }, http.StatusUnprocessableEntity, "currency"},
		{"unpaid status", func() *http.Request { return signed(replace(`"paid"`, `"pending"`), testNow) }, http.StatusUnprocessableEntity, "status"},
		{"bad paid_at", func() *http.Request { return signed(replace(`2026-11-24T19:59:00+08:00`, `yesterday`), testNow) }, http.StatusUnprocessableEntity, "paid_at"},
		{"missing app", func() *http.Request { return signed(replace(`"app_id":"game-1",`, ""), testNow) }, http.StatusUnprocessableEntity, "app_id"},
		{"refund without id", func() *http.Request {
			return signed(refundBody("", "1.00"), testNow)
		}, http.StatusUnprocessableEntity, "refund_id"},
		{"refund without amount", func() *http.Request { return signed(refundBody("r1", ""), testNow) }, http.StatusUnprocessableEntity, "refund_amount"},
		{"refund amount beyond minor unit", func() *http.Request { return signed(refundBody("r1", "1.001"), testNow) }, http.StatusUnprocessableEntity, "refund_amount"},
		{"refund without time", func() *http.Request {
			return signed(strings.Replace(refundBody("r1", "1.00"), `"refunded_at":"2026-11-24T21:00:00+08:00"`, `"refunded_at":""`, 1), testNow)
		}, http.StatusUnprocessableEntity, "refunded_at"},
		{"refund larger than the payment", func() *http.Request { return signed(refundBody("r1", "6.49"), testNow) }, http.StatusConflict, ""},
		{"oversized", func() *http.Request {
			return signed(replace(`"gems_60"`, `"`+strings.Repeat("x", MaxIngestBody)+`"`), testNow)
		}, http.StatusRequestEntityTooLarge, ""},
		{"GET", func() *http.Request {
			r := signed(validBody, testNow)
			r.Method = http.MethodGet
			return r
		}, http.StatusMethodNotAllowed, ""},
		{"form content type", func() *http.Request {
			r := signed(validBody, testNow)
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		}, http.StatusUnsupportedMediaType, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			code, out := serve(f.h.Ingest, tc.req())
			if code != tc.code {
				t.Fatalf("status = %d (%v), want %d", code, out, tc.code)
			}
			if out["error"] == nil || out["error"] == "" {
				t.Errorf("no JSON error in %v", out)
			}
			if tc.field != "" && out["field"] != tc.field {
				t.Errorf("field = %v, want %s", out["field"], tc.field)
			}
			if f.store.Len() != 0 || len(f.queue.Snapshot()) != 0 {
				t.Errorf("a refused request stored %d payments and enqueued %d tasks", f.store.Len(), len(f.queue.Snapshot()))
			}
		})
	}
}

func TestIngestDependencyDown(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.store.Fail = func(string) error { return fmt.Errorf("firestore: %w", relay.ErrUnavailable) }
	if code, _ := serve(f.h.Ingest, signed(validBody, testNow)); code != http.StatusServiceUnavailable {
		t.Errorf("store down: %d, want 503", code)
	}
	f.store.Fail = nil
	f.queue.Fail = func(relay.Task) error { return fmt.Errorf("cloudtasks: %w", relay.ErrUnavailable) }
	if code, _ := serve(f.h.Ingest, signed(validBody, testNow)); code != http.StatusServiceUnavailable {
		t.Errorf("queue down: %d, want 503", code)
	}
	f.queue.Fail = nil
	if code, _ := serve(f.h.Ingest, signed(validBody, testNow)); code != http.StatusOK || len(f.queue.Snapshot()) != 1 {
		t.Errorf("provider retry after recovery: %d with %d tasks, want 200 and the first task", code, len(f.queue.Snapshot()))
	}
}

func deliverReq(body string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/Deliver", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-CloudTasks-TaskName", "abc-1")
	r.Header.Set("X-CloudTasks-TaskRetryCount", "0")
	return r
}

func TestDeliverHandler(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if code, _ := serve(f.h.Ingest, signed(validBody, testNow)); code != http.StatusOK {
		t.Fatal("ingest failed")
	}
	id := relay.PaymentID(relay.EnvProduction, "generic", "game-1", "order-1001")
	for _, body := range []string{`not json`, `{}`, `{"payment_id":"x","notification":"paid","attempt":0}`, `{"payment_id":"x","attempt":1}`, `{"payment_id":"unknown","notification":"paid","attempt":1}`, fmt.Sprintf(`{"payment_id":%q,"notification":"refund-00","attempt":1}`, id)} {
		code, out := serve(f.h.Deliver, deliverReq(body))
		if code != http.StatusOK || out["outcome"] != "rejected" {
			t.Errorf("Deliver(%s) = %d %v, want 200 rejected (never retried forever)", body, code, out)
		}
	}
	get := deliverReq(`{}`)
	get.Method = http.MethodGet
	if code, _ := serve(f.h.Deliver, get); code != http.StatusMethodNotAllowed {
		t.Errorf("GET Deliver = %d, want 405", code)
	}
	if code, _ := serve(f.h.Deliver, deliverReq(strings.Repeat(" ", MaxDeliverBody+1))); code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized task = %d, want 413", code)
	}
	task := fmt.Sprintf(`{"payment_id":%q,"notification":"paid","attempt":1}`, id)
	f.store.Fail = func(string) error { return fmt.Errorf("firestore: %w", relay.ErrUnavailable) }
	if code, _ := serve(f.h.Deliver, deliverReq(task)); code != http.StatusServiceUnavailable || f.posts != 0 {
		t.Errorf("store down: %d after %d posts, want 503 and no post", code, f.posts)
	}
	f.store.Fail = nil
	// Another delivery holds a live lease: answer non-2xx so Cloud Tasks retries later.
	p, v, _ := f.store.Get(context.Background(), id)
	p.Paid().State, p.Paid().Lease = relay.StateDelivering, &relay.Lease{Attempt: 1, Owner: "other", Until: testNow.Add(time.Minute)}
	f.store.Update(context.Background(), p, v)
	if code, out := serve(f.h.Deliver, deliverReq(task)); code != http.StatusConflict || out["outcome"] != "busy" || f.posts != 0 {
		t.Errorf("live lease: %d %v, want 409 busy and no post", code, out)
	}
	p, v, _ = f.store.Get(context.Background(), id)
	p.Paid().State, p.Paid().Lease = relay.StatePending, nil
	f.store.Update(context.Background(), p, v)
	if code, out := serve(f.h.Deliver, deliverReq(task)); code != http.StatusOK || out["outcome"] != "delivered" || f.posts != 1 {
		t.Errorf("Deliver = %d %v after %d posts, want 200 delivered after 1", code, out, f.posts)
	}
	if code, out := serve(f.h.Deliver, deliverReq(task)); code != http.StatusOK || out["outcome"] != "ignored" || f.posts != 1 {
		t.Errorf("duplicate task = %d %v after %d posts, want 200 ignored, no second post", code, out, f.posts)
	}
}

func TestDrainRefusesNewRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if err := f.h.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code, _ := serve(f.h.Ingest, signed(validBody, testNow)); code != http.StatusServiceUnavailable || f.store.Len() != 0 {
		t.Errorf("Ingest while draining = %d, want 503 and nothing stored", code)
	}
}

func TestDispatchDeadlineWithinCloudTasksRange(t *testing.T) {
	t.Parallel()
	for lease, want := range map[time.Duration]time.Duration{6 * time.Second: 15 * time.Second, time.Minute: time.Minute, time.Hour: 30 * time.Minute} {
		if got := dispatchDeadline(lease); got != want {
			t.Errorf("dispatchDeadline(%v) = %v, want %v", lease, got, want)
		}
	}
}

// paymentIDOf is the id of validBody's payment.
func paymentIDOf(t *testing.T, f *fixture) string {
	t.Helper()
	return relay.PaymentID(relay.EnvProduction, "generic", "game-1", "order-1001")
}
