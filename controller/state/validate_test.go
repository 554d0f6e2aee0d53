package state

import (
	"io"
	"maps"
	"testing"

	"github.com/hypersdk/hypersdk/proto"
)

// TestSubmitConcernsAndHostDisks: a submit keeps validation's concerns (warnings into the
// job's warnings), and the disks of running jobs are counted per source ESXi host until
// the jobs end, across a snapshot and restore.
func TestSubmitConcernsAndHostDisks(t *testing.T) {
	a := newApplier(t)
	d := def("a")
	d.SourceHost = &proto.SourceHost{Moref: "host-9", Name: "esx-9", Disks: 3}
	concerns := []proto.Concern{{ID: "device.usb_passthrough", Category: proto.ConcernWarning, Message: "a has USB devices"},
		{ID: "firmware.efi_nvram", Category: proto.ConcernInfo, Message: "a boots with UEFI"}}
	a.ok(CmdSubmitJob, SubmitJob{Definition: d, Concerns: concerns})
	b := def("b")
	b.SourceHost = &proto.SourceHost{Moref: "host-9", Disks: 2}
	a.ok(CmdSubmitBatch, SubmitBatch{Definitions: []proto.JobDefinition{b, def("c")}})

	j := a.job("a")
	if len(j.Concerns) != 2 || len(j.Warnings) != 1 || j.Warnings[0] != "validation: a has USB devices" {
		t.Fatalf("concerns %+v warnings %q", j.Concerns, j.Warnings)
	}
	if len(a.s.RunningDisksPerHost()) != 0 {
		t.Fatalf("pending jobs counted: %v", a.s.RunningDisksPerHost())
	}
	a.ok(CmdLeaseGrant, LeaseGrant{tok("a", 1), "agent1", t0})
	a.ok(CmdLeaseGrant, LeaseGrant{tok("b", 1), "agent1", t0})
	a.ok(CmdLeaseGrant, LeaseGrant{tok("c", 1), "agent1", t0})
	key := "127.0.0.1:8989/host-9"
	if got := a.s.RunningDisksPerHost(); !maps.Equal(got, map[string]int{key: 5}) {
		t.Fatalf("running disks %v", got)
	}
	a.ok(CmdComplete, CompleteReport{LeaseToken: tok("a", 1), At: t0})
	if got := a.s.RunningDisksPerHost(); !maps.Equal(got, map[string]int{key: 2}) {
		t.Fatalf("after a completed: %v", got)
	}
	// A restored state counts the same.
	r := New()
	restoreFrom(t, a.s, r)
	if got := r.RunningDisksPerHost(); !maps.Equal(got, map[string]int{key: 2}) {
		t.Fatalf("restored: %v", got)
	}
	if rj, _ := r.Job("a"); len(rj.Concerns) != 2 {
		t.Fatalf("restored concerns: %+v", rj.Concerns)
	}
}

// restoreFrom snapshots from and restores the snapshot into to.
func restoreFrom(t *testing.T, from, to *State) {
	t.Helper()
	snap, err := FSM{from}.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if err := (FSM{to}).Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
}
