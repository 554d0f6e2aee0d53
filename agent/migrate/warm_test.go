package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/hypersdk/hypersdk/agent/migrate"
	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
	"github.com/hypersdk/hypersdk/test/fakevddk"
	"github.com/hypersdk/hypersdk/test/harness"
)

// warmRecorder is the reporter of a warm job in a test: the cutover is asked by closing
// cut, and every replicated warm report is kept, with the snapshots of ours that existed
// at that moment.
type warmRecorder struct {
	recorder
	agent    string
	cut      chan struct{}
	cutOnce  sync.Once
	f        *vddkFixture
	mu       sync.Mutex
	reports  []warmReport
	onReport func(warmReport)
}

type warmReport struct {
	status    proto.WarmStatus
	resume    proto.WarmResume
	snapshots []string // the VM's, by name, when the report was sent
}

var _ migrate.WarmReporter = (*warmRecorder)(nil)

func newWarmRecorder(f *vddkFixture, agent string) *warmRecorder {
	return &warmRecorder{f: f, agent: agent, cut: make(chan struct{})}
}

func (r *warmRecorder) CutoverRequested() <-chan struct{} { return r.cut }
func (r *warmRecorder) AgentName() string                 { return r.agent }
func (r *warmRecorder) cutover()                          { r.cutOnce.Do(func() { close(r.cut) }) }

func (r *warmRecorder) Warm(ctx context.Context, s proto.WarmStatus, res *proto.WarmResume) error {
	rep := warmReport{status: s, resume: *res, snapshots: r.f.snapshotNames(0)}
	r.mu.Lock()
	r.reports = append(r.reports, rep)
	f := r.onReport
	r.mu.Unlock()
	if f != nil {
		f(rep)
	}
	return nil
}

func (r *warmRecorder) all() []warmReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]warmReport(nil), r.reports...)
}

func (r *warmRecorder) lastReport() warmReport {
	all := r.all()
	if len(all) == 0 {
		return warmReport{}
	}
	return all[len(all)-1]
}

// snapshots counts the VM's snapshots.
func (f *fixture) snapshots(vm int) int { return len(f.snapshotNames(vm)) }

// snapshotNames lists the VM's snapshots.
func (f *fixture) snapshotNames(vm int) []string {
	f.t.Helper()
	var names []string
	f.withVM(vm, func(ctx context.Context, c *vsphere.Client, v *vsphere.VM) error {
		s, err := c.SnapshotsNamed(ctx, v, "")
		for _, x := range s {
			names = append(names, x.Name)
		}
		return err
	})
	return names
}

// powerState reads the VM's power state.
func (f *fixture) powerState(vm int) string { return f.vsphereInfo(vm).PowerState }

// runWarm runs a warm job in the background; the result arrives on the channel.
type runResult struct {
	res *proto.JobResult
	err error
}

func (f *vddkFixture) runWarm(ctx context.Context, l proto.Lease, r *warmRecorder) <-chan runResult {
	ch := make(chan runResult, 1)
	go func() {
		res, err := f.p.Run(ctx, l, r)
		ch <- runResult{res, err}
	}()
	return ch
}

func wait(t *testing.T, ch <-chan runResult, d time.Duration) runResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("the job did not end within %s", d)
		return runResult{}
	}
}

