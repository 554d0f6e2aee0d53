package vsphere

import (
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Checks are the facts pre-flight validation looks at beyond what a migration reads: they
// come from the same property read as VMInfo, so validating costs no extra round trip.
type Checks struct {
	// HostMoref is the ESXi host the VM runs on (runtime.host), for the per-host limit.
	HostMoref string `json:"host_moref,omitempty"`
	// Encrypted: the VM itself is encrypted (config.keyId: VM encryption with a KMS).
	Encrypted bool `json:"encrypted"`
	// VTPM: the VM has a virtual TPM, whose secrets cannot leave the vCenter's key provider.
	VTPM bool `json:"vtpm"`
	// Snapshots is the number of snapshots in the VM's tree.
	Snapshots int `json:"snapshots"`
	// PCIPassthrough and USBPassthrough are the labels of devices bound to the ESXi host's
	// hardware (PCI/DirectPath/vGPU, host USB devices); SRIOV the SR-IOV NICs.
	PCIPassthrough []string `json:"pci_passthrough,omitempty"`
	USBPassthrough []string `json:"usb_passthrough,omitempty"`
	SRIOV          []string `json:"sriov,omitempty"`
	// Disks are per-disk facts, in the order of VMInfo.Disks.
	Disks []DiskCheck `json:"disks,omitempty"`
}

// DiskCheck is what validation needs to know about one disk.
type DiskCheck struct {
	Key   int32  `json:"key"`
	Label string `json:"label"`
	// Mode is the disk mode: persistent, independent_persistent, independent_nonpersistent,
	// nonpersistent, undoable, append.
	Mode string `json:"mode,omitempty"`
	// Sharing is sharingNone or sharingMultiWriter ("" when the backing does not say).
	Sharing string `json:"sharing,omitempty"`
	// Encrypted: the disk has its own encryption key (backing keyId).
	Encrypted bool `json:"encrypted"`
}

// Independent reports whether snapshots leave the disk out.
func (d DiskCheck) Independent() bool {
	return d.Mode == string(types.VirtualDiskModeIndependent_persistent) ||
		d.Mode == string(types.VirtualDiskModeIndependent_nonpersistent)
}

// Shared reports whether other VMs may write the disk at the same time.
func (d DiskCheck) Shared() bool {
	return d.Sharing == string(types.VirtualDiskSharingSharingMultiWriter)
}

func checksOf(m *mo.VirtualMachine) Checks {
	var c Checks
	if m.Runtime.Host != nil {
		c.HostMoref = m.Runtime.Host.Value
	}
	if m.Snapshot != nil {
		c.Snapshots = countSnapshots(m.Snapshot.RootSnapshotList)
	}
	if m.Config == nil {
		return c
	}
	c.Encrypted = m.Config.KeyId != nil
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	for _, d := range devices {
		label := devices.Name(d)
		if di := d.GetVirtualDevice().DeviceInfo; di != nil && di.GetDescription().Label != "" {
			label = di.GetDescription().Label
		}
		switch x := d.(type) {
		case *types.VirtualDisk:
			c.Disks = append(c.Disks, diskCheckOf(x, label))
		case *types.VirtualPCIPassthrough:
			c.PCIPassthrough = append(c.PCIPassthrough, label)
		case *types.VirtualUSB:
			// A USB device of the ESXi host (or a remote host's) is bound to that hardware.
			switch x.Backing.(type) {
			case *types.VirtualUSBUSBBackingInfo, *types.VirtualUSBRemoteHostBackingInfo:
				c.USBPassthrough = append(c.USBPassthrough, label)
			}
		case *types.VirtualSriovEthernetCard:
			c.SRIOV = append(c.SRIOV, label)
		case *types.VirtualTPM:
			c.VTPM = true
		}
	}
	return c
}

func diskCheckOf(d *types.VirtualDisk, label string) DiskCheck {
	dc := DiskCheck{Key: d.Key, Label: label}
	switch b := d.Backing.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		dc.Mode, dc.Sharing, dc.Encrypted = b.DiskMode, b.Sharing, b.KeyId != nil
	case *types.VirtualDiskSeSparseBackingInfo:
		dc.Mode, dc.Encrypted = b.DiskMode, b.KeyId != nil
	case *types.VirtualDiskSparseVer2BackingInfo:
		dc.Mode, dc.Encrypted = b.DiskMode, b.KeyId != nil
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		dc.Mode, dc.Sharing = b.DiskMode, b.Sharing
	}
	return dc
}

func countSnapshots(ts []types.VirtualMachineSnapshotTree) int {
	n := 0
	for _, t := range ts {
		n += 1 + countSnapshots(t.ChildSnapshotList)
	}
	return n
}
