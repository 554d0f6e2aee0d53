package vcsim_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/nfc"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/hypersdk/hypersdk/shared/vcsim"
)

const mib = 1 << 20

func TestParseSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"1G", 1 << 30, false},
		{"512M", 512 * mib, false},
		{"64MiB", 64 * mib, false},
		{"2gb", 2 << 30, false},
		{"4096", 4096, false},
		{"10K", 10 << 10, false},
		{"1T", 1 << 40, false},
		{"", 0, true},
		{"G", 0, true},
		{"-1M", 0, true},
		{"1.5G", 0, true},
		{"1X", 0, true},
	}
	for _, tc := range tests {
		got, err := vcsim.ParseSize(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !errors.Is(err, vcsim.ErrConfig) {
			t.Errorf("ParseSize(%q) error %v is not ErrConfig", tc.in, err)
		}
	}
}

func TestParseFill(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    vcsim.Fill
		wantErr bool
	}{
		{"none", vcsim.Fill{Mode: vcsim.FillNone}, false},
		{"", vcsim.Fill{Mode: vcsim.FillNone}, false},
		{"zero", vcsim.Fill{Mode: vcsim.FillZero, Fraction: 1}, false},
		{"random", vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 1}, false},
		{"random:0.5", vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}, false},
		{"zero:0.25", vcsim.Fill{Mode: vcsim.FillZero, Fraction: 0.25}, false},
		{"random:1.5", vcsim.Fill{}, true},
		{"random:x", vcsim.Fill{}, true},
		{"none:0.5", vcsim.Fill{}, true},
		{"ones", vcsim.Fill{}, true},
	}
	for _, tc := range tests {
		got, err := vcsim.ParseFill(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseFill(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })

	tests := []struct {
		name string
		cfg  vcsim.Config
		want string
	}{
		{"disk size not MiB", vcsim.Config{DiskSize: mib + 512}, "multiple of 1 MiB"},
		{"too many disks", vcsim.Config{DisksPerVM: 16}, "disks per VM"},
		{"password without user", vcsim.Config{Password: "x"}, "username and password"},
		{"bad firmware", vcsim.Config{Firmware: "coreboot"}, "firmware"},
		{"port in use", vcsim.Config{Listen: busy.Addr().String()}, "address already in use"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := vcsim.Start(context.Background(), tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// TestInventory checks what a migration tool sees: named VMs powered off, disks of the
// configured size with ESXi file names and vmfs descriptors, a CD-ROM, an E1000 on "VM Network".
func TestInventory(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{VMs: 2, DisksPerVM: 2, DiskSize: 4 * mib})
	c := connect(t, s)
	ctx := context.Background()

	if len(s.VMs) != 2 || len(s.Datastores) != 1 {
		t.Fatalf("VMs %d, datastores %d; want 2 and 1", len(s.VMs), len(s.Datastores))
	}
	for i, v := range s.VMs {
		wantName := fmt.Sprintf("vm-%d", i+1)
		if v.Name != wantName || v.Path != "/DC0/vm/"+wantName {
			t.Errorf("VM %d: name %q path %q", i, v.Name, v.Path)
		}
		vm := findVM(t, c, v.Path)
		if vm.Reference().Value != v.Moref {
			t.Errorf("%s: moref %s, Sim says %s", v.Name, vm.Reference().Value, v.Moref)
		}
		var mvm mo.VirtualMachine
		if err := vm.Properties(ctx, vm.Reference(), []string{"config", "runtime"}, &mvm); err != nil {
			t.Fatal(err)
		}
		if mvm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			t.Errorf("%s: power state %s, want poweredOff", v.Name, mvm.Runtime.PowerState)
		}
		devices := object.VirtualDeviceList(mvm.Config.Hardware.Device)
		if n := len(devices.SelectByType((*types.VirtualCdrom)(nil))); n != 1 {
			t.Errorf("%s: %d CD-ROMs, want 1", v.Name, n)
		}
		nics := devices.SelectByType((*types.VirtualEthernetCard)(nil))
		if len(nics) != 1 {
			t.Fatalf("%s: %d NICs, want 1", v.Name, len(nics))
		}
		if _, ok := nics[0].(*types.VirtualE1000); !ok {
			t.Errorf("%s: NIC is %T, want E1000", v.Name, nics[0])
		}
		if b, ok := nics[0].GetVirtualDevice().Backing.(*types.VirtualEthernetCardNetworkBackingInfo); !ok || b.DeviceName != "VM Network" {
			t.Errorf("%s: NIC backing %#v, want VM Network", v.Name, nics[0].GetVirtualDevice().Backing)
		}
		disks := devices.SelectByType((*types.VirtualDisk)(nil))
		if len(disks) != 2 || len(v.Disks) != 2 {
			t.Fatalf("%s: %d disks (Sim says %d), want 2", v.Name, len(disks), len(v.Disks))
		}
		for k, d := range disks {
			disk := d.(*types.VirtualDisk)
			file := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName
			if disk.CapacityInBytes != 4*mib || file != v.Disks[k].DatastorePath {
				t.Errorf("%s disk %d: %d bytes at %q; want %d at %q", v.Name, k, disk.CapacityInBytes, file, 4*mib, v.Disks[k].DatastorePath)
			}
			desc, err := os.ReadFile(v.Disks[k].Descriptor)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf(`RW %d VMFS "%s"`, 4*mib/512, filepath.Base(v.Disks[k].FlatPath))
			if !bytes.Contains(desc, []byte(`createType="vmfs"`)) || !bytes.Contains(desc, []byte(want)) {
				t.Errorf("%s disk %d descriptor lacks createType=vmfs or %q:\n%s", v.Name, k, want, desc)
			}
			if fi, err := os.Stat(v.Disks[k].FlatPath); err != nil || fi.Size() != 4*mib {
				t.Errorf("%s disk %d: flat extent %v, want %d bytes", v.Name, k, err, 4*mib)
			}
		}
	}
	if got := s.VMs[1].Disks[1].DatastorePath; got != "[LocalDS_0] vm-2/vm-2_1.vmdk" {
		t.Errorf("second disk of vm-2 is %q, want ESXi naming [LocalDS_0] vm-2/vm-2_1.vmdk", got)
	}
}

func TestPowerOnAndCredentials(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{PowerOn: true, Username: "admin", Password: "s3cret!", DiskSize: mib})
	ctx := context.Background()

	u := *s.URL
	u.User = url.UserPassword("admin", "wrong")
	if _, err := govmomi.NewClient(ctx, &u, true); err == nil || !fault.Is(err, &types.InvalidLogin{}) {
		t.Fatalf("login with a wrong password: %v, want InvalidLogin", err)
	}
	c := connect(t, s)
	vm := findVM(t, c, s.VMs[0].Path)
	st, err := vm.PowerState(ctx)
	if err != nil || st != types.VirtualMachinePowerStatePoweredOn {
		t.Fatalf("power state %s, %v; want poweredOn with --power-on", st, err)
	}
}

// TestFill checks the flat extents byte for byte: the written part holds the content and is
// allocated, the rest reads as zeros and is a hole.
func TestFill(t *testing.T) {
	t.Parallel()
	const size = 8 * mib
	tests := []struct {
		fill       string
		wantRandom bool
	}{
		{"random:0.5", true},
		{"random:1", true},
		{"zero:0.25", false},
		{"none", false},
	}
	for _, tc := range tests {
		t.Run(tc.fill, func(t *testing.T) {
			t.Parallel()
			fill, err := vcsim.ParseFill(tc.fill)
			if err != nil {
				t.Fatal(err)
			}
			s := startSim(t, vcsim.Config{DiskSize: size, Fill: fill, Seed: 7})
			flat := s.VMs[0].Disks[0].FlatPath
			n := vcsim.FillLength(size, fill)
			if want := int64(float64(size) * fill.Fraction); fill.Mode != vcsim.FillNone && n != want {
				t.Fatalf("FillLength = %d, want %d", n, want)
			}

			if n > 0 {
				data := readRange(t, flat, 0, n)
				zeros := bytes.Count(data, []byte{0})
				if tc.wantRandom && zeros > len(data)/100 {
					t.Errorf("written part has %d zero bytes of %d: not random", zeros, len(data))
				}
				if !tc.wantRandom && zeros != len(data) {
					t.Errorf("zero fill has non-zero bytes")
				}
			}
			if rest := size - n; rest > 0 {
				if !bytes.Equal(readRange(t, flat, n, rest), make([]byte, rest)) {
					t.Errorf("the part after %d bytes does not read as zeros", n)
				}
			}
			// The written part is allocated (zeros too: real writes), the rest is a hole.
			if a := allocated(t, flat); a < n || a > n+mib {
				t.Errorf("allocated %d bytes, want about %d (a hole after the written part)", a, n)
			}
		})
	}
}

func TestFillIsDeterministic(t *testing.T) {
	t.Parallel()
	cfg := vcsim.Config{DiskSize: mib, DisksPerVM: 2, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 1}, Seed: 42}
	a, b := startSim(t, cfg), startSim(t, cfg)
	cfg.Seed = 43
	other := startSim(t, cfg)
	read := func(s *vcsim.Sim, disk int) []byte { return readRange(t, s.VMs[0].Disks[disk].FlatPath, 0, mib) }
	if !bytes.Equal(read(a, 0), read(b, 0)) || !bytes.Equal(read(a, 1), read(b, 1)) {
		t.Error("the same seed wrote different bytes")
	}
	if bytes.Equal(read(a, 0), read(a, 1)) {
		t.Error("two disks of one VM have the same bytes")
	}
	if bytes.Equal(read(a, 0), read(other, 0)) {
		t.Error("a different seed wrote the same bytes")
	}
}

