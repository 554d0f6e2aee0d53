package capacity

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// The virtualisation probe decides how this host runs guests: hardware KVM with which CPU
// definition, or TCG. /dev/kvm alone proves nothing on machines of this kind: it may be
// kvm_pvm, a paravirtual KVM for nested clouds that runs only guests built for it, where a
// domain with cpu host-model does not even start (qemu: "failed to set MSR 0x10a") and one
// that starts hangs in an ordinary kernel's first instructions. So the probe boots a real
// kernel under each candidate definition and believes only the kernel's own console; what
// it decides is cached per boot of the host (the hardware and kernel modules cannot change
// without a reboot) and shared by every agent on the host.

// HostVirt is what the host says about virtualisation before any guest runs.
type HostVirt struct {
	DevKVM bool // /dev/kvm exists
	// HWFlag is the CPU's virtualisation extension in /proc/cpuinfo: "vmx", "svm" or "".
	HWFlag string
	// Modules are the loaded KVM modules (kvm_intel, kvm_amd, kvm_pvm).
	Modules []string
}

// Hardware reports real hardware virtualisation: the CPU extension and its module.
func (h HostVirt) Hardware() bool {
	return h.DevKVM && h.HWFlag != "" && (slices.Contains(h.Modules, "kvm_intel") || slices.Contains(h.Modules, "kvm_amd"))
}

func (h HostVirt) String() string {
	if !h.DevKVM {
		return "no /dev/kvm"
	}
	mods := "no kvm_intel/kvm_amd module"
	if len(h.Modules) > 0 {
		mods = strings.Join(h.Modules, ",")
	}
	flag := "no vmx/svm CPU flag"
	if h.HWFlag != "" {
		flag = h.HWFlag
	}
	return fmt.Sprintf("/dev/kvm (%s, %s)", mods, flag)
}

// ReadHostVirt reads /dev/kvm, the CPU flags and the loaded KVM modules.
func ReadHostVirt() HostVirt {
	var h HostVirt
	_, err := os.Stat("/dev/kvm")
	h.DevKVM = err == nil
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		h.HWFlag = cpuVirtFlag(f)
		f.Close()
	}
	for _, m := range []string{"kvm_intel", "kvm_amd", "kvm_pvm"} {
		if _, err := os.Stat(filepath.Join("/sys/module", m)); err == nil {
			h.Modules = append(h.Modules, m)
		}
	}
	return h
}

// cpuVirtFlag returns "vmx" or "svm" if the first CPU's flags have it.
func cpuVirtFlag(r io.Reader) string {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		key, val, ok := strings.Cut(s.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, f := range strings.Fields(val) {
			if f == "vmx" || f == "svm" {
				return f
			}
		}
		return ""
	}
	return ""
}

// CPUDef is a CPU definition a domain can get.
type CPUDef struct {
	// Mode is "host-model", "host-passthrough", or "" for no <cpu> element (qemu's default
	// model).
	Mode string
	// Disable lists features turned off on top of Mode.
	Disable []string
}

func (c CPUDef) String() string {
	if c.Mode == "" {
		return "default"
	}
	s := c.Mode
	for _, f := range c.Disable {
		s += " -" + f
	}
	return s
}

// ParseCPUDef reads the String form back ("host-model -arch-capabilities", "default").
func ParseCPUDef(s string) CPUDef {
	f := strings.Fields(s)
	if len(f) == 0 || f[0] == "default" {
		return CPUDef{}
	}
	c := CPUDef{Mode: f[0]}
	for _, x := range f[1:] {
		c.Disable = append(c.Disable, strings.TrimPrefix(x, "-"))
	}
	return c
}

// TrialResult is what one trial boot showed.
type TrialResult struct {
	// Started: the hypervisor started the domain. Error says why not.
	Started bool
	Error   string
	// Booted: the kernel's console proved it ran to the end of its initialisation.
	Booted bool
	// Evidence is the console line that proved it, or else the last one seen.
	Evidence string
	Seconds  float64
}

