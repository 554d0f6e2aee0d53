package proto

// AgentFacts is what an agent's host offers a migrated VM, beyond the capacity it gossips:
// its bridges and libvirt networks, the domains already defined, the firmware and drivers
// installed. The agent serves it on its own API (GET /v1/facts); the controller's pre-flight
// validation reads it. It is too large for the gossip metadata (512 bytes) and changes with
// every domain defined, so it is asked for when needed rather than broadcast.
type AgentFacts struct {
	Name         string            `json:"name"`
	Capacity     AgentCapacity     `json:"capacity"`
	Capabilities AgentCapabilities `json:"capabilities"`
	// Bridges are the host's Linux bridges (/sys/class/net/*/bridge).
	Bridges []string `json:"bridges"`
	// Networks are libvirt's networks on the agent's libvirt URI.
	Networks []AgentNetwork `json:"networks"`
	// DefaultNetwork receives NICs whose VMware network is not in network_mapping ("": none).
	DefaultNetwork string `json:"default_network"`
	// Domains are the domains defined on the agent's libvirt; JobID is set for those a
	// HyperSDK migration made.
	Domains []AgentDomain `json:"domains"`
	// OVMF: UEFI firmware is installed; OVMFSecureBoot: a secure-boot build of it too.
	OVMF           bool `json:"ovmf"`
	OVMFSecureBoot bool `json:"ovmf_secure_boot"`
	// VirtioWin: the virtio-win drivers that Windows guests' conversion needs are installed.
	VirtioWin bool `json:"virtio_win"`
	// GuestConversion is the agent's default for jobs without options.guest_conversion
	// (auto or off).
	GuestConversion string `json:"guest_conversion"`
	// Hooks are the executables of the agent's hooks_dir (what options.hooks may name).
	Hooks []string `json:"hooks"`
	// LibvirtError says why networks and domains could not be listed ("" when they were).
	LibvirtError string `json:"libvirt_error,omitempty"`
}

// AgentNetwork is one libvirt network.
type AgentNetwork struct {
	Name   string `json:"name"`
	Active bool   `json:"active"`
}

// AgentDomain is one defined domain.
type AgentDomain struct {
	Name         string `json:"name"`
	JobID        string `json:"job_id,omitempty"`
	SourceVMPath string `json:"source_vm_path,omitempty"`
}

// AgentFactsPath is where an agent's API serves its facts.
const AgentFactsPath = "/v1/facts"
