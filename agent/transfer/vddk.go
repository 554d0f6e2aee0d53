package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hypersdk/hypersdk/agent/transfer/vddk"
)

// VDDKSource is a disk read through VMware's VDDK (libvixDiskLib), loaded in a reader
// process of the agent (package vddk): the way the field reads VMware disks, and the only
// one that reads a snapshot of a running VM and skips unallocated blocks on the server.
type VDDKSource struct {
	Server   string // vCenter or ESXi host name or address
	Port     int    // 0: VDDK's default (443)
	User     string
	Password string // secret: reaches the reader over its socket, in memory only
	// Thumbprint is the server certificate's SHA-1 thumbprint, which VDDK checks. Required
	// unless Insecure.
	Thumbprint string
	Insecure   bool
	VMMoref    string // e.g. "vm-123"
	File       string // the disk's backing file, e.g. "[datastore1] vm1/vm1.vmdk"
	Snapshot   string // snapshot moref, e.g. "snapshot-5" (consistent reads of a running VM)
	Libdir     string // VDDK's directory (the one holding lib64/)
	// Transports is VDDK's transport mode order (default Config.VDDKTransports).
	Transports string
	// Connections per disk (default Config.VDDKConnections).
	Connections int
	// Readers, when set, holds reader processes started ahead (StartVDDKReaders).
	Readers *ReaderPool
}

func (s VDDKSource) validate() error {
	var missing []string
	for name, v := range map[string]string{"server": s.Server, "user": s.User, "vm moref": s.VMMoref, "file": s.File} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("vddk source lacks %s", strings.Join(missing, ", "))
	}
	if s.Thumbprint == "" && !s.Insecure {
		return fmt.Errorf("%w: VDDK verifies the server by its SHA-1 thumbprint and none is known for %s: set source.thumbprint (or source.insecure)",
			ErrSourceAccess, s.Server)
	}
	return nil
}

// vddkMaxRead is the largest VixDiskLib_Read the agent asks for. Larger reads gain nothing
// and make ESXi's NFC server fail them for lack of memory (nbdkit's vddk notes advise 2M).
const vddkMaxRead = 2 << 20

// VDDKProbe says whether this host can read through VDDK, and which library it has.
type VDDKProbe struct {
	Available bool
	// Reason says what is missing and how to fix it (when not Available).
	Reason string
	// Path is the library loaded (symlinks resolved), Version its major version.
	Path    string
	Version int
	// QueryAllocated: the library reads only allocated blocks (VDDK 6.7 and later).
	QueryAllocated bool
}

// ProbeVDDK starts a reader process that loads DIR/lib64/libvixDiskLib.so.{8,7,6}, as a
// transfer would, and reports the outcome. VDDK is never loaded into the agent itself.
func (t *Transferer) ProbeVDDK(ctx context.Context, libdir string) VDDKProbe {
	if libdir == "" {
		return VDDKProbe{Reason: "no VDDK directory configured: set --vddk-libdir DIR (agent config transfer.vddk_libdir) to where VMware's VDDK is unpacked (DIR/lib64/libvixDiskLib.so.8)"}
	}
	notFound := fmt.Sprintf("VMware VDDK not found: %s has no lib64/libvixDiskLib.so.8, .so.7 or .so.6; "+
		"download VMware's Virtual Disk Development Kit for Linux (6.7 or later), unpack it so that %s/lib64 holds its libraries, "+
		"and point --vddk-libdir (transfer.vddk_libdir) at that directory", libdir, libdir)
	if _, _, err := vddk.FindLibrary(libdir); err != nil {
		return VDDKProbe{Reason: notFound} // no process to start for that
	}
	argv, err := t.vddkReader("probe", libdir)
	if err != nil {
		return VDDKProbe{Reason: err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = vddkEnv(libdir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return VDDKProbe{Reason: fmt.Sprintf("the VDDK reader (%s %s) failed: %v: %s", argv[0], vddk.Subcommand, err, lastLines(stderr.String(), 2))}
	}
	r, err := vddk.ParseProbe(out)
	if err != nil {
		return VDDKProbe{Reason: err.Error()}
	}
	switch {
	case r.Loaded:
		return VDDKProbe{Available: true, Path: r.Path, Version: r.Version, QueryAllocated: r.QueryAllocated}
	case r.NotInstalled:
		return VDDKProbe{Reason: notFound}
	}
	return VDDKProbe{Reason: fmt.Sprintf("VMware VDDK in %s does not load: %s; unpack the whole VDDK tarball "+
		"(libvixDiskLib needs the other libraries of its lib64) and use the x86-64 Linux build", libdir, r.Error)}
}

// vddkReader is the argv of a reader process: the configured command, else this program
// (the agent, or a test binary that dispatches vddk.Subcommand).
func (t *Transferer) vddkReader(args ...string) ([]string, error) {
	argv := append([]string(nil), t.cfg.VDDKReader...)
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("%w: cannot find the agent's executable to start a VDDK reader: %v", ErrVDDKUnavailable, err)
		}
		argv = []string{exe, vddk.Subcommand}
	}
	return append(argv, args...), nil
}