func (r TrialResult) summary() string {
	switch {
	case !r.Started:
		return "did not start (" + shorten(r.Error, 120) + ")"
	case r.Booted:
		return fmt.Sprintf("booted a kernel in %.1f s", r.Seconds)
	case r.Evidence != "":
		return fmt.Sprintf("started, kernel stuck after %q for %.0f s", shorten(r.Evidence, 60), r.Seconds)
	}
	return fmt.Sprintf("started, no console output in %.0f s", r.Seconds)
}

// Trial boots a kernel in a throw-away domain of the type ("kvm") with the CPU definition.
type Trial func(ctx context.Context, domainType string, cpu CPUDef) TrialResult

// msrFeatures names the CPU feature behind an MSR that KVM refuses to set: qemu aborts with
// "failed to set MSR 0x10a" when the host-model CPU has a feature whose MSR the (nested or
// paravirtual) KVM does not implement. Disabling that feature is what makes host-model start.
var msrFeatures = map[string]string{
	"0x10a": "arch-capabilities", // IA32_ARCH_CAPABILITIES
	"0x122": "tsx-ctrl",          // IA32_TSX_CTRL
	"0x48":  "spec-ctrl",         // IA32_SPEC_CTRL
}

// failingFeature finds the feature to disable from a start error, or "".
func failingFeature(msg string) string {
	_, rest, ok := strings.Cut(msg, "failed to set MSR ")
	if !ok {
		return ""
	}
	f := strings.FieldsFunc(rest, func(r rune) bool { return r == ' ' || r == ',' || r == ':' || r == ')' || r == '\n' })
	if len(f) == 0 {
		return ""
	}
	return msrFeatures[strings.ToLower(f[0])]
}

// cpuRefused reports a start failure that is about the CPU definition or KVM itself.
func cpuRefused(msg string) bool {
	m := strings.ToLower(msg)
	return failingFeature(msg) != "" || strings.Contains(m, "cpu") || strings.Contains(m, "kvm") || strings.Contains(m, "msr")
}

// maxDisabled bounds the host-model retries: each trial costs a qemu start.
const maxDisabled = 3

