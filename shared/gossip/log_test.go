package gossip

import (
	"context"
	"log/slog"
	"sync"
	"testing"
)

type lastRecord struct {
	mu    sync.Mutex
	level slog.Level
	msg   string
}

func (h *lastRecord) Enabled(context.Context, slog.Level) bool { return true }
func (h *lastRecord) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.level, h.msg = r.Level, r.Message
	h.mu.Unlock()
	return nil
}
func (h *lastRecord) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *lastRecord) WithGroup(string) slog.Handler      { return h }

func TestLogBridgeLevels(t *testing.T) {
	h := &lastRecord{}
	l := newLogLogger(slog.New(h))
	for _, tc := range []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:5000", slog.LevelDebug, "Stream connection from=127.0.0.1:5000"},
		{"[INFO] memberlist: Suspect kvm01 has failed, no acks received", slog.LevelInfo, "Suspect kvm01 has failed, no acks received"},
		{"[WARN] memberlist: Refuting a suspect message (from: c1)", slog.LevelWarn, "Refuting a suspect message (from: c1)"},
		{"[ERR] memberlist: Failed to decrypt packet", slog.LevelError, "Failed to decrypt packet"},
		{"[ERROR] memberlist: boom", slog.LevelError, "boom"},
		{"no prefix at all", slog.LevelInfo, "no prefix at all"},
	} {
		t.Run(tc.line, func(t *testing.T) {
			l.Print(tc.line)
			if h.level != tc.level || h.msg != tc.msg {
				t.Fatalf("got %v %q, want %v %q", h.level, h.msg, tc.level, tc.msg)
			}
		})
	}
}
