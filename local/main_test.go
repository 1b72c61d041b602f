package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/payrelay/payrelay/local/emulator"
)

// The runner's start and stop, as a user runs it: the built command, its own Firestore
// emulator (Java), a payment sent with `send`, then SIGTERM; nothing may be left running, and
// running it again at once must work.

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "payrelay-local")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "payrelay-local")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build ./local: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needGcloud skips a test that starts the runner where gcloud is missing (fails it in CI).
func needGcloud(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("gcloud"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("gcloud is missing in CI: %v", err)
		}
		t.Skip("gcloud is not installed")
	}
}

func ports(t *testing.T, n int) []int {
	t.Helper()
	var ps []int
	for range n {
		p, err := emulator.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

// runner is one started command whose output is read line by line.
type runner struct {
	cmd   *exec.Cmd
	lines chan string
	all   *bytes.Buffer
	done  chan error
}

func startRunner(t *testing.T, env []string, args ...string) *runner {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &runner{cmd: cmd, lines: make(chan string, 1000), all: &bytes.Buffer{}, done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		close(r.lines)
	}()
	go func() { err := cmd.Wait(); pw.Close(); r.done <- err }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	return r
}

// expect reads lines until one contains want ("ready": until the line that is exactly ready,
// which the runner prints once it is ready, not a line that happens to hold the word).
func (r *runner) expect(t *testing.T, want string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case l, ok := <-r.lines:
			if !ok {
				t.Fatalf("output ended before %q:\n%s", want, r.all)
			}
			r.all.WriteString(l + "\n")
			if want == "ready" && l == "ready" || want != "ready" && strings.Contains(l, want) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q within %v:\n%s", want, within, r.all)
		}
	}
}

func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FIRESTORE_EMULATOR_HOST=") && !strings.HasPrefix(kv, "PORT=") {
			env = append(env, kv)
		}
	}
	return env
}

func listening(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// leftBehind waits, up to within, until no Firestore emulator process of firestorePort runs
// and none of ports listens, and returns how many still do (0: nothing left behind).
func leftBehind(t *testing.T, ports []int, firestorePort int, within time.Duration) int {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
		busy := firestoreProcesses(t, firestorePort)
		for _, port := range ports {
			if listening(port) {
				busy++
			}
		}
		if busy == 0 || time.Now().After(deadline) {
			return busy
		}
	}
}

// firestoreProcesses counts processes whose command line names the emulator's port.
func firestoreProcesses(t *testing.T, port int) int {
	t.Helper()
	out, _ := exec.Command("pgrep", "-f", fmt.Sprintf("firestore.*%d", port)).Output()
	return len(strings.Fields(string(out)))
}

