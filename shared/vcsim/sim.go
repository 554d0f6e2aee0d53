// Package vcsim runs the govmomi vCenter simulator as a migration source with real disk
// bytes: VMs with flat extents that hold data and holes, the /folder datastore URL, and an
// ExportVm that serves stream-optimized VMDKs the way ESXi does. The hypersdk-sim program,
// the demo and the end-to-end tests all start it through Start.
package vcsim

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Datastore is one simulated datastore and the local directory that backs it.
type Datastore struct {
	Name string
	Path string
}

// DiskFile is one virtual disk of a simulated VM.
type DiskFile struct {
	// DatastorePath is the disk's backing file as vSphere shows it: "[LocalDS_0] vm-1/vm-1.vmdk".
	DatastorePath string
	// Descriptor is the local path of the small text descriptor (.vmdk).
	Descriptor string
	// FlatPath is the local path of the flat extent (-flat.vmdk) that holds the bytes.
	FlatPath string
	// Capacity is the disk size in bytes.
	Capacity int64
}

// VMInfo is one simulated VM.
type VMInfo struct {
	Name  string
	Path  string // inventory path, "/DC0/vm/vm-1"
	Moref string // managed object id, "vm-42"
	// UUID is the BIOS UUID (config.uuid): what the guest reads as its SMBIOS system UUID.
	UUID  string
	Disks []DiskFile
}

// Sim is a running simulator.
type Sim struct {
	// URL is the SDK endpoint, https://host:port/sdk, without credentials.
	URL *url.URL
	// Username and Password log in: the configured ones, or the simulator's defaults when
	// none were configured (then any non-empty pair works).
	Username string
	Password string
	// Thumbprint is the SHA-1 thumbprint of the server certificate, colon-separated hex.
	// The certificate is self-signed: clients need it, or insecure mode.
	Thumbprint string
	// Datacenter is the name of the only datacenter.
	Datacenter string
	Datastores []Datastore
	VMs        []VMInfo

	cfg    Config
	log    *slog.Logger
	model  *simulator.Model
	server *simulator.Server
	dsDirs map[string]string // datastore name → local dir

	streams *streamCache
	leases  leaseTable
	// chains are the disks of VMs with snapshots, change tracking or a guest writer.
	chains chainTable

	// bg is cancelled by Close; background work (stream conversions) runs under it.
	bg     context.Context
	stop   context.CancelFunc
	bgWait sync.WaitGroup

	// guestSize is the first disk's capacity with a guest image (0: no guest).
	guestSize int64

	mu             sync.Mutex
	ignoreShutdown map[string]bool      // VM moref → guest ignores ShutdownGuest
	poweredOff     map[string]time.Time // VM moref → last power-off (PoweredOffAt)
	exportBusy     map[string]int       // VM moref → ExportVm calls left to refuse (busy.go)

	closeOnce sync.Once
	tmpDir    string
}

var startMu sync.Mutex

// Start builds the inventory, writes the disks and serves the SDK until Close. On error
// nothing is left running or on disk.
func Start(ctx context.Context, cfg Config) (_ *Sim, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}

	s := &Sim{
		cfg:            cfg,
		log:            cfg.Logger.With("component", "vcsim"),
		dsDirs:         map[string]string{},
		ignoreShutdown: map[string]bool{},
		Datacenter:     "DC0",
	}
	s.bg, s.stop = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if cfg.Guest != "" {
		if s.guestSize, err = guestDiskSize(cfg.GuestImage, cfg.DiskSize); err != nil {
			return nil, err
		}
	}

	s.tmpDir, err = os.MkdirTemp("", "hypersdk-vcsim-")
	if err != nil {
		return nil, fmt.Errorf("vcsim: %w", err)
	}
	s.streams = newStreamCache(filepath.Join(s.tmpDir, "stream"), cfg.QemuImg, s.log)
	s.leases.init()

	if err := s.startServer(); err != nil {
		return nil, err
	}
	u := *s.server.URL
	s.Username = u.User.Username()
	s.Password, _ = u.User.Password()
	u.User = nil
	s.URL = &u
	s.Thumbprint = soap.ThumbprintSHA1(s.server.Certificate())

	if err := s.build(ctx); err != nil {
		return nil, err
	}
	if err := s.startWriters(); err != nil {
		return nil, err
	}
	if cfg.PrepareExports && s.startBackground() {
		go s.prepareExports()
	}
	s.log.Info("simulator ready", "url", s.URL.String(), "vms", len(s.VMs),
		"disks_per_vm", cfg.DisksPerVM, "disk_size", cfg.DiskSize, "fill", cfg.Fill.String())
	return s, nil
}

