package client

import (
	"context"
	"net/url"

	"github.com/hypersdk/hypersdk/proto"
)

// VCenter is how the controller reaches a vCenter for the VM discovery API. The password
// travels to the controller only; it is never part of an error message of this package.
type VCenter struct {
	URL        string
	Username   string
	Password   string
	Datacenter string
	Insecure   bool
}

func (v VCenter) query() url.Values {
	q := url.Values{}
	q.Set("vcenter_url", v.URL)
	q.Set("username", v.Username)
	q.Set("password", v.Password)
	if v.Datacenter != "" {
		q.Set("datacenter", v.Datacenter)
	}
	if v.Insecure {
		q.Set("insecure", "true")
	}
	return q
}

// VMOperation is the body of POST /vms/shutdown, /vms/poweroff and /vms/remove-cdrom.
type VMOperation struct {
	VCenterURL string `json:"vcenter_url"`
	Username   string `json:"username"`
	Password   string `json:"password"`
	VMPath     string `json:"vm_path"`
	Datacenter string `json:"datacenter,omitempty"`
	Insecure   bool   `json:"insecure,omitempty"`
}

// VM is one row of GET /vms/list. It accepts both the API document's field names and the
// fleet's (storage or storage_bytes).
type VM struct {
	Name         string `json:"name"`
	Path         string `json:"path"`
	PowerState   string `json:"power_state"`
	NumCPU       int    `json:"num_cpu"`
	MemoryMB     int    `json:"memory_mb"`
	Storage      int64  `json:"storage,omitempty"`
	StorageBytes int64  `json:"storage_bytes,omitempty"`
	GuestOS      string `json:"guest_os"`
	IPAddress    string `json:"ip_address,omitempty"`
}

// Bytes is the VM's storage in bytes, whichever field the controller filled.
func (v VM) Bytes() int64 {
	if v.StorageBytes != 0 {
		return v.StorageBytes
	}
	return v.Storage
}

// VMList is GET /vms/list.
type VMList struct {
	VMs   []VM `json:"vms"`
	Total int  `json:"total"`
}

// VMDisk is one disk in GET /vms/info.
type VMDisk struct {
	Label         string `json:"label"`
	CapacityKB    int64  `json:"capacity_kb,omitempty"`
	CapacityBytes int64  `json:"capacity_bytes,omitempty"`
	FilePath      string `json:"file_path,omitempty"`
	File          string `json:"file,omitempty"`
}

// Bytes is the disk's capacity in bytes.
func (d VMDisk) Bytes() int64 {
	if d.CapacityBytes != 0 {
		return d.CapacityBytes
	}
	return d.CapacityKB * 1024
}

// Backing is the disk's backing file.
func (d VMDisk) Backing() string {
	if d.File != "" {
		return d.File
	}
	return d.FilePath
}

// VMInfo is GET /vms/info (the document's shape, plus the flat fields some servers use).
type VMInfo struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	UUID       string `json:"uuid"`
	PowerState string `json:"power_state"`
	Hardware   struct {
		NumCPU          int `json:"num_cpu"`
		MemoryMB        int `json:"memory_mb"`
		NumVirtualDisks int `json:"num_virtual_disks"`
	} `json:"hardware"`
	NumCPU    int      `json:"num_cpu,omitempty"`
	MemoryMB  int      `json:"memory_mb,omitempty"`
	Firmware  string   `json:"firmware,omitempty"`
	GuestOS   string   `json:"guest_os,omitempty"`
	IPAddress string   `json:"ip_address,omitempty"`
	Disks     []VMDisk `json:"disks"`
}

// ListVMs calls GET /vms/list.
func (c *Client) ListVMs(ctx context.Context, vc VCenter) (VMList, error) {
	var out VMList
	return out, c.get(ctx, "/vms/list", vc.query(), &out)
}

// VMInfo calls GET /vms/info.
func (c *Client) VMInfo(ctx context.Context, vc VCenter, vmPath string) (VMInfo, error) {
	q := vc.query()
	q.Set("vm_path", vmPath)
	var out VMInfo
	return out, c.get(ctx, "/vms/info", q, &out)
}

// VMAction calls POST /vms/{action} (shutdown, poweroff, remove-cdrom).
func (c *Client) VMAction(ctx context.Context, action string, vc VCenter, vmPath string) (proto.MessageResponse, error) {
	body := VMOperation{VCenterURL: vc.URL, Username: vc.Username, Password: vc.Password, VMPath: vmPath,
		Datacenter: vc.Datacenter, Insecure: vc.Insecure}
	var out proto.MessageResponse
	return out, c.post(ctx, "/vms/"+pathEscape(action), body, &out)
}