func TestRunnerStartSendStop(t *testing.T) {
	needGcloud(t)
	p := ports(t, 8)
	args := []string{"-port", fmt.Sprint(p[0]), "-tasks-port", fmt.Sprint(p[1]), "-game-port", fmt.Sprint(p[2]), "-firestore-port", fmt.Sprint(p[3]),
		"-game-b-port", fmt.Sprint(p[4]), "-admin-port", fmt.Sprint(p[5]), "-sandbox-port", fmt.Sprint(p[6]), "-providers-port", fmt.Sprint(p[7]),
		"-fail-first", "1", "-compression", "20000"}
	for round := 1; round <= 2; round++ { // the second round shows it runs again at once
		r := startRunner(t, childEnv(), args...)
		r.expect(t, "ready", 90*time.Second)
		send := exec.Command(bin, "send", "-url", fmt.Sprintf("http://127.0.0.1:%d/Ingest", p[0]), "-order", fmt.Sprint("runner-", round))
		send.Env = childEnv()
		if out, err := send.CombinedOutput(); err != nil || !strings.Contains(string(out), "-> 200") {
			t.Fatalf("send: %v\n%s", err, out)
		}
		r.expect(t, "received  runner-", 10*time.Second)
		r.expect(t, "attempt 1 runner-", 10*time.Second)
		r.expect(t, "delivered runner-", 10*time.Second)
		if round == 1 {
			// Both sandbox routes: demo-a's staging server, and demo-b, which has none.
			for _, extra := range [][]string{{"-sandbox"}, {"-sandbox", "-app", "demo-game-b"}} {
				send := exec.Command(bin, append([]string{"send", "-url", fmt.Sprintf("http://127.0.0.1:%d/Ingest", p[0]), "-order", "runner-sb-" + fmt.Sprint(len(extra))}, extra...)...)
				send.Env = childEnv()
				if out, err := send.CombinedOutput(); err != nil || !strings.Contains(string(out), "-> 200") {
					t.Fatalf("send %v: %v\n%s", extra, err, out)
				}
			}
			r.expect(t, "delivered runner-sb-1 [sandbox] at attempt 1", 10*time.Second)
			if !strings.Contains(r.all.String(), "received  runner-sb-3 [sandbox]") { // its line may come first
				r.expect(t, "received  runner-sb-3 [sandbox]", 10*time.Second)
			}
			if !strings.Contains(r.all.String(), "not relayed (no sandbox endpoint)") {
				t.Errorf("the runner does not say demo-b's sandbox payment is not relayed:\n%s", r.all.String())
			}
			// Every provider, through its stand-in in its own format: a payment, then its refund,
			// each delivered, in order.
			standIns := fmt.Sprintf("http://127.0.0.1:%d", p[7])
			for _, c := range []struct{ provider, order, amount string }{{"alipay", "RUN-ALI-1", "648.00"}, {"wechatpay", "RUN-WX-1", "30.00"},
				{"apple", "2000000000000077", "4.99"}, {"stripe", "run-web-1", "20.00"}, {"googleplay", "GPA.1234-5678-9012-34567", "4.99"}} {
				for _, extra := range [][]string{{"-amount", c.amount}, {"-refund", "R1", "-refund-amount", "1.00"}} {
					send := exec.Command(bin, append([]string{"send", "-url", fmt.Sprintf("http://127.0.0.1:%d/Ingest", p[0]), "-provider", c.provider,
						"-providers-url", standIns, "-order", c.order}, extra...)...)
					send.Env = childEnv()
					if out, err := send.CombinedOutput(); err != nil || !strings.Contains(string(out), c.order+" -> 20") {
						t.Fatalf("send -provider %s %v: %v\n%s", c.provider, extra, err, out)
					}
					if len(extra) == 2 {
						r.expect(t, "delivered "+c.order+" at", 10*time.Second)
					}
				}
				r.expect(t, "delivered "+c.order+" refund", 10*time.Second)
			}
			playURL := standIns
			if out, err := exec.Command(bin, "send", "-provider", "googleplay", "-providers-url", playURL, "-refund", "R1").CombinedOutput(); err == nil || !strings.Contains(string(out), "-order") {
				t.Errorf("a Google Play refund without -order: %v %s; want it refused naming -order", err, out)
			}
		}
		if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-r.done:
			if err != nil {
				t.Fatalf("round %d: exit after SIGTERM: %v\n%s", round, err, r.all)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: still running 30s after SIGTERM", round)
		}
		for _, port := range p {
			if listening(port) {
				t.Errorf("round %d: port %d still listening after exit", round, port)
			}
		}
		if n := firestoreProcesses(t, p[3]); n != 0 {
			t.Errorf("round %d: %d Firestore emulator processes left running", round, n)
		}
	}
}

func TestRunnerRefusesBadFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-compression", "0"}, {"-fail-rate", "2"}, {"-ladder", "0s,-1m"}, {"-nope"}, {"extra"}} {
		cmd := exec.Command(bin, args...)
		cmd.Env = childEnv()
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2\n%s", args, err, out)
		}
		if len(out) == 0 {
			t.Errorf("%v: no message", args)
		}
	}
}

func TestRunnerRefusesOccupiedPort(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := l.Addr().(*net.TCPAddr).Port
	p := ports(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-port", fmt.Sprint(busy), "-tasks-port", fmt.Sprint(p[0]), "-game-port", fmt.Sprint(p[1]), "-firestore-port", fmt.Sprint(p[2]))
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), fmt.Sprint(busy)) || !strings.Contains(string(out), "in use") {
		t.Fatalf("occupied port: %v\n%s; want a non-zero exit naming port %d", err, out, busy)
	}
	if n := firestoreProcesses(t, p[2]); n != 0 {
		t.Errorf("%d Firestore emulator processes left after refusing to start", n)
	}
}

