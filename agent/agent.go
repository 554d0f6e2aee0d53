// Package agent wires one agent: the host probe, its seat in the gossip pool, the lease
// worker running the migration pipeline, and its own /health and /metrics.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hypersdk/hypersdk/agent/capacity"
	"github.com/hypersdk/hypersdk/agent/membership"
	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/config"
	"github.com/hypersdk/hypersdk/shared/gossip"
	"github.com/hypersdk/hypersdk/shared/version"
)

// Config is the agent's configuration (YAML; flags override).
type Config struct {
	Name        string   `yaml:"name"`
	Controllers []string `yaml:"controllers"`
	JoinToken   string   `yaml:"join_token"`
	APIAddr     string   `yaml:"api_addr"`
	LibvirtURI  string   `yaml:"libvirt_uri"`
	StorageDir  string   `yaml:"storage_dir"`
	MaxJobs     int      `yaml:"max_jobs"`
	VDDKLibDir  string   `yaml:"vddk_libdir"`
	// DefaultNetwork receives NICs whose VMware network is not mapped (libvirt "default").
	DefaultNetwork string        `yaml:"default_network"`
	ShutdownGrace  time.Duration `yaml:"shutdown_grace"`
	// AttemptLog, when set, is a file that gets one JSON line per job attempt start and
	// end (worker.AttemptRecord), appended across restarts.
	AttemptLog string `yaml:"attempt_log"`
	// GuestConversion is what a job that does not set options.guest_conversion gets:
	// auto (convert with virt-v2v when it is installed) or off.
	GuestConversion string `yaml:"guest_conversion"`
	// VirtProbeFile caches the virtualisation probe's decision for the host's current boot
	// (default <storage_dir>/.virt-probe.json).
	VirtProbeFile string `yaml:"virt_probe_file"`
	// CredentialFile keeps the agent's own credential, enrolled with the join token on
	// first contact (default <storage_dir>/.agent-credential, mode 0600).
	CredentialFile string `yaml:"credential_file"`
	// MinFreeStorage is the free space of the storage dir below which the agent counts as
	// unhealthy and takes no work (default 1 GiB).
	MinFreeStorage uint64 `yaml:"min_free_storage"`
	// HooksDir holds the executables a job's options.hooks may run by name ("": none; HTTP
	// hooks still run). Only root should be able to write it.
	HooksDir string         `yaml:"hooks_dir"`
	Transfer TransferConfig `yaml:"transfer"`
	Gossip   GossipConfig   `yaml:"gossip"`
	Log      LogConfig      `yaml:"log"`
}

// TransferConfig tunes the disk copies (zero: the defaults of agent/transfer: 4
// connections per disk, 5 retries per piece from 2 s doubling, 2 min per range request, no
// cap).
type TransferConfig struct {
	// Retries and RetryDelay: how often a broken piece of a disk is read again, and the
	// first back-off (doubled each time).
	Retries    int           `yaml:"retries"`
	RetryDelay time.Duration `yaml:"retry_delay"`
	// RequestTimeout bounds one range request, so a stalled source becomes a retry.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// VDDKLibDir is where VMware's VDDK is unpacked (DIR/lib64/libvixDiskLib.so.8, .7 or
	// .6); it wins over the older top-level vddk_libdir. --vddk-libdir overrides both.
	VDDKLibDir string `yaml:"vddk_libdir"`
	// VDDKTransports is VDDK's transport mode order (default nbdssl:nbd; add hotadd or
	// san where this host can use them).
	VDDKTransports string `yaml:"vddk_transports"`
	// VDDKConnections is how many VDDK connections read each disk at once (default 4).
	VDDKConnections int `yaml:"vddk_connections"`
	// Connections is how many range requests read one disk at once (https; vddk has its own).
	Connections int `yaml:"connections"`
	// MaxMbps caps all of this agent's transfers together, in megabits per second (0: none).
	MaxMbps int `yaml:"max_mbps"`
}

// credentialFile is where the agent keeps its credential.
func (c Config) credentialFile() string {
	if c.CredentialFile != "" {
		return c.CredentialFile
	}
	return filepath.Join(c.StorageDir, ".agent-credential")
}

// VDDKDir is the VDDK directory in effect: transfer.vddk_libdir, else vddk_libdir.
func (c Config) VDDKDir() string {
	if c.Transfer.VDDKLibDir != "" {
		return c.Transfer.VDDKLibDir
	}
	return c.VDDKLibDir
}

