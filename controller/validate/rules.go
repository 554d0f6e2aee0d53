package validate

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// The rules. Each is a pure function of what the vCenter said about the VM (and, for the
// fleet rules in fleet.go, of what one agent said about its host) and the job's options:
// no I/O, so each is tested directly against the VMInfo of a simulator VM that triggers it
// and of one that does not. The README lists every rule with its category and fix.

// Rule ids: stable, for scripts and the README.
const (
	RuleVMNotFound     = "vm.not_found"
	RuleVMAmbiguous    = "vm.ambiguous"
	RuleRDM            = "disk.rdm"
	RuleSharedDisk     = "disk.shared"
	RuleIndependent    = "disk.independent"
	RuleSnapshots      = "vm.snapshots"
	RuleEncryptedDisk  = "disk.encrypted"
	RuleEncryptedVM    = "vm.encrypted"
	RulePCIPassthrough = "device.pci_passthrough"
	RuleUSBPassthrough = "device.usb_passthrough"
	RuleSRIOV          = "device.sriov"
	RuleVTPM           = "vm.vtpm"
	RulePoweredOn      = "vm.powered_on"
	RuleNVMe           = "disk.nvme"
	RuleZeroSize       = "disk.zero_size"
	RuleEFINVRAM       = "firmware.efi_nvram"
	RuleHTTPSFlat      = "method.https_flat"
)

// vmRule checks one fact of the VM.
type vmRule func(vm *vsphere.VMInfo, def *proto.JobDefinition) []proto.Concern

// vmRules run in this order; their concerns keep it.
var vmRules = []vmRule{
	ruleRDM, ruleSharedDisk, ruleIndependentDisk, ruleSnapshots, ruleEncryption, rulePassthrough,
	ruleVTPM, rulePoweredOn, ruleNVMe, ruleZeroSize, ruleEFINVRAM, ruleHTTPSFlat,
}

// CheckVM runs every rule that needs only the vCenter's facts.
func CheckVM(vm *vsphere.VMInfo, def *proto.JobDefinition) []proto.Concern {
	var out []proto.Concern
	for _, r := range vmRules {
		out = append(out, r(vm, def)...)
	}
	return out
}

func critical(id, msg, fix string) proto.Concern {
	return proto.Concern{ID: id, Category: proto.ConcernCritical, Message: msg, Fix: fix}
}

func warning(id, msg, fix string) proto.Concern {
	return proto.Concern{ID: id, Category: proto.ConcernWarning, Message: msg, Fix: fix}
}

func info(id, msg, fix string) proto.Concern {
	return proto.Concern{ID: id, Category: proto.ConcernInfo, Message: msg, Fix: fix}
}

// diskLabels names the disks for which pick is true: "Hard disk 1, Hard disk 3".
func diskLabels(vm *vsphere.VMInfo, pick func(vsphere.DiskCheck) bool) string {
	var l []string
	for _, d := range vm.Checks.Disks {
		if pick(d) {
			l = append(l, d.Label)
		}
	}
	return strings.Join(l, ", ")
}

// disksWhere names the disks of vm.Disks for which pick is true ("" for none).
func disksWhere(vm *vsphere.VMInfo, pick func(vsphere.Disk) bool) string {
	var l []string
	for _, d := range vm.Disks {
		if pick(d) {
			l = append(l, d.Label)
		}
	}
	return strings.Join(l, ", ")
}

func ruleRDM(vm *vsphere.VMInfo, _ *proto.JobDefinition) []proto.Concern {
	l := disksWhere(vm, func(d vsphere.Disk) bool { return d.Backing == "rdm" })
	if l == "" {
		return nil
	}
	return []proto.Concern{critical(RuleRDM,
		fmt.Sprintf("%s has raw device mapping (RDM) disks (%s): their data is on a SAN LUN, which neither ExportVm nor the datastore can read", vm.Name, l),
		"convert the RDM to a virtual disk (Storage vMotion with a thick or thin format, or clone), or detach it and present the LUN to the KVM host")}
}

