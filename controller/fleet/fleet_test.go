package fleet_test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hypersdk/hypersdk/agent/capacity"
	"github.com/hypersdk/hypersdk/agent/membership"
	"github.com/hypersdk/hypersdk/controller/fleet"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip"
	"github.com/hypersdk/hypersdk/shared/gossip/gossiptest"
)

const deadline = 10 * time.Second

type agentOpts struct {
	maxJobs int
	key     []byte
	tune    func(*memberlist.Config)
}

func startAgent(t *testing.T, name string, join string, o agentOpts) *membership.Membership {
	t.Helper()
	gc := gossiptest.Config(proto.RoleAgent, name)
	gc.SecretKey, gc.Label, gc.Tune = o.key, "hypersdk-test", o.tune
	if o.maxJobs == 0 {
		o.maxJobs = 2
	}
	m, err := membership.Start(context.Background(), membership.Config{
		Gossip: gc, Name: name, APIAddr: "127.0.0.1:0", Version: "v-test", MaxJobs: o.maxJobs,
		Join: []string{join},
		// No refresh during the test: a re-measured free memory would change the expected
		// capacity between two reads.
		RefreshInterval: time.Hour,
		Prober:          capacity.New(capacity.Config{StorageDir: t.TempDir(), LibvirtURI: "test:///default"}),
		Logger:          gossiptest.Logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown() })
	return m
}

func startController(t *testing.T, key []byte, tune func(*memberlist.Config), cfg fleet.Config) (*gossip.Node, *fleet.Fleet) {
	t.Helper()
	gc := gossiptest.Config(proto.RoleController, "c1")
	gc.SecretKey, gc.Label, gc.Tune = key, "hypersdk-test", tune
	n := gossiptest.Start(t, gc)
	cfg.Logger = gossiptest.Logger()
	f := fleet.New(n, cfg)
	t.Cleanup(f.Close)
	return n, f
}