// startServer creates the model (a vCenter with one datacenter, one standalone host and one
// local datastore; the VMs are made by build so that their disks have the configured size
// and names) and starts its HTTPS server.
func (s *Sim) startServer() error {
	// The simulator writes package globals while it creates a model and starts a server
	// (license data, endpoint tables): two Starts in one process must not overlap there.
	startMu.Lock()
	defer startMu.Unlock()
	m := simulator.VPX()
	m.Autostart = false
	m.Machine = 0
	m.Cluster = 0
	m.ClusterHost = 0
	m.Portgroup = 0
	m.Host = 1
	m.Datastore = 1
	if err := m.Create(); err != nil {
		return fmt.Errorf("vcsim: create model: %w", err)
	}
	s.model = m

	m.Service.Listen = &url.URL{Host: s.cfg.Listen}
	if s.cfg.Username != "" {
		m.Service.Listen.User = url.UserPassword(s.cfg.Username, s.cfg.Password)
	}
	m.Service.TLS = new(tls.Config)
	m.Map().Handler = s.dispatch
	// Our routes go on the mux before the simulator adds its own: it keeps an existing mux.
	m.Service.ServeMux = http.NewServeMux()
	m.Service.ServeMux.Handle(exportPrefix, http.HandlerFunc(s.serveExport))

	var err error
	s.server, err = newServer(m.Service)
	return err
}

// newServer starts the HTTPS server. The simulator panics when it cannot listen (its
// listener comes from httptest); turn that into an error such as "address in use".
func newServer(svc *simulator.Service) (srv *simulator.Server, err error) {
	ln, lerr := net.Listen("tcp", svc.Listen.Host)
	if lerr != nil {
		return nil, fmt.Errorf("vcsim: listen on %s: %w", svc.Listen.Host, lerr)
	}
	// Only a probe: the simulator opens its own listener on the same address right after.
	_ = ln.Close()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("vcsim: start server on %s: %v", svc.Listen.Host, r)
		}
	}()
	return svc.NewServer(), nil
}

