// Command fnserver serves payrelay's registered functions with functions-framework, configured
// from the environment, the way Cloud Functions runs them: all functions at /Ingest and
// /Deliver, or only FUNCTION_TARGET at /. The fault-injection suite and the benchmark run it as
// a process of their own, to kill it or to measure it.
//
// With PAYRELAY_ADMIN_ADDR (host:port) it also serves the Admin function there at its root.
// With PAYRELAY_DEBUG_ADDR (a loopback host:port) it also serves, there and only there,
// /debug/counters (Firestore reads and writes and Cloud Tasks creates, counted at the adapters)
// and /debug/pprof/.
package main

import (
	"context"
	"encoding/json"
	"log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync/atomic"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"
	"github.com/sethvargo/go-envconfig"

	"github.com/payrelay/payrelay/functions"
	"github.com/payrelay/payrelay/infra/store"
)

// Counters are what /debug/counters reports.
type Counters struct {
	FirestoreReads  int64 `json:"firestore_reads"`
	FirestoreWrites int64 `json:"firestore_writes"`
	TasksCreated    int64 `json:"tasks_created"`
	// ConflictsRetried counts the payment writes re-applied after a version conflict.
	ConflictsRetried int64 `json:"conflicts_retried"`
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if addr := os.Getenv("PAYRELAY_DEBUG_ADDR"); addr != "" {
		serveDebug(addr)
	}
	if addr := os.Getenv("PAYRELAY_ADMIN_ADDR"); addr != "" {
		// The Admin function alone at its root, as Cloud Functions serves it.
		l, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatal(err)
		}
		go http.Serve(l, http.HandlerFunc(functions.Admin))
	}
	if err := funcframework.StartHostPort("127.0.0.1", port); err != nil {
		log.Fatal(err)
	}
}

func serveDebug(addr string) {
	if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsLoopback() {
		log.Fatalf("PAYRELAY_DEBUG_ADDR %q must be a loopback host:port", addr)
	}
	var reads, writes, creates atomic.Int64
	// The functions served are built now, counting at the adapters (the benchmark's figures).
	ctx := context.Background()
	cfg, err := functions.CheckConfig(ctx, envconfig.OsLookuper())
	if err != nil {
		log.Fatal(err)
	}
	h, _, err := functions.Build(ctx, cfg, functions.Options{
		Counter: &store.Counter{Reads: func() { reads.Add(1) }, Writes: func() { writes.Add(1) }}, OnCreate: func() { creates.Add(1) }})
	if err != nil {
		log.Fatal(err)
	}
	functions.Use(h)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/counters", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(Counters{reads.Load(), writes.Load(), creates.Load(), functions.ConflictsRetried()})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(l, mux)
}
