package membership_test

import (
	"context"
	"errors"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/capacity"
	"github.com/hypersdk/hypersdk/agent/membership"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip"
	"github.com/hypersdk/hypersdk/shared/gossip/gossiptest"
)

const deadline = 10 * time.Second

func startAgent(t *testing.T, name string, join ...string) *membership.Membership {
	t.Helper()
	cfg := membership.Config{
		Gossip:  gossiptest.Config(proto.RoleAgent, name),
		Name:    name,
		APIAddr: "127.0.0.1:9090",
		Version: "v-test",
		MaxJobs: 3,
		Join:    join,
		// No refresh during the test: the controller's view is compared with Meta().
		RefreshInterval: time.Hour,
		Prober:          capacity.New(capacity.Config{StorageDir: t.TempDir(), LibvirtURI: "test:///default"}),
		Logger:          gossiptest.Logger(),
	}
	m, err := membership.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown() })
	return m
}

func TestAgentAdvertisesHost(t *testing.T) {
	t.Parallel()
	ctl := gossiptest.Start(t, gossiptest.Config(proto.RoleController, "c1"))
	agent := startAgent(t, "kvm01", ctl.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if err := agent.WaitJoined(ctx); err != nil {
		t.Fatal(err)
	}
	name := gossip.MemberName(proto.RoleAgent, "kvm01")
	var seen gossip.Member
	gossiptest.Eventually(t, deadline, func() bool {
		var ok bool
		seen, ok = ctl.Member(name)
		return ok && seen.State == gossip.StateAlive
	}, "controller does not see the agent")

	meta := agent.Meta()
	if !reflect.DeepEqual(seen.Node.Capacity, meta.Capacity) || seen.Node.MaxJobs != 3 || seen.Node.APIAddr != "127.0.0.1:9090" || seen.Node.Version != "v-test" {
		t.Fatalf("controller sees %+v, agent advertises %+v", seen.Node, meta)
	}
	c := seen.Node.Capacity
	if c.CPUs == 0 || c.MemoryTotalBytes == 0 || c.StorageTotalBytes == 0 {
		t.Fatalf("host not measured: %+v", c)
	}
	if c.MemoryFreeBytes%(64<<20) != 0 || c.StorageFreeBytes%(64<<20) != 0 {
		t.Fatalf("free bytes not rounded to 64 MiB: %+v", c)
	}
	if !seen.Node.Capabilities.QemuImg || !seen.Node.Capabilities.LibvirtReachable || len(seen.Node.Capabilities.Methods) == 0 {
		t.Fatalf("capabilities not carried: %+v", seen.Node.Capabilities)
	}

	agent.SetRunningJobs(2)
	gossiptest.Eventually(t, deadline, func() bool {
		m, _ := ctl.Member(name)
		return m.Node.RunningJobs == 2
	}, "running jobs not re-advertised")

	// A refresh of an unchanged host keeps the jobs count (no lost update).
	if err := agent.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if agent.Meta().RunningJobs != 2 {
		t.Fatalf("refresh reset running jobs: %+v", agent.Meta())
	}

	if err := agent.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	gossiptest.Eventually(t, deadline, func() bool { m, _ := ctl.Member(name); return m.State == gossip.StateLeft },
		"graceful leave not seen as left")
}

func TestWaitJoined(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody := l.Addr().String()
	l.Close()

	alone := startAgent(t, "alone")
	if err := alone.WaitJoined(context.Background()); err != nil {
		t.Fatalf("no join list: %v", err)
	}

	orphan := startAgent(t, "orphan", nobody)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := orphan.WaitJoined(ctx); !errors.Is(err, membership.ErrNotJoined) {
		t.Fatalf("unreachable seed: %v", err)
	}
	// Shutdown ends the background join, which then reports failure at once.
	orphan.Shutdown()
	if err := orphan.WaitJoined(context.Background()); !errors.Is(err, membership.ErrNotJoined) {
		t.Fatalf("after shutdown: %v", err)
	}
}

func TestStartNeedsProber(t *testing.T) {
	_, err := membership.Start(context.Background(), membership.Config{Gossip: gossiptest.Config(proto.RoleAgent, "x"), Name: "x"})
	if !errors.Is(err, gossip.ErrConfig) {
		t.Fatalf("err = %v", err)
	}
}