// TestWarmMigration copies a running VM whose guest keeps writing: a full round, delta
// rounds each reading only what changed, a cutover on request; the images are the disks
// as they were at power-off, change tracking was turned on, our snapshots came and went
// one at a time, and the downtime is known.
func TestWarmMigration(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"qcow2", "raw"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			const size = 32 * mib
			f := newVDDKFixture(t, vcsim.Config{VMs: 1, DisksPerVM: 2, DiskSize: size, PowerOn: true, WriteRate: 2,
				Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}, fakevddk.Standard)
			if f.vsphereInfo(0).ChangeTracking {
				t.Fatal("the VM tracks changes before the job")
			}
			rec := newWarmRecorder(f, "agent-a")
			var zeroed sync.Once
			rec.onReport = func(r warmReport) {
				if r.status.Rounds >= 2 {
					// Data overwritten with zeros: a changed area that is zero now must not
					// keep the old bytes in the image (raw: a hole; qcow2: zero clusters).
					zeroed.Do(func() {
						if err := f.sim.WriteGuest(f.sim.VMs[0].Name, 0, 0, make([]byte, mib)); err != nil {
							t.Error(err)
						}
					})
				}
				if r.status.Rounds >= 3 && r.status.Phase == proto.WarmPhasePrecopy {
					rec.cutover()
				}
			}
			jobID := "job-warm-" + format
			opts := proto.Options{Warm: true, PrecopyIntervalSeconds: 1, OutputFormat: format}
			if format == "raw" {
				opts.MaxMbps = 400 // the rounds' reads go through the job's cap (the copier's pacing)
			}
			done := f.runWarm(context.Background(), f.lease(jobID, 0, opts), rec)
			out := wait(t, done, 3*time.Minute)
			if out.err != nil {
				t.Fatalf("Run: %v", out.err)
			}
			vm := f.sim.VMs[0]
			for i, p := range out.res.Disks {
				sameContent(t, vm.Disks[i].FlatPath, p, format)
			}
			info := f.vsphereInfo(0)
			if !info.ChangeTracking || info.HasSnapshots || info.PowerState != "poweredOff" {
				t.Errorf("source after the job: tracking %v, snapshots %v, %s", info.ChangeTracking, info.HasSnapshots, info.PowerState)
			}
			reports := rec.all()
			last := reports[len(reports)-1].status
			if last.Phase != proto.WarmPhaseDone || last.Rounds < 3 || last.DowntimeSeconds <= 0 || !last.CutoverRequested {
				t.Errorf("last warm status %+v", last)
			}
			checkForkliftOrder(t, jobID, reports)
			var sawCutover bool
			for _, r := range reports {
				sawCutover = sawCutover || r.status.Phase == proto.WarmPhaseCutover
				for _, d := range r.resume.Disks {
					if r.status.Rounds > 0 && d.ChangeID == "" {
						t.Errorf("resume point without a change id: %+v", r.resume)
					}
				}
			}
			if !sawCutover {
				t.Error("no report in the cutover phase")
			}
			// The first round reads what is allocated; later rounds only what changed.
			st := f.fake.ReadStats()
			full := fakevddk.AllocatedBytes(mustData(t, vm.Disks[0].FlatPath), 64<<10, size)
			writes, _ := f.sim.GuestWrites(vm.Name)
			// The changes are read with what lies between near ones (up to 256 KiB per
			// changed 64 KiB grain, transfer.coalesceGap).
			changed := writes[0].Bytes + writes[1].Bytes
			if read := st.BytesRead(""); read > 2*full+6*changed+4*mib {
				t.Errorf("read %d bytes in all: more than a full copy (%d) and the changes (%d)", read, full, changed)
			} else {
				t.Logf("read %d bytes in all: full copies of %d, %d bytes changed", read, full, changed)
			}
			if writes[0].Bytes == 0 {
				t.Error("the guest wrote nothing while the job ran")
			}
			stages := strings.Join(rec.stages(), ",")
			if !strings.Contains(stages, "precopy") || !strings.Contains(stages, "cutover,defining") {
				t.Errorf("stages %s", stages)
			}
			if _, err := domainXML(t, vm.Name).Marshal(); err != nil {
				t.Error(err)
			}
		})
	}
}