// vddkEnv is the reader's environment: the agent's, plus LD_LIBRARY_PATH naming VDDK's
// lib64 (how VMware's library finds its siblings; it has no rpath), plus GOTRACEBACK=none
// to keep the reader's own goroutines out of a crash report. The password is never here,
// and the agent's join token is taken out.
func vddkEnv(libdir string) []string {
	env := make([]string, 0, len(os.Environ())+3)
	ld := vddk.LibraryDir(libdir)
	for _, e := range os.Environ() {
		switch {
		case strings.HasPrefix(e, "LD_LIBRARY_PATH="):
			if old := strings.TrimPrefix(e, "LD_LIBRARY_PATH="); old != "" {
				ld += ":" + old
			}
		case strings.HasPrefix(e, "GOTRACEBACK="):
		case strings.HasPrefix(e, "HYPERSDK_JOIN_TOKEN="):
			// The agent's own secret: nothing VMware's code needs to see.
		default:
			env = append(env, e)
		}
	}
	return append(env, "LD_LIBRARY_PATH="+ld, "GOTRACEBACK=none", "LC_ALL=C")
}

// vddkDisk is an open disk in a reader process: a DiskSource for the parallel copier
// (copier.go), read by two workers per VDDK connection in pieces of at most vddkMaxRead.
type vddkDisk struct {
	c    *vddk.Client
	srv  *child
	conn io.Closer
	logs *vddkLogs
	src  VDDKSource
}

// vddkLogs forwards VDDK's messages (already scrubbed by the reader) to the agent's log
// and keeps the last few for error messages.
type vddkLogs struct {
	log     *slog.Logger
	secrets []string
	mu      sync.Mutex
	last    []string
}

func (l *vddkLogs) line(m vddk.LogLine) {
	msg := vddk.Scrub(m.Msg, l.secrets) // again: the agent does not trust the reader with its log
	switch m.Level {
	case vddk.LevelPanic:
		l.log.Error("VDDK: "+msg, "source", "vddk")
	case vddk.LevelWarn:
		l.log.Warn("VDDK: "+msg, "source", "vddk")
	case vddk.LevelAgent:
		l.log.Info("vddk reader: "+msg, "source", "vddk")
	default:
		// VDDK's own log is very chatty: debug, unless it is all there is to go on.
		l.log.Debug("VDDK: "+msg, "source", "vddk")
	}
	l.mu.Lock()
	l.last = append(l.last, msg)
	if len(l.last) > 6 {
		l.last = l.last[len(l.last)-6:]
	}
	l.mu.Unlock()
}

func (l *vddkLogs) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.last) == 0 {
		return ""
	}
	return "; VDDK's last messages: " + strings.Join(l.last, " | ")
}

// readerProc is a started reader process that has not been sent its OPEN yet.
type readerProc struct {
	sock net.Conn
	srv  *child
}

func (r *readerProc) stop() {
	r.sock.Close() // the reader, waiting for its OPEN, exits
	r.srv.stop()
}

