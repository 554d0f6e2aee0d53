package bench

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
	"github.com/hypersdk/hypersdk/test/harness"
)

// BenchmarkWarmDowntime4GiB: the downtime of a cold and of a warm migration of the same
// running VM in one run: one 4 GiB disk (2 GiB random data, 2 GiB hole), the fake VDDK,
// the controller and agent processes, qcow2. Downtime is from the VM's power-off (the
// simulator notes it) to the job completed (the domain defined, the last snapshot
// removed, the completion committed); the agent's own measure (power-off → domain
// defined, warm.downtime_seconds) is reported too. The warm job copies in full once, then
// ~1% of the disk (41 MiB of 64 KiB grains at random offsets) changes before the cutover
// is asked: its downtime is that last round. Target: warm ≤ 0.1 × cold.
func BenchmarkWarmDowntime4GiB(b *testing.B) {
	skipUnlessBench(b)
	harness.RequireLibvirt(b)
	dir := b.TempDir()
	const password = "bench-pw"
	const size = 4 << 30
	sim := harness.StartSim(b, vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: size, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5},
		PowerOn: true, Username: "admin", Password: password, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	vm := sim.VMs[0]
	ctl, agent, _ := startVDDKFleet(b, dir, sim, password)
	harness.CleanupDomain(b, vm.Name)
	harness.WaitFor(b, 30*time.Second, "agent advertises vddk", func() bool {
		var ag proto.AgentInfo
		return harness.GetJSON(ctl.URL()+"/agents/bench-agent", &ag) == 200 && ag.Capabilities.HasMethod("vddk")
	})
	def := func(opts proto.Options) proto.JobDefinition {
		return proto.JobDefinition{VMPath: vm.Path,
			Source: proto.Source{Type: "vsphere", VCenterURL: "https://" + sim.URL.Host + "/sdk", Username: "admin", Password: password,
				Thumbprint: sim.Thumbprint},
			Destination: proto.Destination{Type: "kvm"}, Options: opts}
	}
	// done checks the job, measures its downtime and clears the way for the next job.
	done := func(what string, j proto.Job) float64 {
		b.Helper()
		if j.Status != proto.StatusCompleted {
			b.Fatalf("%s job: %s %s", what, j.Status, derefErr(j.Error))
		}
		off := sim.PoweredOffAt(vm.Name)
		if off.IsZero() || j.CompletedAt == nil {
			b.Fatalf("%s: no power-off time", what)
		}
		down := j.CompletedAt.Sub(off).Seconds()
		if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "qcow2", vm.Disks[0].FlatPath, j.Result.Disks[0]).CombinedOutput(); err != nil {
			b.Fatalf("%s: the image is not the disk at power-off: %v: %s", what, err, out)
		}
		if _, err := harness.Virsh("undefine", "--nvram", vm.Name); err != nil {
			b.Fatal(err)
		}
		_ = os.RemoveAll(filepath.Join(agent.StorageDir, j.Definition.ID))
		powerOn(b, sim, password)
		return down
	}

	for i := 0; i < b.N; i++ {
		// Cold: the job shuts the VM down, then copies everything.
		id := harness.Submit(b, ctl, def(proto.Options{ConversionMethod: "vddk", Shutdown: true, PowerOff: true}))
		cold := done("cold", harness.WaitTerminal(b, ctl, id, 15*time.Minute))

		// Warm: the full copy while the VM runs, ~1% changed, then the cutover.
		id = harness.Submit(b, ctl, def(proto.Options{Warm: true}))
		harness.WaitJob(b, ctl, id, 15*time.Minute, "the full copy", func(j proto.Job) bool {
			if j.Status.Terminal() {
				b.Fatalf("warm job ended: %s %s", j.Status, derefErr(j.Error))
			}
			return j.Warm != nil && j.Warm.Rounds >= 1 && j.Progress.Stage == proto.StagePrecopy
		})
		changed := changeGrains(b, sim, vm.Name, size, size/100)
		var out proto.CutoverResponse
		if code, err := harness.PostJSON(ctl.URL()+"/jobs/"+id+"/cutover", struct{}{}, &out); err != nil || code != http.StatusOK {
			b.Fatalf("cutover: %d %v", code, err)
		}
		wj := harness.WaitTerminal(b, ctl, id, 15*time.Minute)
		warm := done("warm", wj)
		b.ReportMetric(cold, "cold-downtime-s")
		b.ReportMetric(warm, "warm-downtime-s")
		b.ReportMetric(wj.Warm.DowntimeSeconds, "warm-agent-downtime-s")
		b.ReportMetric(warm/cold, "warm/cold")
		b.ReportMetric(float64(wj.Warm.ChangedBytes)/(1<<20), "last-round-MiB")
		b.Logf("cold downtime %.2f s; warm downtime %.2f s (agent: %.2f s, power-off → defined), ratio %.3f; %d MiB changed, %d MiB copied at the cutover",
			cold, warm, wj.Warm.DowntimeSeconds, warm/cold, changed>>20, wj.Warm.ChangedBytes>>20)
	}
}

// changeGrains writes n bytes of random 64 KiB grains at distinct random offsets of the
// VM's first disk, as its guest would, and returns the bytes written.
func changeGrains(b *testing.B, sim *vcsim.Sim, name string, size, n int64) int64 {
	b.Helper()
	const grain = 64 << 10
	buf := make([]byte, grain)
	seen := map[int64]bool{}
	r := mathrand()
	var written int64
	for written < n {
		g := r.Int64N(size / grain)
		if seen[g] {
			continue
		}
		seen[g] = true
		_, _ = rand.Read(buf)
		if err := sim.WriteGuest(name, 0, g*grain, buf); err != nil {
			b.Fatal(err)
		}
		written += grain
	}
	return written
}

func mathrand() *mrand.Rand { return mrand.New(mrand.NewPCG(1, 2)) }

// powerOn powers the simulated VM on again for the next job.
func powerOn(b *testing.B, sim *vcsim.Sim, password string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: sim.URL.String(), Username: "admin", Password: password, Thumbprint: sim.Thumbprint,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(ctx)
	v, err := c.FindVM(ctx, sim.VMs[0].Path)
	if err != nil {
		b.Fatal(err)
	}
	task, err := v.Object().PowerOn(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		b.Fatal(err)
	}
}
