package provider_test

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
)

// refundAt is gmt_refund of providertest's Alipay refunds: 21:00:00.123 Beijing time.
var refundAt = time.Date(2026, 11, 24, 13, 0, 0, 123e6, time.UTC)

func TestAlipayRefunds(t *testing.T) {
	t.Parallel()
	a := alipay(t)
	cases := []struct {
		name   string
		fields map[string]string
		want   relay.RefundFacts
	}{
		{name: "partial (TRADE_SUCCESS with refund fields)",
			fields: providertest.AlipayRefundFields(appID, "o-r", "648.00", "TRADE_SUCCESS", "100.00", "rf-1"),
			want:   relay.RefundFacts{ID: "rf-1", MerchantRefundNo: "rf-1", CumulativeMinor: 10000, RefundedAt: refundAt}},
		{name: "full (TRADE_CLOSED with refund_fee)",
			fields: providertest.AlipayRefundFields(appID, "o-r", "648.00", "TRADE_CLOSED", "648.00", "rf-2"),
			want:   relay.RefundFacts{ID: "rf-2", MerchantRefundNo: "rf-2", CumulativeMinor: 64800, RefundedAt: refundAt}},
		{name: "without out_biz_no: named by its cumulative total",
			fields: providertest.AlipayRefundFields(appID, "o-r", "648.00", "TRADE_CLOSED", "648.00", ""),
			want:   relay.RefundFacts{ID: "refund_fee-64800", CumulativeMinor: 64800, RefundedAt: refundAt}},
		{name: "GBK form",
			fields: func() map[string]string {
				f := providertest.AlipayRefundFields(appID, "o-r", "648.00", "TRADE_SUCCESS", "0.01", "退款-1")
				f["charset"] = "gbk"
				f["out_biz_no"] = "rf-gbk"
				return f
			}(),
			want: relay.RefundFacts{ID: "rf-gbk", MerchantRefundNo: "rf-gbk", CumulativeMinor: 1, RefundedAt: refundAt}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, err := a.Parse(nil, providertest.SignAlipay(alipayKey, tc.fields), now)
			if err != nil || r.Type != relay.TypePaymentRefunded || r.Refund == nil {
				t.Fatalf("Parse = %+v, %v; want a refund", r, err)
			}
			if diff := cmp.Diff(tc.want, *r.Refund, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
				t.Errorf("refund (-want +got):\n%s", diff)
			}
			// The refund carries its payment's facts: a payment payrelay never received can be
			// stored from it.
			p := r.Payment
			if p.AmountMinor != 64800 || p.Merchant != appID || p.OrderID != "o-r" || p.TransactionID == "" || p.PaidAt.IsZero() {
				t.Errorf("payment facts = %+v", p)
			}
		})
	}
	// A refund_fee of zero is no refund: the payment itself.
	zero := providertest.AlipayRefundFields(appID, "o-z", "6.00", "TRADE_SUCCESS", "0.00", "")
	if r, err := a.Parse(nil, providertest.SignAlipay(alipayKey, zero), now); err != nil || r.Type != relay.TypePaymentSucceeded {
		t.Errorf("refund_fee 0.00 = %+v, %v; want the payment", r, err)
	}
	// TRADE_FINISHED repeats earlier refunds' fields; it is the payment, not a new refund.
	fin := providertest.AlipayRefundFields(appID, "o-f", "6.00", "TRADE_FINISHED", "1.00", "rf-9")
	if r, err := a.Parse(nil, providertest.SignAlipay(alipayKey, fin), now); err != nil || r.Type != relay.TypePaymentSucceeded || r.Refund != nil {
		t.Errorf("TRADE_FINISHED with refund fields = %+v, %v; want the payment", r, err)
	}
	for name, f := range map[string]map[string]string{
		"refund_fee with 3 decimals": providertest.AlipayRefundFields(appID, "o-b", "6.00", "TRADE_SUCCESS", "1.001", "rf"),
		"refund_fee not a number":    providertest.AlipayRefundFields(appID, "o-b", "6.00", "TRADE_SUCCESS", "abc", "rf"),
		"gmt_refund malformed": func() map[string]string {
			f := providertest.AlipayRefundFields(appID, "o-b", "6.00", "TRADE_SUCCESS", "1.00", "rf")
			f["gmt_refund"] = "yesterday"
			return f
		}(),
	} {
		if _, err := a.Parse(nil, providertest.SignAlipay(alipayKey, f), now); err == nil || refusalCode(t, err) != http.StatusUnprocessableEntity {
			t.Errorf("%s: %v, want 422", name, err)
		}
	}
	// A tampered refund_fee fails the signature like any field.
	body := providertest.SignAlipay(alipayKey, providertest.AlipayRefundFields(appID, "o-t", "6.00", "TRADE_SUCCESS", "1.00", "rf"))
	form, _ := url.ParseQuery(string(body))
	form.Set("refund_fee", "6.00")
	tampered := []byte(form.Encode())
	if _, err := a.Parse(nil, tampered, now); err == nil || refusalCode(t, err) != http.StatusUnauthorized {
		t.Errorf("tampered refund_fee: %v, want 401", err)
	}
}

