package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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
	// Debian ships no vddk plugin and no VDDK is configured.
	if c.VDDK || !strings.Contains(c.VDDKReason, "vddk plugin") {
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
	noVDDK.VDDK, noVDDK.VDDKReason = false, "nbdkit's vddk plugin is not installed"
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
	if _, err := Pick("vddk", noVDDK, offFlat); err == nil || !strings.Contains(err.Error(), "vddk plugin") {
		t.Errorf("vddk error does not say what is missing: %v", err)
	}
}

func TestVDDKUnavailableHere(t *testing.T) {
	requireTools(t, "nbdkit")
	t.Parallel()
	fakeLib := t.TempDir()
	os.MkdirAll(filepath.Join(fakeLib, "lib64"), 0o755)
	os.WriteFile(filepath.Join(fakeLib, "lib64", "libvixDiskLib.so.8"), nil, 0o644)

	tests := []struct {
		name, libdir string
		want         []string
	}{
		{"nothing configured", "", []string{"vddk plugin", "no VDDK libdir configured"}},
		{"libdir without VDDK", t.TempDir(), []string{"vddk plugin", "lib64/libvixDiskLib.so"}},
		{"VDDK present, plugin missing", fakeLib, []string{"vddk plugin"}},
	}
	for _, tc := range tests {
		ok, reason := VDDKAvailable(tc.libdir)
		if ok {
			t.Fatalf("%s: VDDK reported available on Debian", tc.name)
		}
		for _, w := range tc.want {
			if !strings.Contains(reason, w) {
				t.Errorf("%s: reason %q lacks %q", tc.name, reason, w)
			}
		}
		if tc.libdir == fakeLib && strings.Contains(reason, "libvixDiskLib") {
			t.Errorf("%s: reason blames VDDK that is there: %q", tc.name, reason)
		}
	}

	// The transfer itself fails before doing anything, saying what is missing, with no
	// password anywhere in the message.
	tmp := t.TempDir()
	out := filepath.Join(tmp, "out.qcow2")
	_, err := testTransferer(t, tmp).VDDK(context.Background(), VDDKSource{
		Server: "vc.example", User: "administrator@vsphere.local", Password: "s3cret-pass",
		Thumbprint: "AA:BB", VMMoref: "vm-42", File: "[ds1] vm/vm.vmdk", Libdir: fakeLib,
	}, Output{Path: out})
	if !errors.Is(err, ErrVDDKUnavailable) || !strings.Contains(err.Error(), "nbdkit-vddk-plugin.so") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("err = %v", err)
	}
	if _, serr := os.Stat(out); !errors.Is(serr, os.ErrNotExist) {
		t.Error("output created")
	}
}

func TestVDDKArgs(t *testing.T) {
	t.Parallel()
	src := VDDKSource{
		Server: "esx1.example", User: "root", Password: "s3cret-pass", Thumbprint: "AA:BB:CC",
		VMMoref: "vm-42", File: "[ds1] vm 1/vm 1.vmdk", Snapshot: "snapshot-7", Libdir: "/opt/vddk", Port: 902,
	}
	argv, err := vddkArgs(src, "/tmp/hsx-1/password")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(argv, "\x00")
	for _, want := range []string{"--filter=retry", "vddk", "server=esx1.example", "user=root", "password=+/tmp/hsx-1/password",
		"thumbprint=AA:BB:CC", "vm=moref=vm-42", "file=[ds1] vm 1/vm 1.vmdk", "snapshot=snapshot-7", "libdir=/opt/vddk", "port=902"} {
		if !strings.Contains("\x00"+joined+"\x00", "\x00"+want+"\x00") {
			t.Errorf("argv lacks %q: %q", want, argv)
		}
	}
	if strings.Contains(joined, "s3cret") {
		t.Errorf("password on the command line: %q", argv)
	}
	for _, bad := range []VDDKSource{{Server: "x", User: "u", VMMoref: "vm-1", File: "f"}, {User: "u", Thumbprint: "t"}} {
		if _, err := vddkArgs(bad, "/p"); err == nil {
			t.Errorf("vddkArgs(%+v) accepted an incomplete source", bad)
		}
	}
}
