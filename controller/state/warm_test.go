package state

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/hypersdk/hypersdk/proto"
)

func warmDef(id string) proto.JobDefinition {
	d := def(id)
	d.Options.Warm = true
	return d
}

// TestWarmReportsAndCutover: the rounds, the cutover and the resume point of a warm job
// through the commands that carry them, each fenced and judged as the API answers it.
func TestWarmReportsAndCutover(t *testing.T) {
	a := newApplier(t)
	sub := a.s.Subscribe(64)
	a.ok(CmdSubmitJob, SubmitJob{Definition: warmDef("w")})
	a.ok(CmdSubmitJob, SubmitJob{Definition: def("cold")})
	if w := a.job("w").Warm; w == nil || w.Phase != proto.WarmPhasePrecopy {
		t.Fatalf("a submitted warm job shows %+v", w)
	}
	for _, tc := range []struct {
		id   string
		want error
	}{{"nope", ErrNotFound}, {"cold", ErrInvalidState}} {
		if err, _ := a.do(CmdCutover, CutoverRequest{JobID: tc.id, At: t0}).(error); !errors.Is(err, tc.want) {
			t.Errorf("cutover of %s: %v, want %v", tc.id, err, tc.want)
		}
	}
	a.ok(CmdLeaseGrant, LeaseGrant{tok("w", 1), "ag", t0})
	resume := &proto.WarmResume{Agent: "ag", Format: "qcow2", Rounds: 1, Disks: []proto.WarmDisk{{Key: 2000, Path: "/s/w/d0.qcow2", Capacity: 1 << 30, ChangeID: "52 aa/1"}}}
	a.ok(CmdWarmReport, WarmReport{LeaseToken: tok("w", 1), Status: proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 1, ChangedBytes: 100}, Resume: resume, At: t0})
	if err, _ := a.do(CmdWarmReport, WarmReport{LeaseToken: tok("w", 2), Status: proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 9}}).(error); !errors.Is(err, ErrStaleLease) {
		t.Errorf("report of a stale attempt: %v", err)
	}
	if res := a.ok(CmdCutover, CutoverRequest{JobID: "w", At: t0}).(CutoverResult); res.AlreadyRequested {
		t.Error("first cutover request answered as a repeat")
	}
	if res := a.ok(CmdCutover, CutoverRequest{JobID: "w", At: t0}).(CutoverResult); !res.AlreadyRequested {
		t.Error("second cutover request changed something")
	}
	// A round the agent reports before it heard of the request keeps the request.
	a.ok(CmdWarmReport, WarmReport{LeaseToken: tok("w", 1), Status: proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 2, ChangedBytes: 7}, At: t0})
	j := a.job("w")
	if !j.Warm.CutoverRequested || j.Warm.Rounds != 2 || !reflect.DeepEqual(j.WarmResume, resume) || !CutoverDue(j) {
		t.Fatalf("after round 2: %+v resume %+v", j.Warm, j.WarmResume)
	}
	if j.Redacted().WarmResume != nil {
		t.Error("the resume point is shown")
	}
	a.ok(CmdWarmReport, WarmReport{LeaseToken: tok("w", 1), Status: proto.WarmStatus{Phase: proto.WarmPhaseCutover, Rounds: 2}, At: t0})

	// A requeue keeps what the next attempt resumes from.
	a.ok(CmdLeaseExpire, LeaseExpire{LeaseToken: tok("w", 1), At: t0})
	if j := a.job("w"); j.Status != proto.StatusPending || j.WarmResume == nil || j.Warm.Rounds != 2 || !CutoverDue(j) {
		t.Fatalf("after the requeue: %s %+v", j.Status, j.Warm)
	}

	// A job past its cutover whose cutover nobody asked for refuses one.
	a.ok(CmdSubmitJob, SubmitJob{Definition: warmDef("w2")})
	a.ok(CmdLeaseGrant, LeaseGrant{tok("w2", 1), "ag", t0})
	a.ok(CmdWarmReport, WarmReport{LeaseToken: tok("w2", 1), Status: proto.WarmStatus{Phase: proto.WarmPhaseCutover, Rounds: 1}, At: t0})
	if err, _ := a.do(CmdCutover, CutoverRequest{JobID: "w2", At: t0}).(error); !errors.Is(err, ErrInvalidState) {
		t.Errorf("cutover past the cutover: %v", err)
	}
	a.ok(CmdComplete, CompleteReport{LeaseToken: tok("w2", 1), At: t0})
	if err, _ := a.do(CmdCutover, CutoverRequest{JobID: "w2", At: t0}).(error); !errors.Is(err, ErrInvalidState) {
		t.Errorf("cutover of a completed job: %v", err)
	}
	if err, _ := a.do(CmdWarmReport, WarmReport{LeaseToken: tok("cold", 1), Status: proto.WarmStatus{Phase: proto.WarmPhasePrecopy}}).(error); err == nil {
		t.Error("a warm report for a cold job that is not running was accepted")
	}

	var kinds []EventKind
	for len(sub.C) > 0 {
		kinds = append(kinds, (<-sub.C).Kind)
	}
	want := []EventKind{EventJobPrecopyRound, EventJobCutoverRequested, EventJobPrecopyRound, EventJobCutover}
	if !containsInOrder(kinds, want) {
		t.Errorf("events %v, want %v in that order", kinds, want)
	}

	// Snapshot and restore keep the warm fields.
	snap, _ := FSM{a.s}.Snapshot()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	restored := New()
	if err := (FSM{restored}).Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	got, _ := restored.Job("w")
	if !reflect.DeepEqual(got, a.job("w")) {
		t.Fatalf("restored %+v\nwant %+v", got, a.job("w"))
	}
}

func containsInOrder(got, want []EventKind) bool {
	i := 0
	for _, k := range got {
		if i < len(want) && k == want[i] {
			i++
		}
	}
	return i == len(want)
}
