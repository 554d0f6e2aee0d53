package validate

import (
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/proto"
)

// goodAgent can run every test shape that the vCenter rules let through.
func goodAgent(name string) Agent {
	capa := proto.AgentCapacity{CPUs: 8, MemoryTotalBytes: 32 << 30, MemoryFreeBytes: 16 << 30, StorageFreeBytes: 500 << 30, StorageTotalBytes: 1 << 40}
	caps := proto.AgentCapabilities{Methods: []string{"https", "nfc"}, VirtV2V: true}
	return Agent{
		Info: proto.AgentInfo{Name: name, State: proto.AgentAlive, Capacity: capa, Capabilities: caps},
		Facts: &proto.AgentFacts{Name: name, Capacity: capa, Capabilities: caps,
			Bridges: []string{"br0"}, Networks: []proto.AgentNetwork{{Name: "default", Active: true}, {Name: "standby", Active: false}},
			DefaultNetwork: "default", OVMF: true, OVMFSecureBoot: true, VirtioWin: true, GuestConversion: "auto",
			Domains: []proto.AgentDomain{{Name: "other-vm"}}},
	}
}

// TestFleetRules: every rule about an agent's host, against a simulator VM and an agent
// that trigger it, and the same VM on an agent that does not.
func TestFleetRules(t *testing.T) {
	s := startShapes(t, 0)
	infos := vmInfos(t, s)
	type mod func(*Agent, *proto.JobDefinition)
	for _, tc := range []struct {
		name, rule, vm string
		want           proto.ConcernCategory
		bad            mod // makes the good agent (or the job) trigger the rule
	}{
		{"method", RuleMethod, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) { d.Options.ConversionMethod = "vddk" }},
		{"storage", RuleStorage, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) { a.Facts.Capacity.StorageFreeBytes = 1 << 20 }},
		{"cpu", RuleCPU, "big", proto.ConcernCritical, nil},
		{"memory", RuleMemory, "big", proto.ConcernCritical, nil},
		{"unmapped, no default", RuleNetworkUnmapped, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) { a.Facts.DefaultNetwork = "" }},
		{"mapped to a missing bridge", RuleNetworkMissing, "vlan10", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			d.Options.NetworkMapping = map[string]string{"Prod-VLAN10": "bridge:br10"}
		}},
		// The agent defines the NIC on a missing default network and warns: critical only
		// when the job starts the domain.
		{"default network missing", RuleNetworkMissing, "plain", proto.ConcernWarning, func(a *Agent, d *proto.JobDefinition) { a.Facts.DefaultNetwork = "nat0" }},
		{"default network missing, boot check", RuleNetworkMissing, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			a.Facts.DefaultNetwork = "nat0"
			d.Options.VerifyBoot = true
		}},
		{"default network missing, start after", RuleNetworkMissing, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			a.Facts.DefaultNetwork = "nat0"
			d.Options.StartAfter = true
		}},
		{"mapped to a missing network, left off", RuleNetworkMissing, "vlan10", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			d.Options.NetworkMapping = map[string]string{"Prod-VLAN10": "network:vlan10"}
		}},
		{"mapped to an inactive network", RuleNetworkInactive, "vlan10", proto.ConcernWarning, func(a *Agent, d *proto.JobDefinition) {
			d.Options.NetworkMapping = map[string]string{"Prod-VLAN10": "standby"}
		}},
		{"foreign domain", RuleDomainExists, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			a.Facts.Domains = append(a.Facts.Domains, proto.AgentDomain{Name: "plain"})
		}},
		{"domain of another job", RuleDomainExists, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			a.Facts.Domains = append(a.Facts.Domains, proto.AgentDomain{Name: "plain", JobID: "job-1", SourceVMPath: "/DC0/vm/plain"})
		}},
		{"no OVMF", RuleOVMF, "efi", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) { a.Facts.OVMF = false }},
		{"secure boot without secboot OVMF", RuleSecureBoot, "secure-boot", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) { a.Facts.OVMFSecureBoot = false }},
		{"vTPM without secboot OVMF", RuleSecureBoot, "vtpm", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) { a.Facts.OVMFSecureBoot = false }},
		{"Windows without virtio-win", RuleVirtioWin, "windows", proto.ConcernWarning, func(a *Agent, d *proto.JobDefinition) { a.Facts.VirtioWin = false }},
		{"Windows without virtio-win, conversion required", RuleVirtioWin, "windows", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			a.Facts.VirtioWin = false
			d.Options.GuestConversion = new(bool)
			*d.Options.GuestConversion = true
		}},
		{"hook command not on the agent", RuleHookMissing, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			d.Options.Hooks = &proto.Hooks{Pre: &proto.Hook{Command: "cmdb-check"}}
		}},
		{"conversion required without virt-v2v", RuleV2VMissing, "plain", proto.ConcernCritical, func(a *Agent, d *proto.JobDefinition) {
			a.Info.Capabilities.VirtV2V, a.Facts.Capabilities.VirtV2V = false, false
			d.Options.GuestConversion = new(bool)
			*d.Options.GuestConversion = true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, def := goodAgent("kvm-1"), simJob(s, tc.vm)
			if tc.bad != nil {
				tc.bad(&a, &def)
			}
			got := CheckAgent(infos[tc.vm], &def, a)
			if c, ok := ids(got)[tc.rule]; !ok || c != tc.want {
				t.Fatalf("want %s %s, got %+v", tc.want, tc.rule, got)
			}
			for _, c := range got {
				if c.ID == tc.rule && (!strings.Contains(c.Message, "kvm-1") || c.Fix == "") {
					t.Errorf("concern does not name the agent or has no fix: %+v", c)
				}
			}
			// The same VM on a good agent; the options that trigger only on the agent stay.
			good, def2 := goodAgent("kvm-2"), simJob(s, tc.vm)
			if tc.bad != nil {
				var scratch Agent = goodAgent("scratch")
				tc.bad(&scratch, &def2)
			}
			if tc.rule == RuleMethod {
				good.Facts.Capabilities.Methods = append(good.Facts.Capabilities.Methods, "vddk")
			}
			if tc.rule == RuleNetworkMissing || tc.rule == RuleNetworkInactive {
				good.Facts.Bridges = append(good.Facts.Bridges, "br10")
				good.Facts.Networks[1].Active = true
				good.Facts.Networks = append(good.Facts.Networks, proto.AgentNetwork{Name: "vlan10", Active: true})
			}
			if tc.rule == RuleHookMissing {
				good.Facts.Hooks = []string{"cmdb-check"}
			}
			if tc.rule == RuleV2VMissing {
				def2.Options.GuestConversion = nil
			}
			if tc.rule == RuleCPU || tc.rule == RuleMemory {
				good.Facts.Capacity.CPUs, good.Facts.Capacity.MemoryTotalBytes = 128, 2<<40
			}
			// (A good agent may still warn where the bad one is critical: secure boot.)
			if c, ok := ids(CheckAgent(infos[tc.vm], &def2, good))[tc.rule]; ok && c == tc.want {
				t.Fatalf("a good agent triggers %s (%s)", tc.rule, c)
			}
		})
	}
}

