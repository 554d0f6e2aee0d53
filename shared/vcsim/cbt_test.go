package vcsim_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/hypersdk/hypersdk/shared/vcsim"
)

// cbtVM is one VM of a test with change tracking: its govmomi object and its disk.
type cbtVM struct {
	t    *testing.T
	c    *govmomi.Client
	sim  *vcsim.Sim
	vm   *object.VirtualMachine
	name string
	key  int32
}

func newCBTVM(t *testing.T, s *vcsim.Sim, c *govmomi.Client, name string) *cbtVM {
	t.Helper()
	v := &cbtVM{t: t, c: c, sim: s, name: name, vm: findVM(t, c, "/DC0/vm/"+name)}
	v.key = v.disks(v.vm.Reference())[0].Key
	return v
}

func (v *cbtVM) ctx() context.Context { return context.Background() }

// disks are the VirtualDisks of the VM (a VirtualMachine ref) or of a snapshot.
func (v *cbtVM) disks(ref types.ManagedObjectReference) []*types.VirtualDisk {
	v.t.Helper()
	var devices []types.BaseVirtualDevice
	if ref.Type == "VirtualMachineSnapshot" {
		var m mo.VirtualMachineSnapshot
		if err := v.c.PropertyCollector().RetrieveOne(v.ctx(), ref, []string{"config"}, &m); err != nil {
			v.t.Fatal(err)
		}
		devices = m.Config.Hardware.Device
	} else {
		var m mo.VirtualMachine
		if err := v.c.PropertyCollector().RetrieveOne(v.ctx(), ref, []string{"config"}, &m); err != nil {
			v.t.Fatal(err)
		}
		devices = m.Config.Hardware.Device
	}
	var out []*types.VirtualDisk
	for _, d := range object.VirtualDeviceList(devices).SelectByType((*types.VirtualDisk)(nil)) {
		out = append(out, d.(*types.VirtualDisk))
	}
	return out
}

func backing(d *types.VirtualDisk) *types.VirtualDiskFlatVer2BackingInfo {
	return d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
}

func (v *cbtVM) setCBT(on bool) error {
	task, err := v.vm.Reconfigure(v.ctx(), types.VirtualMachineConfigSpec{ChangeTrackingEnabled: &on})
	if err != nil {
		return err
	}
	return task.Wait(v.ctx())
}

func (v *cbtVM) snapshot(name string) types.ManagedObjectReference {
	v.t.Helper()
	task, err := v.vm.CreateSnapshot(v.ctx(), name, "", false, false)
	if err != nil {
		v.t.Fatal(err)
	}
	res, err := task.WaitForResult(v.ctx())
	if err != nil {
		v.t.Fatal(err)
	}
	return res.Result.(types.ManagedObjectReference)
}

func (v *cbtVM) removeSnapshot(ref types.ManagedObjectReference) {
	v.t.Helper()
	consolidate := true
	res, err := methods.RemoveSnapshot_Task(v.ctx(), v.c.Client, &types.RemoveSnapshot_Task{This: ref, Consolidate: &consolidate})
	if err != nil {
		v.t.Fatal(err)
	}
	if err := object.NewTask(v.c.Client, res.Returnval).Wait(v.ctx()); err != nil {
		v.t.Fatal(err)
	}
}

// changed pages through QueryChangedDiskAreas from offset 0 and returns every area and
// the number of calls.
func (v *cbtVM) changed(snap *types.ManagedObjectReference, changeID string) ([]types.DiskChangeExtent, int, error) {
	capacity := v.disks(v.vm.Reference())[0].CapacityInBytes
	var out []types.DiskChangeExtent
	calls := 0
	for off := int64(0); off < capacity; {
		res, err := methods.QueryChangedDiskAreas(v.ctx(), v.c.Client, &types.QueryChangedDiskAreas{
			This: v.vm.Reference(), Snapshot: snap, DeviceKey: v.key, StartOffset: off, ChangeId: changeID,
		})
		if err != nil {
			return nil, calls, err
		}
		calls++
		info := res.Returnval
		if info.StartOffset != off || info.Length <= 0 {
			v.t.Fatalf("answer for offset %d covers [%d, +%d)", off, info.StartOffset, info.Length)
		}
		for _, a := range info.ChangedArea {
			if a.Start < off || a.Start+a.Length > off+info.Length {
				v.t.Fatalf("area %+v outside the answer's [%d, +%d)", a, off, info.Length)
			}
		}
		out = append(out, info.ChangedArea...)
		off = info.StartOffset + info.Length
	}
	return mergeAreas(out), calls, nil
}

