package state

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/proto"
)

func commitOf(id string, attempt int, agent string) LeaseCommit {
	return LeaseCommit{LeaseToken: tok(id, attempt), Agent: agent, Domain: "vm-" + id, LibvirtURI: "qemu:///system", At: t0}
}

// The commit point's rule, one table: who may commit, what a commit fences, and what ends
// a committed attempt (DESIGN.md "Leases" 8, commit.go).
func TestCommitPoint(t *testing.T) {
	type step struct {
		ct      CommandType
		payload any
		wantErr error
		status  proto.JobStatus
		attempt int
		// commit is the attempt the job's commit names after the step (0: none).
		commit int
	}
	grant := func(attempt int, agent string) step {
		return step{CmdLeaseGrant, LeaseGrant{tok("a", attempt), agent, t0}, nil, proto.StatusRunning, attempt, 0}
	}
	expire := func(attempt int, committed bool) LeaseExpire {
		return LeaseExpire{LeaseToken: tok("a", attempt), Reason: "silent: check the host", Committed: committed, At: t0}
	}
	cases := []struct {
		name  string
		steps []step
		// wantError is in the job's error (failed) or warnings (cancelled) at the end.
		wantError string
	}{
		{name: "commit then complete", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), nil, proto.StatusRunning, 1, 1},
			{CmdComplete, CompleteReport{LeaseToken: tok("a", 1), At: t0}, nil, proto.StatusCompleted, 1, 1},
		}},
		{name: "a retried commit is answered the same", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), nil, proto.StatusRunning, 1, 1},
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), nil, proto.StatusRunning, 1, 1},
		}},
		{name: "the lease moved on: the old attempt cannot commit", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseExpire, expire(1, false), nil, proto.StatusPending, 1, 0},
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), ErrStaleLease, proto.StatusPending, 1, 0},
			grant(2, "ag2"),
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), ErrStaleLease, proto.StatusRunning, 2, 0},
			{CmdLeaseCommit, commitOf("a", 2, "ag2"), nil, proto.StatusRunning, 2, 2},
			{CmdComplete, CompleteReport{LeaseToken: tok("a", 1), At: t0}, ErrStaleLease, proto.StatusRunning, 2, 2},
		}},
		{name: "only the lease's agent commits", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseCommit, commitOf("a", 1, "ag2"), ErrStaleLease, proto.StatusRunning, 1, 0},
			{CmdLeaseCommit, commitOf("a", 1, ""), ErrStaleLease, proto.StatusRunning, 1, 0},
		}},
		{name: "a cancelled job does not commit", steps: []step{
			grant(1, "ag1"),
			{CmdCancelJobs, CancelJobs{JobIDs: []string{"a"}}, nil, proto.StatusRunning, 1, 0},
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), ErrInvalidState, proto.StatusRunning, 1, 0},
		}},
		{name: "unknown job", steps: []step{
			{CmdLeaseCommit, commitOf("zz", 1, "ag1"), ErrNotFound, proto.StatusPending, 0, 0},
		}},
		{name: "a pending job cannot be committed", steps: []step{
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), ErrStaleLease, proto.StatusPending, 0, 0},
		}},
		{name: "a TTL expiry armed before the commit is stale", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), nil, proto.StatusRunning, 1, 1},
			{CmdLeaseExpire, expire(1, false), ErrStaleLease, proto.StatusRunning, 1, 1},
			{CmdLeaseGrant, LeaseGrant{tok("a", 2), "ag2", t0}, ErrStaleLease, proto.StatusRunning, 1, 1},
		}},
		{name: "the grace runs out: failed for the operator, never requeued", wantError: "silent: check the host", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), nil, proto.StatusRunning, 1, 1},
			{CmdLeaseExpire, expire(1, true), nil, proto.StatusFailed, 1, 1},
			{CmdLeaseGrant, LeaseGrant{tok("a", 2), "ag2", t0}, ErrStaleLease, proto.StatusFailed, 1, 1},
		}},
		{name: "the grace runs out on a cancelled job: cancelled, with the warning", wantError: "silent: check the host", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), nil, proto.StatusRunning, 1, 1},
			{CmdCancelJobs, CancelJobs{JobIDs: []string{"a"}}, nil, proto.StatusRunning, 1, 1},
			{CmdLeaseExpire, expire(1, true), nil, proto.StatusCancelled, 1, 1},
		}},
		{name: "a grace expiry of an uncommitted lease requeues as before", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseExpire, expire(1, true), nil, proto.StatusPending, 1, 0},
		}},
		{name: "the committed agent's own failure requeues: the next attempt commits afresh", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseCommit, commitOf("a", 1, "ag1"), nil, proto.StatusRunning, 1, 1},
			{CmdFail, FailReport{LeaseToken: tok("a", 1), Error: "libvirtd refused the domain", Retryable: true, At: t0}, nil, proto.StatusPending, 1, 0},
			grant(2, "ag2"),
			{CmdLeaseCommit, commitOf("a", 2, "ag2"), nil, proto.StatusRunning, 2, 2},
		}},
		{name: "a malformed commit changes nothing", steps: []step{
			grant(1, "ag1"),
			{CmdLeaseCommit, "not an object", ErrBadCommand, proto.StatusRunning, 1, 0},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := newApplier(t)
			a.ok(CmdSubmitJob, SubmitJob{Definition: def("a")})
			for i, st := range tc.steps {
				r := a.do(st.ct, st.payload)
				err, _ := r.(error)
				if st.wantErr == nil && err != nil || st.wantErr != nil && !errors.Is(err, st.wantErr) {
					t.Fatalf("step %d %s: got %v, want %v", i, st.ct, err, st.wantErr)
				}
				j := a.job("a")
				commit := 0
				if j.Commit != nil {
					commit = j.Commit.Attempt
				}
				if j.Status != st.status || j.Attempt != st.attempt || commit != st.commit {
					t.Fatalf("step %d %s: job is %s attempt %d commit %d, want %s attempt %d commit %d",
						i, st.ct, j.Status, j.Attempt, commit, st.status, st.attempt, st.commit)
				}
			}
			j := a.job("a")
			if tc.wantError != "" {
				text := strings.Join(j.Warnings, "; ")
				if j.Error != nil {
					text += *j.Error
				}
				if !strings.Contains(text, tc.wantError) {
					t.Fatalf("job error %q, warnings %q: want %q", deref(j.Error), j.Warnings, tc.wantError)
				}
			}
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// A commit names what the agent is about to define, for the operator, and survives a
// snapshot and restore.
func TestCommitIsRecordedAndSnapshotted(t *testing.T) {
	a := newApplier(t)
	a.ok(CmdSubmitJob, SubmitJob{Definition: def("a")})
	a.ok(CmdLeaseGrant, LeaseGrant{tok("a", 1), "ag1", t0})
	if r := a.ok(CmdLeaseCommit, commitOf("a", 1, "ag1")); r != nil {
		t.Fatalf("commit answered %v", r)
	}
	want := proto.JobCommit{Attempt: 1, Agent: "ag1", Domain: "vm-a", LibvirtURI: "qemu:///system", At: t0}
	if got := a.job("a").Commit; got == nil || *got != want {
		t.Fatalf("commit %+v, want %+v", got, want)
	}
	b := New()
	if err := (FSM{b}).Restore(io.NopCloser(bytes.NewReader(persist(t, a.s)))); err != nil {
		t.Fatal(err)
	}
	if got, ok := b.Job("a"); !ok || got.Commit == nil || *got.Commit != want || !Committed(got) {
		t.Fatalf("after restore: %+v", got)
	}
}