// build creates the VMs through the simulator's in-process SOAP client and writes their disks.
func (s *Sim) build(ctx context.Context) error {
	c, err := vim25.NewClient(ctx, s.model.Service)
	if err != nil {
		return fmt.Errorf("vcsim: in-process client: %w", err)
	}
	finder := find.NewFinder(c, false)
	dc, err := finder.Datacenter(ctx, s.Datacenter)
	if err != nil {
		return fmt.Errorf("vcsim: %w", err)
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return fmt.Errorf("vcsim: %w", err)
	}
	host, err := finder.DefaultHostSystem(ctx)
	if err != nil {
		return fmt.Errorf("vcsim: %w", err)
	}
	pool, err := host.ResourcePool(ctx)
	if err != nil {
		return fmt.Errorf("vcsim: %w", err)
	}
	network, err := finder.Network(ctx, "VM Network")
	if err != nil {
		return fmt.Errorf("vcsim: network %q: %w", "VM Network", err)
	}
	nicBacking, err := network.EthernetCardBackingInfo(ctx)
	if err != nil {
		return fmt.Errorf("vcsim: %w", err)
	}
	dss, err := finder.DatastoreList(ctx, "*")
	if err != nil {
		return fmt.Errorf("vcsim: %w", err)
	}
	for _, ds := range dss {
		var mds mo.Datastore
		if err := ds.Properties(ctx, ds.Reference(), []string{"name", "summary"}, &mds); err != nil {
			return fmt.Errorf("vcsim: datastore: %w", err)
		}
		s.Datastores = append(s.Datastores, Datastore{Name: mds.Name, Path: mds.Summary.Url})
		s.dsDirs[mds.Name] = mds.Summary.Url
	}
	if len(s.Datastores) == 0 {
		return errors.New("vcsim: the model has no datastore")
	}
	ds := dss[0]
	dsName := s.Datastores[0].Name

	for i := 0; i < s.cfg.VMs; i++ {
		vm, err := s.createVM(ctx, i, folders.VmFolder, pool, host, ds, dsName, nicBacking)
		if err != nil {
			return err
		}
		s.VMs = append(s.VMs, vm)
	}
	for k, sh := range s.cfg.Shapes {
		vm, err := s.createVM(ctx, s.cfg.VMs+k, folders.VmFolder, pool, host, ds, dsName, nicBacking)
		if err == nil {
			vm, err = s.shapeVM(ctx, c, vm, sh)
		}
		if err != nil {
			return err
		}
		s.VMs = append(s.VMs, vm)
	}
	if err := s.fillDisks(ctx); err != nil {
		return err
	}
	if err := s.powerOnShapes(ctx, c); err != nil {
		return err
	}
	if s.cfg.PowerOn {
		for i, v := range s.VMs {
			vm := object.NewVirtualMachine(c, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref})
			if err := powerOn(ctx, vm, i); err != nil {
				return fmt.Errorf("vcsim: power on %s: %w", v.Name, err)
			}
		}
	}
	return nil
}

