package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

// The local Google Play app: its package routes to GameA, whose sandbox server takes its test
// purchases, and payrelay acknowledges its purchases after the game server's 2xx.
const (
	GooglePlayPackage = "com.payrelay.demo"
	// GooglePlayPushAccount is the push subscription's service account the tokens name.
	GooglePlayPushAccount = "payrelay-pubsub-push@payrelay-local.iam.gserviceaccount.com"
)

// GooglePlay is Google Play as a local run sees it, on one port: the Play Developer API (the
// providertest stand-in, under /androidpublisher/v3/), Google's certificate endpoint for
// Pub/Sub's push tokens (/certs), and a console (/_local/purchase) that plays a player's
// purchase or its refund: it records it in the API, then pushes its real-time developer
// notification to Ingest as Pub/Sub does, with a token signed by the stand-in signer. The
// signing key never leaves this process.
type GooglePlay struct {
	API      *providertest.PlayAPI
	Signer   *providertest.PubSubSigner
	URL      string
	audience string
	srv      *http.Server
}

// StartGooglePlay serves the stand-in at addr, pushing to ingestURL (…/Ingest).
func StartGooglePlay(addr, ingestURL string) (*GooglePlay, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: Google Play stand-in (-googleplay-port) %s: %v", ErrPortInUse, addr, err)
	}
	g := &GooglePlay{API: providertest.NewPlayAPIHandler(), Signer: providertest.NewPubSubSigner(), URL: "http://" + l.Addr().String(),
		audience: ingestURL + "?provider=googleplay"}
	jwks := g.Signer.JWKS()
	mux := http.NewServeMux()
	mux.Handle("/androidpublisher/", g.API)
	mux.HandleFunc("GET /certs", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(jwks)
	})
	mux.HandleFunc("POST /_local/purchase", g.purchase)
	g.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go g.srv.Serve(l)
	return g, nil
}

// Config is PROVIDER_CONFIG's googleplay block for the stand-in.
func (g *GooglePlay) Config() *provider.GooglePlayConfig {
	return &provider.GooglePlayConfig{Apps: []provider.GooglePlayApp{{PackageName: GooglePlayPackage, Game: GameA, Environments: []string{"production", "sandbox"}, Acknowledge: true}},
		Audience: g.audience, ServiceAccount: GooglePlayPushAccount, APIBase: g.URL + "/", CertsURL: g.URL + "/certs"}
}

// Close stops serving.
func (g *GooglePlay) Close() error { return g.srv.Close() }

// GooglePlayPurchase is what the console plays: a one-time purchase of Product for Amount
// (major units) in Currency, a license tester's (Test), or with Refund the voiding of the
// purchase of OrderID.
type GooglePlayPurchase struct {
	OrderID  string `json:"order_id"`
	Product  string `json:"product"`
	Amount   string `json:"amount"`
	Currency string `json:"currency"`
	Test     bool   `json:"test"`
	Refund   bool   `json:"refund"`
}

// purchase records a purchase (or voids one) and pushes its notification to Ingest; it answers
// with Ingest's status and body.
func (g *GooglePlay) purchase(w http.ResponseWriter, r *http.Request) {
	var p GooglePlayPurchase
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&p); err != nil || p.OrderID == "" {
		http.Error(w, `want {"order_id":...,"product":...,"amount":"4.99","currency":"USD"}`, http.StatusBadRequest)
		return
	}
	token := "tok-" + p.OrderID
	now := time.Now()
	var n map[string]any
	if p.Refund {
		g.API.AddVoided(token, p.OrderID, now, 0)
		n = providertest.PlayVoided(GooglePlayPackage, token, p.OrderID, 2, 1)
	} else {
		units, nanos, err := googleMoney(p.Amount)
		if _, known := relay.CurrencyExponent(strings.ToUpper(p.Currency)); err != nil || !known {
			http.Error(w, fmt.Sprintf("amount %q or currency %q: want a decimal string and an ISO 4217 code", p.Amount, p.Currency), http.StatusBadRequest)
			return
		}
		g.API.SetProduct(token, p.OrderID, p.Product, "PURCHASED", 1, 1, p.Test, "local-player")
		g.API.SetOrder(p.OrderID, token, strings.ToUpper(p.Currency), units, nanos, now)
		n = providertest.PlayOneTime(GooglePlayPackage, 1, token, p.Product)
	}
	n["eventTimeMillis"] = fmt.Sprint(now.UnixMilli())
	body := providertest.PlayPush(n, fmt.Sprintf("local-%d", now.UnixNano()))
	code, answer, err := AsProvider(r.Context(), func() (int, []byte, error) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, g.audience, bytes.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+g.Signer.Token(g.audience, GooglePlayPushAccount, time.Now().Add(time.Hour)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return resp.StatusCode, b, nil
	})
	if err != nil {
		http.Error(w, "push to Ingest: "+err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"ingest_status": code, "ingest_answer": string(answer), "purchase_token": token})
}

// googleMoney is a decimal string as Google's Money: whole units and nanos.
func googleMoney(amount string) (units, nanos int64, err error) {
	whole, frac, _ := strings.Cut(amount, ".")
	if whole == "" || len(frac) > 9 {
		return 0, 0, errors.New("bad amount")
	}
	if _, err := fmt.Sscan(whole, &units); err != nil || units < 0 {
		return 0, 0, errors.New("bad amount")
	}
	if frac != "" {
		frac += strings.Repeat("0", 9-len(frac))
		if _, err := fmt.Sscan(frac, &nanos); err != nil || nanos < 0 {
			return 0, 0, errors.New("bad amount")
		}
	}
	return units, nanos, nil
}

// SendGooglePlay asks the stand-in at standIn to play p: what Ingest answered its push.
func SendGooglePlay(ctx context.Context, standIn string, p GooglePlayPurchase) (ingestStatus int, answer string, err error) {
	b, _ := json.Marshal(p)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(standIn, "/")+"/_local/purchase", bytes.NewReader(b))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return 0, "", fmt.Errorf("the Google Play stand-in answered %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var out struct {
		Status int    `json:"ingest_status"`
		Answer string `json:"ingest_answer"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return 0, "", err
	}
	return out.Status, out.Answer, nil
}