func TestSendReportsNoServer(t *testing.T) {
	t.Parallel()
	p := ports(t, 1)
	cmd := exec.Command(bin, "send", "-url", fmt.Sprintf("http://127.0.0.1:%d/Ingest", p[0]))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "go run ./local") {
		t.Errorf("send with nothing listening: %v\n%s", err, out)
	}
}

func TestRunnerWithoutGcloudSaysHowToInstall(t *testing.T) {
	t.Parallel()
	p := ports(t, 5)
	cmd := exec.Command(bin, "-port", fmt.Sprint(p[0]), "-tasks-port", fmt.Sprint(p[1]), "-game-port", fmt.Sprint(p[2]), "-firestore-port", fmt.Sprint(p[3]), "-providers-port", fmt.Sprint(p[4]))
	var env []string
	for _, kv := range childEnv() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "PATH="+t.TempDir()) // no gcloud on it
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
		t.Fatalf("exit %v, want non-zero\n%s", err, out)
	}
	for _, want := range []string{"gcloud", "install", "cloud-firestore-emulator"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("message lacks %q:\n%s", want, out)
		}
	}
	for _, port := range p[:3] {
		if listening(port) {
			t.Errorf("port %d left listening", port)
		}
	}
}

// Killing the `go run` parent (here a shell standing in for it) stops the runner as Ctrl-C
// does: nothing it started is left running or holding its ports.
func TestRunnerStopsWhenItsParentDies(t *testing.T) {
	needGcloud(t)
	p := ports(t, 8)
	args := fmt.Sprintf("-port %d -tasks-port %d -game-port %d -firestore-port %d -game-b-port %d -admin-port %d -sandbox-port %d -providers-port %d", p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7])
	// The shell waits for the runner (": " after it keeps the shell from exec'ing it).
	sh := exec.Command("sh", "-c", bin+" "+args+"; :")
	sh.Env = childEnv()
	// A file, not a pipe: an orphaned runner holding a pipe open would keep Wait waiting.
	out, err := os.CreateTemp(t.TempDir(), "runner")
	if err != nil {
		t.Fatal(err)
	}
	sh.Stdout, sh.Stderr = out, out
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	logs := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	deadline := time.Now().Add(90 * time.Second)
	for !listening(p[0]) || firestoreProcesses(t, p[3]) == 0 {
		if time.Now().After(deadline) {
			sh.Process.Kill()
			t.Fatalf("the runner did not start:\n%s", logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second) // let it finish starting
	sh.Process.Kill()
	sh.Wait()
	if leftBehind(t, p, p[3], 30*time.Second) == 0 {
		return
	}
	t.Errorf("30 s after its parent was killed, the runner or its emulator still runs (%d Firestore processes; ports %v)\n%s", firestoreProcesses(t, p[3]), p, logs())
	exec.Command("pkill", "-f", fmt.Sprintf("%s %s", bin, args)).Run()
	exec.Command("pkill", "-f", fmt.Sprintf("firestore.*%d", p[3])).Run()
}

func TestHelpListsTheFlags(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(bin, "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("-h: %v\n%s", err, out)
	}
	for _, flag := range []string{"-port", "-admin-port", "-game-b-port", "-always-fail", "-b-always-fail", "-compression", "send"} {
		if !strings.Contains(string(out), flag) {
			t.Errorf("-h does not mention %s:\n%s", flag, out)
		}
	}
}

// However the runner ends (a closed terminal's SIGHUP, a closed output pipe, a SIGKILL no
// handler sees), nothing it started is left running or holding its ports: the first two stop
// it in order, and for the third the emulator's guard ends the emulator.
func TestRunnerLeavesNothingBehind(t *testing.T) {
	needGcloud(t)
	for _, ending := range []string{"SIGHUP", "closed pipe", "SIGKILL"} {
		t.Run(ending, func(t *testing.T) {
			p := ports(t, 8)
			cmd := exec.Command(bin, "-port", fmt.Sprint(p[0]), "-tasks-port", fmt.Sprint(p[1]), "-game-port", fmt.Sprint(p[2]), "-firestore-port", fmt.Sprint(p[3]),
				"-game-b-port", fmt.Sprint(p[4]), "-admin-port", fmt.Sprint(p[5]), "-sandbox-port", fmt.Sprint(p[6]), "-providers-port", fmt.Sprint(p[7]), "-compression", "20000")
			cmd.Env = childEnv()
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stdout, cmd.Stderr = pw, pw
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			pw.Close()
			t.Cleanup(func() {
				if cmd.ProcessState == nil {
					cmd.Process.Kill()
					cmd.Wait()
				}
			})
			sc := bufio.NewScanner(pr)
			for sc.Scan() && sc.Text() != "ready" {
			}
			switch ending {
			case "SIGHUP":
				cmd.Process.Signal(syscall.SIGHUP)
			case "closed pipe":
				// `go run ./local | head` exits: the runner's next line meets a closed pipe.
				pr.Close()
				send := exec.Command(bin, "send", "-url", fmt.Sprintf("http://127.0.0.1:%d/Ingest", p[0]))
				send.Env = childEnv()
				send.Run()
			case "SIGKILL":
				cmd.Process.Kill()
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("%s: the runner still runs after 30 s", ending)
			}
			pr.Close()
			if busy := leftBehind(t, p, p[3], 30*time.Second); busy != 0 {
				t.Fatalf("%s: %d emulator processes or ports left after 30 s", ending, busy)
			}
		})
	}
}

// The runner with a configuration of one's own: the example file (its game's url moved to this
// test's demo game port) relays a payment of every provider to its game, and each is
// delivered.
func TestRunnerWithOwnConfig(t *testing.T) {
	needGcloud(t)
	p := ports(t, 8)
	example, err := os.ReadFile("config.example.env")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "mine.env")
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(string(example), "127.0.0.1:8090", fmt.Sprintf("127.0.0.1:%d", p[2]))), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRunner(t, childEnv(), "-config", file, "-port", fmt.Sprint(p[0]), "-tasks-port", fmt.Sprint(p[1]), "-game-port", fmt.Sprint(p[2]), "-firestore-port", fmt.Sprint(p[3]),
		"-game-b-port", fmt.Sprint(p[4]), "-admin-port", fmt.Sprint(p[5]), "-sandbox-port", fmt.Sprint(p[6]), "-providers-port", fmt.Sprint(p[7]), "-compression", "20000")
	r.expect(t, "configuration ", 90*time.Second)
	if !strings.Contains(r.all.String(), "games sword;") {
		t.Fatalf("the banner does not name the file's game:\n%s", r.all)
	}
	r.expect(t, "ready", 30*time.Second)
	defer func() {
		r.cmd.Process.Signal(syscall.SIGTERM)
		<-r.done
	}()
	for _, c := range []struct{ provider, order string }{{"generic", "OWN-GEN-1"}, {"alipay", "OWN-ALI-1"}, {"wechatpay", "OWN-WX-1"}, {"apple", "2000000000000099"},
		{"stripe", "own-web-1"}, {"googleplay", "GPA.9999-8888-7777-66666"}} {
		send := exec.Command(bin, "send", "-url", fmt.Sprintf("http://127.0.0.1:%d/Ingest", p[0]), "-providers-url", fmt.Sprintf("http://127.0.0.1:%d", p[7]),
			"-provider", c.provider, "-order", c.order)
		send.Env = childEnv()
		if out, err := send.CombinedOutput(); err != nil || !strings.Contains(string(out), c.order+" -> 20") {
			t.Fatalf("send -provider %s: %v\n%s", c.provider, err, out)
		}
		r.expect(t, "delivered "+c.order+" at attempt 1", 10*time.Second)
	}
}

