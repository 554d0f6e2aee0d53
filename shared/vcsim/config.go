package vcsim

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// ErrConfig marks an invalid Config or flag value.
var ErrConfig = errors.New("invalid simulator configuration")

func configErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
}

// FillMode says what Start writes into each flat extent.
type FillMode string

const (
	// FillNone leaves the whole extent a hole: it reads as zeros and allocates nothing.
	FillNone FillMode = "none"
	// FillZero writes real zero bytes (allocated, like an eager-zeroed thick disk).
	FillZero FillMode = "zero"
	// FillRandom writes pseudo-random bytes from Config.Seed.
	FillRandom FillMode = "random"
)

// Fill is the content of the flat extents: Mode over the first Fraction of each extent, the
// rest left as a hole.
type Fill struct {
	Mode     FillMode
	Fraction float64
}

// String renders the fill in the --fill flag syntax.
func (f Fill) String() string {
	if f.Mode == "" || f.Mode == FillNone {
		return string(FillNone)
	}
	return fmt.Sprintf("%s:%s", f.Mode, strconv.FormatFloat(f.Fraction, 'g', -1, 64))
}

// ParseFill parses "none", "zero", "zero:FRACTION", "random" or "random:FRACTION".
// A missing fraction means the whole extent.
func ParseFill(s string) (Fill, error) {
	mode, frac, hasFrac := strings.Cut(strings.TrimSpace(s), ":")
	f := Fill{Mode: FillMode(mode), Fraction: 1}
	switch f.Mode {
	case FillNone, "":
		if hasFrac {
			return Fill{}, configErr("fill %q: none takes no fraction", s)
		}
		return Fill{Mode: FillNone}, nil
	case FillZero, FillRandom:
	default:
		return Fill{}, configErr("fill %q: want none, zero[:FRACTION] or random[:FRACTION]", s)
	}
	if hasFrac {
		v, err := strconv.ParseFloat(frac, 64)
		if err != nil || v < 0 || v > 1 {
			return Fill{}, configErr("fill %q: fraction must be a number between 0 and 1", s)
		}
		f.Fraction = v
	}
	return f, nil
}

// ParseSize parses a byte size with an optional binary suffix: "1G", "512M", "64MiB",
// "1073741824". Suffixes are powers of 1024 (K, M, G, T; "B", "iB" optional).
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v < 0 {
		return 0, configErr("size %q: want a number with an optional K, M, G or T suffix", s)
	}
	if v > (1<<62)/mult {
		return 0, configErr("size %q is too large", s)
	}
	return v * mult, nil
}

// Config describes the simulated vCenter. Zero values mean the defaults of DefaultConfig.
type Config struct {
	// Listen is the host:port of the SDK endpoint; port 0 picks a free one. The default is
	// loopback: on 0.0.0.0 the simulator advertises a non-loopback address in its URLs.
	Listen string
	// VMs is the number of virtual machines, named NamePrefix+1 … under /DC0/vm.
	VMs int
	// NamePrefix names the VMs; default "vm-".
	NamePrefix string
	// DisksPerVM is the number of virtual disks per VM, all on one paravirtual SCSI controller.
	DisksPerVM int
	// DiskSize is the capacity of every disk in bytes; a multiple of 1 MiB.
	DiskSize int64
	// Fill is what the flat extents contain.
	Fill Fill
	// Seed makes FillRandom content reproducible: the same seed writes the same bytes.
	Seed int64
	// PowerOn leaves the VMs powered on; by default they are powered off.
	PowerOn bool
	// CPUs and MemoryMB size every VM.
	CPUs     int
	MemoryMB int
	// Firmware is "bios" or "efi".
	Firmware string
	// GuestID is the vSphere guest OS identifier of every VM (default ubuntu64Guest, or
	// debian12_64Guest with Guest linux).
	GuestID string
	// Guest "linux" puts a bootable guest on every VM's first disk: the raw image at
	// GuestImage (scripts/guest-image.sh builds it: Debian 12 as a VMware guest). The disk
	// is as large as the image if DiskSize is smaller; the other disks get Fill. Such VMs
	// have a vmxnet3 NIC, like VMware's Linux VMs.
	Guest      string
	GuestImage string
	// SCSIController is the disks' controller: pvscsi (default) or lsilogic.
	SCSIController string
	// Username and Password, when both set, are the only credentials the SDK accepts.
	// When empty, any non-empty user name and password log in (the simulator's default).
	Username string
	Password string
	// LeaseTimeout is how long an export lease lives without a progress call, as on ESXi.
	LeaseTimeout time.Duration
	// LeaseHostStar reports export device URLs with the host "*", as a standalone ESXi
	// does; clients must substitute the host they connected to.
	LeaseHostStar bool
	// PrepareExports converts every disk to a stream-optimized VMDK in the background right
	// after Start, so the first ExportVm lease is ready at once instead of after the
	// conversion (about 25 s per GiB of random data on one core). Off by default: it burns a
	// core that benchmarks of other transfer methods would notice.
	PrepareExports bool
	// QemuImg is the qemu-img binary used to make stream-optimized VMDKs for ExportVm.
	QemuImg string
	// Logger receives the simulator's own log lines; default slog.Default().
	Logger *slog.Logger
	// WriteRate, in MiB/s, makes the guest of every powered-on VM write its disks (see
	// writer.go); 0: guests write nothing.
	WriteRate float64
	// ChangedAreasPerCall is the most areas one QueryChangedDiskAreas answer holds
	// (default 1024); the caller pages through the rest.
	ChangedAreasPerCall int
	// Shapes are extra VMs, after the VMs ones, with what pre-flight validation looks at
	// (shapes.go).
	Shapes []Shape
}

