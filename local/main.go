// Command local runs payrelay on one machine: the real Ingest and Deliver functions served by
// functions-framework, against the Firestore emulator and payrelay's Cloud Tasks emulator,
// with a demo game server, and the ladder compressed so a whole day plays in under two
// minutes.
//
//	go run ./local                    run the relay (Ctrl-C stops everything it started)
//	go run ./local send               send a correctly signed sample payment to it
//	go run ./local tasks-emulator     run only the Cloud Tasks emulator, for other projects
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/local/gameserver"
	"github.com/payrelay/payrelay/local/stack"
	"github.com/payrelay/payrelay/local/tasksemu"
	"github.com/payrelay/payrelay/schedule"
)

// env is what the runner reads from the environment, once.
type env struct {
	Port          int    `env:"PORT, default=8080"`
	FirestoreHost string `env:"FIRESTORE_EMULATOR_HOST"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var e env
	if err := envconfig.Process(context.Background(), &e); err != nil {
		fmt.Fprintln(stderr, "payrelay local:", err)
		return 2
	}
	if len(args) > 0 {
		switch args[0] {
		case "send":
			return send(args[1:], e, stdout, stderr)
		case "tasks-emulator":
			return tasksEmulator(args[1:], stdout, stderr)
		case "probe":
			return probe(args[1:], stdout, stderr)
		case "guard":
			return guard(args[1:], stderr)
		case "help", "-h", "--help":
			usage(stderr)
			fmt.Fprintln(stderr, "\nflags of go run ./local:")
			relayLocally([]string{"-h"}, e, stdout, stderr)
			return 0
		}
	}
	return relayLocally(args, e, stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  go run ./local [flags]                  run payrelay locally (see flags with -h)
  go run ./local send [flags]             send a signed sample payment to it
  go run ./local tasks-emulator [flags]   run only the Cloud Tasks emulator
  go run ./local probe -url URL -secret whsec_...   check a game server's handling of payrelay's notifications
`)
}

