package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

// The demo configuration's accounts at each provider: every one routes to GameA (its sandbox
// ones to GameA's sandbox server).
const (
	DemoAlipayApp        = providertest.AlipayAppID // with a key to query and download bills
	DemoAlipaySandboxApp = "9021000100000001"       // 开放平台沙箱: its notifications are sandbox
	DemoAlipayPID        = "2088102177846881"       // the seller the app's trades and bills name
	DemoWechatMchID      = providertest.WechatMchID
	DemoWechatAppID      = providertest.WechatAppID
	DemoAppleBundle      = "com.payrelay.demo"
	DemoAppleAppID       = int64(1234567890)
	DemoStripeAccount    = "acct_1PayrelayDemo"
	demoStripeSecret     = "whsec_payrelay_local_demo_0123456789abcdef"
	demoWechatAPISerial  = "LOCAL-API-SERIAL-1"
)

// DemoProviders lists the providers `send -provider` plays.
var DemoProviders = []string{"generic", "alipay", "wechatpay", "apple", "stripe", "googleplay"}

// StandIns are every provider payrelay speaks to, as a local run sees them, with the keys each
// signs with (they never leave this process): Alipay's gateway (order and refund queries,
// bills), WeChat Pay's API (the same), an App Store certificate chain, a Stripe signing secret,
// Google Play (its API, Pub/Sub's push tokens). A console (POST /_local/notify) plays what a
// provider does when a player pays or is refunded: it records the order where the provider
// keeps it (its query API, the day's bill) and, unless told the notification is lost, sends the
// notification to Ingest in that provider's own format and signature.
type StandIns struct {
	URL       string
	ingestURL string
	play      *GooglePlay

	alipayKey, appKey *rsa.PrivateKey // Alipay's platform key; the merchant app's key
	alipay            *providertest.AlipayGateway
	wxPlatform        *rsa.PrivateKey
	wxAPIKey          *rsa.PrivateKey
	wechat            *providertest.WechatAPI
	apple             *providertest.AppleChain

	mu       sync.Mutex
	paid     map[string]Notify    // by provider/order: what was paid
	paidAt   map[string]time.Time // and when: a refund repeats the payment's facts
	refunded map[string]int64     // by provider/order: the refunded total, minor units
	aliBill  map[string][]providertest.AlipayBillLine
	wxBill   map[string][]providertest.WechatBillLine
	srv      *http.Server
}

// StartStandIns serves the stand-ins' console and Google Play at addr, sending notifications
// to ingestURL (…/Ingest); the Alipay and WeChat Pay stand-ins listen on ports of their own.
func StartStandIns(addr, ingestURL string) (*StandIns, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: the providers' stand-ins (-providers-port) %s: %v", ErrPortInUse, addr, err)
	}
	s := &StandIns{URL: "http://" + l.Addr().String(), ingestURL: ingestURL, paid: map[string]Notify{}, paidAt: map[string]time.Time{}, refunded: map[string]int64{},
		aliBill: map[string][]providertest.AlipayBillLine{}, wxBill: map[string][]providertest.WechatBillLine{}}
	keys := make([]*rsa.PrivateKey, 4)
	for i := range keys {
		if keys[i], err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			l.Close()
			return nil, err
		}
	}
	s.alipayKey, s.appKey, s.wxPlatform, s.wxAPIKey = keys[0], keys[1], keys[2], keys[3]
	s.alipay = providertest.NewAlipayGateway(DemoAlipayApp, &s.appKey.PublicKey, s.alipayKey)
	s.wechat = providertest.NewWechatAPI(DemoWechatMchID, demoWechatAPISerial, &s.wxAPIKey.PublicKey, s.wxPlatform, providertest.WechatSerial)
	s.apple = providertest.NewAppleChain(providertest.AppleChainOptions{})
	s.play = newGooglePlay(s.URL, ingestURL)
	mux := http.NewServeMux()
	s.play.mount(mux)
	mux.HandleFunc("POST /_local/notify", s.console)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(l)
	return s, nil
}

// Close stops every stand-in.
func (s *StandIns) Close() error {
	s.alipay.Close()
	s.wechat.Close()
	return s.srv.Close()
}

