package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/testutil"
)

// Real raft nodes in one process on 127.0.0.1:0, the shape of rqlite's store tests.

// testNode is one node and what it needs to be reopened.
type testNode struct {
	*Node
	st  *state.State
	cfg Config
}

func testConfig(t *testing.T, id string, bootstrap bool) Config {
	cfg := FastConfig()
	cfg.NodeID, cfg.DataDir, cfg.RaftAddr = id, t.TempDir(), "127.0.0.1:0"
	cfg.Bootstrap, cfg.NoSync, cfg.Logger = bootstrap, true, testutil.Logger().With("node", id)
	return cfg
}

func mustOpen(t *testing.T, cfg Config) *testNode {
	t.Helper()
	st := state.New()
	n, err := Open(cfg, st)
	if err != nil {
		t.Fatalf("open %s: %v", cfg.NodeID, err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{Node: n, st: st, cfg: cfg}
}

// reopen closes the node and opens it again on the same data dir and raft address.
func (n *testNode) reopen(t *testing.T) *testNode {
	t.Helper()
	cfg := n.cfg
	cfg.RaftAddr, cfg.Bootstrap = n.RaftAddr(), false
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	return mustOpen(t, cfg)
}

func waitLeader(t *testing.T, nodes ...*testNode) *testNode {
	t.Helper()
	var leader *testNode
	testutil.WaitFor(t, 10*time.Second, "a leader", func() bool {
		for _, n := range nodes {
			if n.IsLeader() {
				leader = n
				return true
			}
		}
		return false
	})
	return leader
}

func submit(t *testing.T, n *testNode, id string) {
	t.Helper()
	def := proto.JobDefinition{ID: id, VMPath: "DC0/vm/" + id, Source: proto.Source{Type: "vsphere", VCenterURL: "127.0.0.1:1"},
		Destination: proto.Destination{Type: "kvm"}}
	if _, err := n.Apply(state.MustEncode(state.CmdSubmitJob, state.SubmitJob{Definition: def})); err != nil {
		t.Fatalf("submit %s on %s: %v", id, n.ID(), err)
	}
}

func waitJob(t *testing.T, n *testNode, id string) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("job %s on %s", id, n.ID()), func() bool {
		_, ok := n.st.Job(id)
		return ok
	})
}

func servers(t *testing.T, n *testNode) []Server {
	t.Helper()
	s, err := n.Servers()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(s, func(a, b Server) int {
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	return s
}

// cluster3 opens n1 (bootstrapping) and joins n2 and n3 to it; mutate (may be nil)
// changes n1's configuration.
func cluster3(t *testing.T, mutate func(*Config)) []*testNode {
	t.Helper()
	cfg := testConfig(t, "n1", true)
	if mutate != nil {
		mutate(&cfg)
	}
	n1 := mustOpen(t, cfg)
	waitLeader(t, n1)
	nodes := []*testNode{n1}
	for _, id := range []string{"n2", "n3"} {
		n := mustOpen(t, testConfig(t, id, false))
		if err := n1.Join(id, n.RaftAddr()); err != nil {
			t.Fatalf("join %s: %v", id, err)
		}
		nodes = append(nodes, n)
	}
	return nodes
}

func TestOpenBootstrapsOneNodeAndApplies(t *testing.T) {
	n := mustOpen(t, testConfig(t, "solo", true))
	waitLeader(t, n)
	submit(t, n, "j1")
	if _, ok := n.st.Job("j1"); !ok {
		t.Fatal("applied job missing from the state")
	}
	if got := servers(t, n); len(got) != 1 || got[0] != (Server{ID: "solo", RaftAddr: n.RaftAddr(), Voter: true}) {
		t.Fatalf("servers %+v", got)
	}
	if !n.HasExistingState() {
		t.Fatal("a bootstrapped node has state")
	}
	if id, addr := n.Leader(); id != "solo" || addr != n.RaftAddr() {
		t.Fatalf("leader %s at %s", id, addr)
	}
}

func TestOpenWithoutBootstrapWaitsToBeAdded(t *testing.T) {
	n := mustOpen(t, testConfig(t, "lone", false))
	if n.HasExistingState() {
		t.Fatal("a new node without bootstrap has no state")
	}
	// With no configuration it can never elect itself.
	if _, err := n.Apply(state.MustEncode(state.CmdRemoveNode, state.RemoveNode{ID: "x"})); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("apply on a node without a cluster: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := n.WaitForLeader(ctx); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("WaitForLeader: %v", err)
	}
}

func TestOpenRefusesBadConfig(t *testing.T) {
	cases := map[string]func(*Config){
		"no node id":            func(c *Config) { c.NodeID = "" },
		"bad raft address":      func(c *Config) { c.RaftAddr = "nope" },
		"unspecified, no adv.":  func(c *Config) { c.RaftAddr = "0.0.0.0:0" },
		"bad advertise address": func(c *Config) { c.RaftAdvertise = "nope" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t, "bad", true)
			mutate(&cfg)
			if n, err := Open(cfg, state.New()); err == nil {
				n.Close()
				t.Fatal("opened")
			}
		})
	}
}

