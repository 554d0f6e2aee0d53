package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hypersdk/hypersdk/proto"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func def(id string) proto.JobDefinition {
	return proto.JobDefinition{
		ID: id, VMPath: "DC0/vm/" + id, CreatedAt: t0,
		Source:      proto.Source{Type: "vsphere", VCenterURL: "127.0.0.1:8989", Username: "u", Password: "secret"},
		Destination: proto.Destination{Type: "kvm"},
	}
}

// applier feeds commands with increasing raft indexes.
type applier struct {
	t   *testing.T
	s   *State
	idx uint64
}

func newApplier(t *testing.T) *applier { return &applier{t: t, s: New()} }

func (a *applier) do(ct CommandType, payload any) any {
	a.t.Helper()
	a.idx++
	return a.s.Apply(a.idx, MustEncode(ct, payload))
}

func (a *applier) ok(ct CommandType, payload any) any {
	a.t.Helper()
	r := a.do(ct, payload)
	if err, isErr := r.(error); isErr {
		a.t.Fatalf("%s: %v", ct, err)
	}
	return r
}

func (a *applier) job(id string) *proto.Job {
	a.t.Helper()
	j, ok := a.s.Job(id)
	if !ok {
		a.t.Fatalf("job %s missing", id)
	}
	return j
}

func tok(id string, attempt int) LeaseToken { return LeaseToken{JobID: id, Attempt: attempt} }

