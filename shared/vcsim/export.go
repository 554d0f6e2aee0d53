package vcsim

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// exportPrefix is where export device URLs live. The simulator owns "/nfc/" for its
// ExportSnapshot leases; the longer pattern wins in the mux.
const exportPrefix = "/nfc/export/"

// simVM is a simulator VM with ExportVm and a guest that can ignore shutdown (see dispatch).
type simVM struct {
	*simulator.VirtualMachine
	sim *Sim
}

// exportDisk is one disk of an export lease.
type exportDisk struct {
	key      string // "/vm-42/ParaVirtualSCSIController0:1", like ESXi's device keys
	target   string // "disk-1.vmdk"
	flat     string // local flat extent
	capacity int64
}

// ExportVm implements VirtualMachine.ExportVm as ESXi does: the VM must be powered off; the
// call returns a lease at once in state "initializing", and the lease turns "ready" when
// each disk is available as a stream-optimized VMDK at its device URL.
func (v *simVM) ExportVm(ctx *simulator.Context, req *types.ExportVm) soap.HasFault {
	body := new(methods.ExportVmBody)
	if f := v.sim.takeBusy(v.Self.Value); f != nil {
		body.Fault_ = simulator.Fault("Failed to allocate memory for NFC export session: host busy", f)
		return body
	}
	if st := v.Runtime.PowerState; st != types.VirtualMachinePowerStatePoweredOff {
		body.Fault_ = simulator.Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOff,
			ExistingState:  st,
		})
		return body
	}
	disks, err := v.sim.exportDisks(v.VirtualMachine)
	if err != nil {
		body.Fault_ = simulator.Fault(err.Error(), &types.FileFault{File: err.Error()})
		return body
	}

	lease := &exportLease{
		HttpNfcLease: mo.HttpNfcLease{
			State: types.HttpNfcLeaseStateInitializing,
			Mode:  string(types.HttpNfcLeaseModePull),
			Capabilities: types.HttpNfcLeaseCapabilities{
				PullModeSupported: true,
				CorsSupported:     true,
			},
		},
		sim:   v.sim,
		id:    uuid.NewString(),
		vm:    v.Self,
		disks: disks,
		files: map[string]streamFile{},
	}
	lease.Self.Type = "HttpNfcLease"
	if !v.sim.startBackground() {
		body.Fault_ = simulator.Fault("simulator is shutting down", &types.HostCommunication{})
		return body
	}
	ctx.Session.Put(lease)
	v.sim.leases.add(lease)
	go lease.prepare(ctx)

	body.Res = &types.ExportVmResponse{Returnval: lease.Self}
	return body
}

// exportDisks lists the VM's flat disks in device order, with ESXi-style keys and targets.
func (s *Sim) exportDisks(vm *simulator.VirtualMachine) ([]exportDisk, error) {
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	var out []exportDisk
	for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			return nil, fmt.Errorf("disk %d has a %T backing; only flat disks can be exported here", disk.Key, disk.Backing)
		}
		if backing.Parent != nil {
			return nil, fmt.Errorf("disk %d is a snapshot delta: the simulator exports VMs without snapshots only", disk.Key)
		}
		var p object.DatastorePath
		if !p.FromString(backing.FileName) {
			return nil, fmt.Errorf("disk %d: bad backing file name %q", disk.Key, backing.FileName)
		}
		dir, ok := s.dsDirs[p.Datastore]
		if !ok {
			return nil, fmt.Errorf("disk %d: unknown datastore %q", disk.Key, p.Datastore)
		}
		descriptor := filepath.Join(dir, filepath.FromSlash(p.Path))

		ctrlName, bus := "Controller", int32(0)
		if c, ok := devices.FindByKey(disk.ControllerKey).(types.BaseVirtualController); ok {
			ctrlName = reflect.TypeOf(c).Elem().Name()
			bus = c.GetVirtualController().BusNumber
		}
		unit := int32(0)
		if disk.UnitNumber != nil {
			unit = *disk.UnitNumber
		}
		out = append(out, exportDisk{
			key:      fmt.Sprintf("/%s/%s%d:%d", vm.Self.Value, ctrlName, bus, unit),
			target:   fmt.Sprintf("disk-%d.vmdk", len(out)),
			flat:     simulator.VirtualDiskBackingFileName(descriptor),
			capacity: disk.CapacityInBytes,
		})
	}
	return out, nil
}

// startBackground registers one background goroutine unless Close has begun, so Close's
// Wait never races an Add.
func (s *Sim) startBackground() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bg.Err() != nil {
		return false
	}
	s.bgWait.Add(1)
	return true
}