func TestWechatRefunds(t *testing.T) {
	t.Parallel()
	w := wechat(t)
	h, body := providertest.WechatNotify(platKey, serial, apiv3Key, "REFUND.SUCCESS", providertest.WechatRefund(mchID, "wx-1", "50300001", 64800, 1000, "SUCCESS"), now)
	r, err := w.Parse(h, body, now)
	if err != nil || r.Type != relay.TypePaymentRefunded {
		t.Fatalf("REFUND.SUCCESS = %+v, %v", r, err)
	}
	want := relay.RefundFacts{ID: "50300001", MerchantRefundNo: "out-50300001", AmountMinor: 1000, RefundedAt: time.Date(2026, 11, 24, 13, 0, 0, 0, time.UTC)}
	if diff := cmp.Diff(want, *r.Refund, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Errorf("refund (-want +got):\n%s", diff)
	}
	// The merchant has one app: the refund, which names none, takes it.
	if p := r.Payment; p.Merchant != mchID || p.OrderID != "wx-1" || p.AmountMinor != 64800 || p.AppID != wxAppID || p.Currency != "CNY" {
		t.Errorf("payment facts = %+v", p)
	}
	for _, status := range []string{"ABNORMAL", "CLOSED"} {
		h, body := providertest.WechatNotify(platKey, serial, apiv3Key, "REFUND."+status, providertest.WechatRefund(mchID, "wx-1", "503"+status, 64800, 1000, status), now)
		r, err := w.Parse(h, body, now)
		if err != nil || r.Type != "" || r.Note == nil || !r.Note.Alert || r.Note.Kind != "REFUND."+status || r.Note.RefundID != "503"+status {
			t.Errorf("REFUND.%s = %+v, %v; want an alerting note, not relayed", status, r, err)
		}
	}
	// The refund resource is encrypted and signed like a payment's: a wrong mchid is refused.
	h, body = providertest.WechatNotify(platKey, serial, apiv3Key, "REFUND.SUCCESS", providertest.WechatRefund("1900000999", "wx-1", "5031", 64800, 1000, "SUCCESS"), now)
	if _, err := w.Parse(h, body, now); err == nil || refusalCode(t, err) != http.StatusForbidden {
		t.Errorf("refund of another merchant: %v, want 403", err)
	}
	// An event WeChat Pay does not document for this URL is refused, never acknowledged.
	h, body = providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.CLOSED", providertest.WechatTransaction(mchID, wxAppID, "wx-9", 100), now)
	if _, err := w.Parse(h, body, now); err == nil || refusalCode(t, err) != http.StatusUnprocessableEntity {
		t.Errorf("unknown event: %v, want 422", err)
	}
}

