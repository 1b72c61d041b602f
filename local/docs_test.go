package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// docBlock is one ```sh block of the documents, with the commands a reader would type (a
// line continued with \ joined; comment lines left out).
type docBlock struct {
	file     string
	text     string
	commands []string
	// deployed: the block's first line is "# against the deployment": its commands need the
	// project (they are named, and their flags checked, not run).
	deployed bool
}

// docBlocks reads every README.md of the repository (the front page and the focused documents
// beside the code) and returns their sh blocks in reading order: the front page first.
func docBlocks(t *testing.T) []docBlock {
	t.Helper()
	var files []string
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if d.Name() == "README.md" {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The front page, then running it locally (what the others' examples build on), then the
	// rest by path.
	first := map[string]int{"../README.md": 0, "../local/README.md": 1}
	slices.SortFunc(files, func(a, b string) int {
		ra, oka := first[a]
		rb, okb := first[b]
		switch {
		case oka && okb:
			return ra - rb
		case oka:
			return -1
		case okb:
			return 1
		}
		return strings.Compare(a, b)
	})
	fence := regexp.MustCompile("(?s)```sh\n(.*?)```")
	var blocks []docBlock
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range fence.FindAllStringSubmatch(string(b), -1) {
			blk := docBlock{file: strings.TrimPrefix(f, "../"), text: m[1], deployed: strings.HasPrefix(m[1], "# against the deployment")}
			cont := ""
			for _, line := range strings.Split(m[1], "\n") {
				line = strings.TrimSpace(line)
				if line == "" || strings.HasPrefix(line, "#") {
					continue
				}
				if c, ok := strings.CutSuffix(line, "\\"); ok {
					cont += c
					continue
				}
				blk.commands = append(blk.commands, cont+line)
				cont = ""
			}
			blocks = append(blocks, blk)
		}
	}
	return blocks
}

// How each documented command is exercised. A command that matches no rule fails the test: a
// command added to the documents must be run here, by .ci/run, or by a named test, or be
// listed as one that needs a Google Cloud project.
type docRule struct {
	re  *regexp.Regexp
	how string // run, ci, flags, cloud, manual
	why string
}

var docRules = []docRule{
	{regexp.MustCompile(`^go run \./local send\b`), "run", "sent to a runner this test starts"},
	{regexp.MustCompile(`^curl .*\$QUERY_URL`), "cloud", "the deployed Query function, called with a game server's identity token"},
	{regexp.MustCompile(`^(BODY|ID|SIG|PID|JOB)=|^curl .*localhost:80[78]0`), "run", "against the runner this test starts (its Ingest and Admin)"},
	{regexp.MustCompile(`^go run \./local( -|$)`), "flags", "the runner itself: TestRunnerStartSendStop starts it; its flags here are checked against -h"},
	{regexp.MustCompile(`^go run \./local (tasks-emulator|probe) `), "flags", "the tasks emulator's and the probe's own tests run them; flags checked against -h"},
	{regexp.MustCompile(`^go run \./local/bench\b`), "flags", "local/bench's smoke test runs the workloads; flags checked against -h"},
	{regexp.MustCompile(`^go run \./infra/deploy/zipsource `), "run", "builds the function source into a temporary directory"},
	{regexp.MustCompile(`^go test -race \./\.\.\.$`), "ci", ".ci/run runs it"},
	{regexp.MustCompile(`^GOBIN=\S+ go install github\.com/hashicorp/terraform-provider-google@`), "ci", ".ci/run installs the same version"},
	{regexp.MustCompile(`^for i in 1 2; do \(while :; do :; done\)`), "manual", "the busy-machine check: the suite three times beside two CPU burners (too long for CI)"},
	{regexp.MustCompile(`^(gcloud|terraform) |^printf .*\| gcloud secrets |^TOKEN=\$\(gcloud `), "cloud", "needs a Google Cloud project; terraform test checks the configuration offline"},
}

func ruleFor(cmd string) *docRule {
	for i := range docRules {
		if docRules[i].re.MatchString(cmd) {
			return &docRules[i]
		}
	}
	return nil
}

// Every command in the documents is run here, by .ci/run, or checked against its tool's flags;
// the ones that need a cloud project are named as such. The runnable blocks run in reading
// order against one runner (send, curl to Ingest, the Admin API's examples) and must succeed.
func TestDocsCommands(t *testing.T) {
	needGcloud(t)
	for _, tool := range []string{"curl", "jq", "openssl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed to run the documents' examples (.ci/run installs it): %v", tool, err)
		}
	}
	blocks := docBlocks(t)
	ci, err := os.ReadFile("../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	var runnable []docBlock
	counts := map[string]int{}
	for _, b := range blocks {
		var run []string
		for _, c := range b.commands {
			r := ruleFor(c)
			if b.deployed {
				if strings.HasPrefix(c, "go run ./local") {
					checkFlags(t, b.file, c)
				}
				counts["deployed"]++
				continue
			}
			if r == nil {
				t.Errorf("%s: %q is run by no test: run it in TestDocsCommands, .ci/run or a named test, and add its rule", b.file, c)
				continue
			}
			counts[r.how]++
			switch r.how {
			case "run":
				run = append(run, c)
			case "ci":
				checkInCI(t, b.file, c, string(ci))
			case "flags":
				checkFlags(t, b.file, c)
			}
		}
		if len(run) > 0 {
			// Only the runnable commands, in order: a block's cloud commands never run here.
			b.commands = run
			runnable = append(runnable, b)
		}
	}
	t.Logf("documented commands: %v", counts)
	if counts["run"] < 10 {
		t.Fatalf("only %d runnable commands found: the documents were not read", counts["run"])
	}
	// One runner for every runnable block, on ports of its own.
	p := ports(t, 8)
	r := startRunner(t, append(childEnv(), fmt.Sprintf("PORT=%d", p[0])), "-tasks-port", fmt.Sprint(p[1]), "-game-port", fmt.Sprint(p[2]), "-firestore-port", fmt.Sprint(p[3]),
		"-game-b-port", fmt.Sprint(p[4]), "-admin-port", fmt.Sprint(p[5]), "-sandbox-port", fmt.Sprint(p[6]), "-providers-port", fmt.Sprint(p[7]), "-compression", "20000")
	r.expect(t, "ready", 90*time.Second)
	defer func() {
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			r.cmd.Process.Kill()
		}
	}()
	dist := t.TempDir()
	for _, b := range runnable {
		script := strings.Join(b.commands, "\n")
		// The documents name the default ports; this runner has its own.
		script = strings.NewReplacer("localhost:8080", fmt.Sprintf("127.0.0.1:%d", p[0]), "localhost:8070", fmt.Sprintf("127.0.0.1:%d", p[5]),
			"dist/payrelay-source.zip", filepath.Join(dist, "payrelay-source.zip")).Replace(script)
		// `go run ./local` is this package's binary; `send` finds the runner by PORT and the
		// Google Play stand-in by the flag a runner on another port prints.
		prelude := fmt.Sprintf(`set -euo pipefail
go() {
  if [ "$1" = run ] && [ "$2" = ./local ] && [ "$3" = send ]; then shift 3; %q send "$@" -providers-url http://127.0.0.1:%d
  elif [ "$1" = run ] && [ "$2" = ./infra/deploy/zipsource ]; then shift 2; (cd .. && command go run ./infra/deploy/zipsource "$@")
  else echo "the docs test runs no: go $*" >&2; return 99; fi
}
`, bin, p[7])
		cmd := exec.Command("bash", "-c", prelude+script)
		cmd.Env = append(childEnv(), fmt.Sprintf("PORT=%d", p[0]))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: the block\n%s\nfailed: %v\n%s", b.file, b.text, err, out)
			continue
		}
		checkAnswers(t, b, out)
	}
	if _, err := os.Stat(filepath.Join(dist, "payrelay-source.zip")); err != nil {
		t.Errorf("the deploy's first step made no source zip: %v", err)
	}
}