// Config is PROVIDER_CONFIG wiring every provider to its stand-in, each account routed to game
// (the generic apps as DefaultProviders routes them).
func (s *StandIns) Config(game string) provider.Config {
	both := []string{"production", "sandbox"}
	return provider.Config{
		Generic: DefaultProviders().Generic,
		Alipay: []provider.AlipayApp{{AppID: DemoAlipayApp, PublicKey: providertest.PublicKeyBase64(s.alipayKey), SellerID: DemoAlipayPID, Game: game,
			PrivateKey: providertest.PrivateKeyBase64(s.appKey), Gateway: s.alipay.URL},
			{AppID: DemoAlipaySandboxApp, PublicKey: providertest.PublicKeyBase64(s.alipayKey), Game: game, Environment: "sandbox"}},
		WechatPay: []provider.WechatPayMerchant{{MchID: DemoWechatMchID, APIv3Key: providertest.APIv3Key, AppIDs: map[string]string{DemoWechatAppID: game},
			PlatformKeys:  map[string]string{providertest.WechatSerial: providertest.PublicKeyPEM(s.wxPlatform)},
			APIPrivateKey: providertest.PrivateKeyPEM(s.wxAPIKey), APISerial: demoWechatAPISerial, APIBase: s.wechat.URL}},
		Apple:      []provider.AppleApp{{BundleID: DemoAppleBundle, AppAppleID: DemoAppleAppID, Game: game, Environments: both}},
		AppleRoot:  s.apple.RootPEM(),
		Stripe:     []provider.StripeAccount{{Account: DemoStripeAccount, Secrets: []string{demoStripeSecret}, Game: game, Environments: both}},
		GooglePlay: s.play.Config(game),
	}
}

// Notify is what the console plays: a payment of Amount (major units, a decimal string) in
// Currency for OrderID, or with RefundID a refund of RefundAmount of it; Sandbox a test
// payment; Unnotified records it at the provider (its query API, the day's bill) but loses
// its notification, as a firewall or an outage would.
type Notify struct {
	Provider     string `json:"provider"`
	OrderID      string `json:"order_id"`
	Amount       string `json:"amount"`
	Currency     string `json:"currency"`
	Product      string `json:"product,omitempty"`
	RefundID     string `json:"refund_id,omitempty"`
	RefundAmount string `json:"refund_amount,omitempty"`
	Sandbox      bool   `json:"sandbox,omitempty"`
	Unnotified   bool   `json:"unnotified,omitempty"`
}

// NotifyAnswer is what the console did: Ingest's status and answer (0 and "" when the
// notification was lost on purpose).
type NotifyAnswer struct {
	IngestStatus int    `json:"ingest_status"`
	IngestAnswer string `json:"ingest_answer"`
}

// badNotify is a request the console cannot play (400, with the reason).
type badNotify struct{ reason string }

func (b *badNotify) Error() string { return b.reason }

