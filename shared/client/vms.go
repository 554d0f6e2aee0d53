package client

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// VCenter is how the controller reaches a vCenter for the VM discovery API. The password
// travels in the X-Vcenter-Password header, never in a URL (a query string ends up in
// proxies' logs), and never in an error message of this package.
type VCenter struct {
	URL        string
	Username   string
	Password   string
	Datacenter string
	Insecure   bool
	// Thumbprint pins the vCenter's certificate (SHA-1 or SHA-256, hex with colons).
	Thumbprint string
}

// vcenterPasswordHeader is how GET /vms/* takes the password out of the query string.
const vcenterPasswordHeader = "X-Vcenter-Password"

func (v VCenter) query() url.Values {
	q := url.Values{}
	q.Set("vcenter_url", v.URL)
	q.Set("username", v.Username)
	if v.Datacenter != "" {
		q.Set("datacenter", v.Datacenter)
	}
	if v.Insecure {
		q.Set("insecure", "true")
	}
	if v.Thumbprint != "" {
		q.Set("thumbprint", v.Thumbprint)
	}
	return q
}

func (v VCenter) header() http.Header {
	h := http.Header{}
	h.Set(vcenterPasswordHeader, v.Password)
	return h
}

// VMOperation is the body of POST /vms/shutdown, /vms/poweroff and /vms/remove-cdrom.
type VMOperation struct {
	VCenterURL string `json:"vcenter_url"`
	Username   string `json:"username"`
	Password   string `json:"password"`
	VMPath     string `json:"vm_path"`
	Datacenter string `json:"datacenter,omitempty"`
	Insecure   bool   `json:"insecure,omitempty"`
	Thumbprint string `json:"thumbprint,omitempty"`
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
		NumCPU          int    `json:"num_cpu"`
		CoresPerSocket  int    `json:"cores_per_socket,omitempty"`
		MemoryMB        int    `json:"memory_mb"`
		NumVirtualDisks int    `json:"num_virtual_disks"`
		Firmware        string `json:"firmware,omitempty"`
	} `json:"hardware"`
	NumCPU    int      `json:"num_cpu,omitempty"`
	MemoryMB  int      `json:"memory_mb,omitempty"`
	Firmware  string   `json:"firmware,omitempty"`
	GuestOS   string   `json:"guest_os,omitempty"`
	IPAddress string   `json:"ip_address,omitempty"`
	Disks     []VMDisk `json:"disks"`
	NICs      []VMNIC  `json:"nics,omitempty"`
}

// VMNIC is one network adapter in GET /vms/info.
type VMNIC struct {
	Label       string `json:"label"`
	Network     string `json:"network"`
	MAC         string `json:"mac"`
	AdapterType string `json:"adapter_type"`
	Connected   bool   `json:"connected"`
}

// ListVMs calls GET /vms/list. pattern is an inventory path glob ("DC0/vm/prod/*"); empty
// lists every VM of the datacenter.
func (c *Client) ListVMs(ctx context.Context, vc VCenter, pattern string) (VMList, error) {
	q := vc.query()
	if pattern != "" {
		q.Set("pattern", pattern)
	}
	var out VMList
	// Logging in to a vCenter and walking its inventory takes longer than a REST call.
	return out, c.call(ctx, request{method: http.MethodGet, path: "/vms/list", query: q, header: vc.header(), idempotent: true, timeout: 90 * time.Second}, nil, &out)
}

// VMInfo calls GET /vms/info.
func (c *Client) VMInfo(ctx context.Context, vc VCenter, vmPath string) (VMInfo, error) {
	q := vc.query()
	q.Set("vm_path", vmPath)
	var out VMInfo
	return out, c.call(ctx, request{method: http.MethodGet, path: "/vms/info", query: q, header: vc.header(), idempotent: true, timeout: 90 * time.Second}, nil, &out)
}

// VMAction calls POST /vms/{action} (shutdown, poweroff, remove-cdrom).
func (c *Client) VMAction(ctx context.Context, action string, vc VCenter, vmPath string) (proto.MessageResponse, error) {
	body := VMOperation{VCenterURL: vc.URL, Username: vc.Username, Password: vc.Password, VMPath: vmPath,
		Datacenter: vc.Datacenter, Insecure: vc.Insecure, Thumbprint: vc.Thumbprint}
	var out proto.MessageResponse
	// A graceful shutdown waits for the guest: allow more than a REST call.
	return out, c.call(ctx, request{method: http.MethodPost, path: "/vms/" + pathEscape(action), timeout: 5 * time.Minute}, body, &out)
}