func relayLocally(args []string, e env, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("payrelay local", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Int("port", e.Port, "port of the functions (Ingest at /Ingest, Deliver at /Deliver); PORT sets the default")
	tasksPort := fs.Int("tasks-port", 8123, "port of the Cloud Tasks emulator (gRPC)")
	gamePort := fs.Int("game-port", 8090, "port of the demo game server")
	firestorePort := fs.Int("firestore-port", 8085, "port of the Firestore emulator, when this command starts it")
	compression := fs.Int("compression", 1000, "divide the ladder's waits by this (1 = real time)")
	ladderSpec := fs.String("ladder", schedule.DefaultSpec, "the notification ladder, comma-separated waits")
	adminPort := fs.Int("admin-port", 8070, "port of the Admin function (the operators' API)")
	gameBPort := fs.Int("game-b-port", 8091, "port of game "+stack.GameB+"'s demo game server")
	sandboxPort := fs.Int("sandbox-port", 8092, "port of game "+stack.GameA+"'s sandbox (staging) game server")
	playPort := fs.Int("providers-port", 8093, "port of the providers' stand-ins (the console `send -provider` plays payments through, Google Play's API)")
	failFirst := fs.Int("fail-first", 0, "game "+stack.GameA+"'s demo game server: fail each notification's first N attempts")
	failRate := fs.Float64("fail-rate", 0, "game "+stack.GameA+"'s demo game server: fail this fraction (0 to 1) of the other attempts")
	slow := fs.Duration("slow", 0, "game "+stack.GameA+"'s demo game server: answer this late (Deliver gives up after 10s)")
	alwaysFail := fs.Bool("always-fail", false, "game "+stack.GameA+"'s demo game server: fail every attempt (notifications end failed)")
	bFailFirst := fs.Int("b-fail-first", 0, "the same for game "+stack.GameB)
	bFailRate := fs.Float64("b-fail-rate", 0, "the same for game "+stack.GameB)
	bSlow := fs.Duration("b-slow", 0, "the same for game "+stack.GameB)
	bAlwaysFail := fs.Bool("b-always-fail", false, "the same for game "+stack.GameB)
	configFile := fs.String("config", "", "run with your own configuration: a file of production's variables, NAME=value per line (example: local/config.example.env)")
	dataDir := fs.String("data-dir", "", "keep the Cloud Tasks emulator's tasks and the Firestore emulator's documents in this directory across restarts (saved when the runner stops)")
	verbose := fs.Bool("v", false, "also print the functions' JSON logs")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "payrelay local: unexpected argument %q\n", fs.Arg(0))
		usage(stderr)
		return 2
	}
	ladder, err := schedule.Parse(*ladderSpec)
	var bad []string
	if err != nil {
		bad = append(bad, "-ladder: "+err.Error())
	}
	if *compression < 1 {
		bad = append(bad, "-compression must be 1 or more")
	}
	if *failFirst < 0 || *failRate < 0 || *failRate > 1 || *slow < 0 || *bFailFirst < 0 || *bFailRate < 0 || *bFailRate > 1 || *bSlow < 0 {
		bad = append(bad, "-fail-first and -slow must not be negative; -fail-rate must be between 0 and 1 (and the same for -b-...)")
	}
	for _, p := range []*int{port, tasksPort, gamePort, gameBPort, sandboxPort, adminPort, firestorePort, playPort} {
		if *p < 1 || *p > 65535 {
			bad = append(bad, fmt.Sprintf("port %d is not between 1 and 65535", *p))
		}
	}
	if len(bad) > 0 {
		fmt.Fprintln(stderr, "payrelay local: "+strings.Join(bad, "; "))
		return 2
	}
	var own map[string]string
	if *configFile != "" {
		if own, err = stack.ReadConfigFile(*configFile); err != nil {
			fmt.Fprintln(stderr, "payrelay local:", err)
			return 2
		}
	}
	compressed, _ := ladder.Compress(*compression)
	logLevel := "error"
	if *verbose {
		logLevel = "info"
	}
	prog := newProgress(stdout)
	// Ctrl-C, a kill, a closed terminal (SIGHUP) and a closed output pipe (`| head`: SIGPIPE,
	// which would otherwise end the process at its next write) all stop the runner in order.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	defer stop()
	ctx = orphanContext(ctx)
	fmt.Fprintln(stdout, "payrelay local: starting (the Firestore emulator takes about 10 s)...")
	s, err := stack.Start(ctx, stack.Options{
		Port: *port, TasksPort: *tasksPort, GamePort: *gamePort, GameBPort: *gameBPort, GameSandboxPort: *sandboxPort, AdminPort: *adminPort, FirestorePort: *firestorePort,
		ProvidersPort: *playPort,
		FirestoreHost: e.FirestoreHost, Compression: *compression, Ladder: *ladderSpec,
		Game:         gameserver.Behaviour{FailFirst: *failFirst, FailRate: *failRate, Delay: *slow, AlwaysFail: *alwaysFail},
		GameB:        gameserver.Behaviour{FailFirst: *bFailFirst, FailRate: *bFailRate, Delay: *bSlow, AlwaysFail: *bAlwaysFail},
		TasksDataDir: *dataDir, FirestoreDataDir: firestoreDir(*dataDir, e.FirestoreHost), Observer: prog, LogLevel: logLevel, ConfigEnv: own,
	})
	if err != nil {
		fmt.Fprintln(stderr, "payrelay local:", err) // an ErrNotInstalled already says how to install
		if errors.Is(err, stack.ErrPortInUse) {
			fmt.Fprintln(stderr, "payrelay local: an emulator left by an earlier run may hold it; find it with `ss -ltnp | grep PORT` (or `pgrep -af cloud-firestore-emulator`) and end it with kill")
		}
		return 1
	}
	if pgid := s.FirestorePid(); pgid != 0 {
		if err := guardEmulator(pgid); err != nil {
			fmt.Fprintln(stderr, "payrelay local: could not start the emulator's guard (it is stopped on a normal exit all the same):", err)
		}
	}
	if own != nil {
		providers := "yours (PROVIDER_CONFIG)"
		if own["PROVIDER_CONFIG"] == "" {
			providers = "the stand-ins', routed to your first game"
		}
		fmt.Fprintf(stdout, "  configuration         %s: games %s; providers %s (the demo game servers below still listen: a GAMES url may name one)\n", *configFile, strings.Join(s.Games(), ", "), providers)
	}
	firestoreNote := "started by this command; stopped on exit"
	if e.FirestoreHost != "" {
		firestoreNote = "reused from FIRESTORE_EMULATOR_HOST"
	}
	fmt.Fprintf(stdout, `
  Ingest                http://%[1]s/Ingest
  Deliver               http://%[1]s/Deliver
  dashboard             %[26]s/   (the operators' Admin: its API under /api/; the sweeper runs every second)
  Firestore emulator    %[2]s (%[3]s)
  Cloud Tasks emulator  %[4]s  queues %[5]s, %[6]s
  game %[16]s           %[7]s  app %[18]s  (fail first %[8]d, fail rate %[9]g, delay %[10]s, always fail %[11]v)
                        its secret %[32]s: go run ./local probe -url %[7]s -secret %[32]s
  game %[17]s           %[19]s  app %[20]s  (fail first %[21]d, fail rate %[22]g, delay %[23]s, always fail %[24]v)
  sandbox of %[16]s     %[27]s  its own queue %[28]s and secret; %[17]s has none
  providers' stand-ins  %[29]s  every provider's demo account -> %[16]s (Google Play package %[30]s)
  ladder                %[12]s, compressed %[13]dx: %[14]d attempts within %[15]s

Send a payment from another terminal:  go run ./local send%[25]s   (game %[16]s)
                                       go run ./local send%[25]s -app %[20]s   (game %[17]s)
A test payment, to %[16]s's sandbox server:   go run ./local send%[25]s -sandbox
  (of %[17]s: stored and shown, not relayed)  go run ./local send%[25]s -sandbox -app %[20]s
A provider's own notification, through its stand-in:  go run ./local send%[25]s -provider alipay%[31]s
  (alipay, wechatpay, apple, stripe, googleplay; -refund R1 -order <its order> for a refund)
Stop with Ctrl-C.
ready
`, strings.TrimPrefix(s.FunctionsURL, "http://"), s.FirestoreHost, firestoreNote, s.TasksAddr, stack.QueueName(stack.GameA, 0), stack.QueueName(stack.GameB, 0), s.Game.URL,
		*failFirst, *failRate, *slow, *alwaysFail, ladder, *compression, compressed.Attempts(),
		compressed.Elapsed(compressed.Attempts()), stack.GameA, stack.GameB, stack.SampleApp, s.GameB.URL, stack.SampleAppB,
		*bFailFirst, *bFailRate, *bSlow, *bAlwaysFail, sendURLFlag(s.FunctionsURL, e.Port), s.AdminURL(), s.GameSandbox.URL, stack.SandboxQueueName(stack.GameA, 0),
		s.StandIns.URL, stack.GooglePlayPackage, standInsFlag(s.StandIns.URL), stack.GameSecret.Encode())
	<-ctx.Done()
	stop()
	// From here a closed output pipe must not end the process before it has stopped everything:
	// writes to it fail quietly instead.
	signal.Ignore(syscall.SIGPIPE)
	fmt.Fprintln(stdout, "\npayrelay local: stopping: refusing new requests, letting deliveries in flight finish (at most 10 s)...")
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Stop(stopCtx); err != nil {
		fmt.Fprintln(stderr, "payrelay local: stopped with:", err)
	}
	fmt.Fprintf(stdout, "payrelay local: stopped; %s\n", prog.summary())
	return 0
}

