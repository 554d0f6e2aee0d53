package proto

// The guest side of a migration: how the agent's host runs guests, what it did to the guest
// (virt-v2v), which devices the domain got, and whether the guest booted.

// Domain types an agent runs guests with.
const (
	// VirtKVM is hardware virtualisation through /dev/kvm.
	VirtKVM = "kvm"
	// VirtTCG is qemu's software emulation (libvirt domain type "qemu"): correct, and
	// 10-50 times slower.
	VirtTCG = "qemu"
)

// DefaultBootTimeoutSeconds is how long the boot check waits for a login prompt when the job
// does not say.
const DefaultBootTimeoutSeconds = 300

// Virtualization is what an agent's probe decided its host can run: the libvirt domain type
// and CPU definition every domain gets, whether libguestfs (virt-v2v) can use KVM, and why.
type Virtualization struct {
	// Type is "kvm" or "qemu" (TCG).
	Type string `json:"type"`
	// CPU is the CPU definition: "host-model", "host-model -FEATURE…" (host-model with
	// features that failed disabled), "host-passthrough", or "default" (no <cpu> element:
	// qemu's default model).
	CPU string `json:"cpu,omitempty"`
	// LibguestfsKVM: virt-v2v's appliance can use KVM here; otherwise it runs under TCG.
	LibguestfsKVM bool `json:"libguestfs_kvm"`
	// Reason says why, with the evidence (host facts, the trial boots' outcomes).
	Reason string `json:"reason,omitempty"`
}

// DeviceChoice is the disk bus and NIC model a domain got.
type DeviceChoice struct {
	DiskBus  string `json:"disk_bus"`
	NICModel string `json:"nic_model"`
	Reason   string `json:"reason,omitempty"`
}

// ConversionResult says what virt-v2v did to the guest, or why it did not run.
type ConversionResult struct {
	Converted bool `json:"converted"`
	// Tool is the program and version that ran ("virt-v2v-in-place 2.2.0").
	Tool string `json:"tool,omitempty"`
	// Accel is how libguestfs's appliance ran: "kvm" or "tcg".
	Accel   string  `json:"accel,omitempty"`
	Seconds float64 `json:"seconds,omitempty"`
	// Steps are virt-v2v's progress lines, without their timestamps ("Inspecting the
	// source", "Converting Debian GNU/Linux 12 (bookworm) to run on KVM", …).
	Steps []string `json:"steps,omitempty"`
	// Reason says why the guest was not converted, when it was not.
	Reason string `json:"reason,omitempty"`
}

// BootResult is the outcome of the boot check.
type BootResult struct {
	OK bool `json:"ok"`
	// Seconds from the domain's start to the evidence.
	Seconds float64 `json:"seconds"`
	// Evidence is the console line that proves the guest runs (its login prompt).
	Evidence string `json:"evidence,omitempty"`
	// ConsoleLog is where the domain's serial console is recorded on the agent's host.
	ConsoleLog string `json:"console_log,omitempty"`
}
