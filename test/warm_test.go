package test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
	"github.com/hypersdk/hypersdk/test/fakevddk"
	"github.com/hypersdk/hypersdk/test/harness"
)

// Warm migrations end to end: bin/hypersdk-controller and bin/hypersdk-agent (its VDDK the
// fake), the simulator's VMs powered on with their guests writing.

// withVM runs do with a vCenter session of the simulator and its VM i.
func (e *migrationEnv) withVM(t *testing.T, i int, do func(context.Context, *vsphere.Client, *vsphere.VM) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: e.sim.URL.String(), Username: "admin", Password: e2ePassword,
		Thumbprint: e.sim.Thumbprint, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	v, err := c.FindVM(ctx, e.sim.VMs[i].Path)
	if err == nil {
		err = do(ctx, c, v)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func (e *migrationEnv) snapshotCount(t *testing.T, i int) int {
	t.Helper()
	n := 0
	e.withVM(t, i, func(ctx context.Context, c *vsphere.Client, v *vsphere.VM) error {
		s, err := c.SnapshotsNamed(ctx, v, "")
		n = len(s)
		return err
	})
	return n
}

// TestE2EWarm: warm migrations through the real controller and agent:
//   - a VM whose guest keeps writing is copied in rounds; the agent is SIGKILLed between
//     rounds and the next attempt, on the same agent, goes on from the recorded change ids
//     (it reads only what changed); the cutover asked through the API shuts the VM down,
//     and the images are the disks as they were at power-off;
//   - cutover_at in the past: the full copy, then the cutover at once;
//   - a VM with snapshots and change tracking off fails at once, saying why;
//   - the API refuses warm with https or nfc (naming vddk) and a cutover for an unknown
//     job (404).
func TestE2EWarm(t *testing.T) {
	t.Parallel()
	const size = 32 * mib
	e := newVDDKEnv(t, vcsim.Config{VMs: 3, DisksPerVM: 2, DiskSize: size, PowerOn: true, WriteRate: 2,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		// A 5 s lease: the killed agent's lease ends soon (see TestE2EVDDKCancelAndKill).
		5*time.Second, 2, fakevddk.Standard)
	harness.WaitFor(t, 30*time.Second, "agent advertises vddk", func() bool {
		var ag proto.AgentInfo
		return harness.GetJSON(e.ctl.URL()+"/agents/agent-1", &ag) == 200 && ag.Capabilities.HasMethod("vddk")
	})

	t.Run("bad input", func(t *testing.T) {
		for _, m := range []string{"https", "nfc"} {
			var out proto.ErrorResponse
			code, err := harness.PostJSON(e.ctl.URL()+"/jobs/submit", e.job(0, "", proto.Options{Warm: true, ConversionMethod: m}), &out)
			if err != nil || code != http.StatusBadRequest || !strings.Contains(out.Error, "vddk") {
				t.Errorf("warm with %s: %d %q %v, want 400 naming vddk", m, code, out.Error, err)
			}
		}
		var out proto.ErrorResponse
		if code, _ := harness.PostJSON(e.ctl.URL()+"/jobs/no-such-job/cutover", struct{}{}, &out); code != http.StatusNotFound || out.Error == "" {
			t.Errorf("cutover of an unknown job: %d %q, want 404", code, out.Error)
		}
	})

	t.Run("snapshots and tracking off", func(t *testing.T) {
		e.withVM(t, 2, func(ctx context.Context, c *vsphere.Client, v *vsphere.VM) error {
			_, err := c.CreateSnapshot(ctx, v, "before-upgrade", "an operator's snapshot")
			return err
		})
		id := harness.Submit(t, e.ctl, e.job(2, "", proto.Options{Warm: true}))
		j := harness.WaitTerminal(t, e.ctl, id, time.Minute)
		if j.Status != proto.StatusFailed || j.Attempt != 1 || !strings.Contains(errText(j), "has snapshots and changed block tracking is off") {
			t.Fatalf("%s at attempt %d: %q", j.Status, j.Attempt, errText(j))
		}
		if n := e.snapshotCount(t, 2); n != 1 {
			t.Errorf("%d snapshots, want the operator's one", n)
		}
	})

	t.Run("cutover_at in the past", func(t *testing.T) {
		past := time.Now().Add(-time.Minute)
		id := harness.Submit(t, e.ctl, e.job(1, "", proto.Options{Warm: true, CutoverAt: &past, OutputFormat: "raw"}))
		j := harness.WaitTerminal(t, e.ctl, id, 2*time.Minute)
		if j.Status != proto.StatusCompleted || j.Warm == nil || j.Warm.Rounds != 1 || j.Warm.DowntimeSeconds <= 0 {
			t.Fatalf("%s %q warm %+v", j.Status, errText(j), j.Warm)
		}
		for k, p := range j.Result.Disks {
			compareImage(t, e.sim.VMs[1].Disks[k].FlatPath, p, "raw")
		}
	})

	t.Run("rounds, SIGKILL between rounds, cutover", func(t *testing.T) {
		id := harness.Submit(t, e.ctl, e.job(0, "", proto.Options{Warm: true, PrecopyIntervalSeconds: 3}))
		between := func(j proto.Job) bool {
			if j.Status.Terminal() {
				t.Fatalf("job ended: %s %q", j.Status, errText(j))
			}
			return j.Warm != nil && j.Warm.Rounds >= 2 && j.Warm.Phase == proto.WarmPhasePrecopy &&
				strings.HasPrefix(j.Progress.Message, "round ")
		}
		j := harness.WaitJob(t, e.ctl, id, 2*time.Minute, "two rounds done", between)
		if j.Attempt != 1 || j.Progress.Stage != proto.StagePrecopy || j.Warm.NextRoundAt == nil || j.Warm.LastRoundAt == nil {
			t.Fatalf("between rounds: attempt %d stage %s warm %+v", j.Attempt, j.Progress.Stage, j.Warm)
		}
		// The guest holds still from here until attempt 2's first round: what that
		// round reads is then what changed since round 2, however long the lease
		// takes to expire on a busy machine (at 2 MiB/s, ten seconds of writes with
		// their coalesced gaps are most of these small disks).
		if err := e.sim.PauseGuest(e.sim.VMs[0].Name, true); err != nil {
			t.Fatal(err)
		}
		e.agent.Kill()
		e.waitNoReaders()
		before := e.fake.ReadStats().BytesRead("")
		e.agent.Restart(t)
		j = harness.WaitJob(t, e.ctl, id, 2*time.Minute, "a round of attempt 2", func(j proto.Job) bool {
			return j.Attempt == 2 && j.Warm != nil && j.Warm.Rounds >= 3 && j.Status == proto.StatusRunning
		})
		if j.Warm.FullCopy != "" {
			t.Errorf("attempt 2 copied in full: %s", j.Warm.FullCopy)
		}
		var allocated int64
		for _, d := range e.sim.VMs[0].Disks {
			data, err := fakevddk.DataRanges(d.FlatPath)
			if err != nil {
				t.Fatal(err)
			}
			allocated += fakevddk.AllocatedBytes(data, 64<<10, size)
		}
		resumedRead := e.fake.ReadStats().BytesRead("") - before
		if read := resumedRead; read >= allocated/2 {
			t.Errorf("attempt 2 read %d bytes by its first round: a full copy is %d", read, allocated)
		}
		if err := e.sim.PauseGuest(e.sim.VMs[0].Name, false); err != nil {
			t.Fatal(err)
		}
		var out proto.CutoverResponse
		if code, err := harness.PostJSON(e.ctl.URL()+"/jobs/"+id+"/cutover", struct{}{}, &out); err != nil || code != http.StatusOK {
			t.Fatalf("cutover: %d %v", code, err)
		}
		j = harness.WaitTerminal(t, e.ctl, id, 2*time.Minute)
		e.checkCompletedOnce(t, j, 0, 2)
		if j.Warm == nil || j.Warm.Phase != proto.WarmPhaseDone || !j.Warm.CutoverRequested || j.Warm.DowntimeSeconds <= 0 {
			t.Errorf("warm status %+v", j.Warm)
		}
		for k, p := range j.Result.Disks {
			compareImage(t, e.sim.VMs[0].Disks[k].FlatPath, p, "qcow2")
		}
		if n := e.snapshotCount(t, 0); n != 0 {
			t.Errorf("%d snapshots left on the source", n)
		}
		writes, _ := e.sim.GuestWrites(e.sim.VMs[0].Name)
		if writes[0].Bytes+writes[1].Bytes == 0 {
			t.Error("the guest wrote nothing during the migration")
		}
		t.Logf("rounds %d, last round %d bytes, downtime %.2f s, guest wrote %d bytes; attempt 2's first round read %d of %d allocated",
			j.Warm.Rounds, j.Warm.ChangedBytes, j.Warm.DowntimeSeconds, writes[0].Bytes+writes[1].Bytes, resumedRead, allocated)
	})
}
