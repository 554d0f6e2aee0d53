package lease

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/testutil"
)

// The manager over a state and a local applier: the broker, timers and reports without raft.

func jobDef(id, method string) proto.JobDefinition {
	return proto.JobDefinition{ID: id, VMPath: "DC0/vm/" + id, CreatedAt: t0,
		Source:      proto.Source{Type: "vsphere", VCenterURL: "https://vc-" + id + ".example/sdk", Username: "u", Password: "p"},
		Destination: proto.Destination{Type: "kvm"}, Options: proto.Options{ConversionMethod: method}}
}

func mustApply(t testing.TB, a Applier, ct state.CommandType, payload any) {
	t.Helper()
	if _, err := a.Apply(state.MustEncode(ct, payload)); err != nil {
		t.Fatal(err)
	}
}

// runManager runs m as leader until the test ends (or the returned stop is called).
func runManager(t *testing.T, m *Manager) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	testutil.WaitFor(t, 5*time.Second, "manager leading", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.leading
	})
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func lease(t *testing.T, m *Manager, agent string, wait int) *proto.Lease {
	t.Helper()
	l, err := m.Lease(context.Background(), proto.LeaseRequest{Agent: agent, MaxJobs: 2, WaitSeconds: wait})
	if err != nil {
		t.Fatalf("lease for %s: %v", agent, err)
	}
	return l
}

func status(st *state.State, id string) (proto.JobStatus, int) {
	j, _ := st.Job(id)
	return j.Status, j.Attempt
}

// Grant, renewals that keep a lease past its TTL, expiry when they stop, the next attempt,
// and the fence: a stale or foreign report is refused.
func TestBrokerLeaseLifecycle(t *testing.T) {
	st := state.New()
	a := state.NewLocalApplier(st)
	const ttl = time.Second
	m := New(Config{TTL: ttl, Logger: testutil.Logger()}, st, a, nil)
	runManager(t, m)
	mustApply(t, a, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef("j1", "")})

	l := lease(t, m, "ag1", 2)
	if l == nil || l.JobID != "j1" || l.Attempt != 1 || l.Definition.Source.Password != "p" || l.TTLSeconds != ttl.Seconds() {
		t.Fatalf("lease %+v", l)
	}
	// Renewals (paced like an agent's, every TTL/10) for two TTLs: still running.
	tok := proto.LeaseToken{JobID: "j1", Attempt: 1}
	for deadline := time.Now().Add(2 * ttl); time.Now().Before(deadline); time.Sleep(ttl / 10) {
		if resp, err := m.Heartbeat(proto.HeartbeatRequest{Agent: "ag1", Leases: []proto.LeaseToken{tok}}); err != nil || len(resp.Lost) != 0 {
			t.Fatalf("heartbeat: %+v %v", resp, err)
		}
	}
	if s, _ := status(st, "j1"); s != proto.StatusRunning {
		t.Fatalf("a renewed lease ended: %s", s)
	}
	// Another agent's report with the token is refused; so is the owner's after expiry.
	if err := m.Complete(proto.CompleteRequest{LeaseToken: tok, Agent: "ag2"}); !errors.Is(err, ErrStale) {
		t.Fatalf("foreign complete: %v", err)
	}
	testutil.WaitFor(t, 5*time.Second, "expiry requeues", func() bool { s, _ := status(st, "j1"); return s == proto.StatusPending })
	if j, _ := st.Job("j1"); !strings.Contains(j.PendingReason, "no heartbeat") {
		t.Fatalf("pending reason after expiry: %q", j.PendingReason)
	}
	if err := m.Complete(proto.CompleteRequest{LeaseToken: tok, Agent: "ag1"}); !errors.Is(err, ErrStale) {
		t.Fatalf("stale complete: %v", err)
	}
	resp, _ := m.Heartbeat(proto.HeartbeatRequest{Agent: "ag1", Leases: []proto.LeaseToken{tok}})
	if len(resp.Lost) != 1 {
		t.Fatalf("heartbeat of an expired lease: %+v", resp)
	}
	l = lease(t, m, "ag2", 2)
	if l == nil || l.Attempt != 2 {
		t.Fatalf("second lease %+v", l)
	}
	final := proto.Progress{Stage: proto.StageCompleted, CurrentBytes: 10, TotalBytes: 10}
	if err := m.Complete(proto.CompleteRequest{LeaseToken: l.LeaseToken, Agent: "ag2", Progress: &final}); err != nil {
		t.Fatal(err)
	}
	if j, _ := st.Job("j1"); j.Status != proto.StatusCompleted || j.Progress.CurrentBytes != 10 {
		t.Fatalf("after complete: %s %+v", j.Status, j.Progress)
	}
	testutil.WaitFor(t, 5*time.Second, "the ended job's timer stopped", func() bool { return m.timers.Len() == 0 })
}

// A new term re-arms running leases at a full TTL, and a node that stopped leading
// answers ErrNotLeader.
func TestBrokerTerms(t *testing.T) {
	st := state.New()
	a := state.NewLocalApplier(st)
	m := New(Config{TTL: time.Hour, Logger: testutil.Logger()}, st, a, nil)
	stop := runManager(t, m)
	mustApply(t, a, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef("j1", "")})
	if l := lease(t, m, "ag", 2); l == nil {
		t.Fatal("no lease")
	}
	stop()
	if _, err := m.Lease(context.Background(), proto.LeaseRequest{Agent: "ag", WaitSeconds: 1}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("lease off term: %v", err)
	}
	if _, err := m.Heartbeat(proto.HeartbeatRequest{Agent: "ag"}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("heartbeat off term: %v", err)
	}
	if m.timers.Len() != 0 {
		t.Fatal("timers left after the term")
	}
	runManager(t, m)
	if agent, ok := m.timers.Holds(state.LeaseToken{JobID: "j1", Attempt: 1}); !ok || agent != "ag" {
		t.Fatal("the new term did not re-arm the running lease")
	}
}