// TestFolderRange reads a flat extent through the datastore /folder URL with Range, the
// way the https transfer method does.
func TestFolderRange(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{DiskSize: 2 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}})
	d := s.VMs[0].Disks[0]
	u := *s.URL
	u.Path = "/folder/vm-1/" + filepath.Base(d.FlatPath)
	u.RawQuery = url.Values{"dcPath": {s.Datacenter}, "dsName": {s.Datastores[0].Name}}.Encode()

	tests := []struct {
		rng      string
		off, len int64
	}{
		{"bytes=0-4095", 0, 4096},
		{"bytes=1048000-1049999", 1048000, 2000}, // across the end of the data
		{"bytes=2097000-", 2097000, 2*mib - 2097000},
	}
	client := insecureHTTP()
	for _, tc := range tests {
		req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
		req.Header.Set("Range", tc.rng)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != http.StatusPartialContent {
			t.Fatalf("%s: status %s, want 206", tc.rng, res.Status)
		}
		if !bytes.Equal(body, readRange(t, d.FlatPath, tc.off, tc.len)) {
			t.Errorf("%s: body differs from the flat extent", tc.rng)
		}
	}
}

// TestExportVm exports a VM like an NFC client: the lease becomes ready, each device URL
// serves a stream-optimized VMDK identical in content to the flat extent, and the URLs stop
// working when the lease completes.
func TestExportVm(t *testing.T) {
	t.Parallel()
	requireQemuImg(t)
	s := startSim(t, vcsim.Config{VMs: 2, DisksPerVM: 2, DiskSize: 4 * mib,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}})
	c := connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := s.VMs[0]
	vm := findVM(t, c, v.Path)

	lease, err := vm.Export(ctx)
	if err != nil {
		t.Fatalf("ExportVm: %v", err)
	}
	info, err := lease.Wait(ctx, nil)
	if err != nil {
		t.Fatalf("lease wait: %v", err)
	}
	if len(info.Items) != 2 {
		t.Fatalf("%d device URLs, want 2", len(info.Items))
	}
	if info.TotalDiskCapacityInKB != 2*4*mib/1024 || info.Entity.Value != v.Moref {
		t.Errorf("lease info total %d KB entity %s", info.TotalDiskCapacityInKB, info.Entity.Value)
	}
	dir := t.TempDir()
	for i, item := range info.Items {
		if item.URL.Host != s.URL.Host {
			t.Errorf("device URL host %q, want %q", item.URL.Host, s.URL.Host)
		}
		if !strings.Contains(item.DeviceId, "ParaVirtualSCSIController0:") {
			t.Errorf("device key %q does not name the controller", item.DeviceId)
		}
		out := filepath.Join(dir, item.Path)
		download(t, insecureHTTP(), item.URL.String(), out)
		if fi, _ := os.Stat(out); fi.Size() != item.Size {
			t.Errorf("downloaded %d bytes, lease says %d", fi.Size(), item.Size)
		}
		qi := qemuImgInfo(t, out)
		if qi.Format != "vmdk" || qi.FormatSpecific.Data.CreateType != "streamOptimized" || qi.VirtualSize != 4*mib {
			t.Errorf("disk %d: qemu-img info %+v, want a 4 MiB streamOptimized vmdk", i, qi)
		}
		cmp := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "vmdk", v.Disks[i].FlatPath, out)
		if msg, err := cmp.CombinedOutput(); err != nil {
			t.Errorf("disk %d: qemu-img compare: %v: %s", i, err, msg)
		}
	}
	manifest, err := lease.GetManifest(ctx)
	if err != nil || len(manifest) != 2 || len(manifest[0].Sha1) != 40 {
		t.Errorf("manifest %+v, %v", manifest, err)
	}
	if err := lease.Complete(ctx); err != nil {
		t.Fatalf("complete: %v", err)
	}
	res, err := insecureHTTP().Get(info.Items[0].URL.String())
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("device URL after Complete: %s, want 404", res.Status)
	}

	// ESXi refuses to export a running VM.
	running := findVM(t, c, s.VMs[1].Path)
	task, err := running.PowerOn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := running.Export(ctx); !fault.Is(err, &types.InvalidPowerState{}) {
		t.Errorf("export of a powered-on VM: %v, want InvalidPowerState", err)
	}
}

