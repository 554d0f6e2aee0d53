package libvirt

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	lv "libvirt.org/go/libvirt"
)

// resolvedNIC is a NIC with its target decided.
type resolvedNIC struct {
	kind   string // network or bridge
	target string
	mac    string
	model  string
}

// resolveNICs applies the network mapping. A target missing on this host is a warning, not
// an error: libvirt accepts the definition (it checks networks and bridges only when the
// domain starts), and the operator can create the network or bridge afterwards.
func resolveNICs(conn *lv.Connect, nics []NIC, opts Options) ([]resolvedNIC, []string) {
	def := opts.DefaultNetwork
	if def == "" {
		def = "default"
	}
	var out []resolvedNIC
	var warnings []string
	for i, n := range nics {
		target, mapped := opts.NetworkMapping[n.Network]
		if !mapped || target == "" {
			target = def
		}
		r := resolvedNIC{mac: n.MAC, model: nicModel(n.Model)}
		kind, name, forced := parseTarget(target)
		what := fmt.Sprintf("NIC %d (VMware network %q)", i+1, n.Network)
		if !mapped {
			what += " is not in network_mapping and"
		}
		netState := networkState(conn, name)
		switch {
		case forced && kind == "network":
			r.kind, r.target = "network", name
			if w := netState.warning(what, name); w != "" {
				warnings = append(warnings, w)
			}
		case forced && kind == "bridge":
			r.kind, r.target = "bridge", name
			if !bridgeExists(name) {
				warnings = append(warnings, fmt.Sprintf("%s goes to host bridge %q, which does not exist on this host: the domain will not start until it is created", what, name))
			}
		case netState != netMissing:
			r.kind, r.target = "network", name
			if w := netState.warning(what, name); w != "" {
				warnings = append(warnings, w)
			}
		case bridgeExists(name):
			r.kind, r.target = "bridge", name
		default:
			// Neither exists: point at a libvirt network of that name, the likelier thing
			// an operator will create (a bare name is a network first).
			r.kind, r.target = "network", name
			warnings = append(warnings, fmt.Sprintf("%s goes to %q, which is neither a libvirt network nor a host bridge here: the NIC points at a libvirt network %q that must be created before the domain can start", what, name, name))
		}
		out = append(out, r)
	}
	return out, warnings
}

// parseTarget splits "network:NAME" / "bridge:NAME" / "NAME".
func parseTarget(t string) (kind, name string, forced bool) {
	if k, n, ok := strings.Cut(t, ":"); ok && (k == "network" || k == "bridge") {
		return k, n, true
	}
	return "", t, false
}

func nicModel(m string) string {
	switch strings.ToLower(m) {
	case "", "virtio":
		return "virtio"
	case "e1000", "e1000e", "vmxnet3", "rtl8139":
		return strings.ToLower(m)
	case "vmxnet", "vmxnet2", "pcnet32", "flexible":
		// No qemu model; e1000 is what those guests' OSes all have a driver for.
		return "e1000"
	default:
		return "virtio"
	}
}

type netStatus int

const (
	netMissing netStatus = iota
	netInactive
	netActive
)

func (s netStatus) warning(what, name string) string {
	switch s {
	case netMissing:
		return fmt.Sprintf("%s goes to libvirt network %q, which does not exist on this host: the domain will not start until it is created", what, name)
	case netInactive:
		return fmt.Sprintf("%s goes to libvirt network %q, which is not active: start it (virsh net-start %s) before the domain", what, name, name)
	}
	return ""
}

func networkState(conn *lv.Connect, name string) netStatus {
	if name == "" {
		return netMissing
	}
	n, err := conn.LookupNetworkByName(name)
	if err != nil {
		return netMissing
	}
	defer n.Free()
	if active, err := n.IsActive(); err == nil && active {
		return netActive
	}
	return netInactive
}

// bridgeExists checks this host's kernel: the agent defines domains on its local libvirtd,
// where the bridge has to exist.
func bridgeExists(name string) bool {
	if name == "" || strings.ContainsAny(name, "/") {
		return false
	}
	st, err := os.Stat(filepath.Join("/sys/class/net", name, "bridge"))
	return err == nil && st.IsDir()
}
