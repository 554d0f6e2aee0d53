// Package migrate is the migration pipeline an agent runs for a leased job: connect to
// vCenter, prepare the source VM, copy and convert its disks, convert the guest with
// virt-v2v, define the libvirt domain, and check that it boots.
// It implements worker.Executor and orchestrates the packages that do the work
// (shared/vsphere, agent/transfer, agent/libvirt); every stage reports progress and cleans
// up after itself on failure and on cancel.
//
// Side effects are idempotent per job, because a lease is at-least-once: a job's disks live
// in <storage_dir>/<job-id>/, which an attempt empties before it writes, and the domain
// carries the job id in its metadata, so a later attempt redefines its own domain instead
// of colliding with it.
package migrate

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hypersdk/hypersdk/agent/capacity"
	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// Config configures a Pipeline. Zero values mean the defaults of DefaultConfig.
type Config struct {
	// StorageDir holds one directory per job with its converted disks.
	StorageDir string
	// LibvirtURI is the hypervisor domains are defined on (the agent's own libvirtd).
	LibvirtURI string
	// DefaultNetwork receives NICs whose VMware network is not in the job's network_mapping.
	DefaultNetwork string
	// VDDKLibDir is where VMware's VDDK is unpacked (DIR/lib64/libvixDiskLib.so.N), for the
	// vddk method.
	VDDKLibDir string
	// MaxParallelDisks bounds how many disks of one VM are copied at once: each costs its
	// own connections to the source (Transfer.Connections) and, for qcow2, a qemu-nbd.
	MaxParallelDisks int
	// ShutdownTimeout is the guest shutdown wait when the job does not set
	// shutdown_timeout_seconds.
	ShutdownTimeout time.Duration
	// Transfer tunes the disk copies (tool paths, retries); its Logger is set from Logger.
	Transfer transfer.Config
	// GuestConversion is what a job that does not set options.guest_conversion gets:
	// "auto" (the default: convert when virt-v2v-in-place is installed) or "off".
	GuestConversion string
	// V2VInPlace is the virt-v2v-in-place program (default: found in PATH).
	V2VInPlace string
	// VirtioWin is where virtio-win's Windows drivers are (default /usr/share/virtio-win);
	// without them a Windows guest is not converted and gets compatibility devices.
	VirtioWin string
	// HooksDir holds the executables options.hooks may name ("": command hooks are
	// refused; HTTP hooks still run). AgentName is given to hooks.
	HooksDir  string
	AgentName string
	// VirtProbeFile caches the virtualisation probe's decision per boot of the host
	// (default <StorageDir>/.virt-probe.json; agents sharing a file share one probe).
	VirtProbeFile string
	// Virtualization, when set, is used instead of probing (tests; an operator's override).
	Virtualization *proto.Virtualization
	// BootShutdownTimeout is how long a guest that passed the boot check gets to shut
	// down before it is powered off (default 2 minutes).
	BootShutdownTimeout time.Duration
	// Registry receives the transfer metrics (nil: not exported).
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// DefaultConfig matches the agent's defaults.
func DefaultConfig() Config {
	return Config{
		StorageDir:          "/var/lib/hypersdk/storage",
		LibvirtURI:          "qemu:///system",
		DefaultNetwork:      "default",
		MaxParallelDisks:    4,
		ShutdownTimeout:     5 * time.Minute,
		GuestConversion:     GuestConversionAuto,
		V2VInPlace:          "virt-v2v-in-place",
		VirtioWin:           "/usr/share/virtio-win",
		BootShutdownTimeout: 2 * time.Minute,
		Logger:              slog.Default(),
	}
}

// Agent-wide guest conversion defaults (Config.GuestConversion).
const (
	GuestConversionAuto = "auto"
	GuestConversionOff  = "off"
)

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.StorageDir == "" {
		c.StorageDir = d.StorageDir
	}
	if c.LibvirtURI == "" {
		c.LibvirtURI = d.LibvirtURI
	}
	if c.DefaultNetwork == "" {
		c.DefaultNetwork = d.DefaultNetwork
	}
	if c.MaxParallelDisks <= 0 {
		c.MaxParallelDisks = d.MaxParallelDisks
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = d.ShutdownTimeout
	}
	if c.GuestConversion == "" {
		c.GuestConversion = d.GuestConversion
	}
	if c.V2VInPlace == "" {
		c.V2VInPlace = d.V2VInPlace
	}
	if c.VirtioWin == "" {
		c.VirtioWin = d.VirtioWin
	}
	if c.VirtProbeFile == "" {
		c.VirtProbeFile = filepath.Join(c.StorageDir, ".virt-probe.json")
	}
	if c.BootShutdownTimeout <= 0 {
		c.BootShutdownTimeout = d.BootShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	return c
}

// Pipeline runs migrations. It is safe for concurrent use: every job has its own vCenter
// session, processes and directory.
type Pipeline struct {
	cfg     Config
	log     *slog.Logger
	xfer    *transfer.Transferer
	metrics *metrics
	domains domains
	// virt decides how domains run on this host (nil: the libvirt driver is not qemu's,
	// e.g. test:///, which has no such choice).
	virt *capacity.VirtProbe

	capsMu sync.Mutex
	caps   transfer.Capabilities
	capsAt time.Time

	v2vOnce sync.Once
	v2vVer  string
}

var _ worker.Executor = (*Pipeline)(nil)

// capsTTL: host tools change only when packages are installed; probing runs a few
// external commands, too many to repeat for every job.
const capsTTL = 5 * time.Minute

// New returns a pipeline. It creates the storage dir; it does not need libvirtd or any tool
// to be present yet (a job fails with what is missing).
func New(cfg Config) (*Pipeline, error) {
	cfg = cfg.withDefaults()
	if cfg.GuestConversion != GuestConversionAuto && cfg.GuestConversion != GuestConversionOff {
		return nil, fmt.Errorf("migrate: guest conversion default %q is not auto or off", cfg.GuestConversion)
	}
	if err := os.MkdirAll(cfg.StorageDir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStorage, err)
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("migrate: metrics: %w", err)
	}
	tc := cfg.Transfer
	tc.Logger = cfg.Logger
	p := &Pipeline{
		cfg: cfg, log: cfg.Logger.With("component", "migrate"), xfer: transfer.New(tc), metrics: m,
	}
	p.domains = newDomains(cfg.LibvirtURI, cfg.DefaultNetwork, p.log)
	p.virt = newVirtProbe(cfg, cfg.Logger)
	return p, nil
}