// startReader starts a reader process for VDDK in libdir; it waits for its OPEN.
func (t *Transferer) startReader(ctx context.Context, libdir string, log *slog.Logger) (*readerProc, error) {
	argv, err := t.vddkReader("serve")
	if err != nil {
		return nil, err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: socketpair: %v", ErrTool, err)
	}
	conn, theirs := os.NewFile(uintptr(fds[0]), "vddk-reader"), os.NewFile(uintptr(fds[1]), "vddk-agent")
	srv, err := startChild(ctx, log, "vddk-reader", argv, nil, func(cmd *exec.Cmd) {
		cmd.ExtraFiles = []*os.File{theirs} // fd 3 in the reader
		cmd.Env = vddkEnv(libdir)
	})
	theirs.Close() // the reader holds it now: its exit must end our reads
	if err != nil {
		conn.Close()
		return nil, err
	}
	sock, err := vddk.SocketConn(conn)
	if err != nil {
		srv.stop()
		return nil, fmt.Errorf("%w: %v", ErrTool, err)
	}
	return &readerProc{sock: sock, srv: srv}, nil
}

// ReaderPool holds VDDK reader processes started before the disks they will read can be
// opened: a warm cutover starts them while the guest shuts down, since a process's start
// (the agent's binary, its runtime) is most of a delta copy's fixed cost and would
// otherwise be downtime. A VDDKSource with the pool takes one instead of starting its
// own; Close stops those nobody took. A nil pool holds nothing.
type ReaderPool struct {
	libdir string
	mu     sync.Mutex
	procs  []*readerProc
}

// StartVDDKReaders starts up to n reader processes for VDDK in libdir (fewer if some fail
// to start: the sources then start their own, and the failure shows there).
func (t *Transferer) StartVDDKReaders(ctx context.Context, libdir string, n int) *ReaderPool {
	p := &ReaderPool{libdir: libdir}
	for range n {
		r, err := t.startReader(ctx, libdir, t.log)
		if err != nil {
			t.log.Warn("could not start a VDDK reader ahead of the copy", "err", err)
			break
		}
		p.procs = append(p.procs, r)
	}
	return p
}

// take hands out a started reader for libdir (nil: none left, or another libdir).
func (p *ReaderPool) take(libdir string) *readerProc {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.procs) == 0 || libdir != p.libdir {
		return nil
	}
	r := p.procs[len(p.procs)-1]
	p.procs = p.procs[:len(p.procs)-1]
	return r
}

// Close stops the readers nobody took.
func (p *ReaderPool) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	procs := p.procs
	p.procs = nil
	p.mu.Unlock()
	for _, r := range procs {
		r.stop()
	}
}

// openVDDK opens the disk of src in a reader process: one of src.Readers, else a new one.
func (t *Transferer) openVDDK(ctx context.Context, src VDDKSource, log *slog.Logger) (*vddkDisk, error) {
	rp := src.Readers.take(src.Libdir)
	if rp == nil || rp.srv.exited() {
		if rp != nil {
			rp.stop()
		}
		var err error
		if rp, err = t.startReader(ctx, src.Libdir, log); err != nil {
			return nil, err
		}
	} else {
		log.Info("vddk reader started ahead of the copy", "pid", rp.srv.cmd.Process.Pid)
	}
	sock, srv := rp.sock, rp.srv
	logs := &vddkLogs{log: log, secrets: []string{src.Password}}
	transports := src.Transports
	if transports == "" {
		transports = t.cfg.VDDKTransports
	}
	conns := src.Connections
	if conns <= 0 {
		conns = t.cfg.VDDKConnections
	}
	c, err := vddk.Open(sock, vddk.OpenRequest{
		Libdir: src.Libdir, Server: src.Server, Port: src.Port, User: src.User, Password: src.Password,
		Thumbprint: src.Thumbprint, VMXSpec: "moref=" + src.VMMoref, Snapshot: src.Snapshot, File: src.File,
		Transports: transports, Connections: conns, MaxRead: vddkMaxRead,
	}, logs.line)
	if err != nil {
		sock.Close()
		srv.stop()
		if cerr := ctxErr(ctx, "transfer"); cerr != nil {
			return nil, cerr
		}
		return nil, vddkOpenError(err, src, transports, srv, logs)
	}
	log.Info("vddk disk open", "capacity", c.Info.Capacity, "transport", c.Info.TransportMode, "connections", c.Info.Connections,
		"library", c.Info.LibraryPath, "query_allocated", c.Info.QueryAllocated)
	return &vddkDisk{c: c, srv: srv, conn: sock, logs: logs, src: src}, nil
}