func (s *StandIns) console(w http.ResponseWriter, r *http.Request) {
	var n Notify
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&n); err != nil || n.OrderID == "" {
		http.Error(w, `want {"provider":...,"order_id":...,"amount":"6.48","currency":"CNY"}`, http.StatusBadRequest)
		return
	}
	n.Currency = strings.ToUpper(n.Currency)
	if n.Product == "" {
		n.Product = "gems_60"
	}
	code, answer, err := s.notify(r.Context(), n)
	var bad *badNotify
	switch {
	case errors.As(err, &bad):
		http.Error(w, bad.reason, http.StatusBadRequest)
		return
	case err != nil:
		http.Error(w, "send to Ingest: "+err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(NotifyAnswer{IngestStatus: code, IngestAnswer: string(answer)})
}

// minor is amount in currency's minor units, exactly.
func minor(amount, currency string) (int64, error) {
	exp, ok := relay.CurrencyExponent(currency)
	if !ok {
		return 0, &badNotify{fmt.Sprintf("currency %q is not an ISO 4217 code", currency)}
	}
	m, err := relay.ParseAmount(amount, currency)
	if err != nil || m <= 0 {
		return 0, &badNotify{fmt.Sprintf("amount %q: want a positive decimal with at most %d decimals for %s", amount, exp, currency)}
	}
	return m, nil
}

// notify plays n at its provider.
func (s *StandIns) notify(ctx context.Context, n Notify) (int, []byte, error) {
	key := n.Provider + "/" + n.OrderID
	s.mu.Lock()
	orig, known := s.paid[key]
	at, ok := s.paidAt[key]
	s.mu.Unlock()
	if !ok {
		at = time.Now()
	}
	if n.RefundID != "" {
		if !known && n.Provider != "googleplay" {
			return 0, nil, &badNotify{fmt.Sprintf("no %s payment %s was sent through this runner: send it first, then refund it", n.Provider, n.OrderID)}
		}
		if known {
			n.Amount, n.Currency, n.Sandbox = orig.Amount, orig.Currency, orig.Sandbox
		}
	}
	total, err := minor(n.Amount, n.Currency)
	if err != nil {
		return 0, nil, err
	}
	var refund, cumulative int64
	if n.RefundID != "" && n.Provider != "googleplay" && n.Provider != "apple" {
		if refund, err = minor(n.RefundAmount, n.Currency); err != nil {
			return 0, nil, err
		}
		s.mu.Lock()
		cumulative = s.refunded[key] + refund
		s.mu.Unlock()
		if cumulative > total {
			return 0, nil, &badNotify{fmt.Sprintf("refunds of %s would exceed the %s %s paid", n.OrderID, n.Amount, n.Currency)}
		}
	}
	var code int
	var answer []byte
	switch n.Provider {
	case "alipay":
		code, answer, err = s.playAlipay(ctx, n, total, refund, cumulative, at)
	case "wechatpay":
		code, answer, err = s.playWechat(ctx, n, total, refund, at)
	case "apple":
		code, answer, err = s.playApple(ctx, n, total, at)
	case "stripe":
		code, answer, err = s.playStripe(ctx, n, total, refund)
	case "googleplay":
		if n.Unnotified {
			return 0, nil, &badNotify{"Google Play: -unnotified is not played (its voided-purchases sweep is the recovery)"}
		}
		code, answer, err = s.play.play(ctx, n)
	default:
		return 0, nil, &badNotify{fmt.Sprintf("provider %q: the console plays %s", n.Provider, strings.Join(DemoProviders[1:], ", "))}
	}
	if err != nil {
		return code, answer, err
	}
	s.mu.Lock()
	if n.RefundID == "" {
		s.paid[key], s.paidAt[key] = n, at
	} else if code/100 == 2 || n.Unnotified {
		s.refunded[key] = cumulative
	}
	s.mu.Unlock()
	return code, answer, nil
}

// postIngest sends a notification as a provider does (our 502, 503 or 504 sent again).
func postIngest(ctx context.Context, url string, h http.Header, body []byte) (int, []byte, error) {
	return AsProvider(ctx, func() (int, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		req.Header = h.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return resp.StatusCode, b, nil
	})
}

var cst = time.FixedZone("CST", 8*3600)

// digits is a provider-shaped number of n digits derived from s (stable per order).
func digits(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%d", sum[i%len(sum)]%10)
	}
	return b.String()
}

func yuan(fen int64) string { return fmt.Sprintf("%d.%02d", fen/100, fen%100) }

