package transfer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Method names, as in proto.Options.ConversionMethod.
const (
	MethodAuto  = "auto"
	MethodVDDK  = "vddk"
	MethodHTTPS = "https"
	MethodNFC   = "nfc"
)

// Output formats.
const (
	FormatQcow2 = "qcow2"
	FormatRaw   = "raw"
)

// Config tunes a Transferer. Zero values mean the default of DefaultConfig.
type Config struct {
	Logger *slog.Logger
	// Tool paths; default: looked up in PATH.
	QemuImg, Nbdkit, QemuNBD string
	// Connections is how many pieces of one disk are read at once (for https, keep-alive
	// connections to the source), ReadSize the largest piece.
	Connections int
	ReadSize    int
	// Buffers bounds the pieces in memory across every transfer of this Transferer: the
	// agent's copy memory is at most Buffers × ReadSize, however many disks run.
	Buffers int
	// Retries and RetryDelay: how often a failed piece is read again, and the first
	// back-off (doubled each time). For the vddk path, nbdkit's retry filter (whole seconds).
	Retries    int
	RetryDelay time.Duration
	// RequestTimeout bounds one attempt at a piece (one HTTP range request), so a stalled
	// server becomes a retry instead of a hang. Time the bandwidth caps hold a read back
	// does not count.
	RequestTimeout time.Duration
	// MaxBytesPerSecond caps the agent's transfers together (0: no cap): one token bucket
	// shared by every connection of every job (agent config transfer.max_mbps).
	MaxBytesPerSecond float64
	// ProgressInterval is the minimum time between progress callbacks (default 1 s).
	ProgressInterval time.Duration
	// ReadyTimeout bounds how long nbdkit and qemu-nbd may take to start listening.
	ReadyTimeout time.Duration
	// TempDir holds the private per-transfer directory (sockets, pid files, secret files).
	// Keep it short: Unix socket paths are limited to 107 bytes.
	TempDir string
	// DecodeWorkers is how many goroutines inflate NFC grains (default GOMAXPROCS).
	DecodeWorkers int
	// VDDKReader is the command of a VDDK reader process, to which "probe DIR" or
	// "serve" is appended; default: this executable with vddk.Subcommand (the agent's
	// own binary; test binaries dispatch it in TestMain).
	VDDKReader []string
	// VDDKConnections is how many VDDK connections read each disk at once (default 4).
	VDDKConnections int
	// VDDKTransports is VDDK's transport mode order (default "nbdssl:nbd"; hotadd and san
	// where the host can use them).
	VDDKTransports string
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Logger:           slog.Default(),
		QemuImg:          "qemu-img",
		Nbdkit:           "nbdkit",
		QemuNBD:          "qemu-nbd",
		Connections:      4,
		ReadSize:         4 << 20,
		Buffers:          16,
		Retries:          5,
		RetryDelay:       2 * time.Second,
		RequestTimeout:   2 * time.Minute,
		ProgressInterval: time.Second,
		ReadyTimeout:     30 * time.Second,
		TempDir:          os.TempDir(),
		DecodeWorkers:    runtime.GOMAXPROCS(0),
		VDDKConnections:  4,
		VDDKTransports:   "nbdssl:nbd",
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.QemuImg == "" {
		c.QemuImg = d.QemuImg
	}
	if c.Nbdkit == "" {
		c.Nbdkit = d.Nbdkit
	}
	if c.QemuNBD == "" {
		c.QemuNBD = d.QemuNBD
	}
	if c.Connections <= 0 {
		c.Connections = d.Connections
	}
	if c.ReadSize <= 0 {
		c.ReadSize = d.ReadSize
	}
	// Pieces are powers of two between 64 KiB and 32 MiB (qemu-nbd's largest request).
	c.ReadSize = min(max(c.ReadSize, minLimitChunk), 32<<20)
	if c.Buffers <= 0 {
		c.Buffers = d.Buffers
	}
	if c.Retries <= 0 {
		c.Retries = d.Retries
	}
	if c.RetryDelay <= 0 {
		c.RetryDelay = d.RetryDelay
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = d.RequestTimeout
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = d.ProgressInterval
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = d.ReadyTimeout
	}
	if c.TempDir == "" {
		c.TempDir = d.TempDir
	}
	if c.DecodeWorkers <= 0 {
		c.DecodeWorkers = d.DecodeWorkers
	}
	if c.VDDKConnections <= 0 {
		c.VDDKConnections = d.VDDKConnections
	}
	if c.VDDKTransports == "" {
		c.VDDKTransports = d.VDDKTransports
	}
	return c
}

// Transferer copies disks from vSphere into local images. It is safe for concurrent use:
// every transfer has its own processes and temporary directory.
type Transferer struct {
	cfg     Config
	log     *slog.Logger
	limiter *Limiter // the agent's cap, nil for none
	meter   *rateMeter
	buffers *bufferPool
}