// TestExportReconvertsChangedDisk: the cache must not serve stale bytes after the flat
// extent changed.
func TestExportReconvertsChangedDisk(t *testing.T) {
	t.Parallel()
	requireQemuImg(t)
	s := startSim(t, vcsim.Config{DiskSize: 2 * mib})
	c := connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm := findVM(t, c, s.VMs[0].Path)
	flat := s.VMs[0].Disks[0].FlatPath

	exportOnce := func() string {
		lease, err := vm.Export(ctx)
		if err != nil {
			t.Fatal(err)
		}
		info, err := lease.Wait(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "disk.vmdk")
		download(t, insecureHTTP(), info.Items[0].URL.String(), out)
		if err := lease.Complete(ctx); err != nil {
			t.Fatal(err)
		}
		return out
	}
	first := exportOnce()
	f, err := os.OpenFile(flat, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("changed"), mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	second := exportOnce()
	if err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "vmdk", flat, second).Run(); err != nil {
		t.Errorf("export after a change differs from the flat extent: %v", err)
	}
	if err := exec.Command("qemu-img", "compare", "-F", "vmdk", "-f", "vmdk", first, second).Run(); err == nil {
		t.Error("the two exports are identical: the cache served stale bytes")
	}
}

// TestExportLeaseTimeout: without keep-alive progress calls the lease expires and its URLs
// stop serving; progress calls renew it.
func TestExportLeaseTimeout(t *testing.T) {
	t.Parallel()
	requireQemuImg(t)
	s := startSim(t, vcsim.Config{VMs: 1, DiskSize: mib, LeaseTimeout: 500 * time.Millisecond})
	c := connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm := findVM(t, c, s.VMs[0].Path)
	lease, err := vm.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	info, err := lease.Wait(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.LeaseTimeout != 0 {
		// Sub-second timeouts round down to 0 s in the API: a documented limitation.
		t.Logf("lease timeout %d s", info.LeaseTimeout)
	}
	status := func() int {
		res, err := insecureHTTP().Head(info.Items[0].URL.String())
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	// Renewing keeps it alive past several timeouts.
	for deadline := time.Now().Add(1500 * time.Millisecond); time.Now().Before(deadline); {
		if err := lease.Progress(ctx, 10); err != nil {
			t.Fatalf("progress: %v", err)
		}
		if st := status(); st != http.StatusOK {
			t.Fatalf("renewed lease serves %d", st)
		}
		time.Sleep(100 * time.Millisecond) // the keep-alive cadence under test, not a wait for a condition
	}
	deadline := time.Now().Add(5 * time.Second)
	for status() == http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("the lease never timed out")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := lease.Progress(ctx, 20); !fault.Is(err, &types.Timedout{}) {
		t.Errorf("progress after expiry: %v, want Timedout", err)
	}
	var _ = nfc.LeaseInfo{}
}

func TestGuestIgnoresShutdown(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{VMs: 2, DiskSize: mib, PowerOn: true})
	if err := s.SetGuestIgnoresShutdown("vm-1", true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetGuestIgnoresShutdown("nope", true); err == nil {
		t.Error("unknown VM accepted")
	}
	c := connect(t, s)
	ctx := context.Background()
	hung, ok := findVM(t, c, s.VMs[0].Path), true
	normal := findVM(t, c, s.VMs[1].Path)
	for _, vm := range []*object.VirtualMachine{hung, normal} {
		if err := vm.ShutdownGuest(ctx); err != nil {
			t.Fatalf("ShutdownGuest: %v", err)
		}
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := normal.WaitForPowerState(waitCtx, types.VirtualMachinePowerStatePoweredOff); err != nil {
		t.Fatalf("normal guest did not power off: %v", err)
	}
	if st, _ := hung.PowerState(ctx); st != types.VirtualMachinePowerStatePoweredOn || !ok {
		t.Errorf("hung guest is %s, want still poweredOn", st)
	}
}

func TestCloseRemovesFiles(t *testing.T) {
	t.Parallel()
	s, err := vcsim.Start(context.Background(), vcsim.Config{DiskSize: mib})
	if err != nil {
		t.Fatal(err)
	}
	dir := s.Datastores[0].Path
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close() // idempotent
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("datastore dir %s still exists after Close: %v", dir, err)
	}
}
