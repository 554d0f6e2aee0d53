package vsphere

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// VM is a handle on one virtual machine, from FindVM.
type VM struct {
	// Path is the inventory path with a leading "/", e.g. "/DC0/vm/web-1".
	Path string
	Name string
	Ref  types.ManagedObjectReference
	obj  *object.VirtualMachine
}

// Moref is the managed object id, e.g. "vm-42" (VDDK's vm=moref=).
func (vm *VM) Moref() string { return vm.Ref.Value }

// Object is the govmomi object, for calls this package does not wrap.
func (vm *VM) Object() *object.VirtualMachine { return vm.obj }

// FindVM finds a VM by inventory path, with or without the leading "/":
// "DC0/vm/web-1", "/DC0/vm/folder/web-1". When Config.Datacenter is set, a path relative to
// its VM folder ("web-1", "folder/web-1") works too. Missing: ErrVMNotFound.
func (c *Client) FindVM(ctx context.Context, p string) (*VM, error) {
	p = strings.TrimSpace(p)
	if p == "" || p == "/" {
		return nil, fmt.Errorf("%w: empty path", ErrVMNotFound)
	}
	obj, err := c.finder.VirtualMachine(ctx, "/"+strings.TrimPrefix(p, "/"))
	if isNotFound(err) && c.dc != nil && !strings.HasPrefix(p, "/") {
		obj, err = c.finder.VirtualMachine(ctx, p)
	}
	if err != nil {
		var mf *find.MultipleFoundError
		switch {
		case isNotFound(err):
			return nil, fmt.Errorf("%w: %s on %s", ErrVMNotFound, p, c.u.Host)
		case errors.As(err, &mf):
			return nil, fmt.Errorf("vsphere: %q: %w; give one inventory path", p, ErrAmbiguous)
		}
		return nil, fmt.Errorf("vsphere: find VM %s: %w", p, err)
	}
	return &VM{Path: obj.InventoryPath, Name: obj.Name(), Ref: obj.Reference(), obj: obj}, nil
}

func isNotFound(err error) bool {
	var nf *find.NotFoundError
	return errors.As(err, &nf)
}

// VMSummary is one row of ListVMs.
type VMSummary struct {
	Name         string `json:"name"`
	Path         string `json:"path"`
	Moref        string `json:"moref"`
	PowerState   string `json:"power_state"`
	NumCPU       int32  `json:"num_cpu"`
	MemoryMB     int32  `json:"memory_mb"`
	StorageBytes int64  `json:"storage_bytes"` // committed + uncommitted
	GuestOS      string `json:"guest_os"`
	IPAddress    string `json:"ip_address,omitempty"`
}

