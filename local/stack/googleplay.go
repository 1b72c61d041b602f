package stack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
)

// The local Google Play app: its package routes to GameA, whose sandbox server takes its test
// purchases, and payrelay acknowledges its purchases after the game server's 2xx.
const (
	GooglePlayPackage = "com.payrelay.demo"
	// GooglePlayPushAccount is the push subscription's service account the tokens name.
	GooglePlayPushAccount = "payrelay-pubsub-push@payrelay-local.iam.gserviceaccount.com"
)

// GooglePlay is Google Play as a local run sees it, served by the providers' stand-ins
// (StandIns): the Play Developer API (the providertest stand-in, under /androidpublisher/v3/),
// Google's certificate endpoint for Pub/Sub's push tokens (/certs), and the console's Google
// Play purchases: recorded in the API, then pushed to Ingest as Pub/Sub does, with a token
// signed by the stand-in signer. The signing key never leaves this process.
type GooglePlay struct {
	API      *providertest.PlayAPI
	Signer   *providertest.PubSubSigner
	base     string
	audience string
}

func newGooglePlay(base, ingestURL string) *GooglePlay {
	return &GooglePlay{API: providertest.NewPlayAPIHandler(), Signer: providertest.NewPubSubSigner(), base: base, audience: ingestURL + "?provider=googleplay"}
}

// mount serves the API and the certificates on mux.
func (g *GooglePlay) mount(mux *http.ServeMux) {
	jwks := g.Signer.JWKS()
	mux.Handle("/androidpublisher/", g.API)
	mux.HandleFunc("GET /certs", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(jwks)
	})
}

// Config is PROVIDER_CONFIG's googleplay block for the stand-in, its package routed to game.
func (g *GooglePlay) Config(game string) *provider.GooglePlayConfig {
	return &provider.GooglePlayConfig{Apps: []provider.GooglePlayApp{{PackageName: GooglePlayPackage, Game: game, Environments: []string{"production", "sandbox"}, Acknowledge: true}},
		Audience: g.audience, ServiceAccount: GooglePlayPushAccount, APIBase: g.base + "/", CertsURL: g.base + "/certs"}
}

// play records a purchase of n (or voids one) in the API and pushes its notification to
// Ingest; it returns Ingest's status and answer.
func (g *GooglePlay) play(ctx context.Context, n Notify) (int, []byte, error) {
	token := "tok-" + n.OrderID
	now := time.Now()
	var dn map[string]any
	if n.RefundID != "" {
		g.API.AddVoided(token, n.OrderID, now, 0)
		dn = providertest.PlayVoided(GooglePlayPackage, token, n.OrderID, 2, 1)
	} else {
		units, nanos, err := googleMoney(n.Amount)
		if err != nil {
			return 0, nil, &badNotify{fmt.Sprintf("amount %q: want a decimal string", n.Amount)}
		}
		g.API.SetProduct(token, n.OrderID, n.Product, "PURCHASED", 1, 1, n.Sandbox, "local-player")
		g.API.SetOrder(n.OrderID, token, n.Currency, units, nanos, now)
		dn = providertest.PlayOneTime(GooglePlayPackage, 1, token, n.Product)
	}
	dn["eventTimeMillis"] = fmt.Sprint(now.UnixMilli())
	h := http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + g.Signer.Token(g.audience, GooglePlayPushAccount, now.Add(time.Hour))}}
	return postIngest(ctx, g.audience, h, providertest.PlayPush(dn, fmt.Sprintf("local-%d", now.UnixNano())))
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
