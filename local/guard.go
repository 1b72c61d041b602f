package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// guardEmulator starts a guard of the Firestore emulator's process group pgid: a process of
// its own (this binary, `guard`) that ends the group once this runner is gone, however it
// went. A signal handler cannot do that for a SIGKILL, and the emulator's Java server is not
// the runner's child, so no parent-death signal reaches it; the guard watches from outside.
// It exits by itself when the group ends first (a normal stop).
func guardEmulator(pgid int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "guard", strconv.Itoa(pgid), strconv.Itoa(os.Getpid()))
	// Its own group: a Ctrl-C at the terminal reaches the runner, which stops the emulator in
	// order; the guard only acts when the runner could not.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait() // reaped when it exits
	return nil
}

// guard is the guard process: `guard PGID RUNNER_PID`. Every 200 ms it checks that the group
// still exists (else its job is done) and that the runner is still its parent (else the
// runner died: it ends the group, SIGTERM then SIGKILL).
func guard(args []string, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, "usage: guard PGID RUNNER_PID (started by the runner itself)")
		return 2
	}
	pgid, err1 := strconv.Atoi(args[0])
	runner, err2 := strconv.Atoi(args[1])
	if err1 != nil || err2 != nil || pgid <= 1 {
		fmt.Fprintln(stderr, "guard: PGID and RUNNER_PID must be process ids")
		return 2
	}
	for {
		time.Sleep(200 * time.Millisecond)
		if syscall.Kill(-pgid, 0) != nil {
			return 0 // the emulator stopped: nothing left to guard
		}
		if os.Getppid() != runner {
			syscall.Kill(-pgid, syscall.SIGTERM)
			for range 25 {
				time.Sleep(200 * time.Millisecond)
				if syscall.Kill(-pgid, 0) != nil {
					return 0
				}
			}
			syscall.Kill(-pgid, syscall.SIGKILL)
			return 0
		}
	}
}
