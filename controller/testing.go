package controller

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/shared/testutil"
)

// TestConfig is a config for an in-process test node on loopback with ephemeral ports and
// fast raft timers.
func TestConfig(t testing.TB, nodeID, dataDir string, join ...string) Config {
	cfg := DefaultConfig()
	cfg.Cluster.NodeID = nodeID
	cfg.Database.Path = dataDir
	cfg.API.Addr = "127.0.0.1:0"
	cfg.Cluster.RaftAddr = "127.0.0.1:0"
	cfg.Gossip.Addr = "127.0.0.1:0"
	cfg.Cluster.Join = join
	cfg.Cluster.Fast = true
	cfg.Cluster.LeaderWait = 5 * time.Second
	// Tests reach the simulator and webhook receivers on loopback, over http too.
	cfg.Security.AllowPrivateTargets, cfg.Security.AllowHTTPTargets = true, true
	off := false
	cfg.Validation.OnSubmit = &off // most tests submit to vCenters that are not there
	return cfg
}

// TestLogger logs to stderr when HYPERSDK_TEST_LOG is set, else discards.
func TestLogger(t testing.TB) *slog.Logger { return testutil.Logger().With("test", t.Name()) }

// StartTestCluster starts n in-process controllers: the first bootstraps, the others join
// it; it returns once all n are voters and every node knows the leader's API address.
func StartTestCluster(t testing.TB, n int) []*Controller {
	t.Helper()
	return StartTestClusterWith(t, n, nil)
}

// StartTestClusterWith is StartTestCluster with each node's config adjusted by mutate
// (i is the node's position, 0 bootstraps).
func StartTestClusterWith(t testing.TB, n int, mutate func(i int, cfg *Config)) []*Controller {
	t.Helper()
	var nodes []*Controller
	for i := 0; i < n; i++ {
		var join []string
		if i > 0 {
			join = []string{nodes[0].APIAddr()}
		}
		cfg := TestConfig(t, fmt.Sprintf("node%d", i+1), t.TempDir(), join...)
		if mutate != nil {
			mutate(i, &cfg)
		}
		c, err := New(cfg, TestLogger(t))
		if err != nil {
			t.Fatalf("start node%d: %v", i+1, err)
		}
		t.Cleanup(func() { c.Close() })
		nodes = append(nodes, c)
	}
	WaitFor(t, 15*time.Second, "cluster of "+fmt.Sprint(n)+" formed", func() bool {
		for _, c := range nodes {
			srv, err := c.Node.Servers()
			if err != nil || len(srv) != n || len(c.State.Nodes()) != n {
				return false
			}
			if id, _ := c.Node.Leader(); id == "" {
				return false
			}
		}
		return true
	})
	return nodes
}

// Leader returns the node that leads among the given ones (nil if none).
func Leader(nodes []*Controller) *Controller {
	for _, c := range nodes {
		if c != nil && c.Node.IsLeader() {
			return c
		}
	}
	return nil
}

// Follower returns the first of the given nodes that is not leader (nil if none).
func Follower(nodes []*Controller, leader *Controller) *Controller {
	for _, c := range nodes {
		if c != nil && c != leader {
			return c
		}
	}
	return nil
}

// WaitFor polls cond until it holds or fails the test after timeout (the one
// implementation is testutil.WaitFor; this name saves tests an import).
var WaitFor = testutil.WaitFor

// StopLeader closes the node that leads and returns it and the others once they have
// elected a new leader among themselves.
func StopLeader(t testing.TB, nodes []*Controller) (old *Controller, survivors []*Controller) {
	t.Helper()
	if old = Leader(nodes); old == nil {
		t.Fatal("no leader to stop")
	}
	old.Close()
	for _, c := range nodes {
		if c != old {
			survivors = append(survivors, c)
		}
	}
	WaitFor(t, 15*time.Second, "a new leader among the survivors", func() bool { return Leader(survivors) != nil })
	return old, survivors
}