// Invariant 7: every result each provider documents is either relayed or on the documented
// list of results not relayed (provider.NotRelayed); nothing is acknowledged and dropped.
func TestEveryDocumentedResultIsRelayedOrListed(t *testing.T) {
	t.Parallel()
	a, w := alipay(t), wechat(t)
	type outcome struct {
		typ  relay.Type
		note string
	}
	check := func(t *testing.T, prov string, r relay.Result, err error, want outcome) {
		t.Helper()
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		got := outcome{typ: r.Type}
		if r.Note != nil {
			got.note = r.Note.Kind
			if _, listed := provider.NotRelayed[prov][r.Note.Kind]; !listed {
				t.Errorf("note %q is not on the documented list for %s", r.Note.Kind, prov)
			}
		}
		if got != want {
			t.Errorf("= %+v, want %+v", got, want)
		}
	}
	// Alipay: trade_status values of the asynchronous notification, with and without refund_fee.
	for _, tc := range []struct {
		status, refundFee string
		want              outcome
	}{
		{"WAIT_BUYER_PAY", "", outcome{note: "WAIT_BUYER_PAY"}},
		{"TRADE_CLOSED", "", outcome{note: "TRADE_CLOSED"}},
		{"TRADE_CLOSED", "6.00", outcome{typ: relay.TypePaymentRefunded}},
		{"TRADE_SUCCESS", "", outcome{typ: relay.TypePaymentSucceeded}},
		{"TRADE_SUCCESS", "1.00", outcome{typ: relay.TypePaymentRefunded}},
		{"TRADE_FINISHED", "", outcome{typ: relay.TypePaymentSucceeded}},
	} {
		t.Run("alipay "+tc.status+" refund_fee="+tc.refundFee, func(t *testing.T) {
			f := providertest.AlipayFields(appID, "o-7", "6.00", tc.status)
			if tc.refundFee != "" {
				f = providertest.AlipayRefundFields(appID, "o-7", "6.00", tc.status, tc.refundFee, "rf-7")
			}
			r, err := a.Parse(nil, providertest.SignAlipay(alipayKey, f), now)
			check(t, "alipay", r, err, tc.want)
		})
	}
	// WeChat Pay: the payment notification's trade_state values and the refund events.
	for _, state := range []string{"SUCCESS", "REFUND", "NOTPAY", "CLOSED", "REVOKED", "USERPAYING", "PAYERROR"} {
		t.Run("wechatpay trade_state "+state, func(t *testing.T) {
			tx := providertest.WechatTransaction(mchID, wxAppID, "wx-7", 100)
			tx["trade_state"] = state
			h, body := providertest.WechatNotify(platKey, serial, apiv3Key, "TRANSACTION.SUCCESS", tx, now)
			r, err := w.Parse(h, body, now)
			want := outcome{note: "trade_state " + state}
			if state == "SUCCESS" {
				want = outcome{typ: relay.TypePaymentSucceeded}
			}
			check(t, "wechatpay", r, err, want)
		})
	}
	for _, status := range []string{"SUCCESS", "ABNORMAL", "CLOSED"} {
		t.Run("wechatpay REFUND."+status, func(t *testing.T) {
			h, body := providertest.WechatNotify(platKey, serial, apiv3Key, "REFUND."+status, providertest.WechatRefund(mchID, "wx-7", "5037", 100, 100, status), now)
			r, err := w.Parse(h, body, now)
			want := outcome{note: "REFUND." + status}
			if status == "SUCCESS" {
				want = outcome{typ: relay.TypePaymentRefunded}
			}
			check(t, "wechatpay", r, err, want)
		})
	}
	// The generic format: paid and refunded are relayed; no other status is acknowledged.
	secret := webhook.NewSecret([]byte("generic-secret-generic-secret-32"))
	g, _ := provider.NewGeneric(map[string]string{"game-1": "sword"}, secret)
	for status, want := range map[string]relay.Type{"paid": relay.TypePaymentSucceeded, "refunded": relay.TypePaymentRefunded, "pending": ""} {
		t.Run("generic "+status, func(t *testing.T) {
			body := []byte(fmt.Sprintf(`{"order_id":"g-1","transaction_id":"t-1","amount":"6.48","currency":"CNY","status":%q,"paid_at":"2026-11-24T19:59:00+08:00","app_id":"game-1","refund_id":"r-1","refund_amount":"1.00","refunded_at":"2026-11-24T21:00:00+08:00"}`, status))
			h := http.Header{}
			h.Set(webhook.HeaderID, "msg_7")
			h.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
			h.Set(webhook.HeaderSignature, secret.Sign("msg_7", now, body))
			r, err := g.Parse(h, body, now)
			if want == "" {
				if err == nil || refusalCode(t, err) != http.StatusUnprocessableEntity {
					t.Errorf("status %s: %+v, %v; want 422", status, r, err)
				}
				return
			}
			check(t, "generic", r, err, outcome{typ: want})
		})
	}
	// Every listed kind is one a provider can produce: the list holds nothing stale.
	for prov, kinds := range provider.NotRelayed {
		if !slices.Contains([]string{"alipay", "wechatpay", "apple", "stripe", "googleplay", "*"}, prov) || len(kinds) == 0 {
			t.Errorf("NotRelayed[%q] names no provider payrelay has", prov)
		}
	}
}