// progress prints what happens to notifications (payments and refunds), with counts kept from
// each notification's last known state, so they stay right across repeats, replays, cancels and
// a restart (a notification of an earlier run counts once it is seen again).
type progress struct {
	mu     sync.Mutex
	w      io.Writer
	start  time.Time
	states map[string]relay.State // by notification id: its last known state
	// received, attempts and duplicates are this run's.
	received, attempts, duplicates int
}

func newProgress(w io.Writer) *progress {
	return &progress{w: w, start: time.Now(), states: map[string]relay.State{}}
}

func (p *progress) set(pay *relay.Payment, n *relay.Notification, st relay.State) {
	p.states[relay.NotificationID(pay.ID, n.Key)] = st
}

func (p *progress) summary() string {
	count := map[relay.State]int{}
	for _, st := range p.states {
		count[st]++
	}
	pending := count[relay.StatePending] + count[relay.StateDelivering] + count[relay.StateHeld]
	s := fmt.Sprintf("received %d, delivered %d, failed %d, pending %d, attempts %d",
		p.received, count[relay.StateDelivered], count[relay.StateFailed], pending, p.attempts)
	for _, st := range []relay.State{relay.StateCancelled, relay.StateNotRelayed, relay.StateOrphaned} {
		if count[st] > 0 {
			s += fmt.Sprintf(", %s %d", strings.ReplaceAll(string(st), "_", " "), count[st])
		}
	}
	return s
}