func TestJoinReplicatesAndIsIdempotent(t *testing.T) {
	nodes := cluster3(t, nil)
	n1 := nodes[0]
	want := []Server{{"n1", n1.RaftAddr(), true}, {"n2", nodes[1].RaftAddr(), true}, {"n3", nodes[2].RaftAddr(), true}}
	if got := servers(t, n1); !slices.Equal(got, want) {
		t.Fatalf("servers %+v, want %+v", got, want)
	}
	submit(t, n1, "j1")
	for _, n := range nodes {
		waitJob(t, n, "j1")
	}
	// The same id and address again: nothing changes.
	if err := n1.Join("n2", nodes[1].RaftAddr()); err != nil {
		t.Fatal(err)
	}
	if got := servers(t, n1); !slices.Equal(got, want) {
		t.Fatalf("after a repeated join: %+v", got)
	}
	// Join and Remove are the leader's.
	for _, n := range nodes[1:] {
		if err := n.Join("n9", "127.0.0.1:1"); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("join on follower %s: %v", n.ID(), err)
		}
		if err := n.Remove("n3"); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("remove on follower %s: %v", n.ID(), err)
		}
		if _, err := n.Apply(state.MustEncode(state.CmdRemoveNode, state.RemoveNode{ID: "x"})); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("apply on follower %s: %v", n.ID(), err)
		}
	}
	if err := n1.Join("", "127.0.0.1:1"); err == nil {
		t.Fatal("join without an id accepted")
	}
}

// A known id at a new address replaces the old entry (a node restarted elsewhere); a
// known address under a new id replaces it too (a data dir wiped and reused).
func TestJoinReplacesChangedMember(t *testing.T) {
	nodes := cluster3(t, nil)
	n1, n3 := nodes[0], nodes[2]
	// n3 restarts on a new address with its data dir.
	cfg := n3.cfg
	cfg.RaftAddr, cfg.Bootstrap = "127.0.0.1:0", false
	n3.Close()
	n3 = mustOpen(t, cfg)
	if err := n1.Join("n3", n3.RaftAddr()); err != nil {
		t.Fatal(err)
	}
	got := servers(t, n1)
	if len(got) != 3 || got[2] != (Server{"n3", n3.RaftAddr(), true}) {
		t.Fatalf("servers after n3 moved: %+v", got)
	}
	submit(t, n1, "after-move")
	waitJob(t, n3, "after-move")

	// A new id at n2's address: n2 is replaced.
	if err := n1.Join("n2b", nodes[1].RaftAddr()); err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, s := range servers(t, n1) {
		ids = append(ids, s.ID)
	}
	if !slices.Equal(ids, []string{"n1", "n2b", "n3"}) {
		t.Fatalf("servers after a new id at n2's address: %v", ids)
	}
}

// A restarted node (same data dir, no bootstrap, no join) is a member again and catches
// up with what was committed while it was away.
func TestRestartRejoinsAndCatchesUp(t *testing.T) {
	nodes := cluster3(t, nil)
	n1 := nodes[0]
	submit(t, n1, "before")
	waitJob(t, nodes[2], "before")
	n3 := nodes[2].reopen(t)
	if !n3.HasExistingState() {
		t.Fatal("restarted node lost its state")
	}
	submit(t, n1, "while-away")
	waitJob(t, n3, "before")
	waitJob(t, n3, "while-away")
	testutil.WaitFor(t, 10*time.Second, "n3 follows n1", func() bool {
		id, _ := n3.Leader()
		return id == "n1" && n3.State() == "Follower"
	})

	// The whole cluster restarts: a leader is elected and nothing is lost.
	var again []*testNode
	for _, n := range []*testNode{n1, nodes[1], n3} {
		again = append(again, n.reopen(t))
	}
	leader := waitLeader(t, again...)
	submit(t, leader, "after-restart")
	for _, n := range again {
		for _, id := range []string{"before", "while-away", "after-restart"} {
			waitJob(t, n, id)
		}
	}
}

func TestRemoveMember(t *testing.T) {
	nodes := cluster3(t, nil)
	n1 := nodes[0]
	if err := n1.Remove("n3"); err != nil {
		t.Fatal(err)
	}
	if got := servers(t, n1); len(got) != 2 || got[0].ID != "n1" || got[1].ID != "n2" {
		t.Fatalf("servers after remove: %+v", got)
	}
	if err := n1.Remove("n3"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("remove of a removed node: %v", err)
	}
	// The two left still commit (a majority of two is both).
	submit(t, n1, "after-remove")
	waitJob(t, nodes[1], "after-remove")
}