// GossipConfig is the agent's seat in the pool.
type GossipConfig struct {
	config.Gossip `yaml:",inline"`
	// Fast shortens failure detection (tests, one-machine demos).
	Fast bool `yaml:"fast"`
}

// LogConfig selects level and format.
type LogConfig = config.Log

// DefaultConfig works on one machine with no flags.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "agent-1"
	}
	return Config{
		Name: host, Controllers: []string{"http://127.0.0.1:8080"}, APIAddr: "127.0.0.1:8082",
		LibvirtURI: "qemu:///system", StorageDir: "/var/lib/hypersdk/storage", MaxJobs: 2,
		VDDKLibDir: "/usr/lib64/vmware-vix-disklib", DefaultNetwork: "default", ShutdownGrace: 30 * time.Second,
		GuestConversion: "auto",
		Gossip:          GossipConfig{Gossip: config.Gossip{Addr: "127.0.0.1:7947", Join: []string{"127.0.0.1:7946"}}},
		Log:             LogConfig{Level: "info", Format: "text"},
	}
}

// LoadConfig reads YAML over the defaults; unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	err := config.Load(path, &cfg)
	return cfg, err
}

// Validate checks the merged configuration.
func (c *Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("agent name is required (--name)")
	case len(c.Name) > proto.MaxNodeNameLen:
		return fmt.Errorf("agent name is longer than %d bytes", proto.MaxNodeNameLen)
	case len(c.Controllers) == 0:
		return errors.New("at least one controller is required (--controllers)")
	case c.StorageDir == "":
		return errors.New("storage dir is required (--storage-dir)")
	case c.MaxJobs <= 0 || c.MaxJobs > 64:
		return errors.New("max_jobs must be between 1 and 64")
	case c.GuestConversion != "" && c.GuestConversion != "auto" && c.GuestConversion != "off":
		return fmt.Errorf("guest_conversion %q is not auto or off", c.GuestConversion)
	case c.Transfer.MaxMbps < 0 || c.Transfer.MaxMbps > proto.MaxMbps:
		return fmt.Errorf("transfer.max_mbps must be between 0 (no cap) and %d", proto.MaxMbps)
	case c.Transfer.Connections < 0 || c.Transfer.Connections > 64:
		return errors.New("transfer.connections must be between 0 (default) and 64")
	}
	return nil
}

// Agent is a running agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	Prober   *capacity.Prober
	Member   *membership.Membership
	Worker   *worker.Worker
	workerMu sync.Mutex // Worker is set after the prober, which asks it, starts
	Registry *prometheus.Registry
	http     *http.Server
	apiAddr  string
	// attemptLog is closed when Run returns (nil when not configured).
	attemptLog *os.File
}