func mergeAreas(in []types.DiskChangeExtent) []types.DiskChangeExtent {
	var out []types.DiskChangeExtent
	for _, a := range in {
		if k := len(out) - 1; k >= 0 && out[k].Start+out[k].Length == a.Start {
			out[k].Length += a.Length
			continue
		}
		out = append(out, a)
	}
	return out
}

// current reads the whole disk as the guest sees it.
func (v *cbtVM) current() []byte {
	v.t.Helper()
	r, size, err := v.sim.DiskReader(v.name, 0)
	if err != nil {
		v.t.Fatal(err)
	}
	b := make([]byte, size)
	if _, err := r.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		v.t.Fatal(err)
	}
	return b
}

func (v *cbtVM) write(off int64, p []byte) {
	v.t.Helper()
	if err := v.sim.WriteGuest(v.name, 0, off, p); err != nil {
		v.t.Fatal(err)
	}
}

func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pattern(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func areas(pairs ...int64) []types.DiskChangeExtent {
	var out []types.DiskChangeExtent
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, types.DiskChangeExtent{Start: pairs[i], Length: pairs[i+1]})
	}
	return out
}

// TestSnapshotsFreezeDisksAndTrackChanges walks the precopy cycle a warm migration makes:
// enable tracking, snapshot, read everything allocated, remove the snapshot, let the guest
// write, snapshot again, ask what changed since the first change id, and checks the bytes
// of every file on the way.
func TestSnapshotsFreezeDisksAndTrackChanges(t *testing.T) {
	const mib = 1 << 20
	s := startSim(t, vcsim.Config{DiskSize: 4 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.25}, PowerOn: true})
	c := connect(t, s)
	v := newCBTVM(t, s, c, "vm-1")
	flat := s.VMs[0].Disks[0].FlatPath
	base := s.VMs[0].Disks[0].DatastorePath

	if _, _, err := v.changed(nil, "*"); err == nil || !strings.Contains(err.Error(), "not enabled") {
		t.Fatalf("query with tracking off: %v, want a fault saying it is not enabled", err)
	}
	if err := v.setCBT(true); err != nil {
		t.Fatal(err)
	}
	s1 := v.snapshot("s1")
	snapDisk := v.disks(s1)[0]
	id1 := backing(snapDisk).ChangeId
	if backing(snapDisk).FileName != base || id1 == "" || !strings.Contains(id1, "/") {
		t.Fatalf("snapshot disk: file %q change id %q, want %q with a change id", backing(snapDisk).FileName, id1, base)
	}
	cur := backing(v.disks(v.vm.Reference())[0])
	if cur.FileName == base || cur.Parent == nil || cur.Parent.FileName != base || cur.ChangeId != id1 {
		t.Fatalf("VM disk after the snapshot: %q parent %v change id %q, want a delta of %q", cur.FileName, cur.Parent, cur.ChangeId, base)
	}

	// "*" is what is allocated: the first quarter (1 MiB) the fill wrote.
	all, _, err := v.changed(&s1, "*")
	if err != nil {
		t.Fatal(err)
	}
	if want := areas(0, mib); !equalAreas(all, want) {
		t.Fatalf("allocated areas %v, want %v", all, want)
	}

	// Writes while the snapshot exists land in the delta; the snapshot's file does not move.
	frozen := fileBytes(t, flat)
	v.write(3*mib+100, pattern(5000, 0xaa)) // a partial grain in a hole
	v.write(0, pattern(64<<10, 0xbb))       // a whole grain over data
	if !bytes.Equal(fileBytes(t, flat), frozen) {
		t.Fatal("a write while the snapshot exists changed the snapshot's file")
	}
	want := append([]byte(nil), frozen...)
	copy(want[3*mib+100:], pattern(5000, 0xaa))
	copy(want[0:], pattern(64<<10, 0xbb))
	if !bytes.Equal(v.current(), want) {
		t.Fatal("the guest's view through the delta is not base + writes")
	}

	v.removeSnapshot(s1)
	if !bytes.Equal(fileBytes(t, flat), want) {
		t.Fatal("removing the snapshot did not merge the delta into the base disk")
	}
	cur = backing(v.disks(v.vm.Reference())[0])
	if cur.FileName != base || cur.Parent != nil {
		t.Fatalf("VM disk after removal: %q parent %v, want %q alone", cur.FileName, cur.Parent, base)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(flat), "*-000*")); len(left) > 0 {
		t.Fatalf("delta files left after removal: %v", left)
	}

	v.write(2*mib, pattern(3*512, 0xcc))
	s2 := v.snapshot("s2")
	id2 := backing(v.disks(s2)[0]).ChangeId
	got, _, err := v.changed(&s2, id1)
	if err != nil {
		t.Fatal(err)
	}
	// Grains of 64 KiB: [0, 64K) and the grain of 3 MiB+100 (written under s1), and 2 MiB.
	if w := areas(0, 64<<10, 2*mib, 64<<10, 3*mib, 64<<10); !equalAreas(got, w) {
		t.Fatalf("changed since %s: %v, want %v", id1, got, w)
	}
	if got, _, err := v.changed(&s2, id2); err != nil || len(got) != 0 {
		t.Fatalf("changed since the snapshot's own id: %v %v, want nothing", got, err)
	}

	// vSphere refuses to switch tracking while snapshots exist.
	if err := v.setCBT(false); err == nil {
		t.Fatal("disabling change tracking with a snapshot succeeded")
	}
	v.removeSnapshot(s2)

	// Bad arguments are faults that say which argument.
	s3 := v.snapshot("s3")
	for _, tc := range []struct {
		name   string
		key    int32
		id     string
		snap   *types.ManagedObjectReference
		substr string
	}{
		{"device key", 9999, "*", &s3, "deviceKey"},
		{"garbage change id", v.key, "nonsense", &s3, "changeId"},
		{"foreign change id", v.key, "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1", &s3, "changeId"},
		{"no snapshot while on", v.key, "*", nil, "powered-off"},
		{"gone snapshot", v.key, "*", &s1, "snapshot"},
	} {
		_, err := methods.QueryChangedDiskAreas(v.ctx(), c.Client, &types.QueryChangedDiskAreas{
			This: v.vm.Reference(), Snapshot: tc.snap, DeviceKey: tc.key, ChangeId: tc.id,
		})
		if err == nil || !strings.Contains(err.Error(), tc.substr) {
			t.Errorf("%s: %v, want a fault naming %s", tc.name, err, tc.substr)
		}
	}
	v.removeSnapshot(s3)

	// Re-enabling tracking starts a new id: the old ones are no longer accepted.
	if err := v.setCBT(false); err != nil {
		t.Fatal(err)
	}
	if err := v.setCBT(true); err != nil {
		t.Fatal(err)
	}
	s4 := v.snapshot("s4")
	if _, _, err := v.changed(&s4, id2); err == nil {
		t.Fatal("a change id from before tracking was reset was accepted")
	}
	v.removeSnapshot(s4)
}