func ruleSharedDisk(vm *vsphere.VMInfo, _ *proto.JobDefinition) []proto.Concern {
	if l := diskLabels(vm, vsphere.DiskCheck.Shared); l != "" {
		return []proto.Concern{critical(RuleSharedDisk,
			fmt.Sprintf("%s has shared (multi-writer) disks (%s): other VMs may write them during the copy, and the copy would not be shared on KVM", vm.Name, l),
			"migrate the cluster's disks separately (stop every VM that shares them), or remove the multi-writer flag")}
	}
	return nil
}

func ruleIndependentDisk(vm *vsphere.VMInfo, def *proto.JobDefinition) []proto.Concern {
	l := diskLabels(vm, vsphere.DiskCheck.Independent)
	if l == "" {
		return nil
	}
	msg := fmt.Sprintf("%s has independent disks (%s): snapshots do not capture them", vm.Name, l)
	fix := "change the disks to dependent (persistent) mode in vSphere while the VM is off"
	if isWarm(def) {
		return []proto.Concern{critical(RuleIndependent, msg+"; a warm migration copies from snapshots and would miss them", fix)}
	}
	return []proto.Concern{warning(RuleIndependent, msg+"; a vddk copy (which reads a snapshot) copies them live, so power the VM off for a consistent copy", fix)}
}

func ruleSnapshots(vm *vsphere.VMInfo, def *proto.JobDefinition) []proto.Concern {
	n := vm.Checks.Snapshots
	if n == 0 && !vm.HasSnapshots {
		return nil
	}
	if n == 0 {
		n = 1
	}
	fix := "delete or consolidate the snapshots in vSphere (Snapshots > Delete All)"
	if isWarm(def) && !vm.ChangeTracking {
		return []proto.Concern{critical(RuleSnapshots,
			fmt.Sprintf("%s has %d snapshot(s) and changed-block tracking is off: a warm migration needs CBT, which vSphere refuses to enable on a VM with snapshots", vm.Name, n), fix)}
	}
	return []proto.Concern{warning(RuleSnapshots,
		fmt.Sprintf("%s has %d snapshot(s): the copy is the VM's current state (the snapshot chain is flattened), the snapshots themselves are not migrated", vm.Name, n), fix)}
}

func ruleEncryption(vm *vsphere.VMInfo, _ *proto.JobDefinition) []proto.Concern {
	var out []proto.Concern
	fix := "decrypt the VM in vSphere (VM Policies > Edit VM Storage Policies: a policy without encryption) before migrating"
	if vm.Checks.Encrypted {
		out = append(out, critical(RuleEncryptedVM,
			fmt.Sprintf("%s is encrypted (VM encryption): its disks can only be read with the key provider's keys, which the vCenter does not hand out", vm.Name), fix))
	}
	if l := diskLabels(vm, func(d vsphere.DiskCheck) bool { return d.Encrypted }); l != "" {
		out = append(out, critical(RuleEncryptedDisk,
			fmt.Sprintf("%s has encrypted disks (%s): they cannot be read as plain data", vm.Name, l), fix))
	}
	return out
}

func rulePassthrough(vm *vsphere.VMInfo, _ *proto.JobDefinition) []proto.Concern {
	var out []proto.Concern
	c := vm.Checks
	if len(c.PCIPassthrough) > 0 {
		out = append(out, critical(RulePCIPassthrough,
			fmt.Sprintf("%s has PCI passthrough devices (%s), bound to its ESXi host's hardware", vm.Name, strings.Join(c.PCIPassthrough, ", ")),
			"remove the passthrough devices from the VM (and plan the device's hostdev on the KVM host by hand)"))
	}
	if len(c.USBPassthrough) > 0 {
		out = append(out, warning(RuleUSBPassthrough,
			fmt.Sprintf("%s has USB devices of its ESXi host (%s): the domain will not have them", vm.Name, strings.Join(c.USBPassthrough, ", ")),
			"attach the device to the KVM host and add a USB hostdev to the domain after the migration"))
	}
	if len(c.SRIOV) > 0 {
		out = append(out, warning(RuleSRIOV,
			fmt.Sprintf("%s has SR-IOV NICs (%s): they become ordinary virtual NICs on the mapped network", vm.Name, strings.Join(c.SRIOV, ", ")),
			"map the network to a bridge of the SR-IOV port, or add the VF as a hostdev after the migration"))
	}
	return out
}

