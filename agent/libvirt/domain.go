// Package libvirt defines the migrated VM as a domain on the agent's libvirtd: vCPU
// topology, memory, BIOS or UEFI, the converted disks, NICs mapped from VMware networks to
// libvirt networks or host bridges with their MACs, and a metadata element that records
// which migration job made the domain. That element is what makes a retried job idempotent
// (its own domain is redefined) and keeps a job from clobbering a domain it did not make.
package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/hypersdk/hypersdk/agent/capacity"
)

// Sentinel errors.
var (
	// ErrDomainExists: a domain with the name exists and was not made by this job.
	ErrDomainExists = errors.New("domain already exists")
	// ErrNotOwned: Undefine was asked to remove a domain another job (or no job) made.
	ErrNotOwned = errors.New("domain not made by this job")
	// ErrLibvirtUnreachable: the libvirt URI could not be opened.
	ErrLibvirtUnreachable = errors.New("libvirt unreachable")
	// ErrInvalidSpec: the DomainSpec cannot describe a domain.
	ErrInvalidSpec = errors.New("invalid domain spec")
	// ErrFirmwareMissing: UEFI was asked for and no OVMF firmware is installed.
	ErrFirmwareMissing = errors.New("UEFI firmware (OVMF) not found")
)

// Firmware values.
const (
	FirmwareBIOS = "bios"
	FirmwareEFI  = "efi"
)

// Disk is one converted disk, in boot order (the first boots).
type Disk struct {
	Path   string // absolute path of the image
	Format string // qcow2 (default) or raw
	Bus    string // virtio (default), sata or scsi
}

// NIC is one network adapter of the source VM.
type NIC struct {
	Network string // the VMware network (port group) name
	MAC     string // kept so guest network config and DHCP reservations keep working
	Model   string // virtio (default), e1000, e1000e, vmxnet3, rtl8139
}

// DomainSpec is the VM to define, as read from vSphere.
type DomainSpec struct {
	Name           string
	VCPUs          int
	CoresPerSocket int // 0: one core per socket
	MemoryMiB      int64
	Firmware       string // bios (default) or efi
	Machine        string // q35 (default) or pc
	GuestOS        string // VMware guest id (e.g. windows2019srv_64Guest): Windows gets a local-time clock
	Disks          []Disk
	NICs           []NIC
	JobID          string // required: written to the metadata, checked on collisions
	SourceVMUUID   string
	SourceVMPath   string
	// BIOSUUID is the source VM's BIOS UUID: it becomes the domain's UUID, which qemu
	// gives the guest as its SMBIOS system UUID (licences, cloud-init instance ids and
	// configuration management key on it). Empty or invalid: libvirt picks one.
	BIOSUUID string
}

// Options say how to place the domain on this host.
type Options struct {
	// NetworkMapping maps a VMware network to a target: "network:NAME" (a libvirt network),
	// "bridge:NAME" (a host bridge), or a bare NAME (a libvirt network if one has that
	// name, else a host bridge).
	NetworkMapping map[string]string
	// DefaultNetwork is the target for unmapped networks (default "default", libvirt's
	// usual NAT network). Same syntax as a mapping target.
	DefaultNetwork string
	// StartAfter starts the domain once defined. A failed start is a warning: the
	// migration itself succeeded and the operator can fix the host and start it.
	StartAfter bool
	// DomainType is kvm or qemu (TCG), as the agent's virtualisation probe decided; empty:
	// kvm with /dev/kvm, else qemu (test on test:///).
	DomainType string
	// CPU is the CPU definition the probe found the host can run; nil: none (qemu's
	// default model, which starts wherever the domain type does).
	CPU *capacity.CPUDef
	// ConsoleLog, when set, records the serial console in this file (libvirt's virtlogd
	// writes it) for the operator, whatever reads the console meanwhile.
	ConsoleLog string
	// OVMFCode and OVMFVars override the firmware paths for efi.
	OVMFCode, OVMFVars string
	Logger             *slog.Logger
	// Now stamps converted_at (default time.Now).
	Now func() time.Time
}

// Result is the defined domain.
type Result struct {
	Name      string
	UUID      string
	Warnings  []string
	Redefined bool // the domain existed from an earlier attempt of the same job
	Started   bool
}