// Decide chooses the virtualisation from the host facts and trial boots. trial nil means no
// trial is possible (no kernel to boot): then the host facts decide alone. It never fails:
// TCG always runs a guest, slowly.
func Decide(ctx context.Context, h HostVirt, trial Trial) proto.Virtualization {
	tcg := func(why string) proto.Virtualization {
		return proto.Virtualization{Type: proto.VirtTCG, CPU: CPUDef{}.String(), Reason: why}
	}
	if !h.DevKVM {
		return tcg("TCG: no /dev/kvm on this host")
	}
	if trial == nil {
		if h.Hardware() {
			return proto.Virtualization{Type: proto.VirtKVM, CPU: "host-model", LibguestfsKVM: true,
				Reason: "hardware KVM: " + h.String() + " (no kernel to boot a trial with: not confirmed)"}
		}
		return tcg("TCG: " + h.String() + " is not hardware KVM and no kernel to boot a trial with")
	}

	var notes []string
	// tested: some trial told something about KVM here (it started, or KVM refused its
	// CPU); otherwise every trial failed for reasons of its own.
	tested := false
	try := func(cpu CPUDef) TrialResult {
		r := trial(ctx, proto.VirtKVM, cpu)
		notes = append(notes, cpu.String()+": "+r.summary())
		tested = tested || r.Started || cpuRefused(r.Error)
		return r
	}
	var chosen *CPUDef
	cpu := CPUDef{Mode: "host-model"}
	for ctx.Err() == nil {
		r := try(cpu)
		if r.Booted {
			chosen = &cpu
			break
		}
		feat := failingFeature(r.Error)
		if r.Started || feat == "" || slices.Contains(cpu.Disable, feat) || len(cpu.Disable) >= maxDisabled {
			break
		}
		cpu = CPUDef{Mode: cpu.Mode, Disable: append(slices.Clone(cpu.Disable), feat)}
	}
	if chosen == nil && ctx.Err() == nil {
		if r := try(CPUDef{}); r.Booted {
			chosen = &CPUDef{}
		}
	}
	evidence := strings.Join(notes, "; ")
	if chosen == nil && !tested && h.Hardware() {
		// No trial domain started, and not because of its CPU: the trial itself cannot run
		// here (a security policy, a kernel qemu may not read), which says nothing about
		// the hardware, and hardware KVM runs host-model.
		return proto.Virtualization{Type: proto.VirtKVM, CPU: "host-model", LibguestfsKVM: true,
			Reason: "hardware KVM: " + h.String() + " (no trial domain started, not confirmed: " + evidence + ")"}
	}
	if chosen == nil {
		return tcg("TCG: KVM did not boot a kernel: " + h.String() + "; " + evidence)
	}
	v := proto.Virtualization{Type: proto.VirtKVM, CPU: chosen.String()}
	// libguestfs's appliance (virt-v2v) runs qemu with -cpu host, i.e. host-passthrough.
	if chosen.Mode == "host-passthrough" && len(chosen.Disable) == 0 {
		v.LibguestfsKVM = true
	} else if ctx.Err() == nil {
		v.LibguestfsKVM = try(CPUDef{Mode: "host-passthrough"}).Booted
		evidence = strings.Join(notes, "; ")
	}
	kind := "KVM"
	if h.Hardware() {
		kind = "hardware KVM"
	}
	v.Reason = fmt.Sprintf("%s: %s; %s", kind, h.String(), evidence)
	return v
}

func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// VirtConfig configures a VirtProbe. Zero values mean the defaults.
type VirtConfig struct {
	// CacheFile keeps the decision for the current boot of the host (required); agents
	// sharing the file share one probe.
	CacheFile  string
	LibvirtURI string
	// Trial boots a kernel (agent/libvirt's BootTrial); nil: decide from host facts only.
	Trial Trial
	// Host reads the host facts (default ReadHostVirt); BootID the boot's identity
	// (default /proc/sys/kernel/random/boot_id). Tests replace them.
	Host   func() HostVirt
	BootID func() string
	// Fixed, when set, is the decision: nothing is probed or cached (an operator's
	// override, tests).
	Fixed  *proto.Virtualization
	Logger *slog.Logger
}

// virtCacheVersion changes when the decision rules change, so old entries are not reused.
const virtCacheVersion = 1

type virtCache struct {
	Version        int                  `json:"version"`
	BootID         string               `json:"boot_id"`
	LibvirtURI     string               `json:"libvirt_uri"`
	Host           string               `json:"host"`
	ProbedAt       time.Time            `json:"probed_at"`
	Virtualization proto.Virtualization `json:"virtualization"`
}

// VirtProbe runs the decision once and hands it to whoever waits.
type VirtProbe struct {
	cfg  VirtConfig
	log  *slog.Logger
	once sync.Once
	done chan struct{}
	v    proto.Virtualization
}

