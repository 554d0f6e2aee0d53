package vddk

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/fakevddk"
)

// TestReadSnapshots reads a simulated VM's disk through the fake VDDK at two nested
// snapshots and as it is now, while the guest keeps writing: each read returns its own
// point in time, down the chain of snapshot deltas, and QueryAllocatedBlocks sees what
// the deltas hold in the base disk's holes.
func TestReadSnapshots(t *testing.T) {
	t.Parallel()
	libdir := fakevddk.Build(t, fakevddk.Standard)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const size = 8 * mib
	sim, err := vcsim.Start(ctx, vcsim.Config{DiskSize: size, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.25},
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	u := *sim.URL
	u.User = url.UserPassword(sim.Username, sim.Password)
	c, err := govmomi.NewClient(ctx, &u, true)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := find.NewFinder(c.Client).VirtualMachine(ctx, sim.VMs[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	now := func() []byte {
		r, n, err := sim.DiskReader("vm-1", 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		return b
	}
	write := func(off int64, n int, v byte) {
		if err := sim.WriteGuest("vm-1", 0, off, bytes.Repeat([]byte{v}, n)); err != nil {
			t.Fatal(err)
		}
	}
	snapshot := func(name string) (types.ManagedObjectReference, string) {
		task, err := vm.CreateSnapshot(ctx, name, "", false, false)
		if err != nil {
			t.Fatal(err)
		}
		res, err := task.WaitForResult(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ref := res.Result.(types.ManagedObjectReference)
		var m mo.VirtualMachineSnapshot
		if err := c.PropertyCollector().RetrieveOne(ctx, ref, []string{"config"}, &m); err != nil {
			t.Fatal(err)
		}
		disk := object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil))[0].(*types.VirtualDisk)
		return ref, disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName
	}

	write(6*mib+1000, 70<<10, 1) // in the hole, across a grain boundary
	atS1 := now()
	s1, file1 := snapshot("s1")
	write(100, 5000, 2)
	write(7*mib, 64<<10, 3)
	atS2 := now()
	s2, file2 := snapshot("s2")
	write(6*mib, 3*64<<10, 4) // after s2: in the VM's current delta only
	var m mo.VirtualMachine
	if err := c.PropertyCollector().RetrieveOne(ctx, vm.Reference(), []string{"config"}, &m); err != nil {
		t.Fatal(err)
	}
	current := object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil))[0].(*types.VirtualDisk).
		Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName
	atNow := now()
	if file1 != sim.VMs[0].Disks[0].DatastorePath || file2 == file1 || current == file2 {
		t.Fatalf("disk files: s1 %q s2 %q now %q", file1, file2, current)
	}

	dir := t.TempDir()
	fake := fakevddk.New(t, dir, fakevddk.ForSim(sim, filepath.Join(dir, "stats")))
	for _, tc := range []struct {
		name, file, snap string
		want             []byte
		chain            string
	}{
		{"s1", file1, s1.Value, atS1, "1"},
		{"s2", file2, s2.Value, atS2, "2"},
		{"now", current, "", atNow, "3"},
	} {
		r := startReader(t, libdir, fake.Env())
		cl, err := Open(r.conn, OpenRequest{Libdir: libdir, Server: sim.URL.Hostname(), User: sim.Username, Password: sim.Password,
			Thumbprint: sim.Thumbprint, VMXSpec: "moref=" + sim.VMs[0].Moref, Snapshot: tc.snap, File: tc.file,
			Transports: "nbdssl:nbd", Connections: 2, MaxRead: 2 * mib}, r.onLog)
		if err != nil {
			t.Fatalf("%s: open: %v (stderr %s)", tc.name, err, r.stderr)
		}
		got := make([]byte, size)
		for off := int64(0); off < size; off += 2 * mib {
			if err := cl.ReadAt(got[off:off+2*mib], off); err != nil {
				t.Fatalf("%s: read at %d: %v", tc.name, off, err)
			}
		}
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%s: the bytes read are not the disk at that point in time", tc.name)
		}
		ext, err := cl.Extents(0, size)
		if err != nil {
			t.Fatal(err)
		}
		// Every byte that is not zero lies in an extent.
		covered := make([]bool, size/(64<<10))
		for _, e := range ext {
			for g := e.Offset / (64 << 10); g*(64<<10) < e.Offset+e.Length; g++ {
				covered[g] = true
			}
		}
		for g := range covered {
			if !covered[g] && !isZero(tc.want[g*(64<<10):(g+1)*(64<<10)]) {
				t.Errorf("%s: grain at %d holds data but is not among the allocated blocks %v", tc.name, g*(64<<10), ext)
				break
			}
		}
		if err := cl.Close(); err != nil {
			t.Fatal(err)
		}
	}
	var chains []string // per reader (two connections each), in order
	for _, o := range fake.ReadStats().Where("call", "Open") {
		if len(chains) == 0 || chains[len(chains)-1] != o["chain"] {
			chains = append(chains, o["chain"])
		}
	}
	if want := []string{"1", "2", "3"}; !slices.Equal(chains, want) {
		t.Fatalf("files per chain opened: %v, want %v (s1: the base disk; s2: one delta over it; now: two)", chains, want)
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
