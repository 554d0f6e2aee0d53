package vsphere_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// TestChangeTracking: tracking is turned on (twice is fine), a snapshot's disks carry
// change ids, ChangedAreas pages through the simulator's answers (two areas each) to the
// end of the disk and merges them, an unknown change id is ErrChangeTracking, and a VM
// with snapshots cannot have tracking turned on.
func TestChangeTracking(t *testing.T) {
	const size = 8 * mib
	s := startSim(t, vcsim.Config{VMs: 2, DiskSize: size, ChangedAreasPerCall: 2})
	c := connect(t, s)
	ctx := context.Background()
	vm := findVM(t, c, s.VMs[0].Path)
	for range 2 {
		if err := c.EnableChangeTracking(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	info, err := c.VMInfo(ctx, vm)
	if err != nil || !info.ChangeTracking {
		t.Fatalf("VMInfo after enabling: %+v %v", info, err)
	}
	s1, err := c.CreateSnapshot(ctx, vm, "s1", "")
	if err != nil {
		t.Fatal(err)
	}
	d1, err := c.SnapshotDisks(ctx, s1)
	if err != nil || len(d1) != 1 || d1[0].ChangeID == "" || d1[0].File != s.VMs[0].Disks[0].DatastorePath || d1[0].CapacityBytes != size {
		t.Fatalf("snapshot disks %+v %v", d1, err)
	}
	if err := c.RemoveSnapshot(ctx, vm, s1); err != nil {
		t.Fatal(err)
	}
	// Five separate grains and two adjacent ones (one area): six areas, three answers.
	for _, off := range []int64{0, 1 * mib, 2 * mib, 3 * mib, 5 * mib, 5*mib + 64<<10, 7 * mib} {
		if err := s.WriteGuest(s.VMs[0].Name, 0, off, []byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	s2, err := c.CreateSnapshot(ctx, vm, "s2", "")
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := c.SnapshotDisks(ctx, s2)
	got, err := c.ChangedAreas(ctx, vm, s2, d2[0].Key, size, d1[0].ChangeID)
	if err != nil {
		t.Fatal(err)
	}
	want := []vsphere.Area{{0, 64 << 10}, {1 * mib, 64 << 10}, {2 * mib, 64 << 10}, {3 * mib, 64 << 10}, {5 * mib, 128 << 10}, {7 * mib, 64 << 10}}
	if len(got) != len(want) {
		t.Fatalf("changed areas %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("changed areas %v, want %v", got, want)
		}
	}
	all, err := c.ChangedAreas(ctx, vm, s2, d2[0].Key, size, "*")
	if err != nil || len(all) == 0 {
		t.Fatalf("allocated areas %v %v", all, err)
	}
	bad := strings.Replace(d1[0].ChangeID, d1[0].ChangeID[:2], "00", 1)
	if _, err := c.ChangedAreas(ctx, vm, s2, d2[0].Key, size, bad); !errors.Is(err, vsphere.ErrChangeTracking) {
		t.Errorf("unknown change id: %v, want ErrChangeTracking", err)
	}

	other := findVM(t, c, s.VMs[1].Path)
	if _, err := c.CreateSnapshot(ctx, other, "operator's", ""); err != nil {
		t.Fatal(err)
	}
	err = c.EnableChangeTracking(ctx, other)
	if !errors.Is(err, vsphere.ErrChangeTracking) || !strings.Contains(err.Error(), "delete its snapshots") {
		t.Errorf("enabling tracking on a VM with snapshots: %v", err)
	}
	named, err := c.SnapshotsNamed(ctx, other, "operator")
	if err != nil || len(named) != 1 {
		t.Errorf("SnapshotsNamed: %v %v", named, err)
	}
}
