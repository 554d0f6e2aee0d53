// Package testutil holds the helpers every test of the project shares (in-process and
// process tests alike). It imports nothing of the project, so any package's tests can use
// it without an import cycle.
package testutil

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"
)

// Logger is the logger of in-process tests: debug to stderr when HYPERSDK_TEST_LOG is set,
// else nothing (a test's log is noise unless someone is looking into a failure).
func Logger() *slog.Logger {
	if os.Getenv("HYPERSDK_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// WaitFor polls cond every 20 ms until it holds, and fails the test when timeout passes
// first. Tests wait for an event this way, never for the clock (a loaded machine makes any
// fixed sleep either too short or wasteful).
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		case <-tick.C:
		}
	}
}