// New prepares an agent around an executor (the migration pipeline): probe, gossip, worker
// and HTTP endpoints. Run starts the work.
func New(ctx context.Context, cfg Config, exec worker.Executor, reg *prometheus.Registry, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("agent", cfg.Name)
	if err := os.MkdirAll(cfg.StorageDir, 0o750); err != nil {
		return nil, fmt.Errorf("storage dir %s: %w", cfg.StorageDir, err)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	a := &Agent{cfg: cfg, log: log, Registry: reg}
	vddkProbe := transfer.New(transfer.Config{Logger: log})
	pc := capacity.Config{StorageDir: cfg.StorageDir, LibvirtURI: cfg.LibvirtURI, VDDKLibDir: cfg.VDDKDir(), Logger: log,
		MinFreeStorage: cfg.MinFreeStorage,
		// The worker knows whether a controller answers (its lease requests); it starts
		// after the prober, so the check asks it once it exists.
		Controllers: func() error {
			if w := a.worker(); w != nil {
				return w.ControllersError()
			}
			return nil
		},
		VDDKProbe: func(ctx context.Context, dir string) (bool, string) {
			p := vddkProbe.ProbeVDDK(ctx, dir)
			return p.Available, p.Reason
		}}
	// The executor (the migration pipeline) knows how this host runs guests once its
	// virtualisation probe has decided: advertise it with the capabilities.
	if v, ok := exec.(interface{ Virtualization() *proto.Virtualization }); ok {
		pc.Virtualization = v.Virtualization
	}
	a.Prober = capacity.New(pc)
	var prober membership.Prober = a.Prober
	if tr, ok := exec.(TransferRater); ok {
		prober = rateProber{Prober: prober, rater: tr}
	}

	ln, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("agent api listen on %s: %w", cfg.APIAddr, err)
	}
	a.apiAddr = ln.Addr().String()

	gc := gossip.DefaultConfig()
	gc.BindAddr = cfg.Gossip.Addr
	gc.AdvertiseAddr = cfg.Gossip.Advertise
	gc.Label = cfg.Gossip.Label
	if cfg.Gossip.Fast {
		gc.Profile = gossip.ProfileFast
	}
	if cfg.Gossip.Key != "" {
		if gc.SecretKey, err = gossip.ParseSecretKey(cfg.Gossip.Key); err != nil {
			ln.Close()
			return nil, err
		}
	}
	gc.Logger = log
	a.Member, err = membership.Start(ctx, membership.Config{
		Gossip: gc, Name: cfg.Name, APIAddr: a.apiAddr, Version: version.Version, MaxJobs: cfg.MaxJobs,
		Join: cfg.Gossip.Join, Prober: prober, Logger: log,
	})
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("gossip: %w", err)
	}

	var attemptLog io.Writer
	if cfg.AttemptLog != "" {
		f, err := os.OpenFile(cfg.AttemptLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			ln.Close()
			a.Member.Shutdown()
			return nil, fmt.Errorf("attempt log: %w", err)
		}
		a.attemptLog, attemptLog = f, f
	}
	wk, err := worker.New(worker.Config{
		Name: cfg.Name, Controllers: cfg.Controllers, Token: cfg.JoinToken, MaxJobs: cfg.MaxJobs,
		CredentialFile: cfg.credentialFile(),
		ShutdownGrace:  cfg.ShutdownGrace, Logger: log,
		Probe: func() (proto.AgentCapacity, proto.AgentCapabilities) {
			// Without the transfer rate: a controller older than that field refuses
			// lease requests that carry it, and placement does not use it.
			c, caps, _ := a.Prober.Probe(context.Background())
			return c, caps
		},
		OnChange:   a.Member.SetRunningJobs,
		AttemptLog: attemptLog,
	}, exec)
	if err != nil {
		ln.Close()
		a.Member.Shutdown()
		return nil, err
	}
	a.workerMu.Lock()
	a.Worker = wk
	a.workerMu.Unlock()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &workerCollector{w: a.Worker, max: cfg.MaxJobs}, &healthCollector{p: a.Prober})

	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", a.handleHealth)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+proto.AgentFactsPath, a.handleFacts(exec))
	a.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := a.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("agent api stopped", "err", err)
		}
	}()
	log.Info("agent started", "api_addr", a.apiAddr, "gossip", a.Member.Node().Addr(), "controllers", cfg.Controllers, "max_jobs", cfg.MaxJobs)
	return a, nil
}

// TransferRater is an executor that can tell its disk copies' current rate and cap (bytes
// per second): the agent advertises them with its capacity.
type TransferRater interface {
	TransferRate() (bytesPerSecond, capBytesPerSecond float64)
}

// rateProber adds the transfer rate to the host's capacity. The rate is rounded to two
// significant digits: the metadata is re-broadcast only when its bytes change, and a rate
// that wobbles by a per cent is no news.
type rateProber struct {
	membership.Prober
	rater TransferRater
}

func (p rateProber) Probe(ctx context.Context) (proto.AgentCapacity, proto.AgentCapabilities, error) {
	c, caps, err := p.Prober.Probe(ctx)
	r, limit := p.rater.TransferRate()
	c.TransferRateBytesPerSecond, c.TransferCapBytesPerSecond = twoDigits(r), uint64(limit)
	return c, caps, err
}

func twoDigits(v float64) uint64 {
	if v < 1 {
		return 0
	}
	q := math.Pow(10, math.Floor(math.Log10(v))-1)
	return uint64(math.Round(v/q) * q)
}

