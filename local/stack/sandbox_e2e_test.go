package stack_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
)

// sandboxCase is one provider's way of sending an order's payment in an environment, to the
// game with a sandbox endpoint (GameA) or the one without (GameB), and the id it is stored by.
type sandboxCase struct {
	provider string
	send     func(t *testing.T, env relay.Environment, gameA bool, order string)
	id       func(env relay.Environment, gameA bool, order string) string
}

func sandboxCases() []sandboxCase {
	pick := func(gameA bool, a, b string) string {
		if gameA {
			return a
		}
		return b
	}
	expect := func(t *testing.T, name string, code int, body string, want int) {
		t.Helper()
		if code != want {
			t.Fatalf("%s answered %d %s, want %d", name, code, body, want)
		}
	}
	return []sandboxCase{{
		provider: "generic",
		send: func(t *testing.T, env relay.Environment, gameA bool, order string) {
			app := pick(gameA, stack.SampleApp, stack.SampleAppB)
			body, secret := stack.SampleBodyFor(app, order, "6.48", "CNY"), stack.IngestSecret
			if env == relay.EnvSandbox {
				// The sandbox-bound secret: what it signs is sandbox, the body need not say so.
				body, secret = stack.SampleBodyFor(app, order, "6.48", "CNY"), stack.IngestSandboxSecret
				if gameA {
					body, secret = stack.SandboxBody(app, order, "6.48", "CNY"), stack.IngestSecret // the body's field
				}
			}
			code, b, err := stack.SendAsProvider(context.Background(), st.FunctionsURL+"/Ingest", secret, body)
			if err != nil {
				t.Fatal(err)
			}
			expect(t, "generic", code, string(b), http.StatusOK)
		},
		id: func(env relay.Environment, gameA bool, order string) string {
			return relay.PaymentID(env, "generic", pick(gameA, stack.SampleApp, stack.SampleAppB), order)
		},
	}, {
		provider: "apple",
		send: func(t *testing.T, env relay.Environment, gameA bool, order string) {
			bundle, appID := appleBundle, appleAppID
			if !gameA {
				bundle, appID = appleBundleB, appleAppID+1
			}
			appleEnv := map[relay.Environment]string{relay.EnvProduction: "Production", relay.EnvSandbox: "Sandbox"}[env]
			at := time.Now()
			tx := providertest.AppleTransaction(bundle, order, 990, "USD", appleEnv, at)
			code, b := post(t, "apple", "application/json", nil, providertest.AppleNotification(appleChain, "ONE_TIME_CHARGE", "", bundle, appID, appleEnv, tx, at))
			expect(t, "apple", code, b, http.StatusOK)
		},
		id: func(env relay.Environment, gameA bool, order string) string {
			return relay.PaymentID(env, "apple", pick(gameA, appleBundle, appleBundleB), order)
		},
	}, {
		provider: "stripe",
		send: func(t *testing.T, env relay.Environment, gameA bool, order string) {
			secret := pick(gameA, stripeSecretA, stripeSecret)
			event := providertest.StripeEvent
			if env == relay.EnvSandbox {
				event = providertest.StripeTestEvent
			}
			ev := event("checkout.session.completed", providertest.StripeSession(order, "pi_"+order, 500, "USD", "paid"), time.Now())
			code, b := post(t, "stripe", "application/json", providertest.SignStripe(ev, time.Now(), secret), ev)
			expect(t, "stripe", code, b, http.StatusOK)
		},
		id: func(env relay.Environment, gameA bool, order string) string {
			return relay.PaymentID(env, "stripe", pick(gameA, stripeAcctA, stripeAcct), order)
		},
	}, {
		provider: "alipay",
		send: func(t *testing.T, env relay.Environment, gameA bool, order string) {
			app := pick(gameA, aliApp, aliApp2)
			if env == relay.EnvSandbox {
				app = pick(gameA, aliSandboxApp, aliSandboxAppB)
			}
			code, b := post(t, "alipay", "application/x-www-form-urlencoded", nil, providertest.SignAlipay(aliKey, providertest.AlipayFields(app, order, "6.48", "TRADE_SUCCESS")))
			expect(t, "alipay", code, b, http.StatusOK)
		},
		id: func(env relay.Environment, gameA bool, order string) string {
			if env == relay.EnvSandbox {
				return relay.PaymentID(env, "alipay", pick(gameA, aliSandboxApp, aliSandboxAppB), order)
			}
			return relay.PaymentID(env, "alipay", pick(gameA, aliApp, aliApp2), order)
		},
	}}
}

