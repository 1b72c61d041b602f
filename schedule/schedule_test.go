package schedule

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDefaultLadder(t *testing.T) {
	t.Parallel()
	l := Default()
	if got, want := l.Attempts(), 8; got != want {
		t.Fatalf("Attempts() = %d, want %d", got, want)
	}
	wantElapsed := []time.Duration{0, 2 * time.Minute, 12 * time.Minute, 22 * time.Minute,
		82 * time.Minute, 3*time.Hour + 22*time.Minute, 9*time.Hour + 22*time.Minute, 24*time.Hour + 22*time.Minute}
	var got []time.Duration
	for n := 1; n <= l.Attempts(); n++ {
		got = append(got, l.Elapsed(n))
	}
	if diff := cmp.Diff(wantElapsed, got); diff != "" {
		t.Errorf("elapsed since receipt (-want +got):\n%s", diff)
	}
	if len(l.Warnings()) != 0 {
		t.Errorf("Warnings() = %v, want none", l.Warnings())
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		spec    string
		want    string // String() of the result
		warn    bool
		wantErr string // substring naming the bad element
	}{
		{name: "default", spec: DefaultSpec, want: "0s,2m0s,10m0s,10m0s,1h0m0s,2h0m0s,6h0m0s,15h0m0s"},
		{name: "spaces", spec: " 0s , 1m ", want: "0s,1m0s"},
		{name: "delayed first", spec: "30s,1m", want: "30s,1m0s", warn: true},
		{name: "empty", spec: "  ", wantErr: "empty ladder"},
		{name: "empty element", spec: "0s,,1m", wantErr: "step 2 is empty"},
		{name: "unparsable", spec: "0s,2 minutes", wantErr: `step 2 ("2 minutes") is not a duration`},
		{name: "negative", spec: "0s,-1m", wantErr: `step 2 ("-1m") is negative`},
		{name: "step beyond horizon", spec: "0s,721h", wantErr: `step 2 ("721h") exceeds`},
		{name: "total beyond horizon", spec: "0s,400h,400h", wantErr: `total reaches 800h0m0s at step 3`},
		{name: "too many", spec: strings.Repeat("1s,", MaxSteps) + "1s", wantErr: "at most 100"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l, err := Parse(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want one containing %q", tc.spec, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.spec, err)
			}
			if got := l.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			if got := len(l.Warnings()) > 0; got != tc.warn {
				t.Errorf("Warnings() = %v, want warning: %v", l.Warnings(), tc.warn)
			}
		})
	}
}

func TestNext(t *testing.T) {
	t.Parallel()
	l := Default()
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		failed int
		want   time.Time
		ok     bool
	}{
		{failed: 0, ok: false},
		{failed: 1, want: now.Add(2 * time.Minute), ok: true},
		{failed: 2, want: now.Add(10 * time.Minute), ok: true},
		{failed: 4, want: now.Add(time.Hour), ok: true},
		{failed: 7, want: now.Add(15 * time.Hour), ok: true},
		{failed: 8, ok: false},
		{failed: 9, ok: false},
	}
	for _, tc := range cases {
		got, ok := l.Next(now, tc.failed)
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("Next(now, %d) = %v, %v; want %v, %v", tc.failed, got, ok, tc.want, tc.ok)
		}
	}
	if got := l.First(now); !got.Equal(now) {
		t.Errorf("First(now) = %v, want now", got)
	}
}

func TestCompress(t *testing.T) {
	t.Parallel()
	c, err := Default().Compress(1000)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Elapsed(c.Attempts()), 87720*time.Millisecond; got != want {
		t.Errorf("compressed ladder total = %v, want %v (24h22m / 1000)", got, want)
	}
	if got, want := c.Wait(2), 120*time.Millisecond; got != want {
		t.Errorf("compressed Wait(2) = %v, want %v", got, want)
	}
	same, err := Default().Compress(1)
	if err != nil || same.String() != Default().String() {
		t.Errorf("Compress(1) = %v, %v; want the ladder unchanged", same, err)
	}
	if _, err := Default().Compress(0); err == nil {
		t.Error("Compress(0) succeeded, want an error")
	}
}

func BenchmarkNext(b *testing.B) {
	l := Default()
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		l.Next(now, 1+i%8)
	}
}

func TestNextNotBefore(t *testing.T) {
	t.Parallel()
	l := Default()
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name      string
		failed    int
		notBefore time.Time
		want      time.Time
		ok        bool
	}{
		{"no wish: the ladder", 1, time.Time{}, now.Add(2 * time.Minute), true},
		{"wish sooner than the ladder: the ladder", 1, now.Add(time.Minute), now.Add(2 * time.Minute), true},
		{"wish later: honoured", 1, now.Add(30 * time.Minute), now.Add(30 * time.Minute), true},
		{"wish beyond the longest step: capped at it", 2, now.Add(48 * time.Hour), now.Add(15 * time.Hour), true},
		{"last attempt: exhausted whatever the wish", 8, now.Add(time.Minute), time.Time{}, false},
	}
	for _, tc := range cases {
		got, ok := l.NextNotBefore(now, tc.failed, tc.notBefore)
		if !got.Equal(tc.want) || ok != tc.ok {
			t.Errorf("%s: NextNotBefore = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
	if l.Longest() != 15*time.Hour {
		t.Errorf("Longest = %v, want 15h", l.Longest())
	}
}