func (p *progress) line(format string, args ...any) {
	fmt.Fprintf(p.w, "%s  %-60s [%s]\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...), p.summary())
}

// what names a notification for a person: the order, the refund if it is one, and
// [sandbox] for a test payment.
func what(pay *relay.Payment, n *relay.Notification) string {
	s := pay.OrderID
	if n.Refund != nil {
		s = fmt.Sprintf("%s refund %s", pay.OrderID, n.Refund.ID)
	}
	if pay.Environment == relay.EnvSandbox {
		s += " [sandbox]"
	}
	return s
}

// Operated implements relay.Observer: a line per operator action.
func (p *progress) Operated(pay *relay.Payment, n *relay.Notification, a relay.Action) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.set(pay, n, n.State)
	by := a.By
	if a.Job != "" {
		by = "bulk replay " + a.Job + " (" + a.By + ")"
	}
	switch a.Kind {
	case relay.ActionReplay:
		forced := ""
		if a.Forced {
			forced = ", forced"
		}
		p.line("replayed  %s by %s: %q (generation %d%s; now %s)", what(pay, n), by, a.Reason, a.Generation, forced, n.State)
	default:
		p.line("cancelled %s by %s: %q", what(pay, n), by, a.Reason)
	}
}

// Received implements relay.Observer.
func (p *progress) Received(pay *relay.Payment, n *relay.Notification, duplicate bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if duplicate {
		p.duplicates++
		p.line("repeat    %s: already stored, no second chain", what(pay, n))
		return
	}
	p.received++
	p.set(pay, n, n.State)
	held := ""
	switch n.State {
	case relay.StateHeld:
		held = ", held behind the payment's earlier notification"
	case relay.StateNotRelayed:
		held = ": " + n.Reason
	}
	if n.Refund != nil {
		p.line("received  %s: %s back of %s %s (payment %.8s)%s", what(pay, n), relay.FormatAmount(n.Refund.AmountMinor, pay.Currency),
			relay.FormatAmount(pay.AmountMinor, pay.Currency), pay.Currency, pay.ID, held)
		return
	}
	p.line("received  %s %s %s (payment %.8s)%s", what(pay, n), relay.FormatAmount(pay.AmountMinor, pay.Currency), pay.Currency, pay.ID, held)
}

// Attempted implements relay.Observer.
func (p *progress) Attempted(pay *relay.Payment, n *relay.Notification, rec relay.AttemptRecord, o relay.Outcome) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.attempts++
	result := strconv.Itoa(rec.StatusCode)
	if rec.ErrorClass != relay.ErrorNone {
		result += " " + string(rec.ErrorClass)
	}
	p.set(pay, n, n.State)
	switch o {
	case relay.OutcomeDelivered:
		p.line("delivered %s at attempt %d (%s, %s)", what(pay, n), rec.Number, result, rec.Duration.Round(100*time.Microsecond))
	case relay.OutcomeRetryScheduled:
		p.line("attempt %d %s failed (%s); attempt %d at %s (in %s)", rec.Number, what(pay, n), result, n.Attempt,
			n.NextAttemptAt.Local().Format("15:04:05.000"), time.Until(n.NextAttemptAt).Round(time.Millisecond))
	case relay.OutcomeFailed:
		p.line("FAILED    %s after %d attempts (%s); kept for replay", what(pay, n), rec.Number, result)
	}
}