// checkForkliftOrder checks the order Forklift learnt from filesystem corruption (its PR
// #1184): a round's change ids are recorded while the round's snapshot still exists and
// before the next snapshot is taken (the report of round N sees only snapshot N), and the
// old snapshot is removed before the next one is created (the report after it, between
// rounds or at the start of the cutover, sees none). So there is never more than one
// snapshot of ours, and the change ids recorded always belong to a snapshot that existed.
func checkForkliftOrder(t *testing.T, jobID string, reports []warmReport) {
	t.Helper()
	seen := map[int]bool{}
	var rounds, betweens int
	for i, r := range reports {
		st := r.status
		switch {
		case st.Phase == proto.WarmPhasePrecopy && st.Rounds > 0 && !seen[st.Rounds]:
			// The first report of round N: its change ids, recorded with its snapshot there.
			seen[st.Rounds] = true
			rounds++
			want := fmt.Sprintf("hypersdk-%s-%d", jobID, st.Rounds)
			if len(r.snapshots) != 1 || r.snapshots[0] != want {
				t.Errorf("report %d (round %d recorded): snapshots %q, want only %s", i, st.Rounds, r.snapshots, want)
			}
		case st.Phase == proto.WarmPhasePrecopy && st.Rounds > 0, st.Phase == proto.WarmPhaseCutover && st.CutoverStartedAt != nil && r.resume.PoweredOffAt == nil:
			// Between rounds, and the cutover's start: the old snapshot is gone before
			// the next is taken.
			betweens++
			if len(r.snapshots) != 0 {
				t.Errorf("report %d (%s, round %d): snapshots %q, want none between rounds", i, st.Phase, st.Rounds, r.snapshots)
			}
		case st.Phase == proto.WarmPhaseCutover || st.Phase == proto.WarmPhaseDone:
			// The cutover copies from the powered-off disks: no snapshot at all, so none
			// to take or remove while the VM is down.
			if len(r.snapshots) != 0 {
				t.Errorf("report %d (%s after the power-off): snapshots %q, want none", i, st.Phase, r.snapshots)
			}
		}
	}
	if rounds < 3 || betweens < 2 {
		t.Errorf("%d round reports and %d between rounds: too few to judge the order", rounds, betweens)
	}
}