// playAlipay: the trade (or its refund) known to the gateway and in the day's bill, then the
// asynchronous notification, form-encoded and RSA2-signed with Alipay's key.
func (s *StandIns) playAlipay(ctx context.Context, n Notify, total, refund, cumulative int64, paidAt time.Time) (int, []byte, error) {
	if n.Currency != "CNY" {
		return 0, nil, &badNotify{"Alipay settles in CNY here: -currency CNY"}
	}
	app := DemoAlipayApp
	if n.Sandbox {
		app = DemoAlipaySandboxApp
	}
	now, paid := time.Now().In(cst), paidAt.In(cst)
	stamp, day := now.Format(time.DateTime), now.Format(time.DateOnly)
	tradeNo := paid.Format("20060102") + "2200" + digits(n.OrderID, 16)
	var f map[string]string
	if n.RefundID == "" {
		f = providertest.AlipayFields(app, n.OrderID, yuan(total), "TRADE_SUCCESS")
		f["gmt_create"], f["gmt_payment"] = stamp, stamp
	} else {
		status := "TRADE_SUCCESS"
		if cumulative == total {
			status = "TRADE_CLOSED"
		}
		f = providertest.AlipayRefundFields(app, n.OrderID, yuan(total), status, yuan(cumulative), n.RefundID)
		f["gmt_create"], f["gmt_payment"] = paid.Format(time.DateTime), paid.Format(time.DateTime)
		f["gmt_refund"] = now.Format("2006-01-02 15:04:05.000")
	}
	f["notify_time"], f["trade_no"], f["notify_id"] = stamp, tradeNo, now.Format("20060102")+digits(n.OrderID+n.RefundID, 26)
	if !n.Sandbox { // the sandbox app has no gateway key here: no query, no bill
		line := providertest.AlipayBillLine{TradeNo: tradeNo, OutTradeNo: n.OrderID, Kind: "交易", Finished: stamp, Amount: yuan(total)}
		if n.RefundID == "" {
			s.alipay.SetTrade(n.OrderID, providertest.AlipayTrade{TradeNo: tradeNo, TotalAmount: yuan(total), TradeStatus: "TRADE_SUCCESS", SendPayDate: stamp})
		} else {
			s.alipay.SetRefund(n.OrderID, providertest.AlipayRefund{OutRequestNo: n.RefundID, RefundAmount: yuan(refund), RefundStatus: "REFUND_SUCCESS", GmtRefundPay: stamp})
			line.Kind, line.Amount, line.RefundNo = "退款", yuan(refund), n.RefundID
		}
		s.mu.Lock()
		s.aliBill[day] = append(s.aliBill[day], line)
		s.alipay.SetBill(day, providertest.AlipayBillZip(DemoAlipayPID, day, s.aliBill[day]))
		s.mu.Unlock()
	}
	if n.Unnotified {
		return 0, nil, nil
	}
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	return postIngest(ctx, s.ingestURL+"?provider=alipay", h, providertest.SignAlipay(s.alipayKey, f))
}

// playWechat: the transaction (or refund) known to the API and in the day's bill, then the
// notification, its resource encrypted with the APIv3 key and signed with the platform key.
func (s *StandIns) playWechat(ctx context.Context, n Notify, total, refund int64, paidAt time.Time) (int, []byte, error) {
	switch {
	case n.Sandbox:
		return 0, nil, &badNotify{"WeChat Pay has no sandbox payrelay relays (its 仿真测试 sends production-shaped notifications)"}
	case n.Currency != "CNY":
		return 0, nil, &badNotify{"WeChat Pay settles in CNY here: -currency CNY"}
	}
	now := time.Now().In(cst)
	day := now.Format(time.DateOnly)
	txID := "4200" + digits(n.OrderID, 24)
	line := providertest.WechatBillLine{At: now.Format(time.DateTime), AppID: DemoWechatAppID, MchID: DemoWechatMchID, TransactionID: txID, OutTradeNo: n.OrderID,
		State: "SUCCESS", Total: yuan(total)}
	var event string
	var resource map[string]any
	if n.RefundID == "" {
		resource = providertest.WechatTransaction(DemoWechatMchID, DemoWechatAppID, n.OrderID, total)
		resource["success_time"] = paidAt.In(cst).Format(time.RFC3339)
		event = "TRANSACTION.SUCCESS"
		resource["transaction_id"] = txID
		s.wechat.SetTransaction(resource)
	} else {
		resource = providertest.WechatRefund(DemoWechatMchID, n.OrderID, "5030"+digits(n.OrderID+n.RefundID, 24), total, refund, "SUCCESS")
		resource["success_time"], resource["out_refund_no"] = now.Format(time.RFC3339), n.RefundID
		resource["transaction_id"] = txID
		event = "REFUND.SUCCESS"
		line.State, line.RefundID, line.OutRefundNo, line.Refund, line.RefundState = "REFUND", resource["refund_id"].(string), n.RefundID, yuan(refund), "SUCCESS"
	}
	s.mu.Lock()
	s.wxBill[day] = append(s.wxBill[day], line)
	s.wechat.SetBill(day, providertest.WechatBillText(s.wxBill[day]))
	s.mu.Unlock()
	if n.Unnotified {
		return 0, nil, nil
	}
	h, body := providertest.WechatNotify(s.wxPlatform, providertest.WechatSerial, providertest.APIv3Key, event, resource, time.Now())
	return postIngest(ctx, s.ingestURL+"?provider=wechatpay", h, body)
}

