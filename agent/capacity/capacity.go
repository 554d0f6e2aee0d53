// Package capacity probes the agent's host: how much it can hold (CPUs, memory, storage
// dir), what it can do (qemu-img, nbdkit and its plugins, nbdcopy, VDDK, libvirt,
// virt-v2v) and how it runs guests (virt.go: KVM with which CPU, or TCG). The numbers are
// read on every call (cheap); tool discovery runs external commands and is cached.
package capacity

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

var (
	// ErrStorageDir: the storage dir cannot be measured (missing, not a directory, no access).
	ErrStorageDir = errors.New("storage dir unavailable")
	// ErrMeminfo: /proc/meminfo is unreadable or lacks the fields the probe needs.
	ErrMeminfo = errors.New("meminfo unavailable")
)

// Config says where to look. Zero values mean the defaults of DefaultConfig.
type Config struct {
	// StorageDir is where converted disks are written; its filesystem is measured.
	StorageDir string
	// LibvirtURI is the hypervisor the agent defines domains on.
	LibvirtURI string
	// VDDKLibDir is where VMware's VDDK is unpacked (DIR/lib64/libvixDiskLib.so.N).
	VDDKLibDir string
	// VDDKProbe tells whether VDDK loads from a directory, and if not why (the agent passes
	// agent/transfer's, which tries it in a reader process). Nil: no VDDK.
	VDDKProbe func(ctx context.Context, libdir string) (ok bool, reason string)
	// LibvirtPing checks the hypervisor (the caller may pass one built on its libvirt
	// connection). Nil runs `virsh -c URI version`, so this package needs no cgo.
	LibvirtPing func(ctx context.Context) error
	// Virtualization reports the virtualisation probe's decision (nil while it runs, or
	// when the agent has no probe): advertised with the capabilities.
	Virtualization func() *proto.Virtualization
	// ToolsTTL is how long tool discovery is trusted (tools change when packages are
	// installed, rarely). LibvirtTTL is shorter because libvirtd restarts.
	ToolsTTL   time.Duration
	LibvirtTTL time.Duration
	// MinFreeStorage is the free space below which the storage dir fails its health check
	// (default 1 GiB: no disk of a real VM fits in less).
	MinFreeStorage uint64
	// Controllers reports whether a controller answers the agent (nil: not checked); the
	// worker knows, from its lease requests.
	Controllers func() error
	// CommandTimeout bounds every external command: a hung virsh (libvirtd stuck on a
	// lock) must not stall the agent's metadata refresh.
	CommandTimeout time.Duration
	Logger         *slog.Logger
}