// TestSandboxNeverReachesProduction, for every provider with a sandbox, through the real
// functions on the emulators: a sandbox payment is delivered to the game's sandbox server
// only, signed with the sandbox secret (the sandbox server verifies with it alone), and the
// production server receives nothing of it; a production payment with the same order id is
// another payment, delivered to production only; a sandbox payment of a game without a sandbox
// endpoint is acknowledged, stored and shown as not relayed, and no server receives it.
// (WeChat Pay APIv3 has no sandbox: its notifications are production, tested in
// functions/provider.)
func TestSandboxNeverReachesProduction(t *testing.T) {
	t.Parallel()
	need(t)
	for _, c := range sandboxCases() {
		t.Run(c.provider, func(t *testing.T) {
			order := fmt.Sprintf("sbx-%s-%d", c.provider, time.Now().UnixNano())
			c.send(t, relay.EnvSandbox, true, order)
			c.send(t, relay.EnvProduction, true, order)
			c.send(t, relay.EnvSandbox, false, order)
			sandboxA, prodA, sandboxB := c.id(relay.EnvSandbox, true, order), c.id(relay.EnvProduction, true, order), c.id(relay.EnvSandbox, false, order)
			if sandboxA == prodA {
				t.Fatal("the sandbox and the production payment of one order share an id")
			}
			for id, env := range map[string]relay.Environment{sandboxA: relay.EnvSandbox, prodA: relay.EnvProduction} {
				p := waitTerminal(t, id, 20*time.Second)
				if p.Paid().State != relay.StateDelivered || p.Environment != env {
					t.Fatalf("%s payment ended %s (environment %q)", env, p.Paid().State, p.Environment)
				}
			}
			// Sandbox to the staging server alone, verified there with the sandbox secret.
			if hits := st.GameSandbox.Hits(sandboxA); len(hits) != 1 || hits[0].Payload.Data.Environment != "sandbox" || hits[0].Status != http.StatusOK {
				t.Errorf("the sandbox server's hits of the sandbox payment: %+v", hits)
			}
			if n := st.Game.ReceivedFor(sandboxA); n != 0 {
				t.Errorf("the production server received %d requests for the sandbox payment", n)
			}
			// Production to production alone.
			if hits := st.Game.Hits(prodA); len(hits) != 1 || hits[0].Payload.Data.Environment != "production" {
				t.Errorf("the production server's hits of the production payment: %+v", hits)
			}
			if n := st.GameSandbox.ReceivedFor(prodA); n != 0 {
				t.Errorf("the sandbox server received %d requests for the production payment", n)
			}
			// GameB has no sandbox endpoint: stored, not relayed, posted nowhere.
			p := waitTerminal(t, sandboxB, 5*time.Second)
			if n := p.Paid(); n.State != relay.StateNotRelayed || n.Reason != relay.NoSandboxEndpoint || len(n.Attempts) != 0 {
				t.Fatalf("the sandbox payment of %s: %s %q, %d attempts", stack.GameB, n.State, n.Reason, len(n.Attempts))
			}
			for name, srv := range map[string]interface{ ReceivedFor(string) int }{"production B": st.GameB, "production A": st.Game, "sandbox A": st.GameSandbox} {
				if n := srv.ReceivedFor(sandboxB); n != 0 {
					t.Errorf("server %s received %d requests for a sandbox payment of a game with no sandbox endpoint", name, n)
				}
			}
			// An operator sees it: listed as not relayed among the sandbox notifications.
			q := url.Values{"state": {"not_relayed"}, "environment": {"sandbox"}, "game": {stack.GameB}, "provider": {c.provider}, "limit": {"500"}}
			code, out := adminDo(t, http.MethodGet, "/api/notifications?"+q.Encode(), "", "", nil)
			found := false
			for _, it := range out["notifications"].([]any) {
				m := it.(map[string]any)
				if m["payment_id"] == sandboxB {
					found = m["environment"] == "sandbox" && m["reason"] == relay.NoSandboxEndpoint
				}
			}
			if code != http.StatusOK || !found {
				t.Errorf("the Admin API's sandbox not_relayed list (%d) lacks %s: %v", code, sandboxB, out)
			}
		})
	}
}
