package stack_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/gameserver"
	"github.com/payrelay/payrelay/local/stack"
)

// refund sends a generic-format refund of the 6.48 CNY sample payment of order.
func refund(t *testing.T, order, refundID, amount string) {
	t.Helper()
	code, body, err := stack.SendAsProvider(context.Background(), st.FunctionsURL+"/Ingest", stack.IngestSecret,
		stack.SampleRefundBody(order, "6.48", "CNY", refundID, amount))
	if err != nil || code != http.StatusOK {
		t.Fatalf("refund %s of %s = %d %s %v", refundID, order, code, body, err)
	}
}

// sequence names each POST the game server got for a payment: type, refund id, attempt.
func sequence(hits []gameserver.Hit) []string {
	var s []string
	for _, h := range hits {
		name := "paid"
		if r := h.Payload.Data.Refund; r != nil {
			name = "refund " + r.RefundID
		}
		s = append(s, fmt.Sprintf("%s#%d(%d)", name, h.Attempt, h.Status))
	}
	return s
}

func TestTwoMerchantsSameOrderNumberBothDelivered(t *testing.T) {
	t.Parallel()
	need(t)
	// Two Alipay apps (two games) each with an order numbered "20261124-0001".
	for _, app := range []string{aliApp, aliApp2} {
		code, body := post(t, "alipay", "application/x-www-form-urlencoded", nil,
			providertest.SignAlipay(aliKey, providertest.AlipayFields(app, "20261124-0001", "6.00", "TRADE_SUCCESS")))
		if code != 200 || body != "success" {
			t.Fatalf("app %s answered %d %q", app, code, body)
		}
	}
	for app, server := range map[string]*gameserver.Server{aliApp: st.Game, aliApp2: st.GameB} { // routed to games A and B
		id := relay.PaymentID(relay.EnvProduction, "alipay", app, "20261124-0001")
		p := waitTerminal(t, id, 20*time.Second)
		hits := server.Hits(id)
		if p.Paid().State != relay.StateDelivered || len(hits) != 1 || hits[0].Payload.Data.AppID != app {
			t.Errorf("app %s: %s after %d posts", app, p.Paid().State, len(hits))
		}
	}
}

func TestPartialRefundsThenFullEachDeliveredOnceInOrder(t *testing.T) {
	t.Parallel()
	need(t)
	id := ingest(t, "ok-refunds")
	refund(t, "ok-refunds", "r1", "1.00")
	refund(t, "ok-refunds", "r2", "2.00")
	refund(t, "ok-refunds", "r3", "3.48")
	p := waitNotification(t, id, relay.RefundKey("r3"), 20*time.Second)
	time.Sleep(200 * time.Millisecond)
	want := "[paid#1(200) refund r1#1(200) refund r2#1(200) refund r3#1(200)]"
	hits := st.Game.Hits(id)
	if got := fmt.Sprint(sequence(hits)); got != want {
		t.Fatalf("game server got %s, want %s", got, want)
	}
	var totals []string
	for _, h := range hits[1:] {
		r := h.Payload.Data.Refund
		totals = append(totals, fmt.Sprintf("%d/%d/%v", r.AmountMinor, r.RefundedTotalMinor, r.FullyRefunded))
		if h.Payload.Type != "payment.refunded" || !h.Payload.Data.PaymentNotified || h.Payload.Data.AmountMinor != 648 {
			t.Errorf("refund payload %+v", h.Payload)
		}
	}
	if got := fmt.Sprint(totals); got != "[100/100/false 200/300/false 348/648/true]" {
		t.Errorf("refund amounts/totals/full = %s", got)
	}
	if p.RefundedMinor != 648 {
		t.Errorf("stored refunded total %d, want 648", p.RefundedMinor)
	}
}

func TestRefundWhilePaymentFailingGoesRightAfterIt(t *testing.T) {
	t.Parallel()
	need(t)
	id := ingest(t, "fail3-refund")
	refund(t, "fail3-refund", "r1", "6.48")
	waitNotification(t, id, relay.RefundKey("r1"), 20*time.Second)
	hits := st.Game.Hits(id)
	want := "[paid#1(503) paid#2(503) paid#3(503) paid#4(200) refund r1#1(200)]"
	if got := fmt.Sprint(sequence(hits)); got != want {
		t.Fatalf("game server got %s, want %s", got, want)
	}
	// Released at once: the refund follows the delivered payment within a small margin, not a
	// ladder step.
	if gap := hits[4].At.Sub(hits[3].At); gap > 2*time.Second {
		t.Errorf("refund came %v after the payment was delivered", gap)
	}
}