// GuestLinux is the bootable guest Config.Guest can put on the first disk.
const GuestLinux = "linux"

// DefaultConfig is one powered-off VM with one empty 1 GiB disk on a loopback port picked by
// the kernel.
func DefaultConfig() Config {
	return Config{
		Listen:       "127.0.0.1:0",
		VMs:          1,
		NamePrefix:   "vm-",
		DisksPerVM:   1,
		DiskSize:     1 << 30,
		Fill:         Fill{Mode: FillNone},
		Seed:         1,
		CPUs:         2,
		MemoryMB:     2048,
		Firmware:     "bios",
		GuestID:      "ubuntu64Guest",
		LeaseTimeout: 5 * time.Minute,
		QemuImg:      "qemu-img",
	}
}

// withDefaults fills zero fields from DefaultConfig and validates the result.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	if c.VMs == 0 {
		c.VMs = d.VMs
	}
	if c.NamePrefix == "" {
		c.NamePrefix = d.NamePrefix
	}
	if c.DisksPerVM == 0 {
		c.DisksPerVM = d.DisksPerVM
	}
	if c.DiskSize == 0 {
		c.DiskSize = d.DiskSize
	}
	if c.Fill.Mode == "" {
		c.Fill = d.Fill
	}
	if c.Seed == 0 {
		c.Seed = d.Seed
	}
	if c.CPUs == 0 {
		c.CPUs = d.CPUs
	}
	if c.MemoryMB == 0 {
		c.MemoryMB = d.MemoryMB
	}
	if c.Firmware == "" {
		c.Firmware = d.Firmware
	}
	if c.GuestID == "" {
		c.GuestID = d.GuestID
		if c.Guest == GuestLinux {
			c.GuestID = "debian12_64Guest"
		}
	}
	if c.SCSIController == "" {
		c.SCSIController = "pvscsi"
	}
	if c.LeaseTimeout == 0 {
		c.LeaseTimeout = d.LeaseTimeout
	}
	if c.QemuImg == "" {
		c.QemuImg = d.QemuImg
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ChangedAreasPerCall == 0 {
		c.ChangedAreasPerCall = 1024
	}

	switch {
	case c.VMs < 0 || c.VMs > 10000:
		return c, configErr("vms must be between 0 and 10000")
	case c.DisksPerVM < 0 || c.DisksPerVM > 15:
		// One SCSI controller has 15 usable units (unit 7 is the controller itself).
		return c, configErr("disks per VM must be between 0 and 15")
	case c.DiskSize < 1<<20 || c.DiskSize%(1<<20) != 0:
		return c, configErr("disk size must be a positive multiple of 1 MiB")
	case c.Fill.Fraction < 0 || c.Fill.Fraction > 1:
		return c, configErr("fill fraction must be between 0 and 1")
	case c.CPUs < 1 || c.CPUs > 768:
		return c, configErr("cpus must be between 1 and 768")
	case c.MemoryMB < 4:
		return c, configErr("memory must be at least 4 MB")
	case c.Firmware != "bios" && c.Firmware != "efi":
		return c, configErr("firmware %q is not bios or efi", c.Firmware)
	case (c.Username == "") != (c.Password == ""):
		return c, configErr("set both username and password, or neither")
	case c.LeaseTimeout < 0:
		return c, configErr("lease timeout must not be negative")
	case c.SCSIController != "pvscsi" && c.SCSIController != "lsilogic":
		return c, configErr("scsi controller %q is not pvscsi or lsilogic", c.SCSIController)
	case c.Guest != "" && c.Guest != GuestLinux:
		return c, configErr("guest %q is not linux", c.Guest)
	case c.Guest == GuestLinux && c.GuestImage == "":
		return c, configErr("guest linux needs its image (build it with scripts/guest-image.sh)")
	case c.WriteRate < 0 || c.WriteRate > 4096:
		return c, configErr("write rate must be between 0 and 4096 MiB/s")
	case c.ChangedAreasPerCall < 1:
		return c, configErr("changed areas per call must be at least 1")
	}
	if err := validateShapes(c.Shapes, c.DisksPerVM); err != nil {
		return c, err
	}
	switch c.Fill.Mode {
	case FillNone, FillZero, FillRandom:
	default:
		return c, configErr("fill mode %q is not none, zero or random", c.Fill.Mode)
	}
	return c, nil
}
