package validate

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/hypersdk/hypersdk/controller/lease"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// Fleet rules: can an agent's host hold and run the VM? Each is a pure function of the VM,
// the job and one agent (its gossip view plus the facts its API served, when it answered).

const (
	RuleNoAgents         = "fleet.no_agents"
	RuleTargetMissing    = "agent.target_missing"
	RuleMethod           = "agent.method"
	RuleStorage          = "agent.storage"
	RuleCPU              = "agent.cpu"
	RuleMemory           = "agent.memory"
	RuleNetworkUnmapped  = "network.unmapped"
	RuleNetworkMissing   = "network.missing"
	RuleNetworkInactive  = "network.inactive"
	RuleDomainExists     = "domain.exists"
	RuleOVMF             = "firmware.ovmf"
	RuleSecureBoot       = "firmware.secure_boot"
	RuleVirtioWin        = "guest.virtio_win"
	RuleV2VMissing       = "guest.v2v_missing"
	RulePlacement        = "placement.restricted"
	RuleFactsUnavailable = "agent.facts_unavailable"
	RuleHookMissing      = "hook.missing"
)

// Agent is one agent as the fleet rules see it: the gossip view and, when its API
// answered, its host facts (FactsErr says why not).
type Agent struct {
	Info     proto.AgentInfo
	Facts    *proto.AgentFacts
	FactsErr string
}

func (a Agent) capacity() proto.AgentCapacity {
	if a.Facts != nil {
		return a.Facts.Capacity
	}
	return a.Info.Capacity
}

func (a Agent) methods() []string {
	if a.Facts != nil && len(a.Facts.Capabilities.Methods) > 0 {
		return a.Facts.Capabilities.Methods
	}
	return a.Info.Capabilities.Methods
}

// better is placement's order (controller/lease): most free storage, then memory, then the
// fewest running jobs, then the name.
func better(a, b Agent) int {
	ca, cb := a.capacity(), b.capacity()
	if c := cmp.Compare(cb.StorageFreeBytes, ca.StorageFreeBytes); c != 0 {
		return c
	}
	if c := cmp.Compare(cb.MemoryFreeBytes, ca.MemoryFreeBytes); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Info.RunningJobs, b.Info.RunningJobs); c != 0 {
		return c
	}
	return cmp.Compare(a.Info.Name, b.Info.Name)
}