func waitJoined(t *testing.T, agents ...*membership.Membership) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for _, a := range agents {
		if err := a.WaitJoined(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func stateOf(f *fleet.Fleet, name string) proto.AgentState {
	a, _ := f.Get(name)
	return a.State
}

// deaths records OnDead calls.
type deaths struct {
	mu    sync.Mutex
	names []string
}

func (d *deaths) add(name string) { d.mu.Lock(); d.names = append(d.names, name); d.mu.Unlock() }
func (d *deaths) count(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := 0
	for _, n := range d.names {
		if n == name {
			k++
		}
	}
	return k
}

// expected renders the collector's output for these agents in the text format.
func expected(agents ...proto.AgentInfo) string {
	type metric struct{ name, help string }
	ms := []metric{
		{"hypersdk_agent_cpus", "CPUs of the agent's host"},
		{"hypersdk_agent_healthy", "1 while the agent's self-checks pass (libvirt, storage, qemu-img, controllers), 0 while one fails; members only"},
		{"hypersdk_agent_max_jobs", "Job slots of the agent"},
		{"hypersdk_agent_memory_free_bytes", "Available memory of the agent's host (MemAvailable, rounded down)"},
		{"hypersdk_agent_memory_total_bytes", "Memory of the agent's host"},
		{"hypersdk_agent_running_jobs", "Jobs running on the agent"},
		{"hypersdk_agent_storage_free_bytes", "Free bytes in the agent's storage dir (rounded down)"},
		{"hypersdk_agent_up", "1 while the agent is in the gossip pool (alive or suspect), 0 while listed dead; an agent that left cleanly is not reported"},
	}
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", m.name, m.help, m.name)
		for _, a := range agents {
			var v float64
			switch m.name {
			case "hypersdk_agent_up":
				v = 0
				if a.State.Member() {
					v = 1
				}
			case "hypersdk_agent_cpus":
				v = float64(a.Capacity.CPUs)
			case "hypersdk_agent_healthy":
				v = 1
				if len(a.Capacity.FailedChecks) > 0 {
					v = 0
				}
			case "hypersdk_agent_max_jobs":
				v = float64(a.MaxJobs)
			case "hypersdk_agent_memory_free_bytes":
				v = float64(a.Capacity.MemoryFreeBytes)
			case "hypersdk_agent_memory_total_bytes":
				v = float64(a.Capacity.MemoryTotalBytes)
			case "hypersdk_agent_running_jobs":
				v = float64(a.RunningJobs)
			case "hypersdk_agent_storage_free_bytes":
				v = float64(a.Capacity.StorageFreeBytes)
			}
			if a.State == proto.AgentLeft || m.name != "hypersdk_agent_up" && !a.State.Member() {
				continue // a cleanly left agent is not reported at all
			}
			fmt.Fprintf(&b, "%s{agent=%q} %g\n", m.name, a.Name, v)
		}
	}
	return b.String()
}

// A controller and three agents joining through different members; then an update, a
// crash and a graceful leave, as GET /agents, /status and /metrics would show them.
func TestFleetFollowsAgents(t *testing.T) {
	t.Parallel()
	ctl, f := startController(t, nil, nil, fleet.Config{})
	dead := &deaths{}
	f.OnDead(dead.add)

	a1 := startAgent(t, "kvm01", ctl.Addr(), agentOpts{maxJobs: 2})
	waitJoined(t, a1)
	a2 := startAgent(t, "kvm02", a1.Node().Addr(), agentOpts{maxJobs: 3}) // through an agent
	waitJoined(t, a2)
	a3 := startAgent(t, "kvm03", a2.Node().Addr(), agentOpts{maxJobs: 4})
	waitJoined(t, a3)
	agents := map[string]*membership.Membership{"kvm01": a1, "kvm02": a2, "kvm03": a3}

	gossiptest.Eventually(t, deadline, func() bool {
		l := f.List()
		return len(l) == 3 && l[0].State == proto.AgentAlive && l[1].State == proto.AgentAlive && l[2].State == proto.AgentAlive
	}, "fleet does not list 3 alive agents: %+v", f.List())
	list := f.List()
	for i, want := range []string{"kvm01", "kvm02", "kvm03"} {
		got := list[i]
		meta := agents[want].Meta()
		if got.Name != want || !reflect.DeepEqual(got.Capacity, meta.Capacity) || got.MaxJobs != meta.MaxJobs ||
			got.Address != agents[want].Node().Addr() || got.Version != "v-test" {
			t.Fatalf("agent %d = %+v, want name %s capacity %+v", i, got, want, meta.Capacity)
		}
		if !got.Capabilities.QemuImg || !slices.Equal(got.Capabilities.Methods, meta.Capabilities.Methods) || got.LastSeen.IsZero() {
			t.Fatalf("capabilities or last_seen missing: %+v", got)
		}
	}
	if _, ok := f.Get("c1"); ok {
		t.Fatal("the controller is listed as an agent")
	}
	if total, busy := f.Slots(); total != 9 || busy != 0 {
		t.Fatalf("slots = %d/%d, want 9/0", total, busy)
	}

	// A fleet started after the pool formed sees the same agents (controller restart of
	// the view, or a second consumer).
	late := fleet.New(ctl, fleet.Config{Logger: gossiptest.Logger()})
	t.Cleanup(late.Close)
	gossiptest.Eventually(t, deadline, func() bool { return len(late.List()) == 3 }, "late fleet: %+v", late.List())

	// The agent starts two jobs.
	before, _ := f.Get("kvm02")
	a2.SetRunningJobs(2)
	gossiptest.Eventually(t, deadline, func() bool { a, _ := f.Get("kvm02"); return a.RunningJobs == 2 },
		"running jobs not updated")
	if after, _ := f.Get("kvm02"); !after.LastSeen.After(before.LastSeen) {
		t.Fatalf("last_seen not advanced by the update: %v -> %v", before.LastSeen, after.LastSeen)
	}
	if total, busy := f.Slots(); total != 9 || busy != 2 {
		t.Fatalf("slots = %d/%d, want 9/2", total, busy)
	}

	// kvm03 crashes: memberlist shut down without a leave.
	a3.Shutdown()
	crashedAt := time.Now()
	gossiptest.Eventually(t, deadline, func() bool { return stateOf(f, "kvm03") == proto.AgentDead },
		"crashed agent not dead: %q", stateOf(f, "kvm03"))
	gossiptest.Eventually(t, deadline, func() bool { return dead.count("kvm03") == 1 }, "OnDead not called for kvm03")
	if d, _ := f.Get("kvm03"); d.LastSeen.After(crashedAt) || d.LastSeen.IsZero() {
		t.Fatalf("dead agent's last_seen %v should predate the crash %v", d.LastSeen, crashedAt)
	}
	if total, busy := f.Slots(); total != 5 || busy != 2 {
		t.Fatalf("slots after crash = %d/%d, want 5/2", total, busy)
	}

	// kvm01 shuts down gracefully.
	if err := a1.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	gossiptest.Eventually(t, deadline, func() bool { return stateOf(f, "kvm01") == proto.AgentLeft },
		"left agent state %q", stateOf(f, "kvm01"))
	gossiptest.Eventually(t, deadline, func() bool { return dead.count("kvm01") == 1 }, "OnDead not called for a left agent")
	if got := stateOf(f, "kvm03"); got != proto.AgentDead {
		t.Fatalf("kvm03 changed to %q", got)
	}

	// /metrics: full series for the live agent, up 0 for the others.
	want := expected(f.List()...)
	if err := testutil.CollectAndCompare(f, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(want, `hypersdk_agent_running_jobs{agent="kvm02"} 2`) || !strings.Contains(want, `hypersdk_agent_up{agent="kvm03"} 0`) {
		t.Fatalf("unexpected exposition:\n%s", want)
	}
	if dead.count("kvm03") != 1 || dead.count("kvm02") != 0 {
		t.Fatalf("OnDead calls %v", dead.names)
	}
}

// Dead agents stay listed for DeadRetention, then vanish from the list and the metrics.
func TestDeadAgentsVanishAfterRetention(t *testing.T) {
	t.Parallel()
	ctl, f := startController(t, nil, nil, fleet.Config{DeadRetention: 3 * time.Second})
	keep := startAgent(t, "kvm01", ctl.Addr(), agentOpts{})
	gone := startAgent(t, "kvm02", ctl.Addr(), agentOpts{})
	waitJoined(t, keep, gone)
	gossiptest.Eventually(t, deadline, func() bool { return len(f.List()) == 2 }, "agents not listed")

	gone.Shutdown()
	gossiptest.Eventually(t, deadline, func() bool { return stateOf(f, "kvm02") == proto.AgentDead }, "not dead")
	if n := testutil.CollectAndCount(f, "hypersdk_agent_up"); n != 2 {
		t.Fatalf("%d up series while the dead agent is listed, want 2", n)
	}
	gossiptest.Eventually(t, deadline, func() bool { _, ok := f.Get("kvm02"); return !ok }, "dead agent still listed")
	if n := testutil.CollectAndCount(f); n != 8 {
		t.Fatalf("%d series after the dead agent vanished, want the live agent's 8", n)
	}
}

// A suspect agent (stopped answering, not yet declared dead) is shown suspect and keeps its
// slots; memberlist's suspicion is made long so it is not declared dead meanwhile.
func TestSuspectAgent(t *testing.T) {
	t.Parallel()
	slow := func(c *memberlist.Config) { c.SuspicionMult = 100; c.SuspicionMaxTimeoutMult = 1 }
	ctl, f := startController(t, nil, slow, fleet.Config{})
	a := startAgent(t, "kvm01", ctl.Addr(), agentOpts{maxJobs: 3, tune: slow})
	waitJoined(t, a)
	gossiptest.Eventually(t, deadline, func() bool { return stateOf(f, "kvm01") == proto.AgentAlive }, "not alive")

	a.Shutdown()
	gossiptest.Eventually(t, deadline, func() bool { return stateOf(f, "kvm01") == proto.AgentSuspect },
		"not suspect: %q", stateOf(f, "kvm01"))
	if total, _ := f.Slots(); total != 3 {
		t.Fatalf("suspect agent's slots dropped: %d", total)
	}
	if err := testutil.CollectAndCompare(f, strings.NewReader(expected(f.List()...)), "hypersdk_agent_up"); err != nil {
		t.Fatal(err)
	}
}

// With a gossip key, agents holding another key or none cannot join and never appear.
func TestEncryptedFleet(t *testing.T) {
	t.Parallel()
	key := []byte("0123456789abcdef0123456789abcdef")
	ctl, f := startController(t, key, nil, fleet.Config{})
	for _, tc := range []struct {
		name string
		key  []byte
	}{
		{"kvm-wrong-key", []byte("fedcba9876543210fedcba9876543210")},
		{"kvm-no-key", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startAgent(t, tc.name, ctl.Addr(), agentOpts{key: tc.key})
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			if err := a.WaitJoined(ctx); err == nil {
				t.Fatal("joined an encrypted pool without its key")
			}
			a.Shutdown()
		})
	}
	good := startAgent(t, "kvm01", ctl.Addr(), agentOpts{key: key})
	waitJoined(t, good)
	gossiptest.Eventually(t, deadline, func() bool { return stateOf(f, "kvm01") == proto.AgentAlive }, "keyed agent not listed")
	// kvm01 was admitted after both intruders gave up; they are still absent.
	if l := f.List(); len(l) != 1 {
		t.Fatalf("fleet lists %+v, want only kvm01", l)
	}
}
