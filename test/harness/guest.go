package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// DefaultGuestImage is where scripts/guest-image.sh links its newest image.
const DefaultGuestImage = "/var/cache/hypersdk/guest/debian12.raw"

// VirtProbeFile is the virtualisation decision every test agent shares, so a host probes
// once per boot however many agents the tests start (make test fills it first).
var VirtProbeFile = filepath.Join(os.TempDir(), "hypersdk-test-virt-probe.json")

// guestArgs are the agent flags every test agent gets: guest conversion off by default (the
// simulator's disks hold random bytes, which virt-v2v cannot convert; a test that converts a
// guest asks for it in its job or passes --guest-conversion auto after these) and the shared
// virtualisation decision.
func guestArgs() []string {
	return []string{"--guest-conversion", "off", "--virt-probe-file", VirtProbeFile}
}

// GuestImage returns the bootable guest image (scripts/guest-image.sh; make test builds it
// and sets HYPERSDK_GUEST_IMAGE), or skips the test saying how to get one.
func GuestImage(t testing.TB) string {
	t.Helper()
	p := os.Getenv("HYPERSDK_GUEST_IMAGE")
	if p == "" {
		p = DefaultGuestImage
	}
	if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
		t.Skipf("no guest image at %s: build it with scripts/guest-image.sh (make test does)", p)
	}
	return p
}

// QemuCanReach lets the qemu user (libvirt-qemu) traverse the directories from dir up to
// the root: test temp dirs are 0700, and a domain whose disks qemu cannot reach defines
// fine and then fails to start.
func QemuCanReach(t testing.TB, dir string) {
	t.Helper()
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
}

var bridgeSeq atomic.Int64

// Bridge creates a host bridge with no address and no uplink for a test's domains to start
// with (a NIC needs a network or bridge, and libvirt's own networks need iptables): it
// carries no traffic anywhere. It is removed when the test ends.
func Bridge(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("hsxb%d-%d", os.Getpid()%100000, bridgeSeq.Add(1))
	if out, err := exec.Command("ip", "link", "add", name, "type", "bridge").CombinedOutput(); err != nil {
		t.Skipf("cannot create a bridge for the domain's NIC (needs root and iproute2): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", name).Run() })
	if out, err := exec.Command("ip", "link", "set", name, "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set %s up: %v: %s", name, err, out)
	}
	return name
}

// AgentTestArgs are the flags every test agent gets (guest conversion off, the shared
// virtualisation decision), for tests that build an agent's command line themselves.
func AgentTestArgs() []string { return guestArgs() }
