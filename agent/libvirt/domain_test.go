package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/hypersdk/hypersdk/agent/capacity"
)

const systemURI = "qemu:///system"

var nameSeq atomic.Int64

// uniqueName gives each test its own domain (tests share libvirtd with other packages).
func uniqueName(t *testing.T) string {
	return fmt.Sprintf("hsx-test-%d-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6, nameSeq.Add(1))
}

// connect opens uri or skips: qemu:///system needs the libvirtd that host-setup starts.
func connect(t *testing.T, uri string) *lv.Connect {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := Connect(ctx, uri)
	if err != nil {
		if uri == systemURI {
			t.Skipf("libvirtd not answering on %s (run scripts/host-setup.sh): %v", uri, err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// uris are the drivers each test runs against: the real daemon and the in-process test
// driver (which needs no daemon).
var uris = []string{systemURI, "test:///default"}

// diskFiles creates images with qemu-img in a directory the qemu user can traverse (a
// started domain opens them as libvirt-qemu).
func diskFiles(t *testing.T, formats ...string) []string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		_ = os.Chmod(d, 0o755)
	}
	var paths []string
	for i, f := range formats {
		p := filepath.Join(dir, fmt.Sprintf("disk%d.%s", i, f))
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", f, p, "16M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
		paths = append(paths, p)
	}
	return paths
}

// cleanupDomain undefines name at the end whatever the test did.
func cleanupDomain(t *testing.T, conn *lv.Connect, name string) {
	t.Cleanup(func() {
		d, err := conn.LookupDomainByName(name)
		if err != nil {
			return
		}
		defer d.Free()
		if active, _ := d.IsActive(); active {
			_ = d.Destroy()
		}
		if err := d.UndefineFlags(lv.DOMAIN_UNDEFINE_NVRAM); err != nil {
			_ = d.Undefine()
		}
	})
}

func readDomain(t *testing.T, conn *lv.Connect, name string) *libvirtxml.Domain {
	t.Helper()
	d, err := conn.LookupDomainByName(name)
	if err != nil {
		t.Fatalf("domain %s not found: %v", name, err)
	}
	defer d.Free()
	s, err := d.GetXMLDesc(lv.DOMAIN_XML_INACTIVE)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(s); err != nil {
		t.Fatal(err)
	}
	return &x
}

func testOptions(t *testing.T) Options {
	return Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestDefine(t *testing.T) {
	for _, uri := range uris {
		t.Run(uri, func(t *testing.T) {
			conn := connect(t, uri)
			name := uniqueName(t)
			cleanupDomain(t, conn, name)
			disks := diskFiles(t, "qcow2", "raw")
			netName := name + "-net"
			defineNetwork(t, conn, netName)
			spec := DomainSpec{
				Name: name, VCPUs: 4, CoresPerSocket: 2, MemoryMiB: 1536, Firmware: FirmwareBIOS,
				Disks: []Disk{{Path: disks[0], Format: "qcow2", Bus: "virtio"}, {Path: disks[1], Format: "raw", Bus: "sata"}},
				NICs: []NIC{
					{Network: "VM Network", MAC: "00:50:56:AA:BB:01", Model: "vmxnet3"},
					{Network: "Backup LAN", MAC: "00:50:56:aa:bb:02"},
				},
				JobID: "job-define-1", SourceVMUUID: "4211aaaa-bbbb-cccc-dddd-eeeeffff0000", SourceVMPath: "DC0/vm/web & <db>",
			}
			opts := testOptions(t)
			opts.NetworkMapping = map[string]string{"VM Network": "network:" + netName, "Backup LAN": "bridge:hsxnobr0"}
			res, err := Define(context.Background(), conn, spec, opts)
			if err != nil {
				t.Fatal(err)
			}
			if res.Name != name || len(res.UUID) != 36 || res.Redefined || res.Started {
				t.Errorf("result = %+v", res)
			}
			// The missing bridge is a warning naming it; the network exists but is only
			// defined, so it gets the hint to start it.
			if len(res.Warnings) != 2 || !strings.Contains(res.Warnings[0], "not active") ||
				!strings.Contains(res.Warnings[1], `"hsxnobr0"`) || !strings.Contains(res.Warnings[1], "Backup LAN") {
				t.Errorf("warnings = %q", res.Warnings)
			}

			x := readDomain(t, conn, name)
			wantType := "qemu"
			if uri != systemURI {
				wantType = "test"
			} else if _, err := os.Stat("/dev/kvm"); err == nil {
				wantType = "kvm"
			}
			if x.Type != wantType {
				t.Errorf("domain type %q, want %q", x.Type, wantType)
			}
			if x.VCPU.Value != 4 || x.CPU == nil || x.CPU.Topology == nil || x.CPU.Topology.Sockets != 2 || x.CPU.Topology.Cores != 2 || x.CPU.Topology.Threads != 1 {
				t.Errorf("vcpu %+v topology %+v", x.VCPU, x.CPU)
			}
			if kib := x.Memory.Value; x.Memory.Unit != "KiB" || kib != 1536*1024 {
				t.Errorf("memory %d %s, want %d KiB", kib, x.Memory.Unit, 1536*1024)
			}
			if uri == systemURI && !strings.HasPrefix(x.OS.Type.Machine, "pc-q35") {
				t.Errorf("machine %q, want q35", x.OS.Type.Machine)
			}
			if len(x.Devices.Disks) != 2 {
				t.Fatalf("disks = %+v", x.Devices.Disks)
			}
			for i, want := range []struct{ path, format, bus, dev string }{
				{disks[0], "qcow2", "virtio", "vda"}, {disks[1], "raw", "sata", "sda"},
			} {
				d := x.Devices.Disks[i]
				if d.Source.File.File != want.path || d.Driver.Type != want.format || d.Target.Bus != want.bus || d.Target.Dev != want.dev {
					t.Errorf("disk %d = source %s driver %+v target %+v; want %+v", i, d.Source.File.File, d.Driver, d.Target, want)
				}
			}
			if x.Devices.Disks[0].Boot == nil || x.Devices.Disks[0].Boot.Order != 1 {
				t.Errorf("first disk is not the boot disk")
			}
			if len(x.Devices.Interfaces) != 2 {
				t.Fatalf("interfaces = %+v", x.Devices.Interfaces)
			}
			n0, n1 := x.Devices.Interfaces[0], x.Devices.Interfaces[1]
			if n0.Source.Network == nil || n0.Source.Network.Network != netName || n0.MAC.Address != "00:50:56:aa:bb:01" || n0.Model.Type != "vmxnet3" {
				t.Errorf("nic 0 = source %+v mac %+v model %+v", n0.Source.Network, n0.MAC, n0.Model)
			}
			if n1.Source.Bridge == nil || n1.Source.Bridge.Bridge != "hsxnobr0" || n1.MAC.Address != "00:50:56:aa:bb:02" || n1.Model.Type != "virtio" {
				t.Errorf("nic 1 = source %+v mac %+v model %+v", n1.Source.Bridge, n1.MAC, n1.Model)
			}
			md, err := ReadMetadata(conn, name)
			if err != nil || md == nil {
				t.Fatalf("metadata: %+v, %v", md, err)
			}
			if md.JobID != "job-define-1" || md.SourceVMUUID != spec.SourceVMUUID || md.SourceVMPath != spec.SourceVMPath {
				t.Errorf("metadata = %+v", md)
			}
			if ts, err := time.Parse(time.RFC3339, md.ConvertedAt); err != nil || time.Since(ts) > time.Hour {
				t.Errorf("converted_at %q: %v", md.ConvertedAt, err)
			}
			if x.Metadata == nil || !strings.Contains(x.Metadata.XML, MetadataNamespace) {
				t.Errorf("metadata element lacks the namespace: %+v", x.Metadata)
			}
		})
	}
}

// defineNetwork defines (not starts: that needs dnsmasq and bridges) an isolated libvirt
// network for the test.
func defineNetwork(t *testing.T, conn *lv.Connect, name string) {
	t.Helper()
	n, err := conn.NetworkDefineXML(fmt.Sprintf(`<network><name>%s</name><bridge name='%s' stp='off'/></network>`, name, bridgeName(name)))
	if err != nil {
		t.Fatalf("define network: %v", err)
	}
	n.Free()
	t.Cleanup(func() {
		if n, err := conn.LookupNetworkByName(name); err == nil {
			_ = n.Undefine()
			n.Free()
		}
	})
}

// bridgeName fits Linux's 15-byte interface names.
func bridgeName(s string) string {
	s = strings.ReplaceAll(s, "hsx-test-", "hb")
	s = strings.ReplaceAll(s, "-", "")
	if len(s) > 15 {
		s = s[len(s)-15:]
	}
	return s
}

func TestDefineEFIStartAndUndefine(t *testing.T) {
	conn := connect(t, systemURI)
	if _, _, err := findOVMF(Options{}); err != nil {
		t.Skip(err)
	}
	name := uniqueName(t)
	cleanupDomain(t, conn, name)
	disks := diskFiles(t, "qcow2")
	opts := testOptions(t)
	opts.StartAfter = true
	res, err := Define(context.Background(), conn, DomainSpec{
		Name: name, VCPUs: 1, MemoryMiB: 128, Firmware: FirmwareEFI,
		Disks: []Disk{{Path: disks[0]}}, JobID: "job-efi",
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Started || len(res.Warnings) != 0 {
		t.Fatalf("result = %+v", res)
	}
	x := readDomain(t, conn, name)
	if x.OS.Loader == nil || !strings.Contains(x.OS.Loader.Path, "OVMF_CODE") || x.OS.Loader.Type != "pflash" || x.OS.Loader.Readonly != "yes" {
		t.Errorf("loader = %+v", x.OS.Loader)
	}
	if x.OS.NVRam == nil || !strings.Contains(x.OS.NVRam.Template, "OVMF_VARS") || x.OS.NVRam.NVRam == "" {
		t.Fatalf("nvram = %+v", x.OS.NVRam)
	}
	nvram := x.OS.NVRam.NVRam
	if _, err := os.Stat(nvram); err != nil {
		t.Fatalf("started EFI domain has no nvram file: %v", err)
	}

	// Another job may not remove it; its own job removes it, running, with its nvram.
	if err := Undefine(context.Background(), conn, name, "job-other"); !errors.Is(err, ErrNotOwned) || !strings.Contains(err.Error(), "job-efi") {
		t.Fatalf("undefine by another job: %v", err)
	}
	if err := Undefine(context.Background(), conn, name, "job-efi"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.LookupDomainByName(name); !isCode(err, lv.ERR_NO_DOMAIN) {
		t.Errorf("domain still there: %v", err)
	}
	if _, err := os.Stat(nvram); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("nvram %s left behind: %v", nvram, err)
	}
	if err := Undefine(context.Background(), conn, name, "job-efi"); err != nil {
		t.Errorf("second undefine (idempotent cleanup): %v", err)
	}
}

func TestDefineCollision(t *testing.T) {
	for _, uri := range uris {
		t.Run(uri, func(t *testing.T) {
			conn := connect(t, uri)
			name := uniqueName(t)
			cleanupDomain(t, conn, name)
			disks := diskFiles(t, "qcow2")
			spec := DomainSpec{Name: name, VCPUs: 2, MemoryMiB: 256, Disks: []Disk{{Path: disks[0]}}, JobID: "job-A", SourceVMPath: "DC0/vm/a"}
			first, err := Define(context.Background(), conn, spec, testOptions(t))
			if err != nil {
				t.Fatal(err)
			}

			other := spec
			other.JobID = "job-B"
			_, err = Define(context.Background(), conn, other, testOptions(t))
			if !errors.Is(err, ErrDomainExists) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "job-A") {
				t.Fatalf("other job: err = %v, want ErrDomainExists naming %s and job-A", err, name)
			}

			// The same job retried (say with more memory read the second time): redefined
			// in place, same UUID, one domain.
			retry := spec
			retry.MemoryMiB = 512
			again, err := Define(context.Background(), conn, retry, testOptions(t))
			if err != nil {
				t.Fatal(err)
			}
			if !again.Redefined || again.UUID != first.UUID {
				t.Errorf("retry = %+v, first = %+v", again, first)
			}
			if got := readDomain(t, conn, name).Memory.Value; got != 512*1024 {
				t.Errorf("memory after redefine = %d KiB", got)
			}
			if n := countDomains(t, conn, name); n != 1 {
				t.Errorf("%d domains named %s", n, name)
			}
		})
	}
}

func countDomains(t *testing.T, conn *lv.Connect, name string) int {
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range doms {
		if dn, _ := d.GetName(); dn == name {
			n++
		}
		d.Free()
	}
	return n
}

func TestDefineForeignDomain(t *testing.T) {
	conn := connect(t, "test:///default")
	name := uniqueName(t)
	cleanupDomain(t, conn, name)
	d, err := conn.DomainDefineXML(fmt.Sprintf(`<domain type='test'><name>%s</name><memory>65536</memory><os><type>hvm</type></os></domain>`, name))
	if err != nil {
		t.Fatal(err)
	}
	d.Free()
	disks := diskFiles(t, "raw")
	_, err = Define(context.Background(), conn, DomainSpec{Name: name, VCPUs: 1, MemoryMiB: 64, Disks: []Disk{{Path: disks[0], Format: "raw"}}, JobID: "job-x"}, testOptions(t))
	if !errors.Is(err, ErrDomainExists) || !strings.Contains(err.Error(), "not made by a HyperSDK migration") {
		t.Fatalf("err = %v", err)
	}
	if err := Undefine(context.Background(), conn, name, "job-x"); !errors.Is(err, ErrNotOwned) {
		t.Fatalf("undefine of a foreign domain: %v", err)
	}
}

func TestNetworkMapping(t *testing.T) {
	for _, uri := range uris {
		t.Run(uri, func(t *testing.T) {
			conn := connect(t, uri)
			name := uniqueName(t)
			cleanupDomain(t, conn, name)
			netName := name + "-n"
			defineNetwork(t, conn, netName)
			br := hostBridge(t)
			disks := diskFiles(t, "qcow2")

			nics := []NIC{
				{Network: "net-bare"},     // bare name → existing libvirt network
				{Network: "br-bare"},      // bare name → existing host bridge
				{Network: "forced-net"},   // network: prefix, exists
				{Network: "unmapped"},     // → DefaultNetwork (missing here)
				{Network: "missing-bare"}, // neither exists → network + warning
				{Network: "missing-net"},  // network: prefix, missing → warning
				{Network: "missing-br"},   // bridge: prefix, missing → warning
			}
			opts := testOptions(t)
			opts.DefaultNetwork = "hsx-no-such-default"
			opts.NetworkMapping = map[string]string{
				"net-bare": netName, "br-bare": br, "forced-net": "network:" + netName,
				"missing-bare": "hsx-nothing", "missing-net": "network:hsx-nonet", "missing-br": "bridge:hsxnobr1",
			}
			if br == "" {
				nics = append(nics[:1], nics[2:]...)
			}
			res, err := Define(context.Background(), conn, DomainSpec{Name: name, VCPUs: 1, MemoryMiB: 64, Disks: []Disk{{Path: disks[0]}}, NICs: nics, JobID: "job-net"}, opts)
			if err != nil {
				t.Fatal(err)
			}
			type want struct{ kind, target string }
			wants := []want{{"network", netName}, {"bridge", br}, {"network", netName}, {"network", "hsx-no-such-default"},
				{"network", "hsx-nothing"}, {"network", "hsx-nonet"}, {"bridge", "hsxnobr1"}}
			if br == "" {
				wants = append(wants[:1], wants[2:]...)
			}
			ifaces := readDomain(t, conn, name).Devices.Interfaces
			for i, w := range wants {
				var kind, target string
				switch s := ifaces[i].Source; {
				case s.Network != nil:
					kind, target = "network", s.Network.Network
				case s.Bridge != nil:
					kind, target = "bridge", s.Bridge.Bridge
				}
				if kind != w.kind || target != w.target {
					t.Errorf("nic %d (%s) → %s %q, want %s %q", i, nics[i].Network, kind, target, w.kind, w.target)
				}
			}
			// One warning per missing target (the defined network is inactive: a hint too).
			joined := strings.Join(res.Warnings, "\n")
			for _, missing := range []string{"hsx-no-such-default", "hsx-nothing", "hsx-nonet", "hsxnobr1"} {
				if !strings.Contains(joined, `"`+missing+`"`) {
					t.Errorf("no warning for %s in %q", missing, res.Warnings)
				}
			}
			if !strings.Contains(joined, "unmapped") || !strings.Contains(joined, "not in network_mapping") {
				t.Errorf("the unmapped NIC's warning does not say it was unmapped: %q", res.Warnings)
			}
		})
	}
}

// hostBridge creates a Linux bridge for the test if this host lets us (root with
// CAP_NET_ADMIN), else returns "" and the bridge case is left out.
func hostBridge(t *testing.T) string {
	name := fmt.Sprintf("hsxbr%d", nameSeq.Add(1)%100000)
	if out, err := exec.Command("ip", "link", "add", "name", name, "type", "bridge").CombinedOutput(); err != nil {
		t.Logf("cannot create a host bridge here (%v: %s): bridge-by-bare-name case skipped", err, out)
		return ""
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", name).Run() })
	return name
}

func TestStartAfterOnTestDriver(t *testing.T) {
	conn := connect(t, "test:///default")
	name := uniqueName(t)
	cleanupDomain(t, conn, name)
	disks := diskFiles(t, "qcow2")
	opts := testOptions(t)
	opts.StartAfter = true
	opts.NetworkMapping = map[string]string{"VM Network": "default"} // test:///default has it
	res, err := Define(context.Background(), conn, DomainSpec{Name: name, VCPUs: 1, MemoryMiB: 64, Disks: []Disk{{Path: disks[0]}},
		NICs: []NIC{{Network: "VM Network", MAC: "00:50:56:01:02:03"}}, JobID: "job-start"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Started || len(res.Warnings) != 0 {
		t.Fatalf("result = %+v", res)
	}
	// A retry of the same job leaves the running domain running.
	again, err := Define(context.Background(), conn, DomainSpec{Name: name, VCPUs: 1, MemoryMiB: 64, Disks: []Disk{{Path: disks[0]}}, JobID: "job-start"}, opts)
	if err != nil || !again.Redefined || !again.Started {
		t.Fatalf("retry = %+v, %v", again, err)
	}
	if err := Undefine(context.Background(), conn, name, "job-start"); err != nil {
		t.Fatal(err)
	}
}

func TestConnectUnreachable(t *testing.T) {
	uri := "qemu+unix:///system?socket=/nonexistent/hsx/libvirt-sock"
	_, err := Connect(context.Background(), uri)
	if !errors.Is(err, ErrLibvirtUnreachable) || !strings.Contains(err.Error(), uri) || !strings.Contains(err.Error(), "systemctl start libvirtd") {
		t.Fatalf("err = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Connect(ctx, "test:///default"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled connect: %v", err)
	}
}

func TestDefineInvalidSpec(t *testing.T) {
	conn := connect(t, "test:///default")
	ok := DomainSpec{Name: "x", VCPUs: 1, MemoryMiB: 64, Disks: []Disk{{Path: "/d.qcow2"}}, JobID: "j"}
	for name, mutate := range map[string]func(*DomainSpec){
		"no name":       func(s *DomainSpec) { s.Name = "" },
		"no job id":     func(s *DomainSpec) { s.JobID = "" },
		"zero vcpus":    func(s *DomainSpec) { s.VCPUs = 0 },
		"no memory":     func(s *DomainSpec) { s.MemoryMiB = 0 },
		"no disks":      func(s *DomainSpec) { s.Disks = nil },
		"relative disk": func(s *DomainSpec) { s.Disks[0].Path = "d.qcow2" },
		"bad format":    func(s *DomainSpec) { s.Disks[0].Format = "vmdk" },
		"bad bus":       func(s *DomainSpec) { s.Disks[0].Bus = "ide" },
		"bad firmware":  func(s *DomainSpec) { s.Firmware = "uboot" },
		"bad machine":   func(s *DomainSpec) { s.Machine = "virt" },
		"bad mac":       func(s *DomainSpec) { s.NICs = []NIC{{MAC: "00:50:56:zz:00:01"}} },
	} {
		s := ok
		s.Disks = append([]Disk(nil), ok.Disks...)
		mutate(&s)
		if _, err := Define(context.Background(), conn, s, testOptions(t)); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: err = %v, want ErrInvalidSpec", name, err)
		}
	}
}

func TestBuildDomainDetails(t *testing.T) {
	spec := DomainSpec{
		Name: "w", VCPUs: 6, CoresPerSocket: 4, MemoryMiB: 2048, GuestOS: "windows2019srv_64Guest", Machine: "pc",
		Disks: []Disk{{Path: "/a", Bus: "scsi"}, {Path: "/b", Bus: "scsi"}, {Path: "/c"}},
		JobID: "j1", SourceVMPath: `DC0/vm/"quoted" & <tag>`,
	}
	cpu := &capacity.CPUDef{Mode: "host-model", Disable: []string{"arch-capabilities"}}
	d, warnings, err := buildDomain(spec, Options{Now: func() time.Time { return time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC) },
		CPU: cpu, ConsoleLog: "/var/lib/hypersdk/storage/j1/w-console.log"}, host{domainType: "kvm"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 6 vCPUs do not split into sockets of 4: flattened, with a warning. The CPU is the
	// probe's definition, with its disabled feature.
	if d.CPU.Topology.Sockets != 6 || d.CPU.Topology.Cores != 1 || len(warnings) != 1 || d.CPU.Mode != "host-model" ||
		len(d.CPU.Features) != 1 || d.CPU.Features[0].Name != "arch-capabilities" || d.CPU.Features[0].Policy != "disable" {
		t.Errorf("topology %+v mode %q features %+v warnings %q", d.CPU.Topology, d.CPU.Mode, d.CPU.Features, warnings)
	}
	if s := d.Devices.Serials; len(s) != 1 || s[0].Log == nil || s[0].Log.File != "/var/lib/hypersdk/storage/j1/w-console.log" {
		t.Errorf("serial %+v: want its console log", s)
	}
	// Without a probed CPU (and under TCG, whatever the probe said): qemu's default model.
	for _, tc := range []struct {
		typ string
		cpu *capacity.CPUDef
	}{{"kvm", nil}, {"qemu", cpu}} {
		d, _, err := buildDomain(spec, Options{CPU: tc.cpu}, host{domainType: tc.typ}, nil)
		if err != nil || d.CPU.Mode != "" || len(d.CPU.Features) != 0 || d.CPU.Topology == nil {
			t.Errorf("%s with cpu %v: %+v %v", tc.typ, tc.cpu, d.CPU, err)
		}
	}
	if d.Clock.Offset != "localtime" || d.OS.Type.Machine != "pc" {
		t.Errorf("clock %q machine %q", d.Clock.Offset, d.OS.Type.Machine)
	}
	devs := []string{d.Devices.Disks[0].Target.Dev, d.Devices.Disks[1].Target.Dev, d.Devices.Disks[2].Target.Dev}
	if strings.Join(devs, ",") != "sda,sdb,vda" || len(d.Devices.Controllers) != 1 || d.Devices.Controllers[0].Model != "virtio-scsi" {
		t.Errorf("devs %v controllers %+v", devs, d.Devices.Controllers)
	}
	doc, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(doc, `<hypersdk:source_vm_path>DC0/vm/&#34;quoted&#34; &amp; &lt;tag&gt;</hypersdk:source_vm_path>`) ||
		!strings.Contains(doc, `<hypersdk:converted_at>2026-11-27T12:00:00Z</hypersdk:converted_at>`) {
		t.Errorf("metadata not escaped/stamped as expected:\n%s", doc)
	}
	for i, want := range map[int]string{0: "a", 25: "z", 26: "aa", 27: "ab", 701: "zz", 702: "aaa"} {
		if got := driveLetters(i); got != want {
			t.Errorf("driveLetters(%d) = %q, want %q", i, got, want)
		}
	}
	if _, _, err := findOVMF(Options{OVMFCode: "", OVMFVars: ""}); err != nil && !errors.Is(err, ErrFirmwareMissing) {
		t.Errorf("findOVMF: %v", err)
	}
	spec.Firmware = FirmwareEFI
	saved := ovmfCandidates
	ovmfCandidates = [][2]string{{"/nonexistent/OVMF_CODE.fd", "/nonexistent/OVMF_VARS.fd"}}
	defer func() { ovmfCandidates = saved }()
	if _, _, err := buildDomain(spec, Options{}, host{domainType: "qemu"}, nil); !errors.Is(err, ErrFirmwareMissing) || !strings.Contains(err.Error(), "ovmf") {
		t.Errorf("efi without OVMF: %v", err)
	}
}

// TestSourceXML: what virt-v2v-in-place reads: the VM as it was on VMware, every disk at
// its converted path on a SCSI bus (so the guest's /dev/sdX names map), the VMware NIC
// models and MACs, the BIOS UUID.
func TestSourceXML(t *testing.T) {
	spec := DomainSpec{Name: "web", VCPUs: 2, MemoryMiB: 1024, JobID: "j1", BIOSUUID: "4211AAAA-BBBB-CCCC-DDDD-EEEEFFFF0000",
		Disks: []Disk{{Path: "/s/j1/web-disk0.qcow2", Format: "qcow2", Bus: "virtio"}, {Path: "/s/j1/web-disk1.raw", Format: "raw"}},
		NICs:  []NIC{{Network: "VM Network", MAC: "00:50:56:aa:bb:01", Model: "vmxnet3"}}}
	doc, err := SourceXML(spec)
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	if d.UUID != "4211aaaa-bbbb-cccc-dddd-eeeeffff0000" || len(d.Devices.Disks) != 2 {
		t.Fatalf("uuid %q disks %d", d.UUID, len(d.Devices.Disks))
	}
	for i, want := range []struct{ path, format, dev string }{{"/s/j1/web-disk0.qcow2", "qcow2", "sda"}, {"/s/j1/web-disk1.raw", "raw", "sdb"}} {
		dd := d.Devices.Disks[i]
		if dd.Source.File.File != want.path || dd.Driver.Type != want.format || dd.Target.Bus != "scsi" || dd.Target.Dev != want.dev {
			t.Errorf("disk %d: %s %s %s/%s, want %+v on scsi", i, dd.Source.File.File, dd.Driver.Type, dd.Target.Bus, dd.Target.Dev, want)
		}
	}
	if n := d.Devices.Interfaces; len(n) != 1 || n[0].Model.Type != "vmxnet3" || n[0].MAC.Address != "00:50:56:aa:bb:01" {
		t.Errorf("interfaces %+v", n)
	}
	if _, err := SourceXML(DomainSpec{Name: "x"}); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("an invalid spec: %v", err)
	}
}
