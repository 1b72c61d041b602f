// Package emulator starts and stops the Google Cloud CLI's Firestore emulator for the local
// runner and the tests, and gives tests one shared emulator per test binary.
package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// InstallHint tells a user how to get the emulator.
const InstallHint = "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and its Firestore emulator: " +
	"`gcloud components install cloud-firestore-emulator` (or the Debian package google-cloud-cli-firestore-emulator); it needs Java 11+"

// ErrNotInstalled means gcloud or its Firestore emulator is missing.
var ErrNotInstalled = errors.New("the Firestore emulator is not installed")

// Firestore is a running Firestore emulator process (gcloud and the Java server it starts).
type Firestore struct {
	Host string // host:port, the value of FIRESTORE_EMULATOR_HOST
	cmd  *exec.Cmd
	done chan struct{}
}

// FreePort asks the kernel for a free loopback port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartFirestore starts the emulator on 127.0.0.1:port (0 picks a free port), in its own
// process group so Stop can end gcloud and Java together, and waits until it answers. Its
// output goes to logw (nil discards).
func StartFirestore(ctx context.Context, port int, logw io.Writer) (*Firestore, error) {
	return StartFirestoreFrom(ctx, port, logw, "")
}

// StartFirestoreFrom is StartFirestore importing the documents an Export wrote to dir first
// (none when dir holds no export).
func StartFirestoreFrom(ctx context.Context, port int, logw io.Writer, dir string) (*Firestore, error) {
	gcloud, err := exec.LookPath("gcloud")
	if err != nil {
		return nil, fmt.Errorf("%w: gcloud is not on PATH; %s", ErrNotInstalled, InstallHint)
	}
	if _, err := exec.LookPath("java"); err != nil {
		// Installed or not, the emulator cannot run: say what is missing.
		return nil, fmt.Errorf("%w: Java is not on PATH, and the Firestore emulator runs on Java 11+ (Debian: apt-get install openjdk-17-jre-headless)", ErrNotInstalled)
	}
	if port == 0 {
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	host := "127.0.0.1:" + strconv.Itoa(port)
	if logw == nil {
		logw = io.Discard
	}
	args := []string{"emulators", "firestore", "start", "--host-port=" + host, "--quiet"}
	if meta := exportMetadata(dir); meta != "" {
		// gcloud's --import-data takes the export's metadata file.
		args = append(args, "--import-data="+meta)
	}
	cmd := exec.Command(gcloud, args...)
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = append(os.Environ(), "CLOUDSDK_CORE_DISABLE_PROMPTS=1")
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start gcloud: %w", err)
	}
	f := &Firestore{Host: host, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(f.done) }()
	deadline := time.NewTimer(90 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready(host) {
			return f, nil
		}
		select {
		case <-f.done:
			if installed(gcloud) {
				return nil, fmt.Errorf("`gcloud emulators firestore start` exited (%v) though the emulator is installed: its output says why", cmd.ProcessState)
			}
			return nil, fmt.Errorf("%w: `gcloud emulators firestore start` exited (%v); %s", ErrNotInstalled, cmd.ProcessState, InstallHint)
		case <-ctx.Done():
			f.Stop()
			return nil, ctx.Err()
		case <-deadline.C:
			f.Stop()
			return nil, fmt.Errorf("the Firestore emulator did not answer on %s within 90s", host)
		case <-tick.C:
		}
	}
}

// installed reports whether gcloud's installation holds the Firestore emulator component (the
// gcloud installer's, or Debian's google-cloud-cli-firestore-emulator, which puts it in the same
// place).
func installed(gcloud string) bool {
	out, err := exec.Command(gcloud, "info", "--format=value(installation.sdk_root)").Output()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(strings.TrimSpace(string(out)), "platform", "cloud-firestore-emulator"))
	return err == nil
}

// ready reports whether the emulator at host answers its health endpoint.
func ready(host string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + host + "/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Stop ends the emulator's whole process group: SIGTERM, then SIGKILL after 5 s.
func (f *Firestore) Stop() error {
	if f == nil || f.cmd.Process == nil {
		return nil
	}
	pgid := f.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-f.done
	}
	// gcloud may exit before its Java child: make sure nothing of the group survives, and
	// return only once the port is free again, so a caller may start another at once.
	syscall.Kill(-pgid, syscall.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", f.Host, 100*time.Millisecond)
		if err != nil {
			return nil
		}
		c.Close()
	}
	return fmt.Errorf("the Firestore emulator on %s still accepts connections 10s after it was killed", f.Host)
}

// Pid is the process-group id of the emulator, for checks that nothing is left running.
func (f *Firestore) Pid() int { return f.cmd.Process.Pid }

// Reset deletes every document in the emulator (all projects and databases).
func Reset(host, projectID string) error {
	req, _ := http.NewRequest(http.MethodDelete, "http://"+host+"/emulator/v1/projects/"+projectID+"/databases/(default)/documents", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// exportMetadata is the metadata file of the export in dir, "" when there is none.
func exportMetadata(dir string) string {
	if dir == "" {
		return ""
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.overall_export_metadata"))
	if len(m) != 1 {
		return ""
	}
	return m[0]
}

// Export writes every document of projectID's default database in the emulator at host to dir,
// replacing the export dir held (the emulator's REST export writes a fresh subdirectory; it
// replaces dir only once complete, so a failed export leaves the previous one).
func Export(host, projectID, dir string) error {
	tmp := dir + ".new"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	abs, err := filepath.Abs(tmp)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]string{"database": "projects/" + projectID + "/databases/(default)", "export_directory": abs})
	c := http.Client{Timeout: 60 * time.Second}
	resp, err := c.Post("http://"+host+"/emulator/v1/projects/"+projectID+":export", "application/json", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("export the Firestore emulator: %w", err)
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("export the Firestore emulator: %d %s", resp.StatusCode, answer)
	}
	made, _ := filepath.Glob(filepath.Join(tmp, "firestore_export_*"))
	if len(made) != 1 || exportMetadata(made[0]) == "" {
		return fmt.Errorf("export the Firestore emulator: no export in %s", tmp)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(made[0], dir)
}