// ListVMs lists the VMs matching an inventory path glob, e.g. "DC0/vm/*" or
// "/DC0/vm/prod/web-*" (each "*" matches within one path element). No match is an empty
// list, not an error: a schedule's pattern may match nothing today. Rows are sorted by path.
func (c *Client) ListVMs(ctx context.Context, glob string) ([]VMSummary, error) {
	glob = strings.TrimSpace(glob)
	if glob == "" {
		return nil, errors.New("vsphere: a VM path pattern is required, e.g. DC0/vm/*")
	}
	if _, err := path.Match(glob, ""); err != nil {
		return nil, fmt.Errorf("vsphere: VM path pattern %q: %w", glob, err)
	}
	objs, err := c.finder.VirtualMachineList(ctx, "/"+strings.TrimPrefix(glob, "/"))
	if isNotFound(err) {
		return []VMSummary{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("vsphere: list VMs %s: %w", glob, err)
	}
	refs := make([]types.ManagedObjectReference, len(objs))
	paths := make(map[types.ManagedObjectReference]string, len(objs))
	for i, o := range objs {
		refs[i] = o.Reference()
		paths[refs[i]] = o.InventoryPath
	}
	var mos []mo.VirtualMachine
	// One round trip for all rows: "summary" has everything a listing shows.
	if err := c.collector().Retrieve(ctx, refs, []string{"name", "summary"}, &mos); err != nil {
		return nil, fmt.Errorf("vsphere: list VMs %s: %w", glob, err)
	}
	rows := make([]VMSummary, 0, len(mos))
	for _, m := range mos {
		s := m.Summary
		row := VMSummary{
			Name:       m.Name,
			Path:       paths[m.Self],
			Moref:      m.Self.Value,
			PowerState: string(s.Runtime.PowerState),
			NumCPU:     s.Config.NumCpu,
			MemoryMB:   s.Config.MemorySizeMB,
			GuestOS:    s.Config.GuestFullName,
		}
		if s.Storage != nil {
			row.StorageBytes = s.Storage.Committed + s.Storage.Uncommitted
		}
		if s.Guest != nil {
			row.GuestOS = firstNonEmpty(s.Guest.GuestFullName, row.GuestOS)
			row.IPAddress = s.Guest.IpAddress
		}
		rows = append(rows, row)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Path < rows[j].Path })
	return rows, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// VMInfo is what a migration needs to know about a VM.
type VMInfo struct {
	Name           string `json:"name"`
	Path           string `json:"path"`
	UUID           string `json:"uuid"`          // BIOS UUID (config.uuid), what the guest sees
	InstanceUUID   string `json:"instance_uuid"` // vCenter's unique id
	Moref          string `json:"moref"`
	PowerState     string `json:"power_state"` // poweredOn | poweredOff | suspended
	NumCPU         int32  `json:"num_cpu"`
	CoresPerSocket int32  `json:"cores_per_socket"`
	MemoryMB       int32  `json:"memory_mb"`
	Firmware       string `json:"firmware"` // bios | efi
	SecureBoot     bool   `json:"secure_boot,omitempty"`
	GuestOS        string `json:"guest_os"` // full name, e.g. "Ubuntu Linux (64-bit)"
	GuestID        string `json:"guest_id"` // e.g. "ubuntu64Guest"
	IPAddress      string `json:"ip_address,omitempty"`
	Disks          []Disk `json:"disks"`
	NICs           []NIC  `json:"nics"`
	HasSnapshots   bool   `json:"has_snapshots"`
	// ChangeTracking: changed-block tracking is on (config.changeTrackingEnabled).
	ChangeTracking bool `json:"change_tracking"`
	// Checks are what pre-flight validation looks at (checks.go).
	Checks     Checks `json:"checks"`
	Host       string `json:"host"`
	Datacenter string `json:"datacenter"`
	// DatacenterPath is the datacenter's inventory path without the leading "/"
	// ("DC0", "Folder/DC1"): the dcPath of datastore URLs.
	DatacenterPath string `json:"datacenter_path"`
}

// Disk is one virtual disk.
type Disk struct {
	Key           int32  `json:"key"`
	Label         string `json:"label"`
	CapacityBytes int64  `json:"capacity_bytes"`
	// File is the backing file as vSphere shows it: "[LocalDS_0] vm/disk1.vmdk".
	File string `json:"file"`
	// Datastore and DatastorePath split File: "LocalDS_0" and "vm/disk1.vmdk".
	Datastore     string `json:"datastore"`
	DatastorePath string `json:"datastore_path"`
	// Controller is the bus: "scsi", "ide", "sata" or "nvme"; ControllerModel is the
	// adapter ("pvscsi", "lsilogic", "lsilogic-sas", "buslogic", "ahci", "nvme", "ide").
	Controller      string `json:"controller"`
	ControllerModel string `json:"controller_model"`
	BusNumber       int32  `json:"bus_number"`
	UnitNumber      int32  `json:"unit_number"`
	Thin            bool   `json:"thin"`
	// Backing is "flat" (readable as raw extents), "sesparse", "sparse", "rdm" or "other".
	Backing string `json:"backing"`
	// HasParent is true for a delta disk (the VM has snapshots): its extents alone are not
	// the disk's content.
	HasParent bool `json:"has_parent"`
}

// NIC is one network adapter.
type NIC struct {
	Key         int32  `json:"key"`
	Label       string `json:"label"`
	Network     string `json:"network"`
	MAC         string `json:"mac"`
	AdapterType string `json:"adapter_type"` // e1000, e1000e, vmxnet3, vmxnet2, vmxnet, pcnet32, sriov
	Connected   bool   `json:"connected"`
}

// VMInfo reads the VM's hardware and placement in a few round trips.
func (c *Client) VMInfo(ctx context.Context, vm *VM) (*VMInfo, error) {
	infos, err := c.VMInfos(ctx, []*VM{vm})
	if err != nil {
		return nil, err
	}
	return infos[0], nil
}

// vmInfoOf builds a VM's VMInfo from its properties (vmProperties); names caches host
// names and datacenters across the VMs of one VMInfos call.
func (c *Client) vmInfoOf(ctx context.Context, vm *VM, m mo.VirtualMachine, names *infoNames) (*VMInfo, error) {
	if m.Config == nil {
		return nil, fmt.Errorf("vsphere: %s has no configuration (inaccessible or orphaned VM)", vm.Path)
	}
	info := &VMInfo{
		Name:           m.Name,
		Path:           vm.Path,
		UUID:           m.Config.Uuid,
		InstanceUUID:   m.Config.InstanceUuid,
		Moref:          vm.Ref.Value,
		PowerState:     string(m.Runtime.PowerState),
		NumCPU:         m.Config.Hardware.NumCPU,
		CoresPerSocket: 1,
		MemoryMB:       m.Config.Hardware.MemoryMB,
		Firmware:       firstNonEmpty(m.Config.Firmware, "bios"),
		GuestOS:        m.Config.GuestFullName,
		GuestID:        m.Config.GuestId,
		HasSnapshots:   m.Snapshot != nil && len(m.Snapshot.RootSnapshotList) > 0,
		ChangeTracking: m.Config.ChangeTrackingEnabled != nil && *m.Config.ChangeTrackingEnabled,
	}
	if n := m.Config.Hardware.NumCoresPerSocket; n != nil && *n > 0 {
		info.CoresPerSocket = *n
	}
	if bo := m.Config.BootOptions; bo != nil && bo.EfiSecureBootEnabled != nil {
		info.SecureBoot = *bo.EfiSecureBootEnabled
	}
	if m.Guest != nil {
		info.GuestOS = firstNonEmpty(m.Guest.GuestFullName, info.GuestOS)
		info.IPAddress = m.Guest.IpAddress
	}

	info.Checks = checksOf(&m)
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	for _, d := range devices {
		switch x := d.(type) {
		case *types.VirtualDisk:
			info.Disks = append(info.Disks, diskOf(devices, x))
		case types.BaseVirtualEthernetCard:
			nic, err := c.nicOf(ctx, devices, x)
			if err != nil {
				return nil, err
			}
			info.NICs = append(info.NICs, nic)
		}
	}

	if m.Runtime.Host != nil {
		info.Host = names.hosts[*m.Runtime.Host]
	}
	dc, err := names.datacenter(ctx, c, vm.Ref, m.Parent)
	if err != nil {
		return nil, err
	}
	info.Datacenter, info.DatacenterPath = dc[0], dc[1]
	return info, nil
}

func diskOf(devices object.VirtualDeviceList, d *types.VirtualDisk) Disk {
	disk := Disk{
		Key:           d.Key,
		CapacityBytes: d.CapacityInBytes,
		Backing:       "other",
	}
	if disk.CapacityBytes == 0 {
		disk.CapacityBytes = d.CapacityInKB * 1024
	}
	if d.DeviceInfo != nil {
		disk.Label = d.DeviceInfo.GetDescription().Label
	}
	if d.UnitNumber != nil {
		disk.UnitNumber = *d.UnitNumber
	}
	if fb, ok := d.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
		disk.File = fb.GetVirtualDeviceFileBackingInfo().FileName
		var dp object.DatastorePath
		if dp.FromString(disk.File) {
			disk.Datastore, disk.DatastorePath = dp.Datastore, dp.Path
		}
	}
	switch b := d.Backing.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		disk.Backing = "flat"
		disk.Thin = b.ThinProvisioned != nil && *b.ThinProvisioned
		disk.HasParent = b.Parent != nil
	case *types.VirtualDiskSeSparseBackingInfo:
		disk.Backing = "sesparse"
		disk.Thin = true
		disk.HasParent = b.Parent != nil
	case *types.VirtualDiskSparseVer2BackingInfo:
		disk.Backing = "sparse"
		disk.Thin = true
		disk.HasParent = b.Parent != nil
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		disk.Backing = "rdm"
		disk.HasParent = b.Parent != nil
	}
	if ctrl, ok := devices.FindByKey(d.ControllerKey).(types.BaseVirtualController); ok {
		disk.Controller, disk.ControllerModel = controllerKind(ctrl)
		disk.BusNumber = ctrl.GetVirtualController().BusNumber
	}
	return disk
}