// leaderWork records, per node, the terms of leader work: started, and stopped when its
// context ends.
type leaderWork struct {
	mu      sync.Mutex
	running map[string]int
	started map[string]int
}

func newLeaderWork() *leaderWork {
	return &leaderWork{running: map[string]int{}, started: map[string]int{}}
}

func (w *leaderWork) register(n *testNode) {
	id := n.ID()
	n.OnLeadership(func(ctx context.Context) {
		w.mu.Lock()
		w.running[id]++
		w.started[id]++
		w.mu.Unlock()
		<-ctx.Done()
		w.mu.Lock()
		w.running[id]--
		w.mu.Unlock()
	})
}

func (w *leaderWork) get(id string) (running, started int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.running[id], w.started[id]
}

// Leader work runs on the leader only, stops when leadership ends, and starts on the next
// leader; work registered late joins the current term.
func TestLeaderWorkStartsAndStops(t *testing.T) {
	nodes := cluster3(t, nil)
	w := newLeaderWork()
	for _, n := range nodes {
		w.register(n) // n1 leads already: its registration joins the current term
	}
	testutil.WaitFor(t, 5*time.Second, "leader work on n1", func() bool { r, _ := w.get("n1"); return r == 1 })
	for _, id := range []string{"n2", "n3"} {
		if r, s := w.get(id); r != 0 || s != 0 {
			t.Fatalf("follower %s ran leader work (%d running, %d started)", id, r, s)
		}
	}
	if err := nodes[0].Close(); err != nil {
		t.Fatal(err)
	}
	if r, _ := w.get("n1"); r != 0 {
		t.Fatal("leader work still running after Close")
	}
	leader := waitLeader(t, nodes[1:]...)
	testutil.WaitFor(t, 10*time.Second, "leader work on the new leader", func() bool { r, _ := w.get(leader.ID()); return r == 1 })
	// A leadership transfer is a new term on another node: the old leader's work stops.
	if err := leader.raft.LeadershipTransfer().Error(); err != nil {
		t.Fatal(err)
	}
	other := nodes[1]
	if leader == other {
		other = nodes[2]
	}
	testutil.WaitFor(t, 10*time.Second, "work moved with the leadership", func() bool {
		r1, _ := w.get(leader.ID())
		r2, _ := w.get(other.ID())
		return r1 == 0 && r2 == 1
	})
}

// failingBarrier fails the first n barriers (every one when n < 0) and counts them all.
type failingBarrier struct {
	n     int64
	calls atomic.Int64
}

func (b *failingBarrier) barrier(r *raft.Raft, timeout time.Duration) error {
	c := b.calls.Add(1)
	if b.n < 0 || c <= b.n {
		return fmt.Errorf("injected barrier failure %d", c)
	}
	return r.Barrier(timeout).Error()
}

// Fault 2 of issue 11: a failed Barrier after an election left the node leading with no
// leader work (no lease manager, scheduler or webhook delivery) until the next election.
// It is retried until it succeeds.
func TestBarrierFailureIsRetried(t *testing.T) {
	fb := &failingBarrier{n: 4}
	cfg := testConfig(t, "solo", true)
	cfg.barrier = fb.barrier
	n := mustOpen(t, cfg)
	w := newLeaderWork()
	w.register(n)
	testutil.WaitFor(t, 20*time.Second, "leader work after the barrier succeeded", func() bool { r, _ := w.get("solo"); return r == 1 })
	if c := fb.calls.Load(); c != 5 || !n.IsLeader() {
		t.Fatalf("%d barriers (want 4 failed + 1), leader %v", c, n.IsLeader())
	}
}

// Fault 2 of issue 11, the other half: a leader that cannot establish leadership at all
// steps down, and a node that can takes over with the leader work.
func TestLeaderThatCannotEstablishStepsDown(t *testing.T) {
	fb := &failingBarrier{n: -1}
	nodes := cluster3(t, func(c *Config) { c.barrier = fb.barrier })
	n1 := nodes[0]
	w := newLeaderWork()
	for _, n := range nodes {
		w.register(n)
	}
	var leader *testNode
	testutil.WaitFor(t, 30*time.Second, "another node leads with its leader work", func() bool {
		for _, n := range nodes[1:] {
			if r, _ := w.get(n.ID()); r == 1 && n.IsLeader() {
				leader = n
				return true
			}
		}
		return false
	})
	if _, s := w.get("n1"); s != 0 {
		t.Fatalf("n1 ran leader work without a barrier (%d terms)", s)
	}
	submit(t, leader, "after-step-down")
	waitJob(t, n1, "after-step-down")
}
