package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hypersdk/hypersdk/proto"
)

func init() {
	register("agents", "list", &command{help: "agents of the fleet with their capacity and load", run: (*app).agentsList})
	register("agents", "get", &command{usage: "NAME", help: "one agent in detail", run: (*app).agentsGet})
	register("agents", "enrolled", &command{help: "agents enrolled with their own credential", run: (*app).agentsEnrolled})
	register("agents", "forget", &command{usage: "NAME", help: "drop an agent's credential (a replaced host may then enrol under NAME)", run: (*app).agentsForget})
	register("agents", "rotate", &command{usage: "NAME", help: "make an agent replace its credential on its next call", run: (*app).agentsRotate})
	for _, c := range []struct{ action, help string }{
		{"cordon", "keep an agent from new jobs (replicated); its running jobs finish"},
		{"drain", "cordon an agent and hand its running jobs back to run elsewhere (those not yet at their commit point)"},
		{"uncordon", "let a cordoned or drained agent take jobs again"},
	} {
		action := c.action
		register("agents", action, &command{usage: "NAME", help: c.help,
			run: func(a *app, args []string) error { return a.agentControl(action, args) }})
	}
}

func (a *app) agentControl(action string, args []string) error {
	if err := needArgs(args, 1, "one agent NAME"); err != nil {
		return err
	}
	res, err := a.client.AgentControl(a.ctx, args[0], action, "")
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	fmt.Fprintln(a.stdout, res.Message)
	return nil
}

// agentHealth is "ok", or "UNHEALTHY: the failed checks", plus the cordon.
func agentHealth(ag proto.AgentInfo) string {
	h := "ok"
	if len(ag.Capacity.FailedChecks) > 0 {
		h = "UNHEALTHY: " + strings.Join(ag.Capacity.FailedChecks, ",")
	}
	if ag.Cordon != "" {
		h += " (" + ag.Cordon + ")"
	}
	return h
}

func (a *app) agentsEnrolled(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	ids, err := a.client.AgentIdentities(a.ctx)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(ids)
	}
	t := a.table("NAME", "ENROLLED", "ROTATED", "ROTATION ASKED")
	for _, id := range ids {
		rotated := ""
		if !id.RotatedAt.IsZero() {
			rotated = ago(id.RotatedAt)
		}
		t.row(id.Name, ago(id.EnrolledAt), rotated, id.RotateRequested)
	}
	return t.flush()
}

func (a *app) agentsForget(args []string) error {
	if err := needArgs(args, 1, "one agent NAME"); err != nil {
		return err
	}
	res, err := a.client.ForgetAgent(a.ctx, args[0])
	if err != nil {
		return err
	}
	return a.message(res, "%s", res.Message)
}

func (a *app) agentsRotate(args []string) error {
	if err := needArgs(args, 1, "one agent NAME"); err != nil {
		return err
	}
	res, err := a.client.RotateAgent(a.ctx, args[0])
	if err != nil {
		return err
	}
	return a.message(res, "%s", res.Message)
}

func (a *app) agentsList(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	res, err := a.client.Agents(a.ctx)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	if len(res.Agents) == 0 {
		fmt.Fprintln(a.stdout, "No agents.")
		return nil
	}
	sort.Slice(res.Agents, func(i, j int) bool { return res.Agents[i].Name < res.Agents[j].Name })
	t := a.table("NAME", "STATE", "HEALTH", "CPUS", "MEMORY USED", "STORAGE FREE", "JOBS", "METHODS", "LAST SEEN")
	for _, ag := range res.Agents {
		c := ag.Capacity
		t.row(ag.Name, ag.State, agentHealth(ag), c.CPUs, memUsed(c), humanBytes(c.StorageFreeBytes),
			fmt.Sprintf("%d/%d", ag.RunningJobs, ag.MaxJobs), strings.Join(ag.Capabilities.Methods, ","), ago(ag.LastSeen))
	}
	return t.flush()
}

func memUsed(c proto.AgentCapacity) string {
	if c.MemoryTotalBytes == 0 {
		return ""
	}
	used := c.MemoryTotalBytes - min(c.MemoryFreeBytes, c.MemoryTotalBytes)
	return humanBytes(used) + " / " + humanBytes(c.MemoryTotalBytes)
}

func (a *app) agentsGet(args []string) error {
	if err := needArgs(args, 1, "one agent NAME"); err != nil {
		return err
	}
	ag, err := a.client.Agent(a.ctx, args[0])
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(ag)
	}
	c, caps := ag.Capacity, ag.Capabilities
	storage := humanBytes(c.StorageFreeBytes) + " free"
	if c.StorageTotalBytes > 0 {
		storage += " of " + humanBytes(c.StorageTotalBytes)
	}
	var tools []string
	if caps.QemuImg {
		tools = append(tools, strings.TrimSpace("qemu-img "+caps.QemuImgVersion))
	}
	if caps.Nbdkit {
		t := "nbdkit"
		if len(caps.NbdkitPlugins) > 0 {
			t += " (" + strings.Join(caps.NbdkitPlugins, ",") + ")"
		}
		tools = append(tools, t)
	}
	if caps.Nbdcopy {
		tools = append(tools, "nbdcopy")
	}
	if caps.VDDK {
		tools = append(tools, "VDDK")
	}
	libvirt := caps.LibvirtURI
	if libvirt != "" {
		if caps.LibvirtReachable {
			libvirt += " (reachable)"
		} else {
			libvirt += " (NOT reachable)"
		}
	}
	return fields(a.stdout,
		"Name", ag.Name,
		"State", string(ag.State),
		"Health", agentHealth(ag),
		"Problems", strings.Join(ag.Capacity.Reasons, "; "),
		"Gossip address", ag.Address,
		"API address", ag.APIAddr,
		"Version", ag.Version,
		"CPUs", itoa(c.CPUs),
		"Memory used", memUsed(c),
		"Storage", storage,
		"Jobs", fmt.Sprintf("%d running of %d", ag.RunningJobs, ag.MaxJobs),
		"Methods", strings.Join(caps.Methods, ", "),
		"Tools", strings.Join(tools, ", "),
		"Libvirt", libvirt,
		"Last seen", stamp(&ag.LastSeen),
	)
}