// playApple: an App Store Server Notification V2, ONE_TIME_CHARGE (or REFUND, of the whole
// transaction: Apple refunds transactions), signed with the stand-in chain.
func (s *StandIns) playApple(ctx context.Context, n Notify, total int64, paidAt time.Time) (int, []byte, error) {
	if n.Unnotified {
		return 0, nil, &badNotify{"the App Store: -unnotified is not played (its notification-history sweep needs an In-App Purchase key)"}
	}
	exp, _ := relay.CurrencyExponent(n.Currency)
	milli := total
	for range 3 - exp {
		milli *= 10
	}
	env := "Production"
	if n.Sandbox {
		env = "Sandbox"
	}
	now := time.Now()
	typ := "ONE_TIME_CHARGE"
	tx := providertest.AppleTransaction(DemoAppleBundle, n.OrderID, milli, n.Currency, env, paidAt)
	tx["signedDate"] = now.UnixMilli()
	tx["productId"] = n.Product
	if n.RefundID != "" {
		typ = "REFUND"
		tx["revocationDate"], tx["revocationReason"] = now.UnixMilli(), 1
	}
	body := providertest.AppleNotification(s.apple, typ, "", DemoAppleBundle, DemoAppleAppID, env, tx, now)
	return postIngest(ctx, s.ingestURL+"?provider=apple", http.Header{"Content-Type": {"application/json"}}, body)
}

// playStripe: checkout.session.completed (or refund.updated, succeeded) signed with the
// endpoint's secret; a sandbox payment is a test-mode event.
func (s *StandIns) playStripe(ctx context.Context, n Notify, total, refund int64) (int, []byte, error) {
	if n.Unnotified {
		return 0, nil, &badNotify{"Stripe: -unnotified is not played (its undelivered-events sweep needs a restricted key)"}
	}
	now := time.Now()
	event := providertest.StripeEvent
	if n.Sandbox {
		event = providertest.StripeTestEvent
	}
	pi := "pi_" + digits(n.OrderID, 24)
	body := event("checkout.session.completed", providertest.StripeSession(n.OrderID, pi, total, n.Currency, "paid"), now)
	if n.RefundID != "" {
		body = event("refund.updated", providertest.StripeRefund(n.RefundID, pi, n.OrderID, refund, n.Currency, "succeeded", now), now)
	}
	h := providertest.SignStripe(body, now, demoStripeSecret)
	h.Set("Content-Type", "application/json")
	return postIngest(ctx, s.ingestURL+"?provider=stripe", h, body)
}

// ConsoleRefusal is the console's 400: a request it cannot play, with the reason.
type ConsoleRefusal struct{ Reason string }

func (c *ConsoleRefusal) Error() string { return c.Reason }

// SendNotify asks the stand-ins' console at url to play n: what Ingest answered.
func SendNotify(ctx context.Context, url string, n Notify) (NotifyAnswer, error) {
	b, _ := json.Marshal(n)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(url, "/")+"/_local/notify", bytes.NewReader(b))
	if err != nil {
		return NotifyAnswer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return NotifyAnswer{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusBadRequest {
		return NotifyAnswer{}, &ConsoleRefusal{strings.TrimSpace(string(body))}
	}
	if resp.StatusCode != http.StatusOK {
		return NotifyAnswer{}, fmt.Errorf("the providers' stand-ins answered %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var out NotifyAnswer
	err = json.Unmarshal(body, &out)
	return out, err
}