// WaitVirtualization waits for the virtualisation probe's decision (nil for libvirt drivers
// other than qemu's).
func (p *Pipeline) WaitVirtualization(ctx context.Context) (*proto.Virtualization, error) {
	if p.virt == nil {
		return nil, nil
	}
	v, err := p.virt.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return &v, nil
}

// Virtualization is the virtualisation probe's decision (nil while it runs, and for
// libvirt drivers other than qemu's): the agent advertises it.
func (p *Pipeline) Virtualization() *proto.Virtualization {
	if p.virt == nil {
		return nil
	}
	return p.virt.Result()
}

// capabilities probes the host's transfer tools, cached for capsTTL.
func (p *Pipeline) capabilities(ctx context.Context) transfer.Capabilities {
	p.capsMu.Lock()
	defer p.capsMu.Unlock()
	if p.capsAt.IsZero() || time.Since(p.capsAt) > capsTTL {
		p.caps = p.xfer.Probe(ctx, p.cfg.VDDKLibDir)
		p.capsAt = time.Now()
	}
	return p.caps
}

// TransferRate is what the pipeline's disk copies read from their sources now (bytes per
// second over the last seconds) and the agent's cap (0: none): the agent advertises both.
func (p *Pipeline) TransferRate() (bytesPerSecond, capBytesPerSecond float64) { return p.xfer.Rate() }

// JobDir is where a job's disks are written.
func (p *Pipeline) JobDir(jobID string) string {
	return filepath.Join(p.cfg.StorageDir, safeName(jobID))
}

