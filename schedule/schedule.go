// Package schedule is payrelay's notification ladder: how long to wait before each attempt to
// notify the game server. It is pure: every function that needs the time takes it as an
// argument, so the ladder can be tested, compressed and replayed without a clock.
package schedule

import (
	"fmt"
	"strings"
	"time"
)

// DefaultSpec is Alipay's own notification ladder: at once, then 2m, 10m, 10m, 1h, 2h, 6h and
// 15h after each failed attempt; 8 attempts, the last 24h22m after receipt.
const DefaultSpec = "0s,2m,10m,10m,1h,2h,6h,15h"

// MaxHorizon is the furthest ahead Cloud Tasks accepts a ScheduleTime; no single step and no
// whole ladder may exceed it.
const MaxHorizon = 30 * 24 * time.Hour

// MaxSteps bounds the ladder's length so a typo cannot create an unbounded retry chain.
const MaxSteps = 100

// Ladder is an immutable list of waits: Wait(1) before the first attempt (counted from
// receipt), Wait(n+1) between the failure of attempt n and attempt n+1.
type Ladder struct {
	steps    []time.Duration
	warnings []string
}

// Default returns the default ladder (DefaultSpec).
func Default() Ladder {
	l, err := Parse(DefaultSpec)
	if err != nil {
		panic("schedule: DefaultSpec does not parse: " + err.Error())
	}
	return l
}

// Parse reads a comma-separated list of Go durations ("0s,2m,1h"). Every error names the
// element at fault. A first step other than 0 is allowed (the first notification is then
// delayed) and reported by Warnings.
func Parse(spec string) (Ladder, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return Ladder{}, fmt.Errorf("schedule: empty ladder: want a comma-separated list of durations such as %q", DefaultSpec)
	}
	parts := strings.Split(spec, ",")
	if len(parts) > MaxSteps {
		return Ladder{}, fmt.Errorf("schedule: %d steps, at most %d are allowed", len(parts), MaxSteps)
	}
	var l Ladder
	var total time.Duration
	for i, raw := range parts {
		p := strings.TrimSpace(raw)
		if p == "" {
			return Ladder{}, fmt.Errorf("schedule: step %d is empty", i+1)
		}
		d, err := time.ParseDuration(p)
		if err != nil {
			return Ladder{}, fmt.Errorf("schedule: step %d (%q) is not a duration: %w", i+1, p, err)
		}
		if d < 0 {
			return Ladder{}, fmt.Errorf("schedule: step %d (%q) is negative", i+1, p)
		}
		if d > MaxHorizon {
			return Ladder{}, fmt.Errorf("schedule: step %d (%q) exceeds %s, the furthest Cloud Tasks can schedule", i+1, p, MaxHorizon)
		}
		total += d
		if total > MaxHorizon {
			return Ladder{}, fmt.Errorf("schedule: the ladder's total reaches %s at step %d (%q), beyond %s", total, i+1, p, MaxHorizon)
		}
		l.steps = append(l.steps, d)
	}
	if l.steps[0] != 0 {
		l.warnings = append(l.warnings, fmt.Sprintf("first step is %s, not 0s: the first notification waits that long after receipt", l.steps[0]))
	}
	return l, nil
}

// Warnings lists what Parse accepted but an operator should know about.
func (l Ladder) Warnings() []string { return append([]string(nil), l.warnings...) }

// Attempts is the number of notifications the ladder allows.
func (l Ladder) Attempts() int { return len(l.steps) }

// Wait is the wait before attempt n (1-based); 0 outside the ladder.
func (l Ladder) Wait(n int) time.Duration {
	if n < 1 || n > len(l.steps) {
		return 0
	}
	return l.steps[n-1]
}

// Elapsed is the planned time from receipt to attempt n when every attempt fails instantly.
func (l Ladder) Elapsed(n int) time.Duration {
	var total time.Duration
	for i := 1; i <= n && i <= len(l.steps); i++ {
		total += l.steps[i-1]
	}
	return total
}

// First is when attempt 1 is due for a payment received at receivedAt.
func (l Ladder) First(receivedAt time.Time) time.Time {
	return receivedAt.Add(l.Wait(1))
}

// Next is when attempt failed+1 is due, given that attempt failed ended at now. ok is false
// when failed was the last attempt: the ladder is exhausted.
func (l Ladder) Next(now time.Time, failed int) (at time.Time, ok bool) {
	if failed < 1 || failed >= len(l.steps) {
		return time.Time{}, false
	}
	return now.Add(l.steps[failed]), true
}

// NextNotBefore is Next, held back to notBefore when the game server asked for that (a
// Retry-After), but never further than the ladder's longest step after now: a game server
// cannot push a notification past the ladder's own patience. The attempt still counts.
func (l Ladder) NextNotBefore(now time.Time, failed int, notBefore time.Time) (at time.Time, ok bool) {
	at, ok = l.Next(now, failed)
	if !ok || !notBefore.After(at) {
		return at, ok
	}
	return earlier(notBefore, now.Add(l.Longest())), true
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Longest is the ladder's longest step.
func (l Ladder) Longest() time.Duration {
	var m time.Duration
	for _, s := range l.steps {
		m = max(m, s)
	}
	return m
}

// Compress divides every step by factor so that local runs and tests play the whole ladder in
// seconds; factor 1 is the real ladder.
func (l Ladder) Compress(factor int) (Ladder, error) {
	if factor < 1 {
		return Ladder{}, fmt.Errorf("schedule: compression factor %d: want 1 (real time) or more", factor)
	}
	out := Ladder{steps: make([]time.Duration, len(l.steps)), warnings: l.warnings}
	for i, d := range l.steps {
		out.steps[i] = d / time.Duration(factor)
	}
	return out, nil
}

// String renders the ladder in the form Parse reads.
func (l Ladder) String() string {
	parts := make([]string, len(l.steps))
	for i, d := range l.steps {
		parts[i] = d.String()
	}
	return strings.Join(parts, ",")
}
