package transfer

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestProbe(t *testing.T) {
	requireTools(t, "qemu-img", "nbdkit", "qemu-nbd")
	t.Parallel()
	c := New(Config{Logger: testLogger(t)}).Probe(context.Background(), "")
	if !c.QemuImg.Found || !strings.HasPrefix(c.QemuImg.Version, "7.") && !strings.HasPrefix(c.QemuImg.Version, "8.") && !strings.HasPrefix(c.QemuImg.Version, "9.") {
		t.Errorf("qemu-img = %+v", c.QemuImg)
	}
	if !c.Nbdkit.Found || c.Nbdkit.Version == "" || !c.NbdkitCurl || !c.NbdkitRetry {
		t.Errorf("nbdkit = %+v curl %v retry %v", c.Nbdkit, c.NbdkitCurl, c.NbdkitRetry)
	}
	if !c.QemuNBD.Found {
		t.Errorf("qemu-nbd = %+v", c.QemuNBD)
	}
	// No VDDK is configured.
	if c.VDDK || !strings.Contains(c.VDDKReason, "--vddk-libdir") {
		t.Errorf("vddk = %v, reason %q", c.VDDK, c.VDDKReason)
	}
	if got := strings.Join(c.Methods(), ","); got != "https,nfc" {
		t.Errorf("methods = %s, want https,nfc", got)
	}
}

func TestPick(t *testing.T) {
	t.Parallel()
	full := Capabilities{
		QemuImg: Tool{Found: true}, QemuNBD: Tool{Found: true}, Nbdkit: Tool{Found: true},
		NbdkitCurl: true, NbdkitRetry: true, VDDK: true,
	}
	noVDDK := full
	noVDDK.VDDK, noVDDK.VDDKReason = false, "VMware VDDK not found: /opt/vddk has no lib64/libvixDiskLib.so.8"
	bare := Capabilities{}
	offFlat := DiskFacts{PoweredOff: true, AllFlat: true}
	tests := []struct {
		method string
		caps   Capabilities
		facts  DiskFacts
		want   string
		err    error
	}{
		{"auto", full, DiskFacts{}, MethodVDDK, nil},
		{"", noVDDK, offFlat, MethodHTTPS, nil},
		{"auto", noVDDK, DiskFacts{PoweredOff: true}, MethodNFC, nil}, // a sparse/delta disk
		{"auto", noVDDK, DiskFacts{AllFlat: true}, MethodNFC, nil},    // running VM
		{"auto", bare, offFlat, "", ErrMethodUnavailable},             // nothing installed
		{"vddk", noVDDK, offFlat, "", ErrVDDKUnavailable},             // demanded, missing
		{"https", noVDDK, DiskFacts{}, MethodHTTPS, nil},              // explicit wins over facts
		{"nfc", Capabilities{QemuImg: Tool{Found: true}}, DiskFacts{}, "", ErrMethodUnavailable},
		{"ftp", full, DiskFacts{}, "", ErrMethodUnavailable},
	}
	for _, tc := range tests {
		got, err := Pick(tc.method, tc.caps, tc.facts)
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("Pick(%q, vddk=%v, %+v) = %q, %v; want %q, %v", tc.method, tc.caps.VDDK, tc.facts, got, err, tc.want, tc.err)
		}
	}
	if _, err := Pick("vddk", noVDDK, offFlat); err == nil || !strings.Contains(err.Error(), "VDDK not found") {
		t.Errorf("vddk error does not say what is missing: %v", err)
	}
	// VDDK loads but qcow2 needs qemu-nbd: auto does not pick vddk, vddk says why.
	noNBD := full
	noNBD.QemuNBD = Tool{}
	if got, err := Pick("vddk", noNBD, offFlat); err == nil || !strings.Contains(err.Error(), "qemu-nbd") {
		t.Errorf("Pick(vddk) without qemu-nbd = %q, %v", got, err)
	}
}