func (s *Sim) createVM(ctx context.Context, i int, folder *object.Folder, pool *object.ResourcePool,
	host *object.HostSystem, ds *object.Datastore, dsName string, nicBacking types.BaseVirtualDeviceBackingInfo) (VMInfo, error) {
	name := fmt.Sprintf("%s%d", s.cfg.NamePrefix, i+1)
	spec := types.VirtualMachineConfigSpec{
		Name:              name,
		GuestId:           s.cfg.GuestID,
		NumCPUs:           int32(s.cfg.CPUs),
		NumCoresPerSocket: types.NewInt32(int32(coresPerSocket(s.cfg.CPUs))),
		MemoryMB:          int64(s.cfg.MemoryMB),
		Firmware:          s.cfg.Firmware,
		Files:             &types.VirtualMachineFileInfo{VmPathName: "[" + dsName + "]"},
	}

	// Devices are appended one by one: the list assigns keys and unit numbers from what is
	// already in it, so a disk created before the previous one is appended gets its unit.
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController(s.cfg.SCSIController)
	if err != nil {
		return VMInfo{}, fmt.Errorf("vcsim: %w", err)
	}
	devices = append(devices, scsi)
	ide, err := devices.CreateIDEController()
	if err != nil {
		return VMInfo{}, fmt.Errorf("vcsim: %w", err)
	}
	devices = append(devices, ide)
	cdrom, err := devices.CreateCdrom(ide.(*types.VirtualIDEController))
	if err != nil {
		return VMInfo{}, fmt.Errorf("vcsim: %w", err)
	}
	devices = append(devices, cdrom)

	info := VMInfo{Name: name, Path: path.Join("/", s.Datacenter, "vm", name)}
	dsDir := s.dsDirs[dsName]
	for d := 0; d < s.cfg.DisksPerVM; d++ {
		// ESXi's own names: vm-1.vmdk, vm-1_1.vmdk, … with -flat.vmdk extents beside them.
		base := name
		if d > 0 {
			base = fmt.Sprintf("%s_%d", name, d)
		}
		dsPath := fmt.Sprintf("[%s] %s/%s.vmdk", dsName, name, base)
		size := s.cfg.DiskSize
		if d == 0 && s.guestSize > 0 {
			size = s.guestSize
		}
		disk := devices.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(), dsPath)
		disk.CapacityInKB = size / 1024
		disk.CapacityInBytes = size
		devices = append(devices, disk)
		info.Disks = append(info.Disks, DiskFile{
			DatastorePath: dsPath,
			Descriptor:    filepath.Join(dsDir, name, base+".vmdk"),
			FlatPath:      filepath.Join(dsDir, name, base+"-flat.vmdk"),
			Capacity:      size,
		})
	}
	nicType := "e1000"
	if s.cfg.Guest == GuestLinux {
		nicType = "vmxnet3" // what VMware's Linux templates get, and what virt-v2v replaces
	}
	nic, err := devices.CreateEthernetCard(nicType, nicBacking)
	if err != nil {
		return VMInfo{}, fmt.Errorf("vcsim: %w", err)
	}
	devices = append(devices, nic)
	if spec.DeviceChange, err = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd); err != nil {
		return VMInfo{}, fmt.Errorf("vcsim: %w", err)
	}

	task, err := folder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		return VMInfo{}, fmt.Errorf("vcsim: create %s: %w", name, err)
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return VMInfo{}, fmt.Errorf("vcsim: create %s: %w", name, err)
	}
	ref := res.Result.(types.ManagedObjectReference)
	info.Moref = ref.Value
	var mvm mo.VirtualMachine
	if err := object.NewVirtualMachine(folder.Client(), ref).Properties(ctx, ref, []string{"config.uuid"}, &mvm); err != nil {
		return VMInfo{}, fmt.Errorf("vcsim: read %s: %w", name, err)
	}
	if mvm.Config != nil {
		info.UUID = mvm.Config.Uuid
	}
	for _, d := range info.Disks {
		if _, err := os.Stat(d.FlatPath); err != nil {
			return VMInfo{}, fmt.Errorf("vcsim: the simulator did not create the extent of %s: %w", d.DatastorePath, err)
		}
		if err := fixParentCID(d.Descriptor); err != nil {
			return VMInfo{}, err
		}
	}
	return info, nil
}

// fixParentCID writes ESXi's "no parent" value into a base disk's descriptor: the govmomi
// simulator writes parentCID=00000000, which a strict reader (qemu's rule looks at the
// parent hint, ours at both) takes for a snapshot delta.
func fixParentCID(descriptor string) error {
	b, err := os.ReadFile(descriptor)
	if err != nil {
		return fmt.Errorf("vcsim: %w", err)
	}
	fixed := bytes.Replace(b, []byte("\nparentCID=00000000\n"), []byte("\nparentCID=ffffffff\n"), 1)
	if bytes.Equal(fixed, b) {
		return nil
	}
	return os.WriteFile(descriptor, fixed, 0o644)
}

// coresPerSocket picks 2 cores per socket for even counts, like the vSphere client's
// default for small VMs, so the topology is visible in VM info.
func coresPerSocket(cpus int) int {
	if cpus%2 == 0 {
		return 2
	}
	return 1
}

func powerOn(ctx context.Context, vm *object.VirtualMachine, i int) error {
	task, err := vm.PowerOn(ctx)
	if err != nil {
		return err
	}
	if err := task.Wait(ctx); err != nil {
		return err
	}
	// A running guest with VMware Tools reports an address and its OS; documentation
	// addresses (RFC 5737) so nothing ever routes to them.
	task, err = vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{ExtraConfig: []types.BaseOptionValue{
		&types.OptionValue{Key: "SET.guest.ipAddress", Value: fmt.Sprintf("192.0.2.%d", 10+i%240)},
	}})
	if err != nil {
		return err
	}
	return task.Wait(ctx)
}