// vddkOpenError turns a failed OPEN into what the operator must do.
func vddkOpenError(err error, src VDDKSource, transports string, srv *child, logs *vddkLogs) error {
	detail := vddk.Scrub(err.Error(), []string{src.Password}) + logs.tail()
	switch vddk.KindOf(err) {
	case vddk.KindAuth:
		return fmt.Errorf("%w: VDDK: %s refused the credentials of user %q (%s); check source.username and source.password",
			ErrSourceAccess, src.Server, src.User, detail)
	case vddk.KindTrust:
		return fmt.Errorf("%w: VDDK could not open %s on %s: %s. VDDK answers so when the server's certificate does not match the thumbprint it was given (%s): "+
			"check source.thumbprint against the server's SHA-1 thumbprint (openssl s_client -connect %s:443 | openssl x509 -noout -fingerprint -sha1)",
			ErrSourceAccess, src.File, src.Server, detail, orNone(src.Thumbprint), src.Server)
	case vddk.KindNotFound:
		return fmt.Errorf("%w: VDDK cannot find %s of %s at snapshot %s: %s", ErrSource, src.File, src.VMMoref, orNone(src.Snapshot), detail)
	case vddk.KindTransport:
		return fmt.Errorf("%w: none of the VDDK transport modes %s works from this host (%s); set the agent's transfer.vddk_transports "+
			"(nbdssl:nbd works over the network from anywhere; hotadd needs the agent in a VM of the same vSphere; san needs the datastore's LUNs)",
			ErrVDDKUnavailable, transports, detail)
	case vddk.KindLoad:
		return fmt.Errorf("%w: VMware VDDK in %s does not load: %s; unpack the whole VDDK tarball there and point --vddk-libdir (transfer.vddk_libdir) at it",
			ErrVDDKUnavailable, src.Libdir, detail)
	case vddk.KindInit:
		return fmt.Errorf("%w: VixDiskLib_InitEx failed: %s", ErrVDDKUnavailable, detail)
	}
	if errors.Is(err, vddk.ErrReaderGone) {
		return fmt.Errorf("%w: the VDDK reader process ended while opening %s: %s%s", ErrSource, src.File, readerExit(srv), logs.tail())
	}
	return fmt.Errorf("%w: VDDK: opening %s: %s", ErrSource, src.File, detail)
}

