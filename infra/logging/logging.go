// Package logging makes log/slog write JSON in Cloud Logging's structured format: severity,
// message, and the request's trace, so that one payment's lines group under its request.
package logging

import (
	"context"
	"io"
	"log/slog"
	"strings"
)

// TraceKey is the attribute Cloud Logging reads a log line's trace from.
const TraceKey = "logging.googleapis.com/trace"

// New returns a JSON logger for Cloud Logging at the given level (debug, info, warn, error).
func New(w io.Writer, level string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: lv,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.MessageKey:
				a.Key = "message"
			case slog.LevelKey:
				a.Key = "severity"
				if l, ok := a.Value.Any().(slog.Level); ok && l == slog.LevelWarn {
					a.Value = slog.StringValue("WARNING")
				}
			}
			return a
		},
	})
	return slog.New(traceHandler{h})
}

type traceKey struct{}

// WithTrace returns ctx carrying the trace of a request's X-Cloud-Trace-Context header
// ("TRACE_ID/SPAN_ID;o=1") in the form Cloud Logging wants: projects/P/traces/TRACE_ID.
func WithTrace(ctx context.Context, projectID, header string) context.Context {
	id, _, _ := strings.Cut(header, "/")
	if id == "" || projectID == "" || len(id) > 64 {
		return ctx
	}
	return context.WithValue(ctx, traceKey{}, "projects/"+projectID+"/traces/"+id)
}

type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if t, ok := ctx.Value(traceKey{}).(string); ok {
		r.AddAttrs(slog.String(TraceKey, t))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(as)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
