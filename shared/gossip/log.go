package gossip

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// memberlist logs through a *log.Logger with "[LEVEL] memberlist: ..." prefixes. A plain
// slog.NewLogLogger would log all of it at one level, so the per-connection [DEBUG] lines
// of every push/pull would either flood the log or take real [ERR] lines down with them;
// this writer maps each prefix to its slog level.
type logWriter struct{ log *slog.Logger }

var levelPrefixes = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG]", slog.LevelDebug},
	{"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn},
	{"[ERR]", slog.LevelError},
	{"[ERROR]", slog.LevelError},
}

func (w logWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for _, lp := range levelPrefixes {
		if rest, ok := strings.CutPrefix(msg, lp.prefix); ok {
			msg, level = strings.TrimSpace(rest), lp.level
			break
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}

func newLogLogger(l *slog.Logger) *log.Logger {
	return log.New(logWriter{l.With("component", "memberlist")}, "", 0)
}
