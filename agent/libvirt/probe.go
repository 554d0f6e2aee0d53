package libvirt

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/hypersdk/hypersdk/agent/capacity"
)

// BootTrial is the virtualisation probe's trial (capacity.Trial): it boots a real kernel,
// the host's own, with no disk and no initramfs, in a throw-away transient domain, and reads
// its serial console. A kernel that prints "VFS: Unable to mount root fs" has run its whole
// initialisation (CPU setup, SMP, timers, every built-in driver) on that CPU definition,
// which "the domain started" does not show: on kvm_pvm a domain starts and its kernel hangs
// in its first instructions.
type BootTrial struct {
	URI string
	// Kernel is the vmlinuz to boot (FindKernel: the host's newest).
	Kernel string
	// Timeout bounds one trial; Stall ends it early when the console has been silent that
	// long (a kernel that stopped printing is stuck: an ordinary boot prints every few
	// milliseconds).
	Timeout time.Duration
	Stall   time.Duration
	Logger  *slog.Logger
}

// trialSeq keeps trial domain names unique within the process.
var trialSeq atomic.Int64

// Trial markers: the kernel reached the mount of its root file system (there is none).
var trialBootedMarkers = []string{"VFS: Unable to mount root fs", "VFS: Cannot open root device"}

// FindKernel returns the newest /boot/vmlinuz-* or "" when there is none.
func FindKernel() string {
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	var regular []string
	for _, k := range ks {
		if st, err := os.Stat(k); err == nil && st.Mode().IsRegular() {
			regular = append(regular, k)
		}
	}
	if len(regular) == 0 {
		return ""
	}
	sort.Slice(regular, func(i, j int) bool { return versionLess(regular[i], regular[j]) })
	return regular[len(regular)-1]
}

// versionLess compares kernel file names by their dotted/dashed numbers.
func versionLess(a, b string) bool {
	fa, fb := strings.FieldsFunc(a, splitVersion), strings.FieldsFunc(b, splitVersion)
	for i := 0; i < len(fa) && i < len(fb); i++ {
		if fa[i] == fb[i] {
			continue
		}
		var na, nb int
		_, ea := fmt.Sscanf(fa[i], "%d", &na)
		_, eb := fmt.Sscanf(fb[i], "%d", &nb)
		if ea == nil && eb == nil && na != nb {
			return na < nb
		}
		return fa[i] < fb[i]
	}
	return len(fa) < len(fb)
}

func splitVersion(r rune) bool { return r == '.' || r == '-' || r == '/' }

// Run is a capacity.Trial.
func (b BootTrial) Run(ctx context.Context, domainType string, cpu capacity.CPUDef) capacity.TrialResult {
	timeout, stall := b.Timeout, b.Stall
	if timeout <= 0 {
		timeout = 90 * time.Second
	}
	if stall <= 0 {
		stall = 20 * time.Second
	}
	log := b.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := Connect(ctx, b.URI)
	if err != nil {
		return capacity.TrialResult{Error: err.Error()}
	}
	defer conn.Close()

	name := fmt.Sprintf("hypersdk-virt-probe-%d-%d", os.Getpid(), trialSeq.Add(1))
	doc, err := trialDomain(name, domainType, cpu, b.Kernel).Marshal()
	if err != nil {
		return capacity.TrialResult{Error: err.Error()}
	}
	start := time.Now()
	dom, console, err := startWatched(conn, func(flags lv.DomainCreateFlags) (*lv.Domain, error) {
		return conn.DomainCreateXML(doc, flags)
	})
	if dom != nil {
		defer func() {
			_ = dom.Destroy() // transient: destroying it removes it
			dom.Free()
		}()
	}
	if err != nil {
		log.Info("virtualisation trial did not start", "type", domainType, "cpu", cpu.String(), "err", lvMessage(err))
		return capacity.TrialResult{Error: lvMessage(err)}
	}
	defer console.Close()

	res := capacity.TrialResult{Started: true}
	lastLen, lastChange := -1, time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		text, ended := console.Text()
		for _, m := range trialBootedMarkers {
			if strings.Contains(text, m) {
				res.Booted, res.Evidence = true, m
			}
		}
		if len(text) != lastLen {
			lastLen, lastChange = len(text), time.Now()
		}
		if res.Booted || ended || time.Since(lastChange) > stall {
			break
		}
		select {
		case <-console.Changed():
		case <-tick.C:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	res.Seconds = time.Since(start).Seconds()
	if !res.Booted {
		text, _ := console.Text()
		if t := Tail(text, 1); len(t) > 0 {
			res.Evidence = t[0]
		}
	}
	log.Info("virtualisation trial", "type", domainType, "cpu", cpu.String(), "booted", res.Booted,
		"seconds", fmt.Sprintf("%.1f", res.Seconds), "last", res.Evidence)
	return res
}

// trialDomain is the smallest domain that boots a kernel: no disk, no network, no display.
// qemu runs it as root without relabelling, because the kernel under /boot is readable by
// root only and must not be chowned to the qemu user, even for a moment.
func trialDomain(name, domainType string, cpu capacity.CPUDef, kernel string) *libvirtxml.Domain {
	port := uint(0)
	d := &libvirtxml.Domain{
		Type:          domainType,
		Name:          name,
		Description:   "HyperSDK agent virtualisation probe (transient; destroyed after the trial)",
		Memory:        &libvirtxml.DomainMemory{Value: 256, Unit: "MiB"},
		CurrentMemory: &libvirtxml.DomainCurrentMemory{Value: 256, Unit: "MiB"},
		VCPU:          &libvirtxml.DomainVCPU{Placement: "static", Value: 1},
		OS: &libvirtxml.DomainOS{
			Type:   &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "q35", Type: "hvm"},
			Kernel: kernel,
			// panic=-1: reboot at once on the (expected) panic, and on_reboot=destroy ends
			// the domain, so a trial that booted costs no waiting.
			Cmdline: "console=ttyS0,115200n8 panic=-1",
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		CPU:        domainCPU(cpu),
		OnPoweroff: "destroy",
		OnReboot:   "destroy",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Serials: []libvirtxml.DomainSerial{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &port}}},
			Consoles: []libvirtxml.DomainConsole{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port}}},
			Videos:     []libvirtxml.DomainVideo{{Model: libvirtxml.DomainVideoModel{Type: "none"}}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "none"},
		},
		SecLabel: []libvirtxml.DomainSecLabel{{Type: "static", Model: "dac", Relabel: "no", Label: "+0:+0"}},
	}
	return d
}

// domainCPU is the <cpu> element of a CPU definition (nil: none, qemu's default model).
func domainCPU(c capacity.CPUDef) *libvirtxml.DomainCPU {
	if c.Mode == "" {
		return nil
	}
	x := &libvirtxml.DomainCPU{Mode: c.Mode}
	for _, f := range c.Disable {
		x.Features = append(x.Features, libvirtxml.DomainCPUFeature{Policy: "disable", Name: f})
	}
	return x
}