// CheckConfig is hypersdk-agent --check-config: the configuration is valid, and the host
// passes the self-checks that do not need a controller (libvirt, storage, qemu-img); each
// failed check is named with what to do. It starts nothing.
func CheckConfig(cfg Config, out io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("configuration invalid: %w", err)
	}
	p := capacity.New(capacity.Config{StorageDir: cfg.StorageDir, LibvirtURI: cfg.LibvirtURI, MinFreeStorage: cfg.MinFreeStorage,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	c, _, _ := p.Probe(context.Background())
	if !c.Healthy {
		return fmt.Errorf("configuration valid, but this host fails: %s", strings.Join(c.Reasons, "; "))
	}
	fmt.Fprintf(out, "hypersdk-agent: configuration valid; libvirt at %s reachable, storage dir %s writable\n", cfg.LibvirtURI, cfg.StorageDir)
	return nil
}

// worker is the lease worker once New has made it (nil before).
func (a *Agent) worker() *worker.Worker {
	a.workerMu.Lock()
	defer a.workerMu.Unlock()
	return a.Worker
}

// AgentHealth is the body of the agent's GET /health.
type AgentHealth struct {
	Status       string   `json:"status"` // ok or unhealthy
	Name         string   `json:"name"`
	RunningJobs  int      `json:"running_jobs"`
	FailedChecks []string `json:"failed_checks,omitempty"`
	Reasons      []string `json:"reasons,omitempty"`
}

// handleHealth answers 200 when every self-check passes, else 503 with the failed checks
// and why: a load balancer or monitor sees a host that takes no work as down.
func (a *Agent) handleHealth(w http.ResponseWriter, r *http.Request) {
	c, _, _ := a.Prober.Probe(r.Context())
	h := AgentHealth{Status: "ok", Name: a.cfg.Name, RunningJobs: a.Worker.Running(), FailedChecks: c.FailedChecks, Reasons: c.Reasons}
	code := http.StatusOK
	if !c.Healthy {
		h.Status, code = "unhealthy", http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(h)
}

// APIAddr is where /health and /metrics are served.
func (a *Agent) APIAddr() string { return a.apiAddr }

// Run leases jobs until ctx ends, then stops gracefully (finishes or hands back running
// jobs), leaves the gossip pool and stops serving.
func (a *Agent) Run(ctx context.Context) error {
	err := a.Worker.Run(ctx)
	if lerr := a.Member.Leave(5 * time.Second); lerr != nil {
		a.log.Warn("gossip leave", "err", lerr)
	}
	_ = a.Member.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.http.Shutdown(sctx)
	if a.attemptLog != nil {
		_ = a.attemptLog.Close()
	}
	return err
}

var (
	descRunning = prometheus.NewDesc("hypersdk_agent_jobs_running", "Jobs this agent runs now", nil, nil)
	descMax     = prometheus.NewDesc("hypersdk_agent_max_jobs", "Job slots of this agent", nil, nil)
	descJobs    = prometheus.NewDesc("hypersdk_agent_jobs_finished_total", "Jobs this agent finished, by result", []string{"result"}, nil)
	descHB      = prometheus.NewDesc("hypersdk_agent_heartbeats_total", "Heartbeats sent", nil, nil)
)

// workerCollector reads the worker's counters at scrape time.
type workerCollector struct {
	w   *worker.Worker
	max int
}

func (c *workerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRunning
	ch <- descMax
	ch <- descJobs
	ch <- descHB
}

func (c *workerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.w.Snapshot()
	ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, float64(c.w.Running()))
	ch <- prometheus.MustNewConstMetric(descMax, prometheus.GaugeValue, float64(c.max))
	for result, n := range map[string]int{"completed": s.Completed, "failed": s.Failed, "cancelled": s.Cancelled,
		"lease_lost": s.LeaseLost, "fenced": s.Fenced, "handed_back": s.HandedBack} {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.CounterValue, float64(n), result)
	}
	ch <- prometheus.MustNewConstMetric(descHB, prometheus.CounterValue, float64(s.Heartbeat))
}

var descCheck = prometheus.NewDesc("hypersdk_agent_health_check",
	"1 when the agent's self-check passes, 0 when it fails (libvirt, storage_writable, storage_room, qemu_img, controllers)", []string{"check"}, nil)

// healthCollector exports the self-checks at scrape time (the probe's own caches bound
// the cost).
type healthCollector struct{ p *capacity.Prober }

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descCheck }

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	cp, _, _ := c.p.Probe(context.Background())
	for _, check := range proto.HealthChecks() {
		ok := 1.0
		for _, f := range cp.FailedChecks {
			if f == check {
				ok = 0
			}
		}
		ch <- prometheus.MustNewConstMetric(descCheck, prometheus.GaugeValue, ok, check)
	}
}