func TestRefundOfAFailedPaymentIsHeld(t *testing.T) {
	t.Parallel()
	need(t)
	id := ingest(t, "fail-refund")
	waitTerminal(t, id, 40*time.Second)
	refund(t, "fail-refund", "r1", "1.00")
	time.Sleep(time.Second)
	p, _, err := payments.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if n := p.RefundByID("r1"); p.Paid().State != relay.StateFailed || n == nil || n.State != relay.StateHeld || len(n.Attempts) != 0 {
		t.Fatalf("payment %s, refund %+v; want failed and held", p.Paid().State, n)
	}
	for _, h := range st.Game.Hits(id) {
		if h.Payload.Data.Refund != nil {
			t.Fatalf("the game server got a refund of a payment it never acknowledged: %+v", h.Payload)
		}
	}
}

func TestRepeatedRefundNotificationIsOneRefund(t *testing.T) {
	t.Parallel()
	need(t)
	id := ingest(t, "ok-refund-repeat")
	for range 3 {
		refund(t, "ok-refund-repeat", "r1", "1.00")
	}
	waitNotification(t, id, relay.RefundKey("r1"), 20*time.Second)
	refund(t, "ok-refund-repeat", "r1", "1.00") // after delivery, too
	time.Sleep(300 * time.Millisecond)
	if got := fmt.Sprint(sequence(st.Game.Hits(id))); got != "[paid#1(200) refund r1#1(200)]" {
		t.Errorf("game server got %s, want the payment and one refund", got)
	}
	p, _, _ := payments.Get(context.Background(), id)
	if len(p.Notifications) != 2 || p.RefundedMinor != 100 {
		t.Errorf("stored %d notifications, refunded %d", len(p.Notifications), p.RefundedMinor)
	}
}

func TestProviderRefundsEndToEnd(t *testing.T) {
	t.Parallel()
	need(t)
	// Alipay: the payment, a partial refund (TRADE_SUCCESS, refund_fee 100.00 cumulative), then
	// the full refund (TRADE_CLOSED, refund_fee 648.00), in GBK.
	for _, f := range []map[string]string{
		providertest.AlipayFields(aliApp, "ali-e2e-r", "648.00", "TRADE_SUCCESS"),
		providertest.AlipayRefundFields(aliApp, "ali-e2e-r", "648.00", "TRADE_SUCCESS", "100.00", "rf-1"),
		providertest.AlipayRefundFields(aliApp, "ali-e2e-r", "648.00", "TRADE_CLOSED", "648.00", "rf-2"),
	} {
		f["charset"] = "gbk"
		if code, body := post(t, "alipay", "application/x-www-form-urlencoded", nil, providertest.SignAlipay(aliKey, f)); code != 200 || body != "success" {
			t.Fatalf("Alipay answered %d %q", code, body)
		}
	}
	// WeChat Pay: the payment, then REFUND.SUCCESS.
	for _, n := range []struct {
		event    string
		resource any
	}{
		{"TRANSACTION.SUCCESS", providertest.WechatTransaction(wxMch, wxApp, "wx-e2e-r", 600)},
		{"REFUND.SUCCESS", providertest.WechatRefund(wxMch, "wx-e2e-r", "503000001", 600, 250, "SUCCESS")},
	} {
		h, body := providertest.WechatNotify(platKey, wxSer, wxAPIv3, n.event, n.resource, time.Now())
		if code, b := post(t, "wechatpay", "application/json", h, body); code != http.StatusNoContent {
			t.Fatalf("WeChat Pay %s answered %d %q", n.event, code, b)
		}
	}
	aliID, wxID := relay.PaymentID(relay.EnvProduction, "alipay", aliApp, "ali-e2e-r"), relay.PaymentID(relay.EnvProduction, "wechatpay", wxMch, "wx-e2e-r")
	waitNotification(t, aliID, relay.RefundKey("rf-2"), 20*time.Second)
	waitNotification(t, wxID, relay.RefundKey("503000001"), 20*time.Second)
	if got := fmt.Sprint(sequence(st.Game.Hits(aliID))); got != "[paid#1(200) refund rf-1#1(200) refund rf-2#1(200)]" {
		t.Errorf("Alipay: game server got %s", got)
	}
	if hits := st.Game.Hits(aliID); len(hits) == 3 {
		if r := hits[2].Payload.Data.Refund; r.AmountMinor != 54800 || r.RefundedTotalMinor != 64800 || !r.FullyRefunded {
			t.Errorf("Alipay full refund = %+v, want 548.00 bringing the total to 648.00", r)
		}
	}
	if got := fmt.Sprint(sequence(st.Game.Hits(wxID))); got != "[paid#1(200) refund 503000001#1(200)]" {
		t.Errorf("WeChat Pay: game server got %s", got)
	}
}
