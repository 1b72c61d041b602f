package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/firestore"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/store"
	"github.com/payrelay/payrelay/local/emulator"
)

func TestMain(m *testing.M) { emulator.Main(m) }

func newStore(t testing.TB) *store.Firestore {
	t.Helper()
	emulator.FirestoreForTest(t)
	s, err := store.NewFirestore(context.Background(), "payrelay-test", "", emulator.UniqueName(t, "payments"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func payment(order string) *relay.Payment {
	now := time.Now().UTC().Truncate(time.Microsecond)
	return &relay.Payment{
		ID: relay.PaymentID(relay.EnvProduction, "generic", "game-1", order), Provider: "generic", Environment: relay.EnvProduction, Merchant: "game-1", OrderID: order, TransactionID: "txn-" + order,
		AmountMinor: 648, Currency: "CNY", PaidAt: now.Add(-time.Second), AppID: "game-1",
		Metadata: map[string]string{"sku": "月卡"}, Game: "sword", ReceivedAt: now, UpdatedAt: now,
		Notifications: []relay.Notification{{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded, State: relay.StatePending,
			Attempt: 1, NextAttemptAt: now, CreatedAt: now}},
	}
}

func TestCreateGetRoundTrip(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := payment("rt-1")
	paid := p.Paid()
	paid.Attempts = []relay.AttemptRecord{{Number: 1, StartedAt: p.ReceivedAt, Duration: 1500 * time.Millisecond, StatusCode: 502,
		ErrorClass: relay.ErrorHTTP, Error: "game server answered 502", Response: "bad \xff gateway", Delivery: "t-1#0"}}
	paid.Lease = &relay.Lease{Attempt: 1, Owner: "t-1#0", ClaimedAt: p.ReceivedAt, Until: p.ReceivedAt.Add(time.Minute)}
	p.RefundedMinor = 100
	p.Notifications = append(p.Notifications, relay.Notification{Key: relay.RefundKey("r1"), Type: relay.TypePaymentRefunded,
		State: relay.StateHeld, Attempt: 1, CreatedAt: p.ReceivedAt,
		Refund: &relay.Refund{ID: "r1", MerchantRefundNo: "out-r1", AmountMinor: 100, CumulativeMinor: 100, RefundedAt: p.ReceivedAt}})
	p.Notes = []relay.Note{{Kind: "REFUND.ABNORMAL", Reason: "card closed", Alert: true, RefundID: "r0", ReceivedAt: p.ReceivedAt}}
	_, v0, created, err := s.Create(ctx, p)
	if err != nil || !created || v0 == 0 {
		t.Fatalf("Create = %v, %v, %v", v0, created, err)
	}
	got, v, err := s.Get(ctx, p.ID)
	if err != nil || v != v0 {
		t.Fatalf("Get = %v, %v; want the version Create returned, %v", v, err, v0)
	}
	want := *p
	want.Notifications = append([]relay.Notification(nil), p.Notifications...)
	want.Notifications[0].Attempts = []relay.AttemptRecord{paid.Attempts[0]}
	want.Notifications[0].Attempts[0].Response = "bad \uFFFD gateway" // stored as valid UTF-8
	if diff := cmp.Diff(&want, got, cmpopts.EquateApproxTime(time.Microsecond)); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestCreateIsIdempotent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := payment("dup-1")
	if _, _, created, err := s.Create(ctx, p); err != nil || !created {
		t.Fatalf("first Create = %v, %v", created, err)
	}
	other := payment("dup-1")
	other.AmountMinor = 1
	stored, v, created, err := s.Create(ctx, other)
	if err != nil || created || v == 0 {
		t.Fatalf("second Create = %v, %v; want the stored payment and created=false", created, err)
	}
	if stored.AmountMinor != 648 {
		t.Errorf("second Create overwrote the amount: %d", stored.AmountMinor)
	}
}

func TestGetUnknown(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	if _, _, err := s.Get(context.Background(), "nope"); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	p := payment("never-created")
	if _, err := s.Update(context.Background(), p, relay.Version(time.Now().Truncate(time.Microsecond).UnixNano())); !errors.Is(err, relay.ErrNotFound) && !errors.Is(err, relay.ErrVersionConflict) {
		t.Errorf("Update(unknown) = %v, want ErrNotFound or ErrVersionConflict", err)
	}
}

func TestUpdateIsConditional(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := payment("cas-1")
	if _, _, _, err := s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	got, v1, err := s.Get(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	got.Paid().State = relay.StateDelivering
	v2, err := s.Update(ctx, got, v1)
	if err != nil || v2 == v1 {
		t.Fatalf("Update at the current version = %v, %v", v2, err)
	}
	got.Paid().State = relay.StateDelivered
	if _, err := s.Update(ctx, got, v1); !errors.Is(err, relay.ErrVersionConflict) {
		t.Fatalf("Update at a stale version = %v, want ErrVersionConflict", err)
	}
	if after, _, _ := s.Get(ctx, p.ID); after.Paid().State != relay.StateDelivering {
		t.Errorf("a stale update was applied: state %s", after.Paid().State)
	}
	if _, err := s.Update(ctx, got, v2); err != nil {
		t.Errorf("Update at the version the last write returned: %v", err)
	}
}

// Many deliveries race to claim the same attempt: exactly one may win.
func TestConcurrentClaimsHaveOneWinner(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := payment("race-1")
	if _, _, _, err := s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	_, v, err := s.Get(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := *p
			c.Notifications = []relay.Notification{p.Notifications[0]}
			c.Notifications[0].State = relay.StateDelivering
			c.Notifications[0].Lease = &relay.Lease{Attempt: 1, Owner: strings.Repeat("x", i+1)}
			_, err := s.Update(ctx, &c, v)
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, relay.ErrVersionConflict):
				conflicts.Add(1)
			default:
				t.Errorf("claim: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 7 {
		t.Errorf("%d claims won and %d conflicted, want 1 and 7", wins.Load(), conflicts.Load())
	}
}

// A document stored before payrelay knew environments (no environment field) is read as
// production, as payrelay treated it then, and gains the field on its next write; lists
// filter by environment.
func TestEnvironmentOfStoredPayments(t *testing.T) {
	t.Parallel()
	emulator.FirestoreForTest(t)
	ctx := context.Background()
	coll := emulator.UniqueName(t, "payments")
	s, err := store.NewFirestore(ctx, "payrelay-test", "", coll)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw, err := firestore.NewClient(ctx, "payrelay-test")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	old := payment("env-old")
	if _, _, _, err := s.Create(ctx, old); err != nil {
		t.Fatal(err)
	}
	// As an older payrelay wrote it: no environment field.
	if _, err := raw.Collection(coll).Doc(old.ID).Update(ctx, []firestore.Update{{Path: "environment", Value: firestore.Delete}}); err != nil {
		t.Fatal(err)
	}
	got, v, err := s.Get(ctx, old.ID)
	if err != nil || got.Environment != relay.EnvProduction {
		t.Fatalf("an old document reads as %q, %v; want production", got.Environment, err)
	}
	if _, err := s.Update(ctx, got, v); err != nil {
		t.Fatal(err)
	}
	snap, err := raw.Collection(coll).Doc(old.ID).Get(ctx)
	if err != nil || snap.Data()["environment"] != "production" {
		t.Fatalf("after a write the document's environment is %v, %v", snap.Data()["environment"], err)
	}
	sb := payment("env-sandbox")
	sb.Environment = relay.EnvSandbox
	sb.ID = relay.PaymentID(relay.EnvSandbox, "generic", "game-1", "env-sandbox")
	if _, _, _, err := s.Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	for env, want := range map[relay.Environment][]string{relay.EnvSandbox: {sb.ID}, relay.EnvProduction: {old.ID}} {
		ps, _, err := s.List(ctx, relay.Filter{State: relay.StatePending, Environment: env}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, p := range ps {
			ids = append(ids, p.ID)
		}
		if diff := cmp.Diff(want, ids); diff != "" {
			t.Errorf("pending %s payments (-want +got):\n%s", env, diff)
		}
	}
}

// The sweeper's per-game pages on the emulator: one game's overdue payments only, oldest due
// first, a page at a time, none twice, none of another game's or not yet due.
func TestOverdueOfPagesOneGame(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	base := time.Now().UTC().Truncate(time.Microsecond).Add(-time.Hour)
	var want []string
	for i, c := range []struct {
		game string
		due  time.Duration
	}{{"sword", 3 * time.Minute}, {"farm", time.Minute}, {"sword", time.Minute}, {"sword", 2 * time.Minute}, {"sword", 2 * time.Hour}} {
		p := payment(fmt.Sprintf("od-%d", i))
		p.Game = c.game
		p.Paid().NextAttemptAt = base.Add(c.due)
		if _, _, _, err := s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		if c.game == "sword" && c.due < time.Hour {
			want = append(want, p.ID)
		}
	}
	// Oldest due first: od-2 (1m), od-3 (2m), od-0 (3m).
	want = []string{want[1], want[2], want[0]}
	var got []string
	cursor, pages := "", 0
	for {
		ps, next, err := s.OverdueOf(ctx, "sword", base.Add(30*time.Minute), cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, p := range ps {
			got = append(got, p.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if diff := cmp.Diff(want, got); diff != "" || pages != 2 {
		t.Errorf("sword's overdue in %d pages (-want +got):\n%s", pages, diff)
	}
}

// A subscription's period, with an event notification (an extension) and a refund's
// reversal, survives the round trip, and an update writes the subscription's new end.
func TestSubscriptionAndEventsRoundTrip(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := payment("sub-1")
	at := p.ReceivedAt
	p.Subscription = &relay.Subscription{ID: "2000000100000001", ProductID: "monthly_card", Reason: "DID_RENEW", ExpiresAt: at.Add(30 * 24 * time.Hour), Offer: "1/intro"}
	p.Notifications = append(p.Notifications,
		relay.Notification{Key: relay.ReversalKey("r1"), Type: relay.TypeRefundReversed, State: relay.StateHeld, Attempt: 1, CreatedAt: at,
			Refund: &relay.Refund{ID: "r1", AmountMinor: 100, CumulativeMinor: 0, RefundedAt: at}},
		relay.Notification{Key: relay.KeyRevoked, Type: relay.TypePaymentRevoked, State: relay.StateHeld, Attempt: 1, CreatedAt: at,
			Event: &relay.Event{ID: "n-1", Reason: "REVOKE", At: at}})
	if _, _, _, err := s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	got, v, err := s.Get(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(p, got, cmpopts.EquateApproxTime(time.Microsecond)); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	got.Subscription.ExpiresAt = at.Add(40 * 24 * time.Hour)
	if _, err := s.Update(ctx, got, v); err != nil {
		t.Fatal(err)
	}
	again, _, err := s.Get(ctx, p.ID)
	if err != nil || !again.Subscription.ExpiresAt.Equal(at.Add(40*24*time.Hour)) {
		t.Fatalf("after the update: %+v, %v", again.Subscription, err)
	}
	// A one-time payment has none.
	one := payment("one-1")
	s.Create(ctx, one)
	if got, _, err := s.Get(ctx, one.ID); err != nil || got.Subscription != nil {
		t.Errorf("a one-time payment read back with %+v, %v", got.Subscription, err)
	}
}

// A purchase's acknowledgement to its store survives the round trip; AckWaiting finds the
// payments waiting for theirs, and an update that records it done takes it off that list.
func TestStoreAckRoundTripAndQuery(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	waiting := payment("gp-ack-1")
	at := waiting.ReceivedAt
	waiting.StoreAck = &relay.StoreAck{Product: "gems_60", Token: "tok-1", Due: at.Add(72 * time.Hour), State: relay.AckWaiting, Tries: 2, Error: "HTTP 503", LastTry: at}
	none := payment("gp-ack-2")
	for _, p := range []*relay.Payment{waiting, none} {
		if _, _, _, err := s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	got, v, err := s.Get(ctx, waiting.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(waiting, got, cmpopts.EquateApproxTime(time.Microsecond)); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	ps, _, err := s.AckWaiting(ctx, "", 10)
	if err != nil || len(ps) != 1 || ps[0].ID != waiting.ID {
		t.Fatalf("AckWaiting = %d payments, %v; want the waiting one", len(ps), err)
	}
	got.StoreAck.State, got.StoreAck.At = relay.AckDone, at.Add(time.Minute)
	if _, err := s.Update(ctx, got, v); err != nil {
		t.Fatal(err)
	}
	if ps, _, err := s.AckWaiting(ctx, "", 10); err != nil || len(ps) != 0 {
		t.Fatalf("after it was acknowledged AckWaiting = %d payments, %v", len(ps), err)
	}
	if again, _, _ := s.Get(ctx, waiting.ID); again.StoreAck.State != relay.AckDone || !again.StoreAck.At.Equal(at.Add(time.Minute)) {
		t.Fatalf("after the update: %+v", again.StoreAck)
	}
}