func TestLifecycle(t *testing.T) {
	type step struct {
		ct      CommandType
		payload any
		wantErr error
		status  proto.JobStatus
		attempt int
		// failedOn: the job's FailedAgents after the step (checked when set).
		failedOn []string
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"complete", []step{
			{CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0}, nil, proto.StatusRunning, 1, nil},
			{CmdProgress, ProgressReport{LeaseToken: tok("a", 1), Progress: proto.Progress{Stage: "conversion", PercentComplete: 50}}, nil, proto.StatusRunning, 1, nil},
			{CmdComplete, CompleteReport{LeaseToken: tok("a", 1), At: t0}, nil, proto.StatusCompleted, 1, nil},
			{CmdComplete, CompleteReport{LeaseToken: tok("a", 1), At: t0}, ErrStaleLease, proto.StatusCompleted, 1, nil},
		}},
		{"grant must be next attempt", []step{
			{CmdLeaseGrant, LeaseGrant{tok("a", 2), "agent1", t0}, ErrStaleLease, proto.StatusPending, 0, nil},
			{CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0}, nil, proto.StatusRunning, 1, nil},
			{CmdLeaseGrant, LeaseGrant{tok("a", 2), "agent2", t0}, ErrStaleLease, proto.StatusRunning, 1, nil},
		}},
		{"expire requeues then fails after max attempts", []step{
			{CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0}, nil, proto.StatusRunning, 1, nil},
			{CmdLeaseExpire, LeaseExpire{LeaseToken: tok("a", 1), Reason: "agent1 stopped renewing", At: t0}, nil, proto.StatusPending, 1, []string{"agent1"}},
			{CmdProgress, ProgressReport{LeaseToken: tok("a", 1)}, ErrStaleLease, proto.StatusPending, 1, nil},
			{CmdLeaseGrant, LeaseGrant{tok("a", 2), "agent2", t0}, nil, proto.StatusRunning, 2, []string{"agent1"}},
			{CmdLeaseExpire, LeaseExpire{LeaseToken: tok("a", 1), Reason: "late", At: t0}, ErrStaleLease, proto.StatusRunning, 2, nil},
			{CmdLeaseExpire, LeaseExpire{LeaseToken: tok("a", 2), Reason: "x", At: t0}, nil, proto.StatusPending, 2, []string{"agent1", "agent2"}},
			{CmdLeaseGrant, LeaseGrant{tok("a", 3), "agent1", t0}, nil, proto.StatusRunning, 3, nil},
			{CmdLeaseExpire, LeaseExpire{LeaseToken: tok("a", 3), Reason: "x", At: t0}, nil, proto.StatusFailed, 3, []string{"agent1", "agent2"}},
		}},
		{"fail final and retryable", []step{
			{CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0}, nil, proto.StatusRunning, 1, nil},
			{CmdFail, FailReport{LeaseToken: tok("a", 1), Error: "transfer reset", Retryable: true}, nil, proto.StatusPending, 1, []string{"agent1"}},
			{CmdLeaseGrant, LeaseGrant{tok("a", 2), "agent1", t0}, nil, proto.StatusRunning, 2, nil},
			{CmdFail, FailReport{LeaseToken: tok("a", 2), Error: "VM not found"}, nil, proto.StatusFailed, 2, nil},
		}},
		{"cancel pending", []step{
			{CmdCancelJobs, CancelJobs{JobIDs: []string{"a"}}, nil, proto.StatusCancelled, 0, nil},
			{CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0}, ErrStaleLease, proto.StatusCancelled, 0, nil},
		}},
		{"cancel running waits for the agent", []step{
			{CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0}, nil, proto.StatusRunning, 1, nil},
			{CmdCancelJobs, CancelJobs{JobIDs: []string{"a"}}, nil, proto.StatusRunning, 1, nil},
			{CmdFail, FailReport{LeaseToken: tok("a", 1), Error: "cancelled", Cancelled: true}, nil, proto.StatusCancelled, 1, nil},
		}},
		{"cancel running then lease expires", []step{
			{CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0}, nil, proto.StatusRunning, 1, nil},
			{CmdCancelJobs, CancelJobs{Status: proto.StatusRunning}, nil, proto.StatusRunning, 1, nil},
			{CmdLeaseExpire, LeaseExpire{LeaseToken: tok("a", 1), Reason: "x", At: t0}, nil, proto.StatusCancelled, 1, nil},
		}},
		{"unasked cancel ack is a failure", []step{
			{CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0}, nil, proto.StatusRunning, 1, nil},
			{CmdFail, FailReport{LeaseToken: tok("a", 1), Error: "stopped", Cancelled: true}, nil, proto.StatusFailed, 1, nil},
		}},
		{"unknown job", []step{
			{CmdProgress, ProgressReport{LeaseToken: tok("zz", 1)}, ErrNotFound, proto.StatusPending, 0, nil},
			{CmdLeaseGrant, LeaseGrant{tok("zz", 1), "agent1", t0}, ErrNotFound, proto.StatusPending, 0, nil},
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
				if j.Status != st.status || j.Attempt != st.attempt {
					t.Fatalf("step %d %s: job is %s attempt %d, want %s attempt %d", i, st.ct, j.Status, j.Attempt, st.status, st.attempt)
				}
				if st.failedOn != nil && !slices.Equal(j.FailedAgents, st.failedOn) {
					t.Fatalf("step %d %s: failed agents %v, want %v", i, st.ct, j.FailedAgents, st.failedOn)
				}
			}
		})
	}
}

func TestSubmitRejectsDuplicatesAtomically(t *testing.T) {
	a := newApplier(t)
	a.ok(CmdSubmitJob, SubmitJob{Definition: def("a")})
	r := a.do(CmdSubmitBatch, SubmitBatch{Definitions: []proto.JobDefinition{def("b"), def("a")}})
	if err, _ := r.(error); !errors.Is(err, ErrExists) {
		t.Fatalf("want ErrExists, got %v", r)
	}
	if _, ok := a.s.Job("b"); ok {
		t.Fatal("half-applied batch: b was stored")
	}
	if r := a.do(CmdSubmitJob, SubmitJob{Definition: proto.JobDefinition{VMPath: "x"}}); !errors.Is(r.(error), ErrBadCommand) {
		t.Fatalf("job without id: %v", r)
	}
}

func TestMalformedEntriesDoNotPanic(t *testing.T) {
	s := New()
	for i, data := range [][]byte{nil, {}, {byte(CmdSubmitJob)}, append([]byte{byte(CmdFail)}, "{not json"...)} {
		if _, ok := s.Apply(uint64(i+1), data).(error); !ok {
			t.Fatalf("entry %d: want an error", i)
		}
	}
}

