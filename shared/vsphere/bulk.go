package vsphere

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Reading many VMs at once (pre-flight validation of a batch): a hundred FindVM and VMInfo
// calls cost a few round trips each; these cost a few in all.

// vmProperties are what VMInfo reads of a VM.
var vmProperties = []string{"name", "parent", "config", "runtime", "guest", "summary", "snapshot"}

// infoNames caches what several VMs share: their hosts' names and their datacenters (by
// the VM's parent folder).
type infoNames struct {
	hosts map[types.ManagedObjectReference]string
	dcs   map[types.ManagedObjectReference][2]string
}

func (n *infoNames) datacenter(ctx context.Context, c *Client, vm types.ManagedObjectReference, parent *types.ManagedObjectReference) ([2]string, error) {
	key := vm
	if parent != nil {
		key = *parent // every VM of a folder is in the folder's datacenter
	}
	if dc, ok := n.dcs[key]; ok {
		return dc, nil
	}
	name, p, err := c.datacenterOf(ctx, key)
	if err != nil {
		return [2]string{}, err
	}
	n.dcs[key] = [2]string{name, p}
	return n.dcs[key], nil
}

// VMInfos reads several VMs (from FindVM or FindVMs) in one property read, plus one for
// their hosts' names and one per folder for the datacenter. The answer is in vms' order.
// A VM removed meanwhile is ErrVMNotFound.
func (c *Client) VMInfos(ctx context.Context, vms []*VM) ([]*VMInfo, error) {
	if len(vms) == 0 {
		return nil, nil
	}
	refs := make([]types.ManagedObjectReference, len(vms))
	for i, vm := range vms {
		refs[i] = vm.Ref
	}
	var mos []mo.VirtualMachine
	if err := c.collector().Retrieve(ctx, refs, vmProperties, &mos); err != nil {
		if isManagedObjectNotFound(err) {
			if len(vms) == 1 {
				return nil, fmt.Errorf("%w: %s (removed)", ErrVMNotFound, vms[0].Path)
			}
			// Say which one: read them one by one.
			out := make([]*VMInfo, len(vms))
			for i, vm := range vms {
				infos, err := c.VMInfos(ctx, []*VM{vm})
				if err != nil {
					return nil, err
				}
				out[i] = infos[0]
			}
			return out, nil
		}
		return nil, fmt.Errorf("vsphere: read %s: %w", vms[0].Path, err)
	}
	byRef := make(map[types.ManagedObjectReference]mo.VirtualMachine, len(mos))
	names := &infoNames{hosts: map[types.ManagedObjectReference]string{}, dcs: map[types.ManagedObjectReference][2]string{}}
	var hosts []types.ManagedObjectReference
	for _, m := range mos {
		byRef[m.Self] = m
		if h := m.Runtime.Host; h != nil {
			if _, ok := names.hosts[*h]; !ok {
				names.hosts[*h] = ""
				hosts = append(hosts, *h)
			}
		}
	}
	if len(hosts) > 0 {
		var hs []mo.HostSystem
		// A host name is a nicety of VMInfo: without it the VM is still described.
		if err := c.collector().Retrieve(ctx, hosts, []string{"name"}, &hs); err == nil {
			for _, h := range hs {
				names.hosts[h.Self] = h.Name
			}
		}
	}
	out := make([]*VMInfo, len(vms))
	for i, vm := range vms {
		m, ok := byRef[vm.Ref]
		if !ok {
			return nil, fmt.Errorf("%w: %s (removed)", ErrVMNotFound, vm.Path)
		}
		info, err := c.vmInfoOf(ctx, vm, m, names)
		if err != nil {
			return nil, err
		}
		out[i] = info
	}
	return out, nil
}

// FindVMs resolves several inventory paths, listing each folder they name once. Paths it
// cannot resolve that way (globs, paths relative to the configured datacenter, missing
// VMs) are absent from the answer: FindVM says why for each.
func (c *Client) FindVMs(ctx context.Context, paths []string) (map[string]*VM, error) {
	dirs := map[string]bool{}
	for _, p := range paths {
		p = "/" + strings.TrimPrefix(strings.TrimSpace(p), "/")
		if strings.ContainsAny(p, "*?[") || p == "/" {
			continue
		}
		dirs[path.Dir(p)] = true
	}
	byPath := map[string]*VM{}
	for dir := range dirs {
		objs, err := c.finder.VirtualMachineList(ctx, dir+"/*")
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("vsphere: list VMs %s: %w", dir, err)
		}
		for _, o := range objs {
			byPath[o.InventoryPath] = &VM{Path: o.InventoryPath, Name: o.Name(), Ref: o.Reference(), obj: o}
		}
	}
	out := map[string]*VM{}
	for _, p := range paths {
		if vm, ok := byPath["/"+strings.TrimPrefix(strings.TrimSpace(p), "/")]; ok {
			out[p] = vm
		}
	}
	return out, nil
}
