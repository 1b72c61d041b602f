package functions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/schedule"
)

// The dispatcher (Cloud Tasks, or an emulator restarted) hangs up while the game server is
// still answering: the attempt owns its deadline, so the game server's 200 is what Deliver
// records, the notification is delivered, and no second POST follows.
func TestDeliverRecordsTheAnswerAfterTheDispatcherHangsUp(t *testing.T) {
	t.Parallel()
	received := make(chan struct{})
	var posts atomic.Int32
	game := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		close(received)
		time.Sleep(500 * time.Millisecond) // still working when the dispatcher gives up
		w.WriteHeader(http.StatusOK)
	}))
	defer game.Close()
	notifier, err := gamehttp.NewGames([]gamehttp.Game{{Name: "game-1", URL: game.URL, Secrets: []webhook.Secret{testSecret}, Timeout: 5 * time.Second}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	store, queue := relaytest.NewStore(), relaytest.NewQueue()
	svc, err := relay.NewService(relay.Config{Store: store, Queue: queue, Notifier: notifier, Ladder: schedule.Default(), Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	generic, _ := provider.NewGeneric(map[string]string{"game-1": "game-1"}, testSecret)
	h := &Handler{Service: svc, Providers: provider.Set{"generic": generic}, Logger: slog.New(slog.NewTextHandler(tWriter{t}, nil)), Clock: relay.SystemClock{}}
	if code, out := serve(h.Ingest, signed(validBody, time.Now())); code != http.StatusOK {
		t.Fatalf("ingest = %d %v", code, out)
	}
	id := relay.PaymentID(relay.EnvProduction, "generic", "game-1", "order-1001")
	deliver := httptest.NewServer(http.HandlerFunc(h.Deliver))
	defer deliver.Close()

	ctx, hangUp := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, deliver.URL, strings.NewReader(fmt.Sprintf(`{"payment_id":%q,"notification":"paid","attempt":1}`, id)))
	go func() { <-received; hangUp() }()
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("the dispatcher's request ended with %v, want it cancelled mid-way", err)
	}
	var p *relay.Payment
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if p = store.Payment(id); p.Paid().State == relay.StateDelivered {
			break
		}
	}
	n := p.Paid()
	if n.State != relay.StateDelivered || len(n.Attempts) != 1 || n.Attempts[0].StatusCode != http.StatusOK || n.Attempts[0].ErrorClass != relay.ErrorNone {
		t.Fatalf("after the dispatcher hung up: %s, attempts %+v; want delivered, the game server's 200 recorded", n.State, n.Attempts)
	}
	if n := posts.Load(); n != 1 {
		t.Errorf("%d POSTs, want 1", n)
	}
}