// safeName keeps a path component inside its directory whatever the controller sends.
func safeName(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, s)
	// A leading dot is kept for the agent's own files in the storage dir (the
	// virtualisation cache), so no job directory can be one of them.
	if s == "" || s[0] == '.' {
		s = "_" + s
	}
	return s
}

// job is the state of one run, shared by the stages and the cleanup.
type job struct {
	p     *Pipeline
	lease proto.Lease
	def   proto.JobDefinition
	rep   worker.Reporter
	log   *slog.Logger

	client   *vsphere.Client
	vm       *vsphere.VM
	info     *vsphere.VMInfo
	method   string
	snapshot *vsphere.Snapshot
	// readers and images are started and opened ahead for a warm cutover's copy.
	readers  *transfer.ReaderPool
	images   *transfer.ImagePool
	dir      string
	disks    []string // output image paths, in VM disk order
	format   string
	domain   *definedDomain // set once this attempt defined it
	progress proto.Progress
	copyRate float64 // average bytes per second of the whole copy, shown once it is done
	// conversion is what the guest conversion stage did (or why it did not run).
	conversion *proto.ConversionResult
	// keep: the job failed but its domain and disks stay for the operator (a guest that
	// did not boot: the error says so).
	keep    bool
	limiter *transfer.Limiter // options.max_mbps, shared by the job's disks (nil: no cap)
	warm    *warmRun          // a warm job's rounds (nil: cold)
	// keepDisks: the attempt did not complete but its images stay for the next attempt
	// (a warm copy stopped from outside, see keepForResume).
	keepDisks bool
}

