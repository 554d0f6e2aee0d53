package vsphere

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Changed-block tracking (CBT) and the snapshots a warm migration reads: enable tracking,
// read each disk's change id from a snapshot, and ask what changed since a change id.

// ErrChangeTracking: the VM's changed-block tracking cannot be used (it is off and cannot
// be turned on, or vSphere refused a change id). The message says why and what to do.
var ErrChangeTracking = errors.New("changed block tracking unavailable")

// EnableChangeTracking turns changed-block tracking on (a reconfigure of
// changeTrackingEnabled). vSphere refuses that while the VM has snapshots: the error then
// says to remove them. A VM that tracks already is a success.
func (c *Client) EnableChangeTracking(ctx context.Context, vm *VM) error {
	var m mo.VirtualMachine
	if err := c.collector().RetrieveOne(ctx, vm.Ref, []string{"config.changeTrackingEnabled", "snapshot"}, &m); err != nil {
		return fmt.Errorf("vsphere: read %s: %w", vm.Path, err)
	}
	if m.Config != nil && m.Config.ChangeTrackingEnabled != nil && *m.Config.ChangeTrackingEnabled {
		return nil
	}
	snapshots := m.Snapshot != nil && len(m.Snapshot.RootSnapshotList) > 0
	if snapshots {
		return fmt.Errorf("%w: %s has snapshots and changed block tracking is off; vSphere enables tracking only on a VM "+
			"without snapshots: delete its snapshots and submit the job again (it then turns tracking on itself)", ErrChangeTracking, vm.Path)
	}
	on := true
	task, err := vm.obj.Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: &on})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("%w: enabling changed block tracking on %s: %v", ErrChangeTracking, vm.Path, err)
	}
	c.log.Info("changed block tracking enabled", "vm", vm.Path)
	return nil
}

// SnapshotDisk is one virtual disk as a snapshot holds it.
type SnapshotDisk struct {
	Key           int32
	CapacityBytes int64
	// File is the disk file that holds the snapshot's point in time: what VDDK opens with
	// the snapshot's moref.
	File string
	// ChangeID is the disk's change id at the snapshot ("" without change tracking).
	ChangeID string
}

// SnapshotDisks lists the disks of a snapshot in device order.
func (c *Client) SnapshotDisks(ctx context.Context, snap *Snapshot) ([]SnapshotDisk, error) {
	var m mo.VirtualMachineSnapshot
	if err := c.collector().RetrieveOne(ctx, snap.Ref, []string{"config.hardware.device"}, &m); err != nil {
		return nil, fmt.Errorf("vsphere: read snapshot %q: %w", snap.Name, err)
	}
	var out []SnapshotDisk
	for _, d := range object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		vd := d.(*types.VirtualDisk)
		sd := SnapshotDisk{Key: vd.Key, CapacityBytes: vd.CapacityInBytes}
		if sd.CapacityBytes == 0 {
			sd.CapacityBytes = vd.CapacityInKB * 1024
		}
		if fb, ok := vd.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			sd.File = fb.GetVirtualDeviceFileBackingInfo().FileName
		}
		switch b := vd.Backing.(type) {
		case *types.VirtualDiskFlatVer2BackingInfo:
			sd.ChangeID = b.ChangeId
		case *types.VirtualDiskSeSparseBackingInfo:
			sd.ChangeID = b.ChangeId
		case *types.VirtualDiskSparseVer2BackingInfo:
			sd.ChangeID = b.ChangeId
		case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
			sd.ChangeID = b.ChangeId
		}
		out = append(out, sd)
	}
	return out, nil
}

// Area is a byte range of a disk.
type Area struct {
	Offset, Length int64
}

// ChangedAreas asks vSphere which areas of the disk (deviceKey, capacity bytes) changed
// between changeID and the snapshot ("*": every allocated area), or, with snap nil, up to
// now: vSphere answers that only for a powered-off VM. vSphere answers a part of
// the disk per call (startOffset, length); the next call starts where the answer ends,
// until the end of the disk. The areas are sorted, merged and within the disk.
func (c *Client) ChangedAreas(ctx context.Context, vm *VM, snap *Snapshot, deviceKey int32, capacity int64, changeID string) ([]Area, error) {
	var out []Area
	var ref *types.ManagedObjectReference
	if snap != nil {
		r := snap.Ref
		ref = &r
	}
	for off := int64(0); off < capacity; {
		res, err := methods.QueryChangedDiskAreas(ctx, c.vim, &types.QueryChangedDiskAreas{
			This: vm.Ref, Snapshot: ref, DeviceKey: deviceKey, StartOffset: off, ChangeId: changeID,
		})
		if err != nil {
			if strings.Contains(err.Error(), "changeId") {
				return nil, fmt.Errorf("%w: vSphere refused change id %q of disk %d of %s (tracking was reset?): %v",
					ErrChangeTracking, changeID, deviceKey, vm.Path, err)
			}
			return nil, fmt.Errorf("vsphere: changed areas of disk %d of %s since %q: %w", deviceKey, vm.Path, changeID, err)
		}
		info := res.Returnval
		next := info.StartOffset + info.Length
		for _, a := range info.ChangedArea {
			if a.Length <= 0 {
				continue
			}
			if a.Start < 0 || a.Start+a.Length > capacity {
				return nil, fmt.Errorf("vsphere: changed area %d+%d of disk %d is outside its %d bytes", a.Start, a.Length, deviceKey, capacity)
			}
			out = appendArea(out, Area{Offset: a.Start, Length: a.Length})
			next = max(next, a.Start+a.Length)
		}
		if next <= off {
			// An answer that covers nothing and names nothing: nothing more to learn.
			break
		}
		off = next
	}
	return out, nil
}

// appendArea adds a to sorted areas, merging it with the last one when they touch.
func appendArea(areas []Area, a Area) []Area {
	if k := len(areas) - 1; k >= 0 {
		last := &areas[k]
		if a.Offset <= last.Offset+last.Length {
			last.Length = max(last.Offset+last.Length, a.Offset+a.Length) - last.Offset
			return areas
		}
	}
	return append(areas, a)
}

// SnapshotsNamed lists the VM's snapshots whose name starts with prefix (the ones an
// earlier attempt of a job made and could not remove).
func (c *Client) SnapshotsNamed(ctx context.Context, vm *VM, prefix string) ([]*Snapshot, error) {
	var m mo.VirtualMachine
	if err := c.collector().RetrieveOne(ctx, vm.Ref, []string{"snapshot"}, &m); err != nil {
		return nil, fmt.Errorf("vsphere: snapshots of %s: %w", vm.Path, err)
	}
	var out []*Snapshot
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(ts []types.VirtualMachineSnapshotTree) {
		for _, t := range ts {
			if strings.HasPrefix(t.Name, prefix) {
				out = append(out, &Snapshot{Name: t.Name, Ref: t.Snapshot})
			}
			walk(t.ChildSnapshotList)
		}
	}
	if m.Snapshot != nil {
		walk(m.Snapshot.RootSnapshotList)
	}
	return out, nil
}
