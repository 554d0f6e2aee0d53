package vsphere_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

func TestFindVM(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{VMs: 2})
	c := connect(t, s)
	scoped := connect(t, s, func(c *vsphere.Config) { c.Datacenter = "DC0" })

	tests := []struct {
		name     string
		client   *vsphere.Client
		path     string
		wantPath string
		wantErr  error
	}{
		{"without leading slash", c, "DC0/vm/vm-1", "/DC0/vm/vm-1", nil},
		{"with leading slash", c, "/DC0/vm/vm-2", "/DC0/vm/vm-2", nil},
		{"relative to the configured datacenter", scoped, "vm-2", "/DC0/vm/vm-2", nil},
		{"absolute with a datacenter configured", scoped, "DC0/vm/vm-1", "/DC0/vm/vm-1", nil},
		{"missing VM", c, "DC0/vm/vm-3", "", vsphere.ErrVMNotFound},
		{"missing datacenter", c, "DC7/vm/vm-1", "", vsphere.ErrVMNotFound},
		{"bare name without a datacenter", c, "vm-1", "", vsphere.ErrVMNotFound},
		{"empty", c, "  ", "", vsphere.ErrVMNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := tc.client.FindVM(testCtx(t), tc.path)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("FindVM(%q) = %v, want %v", tc.path, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FindVM(%q): %v", tc.path, err)
			}
			sim, _ := s.VM(vm.Name)
			if vm.Path != tc.wantPath || vm.Moref() != sim.Moref {
				t.Errorf("FindVM(%q) = %s (%s), want %s (%s)", tc.path, vm.Path, vm.Moref(), tc.wantPath, sim.Moref)
			}
		})
	}
	if _, err := c.FindVM(testCtx(t), "DC0/vm/*"); err == nil || !strings.Contains(err.Error(), "several VMs") {
		t.Errorf("FindVM of a pattern matching 2 VMs: %v", err)
	}
}

func TestListVMs(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{VMs: 3, DisksPerVM: 2, PowerOn: true, CPUs: 4, MemoryMB: 1024})
	c := connect(t, s)

	tests := []struct {
		glob      string
		wantPaths []string
		wantErr   bool
	}{
		{"DC0/vm/*", []string{"/DC0/vm/vm-1", "/DC0/vm/vm-2", "/DC0/vm/vm-3"}, false},
		{"/DC0/vm/vm-[12]", []string{"/DC0/vm/vm-1", "/DC0/vm/vm-2"}, false},
		{"DC0/vm/vm-3", []string{"/DC0/vm/vm-3"}, false},
		{"DC0/vm/db-*", []string{}, false},
		{"", nil, true},
		{"DC0/vm/[", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.glob, func(t *testing.T) {
			rows, err := c.ListVMs(testCtx(t), tc.glob)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ListVMs(%q): %v", tc.glob, err)
			}
			if tc.wantErr {
				return
			}
			if rows == nil || len(rows) != len(tc.wantPaths) {
				t.Fatalf("ListVMs(%q) = %d rows (nil %v), want %v", tc.glob, len(rows), rows == nil, tc.wantPaths)
			}
			for i, r := range rows {
				if r.Path != tc.wantPaths[i] {
					t.Errorf("row %d path %s, want %s", i, r.Path, tc.wantPaths[i])
				}
				sim, _ := s.VM(r.Name)
				if r.Moref != sim.Moref || r.PowerState != "poweredOn" || r.NumCPU != 4 || r.MemoryMB != 1024 {
					t.Errorf("row %+v: want moref %s, poweredOn, 4 CPUs, 1024 MB", r, sim.Moref)
				}
				if r.GuestOS == "" || !strings.HasPrefix(r.IPAddress, "192.0.2.") {
					t.Errorf("row %+v: want a guest OS and the guest IP", r)
				}
				if r.StorageBytes <= 0 {
					t.Errorf("row %+v: no storage", r)
				}
			}
		})
	}
}

func TestVMInfo(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{DisksPerVM: 2, DiskSize: 3 * mib, CPUs: 4, MemoryMB: 4096, Firmware: "efi"})
	c := connect(t, s)
	vm := findVM(t, c, "DC0/vm/vm-1")
	info, err := c.VMInfo(testCtx(t), vm)
	if err != nil {
		t.Fatal(err)
	}
	sim := s.VMs[0]

	checks := []struct {
		what      string
		got, want any
	}{
		{"name", info.Name, "vm-1"},
		{"path", info.Path, "/DC0/vm/vm-1"},
		{"moref", info.Moref, sim.Moref},
		{"power state", info.PowerState, "poweredOff"},
		{"cpus", info.NumCPU, int32(4)},
		{"cores per socket", info.CoresPerSocket, int32(2)},
		{"memory", info.MemoryMB, int32(4096)},
		{"firmware", info.Firmware, "efi"},
		{"guest id", info.GuestID, "ubuntu64Guest"},
		{"host", info.Host, "DC0_H0"},
		{"datacenter", info.Datacenter, "DC0"},
		{"datacenter path", info.DatacenterPath, "DC0"},
		{"snapshots", info.HasSnapshots, false},
		{"disks", len(info.Disks), 2},
		{"nics", len(info.NICs), 1},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.what, ch.got, ch.want)
		}
	}
	if len(info.UUID) != 36 || info.GuestOS == "" {
		t.Errorf("uuid %q guest OS %q", info.UUID, info.GuestOS)
	}
	for i, d := range info.Disks {
		want := vsphere.Disk{
			Key: d.Key, Label: d.Label, CapacityBytes: 3 * mib,
			File:      sim.Disks[i].DatastorePath,
			Datastore: "LocalDS_0", DatastorePath: strings.TrimPrefix(sim.Disks[i].DatastorePath, "[LocalDS_0] "),
			Controller: "scsi", ControllerModel: "pvscsi", BusNumber: 0, UnitNumber: int32(i),
			Thin: true, Backing: "flat",
		}
		if d != want {
			t.Errorf("disk %d = %+v\nwant %+v", i, d, want)
		}
		if d.Label == "" || d.Key == 0 {
			t.Errorf("disk %d has no label or key", i)
		}
	}
	n := info.NICs[0]
	if n.Network != "VM Network" || n.AdapterType != "e1000" || len(n.MAC) != 17 || n.Label == "" {
		t.Errorf("nic %+v: want an e1000 on VM Network with a MAC", n)
	}
}