// Metadata is what the domain's hypersdk:migration element records.
type Metadata struct {
	XMLName      xml.Name `xml:"migration"`
	JobID        string   `xml:"job_id"`
	SourceVMUUID string   `xml:"source_vm_uuid,omitempty"`
	SourceVMPath string   `xml:"source_vm_path,omitempty"`
	ConvertedAt  string   `xml:"converted_at,omitempty"`
}

// Metadata namespace of the domain XML element.
const (
	MetadataNamespace = "https://hypersdk.io/xmlns/migration/1"
	MetadataPrefix    = "hypersdk"
)

// Connect opens a libvirt URI. Failure wraps ErrLibvirtUnreachable with the URI and a hint.
func Connect(ctx context.Context, uri string) (*lv.Connect, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type res struct {
		c   *lv.Connect
		err error
	}
	// NewConnect can block for the connect timeout of a remote URI; do not hold up a
	// cancelled caller (the goroutine closes a late connection itself).
	ch := make(chan res, 1)
	go func() {
		c, err := lv.NewConnect(uri)
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("%w: cannot connect to %s (is libvirtd running? start it: systemctl start libvirtd): %s",
				ErrLibvirtUnreachable, uri, lvMessage(r.err))
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// Define defines (or, for this job's own earlier attempt, redefines) the domain.
func Define(ctx context.Context, conn *lv.Connect, spec DomainSpec, opts Options) (*Result, error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("domain", spec.Name, "job", spec.JobID)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res := &Result{Name: spec.Name}

	// Collision check: the name is the VM's; only this job's own domain may be replaced.
	uuid := ""
	if dom, err := conn.LookupDomainByName(spec.Name); err == nil {
		md, merr := readMetadata(dom)
		u, _ := dom.GetUUIDString()
		active, _ := dom.IsActive()
		dom.Free()
		switch {
		case merr != nil && !isCode(merr, lv.ERR_NO_DOMAIN_METADATA):
			return nil, fmt.Errorf("reading metadata of existing domain %q: %s", spec.Name, lvMessage(merr))
		case md == nil:
			return nil, fmt.Errorf("%w: domain %q exists and was not made by a HyperSDK migration; rename or remove it", ErrDomainExists, spec.Name)
		case md.JobID != spec.JobID:
			return nil, fmt.Errorf("%w: domain %q exists, made by migration job %s (of %s); rename or remove it", ErrDomainExists, spec.Name, md.JobID, md.SourceVMPath)
		}
		uuid = u // libvirt refuses to redefine a name with a different UUID
		res.Redefined = true
		res.Started = active
		log.Info("redefining the domain of an earlier attempt of this job", "uuid", u)
	} else if !isCode(err, lv.ERR_NO_DOMAIN) {
		return nil, fmt.Errorf("looking up domain %q: %s", spec.Name, lvMessage(err))
	}

	host, err := probeHost(conn, opts)
	if err != nil {
		return nil, err
	}
	nics, warnings := resolveNICs(conn, spec.NICs, opts)
	res.Warnings = append(res.Warnings, warnings...)
	dom, warnings, err := buildDomain(spec, opts, host, nics)
	if err != nil {
		return nil, err
	}
	res.Warnings = append(res.Warnings, warnings...)
	if uuid == "" && validUUID(spec.BIOSUUID) {
		uuid = strings.ToLower(spec.BIOSUUID)
	}
	dom.UUID = uuid
	doc, err := dom.Marshal()
	if err != nil {
		return nil, fmt.Errorf("marshal domain XML: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// VALIDATE checks the XML against libvirt's schema, so a mistake here is reported as
	// such rather than as a puzzling start failure later.
	d, err := conn.DomainDefineXMLFlags(doc, lv.DOMAIN_DEFINE_VALIDATE)
	if err != nil && (isCode(err, lv.ERR_NO_SUPPORT) || isCode(err, lv.ERR_INVALID_ARG)) {
		d, err = conn.DomainDefineXML(doc)
	}
	if err != nil {
		if msg := lvMessage(err); strings.Contains(msg, "already exists with uuid") || strings.Contains(msg, "already defined with uuid") {
			// The source's BIOS UUID belongs to another domain (this VM migrated before
			// under another name, or a clone of it).
			return nil, fmt.Errorf("%w: the source VM's BIOS UUID %s is the UUID of another domain on this host: %s", ErrDomainExists, uuid, msg)
		} else if strings.Contains(msg, "already exists") {
			// Another definer won a race for the name between our lookup and define.
			return nil, fmt.Errorf("%w: domain %q was defined concurrently: %s", ErrDomainExists, spec.Name, msg)
		}
		return nil, fmt.Errorf("defining domain %q: %s", spec.Name, lvMessage(err))
	}
	defer d.Free()
	res.UUID, _ = d.GetUUIDString()
	log.Info("domain defined", "uuid", res.UUID, "type", host.domainType, "warnings", len(res.Warnings))

	if opts.StartAfter && !res.Started {
		if err := d.Create(); err != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("domain %q is defined but did not start: %s", spec.Name, lvMessage(err)))
		} else {
			res.Started = true
		}
	}
	return res, nil
}

// SourceXML describes the VM as it was on VMware, with its disks at their converted paths
// on this host: the input of `virt-v2v-in-place -i libvirtxml`. The disks sit on a SCSI bus
// as on VMware's pvscsi/LSI Logic controllers (so virt-v2v maps the guest's /dev/sdX names to
// the converted ones), the NICs keep their VMware models, and the rest is the domain Define
// would make.
func SourceXML(spec DomainSpec) (string, error) {
	if err := validate(spec); err != nil {
		return "", err
	}
	src := spec
	src.Disks = nil
	for _, d := range spec.Disks {
		d.Bus = "scsi"
		src.Disks = append(src.Disks, d)
	}
	var nics []resolvedNIC
	for _, n := range spec.NICs {
		// virt-v2v-in-place only reads the NICs (MACs, models); where they connect does not
		// matter to it.
		nics = append(nics, resolvedNIC{kind: "network", target: "default", mac: n.MAC, model: nicModel(n.Model)})
	}
	d, _, err := buildDomain(src, Options{}, host{domainType: "kvm"}, nics)
	if err != nil {
		return "", err
	}
	if validUUID(spec.BIOSUUID) {
		d.UUID = strings.ToLower(spec.BIOSUUID)
	}
	return d.Marshal()
}

// Undefine removes the domain name if, and only if, job jobID made it: the cleanup of a
// failed or cancelled job must never remove someone else's VM. A missing domain is not an
// error (cleanup is idempotent). A running domain is stopped first; its nvram goes too.
func Undefine(ctx context.Context, conn *lv.Connect, name, jobID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dom, err := conn.LookupDomainByName(name)
	if err != nil {
		if isCode(err, lv.ERR_NO_DOMAIN) {
			return nil
		}
		return fmt.Errorf("looking up domain %q: %s", name, lvMessage(err))
	}
	defer dom.Free()
	md, err := readMetadata(dom)
	if err != nil && !isCode(err, lv.ERR_NO_DOMAIN_METADATA) {
		return fmt.Errorf("reading metadata of domain %q: %s", name, lvMessage(err))
	}
	if md == nil || md.JobID != jobID {
		owner := "no migration job"
		if md != nil {
			owner = "job " + md.JobID
		}
		return fmt.Errorf("%w: domain %q belongs to %s, not job %s", ErrNotOwned, name, owner, jobID)
	}
	if active, _ := dom.IsActive(); active {
		if err := dom.Destroy(); err != nil && !isCode(err, lv.ERR_OPERATION_INVALID) {
			return fmt.Errorf("stopping domain %q: %s", name, lvMessage(err))
		}
	}
	flags := lv.DOMAIN_UNDEFINE_NVRAM | lv.DOMAIN_UNDEFINE_MANAGED_SAVE |
		lv.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | lv.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
	if err := dom.UndefineFlags(flags); err != nil {
		if !isCode(err, lv.ERR_NO_SUPPORT) && !isCode(err, lv.ERR_INVALID_ARG) {
			return fmt.Errorf("undefining domain %q: %s", name, lvMessage(err))
		}
		// Drivers without these flags (test://) have no nvram to remove either.
		if err := dom.Undefine(); err != nil {
			return fmt.Errorf("undefining domain %q: %s", name, lvMessage(err))
		}
	}
	return nil
}

// ReadMetadata returns the migration metadata of a defined domain, or nil if it has none.
func ReadMetadata(conn *lv.Connect, name string) (*Metadata, error) {
	dom, err := conn.LookupDomainByName(name)
	if err != nil {
		return nil, fmt.Errorf("looking up domain %q: %s", name, lvMessage(err))
	}
	defer dom.Free()
	md, err := readMetadata(dom)
	if err != nil && !isCode(err, lv.ERR_NO_DOMAIN_METADATA) {
		return nil, err
	}
	return md, nil
}

func readMetadata(dom *lv.Domain) (*Metadata, error) {
	// The persistent config is what a retry redefines and what survives restarts.
	s, err := dom.GetMetadata(lv.DOMAIN_METADATA_ELEMENT, MetadataNamespace, lv.DOMAIN_AFFECT_CONFIG)
	if err != nil {
		return nil, err
	}
	var md Metadata
	if err := xml.Unmarshal([]byte(s), &md); err != nil {
		return nil, fmt.Errorf("parsing migration metadata: %w", err)
	}
	return &md, nil
}

func metadataXML(spec DomainSpec, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<%s:migration xmlns:%s="%s">`, MetadataPrefix, MetadataPrefix, MetadataNamespace)
	for _, kv := range [][2]string{
		{"job_id", spec.JobID},
		{"source_vm_uuid", spec.SourceVMUUID},
		{"source_vm_path", spec.SourceVMPath},
		{"converted_at", now.UTC().Format(time.RFC3339)},
	} {
		if kv[1] == "" {
			continue
		}
		fmt.Fprintf(&b, "<%s:%s>", MetadataPrefix, kv[0])
		_ = xml.EscapeText(&b, []byte(kv[1]))
		fmt.Fprintf(&b, "</%s:%s>", MetadataPrefix, kv[0])
	}
	fmt.Fprintf(&b, "</%s:migration>", MetadataPrefix)
	return b.String()
}

func validate(s DomainSpec) error {
	var problems []string
	if s.Name == "" || strings.ContainsAny(s.Name, "/\x00") {
		problems = append(problems, fmt.Sprintf("name %q (non-empty, no '/')", s.Name))
	}
	if s.JobID == "" {
		problems = append(problems, "job id is required (it marks the domain as this job's)")
	}
	if s.VCPUs < 1 {
		problems = append(problems, fmt.Sprintf("vcpus %d", s.VCPUs))
	}
	if s.MemoryMiB < 1 {
		problems = append(problems, fmt.Sprintf("memory %d MiB", s.MemoryMiB))
	}
	switch s.Firmware {
	case "", FirmwareBIOS, FirmwareEFI:
	default:
		problems = append(problems, fmt.Sprintf("firmware %q (bios or efi)", s.Firmware))
	}
	switch s.Machine {
	case "", "q35", "pc":
	default:
		problems = append(problems, fmt.Sprintf("machine %q (q35 or pc)", s.Machine))
	}
	if len(s.Disks) == 0 {
		problems = append(problems, "no disks")
	}
	for i, d := range s.Disks {
		if !strings.HasPrefix(d.Path, "/") {
			problems = append(problems, fmt.Sprintf("disk %d: path %q is not absolute", i, d.Path))
		}
		switch d.Format {
		case "", "qcow2", "raw":
		default:
			problems = append(problems, fmt.Sprintf("disk %d: format %q (qcow2 or raw)", i, d.Format))
		}
		switch d.Bus {
		case "", "virtio", "sata", "scsi":
		default:
			problems = append(problems, fmt.Sprintf("disk %d: bus %q (virtio, sata or scsi)", i, d.Bus))
		}
	}
	for i, n := range s.NICs {
		if n.MAC != "" && !validMAC(n.MAC) {
			problems = append(problems, fmt.Sprintf("nic %d: MAC %q", i, n.MAC))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, strings.Join(problems, "; "))
	}
	return nil
}

// validUUID accepts the canonical 8-4-4-4-12 hex form.
func validUUID(u string) bool {
	if len(u) != 36 {
		return false
	}
	for i, r := range u {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}

func validMAC(m string) bool {
	parts := strings.Split(m, ":")
	if len(parts) != 6 {
		return false
	}
	for _, p := range parts {
		if len(p) != 2 || strings.Trim(strings.ToLower(p), "0123456789abcdef") != "" {
			return false
		}
	}
	return true
}

// host is what the definition depends on in this host.
type host struct {
	domainType string // kvm, qemu or test
	test       bool
}

func probeHost(conn *lv.Connect, opts Options) (host, error) {
	h := host{domainType: opts.DomainType}
	typ, err := conn.GetType()
	if err != nil {
		return h, fmt.Errorf("libvirt driver type: %s", lvMessage(err))
	}
	h.test = strings.EqualFold(typ, "test")
	if h.domainType != "" {
		return h, nil
	}
	switch {
	case h.test:
		h.domainType = "test"
	case kvmAvailable():
		h.domainType = "kvm"
	default:
		// No hardware virtualisation (nested or cloud hosts): TCG still runs the guest,
		// slowly, and the domain stays valid once moved to a KVM host.
		h.domainType = "qemu"
	}
	return h, nil
}

func kvmAvailable() bool {
	_, err := os.Stat("/dev/kvm")
	return err == nil
}

// ovmfCandidates are the (code, vars template) pairs Debian/Ubuntu (ovmf) and Fedora/RHEL
// (edk2-ovmf) install, best first: 4 MiB builds, non secure-boot (a migrated guest's boot
// chain is not known to be signed for OVMF's key set).
var ovmfCandidates = [][2]string{
	{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
	{"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
	{"/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"},
	{"/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"},
}

func findOVMF(opts Options) (code, vars string, err error) {
	if opts.OVMFCode != "" && opts.OVMFVars != "" {
		return opts.OVMFCode, opts.OVMFVars, nil
	}
	var looked []string
	for _, c := range ovmfCandidates {
		looked = append(looked, c[0])
		if fileExists(c[0]) && fileExists(c[1]) {
			return c[0], c[1], nil
		}
	}
	return "", "", fmt.Errorf("%w: looked for %s; install the ovmf package (Debian/Ubuntu) or edk2-ovmf (Fedora/RHEL)",
		ErrFirmwareMissing, strings.Join(looked, ", "))
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// buildDomain turns the spec into libvirt's domain XML model.
func buildDomain(spec DomainSpec, opts Options, h host, nics []resolvedNIC) (*libvirtxml.Domain, []string, error) {
	var warnings []string
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	machine := spec.Machine
	if machine == "" {
		machine = "q35"
	}
	d := &libvirtxml.Domain{
		Type:        h.domainType,
		Name:        spec.Name,
		Description: fmt.Sprintf("Migrated from VMware %s by HyperSDK job %s", spec.SourceVMPath, spec.JobID),
		Metadata:    &libvirtxml.DomainMetadata{XML: metadataXML(spec, now())},
		Memory:      &libvirtxml.DomainMemory{Value: uint(spec.MemoryMiB), Unit: "MiB"},
		CurrentMemory: &libvirtxml.DomainCurrentMemory{
			Value: uint(spec.MemoryMiB), Unit: "MiB",
		},
		VCPU: &libvirtxml.DomainVCPU{Placement: "static", Value: uint(spec.VCPUs)},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: machine, Type: "hvm"},
		},
		Features: &libvirtxml.DomainFeatureList{
			ACPI: &libvirtxml.DomainFeature{},
			APIC: &libvirtxml.DomainFeatureAPIC{},
		},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices:    &libvirtxml.DomainDeviceList{},
	}
	if h.test {
		// The test driver knows no machine types.
		d.OS.Type.Machine = ""
	}

	// Topology: VMware's cores per socket, when it divides the vCPUs.
	sockets, cores := spec.VCPUs, 1
	if c := spec.CoresPerSocket; c > 1 {
		if spec.VCPUs%c == 0 {
			sockets, cores = spec.VCPUs/c, c
		} else {
			warnings = append(warnings, fmt.Sprintf("%d vCPUs do not split into sockets of %d cores; using %d sockets of 1 core", spec.VCPUs, c, spec.VCPUs))
		}
	}
	// The CPU definition is the one the agent's probe booted a kernel with on this host:
	// host-model where it works (close to the host's CPU, still live-migratable), else
	// host-model without the features the host's KVM refuses, else qemu's default model.
	if opts.CPU != nil && h.domainType == "kvm" {
		d.CPU = domainCPU(*opts.CPU)
	}
	if d.CPU == nil {
		d.CPU = &libvirtxml.DomainCPU{}
	}
	d.CPU.Topology = &libvirtxml.DomainCPUTopology{Sockets: sockets, Dies: 1, Cores: cores, Threads: 1}

	if spec.Firmware == FirmwareEFI {
		code, vars, err := findOVMF(opts)
		if err != nil {
			return nil, nil, err
		}
		d.OS.Loader = &libvirtxml.DomainLoader{Path: code, Readonly: "yes", Type: "pflash"}
		// No nvram path: libvirt places a per-domain copy of the template under its nvram
		// dir (and Undefine with NVRAM removes it).
		d.OS.NVRam = &libvirtxml.DomainNVRam{Template: vars}
	}

	offset := "utc"
	if strings.HasPrefix(strings.ToLower(spec.GuestOS), "win") {
		offset = "localtime" // Windows keeps the RTC in local time
	}
	d.Clock = &libvirtxml.DomainClock{Offset: offset}

	// Disks.
	var vdN, sdN int
	needSCSI := false
	for i, disk := range spec.Disks {
		bus, format := disk.Bus, disk.Format
		if bus == "" {
			bus = "virtio"
		}
		if format == "" {
			format = "qcow2"
		}
		var dev string
		if bus == "virtio" {
			dev = "vd" + driveLetters(vdN)
			vdN++
		} else {
			dev = "sd" + driveLetters(sdN)
			sdN++
		}
		if bus == "scsi" {
			needSCSI = true
		}
		dd := libvirtxml.DomainDisk{
			Device: "disk",
			// discard=unmap keeps the images thin as the guest frees blocks.
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format, Discard: "unmap"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: disk.Path}},
			Target: &libvirtxml.DomainDiskTarget{Dev: dev, Bus: bus},
		}
		if i == 0 {
			dd.Boot = &libvirtxml.DomainDeviceBoot{Order: 1}
		}
		d.Devices.Disks = append(d.Devices.Disks, dd)
	}
	if needSCSI {
		zero := uint(0)
		d.Devices.Controllers = append(d.Devices.Controllers, libvirtxml.DomainController{Type: "scsi", Index: &zero, Model: "virtio-scsi"})
	}

	for _, n := range nics {
		iface := libvirtxml.DomainInterface{Model: &libvirtxml.DomainInterfaceModel{Type: n.model}}
		if n.mac != "" {
			iface.MAC = &libvirtxml.DomainInterfaceMAC{Address: strings.ToLower(n.mac)}
		}
		if n.kind == "bridge" {
			iface.Source = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: n.target}}
		} else {
			iface.Source = &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: n.target}}
		}
		d.Devices.Interfaces = append(d.Devices.Interfaces, iface)
	}

	if !h.test {
		// A console and a local-only display, so an operator can reach a guest whose
		// network did not come up after the move.
		port := uint(0)
		d.Devices.Serials = []libvirtxml.DomainSerial{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
			Target: &libvirtxml.DomainSerialTarget{Port: &port}}}
		if opts.ConsoleLog != "" {
			d.Devices.Serials[0].Log = &libvirtxml.DomainChardevLog{File: opts.ConsoleLog, Append: "on"}
		}
		d.Devices.Consoles = []libvirtxml.DomainConsole{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
			Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port}}}
		d.Devices.Graphics = []libvirtxml.DomainGraphic{{VNC: &libvirtxml.DomainGraphicVNC{AutoPort: "yes", Listen: "127.0.0.1"}}}
		// VGA: every guest has a driver for it, unlike virtio-gpu or QXL.
		d.Devices.Videos = []libvirtxml.DomainVideo{{Model: libvirtxml.DomainVideoModel{Type: "vga"}}}
		d.Devices.Inputs = []libvirtxml.DomainInput{{Type: "tablet", Bus: "usb"}}
		d.Devices.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "virtio"}
	}
	return d, warnings, nil
}

// driveLetters is the disk suffix: a..z, aa..az, ...
func driveLetters(i int) string {
	s := ""
	for i++; i > 0; i = (i - 1) / 26 {
		s = string(rune('a'+(i-1)%26)) + s
	}
	return s
}

func isCode(err error, code lv.ErrorNumber) bool {
	var e lv.Error
	return errors.As(err, &e) && e.Code == code
}

// lvMessage is libvirt's own message without the Go wrapper's codes.
func lvMessage(err error) string {
	var e lv.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}