// exportLease is an HttpNfcLease served by the simulator's SOAP dispatcher (its methods
// below) and by serveExport. mo.HttpNfcLease must stay the first field: the property
// collector finds the managed object there.
type exportLease struct {
	mo.HttpNfcLease

	sim   *Sim
	id    string // the unguessable path segment of the device URLs
	vm    types.ManagedObjectReference
	disks []exportDisk

	// mu is not embedded: a sync.Locker would replace the simulator's own object lock.
	mu       sync.Mutex
	files    map[string]streamFile // target → converted file, once ready
	lastSeen time.Time             // start of the timeout window
	ready    bool
	done     bool // completed, aborted or timed out
	timedOut bool
}

type streamFile struct {
	path string
	size int64
	flat string
}

// prepare converts each disk (or reuses the cache) and then publishes the lease info. It runs
// after the SOAP call returned, as ESXi's lease initialisation does.
func (l *exportLease) prepare(ctx *simulator.Context) {
	defer l.sim.bgWait.Done()
	s := l.sim
	base := *s.URL
	if s.cfg.LeaseHostStar {
		base.Host = "*"
	}

	var (
		urls  []types.HttpNfcLeaseDeviceUrl
		total int64
	)
	for i, d := range l.disks {
		p, size, err := s.streams.get(s.bg, d.flat)
		if err != nil {
			s.log.Error("export: convert disk", "vm", l.vm.Value, "disk", d.key, "err", err)
			l.fail(ctx, err)
			return
		}
		l.mu.Lock()
		l.files[d.target] = streamFile{path: p, size: size, flat: d.flat}
		l.mu.Unlock()

		u := base
		u.Path = exportPrefix + l.id + "/" + d.target
		urls = append(urls, types.HttpNfcLeaseDeviceUrl{
			Key:       d.key,
			ImportKey: d.key,
			Url:       u.String(),
			TargetId:  d.target,
			Disk:      types.NewBool(true),
			FileSize:  size,
		})
		total += d.capacity / 1024
		l.update(ctx, types.PropertyChange{Name: "initializeProgress", Val: int32(100 * (i + 1) / len(l.disks))})
	}

	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return
	}
	l.ready = true
	l.lastSeen = time.Now()
	l.mu.Unlock()
	l.update(ctx,
		types.PropertyChange{Name: "info", Val: types.HttpNfcLeaseInfo{
			Lease:                 l.Self,
			Entity:                l.vm,
			DeviceUrl:             urls,
			TotalDiskCapacityInKB: total,
			LeaseTimeout:          int32(s.cfg.LeaseTimeout / time.Second),
		}},
		types.PropertyChange{Name: "initializeProgress", Val: int32(100)},
		types.PropertyChange{Name: "state", Val: types.HttpNfcLeaseStateReady},
	)
}

// update publishes property changes so waiting clients (nfc.Lease.Wait) see them.
func (l *exportLease) update(ctx *simulator.Context, changes ...types.PropertyChange) {
	ctx.WithLock(l, func() { ctx.Update(l, changes) })
}

func (l *exportLease) fail(ctx *simulator.Context, err error) {
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
	l.sim.leases.remove(l.id)
	l.update(ctx,
		types.PropertyChange{Name: "error", Val: types.LocalizedMethodFault{
			Fault:            &types.SystemError{Reason: err.Error()},
			LocalizedMessage: err.Error(),
		}},
		types.PropertyChange{Name: "state", Val: types.HttpNfcLeaseStateError},
	)
}

// alive reports whether the device URLs may still be read, expiring the lease when no
// progress call renewed it within the lease timeout, as ESXi does.
func (l *exportLease) alive() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done || !l.ready {
		return false
	}
	if time.Since(l.lastSeen) > l.sim.cfg.LeaseTimeout {
		l.done, l.timedOut = true, true
		l.sim.log.Warn("export lease timed out: no progress call within the lease timeout",
			"vm", l.vm.Value, "timeout", l.sim.cfg.LeaseTimeout)
		return false
	}
	return true
}

func (l *exportLease) timeoutFault() *soap.Fault {
	return simulator.Fault("the lease timed out: no HttpNfcLeaseProgress call within the lease timeout", &types.Timedout{})
}

// finish ends the lease for Complete and Abort; the device URLs stop serving.
func (l *exportLease) finish(ctx *simulator.Context) {
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
	l.sim.leases.remove(l.id)
	ctx.Session.Remove(ctx, l.Self)
}

// HttpNfcLeaseProgress renews the lease; clients call it every few seconds as keep-alive.
func (l *exportLease) HttpNfcLeaseProgress(ctx *simulator.Context, req *types.HttpNfcLeaseProgress) soap.HasFault {
	body := new(methods.HttpNfcLeaseProgressBody)
	if !l.alive() {
		if l.expired() {
			body.Fault_ = l.timeoutFault()
		} else {
			body.Fault_ = simulator.Fault("the lease is not ready", &types.InvalidState{})
		}
		return body
	}
	l.mu.Lock()
	l.lastSeen = time.Now()
	l.mu.Unlock()
	l.TransferProgress = req.Percent
	body.Res = new(types.HttpNfcLeaseProgressResponse)
	return body
}

func (l *exportLease) expired() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.timedOut
}

