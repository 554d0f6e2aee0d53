package libvirt

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/capacity"
)

// TestBootTrial boots the host's kernel through the real libvirtd: under TCG (which runs on
// any host) it must reach the end of its initialisation, and the trial must say so from the
// console; a domain type the host cannot start reports qemu's or libvirt's reason.
func TestBootTrial(t *testing.T) {
	connect(t, systemURI) // skips without libvirtd
	kernel := FindKernel()
	if kernel == "" {
		t.Skip("no /boot/vmlinuz-* to boot (install linux-image-amd64: scripts/host-setup.sh)")
	}
	trial := BootTrial{URI: systemURI, Kernel: kernel, Timeout: 3 * time.Minute, Stall: time.Minute, Logger: testOptions(t).Logger}
	r := trial.Run(context.Background(), "qemu", capacity.CPUDef{})
	if !r.Started || !r.Booted || !strings.Contains(r.Evidence, "VFS") {
		t.Fatalf("TCG trial of %s: %+v", kernel, r)
	}
	t.Logf("TCG boot of %s to its root mount: %.1f s", kernel, r.Seconds)

	host := capacity.ReadHostVirt()
	if !host.DevKVM {
		r := trial.Run(context.Background(), "kvm", capacity.CPUDef{Mode: "host-model"})
		if r.Started || r.Booted || r.Error == "" {
			t.Errorf("kvm trial on a host without /dev/kvm: %+v", r)
		}
	}
	out, err := exec.Command("virsh", "-c", systemURI, "list", "--all", "--name").Output()
	if err == nil && strings.Contains(string(out), "hypersdk-virt-probe-") {
		t.Errorf("trial domains left behind: %s", out)
	}
}

func TestFindKernelOrder(t *testing.T) {
	for _, tc := range [][2]string{
		{"/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-57-amd64"},
		{"/boot/vmlinuz-5.10.0-30-amd64", "/boot/vmlinuz-6.1.0-1-amd64"},
	} {
		if !versionLess(tc[0], tc[1]) || versionLess(tc[1], tc[0]) {
			t.Errorf("%s should sort before %s", tc[0], tc[1])
		}
	}
}
