// Command zipsource writes the function source archive that terraform.tf uploads:
//
//	go run ./infra/deploy/zipsource -o dist/payrelay-source.zip
package main

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/payrelay/payrelay/infra/deploy"
)

func main() {
	out := flag.String("o", "dist/payrelay-source.zip", "where to write the archive")
	root := flag.String("root", ".", "the module root")
	flag.Parse()
	files, err := deploy.SourceFiles(*root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "zipsource:", err)
		os.Exit(1)
	}
	var buf bytes.Buffer
	if err := deploy.WriteZip(&buf, *root, files); err != nil {
		fmt.Fprintln(os.Stderr, "zipsource:", err)
		os.Exit(1)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "zipsource:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "zipsource:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %d files, %d bytes, sha256 %x\n", *out, len(files), buf.Len(), sha256.Sum256(buf.Bytes()))
}