// prepareExports converts the disks one after the other (one core) into the stream cache;
// an ExportVm meanwhile waits for its disk's conversion instead of starting another.
func (s *Sim) prepareExports() {
	defer s.bgWait.Done()
	for _, vm := range s.VMs {
		for _, d := range vm.Disks {
			if _, _, err := s.streams.get(s.bg, d.FlatPath); err != nil {
				if s.bg.Err() == nil {
					s.log.Error("export: prepare stream-optimized VMDK", "disk", d.DatastorePath, "err", err)
				}
				return
			}
		}
	}
}

// Model is the underlying govmomi model, for tests that need fault injection.
func (s *Sim) Model() *simulator.Model { return s.model }

// VM returns the simulated VM with the given name.
func (s *Sim) VM(name string) (VMInfo, bool) {
	for _, v := range s.VMs {
		if v.Name == name {
			return v, true
		}
	}
	return VMInfo{}, false
}

// Close stops the server, aborts background conversions and removes every file the
// simulator made (datastores and the stream cache). It is safe to call more than once.
func (s *Sim) Close() {
	s.closeOnce.Do(func() {
		// Under mu so that no background goroutine is registered after Wait starts.
		s.mu.Lock()
		s.stop()
		s.mu.Unlock()
		if s.server != nil {
			// Long-polling clients (WaitForUpdates) would otherwise hold Close open.
			s.server.CloseClientConnections()
			s.server.Close()
		}
		s.bgWait.Wait()
		s.closeChains()
		s.leases.closeAll()
		if s.model != nil {
			s.model.Remove()
		}
		if s.tmpDir != "" {
			_ = os.RemoveAll(s.tmpDir)
		}
	})
}

// SetGuestIgnoresShutdown makes the guest of the named VM ignore ShutdownGuest: the call
// succeeds but the VM stays powered on, like a hung guest OS. It lets clients exercise their
// shutdown timeout.
func (s *Sim) SetGuestIgnoresShutdown(name string, ignore bool) error {
	v, ok := s.VM(name)
	if !ok {
		return fmt.Errorf("vcsim: no VM named %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ignoreShutdown[v.Moref] = ignore
	return nil
}

// dispatch is the simulator's per-call handler hook. The simulator prefers an object from the
// caller's session registry over the one the hook returns, so the hook installs a wrapper
// there: simVM adds ExportVm (which the simulator lacks), the hung-guest knob, disks with
// real snapshots, change tracking and the guest writer, and inherits everything else;
// simSnapshot consolidates disks when a snapshot goes. The global registry keeps the
// original objects, because the simulator type-asserts them to *simulator.VirtualMachine
// everywhere.
func (s *Sim) dispatch(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	if ctx.Session == nil {
		return nil, nil
	}
	// A wrapper is replaced when it wraps another object than the registry's: sessions of
	// in-process clients outlive a simulator in the same process, and morefs repeat.
	switch m.This.Type {
	case "VirtualMachine":
		w, _ := ctx.Session.Registry.Get(m.This).(*simVM)
		vm, exists := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
		switch {
		case w != nil && !exists:
			// The VM was destroyed: drop the wrapper so the session sees ManagedObjectNotFound.
			ctx.Session.Registry.Remove(ctx, m.This)
		case exists && (w == nil || w.VirtualMachine != vm || w.sim != s):
			ctx.Session.Put(&simVM{VirtualMachine: vm, sim: s})
		}
	case "VirtualMachineSnapshot":
		w, _ := ctx.Session.Registry.Get(m.This).(*simSnapshot)
		snap, exists := ctx.Map.Get(m.This).(*simulator.VirtualMachineSnapshot)
		switch {
		case w != nil && !exists:
			ctx.Session.Registry.Remove(ctx, m.This)
		case exists && (w == nil || w.VirtualMachineSnapshot != snap || w.sim != s):
			ctx.Session.Put(&simSnapshot{VirtualMachineSnapshot: snap, sim: s})
		}
	}
	return nil, nil
}