// Run migrates the leased job's VM. On error and on cancel everything this attempt made
// is removed (disk files, snapshot, export lease, domain it defined) and the source VM is
// left as it is; the returned error says which stage failed and is marked
// worker.Retryable when another attempt may succeed.
func (p *Pipeline) Run(ctx context.Context, lease proto.Lease, r worker.Reporter) (_ *proto.JobResult, err error) {
	j := &job{
		p: p, lease: lease, def: lease.Definition, rep: r,
		log: p.log.With("job", lease.JobID, "attempt", lease.Attempt, "vm", lease.Definition.VMPath),
		dir: p.JobDir(lease.JobID),
	}
	start := time.Now()
	j.log.Info("migration starting", "method", j.def.Options.ConversionMethod, "vcenter", j.def.Source.VCenterURL)
	defer func() {
		// Cleanup runs even when ctx is cancelled: it has its own deadline.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		j.keepDisks = j.keepForResume(ctx, err)
		j.cleanup(cctx, err != nil || ctx.Err() != nil)
		result := "completed"
		switch {
		case ctx.Err() != nil:
			result = "cancelled"
			if err == nil {
				err = ctx.Err()
			}
		case err != nil:
			result = "failed"
		}
		p.metrics.jobs.WithLabelValues(orUnknown(j.method), result).Inc()
		p.metrics.rate.DeleteLabelValues(lease.JobID)
		if err != nil && ctx.Err() != nil {
			// The worker reports a cancel from context.Cause (cancelled, lease lost, fenced,
			// shutting down); the error only says where the job stopped.
			j.log.Info("migration stopped and cleaned up", "stage", j.progress.Stage, "cause", context.Cause(ctx),
				"after", time.Since(start).Round(time.Millisecond))
			err = fmt.Errorf("%s: stopped: %w", j.progress.Stage, ctx.Err())
		} else if err != nil {
			j.log.Warn("migration failed", "err", err, "after", time.Since(start).Round(time.Millisecond))
		}
	}()

	// The pre hook runs before anything touches the source VM or the host (hooks.go).
	if err := j.hook(ctx, "pre", nil); err != nil {
		return nil, classify(proto.StageConnecting, err)
	}
	if err := j.connect(ctx); err != nil {
		return nil, classify(proto.StageConnecting, err)
	}
	if j.def.Options.Warm {
		if err := j.warmCopy(ctx); err != nil {
			return nil, err
		}
	} else {
		if err := j.prepare(ctx); err != nil {
			return nil, classify(proto.StagePreparing, err)
		}
		if err := j.convert(ctx); err != nil {
			return nil, classify(proto.StageConversion, err)
		}
	}
	if err := j.convertGuest(ctx); err != nil {
		return nil, classify(proto.StageGuestConversion, err)
	}
	// The commit point: define only once the leader has committed this attempt as the one
	// that defines (commit.go).
	if err := j.commit(ctx); err != nil {
		return nil, classify(proto.StageDefining, err)
	}
	res, err := j.define(ctx)
	if err != nil {
		return nil, classify(proto.StageDefining, err)
	}
	j.warmDefined(ctx)
	if j.def.Options.VerifyBoot {
		if res.Boot, err = j.bootCheck(ctx); err != nil {
			return nil, classify(proto.StageBootCheck, err)
		}
	}
	if err := j.hook(ctx, "post", res); err != nil {
		j.keep = true // the VM is migrated; what failed is the operator's follow-up
		return nil, classify(proto.StageDefining, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	msg := fmt.Sprintf("domain %s defined on %s", res.DomainName, res.LibvirtURI)
	if res.Boot != nil {
		msg += fmt.Sprintf("; booted to %q in %.0f s", res.Boot.Evidence, res.Boot.Seconds)
	}
	j.report(proto.Progress{Stage: proto.StageCompleted, PercentComplete: 100,
		CurrentBytes: j.progress.TotalBytes, TotalBytes: j.progress.TotalBytes, BytesPerSecond: j.copyRate,
		Message: msg})
	j.log.Info("migration completed", "domain", res.DomainName, "method", j.method, "disks", len(res.Disks),
		"took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// report sends progress, keeping the byte counters of the conversion in later stages so
// the job's numbers never go back to zero.
func (j *job) report(pr proto.Progress) {
	if pr.TotalBytes == 0 && j.progress.TotalBytes > 0 {
		pr.CurrentBytes, pr.TotalBytes, pr.PercentComplete = j.progress.CurrentBytes, j.progress.TotalBytes, j.progress.PercentComplete
		pr.BytesPerSecond = j.progress.BytesPerSecond
	}
	j.progress = pr
	j.rep.Progress(pr)
}

// stage reports the start of a stage with a message.
func (j *job) stage(stage, msg string) {
	j.log.Info(msg, "stage", stage)
	j.report(proto.Progress{Stage: stage, Message: msg})
}

// cleanup undoes what this attempt made. failed: the job did not complete, so its files
// and the domain it defined go too. The snapshot goes in every case.
func (j *job) cleanup(ctx context.Context, failed bool) {
	if j.snapshot != nil && j.client != nil {
		if err := j.client.RemoveSnapshot(ctx, j.vm, j.snapshot); err != nil {
			j.log.Error("could not remove the migration snapshot: remove it in vSphere", "snapshot", j.snapshot.Name, "err", err)
		}
	}
	if failed && j.keep {
		j.log.Warn("the failed job's domain and disks are kept for the operator", "dir", j.dir)
	} else if failed {
		if j.domain != nil {
			if err := j.p.domains.undefine(ctx, j.domain); err != nil {
				j.log.Error("could not undefine the domain of the failed attempt", "domain", j.domain.name, "err", err)
			}
		}
		if j.keepDisks {
			j.log.Info("the warm copy's images stay for the next attempt", "dir", j.dir, "rounds", j.warm.status.Rounds)
		} else if err := os.RemoveAll(j.dir); err != nil {
			j.log.Error("could not remove the job's files", "dir", j.dir, "err", err)
		}
	}
	if j.client != nil {
		if err := j.client.Close(ctx); err != nil {
			j.log.Debug("vcenter logout", "err", err)
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// errCancelled reports a cancelled context as an error mentioning what was interrupted.
func errCancelled(ctx context.Context, what string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s interrupted: %w", what, err)
	}
	return nil
}