// adminJSON calls the runner's Admin API and decodes its answer.
func adminJSON(t *testing.T, method, url, body string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s = %d %v", method, url, resp.StatusCode, out)
	}
	return out
}

// The replay demo as the documents tell it: a payment fails its 8 attempts, the runner stops,
// starts again on the same -data-dir without the failing flag, and the payment, still there,
// is replayed and delivered. The console's counters stay right across the restart, the replay
// and a cancel, and each operator action has its line.
func TestReplayDemoAcrossARestart(t *testing.T) {
	needGcloud(t)
	p := ports(t, 8)
	dir := t.TempDir()
	args := func(extra ...string) []string {
		return append([]string{"-data-dir", dir, "-port", fmt.Sprint(p[0]), "-tasks-port", fmt.Sprint(p[1]), "-game-port", fmt.Sprint(p[2]), "-firestore-port", fmt.Sprint(p[3]),
			"-game-b-port", fmt.Sprint(p[4]), "-admin-port", fmt.Sprint(p[5]), "-sandbox-port", fmt.Sprint(p[6]), "-providers-port", fmt.Sprint(p[7])}, extra...)
	}
	send := func(extra ...string) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"send", "-url", fmt.Sprintf("http://127.0.0.1:%d/Ingest", p[0])}, extra...)...)
		cmd.Env = childEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("send %v: %v\n%s", extra, err, out)
		}
	}
	stop := func(r *runner) string {
		t.Helper()
		r.cmd.Process.Signal(syscall.SIGTERM)
		r.expect(t, "payrelay local: stopped;", 30*time.Second)
		<-r.done
		lines := strings.Split(strings.TrimSpace(r.all.String()), "\n")
		return lines[len(lines)-1]
	}
	// 1. The game server fails every attempt.
	r := startRunner(t, childEnv(), args("-always-fail", "-compression", "20000")...)
	r.expect(t, "ready", 90*time.Second)
	send("-order", "REPLAY-1")
	r.expect(t, "FAILED    REPLAY-1 after 8 attempts", 30*time.Second)
	if last := stop(r); !strings.Contains(last, "received 1, delivered 0, failed 1, pending 0, attempts 8") {
		t.Fatalf("first run's summary: %s", last)
	}
	// 2. Started again on the same -data-dir, without the flag (demo-b fails once, for a
	// notification to cancel while it waits): the failed payment is still there.
	r = startRunner(t, childEnv(), args("-compression", "10", "-b-fail-first", "1")...)
	r.expect(t, "ready", 90*time.Second)
	admin := fmt.Sprintf("http://127.0.0.1:%d", p[5])
	pay := adminJSON(t, http.MethodGet, admin+"/api/payments?provider=generic&merchant=demo-game&order=REPLAY-1", "")
	pid, _ := pay["payment_id"].(string)
	if pid == "" {
		t.Fatalf("after the restart the payment is gone: %v", pay)
	}
	adminJSON(t, http.MethodPost, admin+"/api/payments/"+pid+"/notifications/paid/replay", `{"reason":"game server back up"}`)
	r.expect(t, `replayed  REPLAY-1 by `, 10*time.Second)
	r.expect(t, "delivered REPLAY-1 at attempt 1", 10*time.Second)
	send("-order", "REPLAY-2", "-app", "demo-game-b")
	r.expect(t, "attempt 1 REPLAY-2 failed", 10*time.Second)
	pay2 := adminJSON(t, http.MethodGet, admin+"/api/payments?provider=generic&merchant=demo-game-b&order=REPLAY-2", "")
	adminJSON(t, http.MethodPost, admin+"/api/payments/"+pay2["payment_id"].(string)+"/notifications/paid/cancel", `{"reason":"order voided"}`)
	r.expect(t, `cancelled REPLAY-2 by `, 10*time.Second)
	if last := stop(r); !strings.Contains(last, "received 1, delivered 1, failed 0, pending 0, attempts 2, cancelled 1") {
		t.Errorf("second run's summary: %s\n%s", last, r.all)
	}
	if strings.Contains(r.all.String(), "pending -") {
		t.Errorf("a negative count:\n%s", r.all)
	}
}

// With gcloud but no Java the runner says Java is missing, not that the emulator is.
func TestRunnerWithoutJavaSaysSo(t *testing.T) {
	t.Parallel()
	gcloud, err := exec.LookPath("gcloud")
	if err != nil {
		t.Skip("gcloud is not installed")
	}
	dir := t.TempDir()
	if err := os.Symlink(gcloud, filepath.Join(dir, "gcloud")); err != nil {
		t.Fatal(err)
	}
	p := ports(t, 5)
	cmd := exec.Command(bin, "-port", fmt.Sprint(p[0]), "-tasks-port", fmt.Sprint(p[1]), "-game-port", fmt.Sprint(p[2]), "-firestore-port", fmt.Sprint(p[3]), "-providers-port", fmt.Sprint(p[4]))
	var env []string
	for _, kv := range childEnv() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "PATH="+dir) // gcloud, and no java
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "Java is not on PATH") || !strings.Contains(string(out), "openjdk") {
		t.Errorf("without Java: %s", out)
	}
}