func TestCancelResult(t *testing.T) {
	a := newApplier(t)
	for _, id := range []string{"p1", "p2", "r1", "done"} {
		a.ok(CmdSubmitJob, SubmitJob{Definition: def(id)})
	}
	a.ok(CmdLeaseGrant, LeaseGrant{tok("r1", 1), "ag", t0})
	a.ok(CmdLeaseGrant, LeaseGrant{tok("done", 1), "ag", t0})
	a.ok(CmdComplete, CompleteReport{LeaseToken: tok("done", 1)})
	r := a.ok(CmdCancelJobs, CancelJobs{JobIDs: []string{"p1", "r1", "done", "nope", "p1"}}).(CancelResult)
	want := CancelResult{Cancelled: []string{"p1", "r1"}, NotFound: []string{"nope"}, Skipped: []string{"done"}}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("got %+v want %+v", r, want)
	}
	r = a.ok(CmdCancelJobs, CancelJobs{Status: proto.StatusPending}).(CancelResult)
	if !reflect.DeepEqual(r.Cancelled, []string{"p2"}) {
		t.Fatalf("cancel by status: %+v", r)
	}
	if got := a.s.RunningByAgent()["ag"]; got != 1 {
		t.Fatalf("running on ag = %d, want 1 (cancel-requested job still runs)", got)
	}
}