// controllerKind names the bus and the adapter model of a disk controller.
func controllerKind(c types.BaseVirtualController) (bus, model string) {
	switch c.(type) {
	case *types.ParaVirtualSCSIController:
		return "scsi", "pvscsi"
	case *types.VirtualLsiLogicController:
		return "scsi", "lsilogic"
	case *types.VirtualLsiLogicSASController:
		return "scsi", "lsilogic-sas"
	case *types.VirtualBusLogicController:
		return "scsi", "buslogic"
	case types.BaseVirtualSCSIController:
		return "scsi", "scsi"
	case *types.VirtualAHCIController, types.BaseVirtualSATAController:
		return "sata", "ahci"
	case *types.VirtualNVMEController:
		return "nvme", "nvme"
	case *types.VirtualIDEController:
		return "ide", "ide"
	}
	return "other", "other"
}

func (c *Client) nicOf(ctx context.Context, devices object.VirtualDeviceList, x types.BaseVirtualEthernetCard) (NIC, error) {
	card := x.GetVirtualEthernetCard()
	nic := NIC{Key: card.Key, MAC: card.MacAddress, AdapterType: adapterType(x)}
	if card.DeviceInfo != nil {
		nic.Label = card.DeviceInfo.GetDescription().Label
	}
	if card.Connectable != nil {
		nic.Connected = card.Connectable.Connected || card.Connectable.StartConnected
	}
	switch b := card.Backing.(type) {
	case *types.VirtualEthernetCardNetworkBackingInfo:
		nic.Network = b.DeviceName
	case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
		// The backing names the portgroup by key; operators map networks by name.
		nic.Network = b.Port.PortgroupKey
		var pg mo.DistributedVirtualPortgroup
		ref := types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}
		if err := c.collector().RetrieveOne(ctx, ref, []string{"name"}, &pg); err == nil {
			nic.Network = pg.Name
		}
	case *types.VirtualEthernetCardOpaqueNetworkBackingInfo:
		nic.Network = b.OpaqueNetworkId
	}
	return nic, nil
}

