package lease

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/testutil"
)

// The commit point through the manager: who may commit, that a committed attempt's silence
// does not requeue its job after a TTL (an uncommitted twin is requeued meanwhile), that
// the grace ends it for the operator with the agent and the domain named, and that a new
// term keeps the grace.
func TestCommitPoint(t *testing.T) {
	st := state.New()
	a := state.NewLocalApplier(st)
	const ttl, grace = time.Second, 5 * time.Second
	m := New(Config{TTL: ttl, CommitGrace: grace, Logger: testutil.Logger()}, st, a, nil)
	stop := runManager(t, m)
	for _, id := range []string{"committed", "twin", "cancelled"} {
		mustApply(t, a, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef(id, "")})
	}
	toks := map[string]proto.LeaseToken{}
	for range 3 {
		l, err := m.Lease(context.Background(), proto.LeaseRequest{Agent: "ag1", MaxJobs: 3, WaitSeconds: 2})
		if err != nil || l == nil || l.Attempt != 1 {
			t.Fatalf("lease: %+v %v", l, err)
		}
		toks[l.JobID] = l.LeaseToken
	}
	commit := func(id, agent string) (proto.CommitResponse, error) {
		return m.Commit(proto.CommitRequest{LeaseToken: toks[id], Agent: agent, Domain: "vm-" + id, LibvirtURI: "qemu:///system"})
	}

	if _, err := commit("committed", "ag2"); !errors.Is(err, ErrStale) {
		t.Fatalf("another agent's commit: %v, want stale", err)
	}
	if _, err := m.Commit(proto.CommitRequest{LeaseToken: proto.LeaseToken{JobID: "committed", Attempt: 2}, Agent: "ag1"}); !errors.Is(err, ErrStale) {
		t.Fatalf("a commit of the wrong attempt: %v, want stale", err)
	}
	resp, err := commit("committed", "ag1")
	if err != nil || !resp.Committed || resp.GraceSeconds != grace.Seconds() {
		t.Fatalf("commit: %+v %v", resp, err)
	}
	if again, err := commit("committed", "ag1"); err != nil || !again.Committed {
		t.Fatalf("a retried commit: %+v %v", again, err)
	}
	if _, err := a.Apply(state.MustEncode(state.CmdCancelJobs, state.CancelJobs{JobIDs: []string{"cancelled"}, At: t0})); err != nil {
		t.Fatal(err)
	}
	if resp, err := commit("cancelled", "ag1"); err != nil || resp.Committed || !resp.Cancel {
		t.Fatalf("commit of a cancelled job: %+v %v, want cancel and not committed", resp, err)
	}
	if j, _ := st.Job("cancelled"); j.Commit != nil {
		t.Fatalf("a cancelled job was committed: %+v", j.Commit)
	}

	// ag1 goes silent. The uncommitted twin is requeued after its TTL; the committed job
	// is still running then (its grace is far longer), also across a new term.
	testutil.WaitFor(t, 10*time.Second, "the uncommitted twin requeued", func() bool {
		s, _ := status(st, "twin")
		return s == proto.StatusPending
	})
	if s, _ := status(st, "committed"); s != proto.StatusRunning {
		t.Fatalf("the committed job is %s one TTL after its agent went silent, want running", s)
	}
	stop()
	runManager(t, m)
	if ok := m.timers.Len() > 0; !ok {
		t.Fatal("the new term armed no timer for the committed lease")
	}
	if s, _ := status(st, "committed"); s != proto.StatusRunning {
		t.Fatalf("the committed job is %s after a new term, want running", s)
	}
	testutil.WaitFor(t, 3*grace, "the grace runs out", func() bool {
		s, _ := status(st, "committed")
		return s != proto.StatusRunning
	})
	j, _ := st.Job("committed")
	if j.Status != proto.StatusFailed || j.Attempt != 1 || j.Error == nil {
		t.Fatalf("after the grace: %s attempt %d, want failed at attempt 1 (never requeued)", j.Status, j.Attempt)
	}
	for _, want := range []string{"agent ag1", `"vm-committed" on qemu:///system`, "virsh dominfo vm-committed", "resubmit"} {
		if !strings.Contains(*j.Error, want) {
			t.Errorf("the job's error %q does not say %q", *j.Error, want)
		}
	}
	// The late agent's reports are refused: its domain stays where the error says.
	if err := m.Complete(proto.CompleteRequest{LeaseToken: toks["committed"], Agent: "ag1"}); !errors.Is(err, ErrStale) {
		t.Fatalf("a complete after the grace: %v, want stale", err)
	}
}

// Heartbeats keep a committed lease alive as before; the commit re-arms it with the grace
// even if a TTL timer armed before the commit had fired already (the expiry is stale).
func TestCommittedLeaseRenewedAndTTLExpiryStale(t *testing.T) {
	st := state.New()
	a := state.NewLocalApplier(st)
	const ttl = time.Second
	m := New(Config{TTL: ttl, CommitGrace: time.Hour, Logger: testutil.Logger()}, st, a, nil)
	runManager(t, m)
	mustApply(t, a, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef("j", "")})
	l := lease(t, m, "ag", 2)
	if _, err := m.Commit(proto.CommitRequest{LeaseToken: l.LeaseToken, Agent: "ag"}); err != nil {
		t.Fatal(err)
	}
	// A TTL expiry armed before the commit, committed now: refused, the job runs on.
	_, err := a.Apply(state.MustEncode(state.CmdLeaseExpire, state.LeaseExpire{LeaseToken: state.LeaseToken{JobID: "j", Attempt: 1}, Reason: "ttl", At: t0}))
	if !errors.Is(err, state.ErrStaleLease) {
		t.Fatalf("a TTL expiry of a committed lease: %v, want stale", err)
	}
	resp, err := m.Heartbeat(proto.HeartbeatRequest{Agent: "ag", Leases: []proto.LeaseToken{l.LeaseToken}})
	if err != nil || len(resp.Lost) != 0 {
		t.Fatalf("heartbeat of a committed lease: %+v %v", resp, err)
	}
	if agent, ok := m.timers.Holds(state.LeaseToken{JobID: "j", Attempt: 1}); !ok || agent != "ag" {
		t.Fatal("the committed lease has no timer")
	}
	time.Sleep(5 * ttl / 2) // a lower bound only: the lease must outlive several TTLs
	if s, _ := status(st, "j"); s != proto.StatusRunning {
		t.Fatalf("committed job %s after 2.5 TTLs of silence with an hour's grace", s)
	}
}
