package bench

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// BenchmarkGuest measures a real guest's way through the fleet, each step once (they take
// minutes; nothing here is asserted about time):
//   - build: scripts/guest-image.sh from scratch into an empty cache (mmdebstrap, the disk,
//     GRUB): the one-time cost of the test guest on a new machine;
//   - the guest migrated without conversion and booted on compatibility devices (sata):
//     copy and boot-check seconds;
//   - the guest migrated with conversion (virt-v2v-in-place) and booted on virtio:
//     conversion and boot seconds.
//
// The units name how the host ran them: "-kvm" or "-tcg" (libguestfs's appliance for the
// conversion, the domain type for the boots).
func BenchmarkGuest(b *testing.B) {
	skipUnlessBench(b)
	harness.RequireLibvirt(b)
	root := repoRoot(b)
	image := harness.GuestImage(b)

	b.Run("build", func(b *testing.B) {
		if os.Geteuid() != 0 {
			b.Skip("the guest build needs root (mmdebstrap)")
		}
		cache := b.TempDir()
		cmd := exec.Command(filepath.Join(root, "scripts", "guest-image.sh"))
		cmd.Env = append(os.Environ(), "HYPERSDK_GUEST_CACHE="+cache)
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("guest-image.sh: %v: %s", err, out)
		}
		b.ReportMetric(time.Since(t0).Seconds(), "build-s")
		b.ReportMetric(float64(runtime.NumCPU()), "cpus")
	})

	dir := b.TempDir()
	harness.QemuCanReach(b, dir)
	sim := harness.StartSim(b, vcsim.Config{VMs: 2, DisksPerVM: 1, CPUs: 1, MemoryMB: 1024, Guest: vcsim.GuestLinux, GuestImage: image,
		Username: "admin", Password: "bench-pw", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctl := startBenchController(b, dir)
	harness.StartAgent(b, dir, "bench-agent", []*harness.Controller{ctl}, "--max-jobs", "1", "--log-level", "warn")
	nets := map[string]string{"VM Network": "bridge:" + harness.Bridge(b)}

	migrate := func(b *testing.B, vm int, convert bool) *proto.JobResult {
		v := sim.VMs[vm]
		harness.CleanupDomain(b, v.Name)
		t0 := time.Now()
		id := harness.Submit(b, ctl, proto.JobDefinition{VMPath: v.Path,
			Source:      proto.Source{Type: "vsphere", VCenterURL: sim.URL.String(), Username: "admin", Password: "bench-pw", Thumbprint: sim.Thumbprint},
			Destination: proto.Destination{Type: "kvm"},
			Options: proto.Options{ConversionMethod: "https", GuestConversion: &convert, VerifyBoot: true, BootTimeoutSeconds: 1800,
				NetworkMapping: nets}})
		j := harness.WaitTerminal(b, ctl, id, time.Hour)
		if j.Status != proto.StatusCompleted || j.Result == nil || j.Result.Boot == nil {
			msg := ""
			if j.Error != nil {
				msg = *j.Error
			}
			b.Fatalf("job %s: %s: %s", id, j.Status, msg)
		}
		b.ReportMetric(time.Since(t0).Seconds(), "job-s")
		return j.Result
	}

	b.Run("compatibility-devices", func(b *testing.B) {
		r := migrate(b, 0, false)
		b.ReportMetric(r.Boot.Seconds, "boot-s-"+accel(r.Virtualization.Type))
		b.Logf("booted on %s disks under %s (%s) in %.1f s: %q", r.Devices.DiskBus, r.Virtualization.Type, r.Virtualization.CPU, r.Boot.Seconds, r.Boot.Evidence)
	})
	b.Run("converted-virtio", func(b *testing.B) {
		r := migrate(b, 1, true)
		b.ReportMetric(r.Conversion.Seconds, "convert-s-"+r.Conversion.Accel)
		b.ReportMetric(r.Boot.Seconds, "boot-s-"+accel(r.Virtualization.Type))
		b.Logf("converted by %s in %.0f s (libguestfs under %s: %s); booted on %s under %s in %.1f s",
			r.Conversion.Tool, r.Conversion.Seconds, strings.ToUpper(r.Conversion.Accel), r.Virtualization.Reason,
			r.Devices.DiskBus, r.Virtualization.Type, r.Boot.Seconds)
	})
}

// accel names a domain type the way the conversion's accel is named.
func accel(domainType string) string {
	if domainType == proto.VirtKVM {
		return "kvm"
	}
	return "tcg"
}

// repoRoot is the module root (scripts/ lives there).
func repoRoot(b *testing.B) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		b.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}
