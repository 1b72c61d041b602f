package logging

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestCloudLoggingFormat(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	log := New(&b, "info")
	ctx := WithTrace(context.Background(), "studio-prod", "105445aa7843bc8bf206b12000100000/1;o=1")
	log.WarnContext(ctx, "attempt failed", "payment_id", "p1", "attempt", 3)
	log.Debug("hidden")
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(b.String())), &line); err != nil {
		t.Fatalf("not one JSON line: %q", b.String())
	}
	want := map[string]any{
		"severity": "WARNING", "message": "attempt failed", "payment_id": "p1", "attempt": float64(3),
		TraceKey: "projects/studio-prod/traces/105445aa7843bc8bf206b12000100000",
	}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s = %v, want %v", k, line[k], v)
		}
	}
}
