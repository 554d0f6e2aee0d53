package test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// TestGuestConversion is the slow real-world run (`make test-guest`; about 11 minutes
// where libguestfs runs under TCG, 2-3 with KVM): the VMware-style Debian guest goes
// through the controller to an agent that converts it with virt-v2v-in-place (open-vm-tools
// out, virtio into its initramfs, /dev/sda1 in fstab and grub rewritten), defines it on
// virtio and boots it to its login prompt. Before the conversion the same guest cannot boot
// on virtio (TestBootMigratedGuest shows it), so the boot on virtio is the proof that the
// conversion did its work: the initramfs found the root disk by its virtio driver, and
// systemd mounted what fstab names (a stale /dev/sda1 would end in emergency mode, which the
// boot check reports as a failure).
func TestGuestConversion(t *testing.T) {
	if os.Getenv("HYPERSDK_GUEST_CONVERSION") != "1" {
		t.Skip("the guest conversion run takes minutes: make test-guest (HYPERSDK_GUEST_CONVERSION=1)")
	}
	if _, err := exec.LookPath("virt-v2v-in-place"); err != nil {
		t.Fatal("virt-v2v-in-place is not installed: run scripts/host-setup.sh")
	}
	image := harness.GuestImage(t)
	e := newMigrationEnv(t, vcsim.Config{VMs: 1, DisksPerVM: 1, CPUs: 1, MemoryMB: 1024, Guest: vcsim.GuestLinux, GuestImage: image},
		15*time.Second, 1)
	harness.QemuCanReach(t, e.dir)
	nets := map[string]string{"VM Network": "bridge:" + harness.Bridge(t)}
	start := time.Now()
	id := harness.Submit(t, e.ctl, e.job(0, "", proto.Options{ConversionMethod: "https", GuestConversion: ptrBool(true),
		VerifyBoot: true, NetworkMapping: nets}))
	j := harness.WaitTerminal(t, e.ctl, id, 45*time.Minute)
	if j.Status != proto.StatusCompleted {
		t.Fatalf("job %s: %s: %s", id, j.Status, errText(j))
	}
	r := j.Result
	c := r.Conversion
	if c == nil || !c.Converted || !strings.HasPrefix(c.Tool, "virt-v2v-in-place") || c.Seconds <= 0 || (c.Accel != "kvm" && c.Accel != "tcg") {
		t.Fatalf("result.conversion %+v", c)
	}
	if !strings.Contains(strings.Join(c.Steps, "\n"), "Converting") {
		t.Errorf("conversion steps %q lack virt-v2v's \"Converting … to run on KVM\"", c.Steps)
	}
	if r.Devices == nil || r.Devices.DiskBus != "virtio" || r.Devices.NICModel != "virtio" {
		t.Errorf("devices %+v, want virtio for a converted guest", r.Devices)
	}
	out, err := harness.Virsh("dumpxml", "--inactive", r.DomainName)
	var d libvirtxml.Domain
	if err != nil || d.Unmarshal(out) != nil || len(d.Devices.Disks) != 1 || d.Devices.Disks[0].Target.Bus != "virtio" {
		t.Errorf("domain %s: disks %+v (%v), want one on virtio", r.DomainName, d.Devices, err)
	}
	if r.Boot == nil || !r.Boot.OK || !strings.HasSuffix(r.Boot.Evidence, "login:") {
		t.Fatalf("result.boot %+v", r.Boot)
	}
	t.Logf("converted by %s in %.0f s (libguestfs under %s), booted on virtio in %.0f s under %s (%s); job %.0f s",
		c.Tool, c.Seconds, c.Accel, r.Boot.Seconds, r.Virtualization.Type, r.Virtualization.CPU, time.Since(start).Seconds())
}

func ptrBool(b bool) *bool { return &b }