// Fault 7 of issue 11: the broker keeps a job demanding vddk from an agent without it
// while an agent with vddk is busy; pending_reason says so (it said nothing).
func TestBrokerAndPendingReasonAgreeOnMethod(t *testing.T) {
	st := state.New()
	a := state.NewLocalApplier(st)
	fleet := fakeFleet{
		{Name: "with-vddk", State: proto.AgentAlive, RunningJobs: 1, MaxJobs: 1, Capabilities: proto.AgentCapabilities{Methods: []string{"vddk", "https"}}},
		{Name: "without", State: proto.AgentAlive, MaxJobs: 2, Capabilities: proto.AgentCapabilities{Methods: []string{"https"}}},
	}
	m := New(Config{Logger: testutil.Logger()}, st, a, fleet)
	runManager(t, m)
	mustApply(t, a, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef("v", "vddk")})
	l, err := m.Lease(context.Background(), proto.LeaseRequest{Agent: "without", MaxJobs: 2, WaitSeconds: 1,
		Capabilities: proto.AgentCapabilities{Methods: []string{"https"}}})
	if err != nil || l != nil {
		t.Fatalf("the agent without vddk got %+v %v", l, err)
	}
	j, _ := st.Job("v")
	if r := m.PendingReasons()(j); !strings.Contains(r, "vddk") {
		t.Fatalf("pending reason %q does not say the job waits for an agent with vddk", r)
	}
}

// Fault 6 of issue 11: the pending reason walked every running job (parsing its vCenter
// URL) for every pending job of a query. Per job it now costs the same with 10 or 2000
// running jobs (counted in allocations, not time).
func TestPendingReasonCostDoesNotGrowWithRunningJobs(t *testing.T) {
	allocs := map[int]float64{}
	for _, n := range []int{10, 2000} {
		st := state.New()
		a := state.NewLocalApplier(st)
		for i := 0; i < n; i++ {
			id := fmt.Sprint("r", i)
			mustApply(t, a, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef(id, "")})
			mustApply(t, a, state.CmdLeaseGrant, state.LeaseGrant{LeaseToken: state.LeaseToken{JobID: id, Attempt: 1}, Agent: fmt.Sprint("a", i%5), At: t0})
		}
		mustApply(t, a, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef("waiting", "")})
		j, _ := st.Job("waiting")
		fleet := fakeFleet{{Name: "a0", State: proto.AgentAlive, MaxJobs: 1}, {Name: "a1", State: proto.AgentAlive, MaxJobs: 1}}
		explain := New(Config{Logger: testutil.Logger()}, st, a, fleet).PendingReasons()
		if r := explain(j); !strings.Contains(r, "busy") {
			t.Fatalf("reason %q", r)
		}
		allocs[n] = testing.AllocsPerRun(50, func() { explain(j) })
	}
	if allocs[2000] > allocs[10] {
		t.Fatalf("allocations per pending reason: %v with 10 running jobs, %v with 2000", allocs[10], allocs[2000])
	}
}

// Placement runs while the broker walks the pending jobs under the state's read lock, and
// apply takes the write lock meanwhile: placement must not take the read lock again (a
// nested RLock waits behind a waiting writer: apply and the broker then hang for good, as
// BenchmarkLeaseGrants showed). Thousands of blocked jobs make every pass long; applies
// must go on.
func TestDispatchNeverBlocksApply(t *testing.T) {
	st := state.New()
	a := state.NewLocalApplier(st)
	m := New(Config{PerVCenterLimit: 1, Logger: testutil.Logger()}, st, a, nil)
	runManager(t, m)
	same := func(id string) proto.JobDefinition {
		d := jobDef(id, "")
		d.Source.VCenterURL = "https://vc.example/sdk"
		return d
	}
	mustApply(t, a, state.CmdSubmitJob, state.SubmitJob{Definition: same("running")})
	mustApply(t, a, state.CmdLeaseGrant, state.LeaseGrant{LeaseToken: state.LeaseToken{JobID: "running", Attempt: 1}, Agent: "x", At: t0})
	defs := make([]proto.JobDefinition, 5000)
	for i := range defs {
		defs[i] = same(fmt.Sprint("blocked-", i))
	}
	mustApply(t, a, state.CmdSubmitBatch, state.SubmitBatch{Definitions: defs})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for k := 0; k < 4; k++ { // agents polling: one dispatch pass after another
		go func(k int) {
			for ctx.Err() == nil {
				m.Lease(ctx, proto.LeaseRequest{Agent: fmt.Sprint("ag", k), MaxJobs: 1, WaitSeconds: 1})
			}
		}(k)
	}
	var applied atomic.Int64
	go func() {
		for i := 0; ctx.Err() == nil; i++ {
			p := proto.Progress{Stage: proto.StageConversion, CurrentBytes: int64(i)}
			if _, err := a.Apply(state.MustEncode(state.CmdProgress, state.ProgressReport{LeaseToken: state.LeaseToken{JobID: "running", Attempt: 1}, Progress: p, At: t0})); err == nil {
				applied.Add(1)
			}
		}
	}()
	testutil.WaitFor(t, 30*time.Second, "2000 applies while the broker places", func() bool { return applied.Load() >= 2000 })
}