// CheckAgent runs the fleet rules of one agent.
func CheckAgent(vm *vsphere.VMInfo, def *proto.JobDefinition, a Agent) []proto.Concern {
	var out []proto.Concern
	name := a.Info.Name
	o := def.Options
	if m := o.ConversionMethod; m != "" && m != "auto" && !hasAny(a.methods(), m) {
		out = append(out, critical(RuleMethod,
			fmt.Sprintf("agent %s has no %s transfer (it has %s)", name, m, orNone(a.methods())),
			methodFix(m)))
	}
	capa := a.capacity()
	var size int64
	for _, d := range vm.Disks {
		size += d.CapacityBytes
	}
	if capa.StorageFreeBytes > 0 && size > 0 && uint64(size) > capa.StorageFreeBytes {
		out = append(out, critical(RuleStorage,
			fmt.Sprintf("%s's disks are %s provisioned and agent %s has %s free in its storage dir", vm.Name, gib(uint64(size)), name, gib(capa.StorageFreeBytes)),
			"free space in the agent's storage_dir, or send the job to an agent with room (options.target_agent)"))
	}
	if capa.CPUs > 0 && int(vm.NumCPU) > capa.CPUs {
		out = append(out, critical(RuleCPU,
			fmt.Sprintf("%s has %d vCPUs and agent %s's host has %d CPUs: the domain would not start", vm.Name, vm.NumCPU, name, capa.CPUs),
			"reduce the VM's vCPUs in vSphere, or use a larger host"))
	}
	if mem := uint64(vm.MemoryMB) << 20; capa.MemoryTotalBytes > 0 && mem > capa.MemoryTotalBytes {
		out = append(out, critical(RuleMemory,
			fmt.Sprintf("%s has %s of memory and agent %s's host has %s in all: the domain would not start", vm.Name, gib(mem), name, gib(capa.MemoryTotalBytes)),
			"reduce the VM's memory in vSphere, or use a larger host"))
	}
	out = append(out, guestRules(vm, def, a)...)
	if a.Facts == nil {
		return out
	}
	f := a.Facts
	out = append(out, networkRules(vm, def, a)...)
	if hs := o.Hooks; hs != nil {
		for phase, h := range map[string]*proto.Hook{"pre": hs.Pre, "post": hs.Post} {
			if h != nil && h.Command != "" && !hasAny(f.Hooks, h.Command) {
				out = append(out, critical(RuleHookMissing,
					fmt.Sprintf("the %s hook %q is not in agent %s's hooks_dir (it has %s)", phase, h.Command, name, orNone(f.Hooks)),
					"install the executable in the agent's hooks_dir (agent config hooks_dir), or use an url hook"))
			}
		}
	}
	for _, d := range f.Domains {
		if d.Name != vm.Name || (d.JobID != "" && d.JobID == def.ID) {
			continue
		}
		if d.JobID == "" {
			out = append(out, critical(RuleDomainExists,
				fmt.Sprintf("a domain named %s already exists on agent %s, not made by HyperSDK", vm.Name, name),
				fmt.Sprintf("rename or remove it on the agent's host (virsh undefine %s), or send the job to another agent", vm.Name)))
		} else {
			out = append(out, critical(RuleDomainExists,
				fmt.Sprintf("a domain named %s already exists on agent %s, made by migration job %s (of %s)", vm.Name, name, d.JobID, d.SourceVMPath),
				fmt.Sprintf("remove it (virsh undefine --nvram %s) if that migration is to be redone, or send the job to another agent", vm.Name)))
		}
	}
	if vm.Firmware == "efi" && !f.OVMF {
		out = append(out, critical(RuleOVMF,
			fmt.Sprintf("%s boots with UEFI and agent %s has no OVMF firmware", vm.Name, name),
			"install the ovmf package (Debian/Ubuntu) or edk2-ovmf (Fedora/RHEL) on the agent's host"))
	}
	if vm.SecureBoot || vm.Checks.VTPM {
		what := "secure boot"
		if !vm.SecureBoot {
			what = "a vTPM"
		}
		if !f.OVMFSecureBoot {
			out = append(out, critical(RuleSecureBoot,
				fmt.Sprintf("%s has %s and agent %s has no secure-boot OVMF firmware: a guest that relies on it (BitLocker, measured boot) will not come up as it was", vm.Name, what, name),
				"install the secure-boot OVMF build (ovmf / edk2-ovmf ship OVMF_CODE*.secboot.fd), or turn secure boot and the vTPM off in vSphere first"))
		} else {
			out = append(out, warning(RuleSecureBoot,
				fmt.Sprintf("%s has %s: the domain is defined with OVMF without secure boot enforcement or a TPM", vm.Name, what),
				"enable secure boot (the secboot firmware is installed) and add an swtpm TPM to the domain after the migration"))
		}
	}
	return out
}

// guestRules: can the agent convert the guest (virt-v2v, and virtio-win for Windows)?
func guestRules(vm *vsphere.VMInfo, def *proto.JobDefinition, a Agent) []proto.Concern {
	gc := def.Options.GuestConversion
	agentDefault := "auto"
	if a.Facts != nil && a.Facts.GuestConversion != "" {
		agentDefault = a.Facts.GuestConversion
	}
	required := gc != nil && *gc
	if (gc != nil && !*gc) || (gc == nil && agentDefault == "off") {
		return nil
	}
	v2v := a.Info.Capabilities.VirtV2V || (a.Facts != nil && a.Facts.Capabilities.VirtV2V)
	if !v2v {
		if required {
			return []proto.Concern{critical(RuleV2VMissing,
				fmt.Sprintf("options.guest_conversion is true and agent %s has no virt-v2v", a.Info.Name),
				"install virt-v2v on the agent's host (apt install virt-v2v libguestfs-tools linux-image-amd64), or set guest_conversion: false")}
		}
		return nil
	}
	if !isWindows(vm) || a.Facts == nil || a.Facts.VirtioWin {
		return nil
	}
	msg := fmt.Sprintf("%s runs Windows (%s) and agent %s has no virtio-win drivers", vm.Name, vm.GuestOS, a.Info.Name)
	fix := "install virtio-win on the agent's host (/usr/share/virtio-win), or set guest_conversion: false (the domain then gets sata disks and an e1000e NIC)"
	if required {
		return []proto.Concern{critical(RuleVirtioWin, msg+": the guest cannot be converted", fix)}
	}
	return []proto.Concern{warning(RuleVirtioWin, msg+": the guest is not converted and gets compatibility devices (sata, e1000e)", fix)}
}