// checkAnswers fails a block whose output shows a request the documents got wrong: a route
// that does not exist, a refused signature, a payment not stored.
func checkAnswers(t *testing.T, b docBlock, out []byte) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		for _, bad := range []string{`"error":"not found"`, `"error":"Unauthorized"`, `"error":"invalid request"`, "-> 4", "-> 5"} {
			if strings.Contains(l, bad) {
				t.Errorf("%s: an answer the documents do not expect (%s):\n%s\nfrom the block\n%s", b.file, bad, out, b.text)
			}
		}
		if strings.TrimSpace(l) == "null" {
			t.Errorf("%s: a value the example reads is missing (null):\n%s\nfrom the block\n%s", b.file, out, b.text)
		}
	}
	if strings.Contains(b.text, "/Ingest") && !strings.Contains(string(out), `"payment_id"`) {
		t.Errorf("%s: the curl example stored nothing:\n%s", b.file, out)
	}
}

// checkInCI: .ci/run runs the documented command (the test command verbatim; the provider at
// the documented version).
func checkInCI(t *testing.T, file, cmd, ci string) {
	t.Helper()
	if _, version, ok := strings.Cut(cmd, "terraform-provider-google@"); ok {
		if !strings.Contains(ci, version) {
			t.Errorf("%s: the provider version %s is not the one .ci/run installs", file, version)
		}
		return
	}
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(cmd) + `$`).MatchString(ci) {
		t.Errorf("%s: %q is not run by .ci/run", file, cmd)
	}
}