// NewVirtProbe returns a probe; Run decides.
func NewVirtProbe(cfg VirtConfig) *VirtProbe {
	if cfg.Host == nil {
		cfg.Host = ReadHostVirt
	}
	if cfg.BootID == nil {
		cfg.BootID = readBootID
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &VirtProbe{cfg: cfg, log: cfg.Logger.With("component", "virt-probe"), done: make(chan struct{})}
}

func readBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Run decides (or reads this boot's decision from the cache) and logs it; TCG loudly. Only
// the first call works; later ones return its result.
func (p *VirtProbe) Run(ctx context.Context) proto.Virtualization {
	p.once.Do(func() {
		defer close(p.done)
		p.v = p.decide(ctx)
		if p.v.Type == proto.VirtTCG {
			p.log.Warn("VIRTUALISATION: TCG (software emulation): every migrated guest will run 10-50 times slower than under KVM on this host",
				"reason", p.v.Reason)
		} else {
			p.log.Info("virtualisation decided", "type", p.v.Type, "cpu", p.v.CPU, "libguestfs_kvm", p.v.LibguestfsKVM, "reason", p.v.Reason)
		}
		if !p.v.LibguestfsKVM {
			p.log.Warn("virt-v2v (libguestfs) will run under TCG on this host: a guest conversion takes minutes (5-12 for a small Linux guest on a 2-core host)")
		}
	})
	return p.v
}

// Wait returns the decision once Run has made it.
func (p *VirtProbe) Wait(ctx context.Context) (proto.Virtualization, error) {
	select {
	case <-p.done:
		return p.v, nil
	case <-ctx.Done():
		return proto.Virtualization{}, fmt.Errorf("waiting for the virtualisation probe: %w", ctx.Err())
	}
}

// Result is the decision, or nil while the probe runs.
func (p *VirtProbe) Result() *proto.Virtualization {
	select {
	case <-p.done:
		v := p.v
		return &v
	default:
		return nil
	}
}

func (p *VirtProbe) decide(ctx context.Context) proto.Virtualization {
	if p.cfg.Fixed != nil {
		return *p.cfg.Fixed
	}
	host := p.cfg.Host()
	bootID := p.cfg.BootID()
	path := p.cfg.CacheFile
	// One prober per host at a time: agents started together wait for the first one's
	// decision instead of booting trial guests side by side.
	unlock := lockFile(path+".lock", p.log)
	defer unlock()
	if c, ok := p.readCache(path, bootID, host); ok {
		p.log.Debug("virtualisation from this boot's probe", "file", path, "probed_at", c.ProbedAt)
		return c.Virtualization
	}
	start := time.Now()
	if host.DevKVM && p.cfg.Trial != nil {
		p.log.Info("probing virtualisation: booting a kernel under each candidate CPU definition", "host", host.String())
	}
	v := Decide(ctx, host, p.cfg.Trial)
	if ctx.Err() != nil {
		return v // not cached: an interrupted probe decided on partial evidence
	}
	p.log.Info("virtualisation probe done", "took", time.Since(start).Round(time.Millisecond))
	p.writeCache(path, virtCache{Version: virtCacheVersion, BootID: bootID, LibvirtURI: p.cfg.LibvirtURI,
		Host: host.String(), ProbedAt: time.Now().UTC(), Virtualization: v})
	return v
}

func (p *VirtProbe) readCache(path, bootID string, host HostVirt) (virtCache, bool) {
	var c virtCache
	b, err := os.ReadFile(path)
	if err != nil {
		return c, false
	}
	if err := json.Unmarshal(b, &c); err != nil {
		p.log.Warn("ignoring unreadable virtualisation cache", "file", path, "err", err)
		return c, false
	}
	ok := c.Version == virtCacheVersion && bootID != "" && c.BootID == bootID &&
		c.LibvirtURI == p.cfg.LibvirtURI && c.Host == host.String() && c.Virtualization.Type != ""
	return c, ok
}

func (p *VirtProbe) writeCache(path string, c virtCache) {
	b, _ := json.MarshalIndent(c, "", "  ")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		p.log.Warn("cannot cache the virtualisation decision", "file", path, "err", err)
		return
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err == nil {
		err = os.Rename(tmp, path)
		if err == nil {
			return
		}
	}
	p.log.Warn("cannot cache the virtualisation decision: every agent start will probe again", "file", path)
}

// lockFile takes an exclusive flock; without one (read-only dir) it does not lock.
func lockFile(path string, log *slog.Logger) func() {
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		log.Debug("virtualisation probe runs unlocked", "err", err)
		return func() {}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return func() {}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
}
