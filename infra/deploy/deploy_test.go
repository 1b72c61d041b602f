package deploy

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/payrelay/payrelay/functions"
	"github.com/payrelay/payrelay/infra/config"
	"github.com/payrelay/payrelay/infra/store"
)

const root = "../.."

func archive(t *testing.T) []byte {
	t.Helper()
	files, err := SourceFiles(root)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteZip(&buf, root, files); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestArchiveHoldsOnlyWhatTheBuildNeeds(t *testing.T) {
	t.Parallel()
	a, b := archive(t), archive(t)
	if !bytes.Equal(a, b) {
		t.Fatal("two archives of the same tree differ: the zip is not deterministic")
	}
	zr, err := zip.NewReader(bytes.NewReader(a), int64(len(a)))
	if err != nil {
		t.Fatal(err)
	}
	var names, rootGo []string
	for _, f := range zr.File {
		names = append(names, f.Name)
		if strings.HasSuffix(f.Name, "_test.go") || strings.HasPrefix(f.Name, "local/") || strings.Contains(f.Name, "relaytest") || strings.Contains(f.Name, "providertest") {
			t.Errorf("archive holds %s, which the build does not need", f.Name)
		}
		if !strings.Contains(f.Name, "/") && strings.HasSuffix(f.Name, ".go") {
			rootGo = append(rootGo, f.Name)
		}
	}
	for _, want := range []string{"go.mod", "go.sum", "payrelay.go", "functions/functions.go", "functions/relay/service.go", "infra/store/firestore.go", "schedule/schedule.go"} {
		if !slices.Contains(names, want) {
			t.Errorf("archive lacks %s", want)
		}
	}
	if fmt.Sprint(rootGo) != "[payrelay.go]" {
		t.Errorf("root Go files = %v; the buildpack wants exactly one root package", rootGo)
	}
	// The root folder of the repository itself must hold only that package: a _test package
	// there breaks the buildpack.
	matches, _ := filepath.Glob(filepath.Join(root, "*.go"))
	if len(matches) != 1 {
		t.Errorf("repository root holds %v, want only payrelay.go", matches)
	}
}

// TestArchiveBuildsLikeTheBuildpack unpacks the archive, generates the main package the Go
// buildpack generates (importing the root package and starting functions-framework), builds
// it, and starts it once per function with FUNCTION_TARGET, as Cloud Functions does.
func TestArchiveBuildsLikeTheBuildpack(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src, app := filepath.Join(dir, "src"), filepath.Join(dir, "app")
	a := archive(t)
	zr, _ := zip.NewReader(bytes.NewReader(a), int64(len(a)))
	for _, f := range zr.File {
		rc, _ := f.Open()
		data, _ := io.ReadAll(rc)
		rc.Close()
		p := filepath.Join(src, filepath.FromSlash(f.Name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(app, 0o755)
	mainGo := `package main

import (
	"log"
	"os"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"

	_ "github.com/payrelay/payrelay"
)

func main() {
	if err := funcframework.Start(os.Getenv("PORT")); err != nil {
		log.Fatal(err)
	}
}
`
	goMod := "module functions.local/app\n\ngo 1.26\n\nrequire github.com/payrelay/payrelay v0.0.0\n\nreplace github.com/payrelay/payrelay => ../src\n"
	sum, _ := os.ReadFile(filepath.Join(src, "go.sum"))
	for name, data := range map[string][]byte{"main.go": []byte(mainGo), "go.mod": []byte(goMod), "go.sum": sum} {
		if err := os.WriteFile(filepath.Join(app, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gocmd := func(args ...string) {
		cmd := exec.Command("go", args...)
		cmd.Dir = app
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
	}
	gocmd("mod", "tidy")
	gocmd("build", "-o", "fn", ".")

	// Deployed (K_SERVICE set) with a bad configuration, the process refuses to start and names
	// every problem: the revision never becomes ready, and the deploy fails.
	t.Run("refuses to start on a bad configuration", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(app, "fn"))
		cmd.Env = append(os.Environ(), "FUNCTION_TARGET="+functions.IngestName, "PORT=1", "K_SERVICE=payrelay-ingest",
			"PROJECT_ID=studio-prod", "DELIVER_URL=http://127.0.0.1:1/Deliver", "INGEST_SECRETS=whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
			`GAMES=[{"name":"sword","url":"http://game.example.com/p","queues":["projects/p/locations/l/queues/q"]}]`,
			`PROVIDER_CONFIG={"alipay":[{"app_id":"2021","public_key":"not a key","game":"farm"}]}`, "CLOUD_TASKS_EMULATOR_HOST=127.0.0.1:1")
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("started with a bad configuration: %v\n%s", err, out)
		}
		for _, want := range []string{"cannot start", "plain http", "GAME_SECRETS_SWORD", "public_key", `game \"farm\"`} {
			if !strings.Contains(string(out), want) {
				t.Errorf("the start-up failure does not name %q:\n%s", want, out)
			}
		}
	})

	for _, tc := range []struct {
		target string
		body   string
		want   int
		reply  string
	}{
		{functions.IngestName, `{"order_id":"1"}`, http.StatusUnauthorized, "signature verification failed"},
		{functions.DeliverName, `{}`, http.StatusOK, `"outcome":"rejected"`},
	} {
		t.Run(tc.target, func(t *testing.T) {
			l, _ := net.Listen("tcp", "127.0.0.1:0")
			port := l.Addr().(*net.TCPAddr).Port
			l.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(app, "fn"))
			secret := "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
			cmd.Env = append(os.Environ(), "FUNCTION_TARGET="+tc.target, fmt.Sprint("PORT=", port), "K_SERVICE=payrelay-fn",
				"PROJECT_ID=studio-prod", "DELIVER_URL=http://127.0.0.1:1/Deliver",
				`GAMES=[{"name":"sword","url":"http://127.0.0.1:1/payments","queues":["projects/studio-prod/locations/asia-east1/queues/payrelay-sword-0"]}]`,
				"GAME_SECRETS_SWORD="+secret, "INGEST_SECRETS="+secret, "CLOUD_TASKS_EMULATOR_HOST=127.0.0.1:1",
				"FIRESTORE_EMULATOR_HOST=127.0.0.1:1")
			var logs bytes.Buffer
			cmd.Stdout, cmd.Stderr = &logs, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			url := fmt.Sprintf("http://127.0.0.1:%d/", port)
			var resp *http.Response
			var err error
			for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if resp, err = http.Post(url, "application/json", strings.NewReader(tc.body)); err == nil {
					break
				}
			}
			if err != nil {
				t.Fatalf("%s never answered: %v\n%s", tc.target, err, logs.String())
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || !strings.Contains(string(b), tc.reply) {
				t.Errorf("%s at / answered %d %s, want %d with %s\n%s", tc.target, resp.StatusCode, b, tc.want, tc.reply, logs.String())
			}
		})
	}
}

// terraformEnv finds terraform and the google provider built from the module proxy. Missing
// either fails under CI and skips elsewhere, saying how to get it.
func terraformEnv(t *testing.T) []string {
	t.Helper()
	missing := func(what string) {
		msg := what + " is missing; .ci/run installs it (see README, Tests)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if _, err := exec.LookPath("terraform"); err != nil {
		missing("terraform")
	}
	dir := os.Getenv("PAYRELAY_TF_PROVIDER_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "payrelay", "tfprovider")
	}
	if _, err := os.Stat(filepath.Join(dir, "terraform-provider-google")); err != nil {
		missing("the google provider binary in " + dir)
	}
	rc := filepath.Join(t.TempDir(), "terraformrc")
	conf := fmt.Sprintf("provider_installation {\n  dev_overrides { \"hashicorp/google\" = %q }\n  direct {}\n}\n", dir)
	if err := os.WriteFile(rc, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return append(os.Environ(), "TF_CLI_CONFIG_FILE="+rc, "TF_IN_AUTOMATION=1", "CHECKPOINT_DISABLE=1")
}

func TestTerraform(t *testing.T) {
	t.Parallel()
	env := terraformEnv(t)
	for _, args := range [][]string{
		{"fmt", "-check", "-recursive", "-diff"},
		{"validate", "-no-color"},
		{"test", "-no-color", "-test-directory=infra/terraform/tests"},
	} {
		cmd := exec.Command("terraform", args...)
		cmd.Dir = root
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("terraform %s: %v\n%s", strings.Join(args, " "), err, out)
		} else {
			t.Logf("terraform %s: ok", args[0])
		}
	}
}

// parseTerraform parses terraform.tf.
func parseTerraform(t *testing.T) *hcl.File {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(root, "terraform.tf"))
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclsyntax.ParseConfig(src, "terraform.tf", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f
}

// locals returns the object attributes of terraform.tf's locals by name.
func locals(t *testing.T) map[string]*hclsyntax.ObjectConsExpr {
	t.Helper()
	f := parseTerraform(t)
	out := map[string]*hclsyntax.ObjectConsExpr{}
	for _, b := range f.Body.(*hclsyntax.Body).Blocks {
		if b.Type != "locals" {
			continue
		}
		for name, attr := range b.Body.Attributes {
			if obj := objectItems(attr.Expr); obj != nil {
				out[name] = obj
			}
		}
	}
	return out
}

// objectItems is an object literal, or the items of every object literal a merge() of literals
// (and of conditionals choosing between literals) may hold: an optional entry, such as
// INGEST_SANDBOX_SECRETS, counts as set.
func objectItems(e hclsyntax.Expression) *hclsyntax.ObjectConsExpr {
	switch x := e.(type) {
	case *hclsyntax.ObjectConsExpr:
		return x
	case *hclsyntax.ConditionalExpr:
		return joinItems(objectItems(x.TrueResult), objectItems(x.FalseResult))
	case *hclsyntax.FunctionCallExpr:
		if x.Name != "merge" {
			return nil
		}
		var parts []*hclsyntax.ObjectConsExpr
		for _, a := range x.Args {
			if o := objectItems(a); o != nil {
				parts = append(parts, o)
			}
		}
		return joinItems(parts...)
	}
	return nil
}

func joinItems(objs ...*hclsyntax.ObjectConsExpr) *hclsyntax.ObjectConsExpr {
	out := &hclsyntax.ObjectConsExpr{}
	for _, o := range objs {
		if o != nil {
			out.Items = append(out.Items, o.Items...)
		}
	}
	return out
}

func keys(t *testing.T, obj *hclsyntax.ObjectConsExpr) []string {
	t.Helper()
	var ks []string
	for _, item := range obj.Items {
		k := hcl.ExprAsKeyword(item.KeyExpr)
		if k == "" {
			v, diags := item.KeyExpr.Value(nil)
			if diags.HasErrors() {
				t.Fatalf("non-literal key in terraform.tf: %v", diags)
			}
			k = v.AsString()
		}
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestTerraformWiring checks terraform.tf against the code: entry points are the names
// registered with functions.HTTP, and the variables set are exactly those infra/config reads.
func TestTerraformWiring(t *testing.T) {
	t.Parallel()
	ls := locals(t)
	fns := ls["functions"]
	if fns == nil {
		t.Fatal("terraform.tf has no local.functions")
	}
	var entries []string
	for _, item := range fns.Items {
		for _, attr := range item.ValueExpr.(*hclsyntax.ObjectConsExpr).Items {
			if hcl.ExprAsKeyword(attr.KeyExpr) == "entry_point" {
				v, diags := attr.ValueExpr.Value(nil)
				if diags.HasErrors() {
					t.Fatal(diags)
				}
				entries = append(entries, v.AsString())
			}
		}
	}
	slices.Sort(entries)
	if want := []string{functions.AdminName, functions.DeliverName, functions.IngestName, functions.QueryName, functions.ReconcileName, functions.RecoverName, functions.SweepName}; !slices.Equal(entries, want) {
		t.Errorf("entry points %v, want the registered functions %v", entries, want)
	}

	var read []string
	ct := reflect.TypeFor[config.Config]()
	for i := range ct.NumField() {
		name, _, _ := strings.Cut(ct.Field(i).Tag.Get("env"), ",")
		if name != "" && !strings.HasSuffix(name, "_EMULATOR_HOST") {
			read = append(read, name)
		}
	}
	slices.Sort(read)
	set := append(keys(t, ls["function_env"]), keys(t, ls["function_secret_env"])...)
	slices.Sort(set)
	if !slices.Equal(set, read) {
		t.Errorf("terraform.tf sets %v\ninfra/config reads %v\nevery variable read must be set, and every one set must be read", set, read)
	}
}

// TestFirestoreIndexes checks that terraform.tf creates every composite index the store's
// queries use: the emulator needs none, production refuses a query without its index.
func TestFirestoreIndexes(t *testing.T) {
	t.Parallel()
	f := parseTerraform(t)
	var have []string
	for _, b := range f.Body.(*hclsyntax.Body).Blocks {
		attr, ok := b.Body.Attributes["firestore_indexes"]
		if b.Type != "locals" || !ok {
			continue
		}
		v, diags := attr.Expr.Value(nil)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		for it := v.ElementIterator(); it.Next(); {
			_, idx := it.Element()
			var fields []string
			for fit := idx.ElementIterator(); fit.Next(); {
				_, field := fit.Element()
				s := field.GetAttr("path").AsString()
				for _, k := range []string{"order", "array_config"} {
					if field.Type().HasAttribute(k) {
						s += ":" + field.GetAttr(k).AsString()
					}
				}
				fields = append(fields, s)
			}
			have = append(have, strings.Join(fields, ","))
		}
	}
	var want []string
	for _, idx := range store.Indexes() {
		var fields []string
		for _, f := range idx {
			fields = append(fields, f.Path+":"+f.Order+f.ArrayConfig)
		}
		want = append(want, strings.Join(fields, ","))
	}
	slices.Sort(have)
	slices.Sort(want)
	if !slices.Equal(have, want) {
		t.Errorf("terraform.tf's firestore_indexes\n%v\nthe store's queries need\n%v", have, want)
	}
}
