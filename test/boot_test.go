package test

import (
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// TestBootMigratedGuest: a real guest end to end. The simulator serves VMs whose first disk
// holds a bootable Debian 12 installed the way VMware guests are (scripts/guest-image.sh);
// the job goes through the controller to a real agent, which copies the disk, defines the
// domain with the virtualisation its probe chose, starts it and reads its serial console.
//
//   - Not converted (the conversion run is `make test-guest`), the guest gets compatibility
//     devices (sata, e1000e) and boots to its login prompt: result.boot says so, with the
//     prompt as evidence, and the domain is shut down afterwards.
//   - Put on a virtio disk it has no driver for (options.disk_bus: virtio, no conversion),
//     the same guest starts and never finds its root disk: the boot check fails the job with
//     the console's last lines instead of reporting a success, and keeps the domain.
func TestBootMigratedGuest(t *testing.T) {
	t.Parallel()
	image := harness.GuestImage(t)
	e := newMigrationEnv(t, vcsim.Config{VMs: 2, DisksPerVM: 1, CPUs: 1, MemoryMB: 1024, Guest: vcsim.GuestLinux, GuestImage: image},
		15*time.Second, 2)
	harness.QemuCanReach(t, e.dir)
	bridge := harness.Bridge(t)
	nets := map[string]string{"VM Network": "bridge:" + bridge}

	// The boot timeouts allow for TCG on a busy 2-core machine (a boot takes 2-3 minutes
	// there, 20 s when idle); the guest without a driver fails as soon as its initramfs
	// gives up on the root device, not at the timeout.
	ok := harness.Submit(t, e.ctl, e.job(0, "", proto.Options{ConversionMethod: "https", VerifyBoot: true, BootTimeoutSeconds: 900,
		NetworkMapping: nets}))
	// nfc: the same guest as a stream-optimized VMDK through an export lease.
	noDriver := harness.Submit(t, e.ctl, e.job(1, "", proto.Options{ConversionMethod: "nfc", DiskBus: "virtio", VerifyBoot: true,
		BootTimeoutSeconds: 900, NetworkMapping: nets}))

	t.Run("compatibility devices boot", func(t *testing.T) {
		j := harness.WaitTerminal(t, e.ctl, ok, 20*time.Minute)
		if j.Status != proto.StatusCompleted {
			t.Fatalf("job %s: %s: %s", ok, j.Status, errText(j))
		}
		r := j.Result
		if r == nil || r.Boot == nil || !r.Boot.OK || !strings.HasSuffix(r.Boot.Evidence, "login:") || r.Boot.Seconds <= 0 {
			t.Fatalf("result.boot %+v, want ok with the login prompt as evidence", r)
		}
		t.Logf("booted in %.0f s under %s (%s): %q", r.Boot.Seconds, r.Virtualization.Type, r.Virtualization.CPU, r.Boot.Evidence)
		if r.Devices == nil || r.Devices.DiskBus != "sata" || r.Devices.NICModel != "e1000e" {
			t.Errorf("devices %+v, want sata + e1000e for an unconverted guest", r.Devices)
		}
		if v := r.Virtualization; v == nil || (v.Type != proto.VirtKVM && v.Type != proto.VirtTCG) || v.Reason == "" {
			t.Errorf("virtualization %+v, want the agent's decision with its reason", v)
		}
		if r.Conversion == nil || r.Conversion.Converted {
			t.Errorf("conversion %+v, want not converted", r.Conversion)
		}
		if !strings.EqualFold(r.DomainUUID, e.sim.VMs[0].UUID) {
			t.Errorf("domain uuid %s, want the source's BIOS UUID %s", r.DomainUUID, e.sim.VMs[0].UUID)
		}
		// Shut down after the check (no start_after).
		if st, _ := harness.Virsh("domstate", r.DomainName); strings.TrimSpace(st) != "shut off" {
			t.Errorf("domain %s is %q after the boot check, want shut off", r.DomainName, strings.TrimSpace(st))
		}
		// The agent advertises how it runs guests.
		var a proto.AgentInfo
		if harness.GetJSON(e.ctl.URL()+"/agents/agent-1", &a) != 200 || a.Capabilities.Virtualization == nil ||
			a.Capabilities.Virtualization.Type != r.Virtualization.Type {
			t.Errorf("GET /agents/agent-1 capabilities %+v, want virtualization %s", a.Capabilities, r.Virtualization.Type)
		}
	})

	t.Run("no driver for the disk bus is caught", func(t *testing.T) {
		j := harness.WaitTerminal(t, e.ctl, noDriver, 20*time.Minute)
		if j.Status != proto.StatusFailed || j.Attempt != 1 {
			t.Fatalf("job %s: %s at attempt %d (%s), want failed by the boot check at attempt 1", noDriver, j.Status, j.Attempt, errText(j))
		}
		msg := errText(j)
		for _, want := range []string{"boot_check:", "is kept (stopped)", "last console lines:", "virsh console " + e.sim.VMs[1].Name} {
			if !strings.Contains(msg, want) {
				t.Errorf("error lacks %q:\n%s", want, msg)
			}
		}
		// Caught when the initramfs gives up on /dev/sda1, not at the timeout.
		if !strings.Contains(msg, "did not find the root disk") || !strings.Contains(msg, "/dev/sda1") {
			t.Errorf("console tail does not show the missing root device:\n%s", msg)
		}
		if !strings.Contains(strings.Join(j.Warnings, "\n"), "disk_bus virtio asked for an unconverted guest") {
			t.Errorf("warnings %q lack the disk_bus warning", j.Warnings)
		}
		if !harness.DomainExists(e.sim.VMs[1].Name) || len(entries(t, e.jobDir(noDriver))) == 0 {
			t.Errorf("the domain and disks of the guest that did not boot were not kept")
		}
	})
}
