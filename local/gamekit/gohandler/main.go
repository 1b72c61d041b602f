// Command gohandler is payrelay's notifications received by a Go game server, with payrelay's own
// Standard Webhooks verifier. Run it:
//
//	GAME_SECRETS=whsec_... LEDGER=/var/lib/game/ledger.jsonl PORT=8080 go run ./local/gamekit/gohandler
//
// (PAYRELAY_ENVIRONMENT=sandbox on a staging server, with the game's sandbox secrets.)
//
//  1. Verify the signature: any v1 signature against any of our secrets (two while rotating),
//     constant-time, the timestamp within 5 minutes. A bad signature gets 401, changes nothing.
//     Then check data.environment is the one this server serves (PAYRELAY_ENVIRONMENT,
//     production by default): the other gets 400 and changes nothing.
//  2. Deduplicate by webhook-id: the ledger is our table, with webhook-id its unique key.
//  3. Grant on payment.succeeded, revoke on payment.refunded, each once.
//  4. Answer 2xx only after the write (synced), and quickly (payrelay waits at most 10 s).
//
// The ledger is a JSON-lines file so the example needs nothing else; in a real game it is a
// database table with a unique key on webhook_id, written in the transaction of the grant.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/payrelay/payrelay/functions/webhook"
)

type row struct {
	WebhookID   string `json:"webhook_id"`
	Kind        string `json:"kind"` // grant or revoke
	OrderID     string `json:"order_id"`
	RefundID    string `json:"refund_id,omitempty"`
	AmountMinor int64  `json:"amount_minor"`
}

type ledger struct {
	mu   sync.Mutex
	path string
	seen map[string]bool
}

func openLedger(path string) (*ledger, error) {
	l := &ledger{path: path, seen: map[string]bool{}}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return l, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r row
		if json.Unmarshal(sc.Bytes(), &r) == nil {
			l.seen[r.WebhookID] = true
		}
	}
	return l, sc.Err()
}

// add writes r unless its webhook-id is there already; it reports whether it wrote.
func (l *ledger) add(r row) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[r.WebhookID] {
		return false, nil
	}
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b, _ := json.Marshal(r)
	if _, err := f.Write(append(b, '\n')); err != nil {
		return false, err
	}
	if err := f.Sync(); err != nil {
		return false, err
	}
	l.seen[r.WebhookID] = true
	return true, nil
}

type notification struct {
	Type string `json:"type"`
	Data struct {
		Environment string `json:"environment"`
		OrderID     string `json:"order_id"`
		AmountMinor int64  `json:"amount_minor"`
		Refund      *struct {
			RefundID    string `json:"refund_id"`
			AmountMinor int64  `json:"amount_minor"`
		} `json:"refund"`
	} `json:"data"`
}

func main() {
	var secrets []webhook.Secret
	for _, s := range strings.Split(os.Getenv("GAME_SECRETS"), ",") {
		if s = strings.TrimSpace(s); s != "" {
			sec, err := webhook.ParseSecret(s)
			if err != nil {
				log.Fatalf("GAME_SECRETS: %v", err)
			}
			secrets = append(secrets, sec)
		}
	}
	verifier, err := webhook.NewVerifier(secrets...)
	if err != nil {
		log.Fatal(err)
	}
	environment := os.Getenv("PAYRELAY_ENVIRONMENT")
	if environment == "" {
		environment = "production"
	}
	if environment != "production" && environment != "sandbox" {
		log.Fatalf("PAYRELAY_ENVIRONMENT %q: want production or sandbox", environment)
	}
	path := os.Getenv("LEDGER")
	if path == "" {
		path = "ledger.jsonl"
	}
	l, err := openLedger(path)
	if err != nil {
		log.Fatal(err)
	}
	answer := func(w http.ResponseWriter, code int, reason string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if code != http.StatusNoContent {
			json.NewEncoder(w).Encode(map[string]any{"ok": code < 300, "reason": reason})
		}
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			answer(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			answer(w, http.StatusBadRequest, "unreadable body")
			return
		}
		id := r.Header.Get("webhook-id")
		if err := verifier.Verify(id, r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body, time.Now()); err != nil {
			answer(w, http.StatusUnauthorized, "bad signature")
			return
		}
		var n notification
		if err := json.Unmarshal(body, &n); err != nil || n.Data.OrderID == "" {
			answer(w, http.StatusBadRequest, "not a payrelay notification")
			return
		}
		if n.Data.Environment != environment {
			answer(w, http.StatusBadRequest, fmt.Sprintf("environment %q is not this server's (%s)", n.Data.Environment, environment))
			return
		}
		rw := row{WebhookID: id, OrderID: n.Data.OrderID}
		switch {
		case n.Type == "payment.succeeded":
			rw.Kind, rw.AmountMinor = "grant", n.Data.AmountMinor
		case n.Type == "payment.refunded" && n.Data.Refund != nil:
			rw.Kind, rw.RefundID, rw.AmountMinor = "revoke", n.Data.Refund.RefundID, n.Data.Refund.AmountMinor
		default:
			answer(w, http.StatusOK, "type not handled")
			return
		}
		wrote, err := l.add(rw)
		switch {
		case err != nil:
			answer(w, http.StatusServiceUnavailable, "ledger unavailable") // payrelay retries
		case !wrote:
			answer(w, http.StatusOK, "already processed")
		default:
			answer(w, http.StatusNoContent, "")
		}
	})
	addr := os.Getenv("HOST") + ":" + os.Getenv("PORT")
	if os.Getenv("PORT") == "" {
		addr = "127.0.0.1:8080"
	}
	log.Fatal(http.ListenAndServe(addr, nil))
}