// checkFlags: every flag the documented command uses is one its tool lists in -h.
func checkFlags(t *testing.T, file, cmd string) {
	t.Helper()
	fields := strings.Fields(strings.NewReplacer("[", " ", "]", " ").Replace(cmd))
	var help []byte
	switch {
	case fields[2] == "./local/bench":
		out, err := exec.Command("go", "run", "./bench", "-h").CombinedOutput()
		if err != nil && !strings.Contains(string(out), "Usage") {
			t.Fatalf("go run ./local/bench -h: %v\n%s", err, out)
		}
		help = out
	case len(fields) > 3 && !strings.HasPrefix(fields[3], "-"):
		help, _ = exec.Command(bin, fields[3], "-h").CombinedOutput()
	default:
		help, _ = exec.Command(bin, "-h").CombinedOutput()
	}
	for _, f := range fields[3:] {
		name, _, _ := strings.Cut(f, "=")
		if !strings.HasPrefix(name, "-") {
			continue
		}
		if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(name) + `\b`).Match(help) {
			t.Errorf("%s: %q uses %s, which its -h does not list:\n%s", file, cmd, name, help)
		}
	}
}

// Every link between the documents (and to the code and screenshots beside them) resolves: the
// file exists and, for a #fragment into a document, that document has the heading.
func TestDocsLinks(t *testing.T) {
	t.Parallel()
	var files []string
	filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && path != ".." && (d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if err == nil && d.Name() == "README.md" {
			files = append(files, path)
		}
		return err
	})
	slug := func(h string) string {
		h = strings.ToLower(strings.TrimSpace(h))
		h = regexp.MustCompile(`[^\p{L}\p{N}\- _]`).ReplaceAllString(h, "")
		return strings.ReplaceAll(h, " ", "-")
	}
	code := regexp.MustCompile("(?s)```.*?```")
	anchors := map[string]map[string]bool{}
	texts := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		texts[f] = code.ReplaceAllString(string(b), "")
		anchors[filepath.Clean(f)] = map[string]bool{}
		for _, l := range strings.Split(texts[f], "\n") {
			if h, ok := strings.CutPrefix(strings.TrimLeft(l, "#"), " "); ok && strings.HasPrefix(l, "#") {
				anchors[filepath.Clean(f)][slug(h)] = true
			}
		}
	}
	link := regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)\)`)
	checked := 0
	for _, f := range files {
		for _, m := range link.FindAllStringSubmatch(texts[f], -1) {
			target := m[1]
			if regexp.MustCompile(`^[a-z]+://`).MatchString(target) {
				continue
			}
			checked++
			path, frag, _ := strings.Cut(target, "#")
			dest := filepath.Clean(f)
			if path != "" {
				dest = filepath.Clean(filepath.Join(filepath.Dir(f), path))
			}
			if _, err := os.Stat(dest); err != nil {
				t.Errorf("%s links to %s: no such file", f, target)
				continue
			}
			if frag != "" && strings.HasSuffix(dest, ".md") && !anchors[dest][frag] {
				t.Errorf("%s links to %s: no heading #%s there", f, target, frag)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d links checked: the documents were not read", checked)
	}
}