func TestQuery(t *testing.T) {
	a := newApplier(t)
	for i := 0; i < 30; i++ {
		a.ok(CmdSubmitJob, SubmitJob{Definition: def(fmt.Sprintf("j%02d", i))})
	}
	for i := 0; i < 10; i++ {
		a.ok(CmdLeaseGrant, LeaseGrant{tok(fmt.Sprintf("j%02d", i), 1), fmt.Sprintf("ag%d", i%2), t0})
	}
	for i := 0; i < 4; i++ {
		a.ok(CmdComplete, CompleteReport{LeaseToken: tok(fmt.Sprintf("j%02d", i), 1)})
	}
	ids := func(r QueryResult) []string {
		var out []string
		for _, j := range r.Jobs {
			out = append(out, j.Definition.ID)
		}
		return out
	}
	cases := []struct {
		name  string
		q     proto.QueryRequest
		ids   []string
		total int
		more  bool
	}{
		{"all newest first", proto.QueryRequest{All: true, Limit: 3}, []string{"j29", "j28", "j27"}, 30, true},
		{"offset", proto.QueryRequest{Limit: 2, Offset: 3}, []string{"j26", "j25"}, 30, true},
		{"status", proto.QueryRequest{Status: proto.StatusList{"running"}, Limit: 10}, []string{"j09", "j08", "j07", "j06", "j05", "j04"}, 6, false},
		{"two statuses merged", proto.QueryRequest{Status: proto.StatusList{"running", "completed"}, Limit: 3, Offset: 5}, []string{"j04", "j03", "j02"}, 10, true},
		{"agent", proto.QueryRequest{Agent: "ag1", Limit: 2}, []string{"j09", "j07"}, 5, true},
		{"agent+status", proto.QueryRequest{Agent: "ag1", Status: proto.StatusList{"completed"}}, []string{"j03", "j01"}, 2, false},
		{"vm path", proto.QueryRequest{VMPath: "DC0/vm/j17"}, []string{"j17"}, 1, false},
		{"ids", proto.QueryRequest{JobIDs: []string{"j01", "zz", "j02"}}, []string{"j01", "j02"}, 2, false},
		{"none", proto.QueryRequest{Status: proto.StatusList{"failed"}}, nil, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := a.s.Query(tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ids(r), tc.ids) || r.Total != tc.total || (r.NextCursor != "") != tc.more {
				t.Fatalf("got %v total %d cursor %q; want %v total %d more %v", ids(r), r.Total, r.NextCursor, tc.ids, tc.total, tc.more)
			}
		})
	}
	// Walking with the cursor visits every pending job exactly once.
	var seen []string
	q := proto.QueryRequest{Status: proto.StatusList{"pending"}, Limit: 7}
	for {
		r, err := a.s.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, ids(r)...)
		if r.NextCursor == "" {
			break
		}
		q.Cursor = r.NextCursor
	}
	if len(seen) != 20 || seen[0] != "j29" || seen[19] != "j10" {
		t.Fatalf("cursor walk: %v", seen)
	}
	if _, err := a.s.Query(proto.QueryRequest{Cursor: "x"}); !errors.Is(err, ErrInvalidCursor) {
		t.Fatalf("bad cursor: %v", err)
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { m.cancelled = true; return nil }
func (m *memSink) Close() error  { return nil }

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	a := newApplier(t)
	for i := 0; i < 50; i++ {
		a.ok(CmdSubmitJob, SubmitJob{Definition: def(fmt.Sprintf("j%02d", i))})
	}
	a.ok(CmdLeaseGrant, LeaseGrant{tok("j01", 1), "ag", t0})
	a.ok(CmdLeaseGrant, LeaseGrant{tok("j02", 1), "ag", t0})
	a.ok(CmdComplete, CompleteReport{LeaseToken: tok("j02", 1), Result: &proto.JobResult{DomainName: "x"}})
	a.ok(CmdCancelJobs, CancelJobs{JobIDs: []string{"j03", "j01"}})
	a.ok(CmdRegisterNode, NodeInfo{ID: "n1", APIAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2"})

	snap, err := FSM{a.s}.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Apply keeps going while the snapshot persists: the snapshot must not see it.
	a.ok(CmdSubmitJob, SubmitJob{Definition: def("after")})
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	restored := New()
	sub := restored.Subscribe(4)
	if err := (FSM{restored}).Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if ev := <-sub.C; ev.Kind != EventRestored {
		t.Fatalf("event %v", ev.Kind)
	}
	if _, ok := restored.Job("after"); ok {
		t.Fatal("snapshot contains a job applied after it was taken")
	}
	if restored.TotalJobs() != 50 || !reflect.DeepEqual(restored.Counts(), map[proto.JobStatus]int{
		proto.StatusPending: 47, proto.StatusRunning: 1, proto.StatusCompleted: 1, proto.StatusCancelled: 1, proto.StatusFailed: 0,
	}) {
		t.Fatalf("counts %v", restored.Counts())
	}
	for _, id := range []string{"j01", "j02", "j03", "j49"} {
		orig, _ := a.s.Job(id)
		got, _ := restored.Job(id)
		if !reflect.DeepEqual(orig, got) {
			t.Fatalf("%s differs:\n%+v\n%+v", id, orig, got)
		}
	}
	if n, ok := restored.Node("n1"); !ok || n.APIAddr != "127.0.0.1:1" {
		t.Fatalf("node %+v", n)
	}
	// Same order after restore, and new submissions sort after the restored ones.
	restored.Apply(100, MustEncode(CmdSubmitJob, SubmitJob{Definition: def("new")}))
	r, _ := restored.Query(proto.QueryRequest{Limit: 2})
	if r.Jobs[0].Definition.ID != "new" || r.Jobs[1].Definition.ID != "j49" {
		t.Fatalf("order after restore: %s %s", r.Jobs[0].Definition.ID, r.Jobs[1].Definition.ID)
	}
	if restored.RunningByAgent()["ag"] != 1 {
		t.Fatal("running index not rebuilt")
	}
	var _ raft.FSMSnapshot = snap
}

func TestEventsNeverBlockApply(t *testing.T) {
	a := newApplier(t)
	sub := a.s.Subscribe(2)
	for i := 0; i < 10; i++ {
		a.ok(CmdSubmitJob, SubmitJob{Definition: def(fmt.Sprintf("j%d", i))})
	}
	if sub.Dropped() != 8 {
		t.Fatalf("dropped %d, want 8", sub.Dropped())
	}
	ev := <-sub.C
	if ev.Kind != EventJobSubmitted || ev.Job.Definition.ID != "j0" {
		t.Fatalf("first event %+v", ev)
	}
	sub.Close()
	a.ok(CmdSubmitJob, SubmitJob{Definition: def("x")})
}

// Issue 18: a viewer's queries of jobs with big network_mappings made a follower grow by
// gigabytes. A page is bounded in bytes too, and the cursor still reaches every job.
func TestQueryPageBoundedInBytes(t *testing.T) {
	a := newApplier(t)
	const n = 200
	nm := map[string]string{}
	for i := 0; i < 1000; i++ {
		nm[fmt.Sprintf("VM Network %04d with a long name ..........................", i)] = "br0"
	}
	for i := 0; i < n; i++ {
		d := def(fmt.Sprintf("big-%03d", i))
		d.Options.NetworkMapping = nm
		a.ok(CmdSubmitJob, SubmitJob{Definition: d})
	}
	seen := map[string]bool{}
	cursor, pages := "", 0
	for {
		res, err := a.s.Query(proto.QueryRequest{Limit: proto.MaxQueryLimit, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		b, _ := json.Marshal(res.Jobs)
		if len(b) > MaxQueryBytes+MaxQueryBytes/4 {
			t.Fatalf("page of %d jobs is %d bytes, bound %d", len(res.Jobs), len(b), MaxQueryBytes)
		}
		for _, j := range res.Jobs {
			seen[j.Definition.ID] = true
		}
		if res.NextCursor == "" {
			break
		}
		cursor = res.NextCursor
	}
	if len(seen) != n || pages < 2 {
		t.Fatalf("%d jobs in %d pages, want %d in several", len(seen), pages, n)
	}
}

// TestAgentControlsAndCountersSurviveSnapshots: cordons, drains and the lease counters are
// kept by apply and carried by a snapshot (a restored node shows the same).
func TestAgentControlsAndCountersSurviveSnapshots(t *testing.T) {
	a := newApplier(t)
	a.ok(CmdSubmitJob, SubmitJob{Definition: def("a")})
	a.ok(CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0})
	a.ok(CmdLeaseExpire, LeaseExpire{LeaseToken: tok("a", 1), Reason: "gone", At: t0})
	a.ok(CmdLeaseGrant, LeaseGrant{tok("a", 2), "agent2", t0})
	a.ok(CmdFail, FailReport{LeaseToken: tok("a", 2), Error: "reset", Retryable: true})
	a.ok(CmdAgentControl, AgentControl{Agent: "agent1", Action: AgentCordon, At: t0})
	a.ok(CmdAgentControl, AgentControl{Agent: "agent2", Action: AgentDrain, At: t0})
	a.ok(CmdAgentControl, AgentControl{Agent: "agent3", Action: AgentCordon, At: t0})
	a.ok(CmdAgentControl, AgentControl{Agent: "agent3", Action: AgentUncordon, At: t0})
	if err, _ := a.do(CmdAgentControl, AgentControl{Agent: "agent1", Action: "reboot"}).(error); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("unknown action: %v", err)
	}
	want := LeaseCounters{LeaseExpiries: 1, Requeues: 2}
	if got := a.s.Counters(); got != want {
		t.Fatalf("counters %+v, want %+v", got, want)
	}
	snap, err := FSM{a.s}.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	restored := New()
	if err := (FSM{restored}).Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if got := restored.Counters(); got != want {
		t.Fatalf("restored counters %+v, want %+v", got, want)
	}
	ctl := restored.AgentControls()
	if len(ctl) != 2 || ctl[0].Agent != "agent1" || ctl[0].Action != AgentCordon || ctl[1].Agent != "agent2" || ctl[1].Action != AgentDrain {
		t.Fatalf("restored controls %+v", ctl)
	}
	if _, ok := restored.AgentControlOf("agent3"); ok {
		t.Fatal("agent3 was uncordoned")
	}
}
