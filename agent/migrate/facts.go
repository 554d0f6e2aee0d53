package migrate

import (
	"context"

	"github.com/hypersdk/hypersdk/agent/libvirt"
	"github.com/hypersdk/hypersdk/proto"
)

// HostFacts is what this host offers a migrated VM (proto.AgentFacts without the capacity,
// which the agent adds): networks, bridges, defined domains, firmware, drivers. The
// controller's pre-flight validation asks for it through the agent's API.
func (p *Pipeline) HostFacts(ctx context.Context) proto.AgentFacts {
	f := proto.AgentFacts{
		Bridges: libvirt.Bridges(), DefaultNetwork: p.cfg.DefaultNetwork,
		VirtioWin: dirExists(p.cfg.VirtioWin), GuestConversion: p.cfg.GuestConversion,
	}
	if f.DefaultNetwork == "" {
		f.DefaultNetwork = "default" // what define falls back to
	}
	f.OVMF, f.OVMFSecureBoot = libvirt.Firmware(libvirt.Options{})
	f.Hooks = p.hookNames()
	conn, err := libvirt.Connect(ctx, p.cfg.LibvirtURI)
	if err != nil {
		f.LibvirtError = err.Error()
		return f
	}
	defer conn.Close()
	if f.Networks, f.Domains, err = libvirt.Inventory(conn); err != nil {
		f.LibvirtError = err.Error()
	}
	if f.Bridges == nil {
		f.Bridges = []string{}
	}
	return f
}
