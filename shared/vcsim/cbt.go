package vcsim

import (
	"crypto/rand"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Changed-block tracking and snapshots with real disk bytes, as vSphere does them:
//   - config.changeTrackingEnabled is set by ReconfigVM, which refuses to change it while
//     the VM has snapshots;
//   - a snapshot freezes each disk's current file (see disk.go), and stamps a change id
//     ("<disk tracking uuid>/<n>") into the snapshot's VirtualDisk backing, and into the
//     VM's new current backing;
//   - QueryChangedDiskAreas(snapshot, deviceKey, startOffset, changeId) answers the areas
//     written since changeId ("*": every allocated area), at most ChangedAreasPerCall
//     areas a call: the caller asks again from StartOffset+Length until the end of the
//     disk, as with vSphere;
//   - RemoveSnapshot merges the delta back (always consolidating).
// Tracking starts when it is enabled (vSphere starts it at the next stun); a tree of
// snapshots (after a revert) is not simulated: revert is refused while deltas exist.

// chainTable holds the simulator's own state of the VMs whose disks it tracks, created on
// a VM's first call that needs it.
type chainTable struct {
	mu  sync.Mutex
	vms map[string]*vmDisks // VM moref →
}

// vmDisks is one VM's disks, snapshots and change tracking. mu serialises guest writes
// with snapshot and tracking changes.
type vmDisks struct {
	mu    sync.Mutex
	moref string
	name  string
	disks []*chainDisk
	// snaps are the VM's snapshots, oldest first: snaps[k] froze chain[k] of every disk.
	snaps []types.ManagedObjectReference
	// stamps is the change-tracking epoch each snapshot stamped (0: tracking was off).
	stamps map[string]uint32
	cbt    bool
	// epoch counts the stamps handed out; writes record epoch+1.
	epoch  uint32
	writer *guestWriter
	// paused holds the guest writer (PauseGuest) without stopping it.
	paused bool
}

func (st *vmDisks) writeEpoch() uint32 {
	if !st.cbt {
		return 0
	}
	return st.epoch + 1
}

func (st *vmDisks) disk(key int32) *chainDisk {
	for _, d := range st.disks {
		if d.key == key {
			return d
		}
	}
	return nil
}

func (st *vmDisks) snapIndex(ref types.ManagedObjectReference) int {
	for i, s := range st.snaps {
		if s == ref {
			return i
		}
	}
	return -1
}

func (st *vmDisks) close() {
	for _, d := range st.disks {
		d.close()
	}
}

// setTracking turns change tracking on (a new tracking id per disk, nothing recorded yet)
// or off.
func (st *vmDisks) setTracking(on bool) {
	st.cbt = on
	if !on {
		return
	}
	for _, d := range st.disks {
		d.ctkUUID = newTrackingID()
		clear(d.lastWrite)
	}
}

// newTrackingID looks like the first half of vSphere's change ids: "52 1f 3a … 9c-0d e1 …".
func newTrackingID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	var s strings.Builder
	for i, c := range b {
		switch {
		case i == 8:
			s.WriteByte('-')
		case i > 0:
			s.WriteByte(' ')
		}
		fmt.Fprintf(&s, "%02x", c)
	}
	return s.String()
}

// vmDisksOf returns the state of vm, building it from the VM's configuration on first use.
// The caller holds the VM's simulator lock.
func (s *Sim) vmDisksOf(vm *simulator.VirtualMachine) (*vmDisks, error) {
	s.chains.mu.Lock()
	defer s.chains.mu.Unlock()
	if st := s.chains.vms[vm.Self.Value]; st != nil {
		return st, nil
	}
	st := &vmDisks{moref: vm.Self.Value, name: vm.Name, stamps: map[string]uint32{}}
	for _, dev := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		vd := dev.(*types.VirtualDisk)
		b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok || b.Parent != nil {
			st.close()
			return nil, fmt.Errorf("disk %d of %s: the simulator tracks flat disks without snapshots, not %T", vd.Key, vm.Name, vd.Backing)
		}
		local, err := s.localPath(b.FileName)
		if err != nil {
			st.close()
			return nil, err
		}
		d, err := openBase(b.FileName, local, vd.CapacityInBytes)
		if err != nil {
			st.close()
			return nil, err
		}
		d.key = vd.Key
		st.disks = append(st.disks, d)
	}
	if on := vm.Config.ChangeTrackingEnabled; on != nil && *on {
		st.setTracking(true)
	}
	if s.chains.vms == nil {
		s.chains.vms = map[string]*vmDisks{}
	}
	s.chains.vms[st.moref] = st
	return st, nil
}