// New returns a Transferer.
func New(cfg Config) *Transferer {
	cfg = cfg.withDefaults()
	return &Transferer{cfg: cfg, log: cfg.Logger, limiter: NewLimiter(cfg.MaxBytesPerSecond), meter: newRateMeter(),
		buffers: newBufferPool(cfg.ReadSize, cfg.Buffers)}
}

// Rate is what this Transferer reads from its sources now (bytes per second, averaged over
// the last seconds) and its cap (0: none): what an agent advertises.
func (t *Transferer) Rate() (bytesPerSecond, capBytesPerSecond float64) {
	return t.meter.rate(), t.limiter.BytesPerSecond()
}

// Output is where one disk goes.
type Output struct {
	// Path of the image to create. An existing file is replaced (a retried job writes the
	// same path); on failure or cancel the file is removed.
	Path string
	// Format is qcow2 (default) or raw. Both are sparse: holes in the source stay holes.
	Format string
	// Progress, if set, receives this disk's progress.
	Progress ProgressFunc
	// Label names the disk in progress messages and logs (e.g. "[ds1] vm/vm.vmdk").
	Label string
	// Limiter, if set, caps this transfer together with every other one given the same
	// limiter (a job's disks share their job's cap, options.max_mbps).
	Limiter *Limiter
	// Images, when set, holds existing images opened ahead for writing in place
	// (OpenImages): a delta copy into Path takes its writer from there.
	Images *ImagePool
}

func (o Output) format() (string, error) {
	switch o.Format {
	case "", FormatQcow2:
		return FormatQcow2, nil
	case FormatRaw:
		return FormatRaw, nil
	default:
		return "", fmt.Errorf("output format %q: want qcow2 or raw", o.Format)
	}
}

func (o Output) validate() (string, error) {
	if o.Path == "" {
		return "", errors.New("output path is empty")
	}
	return o.format()
}

// Result describes a finished transfer.
type Result struct {
	Method         string
	Path           string
	Format         string
	VirtualSize    int64 // bytes
	AllocatedBytes int64 // bytes the image occupies on disk
	SourceBytes    int64 // bytes read from the source (nfc: the compressed stream)
	Retries        int64 // pieces read again after a failed attempt (Copy)
	Duration       time.Duration
	// Descriptor is the source disk's descriptor (https: fetched; nfc: embedded), or nil.
	Descriptor *Descriptor
	// Warnings are things the operator should know about a transfer that succeeded.
	Warnings []string
}

// privateDir makes the per-transfer directory for sockets and secret files. 0700 so no
// other local user can connect to the NBD sockets or read the cookie file.
func (t *Transferer) privateDir() (string, error) {
	d, err := os.MkdirTemp(t.cfg.TempDir, "hsx-")
	if err != nil {
		return "", fmt.Errorf("%w: creating temp dir: %v", ErrTool, err)
	}
	if err := os.Chmod(d, 0o700); err != nil {
		_ = os.RemoveAll(d)
		return "", fmt.Errorf("%w: %v", ErrTool, err)
	}
	return d, nil
}

// removeOutput deletes a failed or cancelled transfer's partial image.
func (t *Transferer) removeOutput(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.log.Warn("could not remove partial output", "path", path, "err", err)
	}
}

// allocated is the space the file occupies (st_blocks), the measure of sparseness.
func allocated(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// noSpaceError builds the ErrNoSpace error: the operator needs to know how much room the
// disk wants and how much the filesystem has (measured after the partial image is gone).
func noSpaceError(path string, virtualSize int64, detail string) error {
	var fs syscall.Statfs_t
	free := ""
	if err := syscall.Statfs(filepath.Dir(path), &fs); err == nil {
		free = fmt.Sprintf("; %d bytes free there without the partial image, the disk's virtual size is %d", int64(fs.Bavail)*int64(fs.Bsize), virtualSize)
	}
	return fmt.Errorf("%w: writing %s%s: %s", ErrNoSpace, path, free, detail)
}

func isNoSpace(msg string) bool {
	return strings.Contains(msg, "No space left on device") || strings.Contains(msg, "Disk quota exceeded")
}

// redact replaces secret values in text that is about to be logged or returned.
func redact(s string, secrets []string) string {
	for _, v := range secrets {
		if len(v) >= 4 {
			s = strings.ReplaceAll(s, v, "********")
		}
	}
	return s
}

// lastLines keeps the end of a tool's stderr for an error message.
func lastLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		// Retries repeat the same message: keep one of each.
		if l = strings.TrimSpace(l); l != "" && (len(lines) == 0 || lines[len(lines)-1] != l) {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

func ctxErr(ctx context.Context, what string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s cancelled: %w", what, err)
	}
	return nil
}

func removeAll(dir string) { _ = os.RemoveAll(dir) }