func mustData(t *testing.T, path string) []fakevddk.Range {
	t.Helper()
	d, err := fakevddk.DataRanges(path)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestWarmCutoverAtInThePast: the full copy, then the cutover at once.
func TestWarmCutoverAtInThePast(t *testing.T) {
	t.Parallel()
	f := newVDDKFixture(t, vcsim.Config{VMs: 1, DiskSize: 16 * mib, PowerOn: true, WriteRate: 1,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}, fakevddk.Standard)
	past := time.Now().Add(-time.Hour)
	rec := newWarmRecorder(f, "agent-a")
	out := wait(t, f.runWarm(context.Background(), f.lease("job-warm-past", 0, proto.Options{Warm: true, CutoverAt: &past}), rec), 2*time.Minute)
	if out.err != nil {
		t.Fatalf("Run: %v", out.err)
	}
	last := rec.lastReport().status
	if last.Rounds != 1 || last.Phase != proto.WarmPhaseDone || last.CutoverRequested {
		t.Errorf("warm status %+v: want one round, then the cutover by cutover_at", last)
	}
	sameContent(t, f.sim.VMs[0].Disks[0].FlatPath, out.res.Disks[0], "qcow2")
	// The cutover's copy used the reader started and the image opened while the guest
	// shut down.
	for _, ahead := range []string{"vddk reader started ahead of the copy", "image opened ahead of the copy"} {
		if !strings.Contains(f.logs.String(), ahead) {
			t.Errorf("the cutover's log lacks %q", ahead)
		}
	}
}

// TestWarmCutoverRefusesAVMPoweredOnMeanwhile: the cutover copies from the powered-off
// disks without a snapshot, so a VM powered on again during that copy (by someone else)
// may have changed under it: the cutover fails saying so and defines nothing.
func TestWarmCutoverRefusesAVMPoweredOnMeanwhile(t *testing.T) {
	t.Parallel()
	f := newVDDKFixture(t, vcsim.Config{VMs: 1, DiskSize: 16 * mib, PowerOn: true, WriteRate: 1,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}, fakevddk.Standard)
	past := time.Now().Add(-time.Hour)
	rec := newWarmRecorder(f, "agent-a")
	var once sync.Once
	rec.onUpdate = func(p proto.Progress) {
		// The cutover's copy reports its start before it reads: power the VM on right then
		// (this runs in the copy's goroutine, so the copy waits for it).
		if p.Stage == proto.StageCutover && strings.HasPrefix(p.Message, "round ") {
			once.Do(func() {
				f.withVM(0, func(ctx context.Context, c *vsphere.Client, v *vsphere.VM) error {
					task, err := v.Object().PowerOn(ctx)
					if err == nil {
						err = task.Wait(ctx)
					}
					return err
				})
			})
		}
	}
	out := wait(t, f.runWarm(context.Background(), f.lease("job-warm-on", 0, proto.Options{Warm: true, CutoverAt: &past}), rec), 2*time.Minute)
	if out.err == nil || !strings.Contains(out.err.Error(), "was powered on") || !strings.Contains(out.err.Error(), "during the cutover") {
		t.Fatalf("Run: %v, want the cutover refused for a VM powered on meanwhile", out.err)
	}
	if _, err := harness.Virsh("dominfo", f.sim.VMs[0].Name); err == nil {
		t.Error("a domain was defined from disks that may have changed")
	}
	if n := f.snapshots(0); n != 0 {
		t.Errorf("%d snapshots left", n)
	}
}

// TestWarmRefusesSnapshotsWithoutTracking: a VM with snapshots and tracking off cannot be
// copied warm (vSphere refuses to turn tracking on): the job fails at once saying so,
// leaves the operator's snapshot and the VM alone, and is not retried.
func TestWarmRefusesSnapshotsWithoutTracking(t *testing.T) {
	t.Parallel()
	f := newVDDKFixture(t, vcsim.Config{VMs: 1, DiskSize: 16 * mib, PowerOn: true}, fakevddk.Standard)
	f.userSnapshot(0, "before-upgrade")
	jobID := "job-warm-snapshots"
	out := wait(t, f.runWarm(context.Background(), f.lease(jobID, 0, proto.Options{Warm: true}), newWarmRecorder(f, "agent-a")), time.Minute)
	err := out.err
	if err == nil {
		t.Fatal("Run succeeded")
	}
	for _, want := range []string{"precopy", "has snapshots", "changed block tracking is off", "delete its snapshots"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if errors.Is(err, worker.ErrRetryable) {
		t.Errorf("retryable: %v", err)
	}
	if n := f.snapshots(0); n != 1 || f.powerState(0) != "poweredOn" || f.vsphereInfo(0).ChangeTracking {
		t.Errorf("source touched: %d snapshots, %s", n, f.powerState(0))
	}
	if files := dirEntries(t, f.p.JobDir(jobID)); len(files) != 0 {
		t.Errorf("files left: %v", files)
	}
}

// userSnapshot takes a snapshot as an operator would.
func (f *fixture) userSnapshot(vm int, name string) {
	f.t.Helper()
	f.withVM(vm, func(ctx context.Context, c *vsphere.Client, v *vsphere.VM) error {
		_, err := c.CreateSnapshot(ctx, v, name, "")
		return err
	})
}

// TestWarmCancelDuringPrecopy: a cancel between rounds removes our snapshot and the
// images, and leaves the VM running.
func TestWarmCancelDuringPrecopy(t *testing.T) {
	t.Parallel()
	f := newVDDKFixture(t, vcsim.Config{VMs: 1, DiskSize: 16 * mib, PowerOn: true, WriteRate: 1,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}, fakevddk.Standard)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	rec := newWarmRecorder(f, "agent-a")
	rec.onReport = func(r warmReport) {
		if r.status.Rounds >= 2 {
			cancel(worker.ErrCancelRequested)
		}
	}
	jobID := "job-warm-cancel"
	out := wait(t, f.runWarm(ctx, f.lease(jobID, 0, proto.Options{Warm: true, PrecopyIntervalSeconds: 1}), rec), 2*time.Minute)
	if out.err == nil || !errors.Is(out.err, context.Canceled) {
		t.Fatalf("Run: %v, want cancelled", out.err)
	}
	if n := f.snapshots(0); n != 0 {
		t.Errorf("%d snapshots left", n)
	}
	if files := dirEntries(t, f.p.JobDir(jobID)); len(files) != 0 {
		t.Errorf("files left: %v", files)
	}
	if st := f.powerState(0); st != "poweredOn" {
		t.Errorf("the VM is %s after a cancel during precopy", st)
	}
}

// TestWarmResume: an attempt stopped between rounds (the agent shuts down) keeps its
// images; the next attempt on the same agent goes on from the recorded change ids and
// reads only what changed since, and the result is the disk at power-off. On another
// agent the next attempt copies in full and says why.
func TestWarmResume(t *testing.T) {
	t.Parallel()
	const size = 32 * mib
	f := newVDDKFixture(t, vcsim.Config{VMs: 1, DiskSize: size, PowerOn: true, WriteRate: 1,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.75}}, fakevddk.Standard)
	jobID := "job-warm-resume"
	opts := proto.Options{Warm: true, PrecopyIntervalSeconds: 1}
	ctx, stop := context.WithCancelCause(context.Background())
	rec1 := newWarmRecorder(f, "agent-a")
	rec1.onReport = func(r warmReport) {
		if r.status.Rounds >= 2 {
			stop(worker.ErrShuttingDown)
		}
	}
	out := wait(t, f.runWarm(ctx, f.lease(jobID, 0, opts), rec1), 2*time.Minute)
	if out.err == nil {
		t.Fatal("attempt 1 completed")
	}
	resume := rec1.lastReport().resume
	if resume.Rounds < 2 || len(dirEntries(t, f.p.JobDir(jobID))) == 0 || f.snapshots(0) != 0 {
		t.Fatalf("after attempt 1: resume %+v, files %v, %d snapshots", resume, dirEntries(t, f.p.JobDir(jobID)), f.snapshots(0))
	}
	// The worker tells the controller which copies it keeps (not those of running jobs).
	notRunning, runs := func(string) bool { return false }, func(id string) bool { return id == jobID }
	if kept := f.p.KeptCopies(notRunning); len(kept) != 1 || kept[0] != jobID {
		t.Errorf("kept copies %v, want [%s]", kept, jobID)
	}
	if kept := f.p.KeptCopies(runs); len(kept) != 0 {
		t.Errorf("kept copies of a running job: %v", kept)
	}
	f.p.Discard([]string{jobID}, runs) // running: left alone
	if len(dirEntries(t, f.p.JobDir(jobID))) == 0 {
		t.Fatal("Discard removed the copy of a running job")
	}

	for _, tc := range []struct {
		agent string
		full  bool
	}{{"agent-a", false}, {"agent-b", true}} {
		t.Run(tc.agent, func(t *testing.T) {
			before := f.fake.ReadStats().BytesRead("")
			l := f.lease(jobID, 0, opts)
			l.Attempt = 2
			l.Warm = &resume
			l.CutoverRequested = true
			rec := newWarmRecorder(f, tc.agent)
			out := wait(t, f.runWarm(context.Background(), l, rec), 2*time.Minute)
			if out.err != nil {
				t.Fatalf("attempt 2 on %s: %v", tc.agent, out.err)
			}
			sameContent(t, f.sim.VMs[0].Disks[0].FlatPath, out.res.Disks[0], "qcow2")
			read := f.fake.ReadStats().BytesRead("") - before
			full := fakevddk.AllocatedBytes(mustData(t, f.sim.VMs[0].Disks[0].FlatPath), 64<<10, size)
			last := rec.lastReport().status
			if tc.full {
				if read < full || !strings.Contains(last.FullCopy, "agent-a") || !strings.Contains(strings.Join(rec.warns(), "\n"), "copies the disks in full") {
					t.Errorf("on another agent: read %d of %d allocated, full_copy %q, warnings %q", read, full, last.FullCopy, rec.warns())
				}
			} else if read >= full/2 || last.FullCopy != "" || last.Rounds < resume.Rounds {
				t.Errorf("resumed on the same agent: read %d bytes (a full copy is %d), status %+v", read, full, last)
			}
			if n := f.snapshots(0); n != 0 {
				t.Errorf("%d snapshots left", n)
			}
		})
		// agent-a's case runs first: agent-b's full copy replaces attempt 1's images.
	}
	if kept := f.p.KeptCopies(func(string) bool { return false }); len(kept) != 0 {
		t.Errorf("a completed job's copy is still listed as kept: %v", kept)
	}
	// A copy the controller says no attempt will resume goes; a job directory that is not
	// a kept copy stays.
	other := f.p.JobDir("other-job")
	if err := os.MkdirAll(other, 0o750); err != nil {
		t.Fatal(err)
	}
	f.p.Discard([]string{jobID, "other-job"}, func(string) bool { return false })
	if len(dirEntries(t, f.p.JobDir(jobID))) == 0 || len(dirEntries(t, f.storage)) < 2 {
		t.Errorf("Discard removed a completed job's disks or a directory without a marker")
	}
	if err := os.WriteFile(filepath.Join(other, "warm.json"), []byte(`{"job_id":"other-job"}`), 0o640); err != nil {
		t.Fatal(err)
	}
	if kept := f.p.KeptCopies(func(string) bool { return false }); len(kept) != 1 || kept[0] != "other-job" {
		t.Errorf("kept copies %v", kept)
	}
	f.p.Discard([]string{"other-job"}, func(string) bool { return false })
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("the discarded copy is still there: %v", err)
	}
}