// tracked returns the state of a VM if the simulator tracks it already.
func (s *Sim) tracked(moref string) *vmDisks {
	s.chains.mu.Lock()
	defer s.chains.mu.Unlock()
	return s.chains.vms[moref]
}

func (s *Sim) forget(moref string) *vmDisks {
	s.chains.mu.Lock()
	defer s.chains.mu.Unlock()
	st := s.chains.vms[moref]
	delete(s.chains.vms, moref)
	return st
}

// closeChains stops every guest writer and closes the disk files (Sim.Close).
func (s *Sim) closeChains() {
	s.chains.mu.Lock()
	vms := s.chains.vms
	s.chains.vms = nil
	s.chains.mu.Unlock()
	for _, st := range vms {
		st.stopWriter()
		st.close()
	}
}

// localPath maps "[ds] dir/file.vmdk" to the file in the datastore's directory.
func (s *Sim) localPath(dsPath string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		return "", fmt.Errorf("bad datastore path %q", dsPath)
	}
	dir, ok := s.dsDirs[p.Datastore]
	if !ok {
		return "", fmt.Errorf("unknown datastore %q", p.Datastore)
	}
	return dir + "/" + p.Path, nil
}

func hasSnapshots(vm *simulator.VirtualMachine) bool {
	return vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0
}

// faultMsg is a fault whose message says what vSphere would say.
func faultMsg(msg string, f types.BaseMethodFault) types.BaseMethodFault {
	f.GetMethodFault().FaultMessage = []types.LocalizableMessage{{Key: "hypersdk.sim", Message: msg}}
	return f
}

// invalidArgument is vSphere's "A specified parameter was not correct: <prop>", with why.
func invalidArgument(prop, msg string) *soap.Fault {
	return simulator.Fault("A specified parameter was not correct: "+prop+" ("+msg+")", &types.InvalidArgument{InvalidProperty: prop})
}

// waitInner waits for a task the wrapper started through the embedded simulator object,
// from inside the wrapper's own task (the simulator's pattern for a task that needs
// another: ResetVM), and returns its outcome.
func waitInner(ctx *simulator.Context, ref types.ManagedObjectReference) (types.AnyType, types.BaseMethodFault) {
	t, ok := ctx.Map.Get(ref).(*simulator.Task)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: ref}
	}
	t.Wait()
	if t.Info.Error != nil {
		return nil, t.Info.Error.Fault
	}
	return t.Info.Result, nil
}

// ReconfigVMTask refuses to change changeTrackingEnabled while the VM has snapshots, as
// vSphere does, and starts or stops the simulator's tracking with it.
func (v *simVM) ReconfigVMTask(ctx *simulator.Context, req *types.ReconfigVM_Task) soap.HasFault {
	want := req.Spec.ChangeTrackingEnabled
	cur := v.Config.ChangeTrackingEnabled != nil && *v.Config.ChangeTrackingEnabled
	if want == nil || *want == cur {
		return v.VirtualMachine.ReconfigVMTask(ctx, req)
	}
	body := &methods.ReconfigVM_TaskBody{}
	task := simulator.CreateTask(v.Self, "reconfigVm", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if hasSnapshots(v.VirtualMachine) {
			return nil, faultMsg("changed block tracking cannot be enabled or disabled while the virtual machine has snapshots; remove them first",
				&types.InvalidState{})
		}
		st, err := v.sim.vmDisksOf(v.VirtualMachine)
		if err != nil {
			return nil, faultMsg(err.Error(), &types.NotSupported{})
		}
		inner := v.VirtualMachine.ReconfigVMTask(ctx, req).(*methods.ReconfigVM_TaskBody)
		if _, fault := waitInner(ctx, inner.Res.Returnval); fault != nil {
			return nil, fault
		}
		st.mu.Lock()
		st.setTracking(*want)
		st.mu.Unlock()
		v.sim.log.Info("changed block tracking", "vm", v.Name, "enabled", *want)
		return nil, nil
	})
	body.Res = &types.ReconfigVM_TaskResponse{Returnval: task.Run(ctx)}
	return body
}

// CreateSnapshotTask takes a snapshot with frozen disk files (see CreateSnapshotExTask).
func (v *simVM) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	ex := &types.CreateSnapshotEx_Task{This: req.This, Name: req.Name, Description: req.Description, Memory: req.Memory}
	if req.Quiesce {
		ex.QuiesceSpec = &types.VirtualMachineGuestQuiesceSpec{}
	}
	res := v.CreateSnapshotExTask(ctx, ex).(*methods.CreateSnapshotEx_TaskBody)
	return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: res.Res.Returnval}}
}