// readerExit describes how a reader process ended (after it has): the signal of a crash
// inside VDDK, or its exit status and last stderr line.
func readerExit(srv *child) string {
	select {
	case <-srv.done:
	case <-time.After(10 * time.Second):
		srv.stop()
	}
	msg := "exit status 0"
	if srv.err != nil {
		msg = srv.err.Error()
	}
	for _, l := range strings.Split(srv.stderr.Head(), "\n") {
		// A fault inside VDDK (SIGSEGV) makes the reader's Go runtime name the signal first.
		if strings.HasPrefix(l, "SIG") {
			msg = strings.TrimSpace(l) + ", " + msg
			break
		}
	}
	if s := lastLines(srv.stderr.String(), 1); s != "" && !strings.Contains(srv.stderr.Head(), "PC=") {
		msg += ": " + s
	}
	return msg
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (d *vddkDisk) Capacity() int64 { return d.c.Info.Capacity }

func (d *vddkDisk) Name() string { return d.src.File }

// readBounds: two requests in flight per VDDK connection keep each busy while the other
// answer crosses the socket; the reader serves at most vddkMaxRead per request.
func (d *vddkDisk) readBounds() (workers, maxRead int) {
	return d.c.Info.Connections * 2, vddkMaxRead
}

// extentWindow bounds one EXTENTS request: its answer (at most one block per 64 KiB chunk
// every other chunk) stays within the protocol's frame limit.
const extentWindow = 64 << 30

// Extents lists the allocated ranges through QueryAllocatedBlocks. ok is false when the
// library lacks it (VDDK before 6.7) or it fails: then everything is read.
func (d *vddkDisk) Extents(ctx context.Context) ([]DiskRange, bool, error) {
	if !d.c.Info.QueryAllocated {
		return nil, false, nil
	}
	var out []DiskRange
	size := d.Capacity()
	for off := int64(0); off < size; off += extentWindow {
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		ext, err := d.c.Extents(off, min(extentWindow, size-off))
		if err != nil {
			if errors.Is(err, vddk.ErrReaderGone) {
				return nil, false, d.readerGone(err)
			}
			d.logs.log.Warn("VDDK QueryAllocatedBlocks failed: reading every block", "err", err)
			return nil, false, nil
		}
		for _, e := range ext {
			out = append(out, DiskRange{Offset: e.Offset, Length: e.Length})
		}
	}
	return out, true, nil
}

// ReadAt reads whole sectors. Only an I/O failure (the reader reopened its connection) is
// worth another attempt; a dead reader or any other VDDK error is Permanent. The read is
// not interrupted by ctx (the reader has no cancel): a read that outlives the copier's
// request timeout is retried once it has failed, and the reader's end (close) ends it.
func (d *vddkDisk) ReadAt(_ context.Context, p []byte, off int64) error {
	err := d.c.ReadAt(p, off)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, vddk.ErrReaderGone):
		return Permanent(d.readerGone(err))
	case vddk.KindOf(err) == vddk.KindIO:
		return fmt.Errorf("VDDK read of %d bytes at %d: %s%s", len(p), off, err, d.logs.tail())
	}
	return Permanent(fmt.Errorf("%w: VDDK read of %d bytes at %d: %s", ErrSource, len(p), off, err))
}

func (d *vddkDisk) readerGone(err error) error {
	return fmt.Errorf("%w: the VDDK reader process of %s died (%s)%s; this attempt fails, the agent and its other work carry on",
		ErrSource, d.src.File, readerExit(d.srv), d.logs.tail())
}

// close ends the reader cleanly (connections closed, VixDiskLib_Exit) or, if it does not
// within a minute, kills it.
func (d *vddkDisk) close() {
	done := make(chan struct{})
	go func() { _ = d.c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		d.logs.log.Warn("VDDK reader did not exit after close: killing it")
	}
	d.conn.Close()
	select {
	case <-d.srv.done:
	case <-time.After(10 * time.Second):
	}
	d.srv.stop()
}

// VDDK copies a disk through VMware's VDDK into out with the parallel copier (Copy): only
// the allocated blocks are read (QueryAllocatedBlocks) through several connections at once,
// under the job's and the agent's caps, and only the non-zero ones written, into a sparse
// raw file or through qemu-nbd into qcow2. A crash of VDDK ends this transfer with
// ErrSource, never the agent.
func (t *Transferer) VDDK(ctx context.Context, src VDDKSource, out Output) (*Result, error) {
	start := time.Now()
	format, err := out.validate()
	if err != nil {
		return nil, err
	}
	if err := src.validate(); err != nil {
		return nil, err
	}
	log := t.log.With("method", MethodVDDK, "disk", labelOr(out.Label, src.File), "output", out.Path)
	d, err := t.openVDDK(ctx, src, log)
	if err != nil {
		return nil, err
	}
	defer d.close()
	out.Format = format
	res, err := t.Copy(ctx, d, out)
	if err != nil {
		return nil, err
	}
	res.Method = MethodVDDK
	res.Duration = time.Since(start)
	if !d.c.Info.QueryAllocated {
		// The same words for every disk, so that the job shows it once.
		res.Warnings = append(res.Warnings, fmt.Sprintf("VDDK %s has no QueryAllocatedBlocks (VDDK before 6.7): every block was read, holes included "+
			"(the images are sparse all the same); install VDDK 6.7 or later to read only allocated blocks", d.c.Info.LibraryPath))
	}
	log.Info("vddk transfer done", "bytes", res.VirtualSize, "read", res.SourceBytes, "allocated", res.AllocatedBytes,
		"seconds", res.Duration.Seconds())
	return res, nil
}