func ruleVTPM(vm *vsphere.VMInfo, _ *proto.JobDefinition) []proto.Concern {
	if !vm.Checks.VTPM {
		return nil
	}
	return []proto.Concern{warning(RuleVTPM,
		fmt.Sprintf("%s has a virtual TPM: its secrets (BitLocker or LUKS keys sealed to it) stay with the vCenter's key provider, the domain gets none", vm.Name),
		"have the disk encryption recovery keys at hand (or suspend BitLocker) before migrating")}
}

func rulePoweredOn(vm *vsphere.VMInfo, def *proto.JobDefinition) []proto.Concern {
	if vm.PowerState == "poweredOff" || vm.PowerState == "" || isWarm(def) {
		return nil
	}
	o := def.Options
	if o.Shutdown || o.PowerOff {
		return nil
	}
	return []proto.Concern{critical(RulePoweredOn,
		fmt.Sprintf("%s is %s and the job neither shuts it down nor powers it off: a cold migration copies a VM that is off", vm.Name, vm.PowerState),
		"set options.shutdown: true (graceful, with shutdown_timeout_seconds), options.power_off: true, or both; or power the VM off yourself")}
}

func ruleNVMe(vm *vsphere.VMInfo, _ *proto.JobDefinition) []proto.Concern {
	l := disksWhere(vm, func(d vsphere.Disk) bool { return d.Controller == "nvme" })
	if l == "" {
		return nil
	}
	return []proto.Concern{warning(RuleNVMe,
		fmt.Sprintf("%s has disks on an NVMe controller (%s): on KVM they are virtio (after guest conversion) or sata disks, and a guest whose boot configuration names nvme devices needs conversion to boot", vm.Name, l),
		"keep guest conversion on (virt-v2v fixes fstab and the boot loader), or make sure the guest mounts by UUID/label")}
}

func ruleZeroSize(vm *vsphere.VMInfo, _ *proto.JobDefinition) []proto.Concern {
	l := disksWhere(vm, func(d vsphere.Disk) bool { return d.CapacityBytes == 0 })
	if l == "" {
		return nil
	}
	return []proto.Concern{warning(RuleZeroSize,
		fmt.Sprintf("%s reports disks of size 0 (%s): a disk being created or resized, or a broken descriptor; the copy of such a disk is empty", vm.Name, l),
		"check the disk in vSphere (its size and its descriptor file) before migrating")}
}

func ruleEFINVRAM(vm *vsphere.VMInfo, _ *proto.JobDefinition) []proto.Concern {
	if vm.Firmware != "efi" {
		return nil
	}
	return []proto.Concern{info(RuleEFINVRAM,
		fmt.Sprintf("%s boots with UEFI: its NVRAM (boot entries, variables) is not migrated; the domain starts from a fresh OVMF variable store and boots the fallback loader \\EFI\\BOOT\\BOOTX64.EFI", vm.Name),
		"keep guest conversion on (virt-v2v installs the fallback loader), or check the guest has one")}
}

func ruleHTTPSFlat(vm *vsphere.VMInfo, def *proto.JobDefinition) []proto.Concern {
	if def.Options.ConversionMethod != "https" {
		return nil
	}
	// With snapshots, every disk the VM writes is a delta on vSphere (whatever the backing
	// read says) and the flat extent is not its content.
	l := disksWhere(vm, func(d vsphere.Disk) bool { return d.Backing != "flat" || d.HasParent || vm.Checks.Snapshots > 0 })
	if l == "" {
		return nil
	}
	return []proto.Concern{critical(RuleHTTPSFlat,
		fmt.Sprintf("conversion_method https reads flat disks only, and %s has disks that are not (%s: sparse, RDM or snapshot deltas)", vm.Name, l),
		"use conversion_method nfc (or auto), or consolidate the snapshots")}
}

// hasAny reports whether list holds name.
func hasAny(list []string, name string) bool { return slices.Contains(list, name) }