func equalAreas(a, b []types.DiskChangeExtent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Start != b[i].Start || a[i].Length != b[i].Length {
			return false
		}
	}
	return true
}

// TestChangedAreasArePaged: with two areas per answer, a caller that asks again from the
// end of each answer gets every area, in several calls.
func TestChangedAreasArePaged(t *testing.T) {
	s := startSim(t, vcsim.Config{DiskSize: 8 << 20, ChangedAreasPerCall: 2})
	c := connect(t, s)
	v := newCBTVM(t, s, c, "vm-1")
	if err := v.setCBT(true); err != nil {
		t.Fatal(err)
	}
	s1 := v.snapshot("s1")
	id := backing(v.disks(s1)[0]).ChangeId
	v.removeSnapshot(s1)
	var want []types.DiskChangeExtent
	for i := int64(0); i < 7; i++ {
		off := i * (1 << 20)
		v.write(off, pattern(1000, byte(i+1)))
		want = append(want, types.DiskChangeExtent{Start: off, Length: 64 << 10})
	}
	s2 := v.snapshot("s2")
	got, calls, err := v.changed(&s2, id)
	if err != nil {
		t.Fatal(err)
	}
	if !equalAreas(got, want) || calls < 4 {
		t.Fatalf("%d calls gave %v, want %v in at least 4 calls", calls, got, want)
	}
}