// orphanContext is cancelled when this process's parent dies (`go run` killed, its terminal
// closed): the runner then stops as on Ctrl-C, so the Java emulator it started never outlives
// it holding its ports.
func orphanContext(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	parent := os.Getppid()
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if os.Getppid() != parent {
					cancel()
					return
				}
			}
		}
	}()
	return ctx
}

// firestoreDir is where -data-dir keeps the Firestore emulator's documents: none when the
// runner reuses an emulator it did not start.
func firestoreDir(dataDir, reused string) string {
	if dataDir == "" || reused != "" {
		return ""
	}
	return filepath.Join(dataDir, "firestore")
}

// sendURLFlag is what `send` needs to reach a runner on another port than its default.
func sendURLFlag(functionsURL string, defaultPort int) string {
	if functionsURL == fmt.Sprintf("http://127.0.0.1:%d", defaultPort) {
		return ""
	}
	return " -url " + functionsURL + "/Ingest"
}

// standInsFlag is what `send -provider` needs to reach the stand-ins on another port than
// their default.
func standInsFlag(url string) string {
	if url == defaultStandIns {
		return ""
	}
	return " -providers-url " + url
}

const defaultStandIns = "http://127.0.0.1:8093"

func send(args []string, e env, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("payrelay local send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", fmt.Sprintf("http://127.0.0.1:%d/Ingest", e.Port), "the Ingest URL")
	order := fs.String("order", fmt.Sprintf("demo-%d", time.Now().UnixNano()), "the provider's order id")
	amount := fs.String("amount", "6.48", "amount in major units, as a decimal string")
	currency := fs.String("currency", "CNY", "ISO 4217 currency code")
	secret := fs.String("secret", stack.IngestSecret.Encode(), "the Standard Webhooks secret to sign with (whsec_...)")
	n := fs.Int("n", 1, "send this many payments (order ids get a -1, -2, ... suffix when more than 1)")
	app := fs.String("app", stack.SampleApp, "the app id, which routes the payment to its game ("+stack.SampleApp+": "+stack.GameA+", "+stack.SampleAppB+": "+stack.GameB+")")
	refund := fs.String("refund", "", "send a refund of -order with this refund id instead of a payment (apple and googleplay refund the whole purchase; Google names the refund)")
	refundAmount := fs.String("refund-amount", "1.00", "with -refund: this refund's amount in major units")
	sandbox := fs.Bool("sandbox", false, "send a sandbox (test) payment: it goes to "+stack.GameA+"'s sandbox server, never to a production one")
	prov := fs.String("provider", "generic", "whose notification to send: "+strings.Join(stack.DemoProviders, ", ")+" (all but generic are played through the runner's stand-in of that provider, in its own format and signature)")
	standIns := fs.String("providers-url", defaultStandIns, "with -provider other than generic: the runner's providers' stand-ins")
	product := fs.String("product", "gems_60", "with -provider apple or googleplay: the product id")
	unnotified := fs.Bool("unnotified", false, "with -provider alipay or wechatpay: the provider records the payment (its order query, the day's bill) but its notification is lost: find it with the dashboard's order query (补单) or a reconciliation")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !slices.Contains(stack.DemoProviders, *prov) {
		fmt.Fprintf(stderr, "payrelay local send: -provider %q: want one of %s\n", *prov, strings.Join(stack.DemoProviders, ", "))
		return 2
	}
	if *prov != "generic" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		return sendProvider(stdout, stderr, *standIns, stack.Notify{Provider: *prov, OrderID: *order, Amount: *amount, Currency: *currency, Product: *product,
			RefundID: *refund, RefundAmount: *refundAmount, Sandbox: *sandbox, Unnotified: *unnotified}, set, *n)
	}
	if *unnotified {
		fmt.Fprintln(stderr, "payrelay local send: -unnotified is for a provider's stand-in (-provider alipay or wechatpay)")
		return 2
	}
	sec, err := webhook.ParseSecret(*secret)
	if err != nil || *n < 1 {
		fmt.Fprintln(stderr, "payrelay local send: -secret must be whsec_<base64> and -n at least 1")
		return 2
	}
	for i := 1; i <= *n; i++ {
		id := *order
		if *n > 1 {
			id = fmt.Sprintf("%s-%d", *order, i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		body := stack.SampleBodyFor(*app, id, *amount, *currency)
		if *refund != "" {
			body = stack.SampleRefundBodyFor(*app, id, *amount, *currency, *refund, *refundAmount)
		}
		if *sandbox {
			body = stack.InSandbox(body)
		}
		code, body, err := stack.Send(ctx, *url, sec, body)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "payrelay local send: %v (is `go run ./local` running?)\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s -> %d %s\n", id, code, strings.TrimSpace(string(body)))
		if code != 200 {
			return 1
		}
	}
	return 0
}