// HttpNfcLeaseComplete ends a successful export.
func (l *exportLease) HttpNfcLeaseComplete(ctx *simulator.Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	body := new(methods.HttpNfcLeaseCompleteBody)
	if !l.alive() && l.expired() {
		body.Fault_ = l.timeoutFault()
		return body
	}
	l.finish(ctx)
	body.Res = new(types.HttpNfcLeaseCompleteResponse)
	return body
}

// HttpNfcLeaseAbort ends the lease; aborting a lease that timed out is not an error.
func (l *exportLease) HttpNfcLeaseAbort(ctx *simulator.Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	l.finish(ctx)
	return &methods.HttpNfcLeaseAbortBody{Res: new(types.HttpNfcLeaseAbortResponse)}
}

// HttpNfcLeaseGetManifest returns the SHA-1 and size of each device file.
func (l *exportLease) HttpNfcLeaseGetManifest(ctx *simulator.Context, req *types.HttpNfcLeaseGetManifest) soap.HasFault {
	body := new(methods.HttpNfcLeaseGetManifestBody)
	if !l.alive() {
		body.Fault_ = simulator.Fault("the lease is not ready", &types.InvalidState{})
		return body
	}
	res := new(types.HttpNfcLeaseGetManifestResponse)
	for _, d := range l.disks {
		l.mu.Lock()
		f := l.files[d.target]
		l.mu.Unlock()
		sum, err := l.sim.streams.sha1(f.flat)
		if err != nil {
			body.Fault_ = simulator.Fault(err.Error(), &types.FileFault{File: d.target})
			return body
		}
		res.Returnval = append(res.Returnval, types.HttpNfcLeaseManifestEntry{
			Key: d.key, Sha1: sum, Size: f.size, Disk: true,
		})
	}
	body.Res = res
	return body
}

// file returns the converted file behind a device URL target if the lease is alive.
func (l *exportLease) file(target string) (streamFile, bool) {
	if !l.alive() {
		return streamFile{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.files[target]
	return f, ok
}

// serveExport serves GET/HEAD of export device URLs, with Range support.
func (s *Sim) serveExport(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	id, target, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, exportPrefix), "/")
	l := s.leases.get(id)
	if l == nil {
		http.Error(w, "no such lease (completed, aborted or timed out)", http.StatusNotFound)
		return
	}
	sf, ok := l.file(target)
	if !ok {
		http.Error(w, "no such device file, or the lease is not ready or has ended", http.StatusNotFound)
		return
	}
	f, err := os.Open(sf.path)
	if err != nil {
		http.Error(w, "device file unavailable", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, target, time.Time{}, &leaseReader{f: f, lease: l})
}

var errLeaseEnded = errors.New("export lease ended")

// leaseReader cuts a download short when its lease ends (timeout, abort), as ESXi does; a
// client that forgets the keep-alive sees a truncated body, not a silent success.
type leaseReader struct {
	f     *os.File
	lease *exportLease
	n     int64
}

func (r *leaseReader) Read(p []byte) (int, error) {
	// Checking per read is cheap (a mutex) and reads are at most 32 KiB from ServeContent.
	if r.n > 0 && !r.lease.alive() {
		return 0, errLeaseEnded
	}
	n, err := r.f.Read(p)
	r.n += int64(n)
	return n, err
}

func (r *leaseReader) Seek(off int64, whence int) (int64, error) { return r.f.Seek(off, whence) }

var _ io.ReadSeeker = (*leaseReader)(nil)

// leaseTable finds leases by the id in their device URLs.
type leaseTable struct {
	mu sync.Mutex
	m  map[string]*exportLease
}

func (t *leaseTable) init() { t.m = map[string]*exportLease{} }

func (t *leaseTable) add(l *exportLease) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m[l.id] = l
}

func (t *leaseTable) get(id string) *exportLease {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[id]
}

func (t *leaseTable) remove(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, id)
}

func (t *leaseTable) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, l := range t.m {
		l.mu.Lock()
		l.done = true
		l.mu.Unlock()
		delete(t.m, id)
	}
}

// ShutdownGuest behaves like the simulator's unless the test made this guest ignore it:
// then the call succeeds and the VM stays on, like a guest OS that never acts on it.
func (v *simVM) ShutdownGuest(ctx *simulator.Context, req *types.ShutdownGuest) soap.HasFault {
	v.sim.mu.Lock()
	hung := v.sim.ignoreShutdown[v.Self.Value]
	v.sim.mu.Unlock()
	if !hung {
		if v.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
			v.stopGuest() // the guest's last write is on disk before it is off
		}
		return v.VirtualMachine.ShutdownGuest(ctx, req)
	}
	body := new(methods.ShutdownGuestBody)
	if st := v.Runtime.PowerState; st != types.VirtualMachinePowerStatePoweredOn {
		body.Fault_ = simulator.Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOn,
			ExistingState:  st,
		})
		return body
	}
	body.Res = new(types.ShutdownGuestResponse)
	return body
}