// CreateSnapshotExTask takes the simulator's snapshot, then freezes every disk's current
// file (the VM goes on writing a new delta) and stamps the change ids, with the guest's
// writes held for the moment it takes.
func (v *simVM) CreateSnapshotExTask(ctx *simulator.Context, req *types.CreateSnapshotEx_Task) soap.HasFault {
	task := simulator.CreateTask(v.Self, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		st, err := v.sim.vmDisksOf(v.VirtualMachine)
		if err != nil {
			return nil, faultMsg(err.Error(), &types.NotSupported{})
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		if cur := v.Snapshot; cur != nil && cur.CurrentSnapshot != nil && (len(st.snaps) == 0 || *cur.CurrentSnapshot != st.snaps[len(st.snaps)-1]) {
			return nil, faultMsg("the simulator keeps one linear chain of snapshots: the current snapshot must be the latest", &types.NotSupported{})
		}
		inner := v.VirtualMachine.CreateSnapshotExTask(ctx, req).(*methods.CreateSnapshotEx_TaskBody)
		res, fault := waitInner(ctx, inner.Res.Returnval)
		if fault != nil {
			return nil, fault
		}
		ref := res.(types.ManagedObjectReference)
		snap, _ := ctx.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
		if snap == nil {
			return nil, &types.ManagedObjectNotFound{Obj: ref}
		}
		if err := v.freeze(ctx, st, snap); err != nil {
			return nil, faultMsg(err.Error(), &types.FileFault{File: err.Error()})
		}
		return ref, nil
	})
	return &methods.CreateSnapshotEx_TaskBody{Res: &types.CreateSnapshotEx_TaskResponse{Returnval: task.Run(ctx)}}
}

// freeze adds a delta to every disk and points the VM at it; the snapshot's configuration
// (copied from the VM's before) keeps the frozen file, with the change id stamped.
func (v *simVM) freeze(ctx *simulator.Context, st *vmDisks, snap *simulator.VirtualMachineSnapshot) error {
	var added []*chainDisk
	for _, d := range st.disks {
		if _, err := d.addDelta(); err != nil {
			for _, a := range added { // undo: the VM goes on writing the file it wrote
				top := a.chain[len(a.chain)-1]
				top.f.Close()
				removeFiles(top)
				a.chain = a.chain[:len(a.chain)-1]
			}
			return err
		}
		added = append(added, d)
	}
	var stamp uint32
	if st.cbt {
		st.epoch++
		stamp = st.epoch
	}
	devices := v.Config.Hardware.Device
	for _, d := range st.disks {
		changeID := ""
		if st.cbt {
			changeID = d.ctkUUID + "/" + strconv.FormatUint(uint64(stamp), 10)
		}
		if b := flatBacking(snap.Config.Hardware.Device, d.key); b != nil {
			b.ChangeId = changeID
		}
		if b := flatBacking(devices, d.key); b != nil {
			parent := *b
			nb := parent
			nb.FileName = d.chain[len(d.chain)-1].dsPath
			nb.Parent = &parent
			nb.ChangeId = changeID
			nb.Uuid = ""
			setBacking(devices, d.key, &nb)
		}
	}
	st.snaps = append(st.snaps, snap.Self)
	st.stamps[snap.Self.Value] = stamp
	ctx.Update(v.VirtualMachine, []types.PropertyChange{{Name: "config.hardware.device", Val: devices}})
	v.sim.log.Debug("snapshot: disks frozen", "vm", v.Name, "snapshot", snap.Self.Value, "epoch", stamp)
	return nil
}

func flatBacking(devices []types.BaseVirtualDevice, key int32) *types.VirtualDiskFlatVer2BackingInfo {
	for _, dev := range devices {
		if vd, ok := dev.(*types.VirtualDisk); ok && vd.Key == key {
			b, _ := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			return b
		}
	}
	return nil
}

func setBacking(devices []types.BaseVirtualDevice, key int32, b *types.VirtualDiskFlatVer2BackingInfo) {
	for _, dev := range devices {
		if vd, ok := dev.(*types.VirtualDisk); ok && vd.Key == key {
			vd.Backing = b
		}
	}
}

func removeFiles(f *diskFile) {
	_ = os.Remove(f.extent)
	_ = os.Remove(f.descriptor)
}

