package proto

// The VM discovery API (/vms/...): what the controller reads from a vCenter for the caller.
// Field names are the API document's; firmware, cores per socket and NICs are beyond it.

// VM is one VM of GET /vms/list.
type VM struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	PowerState string `json:"power_state"`
	NumCPU     int32  `json:"num_cpu"`
	MemoryMB   int32  `json:"memory_mb"`
	// Storage is the VM's committed and uncommitted storage in bytes.
	Storage   int64  `json:"storage"`
	GuestOS   string `json:"guest_os"`
	IPAddress string `json:"ip_address"`
}

// VMList answers GET /vms/list.
type VMList struct {
	VMs   []VM `json:"vms"`
	Total int  `json:"total"`
}

// VMHardware is the hardware section of GET /vms/info.
type VMHardware struct {
	NumCPU          int32  `json:"num_cpu"`
	CoresPerSocket  int32  `json:"cores_per_socket"`
	MemoryMB        int32  `json:"memory_mb"`
	NumVirtualDisks int    `json:"num_virtual_disks"`
	Firmware        string `json:"firmware"`
}

// VMDisk is one disk of GET /vms/info.
type VMDisk struct {
	Label      string `json:"label"`
	CapacityKB int64  `json:"capacity_kb"`
	FilePath   string `json:"file_path"`
}

// VMNIC is one network adapter of GET /vms/info.
type VMNIC struct {
	Key         int32  `json:"key"`
	Label       string `json:"label"`
	Network     string `json:"network"`
	MAC         string `json:"mac"`
	AdapterType string `json:"adapter_type"`
	Connected   bool   `json:"connected"`
}

// VMInfo answers GET /vms/info.
type VMInfo struct {
	Name       string     `json:"name"`
	Path       string     `json:"path"`
	UUID       string     `json:"uuid"`
	PowerState string     `json:"power_state"`
	Hardware   VMHardware `json:"hardware"`
	Disks      []VMDisk   `json:"disks"`
	NICs       []VMNIC    `json:"nics"`
	GuestOS    string     `json:"guest_os"`
	IPAddress  string     `json:"ip_address,omitempty"`
}

// VMActionRequest is the body of POST /vms/shutdown, /vms/poweroff and /vms/remove-cdrom.
// TimeoutSeconds (shutdown only) waits for the guest to be off.
type VMActionRequest struct {
	VCenterURL     string `json:"vcenter_url"`
	Username       string `json:"username"`
	Password       string `json:"password"`
	Datacenter     string `json:"datacenter,omitempty"`
	Insecure       bool   `json:"insecure,omitempty"`
	Thumbprint     string `json:"thumbprint,omitempty"`
	VMPath         string `json:"vm_path"`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty"`
}
