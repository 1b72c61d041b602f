package emulator

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
)

// The tests' Firestore: the one named by FIRESTORE_EMULATOR_HOST (CI starts one for the whole
// run), or one started for this test binary and stopped by Main.
var (
	shared     *Firestore
	sharedHost string
	sharedErr  error
	sharedOnce sync.Once
)

// Main runs a package's tests and then stops the emulator they started, if any. Use it as
// TestMain: func TestMain(m *testing.M) { emulator.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	os.Exit(code)
}

// FirestoreForTest returns the host:port of a Firestore emulator, starting one if needed. When
// none can be had, the test is skipped, except under CI (CI set), where it fails with the
// reason: an emulator test never passes by skipping in CI.
func FirestoreForTest(tb testing.TB) string {
	tb.Helper()
	sharedOnce.Do(func() {
		if h := os.Getenv("FIRESTORE_EMULATOR_HOST"); h != "" {
			sharedHost = h
			return
		}
		shared, sharedErr = StartFirestore(context.Background(), 0, nil)
		if sharedErr == nil {
			sharedHost = shared.Host
			// The Firestore client reads this variable; set it for the whole test binary.
			os.Setenv("FIRESTORE_EMULATOR_HOST", sharedHost)
		}
	})
	if sharedErr != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("Firestore emulator unavailable in CI: %v", sharedErr)
		}
		tb.Skipf("Firestore emulator unavailable (%v); set CI=1 to make this a failure", sharedErr)
	}
	return sharedHost
}

// UniqueName returns a name no other test in this run uses, for collections and projects.
func UniqueName(tb testing.TB, prefix string) string {
	uniqueMu.Lock()
	defer uniqueMu.Unlock()
	uniqueN++
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), uniqueN)
}

var (
	uniqueMu sync.Mutex
	uniqueN  int
)