// TestWarmKeepsCopyAfterRetryableFailure: a round that fails for a reason another attempt
// may not meet (vCenter answering a fault) ends the attempt, retryable, with its snapshot
// removed and the VM running, and keeps the images: the next attempt here resumes them.
func TestWarmKeepsCopyAfterRetryableFailure(t *testing.T) {
	t.Parallel()
	f := newVDDKFixture(t, vcsim.Config{VMs: 1, DiskSize: 16 * mib, PowerOn: true, WriteRate: 1,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.75}}, fakevddk.Standard)
	f.sim.Model().Service.AddFaultRule(&simulator.FaultInjectionRule{MethodName: "QueryChangedDiskAreas", ObjectType: "*", ObjectName: "*",
		Probability: 1, MaxCount: 1, Enabled: true, Message: "host busy", Fault: &types.HostCommunication{}})
	jobID := "job-warm-retry"
	opts := proto.Options{Warm: true, PrecopyIntervalSeconds: 1}
	rec := newWarmRecorder(f, "agent-a")
	out := wait(t, f.runWarm(context.Background(), f.lease(jobID, 0, opts), rec), 2*time.Minute)
	if out.err == nil || !errors.Is(out.err, worker.ErrRetryable) || !strings.Contains(out.err.Error(), "precopy") {
		t.Fatalf("attempt 1: %v, want a retryable precopy failure", out.err)
	}
	if kept := f.p.KeptCopies(func(string) bool { return false }); len(kept) != 1 || f.snapshots(0) != 0 || f.powerState(0) != "poweredOn" {
		t.Fatalf("after the failure: kept %v, %d snapshots, VM %s", kept, f.snapshots(0), f.powerState(0))
	}
	resume := rec.lastReport().resume
	before := f.fake.ReadStats().BytesRead("")
	l := f.lease(jobID, 0, opts)
	l.Attempt, l.Warm, l.CutoverRequested = 2, &resume, true
	rec2 := newWarmRecorder(f, "agent-a")
	out = wait(t, f.runWarm(context.Background(), l, rec2), 2*time.Minute)
	if out.err != nil {
		t.Fatalf("attempt 2: %v", out.err)
	}
	sameContent(t, f.sim.VMs[0].Disks[0].FlatPath, out.res.Disks[0], "qcow2")
	// A full copy reads the 12 MiB allocated; a resume reads what the writer changed (1 MiB/s,
	// longer on a loaded machine) plus the gaps the delta coalesces with it.
	if read := f.fake.ReadStats().BytesRead(""); read-before > 10*mib || rec2.lastReport().status.FullCopy != "" {
		t.Errorf("attempt 2 read %d bytes (full_copy %q): want a resume", read-before, rec2.lastReport().status.FullCopy)
	}
}

