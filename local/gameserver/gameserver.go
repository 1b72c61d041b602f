// Package gameserver is a demo game server for local runs and tests: it verifies payrelay's
// signature, refuses a notification of the environment it does not serve, records every
// notification, and answers as told (fail the first N attempts, fail a fraction, answer
// slowly, always fail), globally or per payment.
package gameserver

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/infra/gamehttp"
)

// Behaviour is how the server answers.
type Behaviour struct {
	FailFirst  int           // fail each payment's first N attempts
	FailRate   float64       // fail this fraction of the other attempts
	Delay      time.Duration // answer this late
	AlwaysFail bool
}

// Answer is one decision: a status and how long to wait before giving it, or a Custom
// behaviour that answers by itself (resets, slow bodies, redirects, huge bodies).
type Answer struct {
	Status int
	Delay  time.Duration
	Custom func(w http.ResponseWriter, r *http.Request)
}

// Hit is one notification received.
type Hit struct {
	At      time.Time
	Payload gamehttp.Payload
	Attempt int // from the header
	Status  int // what the server answered
}

// Server is a running demo game server.
type Server struct {
	URL      string
	verifier *webhook.Verifier
	srv      *http.Server
	// environment is the one this server serves ("production" unless SetEnvironment).
	environment string
	// received counts every request, whatever became of it (a bad signature, the wrong
	// environment): what a test checks to say a server received nothing; byID counts them by
	// webhook-id, which a request carries before anything is verified.
	received atomic.Int64
	byID     map[string]int

	mu        sync.Mutex
	behaviour Behaviour
	decide    func(p gamehttp.Payload, attempt int) (Answer, bool)
	hits      map[string][]Hit
	notify    func(Hit)
	signals   chan struct{}
}

// Start serves on addr ("127.0.0.1:0" picks a port), verifying with secret.
func Start(addr string, secret webhook.Secret, b Behaviour) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	v, err := webhook.NewVerifier(secret)
	if err != nil {
		l.Close()
		return nil, err
	}
	s := &Server{URL: "http://" + l.Addr().String() + "/payments", verifier: v, behaviour: b, hits: map[string][]Hit{}, signals: make(chan struct{}, 1),
		environment: "production", byID: map[string]int{}}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(l)
	return s, nil
}

// SetEnvironment makes the server serve env ("production" or "sandbox") and refuse the other
// with 400, as a game server must (local/gamekit's handlers do). Call it before the first
// request.
func (s *Server) SetEnvironment(env string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.environment = env
}

// Received is how many requests reached the server, whatever it answered.
func (s *Server) Received() int64 { return s.received.Load() }

// ReceivedFor is how many requests for a payment's notifications reached the server, whatever
// it answered: those it refused (another secret's signature, the other environment) included.
func (s *Server) ReceivedFor(paymentID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, k := range s.byID {
		if strings.HasPrefix(id, paymentID+"-") {
			n += k
		}
	}
	return n
}

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }

// SetDecide installs a per-payment decision; when it returns false the Behaviour applies.
func (s *Server) SetDecide(f func(p gamehttp.Payload, attempt int) (Answer, bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.decide = f
}

// OnHit calls f after each notification is answered.
func (s *Server) OnHit(f func(Hit)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notify = f
}

// Hits returns the notifications received for one payment (all its types), in order.
func (s *Server) Hits(paymentID string) []Hit {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Hit(nil), s.hits[paymentID]...)
}

// Changed is signalled after each hit (capacity one; for waiting in tests).
func (s *Server) Changed() <-chan struct{} { return s.signals }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.received.Add(1)
	s.mu.Lock()
	s.byID[r.Header.Get(webhook.HeaderID)]++
	s.mu.Unlock()
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "unreadable body", http.StatusBadRequest)
		return
	}
	if err := s.verifier.Verify(r.Header.Get(webhook.HeaderID), r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body, time.Now()); err != nil {
		http.Error(w, "bad signature: "+err.Error(), http.StatusUnauthorized)
		return
	}
	var p gamehttp.Payload
	if err := json.Unmarshal(body, &p); err != nil {
		http.Error(w, "bad payload", http.StatusBadRequest)
		return
	}
	attempt, _ := strconv.Atoi(r.Header.Get(gamehttp.HeaderAttempt))
	s.mu.Lock()
	if p.Data.Environment != s.environment {
		env := s.environment
		s.mu.Unlock()
		http.Error(w, "this server serves "+env+" notifications, not "+p.Data.Environment, http.StatusBadRequest)
		return
	}
	ans, ok := Answer{}, false
	if s.decide != nil {
		ans, ok = s.decide(p, attempt)
	}
	if !ok {
		ans = s.behaviour.answer(attempt)
	}
	hit := Hit{At: time.Now(), Payload: p, Attempt: attempt, Status: ans.Status}
	s.hits[p.Data.PaymentID] = append(s.hits[p.Data.PaymentID], hit)
	notify := s.notify
	s.mu.Unlock()
	if ans.Custom != nil {
		ans.Custom(w, r)
		if notify != nil {
			notify(hit)
		}
		select {
		case s.signals <- struct{}{}:
		default:
		}
		return
	}
	if ans.Delay > 0 {
		select {
		case <-time.After(ans.Delay):
		case <-r.Context().Done():
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ans.Status)
	if ans.Status < 300 {
		io.WriteString(w, `{"ok":true}`)
	} else {
		io.WriteString(w, `{"ok":false,"error":"demo game server told to fail"}`)
	}
	if notify != nil {
		notify(hit)
	}
	select {
	case s.signals <- struct{}{}:
	default:
	}
}

func (b Behaviour) answer(attempt int) Answer {
	fail := b.AlwaysFail || attempt <= b.FailFirst || (b.FailRate > 0 && rand.Float64() < b.FailRate)
	if fail {
		return Answer{Status: http.StatusServiceUnavailable, Delay: b.Delay}
	}
	return Answer{Status: http.StatusOK, Delay: b.Delay}
}