// unfreeze removes snapshot index k of st: every disk's file k+1 is merged into file k,
// and whatever referred to file k+1 (the next snapshot, or the VM) now refers to file k
// with the backing chain snapshot k had, keeping its own change id.
func (s *Sim) unfreeze(ctx *simulator.Context, vm *simulator.VirtualMachine, st *vmDisks, k int) error {
	older := snapshotDevices(ctx, st.snaps[k])
	var referrer []types.BaseVirtualDevice
	if k+1 < len(st.snaps) {
		referrer = snapshotDevices(ctx, st.snaps[k+1])
	} else {
		referrer = vm.Config.Hardware.Device
	}
	for _, d := range st.disks {
		if err := d.mergeDown(k); err != nil {
			return fmt.Errorf("consolidate %s: %w", d.chain[k].dsPath, err)
		}
		frozen := flatBacking(older, d.key)
		ref := flatBacking(referrer, d.key)
		if frozen != nil && ref != nil {
			nb := *frozen
			nb.ChangeId = ref.ChangeId
			setBacking(referrer, d.key, &nb)
		}
	}
	delete(st.stamps, st.snaps[k].Value)
	st.snaps = append(st.snaps[:k], st.snaps[k+1:]...)
	ctx.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: vm.Config.Hardware.Device}})
	return nil
}

func snapshotDevices(ctx *simulator.Context, ref types.ManagedObjectReference) []types.BaseVirtualDevice {
	if s, ok := ctx.Map.Get(ref).(*simulator.VirtualMachineSnapshot); ok {
		return s.Config.Hardware.Device
	}
	return nil
}

// simSnapshot is a simulator snapshot whose removal consolidates the disk files.
type simSnapshot struct {
	*simulator.VirtualMachineSnapshot
	sim *Sim
}

// RemoveSnapshotTask merges the snapshot's delta (and its children's, with removeChildren)
// back, then removes the simulator's snapshot. It always consolidates.
func (v *simSnapshot) RemoveSnapshotTask(ctx *simulator.Context, req *types.RemoveSnapshot_Task) soap.HasFault {
	task := simulator.CreateTask(v.Vm, "removeSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		vm, _ := ctx.Map.Get(v.Vm).(*simulator.VirtualMachine)
		if st := v.sim.tracked(v.Vm.Value); st != nil && vm != nil {
			st.mu.Lock()
			defer st.mu.Unlock()
			if k := st.snapIndex(v.Self); k >= 0 {
				last := k
				if req.RemoveChildren {
					last = len(st.snaps) - 1
				}
				for i := last; i >= k; i-- {
					if err := v.sim.unfreeze(ctx, vm, st, i); err != nil {
						return nil, faultMsg(err.Error(), &types.FileFault{File: err.Error()})
					}
				}
			}
		}
		inner := v.VirtualMachineSnapshot.RemoveSnapshotTask(ctx, req).(*methods.RemoveSnapshot_TaskBody)
		return waitInner(ctx, inner.Res.Returnval)
	})
	return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: task.Run(ctx)}}
}

// RevertToSnapshotTask is refused while the disks have deltas: the simulator keeps one
// linear chain and does not throw writes away.
func (v *simSnapshot) RevertToSnapshotTask(ctx *simulator.Context, req *types.RevertToSnapshot_Task) soap.HasFault {
	if st := v.sim.tracked(v.Vm.Value); st != nil && len(st.snaps) > 0 {
		return &methods.RevertToSnapshot_TaskBody{Fault_: simulator.Fault("hypersdk-sim does not revert disks with snapshot deltas", &types.NotSupported{})}
	}
	return v.VirtualMachineSnapshot.RevertToSnapshotTask(ctx, req)
}

// RevertToCurrentSnapshotTask: see simSnapshot.RevertToSnapshotTask.
func (v *simVM) RevertToCurrentSnapshotTask(ctx *simulator.Context, req *types.RevertToCurrentSnapshot_Task) soap.HasFault {
	if st := v.sim.tracked(v.Self.Value); st != nil && len(st.snaps) > 0 {
		return &methods.RevertToCurrentSnapshot_TaskBody{Fault_: simulator.Fault("hypersdk-sim does not revert disks with snapshot deltas", &types.NotSupported{})}
	}
	return v.VirtualMachine.RevertToCurrentSnapshotTask(ctx, req)
}