// TestWarmCutoverDefinesAsCold: after the cutover a warm job goes down the cold job's
// path: guest conversion (here a stand-in virt-v2v-in-place: the real one is
// TestGuestConversionNoOS and make test-guest), define, and the boot check when asked.
// An attempt stopped while virt-v2v rewrites the images keeps nothing to resume from (the
// images are no longer the disks as of their change ids).
func TestWarmCutoverDefinesAsCold(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	slow := filepath.Join(dir, "slow")
	v2v := filepath.Join(dir, "virt-v2v-in-place")
	script := "#!/bin/sh\nif [ -e " + slow + " ]; then exec sleep 300; fi\necho '[   0.5] Converting the guest'\nexit 0\n"
	if err := os.WriteFile(v2v, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	f := newVDDKFixture(t, vcsim.Config{VMs: 3, DiskSize: 16 * mib, PowerOn: true, WriteRate: 1, MemoryMB: 256, CPUs: 1,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 1}}, fakevddk.Standard,
		func(c *migrate.Config) { c.V2VInPlace = v2v })
	past := time.Now().Add(-time.Minute)
	noKept := func(t *testing.T) {
		t.Helper()
		if kept := f.p.KeptCopies(func(string) bool { return false }); len(kept) != 0 {
			t.Errorf("warm copies kept for a resume: %v", kept)
		}
	}

	t.Run("guest conversion", func(t *testing.T) {
		rec := newWarmRecorder(f, "agent-a")
		l := f.lease("job-warm-v2v", 0, proto.Options{Warm: true, CutoverAt: &past, GuestConversion: ptr(true)})
		out := wait(t, f.runWarm(context.Background(), l, rec), 2*time.Minute)
		if out.err != nil {
			t.Fatal(out.err)
		}
		if c := out.res.Conversion; c == nil || !c.Converted || len(c.Steps) == 0 || out.res.Devices == nil || out.res.Devices.DiskBus != "virtio" {
			t.Errorf("conversion %+v devices %+v, want converted, on virtio", out.res.Conversion, out.res.Devices)
		}
		stages := strings.Join(rec.stages(), ",")
		if !strings.Contains(stages, "precopy,cutover,guest_conversion,defining") {
			t.Errorf("stages %s", stages)
		}
		if last := rec.lastReport().status; last.Phase != proto.WarmPhaseDone || last.DowntimeSeconds <= 0 {
			t.Errorf("warm status %+v", last)
		}
		noKept(t)
	})

	t.Run("stopped during guest conversion", func(t *testing.T) {
		if err := os.WriteFile(slow, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(slow)
		ctx, stop := context.WithCancelCause(context.Background())
		defer stop(nil)
		rec := newWarmRecorder(f, "agent-a")
		rec.onUpdate = func(p proto.Progress) {
			if p.Stage == proto.StageGuestConversion {
				stop(worker.ErrShuttingDown) // as the agent does when it is asked to stop
			}
		}
		jobID := "job-warm-v2v-stop"
		l := f.lease(jobID, 1, proto.Options{Warm: true, CutoverAt: &past, GuestConversion: ptr(true)})
		out := wait(t, f.runWarm(ctx, l, rec), 2*time.Minute)
		if out.err == nil || !errors.Is(out.err, context.Canceled) {
			t.Fatalf("Run: %v, want stopped", out.err)
		}
		if files := dirEntries(t, f.p.JobDir(jobID)); len(files) != 0 {
			t.Errorf("files left of images virt-v2v was rewriting: %v", files)
		}
		noKept(t)
		if n := f.snapshots(1); n != 0 {
			t.Errorf("%d snapshots left", n)
		}
	})

	t.Run("boot check", func(t *testing.T) {
		harness.QemuCanReach(t, f.storage)
		rec := newWarmRecorder(f, "agent-a")
		l := f.lease("job-warm-boot", 2, proto.Options{Warm: true, CutoverAt: &past, VerifyBoot: true, BootTimeoutSeconds: 20,
			NetworkMapping: map[string]string{"VM Network": "bridge:" + harness.Bridge(t)}})
		out := wait(t, f.runWarm(context.Background(), l, rec), 5*time.Minute)
		// The disk holds random bytes: the boot check runs and fails, as for a cold job.
		if out.err == nil || !errors.Is(out.err, migrate.ErrBootCheck) || !strings.Contains(out.err.Error(), "is kept (stopped)") {
			t.Fatalf("Run: %v, want the boot check to fail and keep the domain", out.err)
		}
		stages := strings.Join(rec.stages(), ",")
		if !strings.Contains(stages, "precopy,cutover,defining,boot_check") {
			t.Errorf("stages %s", stages)
		}
		if last := rec.lastReport().status; last.Phase != proto.WarmPhaseDone || last.DowntimeSeconds <= 0 {
			t.Errorf("warm status %+v: the domain was defined", last)
		}
		if files := dirEntries(t, f.p.JobDir(l.JobID)); len(files) == 0 {
			t.Error("the kept domain's disks are gone")
		}
		if n := f.snapshots(2); n != 0 {
			t.Errorf("%d snapshots left on the source", n)
		}
		noKept(t)
	})
}
