package validate

import (
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/proto"
)

// TestVMRules: every rule that needs only the vCenter's facts, against a simulator VM
// that triggers it and the plain VM, which does not.
func TestVMRules(t *testing.T) {
	s := startShapes(t, 0)
	infos := vmInfos(t, s)
	if len(infos["plain"].Checks.Disks) == 0 {
		t.Fatalf("plain VM has no disk checks: %+v", infos["plain"].Checks)
	}
	https := func(d *proto.JobDefinition) { d.Options.ConversionMethod = "https" }
	shutdown := func(d *proto.JobDefinition) { d.Options.Shutdown = true }
	warm := func(d *proto.JobDefinition) { d.Options.Warm = true }
	for _, tc := range []struct {
		rule, vm string
		want     proto.ConcernCategory
		opts     func(*proto.JobDefinition) // options that trigger it (applied to both VMs)
	}{
		{RuleRDM, "rdm", proto.ConcernCritical, nil},
		{RuleSharedDisk, "shared", proto.ConcernCritical, nil},
		{RuleIndependent, "independent", proto.ConcernWarning, nil},
		{RuleSnapshots, "snapshots", proto.ConcernWarning, nil},
		// Warm copies from snapshots with CBT: independent disks are missed, and vSphere
		// refuses to turn CBT on while snapshots exist (already on: the rounds work).
		{RuleIndependent, "independent", proto.ConcernCritical, warm},
		{RuleSnapshots, "snapshots", proto.ConcernCritical, warm},
		{RuleSnapshots, "snapshots-cbt", proto.ConcernWarning, warm},
		{RuleSnapshots, "snapshots-cbt", proto.ConcernWarning, nil},
		{RuleEncryptedVM, "encrypted-vm", proto.ConcernCritical, nil},
		{RuleEncryptedDisk, "encrypted-disk", proto.ConcernCritical, nil},
		{RulePCIPassthrough, "pci", proto.ConcernCritical, nil},
		{RuleUSBPassthrough, "usb", proto.ConcernWarning, nil},
		{RuleVTPM, "vtpm", proto.ConcernWarning, nil},
		{RulePoweredOn, "running", proto.ConcernCritical, nil},
		{RuleNVMe, "nvme", proto.ConcernWarning, nil},
		{RuleZeroSize, "zero", proto.ConcernWarning, nil},
		{RuleEFINVRAM, "efi", proto.ConcernInfo, nil},
		{RuleHTTPSFlat, "snapshots", proto.ConcernCritical, https},
		{RuleHTTPSFlat, "rdm", proto.ConcernCritical, https},
	} {
		t.Run(tc.rule+"/"+tc.vm, func(t *testing.T) {
			def := simJob(s, tc.vm)
			if tc.opts != nil {
				tc.opts(&def)
			}
			got := CheckVM(infos[tc.vm], &def)
			if c, ok := ids(got)[tc.rule]; !ok || c != tc.want {
				t.Fatalf("%s: want %s %s, got %+v", tc.vm, tc.want, tc.rule, got)
			}
			for _, c := range got {
				if c.ID == tc.rule && (c.Message == "" || c.Fix == "" || !strings.Contains(c.Message, tc.vm)) {
					t.Errorf("concern without a message naming the VM, or without a fix: %+v", c)
				}
			}
			plain := simJob(s, "plain")
			if tc.opts != nil {
				tc.opts(&plain)
			}
			if c, ok := ids(CheckVM(infos["plain"], &plain))[tc.rule]; ok {
				t.Fatalf("plain VM triggers %s (%s)", tc.rule, c)
			}
		})
	}

	t.Run("plain VM has no concern", func(t *testing.T) {
		def := simJob(s, "plain")
		if got := CheckVM(infos["plain"], &def); len(got) != 0 {
			t.Fatalf("plain: %+v", got)
		}
	})
	t.Run("a running VM with shutdown is fine", func(t *testing.T) {
		def := simJob(s, "running")
		shutdown(&def)
		if c, ok := ids(CheckVM(infos["running"], &def))[RulePoweredOn]; ok {
			t.Fatalf("running VM with shutdown: %s", c)
		}
	})
	t.Run("facts as vSphere reports them", func(t *testing.T) {
		c := infos["snapshots"].Checks
		if c.Snapshots != 1 {
			t.Errorf("snapshots: %d", c.Snapshots)
		}
		if !infos["secure-boot"].SecureBoot || infos["secure-boot"].Firmware != "efi" {
			t.Errorf("secure-boot VM: firmware %s secure %v", infos["secure-boot"].Firmware, infos["secure-boot"].SecureBoot)
		}
		if n := infos["vlan10"].NICs; len(n) != 1 || n[0].Network != "Prod-VLAN10" {
			t.Errorf("vlan10 NICs: %+v", n)
		}
		if n := infos["plain"].NICs; len(n) != 1 || n[0].Network != "VM Network" {
			t.Errorf("plain NICs (the shape's network must not leak): %+v", n)
		}
		if b := infos["big"]; b.NumCPU != 64 || b.MemoryMB != 1<<20 {
			t.Errorf("big: %d CPUs %d MB", b.NumCPU, b.MemoryMB)
		}
		if infos["plain"].Checks.HostMoref == "" {
			t.Errorf("no runtime host")
		}
	})
}