// TestCheckFleet: how the agents' verdicts make one result.
func TestCheckFleet(t *testing.T) {
	s := startShapes(t, 0)
	infos := vmInfos(t, s)
	vm := infos["plain"]
	small := goodAgent("small")
	small.Facts.Capacity.StorageFreeBytes = 1 << 20
	small.Facts.Capacity.MemoryFreeBytes = 64 << 30 // placement would prefer it on memory alone
	big := goodAgent("big")
	big.Facts.Capacity.StorageFreeBytes = 400 << 30
	bigger := goodAgent("bigger")
	bigger.Facts.Capacity.StorageFreeBytes = 450 << 30
	dead := goodAgent("dead")
	dead.Info.State = proto.AgentDead

	t.Run("picks what placement would among the agents that pass", func(t *testing.T) {
		def := simJob(s, "plain")
		got, agent := CheckFleet(vm, &def, []Agent{small, big, bigger, dead})
		if agent != "bigger" {
			t.Fatalf("agent %q, want bigger", agent)
		}
		if ids(got)[RulePlacement] != proto.ConcernWarning || !strings.Contains(got[len(got)-1].Message, "small") {
			t.Fatalf("want a placement warning naming small: %+v", got)
		}
	})
	t.Run("target agent judged alone", func(t *testing.T) {
		def := simJob(s, "plain")
		def.Options.TargetAgent = "small"
		got, agent := CheckFleet(vm, &def, []Agent{small, big})
		if agent != "small" || ids(got)[RuleStorage] != proto.ConcernCritical {
			t.Fatalf("agent %q, %+v", agent, got)
		}
	})
	t.Run("dead or unknown target", func(t *testing.T) {
		for _, target := range []string{"dead", "nowhere"} {
			def := simJob(s, "plain")
			def.Options.TargetAgent = target
			got, _ := CheckFleet(vm, &def, []Agent{big, dead})
			if ids(got)[RuleTargetMissing] != proto.ConcernCritical {
				t.Fatalf("%s: %+v", target, got)
			}
		}
	})
	t.Run("libvirt_uri host names the target", func(t *testing.T) {
		def := simJob(s, "plain")
		def.Destination.LibvirtURI = "qemu+ssh://small/system"
		if _, agent := CheckFleet(vm, &def, []Agent{small, big}); agent != "small" {
			t.Fatalf("agent %q", agent)
		}
	})
	t.Run("no agent passes", func(t *testing.T) {
		def := simJob(s, "plain")
		got, agent := CheckFleet(vm, &def, []Agent{small})
		if agent != "small" || ids(got)[RuleStorage] != proto.ConcernCritical {
			t.Fatalf("agent %q, %+v", agent, got)
		}
	})
	t.Run("no live agent waits", func(t *testing.T) {
		def := simJob(s, "plain")
		got, _ := CheckFleet(vm, &def, []Agent{dead})
		if ids(got)[RuleNoAgents] != proto.ConcernWarning {
			t.Fatalf("%+v", got)
		}
	})
	t.Run("facts unavailable: gossip rules only, and said so", func(t *testing.T) {
		def := simJob(s, "plain")
		a := goodAgent("mute")
		a.Facts, a.FactsErr = nil, "connection refused"
		got, _ := CheckFleet(vm, &def, []Agent{a})
		if ids(got)[RuleFactsUnavailable] != proto.ConcernInfo || (proto.ValidationResult{Concerns: got}).Critical() {
			t.Fatalf("%+v", got)
		}
	})
}