// DefaultConfig is a one-machine setup.
func DefaultConfig() Config {
	return Config{
		StorageDir:     "/var/lib/hypersdk/storage",
		LibvirtURI:     "qemu:///system",
		VDDKLibDir:     "/usr/lib64/vmware-vix-disklib",
		ToolsTTL:       10 * time.Minute,
		LibvirtTTL:     30 * time.Second,
		CommandTimeout: 5 * time.Second,
		MinFreeStorage: 1 << 30,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.StorageDir == "" {
		c.StorageDir = d.StorageDir
	}
	if c.LibvirtURI == "" {
		c.LibvirtURI = d.LibvirtURI
	}
	if c.VDDKLibDir == "" {
		c.VDDKLibDir = d.VDDKLibDir
	}
	if c.ToolsTTL <= 0 {
		c.ToolsTTL = d.ToolsTTL
	}
	if c.LibvirtTTL <= 0 {
		c.LibvirtTTL = d.LibvirtTTL
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = d.CommandTimeout
	}
	if c.MinFreeStorage == 0 {
		c.MinFreeStorage = d.MinFreeStorage
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Prober measures the host. Safe for concurrent use.
type Prober struct {
	cfg Config

	// mu serialises the slow refreshes: concurrent callers wait for one probe instead of
	// each forking the same commands.
	mu          sync.Mutex
	tools       tools
	toolsAt     time.Time
	reachable   bool
	reachableAt time.Time
	libvirtErr  error
	writable    error // the storage dir's last write test (nil: it wrote)
	writableAt  time.Time
	unhealthy   string // the last failed checks logged, so changes are logged once
}

// tools is the cached part of the capabilities.
type tools struct {
	qemuImg        bool
	qemuImgVersion string
	nbdkit         bool
	plugins        []string
	nbdcopy        bool
	vddk           bool
	vddkReason     string
	virtV2V        bool
}

// New returns a prober; nothing is probed until the first call.
func New(cfg Config) *Prober {
	return &Prober{cfg: cfg.withDefaults()}
}

// Probe returns the current capacity, with the health checks' verdict (health.go), and
// capabilities. The error reports a capacity part that could not be measured (its fields
// are zero); the capabilities are always returned.
func (p *Prober) Probe(ctx context.Context) (proto.AgentCapacity, proto.AgentCapabilities, error) {
	c, err := p.Capacity()
	caps := p.Capabilities(ctx)
	p.checkHealth(&c, caps, err)
	return c, caps, err
}

// Capacity reads CPUs, memory and the storage dir's filesystem now.
func (p *Prober) Capacity() (proto.AgentCapacity, error) {
	c := proto.AgentCapacity{CPUs: runtime.NumCPU()}
	var errs []error
	f, err := os.Open("/proc/meminfo")
	if err == nil {
		c.MemoryTotalBytes, c.MemoryFreeBytes, err = ReadMeminfo(f)
		f.Close()
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("%w: %v", ErrMeminfo, err))
	}
	c.StorageFreeBytes, c.StorageTotalBytes, err = StorageSpace(p.cfg.StorageDir)
	if err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// Capabilities returns the tools (cached for ToolsTTL) and libvirt's reachability (cached
// for LibvirtTTL).
func (p *Prober) Capabilities(ctx context.Context) proto.AgentCapabilities {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.toolsAt.IsZero() || now.Sub(p.toolsAt) >= p.cfg.ToolsTTL {
		p.tools = p.probeTools(ctx)
		p.toolsAt = time.Now()
	}
	if p.reachableAt.IsZero() || now.Sub(p.reachableAt) >= p.cfg.LibvirtTTL {
		was, first := p.reachable, p.reachableAt.IsZero()
		err := p.pingLibvirt(ctx)
		p.reachable, p.reachableAt, p.libvirtErr = err == nil, time.Now(), err
		// Log transitions only: a host without libvirtd would otherwise log every TTL.
		if err != nil && (was || first) {
			p.cfg.Logger.Warn("libvirt unreachable", "uri", p.cfg.LibvirtURI, "err", err)
		} else if err == nil && !was && !first {
			p.cfg.Logger.Info("libvirt reachable again", "uri", p.cfg.LibvirtURI)
		}
	}
	t := p.tools
	c := proto.AgentCapabilities{
		QemuImg: t.qemuImg, QemuImgVersion: t.qemuImgVersion,
		Nbdkit: t.nbdkit, NbdkitPlugins: append([]string(nil), t.plugins...),
		Nbdcopy: t.nbdcopy, VDDK: t.vddk,
		LibvirtURI: p.cfg.LibvirtURI, LibvirtReachable: p.reachable,
		VirtV2V: t.virtV2V,
	}
	if p.cfg.Virtualization != nil {
		c.Virtualization = p.cfg.Virtualization()
	}
	c.Methods = Methods(c)
	return c
}

// Invalidate makes the next call probe everything again (after installing a tool, on
// SIGHUP).
func (p *Prober) Invalidate() {
	p.mu.Lock()
	p.toolsAt, p.reachableAt, p.writableAt = time.Time{}, time.Time{}, time.Time{}
	p.mu.Unlock()
}

// Methods derives the transfer methods the tools allow, in proto.ConversionMethods order.
// Every method needs qemu-img; vddk reads through VMware's VDDK (loaded by the agent's
// reader process), https and nfc are read by the agent itself (ranged requests; the
// stream-optimized VMDK decoded as it arrives).
func Methods(c proto.AgentCapabilities) []string {
	if !c.QemuImg {
		return nil
	}
	var m []string
	if c.VDDK {
		m = append(m, "vddk")
	}
	return append(m, "https", "nfc")
}

func hasPlugin(plugins []string, name string) bool {
	for _, p := range plugins {
		if p == name {
			return true
		}
	}
	return false
}

// ReadMeminfo returns MemTotal and MemAvailable in bytes. MemAvailable, not MemFree:
// page cache is reclaimable, and a host busy converting disks has most of its "free"
// memory in cache.
func ReadMeminfo(r io.Reader) (total, available uint64, err error) {
	var haveTotal, haveAvail bool
	s := bufio.NewScanner(r)
	for s.Scan() {
		key, rest, ok := strings.Cut(s.Text(), ":")
		if !ok || (key != "MemTotal" && key != "MemAvailable") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, 0, fmt.Errorf("%s: no value", key)
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", key, err)
		}
		if len(f) > 1 && f[1] == "kB" {
			v *= 1024
		}
		if key == "MemTotal" {
			total, haveTotal = v, true
		} else {
			available, haveAvail = v, true
		}
	}
	if err := s.Err(); err != nil {
		return 0, 0, err
	}
	if !haveTotal || !haveAvail {
		return 0, 0, errors.New("MemTotal or MemAvailable missing")
	}
	return total, available, nil
}

// StorageSpace returns the bytes available to the agent (not root's reserve) and the size
// of the filesystem holding dir.
func StorageSpace(dir string) (free, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("%w: %s: %v", ErrStorageDir, dir, err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return 0, 0, fmt.Errorf("%w: %s is not a directory", ErrStorageDir, dir)
	}
	bs := uint64(st.Bsize)
	return st.Bavail * bs, st.Blocks * bs, nil
}

func (p *Prober) probeTools(ctx context.Context) tools {
	var t tools
	log := p.cfg.Logger
	if path, err := exec.LookPath("qemu-img"); err == nil {
		t.qemuImg = true
		out, err := p.run(ctx, path, "--version")
		if err != nil {
			log.Warn("qemu-img --version failed", "err", err)
		}
		t.qemuImgVersion = parseQemuImgVersion(out)
	}
	if path, err := exec.LookPath("nbdkit"); err == nil {
		t.nbdkit = true
		t.plugins = p.nbdkitPlugins(ctx, path)
	}
	_, err := exec.LookPath("nbdcopy")
	t.nbdcopy = err == nil
	if p.cfg.VDDKProbe != nil {
		t.vddk, t.vddkReason = p.cfg.VDDKProbe(ctx, p.cfg.VDDKLibDir)
	} else {
		t.vddkReason = "not probed"
	}
	// Say why there is no vddk method when it changes (and at start), not every refresh.
	if t.vddk != p.tools.vddk || t.vddkReason != p.tools.vddkReason {
		if t.vddk {
			log.Info("VDDK loads: the vddk method is available", "libdir", p.cfg.VDDKLibDir)
		} else {
			log.Info("no vddk method", "reason", t.vddkReason)
		}
	}
	_, err = exec.LookPath("virt-v2v-in-place")
	t.virtV2V = err == nil
	log.Debug("host tools probed", "qemu_img", t.qemuImgVersion, "nbdkit_plugins", t.plugins, "vddk", t.vddk)
	return t
}

// nbdkitPlugins lists nbdkit's plugin dir (one command instead of one per plugin), then
// checks with --dump-plugin that the plugins a transfer method depends on really load: a
// plugin .so whose own library is missing is listed but unusable.
func (p *Prober) nbdkitPlugins(ctx context.Context, nbdkit string) []string {
	out, err := p.run(ctx, nbdkit, "--dump-config")
	if err != nil {
		p.cfg.Logger.Warn("nbdkit --dump-config failed", "err", err)
		return nil
	}
	var dir string
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "plugindir="); ok {
			dir = strings.TrimSpace(v)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		p.cfg.Logger.Warn("nbdkit plugin dir unreadable", "dir", dir, "err", err)
		return nil
	}
	var plugins []string
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "nbdkit-")
		if !ok {
			continue
		}
		if name, ok = strings.CutSuffix(name, "-plugin.so"); !ok {
			continue
		}
		if name == "curl" {
			if _, err := p.run(ctx, nbdkit, name, "--dump-plugin"); err != nil {
				p.cfg.Logger.Warn("nbdkit plugin does not load", "plugin", name, "err", err)
				continue
			}
		}
		plugins = append(plugins, name)
	}
	proto.SortPlugins(plugins)
	return plugins
}

// parseQemuImgVersion takes "qemu-img version 7.2.22 (Debian ...)" to "7.2.22".
func parseQemuImgVersion(out string) string {
	line, _, _ := strings.Cut(out, "\n")
	f := strings.Fields(line)
	for i, w := range f {
		if w == "version" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

func (p *Prober) pingLibvirt(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CommandTimeout)
	defer cancel()
	if p.cfg.LibvirtPing != nil {
		return p.cfg.LibvirtPing(ctx)
	}
	virsh, err := exec.LookPath("virsh")
	if err != nil {
		return err
	}
	_, err = p.run(ctx, virsh, "-c", p.cfg.LibvirtURI, "version")
	return err
}

// run executes a command with the configured timeout and returns its stdout.
func (p *Prober) run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// A grandchild (virsh's ssh for a remote URI) can keep the pipes open after the
	// command is killed; WaitDelay stops Wait from blocking on it forever.
	cmd.WaitDelay = time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return string(out), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, msg)
	}
	return string(out), nil
}