// sendProvider plays n payments (or a refund of -order's) through the runner's stand-in of a
// provider, which sends each notification to Ingest in that provider's own format.
func sendProvider(stdout, stderr io.Writer, standIns string, req stack.Notify, set map[string]bool, n int) int {
	if req.RefundID != "" && !set["order"] {
		fmt.Fprintf(stderr, "payrelay local send: -provider %s -refund refunds a payment sent before: name it with -order\n", req.Provider)
		return 2
	}
	ns := time.Now().UnixNano()
	if !set["order"] {
		switch req.Provider {
		case "googleplay": // Google's shape: GPA.dddd-dddd-dddd-ddddd
			req.OrderID = fmt.Sprintf("GPA.%04d-%04d-%04d-%05d", ns/1e13%1e4, ns/1e9%1e4, ns/1e5%1e4, ns%1e5)
		case "apple": // a transactionId
			req.OrderID = fmt.Sprintf("2000%012d", ns%1e12)
		}
	}
	if !set["amount"] && !set["currency"] && (req.Provider == "apple" || req.Provider == "googleplay" || req.Provider == "stripe") {
		req.Amount, req.Currency = "4.99", "USD" // stores and cards: not CNY
	}
	for i := 1; i <= n; i++ {
		r := req
		if n > 1 {
			r.OrderID = fmt.Sprintf("%s-%d", req.OrderID, i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		ans, err := stack.SendNotify(ctx, standIns, r)
		cancel()
		var refused *stack.ConsoleRefusal
		switch {
		case errors.As(err, &refused):
			fmt.Fprintf(stderr, "payrelay local send: %v\n", err)
			return 2
		case err != nil:
			fmt.Fprintf(stderr, "payrelay local send: %v (is `go run ./local` running?)\n", err)
			return 1
		}
		if r.Unnotified {
			fmt.Fprintf(stdout, "%s -> recorded at %s, its notification lost: find it with the order query (补单) or a reconciliation\n", r.OrderID, r.Provider)
			continue
		}
		fmt.Fprintf(stdout, "%s -> %d %s\n", r.OrderID, ans.IngestStatus, strings.TrimSpace(ans.IngestAnswer))
		if ans.IngestStatus/100 != 2 {
			return 1
		}
	}
	return 0
}

func tasksEmulator(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("payrelay local tasks-emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8123", "host:port to serve the Cloud Tasks v2 gRPC API on (plain gRPC)")
	dataDir := fs.String("data-dir", "", "keep queues, tasks and dedupe tombstones here across restarts (in memory when empty)")
	dedupe := fs.Duration("dedupe-window", tasksemu.DefaultDedupeWindow, "how long a deleted or executed task's name stays taken")
	var queues multi
	fs.Var(&queues, "queue", "a queue to create at start, projects/P/locations/L/queues/Q (repeatable; default "+tasksemu.DefaultQueue+")")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	srv, err := tasksemu.New(tasksemu.Options{DataDir: *dataDir, DedupeWindow: *dedupe, Queues: queues})
	if err != nil {
		fmt.Fprintln(stderr, "tasks-emulator:", err)
		return 2
	}
	got, err := srv.Start(*addr)
	if err != nil {
		srv.Close(context.Background())
		fmt.Fprintln(stderr, "tasks-emulator:", err)
		return 1
	}
	fmt.Fprintf(stdout, "Cloud Tasks emulator on %s (export CLOUD_TASKS_EMULATOR_HOST=%s); Ctrl-C stops it\n", got, got)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	closeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Close(closeCtx); err != nil {
		fmt.Fprintln(stderr, "tasks-emulator: close:", err)
		return 1
	}
	return 0
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
