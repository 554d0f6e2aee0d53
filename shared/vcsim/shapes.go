package vcsim

import (
	"context"
	"fmt"
	"path"
	"regexp"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// Shape is one extra VM with the features that pre-flight validation looks at: raw device
// mappings, shared or independent disks, snapshots, passthrough devices, a vTPM, encryption,
// its own network. The demo and the tests make VMs that trigger each rule (and VMs that do
// not) with it; hypersdk-sim reads a list of them from --shapes FILE (YAML, "vms:").
//
// A shape starts as one of the simulator's ordinary VMs (Config's disks, size, fill) and
// then gets what the shape asks for. Devices the simulator cannot create through
// ReconfigVM (RDM and encrypted backings, passthrough, a TPM) are set on its model
// directly: vSphere reports them as it would for a real VM, nothing reads or writes them.
type Shape struct {
	// Name is the VM's name under /DC0/vm (required, unique).
	Name string `yaml:"name"`
	// PowerOn leaves it running; CPUs, MemoryMB, Firmware and GuestID override Config's.
	PowerOn  bool   `yaml:"power_on"`
	CPUs     int    `yaml:"cpus"`
	MemoryMB int    `yaml:"memory_mb"`
	Firmware string `yaml:"firmware"`
	GuestID  string `yaml:"guest_id"`
	// SecureBoot turns on UEFI secure boot (needs firmware efi).
	SecureBoot bool `yaml:"secure_boot"`
	// ChangeTracking turns on changed-block tracking.
	ChangeTracking bool `yaml:"change_tracking"`
	// The first disk becomes a raw device mapping (RDM), a multi-writer disk, an
	// independent one, or gets its own encryption key.
	RDM             bool `yaml:"rdm"`
	SharedDisk      bool `yaml:"shared_disk"`
	IndependentDisk bool `yaml:"independent_disk"`
	EncryptedDisk   bool `yaml:"encrypted_disk"`
	// ZeroSizeDisk reports the last disk with a capacity of 0.
	ZeroSizeDisk bool `yaml:"zero_size_disk"`
	// NVMe puts the disks on an NVMe controller.
	NVMe bool `yaml:"nvme"`
	// Encrypted encrypts the VM (VM encryption through a key provider).
	Encrypted bool `yaml:"encrypted"`
	// Snapshots is how many snapshots the VM has.
	Snapshots int `yaml:"snapshots"`
	// PCIPassthrough and USBPassthrough add a host-bound device; VTPM a virtual TPM.
	PCIPassthrough bool `yaml:"pci_passthrough"`
	USBPassthrough bool `yaml:"usb_passthrough"`
	VTPM           bool `yaml:"vtpm"`
	// Network names the VMware network of the VM's NIC (default "VM Network").
	Network string `yaml:"network"`
}

var shapeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`)

func (sh Shape) validate() error {
	switch {
	case !shapeName.MatchString(sh.Name):
		return configErr("shape name %q: 1-80 letters, digits, '.', '_' or '-'", sh.Name)
	case sh.CPUs < 0 || sh.CPUs > 768:
		return configErr("shape %s: cpus must be between 1 and 768", sh.Name)
	case sh.MemoryMB < 0 || (sh.MemoryMB > 0 && sh.MemoryMB < 4):
		return configErr("shape %s: memory must be at least 4 MB", sh.Name)
	case sh.Firmware != "" && sh.Firmware != "bios" && sh.Firmware != "efi":
		return configErr("shape %s: firmware %q is not bios or efi", sh.Name, sh.Firmware)
	case sh.SecureBoot && sh.Firmware != "efi":
		return configErr("shape %s: secure_boot needs firmware efi", sh.Name)
	case sh.Snapshots < 0 || sh.Snapshots > 32:
		return configErr("shape %s: snapshots must be between 0 and 32", sh.Name)
	}
	return nil
}

func validateShapes(shapes []Shape, disksPerVM int) error {
	seen := map[string]bool{}
	for _, sh := range shapes {
		if err := sh.validate(); err != nil {
			return err
		}
		if seen[sh.Name] {
			return configErr("shape name %q appears twice", sh.Name)
		}
		seen[sh.Name] = true
		if disksPerVM == 0 && (sh.RDM || sh.SharedDisk || sh.IndependentDisk || sh.EncryptedDisk || sh.ZeroSizeDisk || sh.NVMe) {
			return configErr("shape %s changes a disk, but VMs have no disks", sh.Name)
		}
	}
	return nil
}

// shapeVM turns the ordinary VM v (just created) into the shape.
func (s *Sim) shapeVM(ctx context.Context, c *vim25.Client, v VMInfo, sh Shape) (VMInfo, error) {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}
	vm := object.NewVirtualMachine(c, ref)
	wait := func(t *object.Task, err error) error {
		if err != nil {
			return err
		}
		return t.Wait(ctx)
	}
	if err := wait(vm.Rename(ctx, sh.Name)); err != nil {
		return v, fmt.Errorf("vcsim: shape %s: rename: %w", sh.Name, err)
	}
	v.Name, v.Path = sh.Name, path.Join("/", s.Datacenter, "vm", sh.Name)

	spec := types.VirtualMachineConfigSpec{GuestId: sh.GuestID, Firmware: sh.Firmware}
	if sh.CPUs > 0 {
		spec.NumCPUs = int32(sh.CPUs)
		spec.NumCoresPerSocket = types.NewInt32(int32(coresPerSocket(sh.CPUs)))
	}
	if sh.MemoryMB > 0 {
		spec.MemoryMB = int64(sh.MemoryMB)
	}
	if sh.SecureBoot {
		spec.BootOptions = &types.VirtualMachineBootOptions{EfiSecureBootEnabled: types.NewBool(true)}
	}
	if sh.ChangeTracking {
		spec.ChangeTrackingEnabled = types.NewBool(true)
	}
	if err := wait(vm.Reconfigure(ctx, spec)); err != nil {
		return v, fmt.Errorf("vcsim: shape %s: reconfigure: %w", sh.Name, err)
	}

	vmo, ok := s.model.Map().Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return v, fmt.Errorf("vcsim: shape %s: VM %s is not in the model", sh.Name, v.Moref)
	}
	s.model.Map().WithLock(simulator.NewContext(), ref, func() { shapeDevices(vmo, sh) })

	for i := 0; i < sh.Snapshots; i++ {
		if err := wait(vm.CreateSnapshot(ctx, fmt.Sprintf("snap-%d", i+1), "made by hypersdk-sim", false, false)); err != nil {
			return v, fmt.Errorf("vcsim: shape %s: snapshot: %w", sh.Name, err)
		}
	}
	return v, nil
}

// testKey is the key a shape's encrypted VM or disk reports: vSphere shows the key's id
// and its provider, never key material.
func testKey(id string) *types.CryptoKeyId {
	return &types.CryptoKeyId{KeyId: id, ProviderId: &types.KeyProviderId{Id: "hypersdk-sim-kms"}}
}

// shapeDevices changes the model's device list in place (under the VM's lock).
func shapeDevices(vm *simulator.VirtualMachine, sh Shape) {
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) > 0 {
		first := disks[0].(*types.VirtualDisk)
		if flat, ok := first.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			if sh.SharedDisk {
				// Multi-writer needs an eager-zeroed thick disk on vSphere.
				flat.Sharing = string(types.VirtualDiskSharingSharingMultiWriter)
				flat.ThinProvisioned = types.NewBool(false)
				flat.EagerlyScrub = types.NewBool(true)
			}
			if sh.IndependentDisk {
				flat.DiskMode = string(types.VirtualDiskModeIndependent_persistent)
			}
			if sh.EncryptedDisk {
				flat.KeyId = testKey("disk-key-1")
			}
			if sh.RDM {
				first.Backing = &types.VirtualDiskRawDiskMappingVer1BackingInfo{
					VirtualDeviceFileBackingInfo: flat.VirtualDeviceFileBackingInfo,
					LunUuid:                      "0200000000600508b1001c5a4b2f1d8e7c3a9b0001",
					DeviceName:                   "/vmfs/devices/disks/naa.600508b1001c5a4b2f1d8e7c3a9b0001",
					CompatibilityMode:            string(types.VirtualDiskCompatibilityModePhysicalMode),
					DiskMode:                     string(types.VirtualDiskModeIndependent_persistent),
				}
			}
		}
		if sh.ZeroSizeDisk {
			last := disks[len(disks)-1].(*types.VirtualDisk)
			last.CapacityInBytes, last.CapacityInKB = 0, 0
		}
	}
	key := int32(19000) // above the keys the simulator hands out for a handful of devices
	next := func() int32 { key++; return key }
	label := func(l, summary string) *types.Description { return &types.Description{Label: l, Summary: summary} }
	if sh.NVMe {
		nvme := &types.VirtualNVMEController{VirtualController: types.VirtualController{
			VirtualDevice: types.VirtualDevice{Key: next(), DeviceInfo: label("NVME controller 0", "NVME controller 0")}}}
		for _, d := range disks {
			d.GetVirtualDevice().ControllerKey = nvme.Key
		}
		vm.Config.Hardware.Device = append(vm.Config.Hardware.Device, nvme)
	}
	if sh.PCIPassthrough {
		vm.Config.Hardware.Device = append(vm.Config.Hardware.Device, &types.VirtualPCIPassthrough{VirtualDevice: types.VirtualDevice{
			Key: next(), DeviceInfo: label("PCI device 0", "NVIDIA Tesla T4"),
			Backing: &types.VirtualPCIPassthroughDeviceBackingInfo{Id: "0000:3b:00.0", DeviceId: "1eb8", SystemId: "5f1b1a2e-sim", VendorId: 0x10de},
		}})
	}
	if sh.USBPassthrough {
		vm.Config.Hardware.Device = append(vm.Config.Hardware.Device, &types.VirtualUSB{VirtualDevice: types.VirtualDevice{
			Key: next(), DeviceInfo: label("USB 1", "license dongle"),
			Backing: &types.VirtualUSBUSBBackingInfo{VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: "path:1/0/2 version:2"}},
		}, Connected: true})
	}
	if sh.VTPM {
		vm.Config.Hardware.Device = append(vm.Config.Hardware.Device, &types.VirtualTPM{VirtualDevice: types.VirtualDevice{
			Key: next(), DeviceInfo: label("Virtual TPM", "Virtual TPM")}})
	}
	if sh.Encrypted {
		vm.Config.KeyId = testKey("vm-key-1")
	}
	if sh.Network != "" {
		for _, d := range devices.SelectByType((*types.VirtualEthernetCard)(nil)) {
			// A new backing: the simulator may share one backing value between VMs.
			d.GetVirtualDevice().Backing = &types.VirtualEthernetCardNetworkBackingInfo{
				VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: sh.Network}}
		}
	}
}

// powerOnShapes starts the shapes that ask for it (after their disks are written, as
// Config.PowerOn does).
func (s *Sim) powerOnShapes(ctx context.Context, c *vim25.Client) error {
	for k, sh := range s.cfg.Shapes {
		i := s.cfg.VMs + k
		if !sh.PowerOn || s.cfg.PowerOn || i >= len(s.VMs) {
			continue // with Config.PowerOn, build starts every VM
		}
		vm := object.NewVirtualMachine(c, types.ManagedObjectReference{Type: "VirtualMachine", Value: s.VMs[i].Moref})
		if err := powerOn(ctx, vm, i); err != nil {
			return fmt.Errorf("vcsim: power on %s: %w", sh.Name, err)
		}
	}
	return nil
}

// ShapesFile is hypersdk-sim's --shapes YAML: "vms:" and a list of shapes.
type ShapesFile struct {
	VMs []Shape `yaml:"vms"`
}