func adapterType(x types.BaseVirtualEthernetCard) string {
	switch x.(type) {
	case *types.VirtualE1000:
		return "e1000"
	case *types.VirtualE1000e:
		return "e1000e"
	case *types.VirtualVmxnet3, *types.VirtualVmxnet3Vrdma:
		return "vmxnet3"
	case *types.VirtualVmxnet2:
		return "vmxnet2"
	case *types.VirtualVmxnet:
		return "vmxnet"
	case *types.VirtualPCNet32:
		return "pcnet32"
	case *types.VirtualSriovEthernetCard:
		return "sriov"
	}
	return "other"
}

// datacenterOf returns the name and inventory path of the datacenter holding obj.
func (c *Client) datacenterOf(ctx context.Context, obj types.ManagedObjectReference) (string, string, error) {
	ancestors, err := mo.Ancestors(ctx, c.vim, c.vim.ServiceContent.PropertyCollector, obj)
	if err != nil {
		return "", "", fmt.Errorf("vsphere: ancestors of %s: %w", obj.Value, err)
	}
	var names []string
	for _, a := range ancestors {
		if a.Parent == nil {
			continue // the root folder is not part of inventory paths
		}
		names = append(names, a.Name)
		if a.Self.Type == "Datacenter" {
			return a.Name, strings.Join(names, "/"), nil
		}
	}
	return "", "", fmt.Errorf("%w: no datacenter above %s", ErrNotFound, obj.Value)
}
