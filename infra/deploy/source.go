// Package deploy prepares payrelay for Cloud Functions: it lists exactly the files the Go
// buildpack needs (go.mod, go.sum and the non-test Go files of the packages the root package
// imports from this module: no tests, no local/) and writes them as a byte-for-byte
// reproducible zip, which terraform uploads. The hashicorp/archive provider is not needed.
package deploy

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// SourceFiles lists, relative to the module root, the files the buildpack needs to build the
// root package, sorted.
func SourceFiles(root string) ([]string, error) {
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Dir,Module,GoFiles,EmbedFiles,CgoFiles,TestGoFiles", ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %v: %s", err, stderr.String())
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	files := []string{"go.mod", "go.sum"}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			Dir        string
			Module     *struct{ Main bool }
			GoFiles    []string
			EmbedFiles []string
			CgoFiles   []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, err
		}
		if p.Module == nil || !p.Module.Main {
			continue // the standard library and dependencies come from go.sum
		}
		rel, err := filepath.Rel(abs, p.Dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			return nil, fmt.Errorf("package dir %s is outside the module", p.Dir)
		}
		if rel == "local" || strings.HasPrefix(rel, "local"+string(filepath.Separator)) {
			return nil, fmt.Errorf("the deployed functions must not import local/ (%s)", rel)
		}
		if len(p.CgoFiles) > 0 {
			return nil, fmt.Errorf("%s uses cgo, which the buildpack does not build", rel)
		}
		for _, f := range append(p.GoFiles, p.EmbedFiles...) {
			files = append(files, filepath.ToSlash(filepath.Join(rel, f)))
		}
	}
	slices.Sort(files)
	return slices.Compact(files), nil
}

// epoch is every entry's modification time, so the same files give the same bytes.
var epoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

// WriteZip writes files (relative to root) to w in order, with fixed times and modes.
func WriteZip(w io.Writer, root string, files []string) error {
	zw := zip.NewWriter(w)
	for _, name := range files {
		data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(name)))
		if err != nil {
			return err
		}
		h := &zip.FileHeader{Name: name, Method: zip.Deflate, Modified: epoch}
		h.SetMode(0o644)
		fw, err := zw.CreateHeader(h)
		if err != nil {
			return err
		}
		if _, err := fw.Write(data); err != nil {
			return err
		}
	}
	return zw.Close()
}
