package tasksemu

import (
	"testing"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestRetryDelay(t *testing.T) {
	t.Parallel()
	// Cloud Tasks' documented example: min 10s, max 300s, 3 doublings gives
	// 10s, 20s, 40s, 80s, then 160s, 240s, 300s, 300s.
	rc := &cloudtaskspb.RetryConfig{MaxAttempts: -1, MinBackoff: durationpb.New(10 * time.Second),
		MaxBackoff: durationpb.New(300 * time.Second), MaxDoublings: 3, MaxRetryDuration: durationpb.New(0)}
	var got []time.Duration
	for attempts := int32(1); attempts <= 8; attempts++ {
		d, ok := retryDelay(rc, attempts, 0)
		if !ok {
			t.Fatalf("attempt %d dropped with unlimited attempts", attempts)
		}
		got = append(got, d)
	}
	want := []time.Duration{10, 20, 40, 80, 160, 240, 300, 300}
	for i := range want {
		want[i] *= time.Second
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("backoff (-want +got):\n%s", diff)
	}

	cases := []struct {
		name        string
		maxAttempts int32
		maxDur      time.Duration
		attempts    int32
		since       time.Duration
		keep        bool
	}{
		{"attempts left", 3, 0, 2, time.Hour, true},
		{"attempts exhausted", 3, 0, 3, 0, false},
		{"unlimited, no duration", -1, 0, 1000, 1000 * time.Hour, true},
		{"unlimited, duration left", -1, time.Hour, 50, time.Minute, true},
		{"unlimited, duration over", -1, time.Hour, 50, 2 * time.Hour, false},
		{"attempts over, duration left", 3, time.Hour, 5, time.Minute, true},
		{"both over", 3, time.Hour, 5, 2 * time.Hour, false},
	}
	for _, tc := range cases {
		rc := &cloudtaskspb.RetryConfig{MaxAttempts: tc.maxAttempts, MinBackoff: durationpb.New(time.Second),
			MaxBackoff: durationpb.New(time.Minute), MaxDoublings: 16, MaxRetryDuration: durationpb.New(tc.maxDur)}
		if _, ok := retryDelay(rc, tc.attempts, tc.since); ok != tc.keep {
			t.Errorf("%s: retry = %v, want %v", tc.name, ok, tc.keep)
		}
	}
}