func isWindows(vm *vsphere.VMInfo) bool {
	return strings.HasPrefix(strings.ToLower(vm.GuestID), "win") || strings.Contains(strings.ToLower(vm.GuestOS), "windows")
}

// networkRules: every NIC's VMware network must land on a bridge or libvirt network the
// host has (the agent defines the domain anyway, but it would not start).
func networkRules(vm *vsphere.VMInfo, def *proto.JobDefinition, a Agent) []proto.Concern {
	f := a.Facts
	var out []proto.Concern
	seen := map[string]bool{}
	for _, n := range vm.NICs {
		if seen[n.Network] {
			continue
		}
		seen[n.Network] = true
		target, mapped := def.Options.NetworkMapping[n.Network]
		if !mapped {
			target = f.DefaultNetwork
		}
		if target == "" {
			out = append(out, critical(RuleNetworkUnmapped,
				fmt.Sprintf("VMware network %q of %s is not in network_mapping and agent %s has no default_network", n.Network, vm.Name, a.Info.Name),
				fmt.Sprintf("add %q to options.network_mapping (a bridge or libvirt network of the agent's host)", n.Network)))
			continue
		}
		kind, name := splitTarget(target)
		net := slices.IndexFunc(f.Networks, func(x proto.AgentNetwork) bool { return x.Name == name })
		bridge := hasAny(f.Bridges, name)
		how := fmt.Sprintf("mapped to %q", target)
		if !mapped {
			how = fmt.Sprintf("not in network_mapping, so on agent %s's default network %q", a.Info.Name, target)
		}
		switch {
		case (kind == "" || kind == "network") && net >= 0:
			if !f.Networks[net].Active {
				out = append(out, warning(RuleNetworkInactive,
					fmt.Sprintf("VMware network %q of %s is %s, a libvirt network that is not active on agent %s", n.Network, vm.Name, how, a.Info.Name),
					fmt.Sprintf("start it on the agent's host (virsh net-start %s; net-autostart)", name)))
			}
		case (kind == "" || kind == "bridge") && bridge:
		default:
			what := "bridge or libvirt network"
			switch kind {
			case "bridge":
				what = "bridge"
			case "network":
				what = "libvirt network"
			}
			msg := fmt.Sprintf("VMware network %q of %s is %s, and agent %s's host has no such %s", n.Network, vm.Name, how, a.Info.Name, what)
			fix := fmt.Sprintf("create %s on the agent's host, or map %q to one it has (bridges: %s; networks: %s)", name, n.Network, orNone(f.Bridges), orNone(netNames(f.Networks)))
			// The agent defines a NIC whose target is missing and warns (libvirt checks it
			// only at start). A target the job names, or a domain the job starts, fails;
			// the agent's fallback on a domain left off is what the agent itself does: a
			// warning, the domain starting once the network exists.
			if mapped || startsDomain(def) {
				out = append(out, critical(RuleNetworkMissing, msg+": the domain would not start", fix))
			} else {
				out = append(out, warning(RuleNetworkMissing, msg+": the domain is defined with its NIC there and starts once it exists", fix))
			}
		}
	}
	return out
}

// startsDomain: the job starts the migrated domain (boot check or start_after).
func startsDomain(def *proto.JobDefinition) bool {
	return def.Options.VerifyBoot || def.Options.StartAfter
}

func splitTarget(t string) (kind, name string) {
	if k, n, ok := strings.Cut(t, ":"); ok && (k == "network" || k == "bridge") {
		return k, n
	}
	return "", t
}

func netNames(ns []proto.AgentNetwork) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.Name
	}
	return out
}

func orNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func methodFix(m string) string {
	switch m {
	case "vddk":
		return "install VMware's VDDK on an agent (vddk_libdir), or use conversion_method auto"
	case "https":
		return "install nbdkit's curl plugin (nbdkit-plugin-libcurl) on an agent, or use conversion_method auto"
	}
	return "install what the method needs on an agent, or use conversion_method auto"
}

func gib(b uint64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// CheckFleet runs the fleet rules against the job's target agent, or against every live
// agent: it returns the concerns and the agent they were made against.
//   - A named target (options.target_agent, or the libvirt_uri's host when an agent has
//     that name) is judged alone; a target not in the fleet is critical.
//   - Otherwise, when some agents pass every fleet rule, the result is for the one
//     placement would pick among them, with a warning naming them when others do not
//     (placement does not know these rules: options.target_agent pins the job).
//   - When none passes, the concerns are those of the agent placement would pick.
//   - No live agent at all is a warning: the job waits for one.
func CheckFleet(vm *vsphere.VMInfo, def *proto.JobDefinition, agents []Agent) ([]proto.Concern, string) {
	byName := map[string]Agent{}
	for _, a := range agents {
		byName[a.Info.Name] = a
	}
	j := &proto.Job{Definition: *def}
	if t := lease.TargetAgent(j, func(n string) bool { _, ok := byName[n]; return ok }); t != "" {
		a, ok := byName[t]
		if !ok || !a.Info.State.Member() {
			state := "not in the fleet"
			if ok {
				state = string(a.Info.State)
			}
			return []proto.Concern{critical(RuleTargetMissing,
				fmt.Sprintf("target agent %s is %s", t, state),
				"start the agent, or name another one in options.target_agent (hyperctl agents list)")}, t
		}
		return withFactsNote(CheckAgent(vm, def, a), a), t
	}
	var live []Agent
	for _, a := range agents {
		if a.Info.State.Member() {
			live = append(live, a)
		}
	}
	if len(live) == 0 {
		return []proto.Concern{warning(RuleNoAgents, "no agent is alive in the fleet: the job waits until one joins", "start an agent (hypersdk-agent)")}, ""
	}
	slices.SortFunc(live, better)
	type verdict struct {
		a        Agent
		concerns []proto.Concern
	}
	var pass, fail []verdict
	for _, a := range live {
		c := CheckAgent(vm, def, a)
		v := verdict{a, c}
		if (proto.ValidationResult{Concerns: c}).Critical() {
			fail = append(fail, v)
		} else {
			pass = append(pass, v)
		}
	}
	if len(pass) == 0 {
		best := fail[0]
		out := withFactsNote(best.concerns, best.a)
		if len(fail) > 1 {
			var others []string
			for _, v := range fail[1:] {
				others = append(others, v.a.Info.Name)
			}
			out = append(out, info(RulePlacement, fmt.Sprintf("the other agents (%s) cannot run it either", strings.Join(others, ", ")),
				"see each with options.target_agent set to it"))
		}
		return out, best.a.Info.Name
	}
	best := pass[0]
	out := withFactsNote(best.concerns, best.a)
	if len(fail) > 0 {
		var ok, no []string
		for _, v := range pass {
			ok = append(ok, v.a.Info.Name)
		}
		for _, v := range fail {
			no = append(no, fmt.Sprintf("%s (%s)", v.a.Info.Name, firstCritical(v.concerns)))
		}
		out = append(out, warning(RulePlacement,
			fmt.Sprintf("only agents %s can run it; %s cannot", strings.Join(ok, ", "), strings.Join(no, "; ")),
			fmt.Sprintf("set options.target_agent to %s: placement does not check these rules", best.a.Info.Name)))
	}
	return out, best.a.Info.Name
}

func firstCritical(cs []proto.Concern) string {
	for _, c := range cs {
		if c.Category == proto.ConcernCritical {
			return c.ID
		}
	}
	return ""
}

func withFactsNote(cs []proto.Concern, a Agent) []proto.Concern {
	if a.Facts != nil {
		return cs
	}
	return append(cs, info(RuleFactsUnavailable,
		fmt.Sprintf("agent %s did not describe its host (%s): its networks, domains and firmware were not checked", a.Info.Name, a.FactsErr),
		"check that the controller reaches the agent's api_addr"))
}