// RemoveAllSnapshotsTask merges every delta back into the base disks.
func (v *simVM) RemoveAllSnapshotsTask(ctx *simulator.Context, req *types.RemoveAllSnapshots_Task) soap.HasFault {
	task := simulator.CreateTask(v.Self, "removeAllSnapshots", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if st := v.sim.tracked(v.Self.Value); st != nil {
			st.mu.Lock()
			defer st.mu.Unlock()
			for i := len(st.snaps) - 1; i >= 0; i-- {
				if err := v.sim.unfreeze(ctx, v.VirtualMachine, st, i); err != nil {
					return nil, faultMsg(err.Error(), &types.FileFault{File: err.Error()})
				}
			}
		}
		inner := v.VirtualMachine.RemoveAllSnapshotsTask(ctx, req).(*methods.RemoveAllSnapshots_TaskBody)
		return waitInner(ctx, inner.Res.Returnval)
	})
	return &methods.RemoveAllSnapshots_TaskBody{Res: &types.RemoveAllSnapshots_TaskResponse{Returnval: task.Run(ctx)}}
}

// QueryChangedDiskAreas answers the areas of a disk written since changeId, as of a
// snapshot (or, for a powered-off VM, now), one page at a time.
func (v *simVM) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := new(methods.QueryChangedDiskAreasBody)
	info, fault := v.changedAreas(req)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: info}
	return body
}

func (v *simVM) changedAreas(req *types.QueryChangedDiskAreas) (types.DiskChangeInfo, *soap.Fault) {
	var none types.DiskChangeInfo
	if v.Config.ChangeTrackingEnabled == nil || !*v.Config.ChangeTrackingEnabled {
		return none, simulator.Fault("changed block tracking is not enabled on "+v.Name, &types.InvalidState{})
	}
	st, err := v.sim.vmDisksOf(v.VirtualMachine)
	if err != nil {
		return none, simulator.Fault(err.Error(), &types.NotSupported{})
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	top, stamp := -1, st.epoch
	if req.Snapshot != nil {
		k := st.snapIndex(*req.Snapshot)
		if k < 0 {
			return none, invalidArgument("snapshot", fmt.Sprintf("%s is not a snapshot of %s", req.Snapshot.Value, v.Name))
		}
		top, stamp = k, st.stamps[req.Snapshot.Value]
	} else if v.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		return none, simulator.Fault("QueryChangedDiskAreas without a snapshot works only for a powered-off virtual machine", &types.InvalidState{})
	}
	d := st.disk(req.DeviceKey)
	if d == nil {
		return none, invalidArgument("deviceKey", fmt.Sprintf("%s has no virtual disk with key %d", v.Name, req.DeviceKey))
	}
	if top < 0 {
		top = len(d.chain) - 1
	}
	if req.StartOffset < 0 || req.StartOffset >= d.capacity || req.StartOffset%512 != 0 {
		return none, invalidArgument("startOffset", fmt.Sprintf("startOffset %d is not a sector of the disk of %d bytes", req.StartOffset, d.capacity))
	}
	var areas []Range
	if req.ChangeId == "*" {
		if areas, err = d.allocated(top); err != nil {
			return none, simulator.Fault(err.Error(), &types.FileFault{File: d.chain[0].extent})
		}
	} else {
		id, seqText, ok := strings.Cut(req.ChangeId, "/")
		seq, perr := strconv.ParseUint(seqText, 10, 32)
		switch {
		case !ok || perr != nil:
			return none, invalidArgument("changeId", fmt.Sprintf("changeId %q is not a change id", req.ChangeId))
		case id != d.ctkUUID:
			return none, invalidArgument("changeId", fmt.Sprintf("changeId %q was not issued since change tracking of the disk was last enabled", req.ChangeId))
		case uint32(seq) > stamp:
			return none, invalidArgument("changeId", fmt.Sprintf("changeId %q is newer than the snapshot", req.ChangeId))
		}
		since := uint32(seq)
		// Every grain written after the change id, up to now: a grain written again after
		// the snapshot is reported too (a superset, as vSphere may answer), and reading it
		// from the snapshot gives the snapshot's bytes all the same.
		areas = d.ranges(func(g int64) bool { return d.lastWrite[g] > since })
	}
	return page(areas, req.StartOffset, d.capacity, v.sim.cfg.ChangedAreasPerCall), nil
}

// page is the answer for areas from start: at most limit areas (clipped to start), and the
// length covered, which ends at the last area returned when more remain.
func page(areas []Range, start, capacity int64, limit int) types.DiskChangeInfo {
	info := types.DiskChangeInfo{StartOffset: start, Length: capacity - start}
	for _, a := range areas {
		end := a.Off + a.Len
		if end <= start {
			continue
		}
		if len(info.ChangedArea) == limit {
			last := info.ChangedArea[limit-1]
			info.Length = last.Start + last.Length - start
			break
		}
		lo := max(a.Off, start)
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: lo, Length: end - lo})
	}
	return info
}
