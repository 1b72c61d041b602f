package chaos_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/infra/gamehttp"
	"github.com/payrelay/payrelay/local/gameserver"
)

// 5. Game server chaos: random 500s, timeouts, resets, slow bodies, redirects to another host,
// huge bodies; each ends where the ladder says, with the right error classes, and a slow game
// server never stalls deliveries to a healthy one.
func TestS5GameServerChaos(t *testing.T) {
	need(t)
	rng := rand.New(rand.NewPCG(5, 5))
	var rngMu sync.Mutex
	h.hook("c500", func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		rngMu.Lock()
		defer rngMu.Unlock()
		if rng.IntN(2) == 0 {
			return gameserver.Answer{Status: http.StatusInternalServerError}, true
		}
		return gameserver.Answer{Status: http.StatusOK}, true
	})
	once := func(first func(w http.ResponseWriter, r *http.Request)) func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		return func(_ gamehttp.Payload, attempt int) (gameserver.Answer, bool) {
			if attempt == 1 {
				return gameserver.Answer{Custom: first}, true
			}
			return gameserver.Answer{Status: http.StatusOK}, true
		}
	}
	h.hook("ctimeout", once(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(deliverTimeout + 500*time.Millisecond):
		case <-r.Context().Done():
		}
	}))
	h.hook("creset", once(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}))
	h.hook("credirect", once(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.2:9/elsewhere", http.StatusTemporaryRedirect)
	}))
	h.hook("cslowbody", func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		return gameserver.Answer{Custom: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			for range 20 {
				io.WriteString(w, "x")
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		}}, true
	})
	h.hook("chuge", func(gamehttp.Payload, int) (gameserver.Answer, bool) {
		return gameserver.Answer{Custom: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			w.Write(bytes.Repeat([]byte("y"), 5<<20))
		}}, true
	})
	slow := orders("ctimeout", 4)
	for _, o := range slow {
		ingest(t, "5-game-chaos", o)
	}
	sentHealthy := time.Now()
	healthy := orders("healthy", 10)
	for _, o := range healthy {
		ingest(t, "5-game-chaos", o)
	}
	var rest []string
	for _, p := range []string{"c500", "creset", "credirect", "cslowbody", "chuge"} {
		for _, o := range orders(p, 4) {
			ingest(t, "5-game-chaos", o)
			rest = append(rest, o)
		}
	}
	all := append(append(append([]string{}, slow...), healthy...), rest...)
	waitTerminal(t, all, 60*time.Second)
	ps := check(t, "5-game-chaos", all, false)
	// Healthy payments were not queued behind the slow ones: each reached the game server
	// before the first slow attempt had even timed out.
	for _, o := range healthy {
		if hits := h.game.Hits(id(o)); len(hits) != 1 || hits[0].At.Sub(sentHealthy) >= deliverTimeout {
			t.Errorf("%s: %d posts, first %v after sending; want one, before the slow ones' %v timeout", o, len(hits), hits[0].At.Sub(sentHealthy), deliverTimeout)
		}
	}
	wantClass := map[string]relay.ErrorClass{"ctimeout": relay.ErrorTimeout, "creset": relay.ErrorHTTP, "credirect": relay.ErrorRedirect}
	for o, p := range ps {
		prefix, _, _ := strings.Cut(o, "-")
		switch prefix {
		case "ctimeout", "creset", "credirect":
			if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 2 || p.Paid().Attempts[0].ErrorClass != wantClass[prefix] {
				t.Errorf("%s: %s, history %+v; want attempt 1 failed with class %s, then delivered", o, p.Paid().State, p.Paid().Attempts, wantClass[prefix])
			}
		case "cslowbody", "chuge":
			if p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != 1 || len(p.Paid().Attempts[0].Response) > gamehttp.SnippetBytes {
				t.Errorf("%s: %s, history %+v; want delivered at once, at most 1 KiB of response kept", o, p.Paid().State, p.Paid().Attempts)
			}
		case "c500":
			// Delivered at the first 2xx the game server gave, or failed after all 8.
			hits := h.game.Hits(p.ID)
			firstOK := 0
			for _, hit := range hits {
				if hit.Status < 300 {
					firstOK = hit.Attempt
					break
				}
			}
			if (firstOK == 0 && p.Paid().State != relay.StateFailed) || (firstOK != 0 && (p.Paid().State != relay.StateDelivered || len(p.Paid().Attempts) != firstOK)) {
				t.Errorf("%s: %s after %d attempts; the game server first said 2xx at attempt %d", o, p.Paid().State, len(p.Paid().Attempts), firstOK)
			}
			for _, r := range p.Paid().Attempts[:len(p.Paid().Attempts)-1] {
				if r.StatusCode != 500 || r.ErrorClass != relay.ErrorHTTP {
					t.Errorf("%s: failed attempt recorded as %+v", o, r)
				}
			}
		}
	}
}
