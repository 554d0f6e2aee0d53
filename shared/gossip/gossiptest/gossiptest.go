// Package gossiptest starts real gossip nodes on loopback for tests of the packages built
// on shared/gossip (agent/membership, controller/fleet).
package gossiptest

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip"
)

// Logger logs warnings and errors to stderr (HYPERSDK_TEST_LOG=debug|info for more). It
// does not use t.Log: memberlist goroutines may still log a line after a test ends.
func Logger() *slog.Logger {
	level := slog.LevelWarn
	switch strings.ToLower(os.Getenv("HYPERSDK_TEST_LOG")) {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Config is a node on 127.0.0.1 with a free port and the fast profile.
func Config(role proto.NodeRole, name string) gossip.Config {
	return gossip.Config{
		Meta:     proto.NodeMeta{Role: role, Name: name, Version: "test"},
		BindAddr: "127.0.0.1:0",
		Profile:  gossip.ProfileFast,
		Logger:   Logger(),
	}
}

// Start creates the node and shuts it down when the test ends.
func Start(t testing.TB, cfg gossip.Config) *gossip.Node {
	t.Helper()
	n, err := gossip.New(cfg)
	if err != nil {
		t.Fatalf("start gossip node %s: %v", cfg.Meta.Name, err)
	}
	t.Cleanup(func() { n.Shutdown() })
	return n
}

// Eventually polls cond until it holds, failing the test after timeout.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, fmt.Sprintf(format, args...))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
