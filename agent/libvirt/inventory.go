package libvirt

import (
	"os"
	"path/filepath"
	"slices"

	lv "libvirt.org/go/libvirt"

	"github.com/hypersdk/hypersdk/proto"
)

// Inventory is what a migrated VM can land on and collide with on this libvirt: its
// networks and its defined domains (with the migration metadata of those HyperSDK made).
// Pre-flight validation reads it through the agent's facts.
func Inventory(conn *lv.Connect) (nets []proto.AgentNetwork, doms []proto.AgentDomain, err error) {
	ns, err := conn.ListAllNetworks(0)
	if err != nil {
		return nil, nil, err
	}
	for i := range ns {
		n := &ns[i]
		if name, err := n.GetName(); err == nil {
			active, _ := n.IsActive()
			nets = append(nets, proto.AgentNetwork{Name: name, Active: active})
		}
		_ = n.Free()
	}
	ds, err := conn.ListAllDomains(0)
	if err != nil {
		return nets, nil, err
	}
	for i := range ds {
		d := &ds[i]
		if name, err := d.GetName(); err == nil {
			ad := proto.AgentDomain{Name: name}
			if md, err := readMetadata(d); err == nil && md != nil {
				ad.JobID, ad.SourceVMPath = md.JobID, md.SourceVMPath
			}
			doms = append(doms, ad)
		}
		_ = d.Free()
	}
	slices.SortFunc(nets, func(a, b proto.AgentNetwork) int { return cmpString(a.Name, b.Name) })
	slices.SortFunc(doms, func(a, b proto.AgentDomain) int { return cmpString(a.Name, b.Name) })
	return nets, doms, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Bridges lists this host's Linux bridges (where a NIC mapped to "bridge:NAME" can go).
func Bridges() []string {
	entries, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if st, err := os.Stat(filepath.Join("/sys/class/net", e.Name(), "bridge")); err == nil && st.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// secureBootCandidates are the OVMF builds with secure boot (and Microsoft's keys enrolled
// in the vars template) that Debian/Ubuntu and Fedora/RHEL install.
var secureBootCandidates = []string{
	"/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
	"/usr/share/OVMF/OVMF_CODE.secboot.fd",
	"/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
	"/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd",
	"/usr/share/edk2-ovmf/x64/OVMF_CODE.secboot.fd",
}

// Firmware reports whether UEFI firmware (what Define uses for efi VMs) and a secure-boot
// build of it are installed.
func Firmware(opts Options) (ovmf, secureBoot bool) {
	_, _, err := findOVMF(opts)
	for _, p := range secureBootCandidates {
		if fileExists(p) {
			secureBoot = true
		}
	}
	return err == nil, secureBoot
}