// TestNestedSnapshots: removing the older of two snapshots merges its delta down and the
// newer snapshot still reads its own point in time.
func TestNestedSnapshots(t *testing.T) {
	s := startSim(t, vcsim.Config{DiskSize: 2 << 20})
	c := connect(t, s)
	v := newCBTVM(t, s, c, "vm-1")
	flat := s.VMs[0].Disks[0].FlatPath
	v.write(0, pattern(4096, 1))
	s1 := v.snapshot("s1")
	v.write(4096, pattern(4096, 2))
	atS2 := v.current()
	s2 := v.snapshot("s2")
	v.write(8192, pattern(4096, 3))
	now := v.current()

	v.removeSnapshot(s1)
	if !bytes.Equal(fileBytes(t, flat), atS2) {
		t.Fatal("after removing s1 the base disk does not hold s2's point in time")
	}
	if f := backing(v.disks(s2)[0]).FileName; f != s.VMs[0].Disks[0].DatastorePath {
		t.Fatalf("s2's disk is %q after s1 went, want the base disk", f)
	}
	if !bytes.Equal(v.current(), now) {
		t.Fatal("the guest's view changed when s1 was removed")
	}
	v.removeSnapshot(s2)
	if !bytes.Equal(fileBytes(t, flat), now) {
		t.Fatal("after removing s2 the base disk is not the guest's view")
	}
}

// TestGuestWriter: a powered-on VM's guest writes at the configured rate until the VM is
// powered off, and not after, nor while it is paused.
func TestGuestWriter(t *testing.T) {
	s := startSim(t, vcsim.Config{DiskSize: 16 << 20, PowerOn: true, WriteRate: 8})
	c := connect(t, s)
	v := newCBTVM(t, s, c, "vm-1")
	deadline := time.Now().Add(30 * time.Second)
	for {
		w, err := s.GuestWrites("vm-1")
		if err != nil {
			t.Fatal(err)
		}
		if w[0].Bytes >= 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest wrote %d bytes in 30 s at 8 MiB/s", w[0].Bytes)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Paused, it writes nothing; resumed, it writes again.
	if err := s.PauseGuest("vm-1", true); err != nil {
		t.Fatal(err)
	}
	p1, _ := s.GuestWrites("vm-1")
	time.Sleep(200 * time.Millisecond) // ten writer ticks
	if p2, _ := s.GuestWrites("vm-1"); p2[0].Bytes != p1[0].Bytes {
		t.Fatalf("the paused guest wrote: %d then %d bytes", p1[0].Bytes, p2[0].Bytes)
	}
	if err := s.PauseGuest("vm-1", false); err != nil {
		t.Fatal(err)
	}
	for {
		if w, _ := s.GuestWrites("vm-1"); w[0].Bytes > p1[0].Bytes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the resumed guest wrote nothing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.PauseGuest("no-such-vm", true); err == nil {
		t.Fatal("PauseGuest of an unknown VM: no error")
	}

	task, err := v.vm.PowerOff(v.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(v.ctx()); err != nil {
		t.Fatal(err)
	}
	w1, _ := s.GuestWrites("vm-1")
	before := fileBytes(t, s.VMs[0].Disks[0].FlatPath)
	time.Sleep(200 * time.Millisecond) // ten writer ticks: long enough for a write to show
	w2, _ := s.GuestWrites("vm-1")
	if w2[0].Bytes != w1[0].Bytes || !bytes.Equal(before, fileBytes(t, s.VMs[0].Disks[0].FlatPath)) {
		t.Fatalf("the guest wrote after power off: %d then %d bytes", w1[0].Bytes, w2[0].Bytes)
	}
	var sum int64
	for _, r := range w2[0].Ranges {
		sum += r.Len
		if r.Off%(64<<10) != 0 {
			t.Fatalf("written range %+v is not grain aligned", r)
		}
	}
	if sum == 0 || sum > w2[0].Bytes {
		t.Fatalf("written ranges cover %d bytes for %d written", sum, w2[0].Bytes)
	}
}
