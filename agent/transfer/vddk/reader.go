package vddk

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Subcommand is the first argument that turns the agent binary into a reader process.
// A program that may start readers (hypersdk-agent, the test binaries of the packages
// that copy disks) calls Main when it sees it, before anything else.
const Subcommand = "vddk-reader"

// maxConnections bounds the connections of one reader (ESXi limits NFC connections per
// host; a handful per disk is what helps).
const maxConnections = 16

// ProbeResult is what `vddk-reader probe DIR` prints (JSON on stdout).
type ProbeResult struct {
	Loaded         bool   `json:"loaded"`
	Path           string `json:"path,omitempty"`
	Version        int    `json:"version,omitempty"`
	QueryAllocated bool   `json:"query_allocated"`
	// NotInstalled: no library file at all (as opposed to one that does not load).
	NotInstalled bool   `json:"not_installed,omitempty"`
	Error        string `json:"error,omitempty"`
}

// RunIfReader runs Main and exits when this process was started as a reader (its first
// argument is Subcommand); otherwise it returns at once. Programs that start readers (the
// agent, test binaries) call it first thing in main or TestMain.
func RunIfReader() {
	if len(os.Args) > 1 && os.Args[1] == Subcommand {
		os.Exit(Main(os.Args[2:]))
	}
}

// Main runs a reader process and returns its exit status:
//
//	vddk-reader probe DIR   load DIR/lib64/libvixDiskLib.so.N, print a ProbeResult, exit
//	vddk-reader serve       serve one disk over the socket on fd 3 (protocol.go)
//
// Both expect LD_LIBRARY_PATH to include DIR/lib64, which the agent sets.
func Main(args []string) int {
	switch {
	case len(args) == 2 && args[0] == "probe":
		return probe(args[1], os.Stdout)
	case len(args) == 1 && args[0] == "serve":
		f := os.NewFile(3, "vddk-socket")
		if f == nil {
			fmt.Fprintln(os.Stderr, "vddk-reader: fd 3 (the agent's socket) is not open")
			return 2
		}
		conn, err := SocketConn(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "vddk-reader: fd 3 (the agent's socket):", err)
			return 2
		}
		return serve(conn)
	}
	fmt.Fprintln(os.Stderr, "usage: vddk-reader probe DIR | vddk-reader serve (started by hypersdk-agent)")
	return 2
}

func probe(libdir string, out io.Writer) int {
	var r ProbeResult
	lib, err := loadLibrary(libdir)
	if err != nil {
		r.Error = err.Error()
		r.NotInstalled = errors.Is(err, ErrNotInstalled)
	} else {
		r = ProbeResult{Loaded: true, Path: lib.resolvedPath(), Version: lib.version, QueryAllocated: lib.qab}
	}
	if err := json.NewEncoder(out).Encode(r); err != nil {
		return 1
	}
	return 0
}

// logSink receives VDDK's messages (from any thread, through hsVDDKLog).
var logSink atomic.Pointer[func(level int, msg string)]

func vddkLog(level int, msg string) {
	msg = strings.TrimSpace(msg)
	if f := logSink.Load(); f != nil {
		(*f)(level, msg)
		return
	}
	fmt.Fprintln(os.Stderr, Scrub(msg, nil))
}

// server is the reader side of one disk.
type server struct {
	conn    io.ReadWriter
	wmu     sync.Mutex // one frame at a time on the socket
	secrets []string
	req     OpenRequest
	lib     *library
	info    OpenReply
	work    chan request
}

type request struct {
	typ    byte
	id     uint32
	off, n int64
}

func (s *server) send(typ byte, id uint32, payload ...[]byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	// Straight to the socket: one writev per frame, the payload not copied on the way.
	return writeFrame(s.conn, typ, id, payload...)
}

func (s *server) sendJSON(typ byte, id uint32, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.send(typ, id, b)
}

func (s *server) sendError(id uint32, kind string, err error) {
	r := ErrorReply{Kind: kind, Message: Scrub(err.Error(), s.secrets)}
	var ve *vixError
	if errors.As(err, &ve) {
		r.Code = ve.errorCode()
	}
	_ = s.sendJSON(frameError, id, r)
}

func (s *server) note(format string, args ...any) {
	_ = s.sendJSON(frameLog, 0, LogLine{Level: LevelAgent, Msg: fmt.Sprintf(format, args...)})
}

func serve(conn net.Conn) int {
	defer conn.Close()
	// VDDK calls abort() on internal errors. Taking SIGABRT away from the Go runtime lets
	// the process die of it plainly ("signal: aborted" for the agent) instead of the
	// runtime's dump of every goroutine and register.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGABRT)
	s := &server{conn: conn}
	h, err := readHeader(conn)
	if err != nil || h.typ != frameOpen {
		fmt.Fprintf(os.Stderr, "vddk-reader: expected OPEN from the agent: %v\n", err)
		return 2
	}
	body := make([]byte, h.n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return 2
	}
	if err := json.Unmarshal(body, &s.req); err != nil {
		s.sendError(h.id, KindInvalid, fmt.Errorf("bad OPEN: %v", err))
		return 2
	}
	clear(body) // it held the password
	s.secrets = []string{s.req.Password}
	sink := func(level int, msg string) {
		_ = s.sendJSON(frameLog, 0, LogLine{Level: level, Msg: Scrub(msg, s.secrets)})
	}
	logSink.Store(&sink)

	s.lib, err = loadLibrary(s.req.Libdir)
	if err != nil {
		kind := KindLoad
		s.sendError(h.id, kind, err)
		return 1
	}
	if err := s.lib.init(s.req.Libdir); err != nil {
		s.sendError(h.id, KindInit, err)
		return 1
	}
	code := s.run(h.id)
	s.lib.exit()
	if code == 0 {
		_ = s.send(frameClosed, 0)
	}
	return code
}

// worker owns one connection, pinned to one OS thread for its whole life: VDDK wants a
// connection used by one thread at a time, and some of its calls assume the same thread.
type worker struct {
	s   *server
	idx int
	d   *disk
	buf *cBuffer
}

type ready struct {
	w        *worker
	err      error
	capacity int64
	sector   int
}

func (s *server) connParams() connParams {
	return connParams{Server: s.req.Server, Port: s.req.Port, Thumbprint: s.req.Thumbprint, User: s.req.User,
		Password: s.req.Password, VMXSpec: s.req.VMXSpec, Snapshot: s.req.Snapshot, Transports: s.req.Transports}
}

func (s *server) startWorker(idx int, readyc chan<- ready, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		w := &worker{s: s, idx: idx}
		d, err := s.lib.connect(s.connParams(), s.req.File)
		if err != nil {
			readyc <- ready{err: err}
			return
		}
		w.d = d
		capacity, sector, err := d.info()
		if err != nil {
			_ = d.close()
			readyc <- ready{err: err}
			return
		}
		w.buf = newCBuffer(s.req.MaxRead)
		defer w.buf.free()
		readyc <- ready{w: w, capacity: capacity, sector: sector}
		for r := range s.work {
			w.handle(r)
		}
		if w.d != nil {
			if err := w.d.close(); err != nil {
				s.note("closing connection %d: %v", idx, Scrub(err.Error(), s.secrets))
			}
		}
	}()
}

// openKind tells what a failed ConnectEx/Open means for the operator.
func openKind(err error) string {
	var ve *vixError
	if !errors.As(err, &ve) {
		return KindFailed
	}
	switch {
	case ve.call == "ConnectEx" && ve.errorCode() == 35: // VIX_E_AUTHENTICATION_FAIL
		return KindAuth
	case ve.call == "Open" && ve.errorCode() == 1: // VIX_E_FAIL: VDDK's answer to a thumbprint mismatch
		return KindTrust
	case ve.errorCode() == 4: // VIX_E_FILE_NOT_FOUND
		return KindNotFound
	case ve.call == "Open" && ve.errorCode() == 6: // VIX_E_NOT_SUPPORTED: no transport mode works
		return KindTransport
	}
	return KindFailed
}

func (s *server) run(openID uint32) int {
	if s.req.MaxRead <= 0 || s.req.MaxRead%sectorSize != 0 {
		s.sendError(openID, KindInvalid, fmt.Errorf("max_read %d is not a positive number of sectors", s.req.MaxRead))
		return 2
	}
	n := min(max(s.req.Connections, 1), maxConnections)
	s.work = make(chan request, n)
	readyc := make(chan ready, n)
	var wg sync.WaitGroup
	defer func() {
		close(s.work)
		wg.Wait()
	}()
	// One connection first: a wrong password or thumbprint fails once, not n times.
	s.startWorker(0, readyc, &wg)
	first := <-readyc
	if first.err != nil {
		s.sendError(openID, openKind(first.err), first.err)
		return 1
	}
	s.info = OpenReply{Capacity: first.capacity, SectorSize: first.sector, TransportMode: first.w.d.mode,
		LibraryPath: s.lib.resolvedPath(), LibraryVersion: s.lib.version, QueryAllocated: s.lib.qab, Connections: 1}
	for i := 1; i < n; i++ {
		s.startWorker(i, readyc, &wg)
	}
	for i := 1; i < n; i++ {
		if r := <-readyc; r.err != nil {
			// The server may limit connections (NFC); fewer still work.
			s.note("connection %d of %d failed, reading with fewer: %v", i+1, n, Scrub(r.err.Error(), s.secrets))
		} else {
			s.info.Connections++
		}
	}
	if err := s.sendJSON(frameOpened, openID, s.info); err != nil {
		return 1
	}
	return s.loop()
}

// loop hands requests to the workers until CLOSE (0) or the agent goes away (1).
func (s *server) loop() int {
	r := bufio.NewReaderSize(s.conn, 64<<10)
	for {
		h, err := readHeader(r)
		if err != nil {
			return 1 // the agent is gone: close and exit
		}
		p := make([]byte, h.n)
		if _, err := io.ReadFull(r, p); err != nil {
			return 1
		}
		switch h.typ {
		case frameClose:
			return 0
		case frameRead:
			if len(p) != 12 {
				s.sendError(h.id, KindInvalid, errors.New("bad READ frame"))
				continue
			}
			off, n := int64(binary.BigEndian.Uint64(p)), int64(binary.BigEndian.Uint32(p[8:]))
			if err := s.checkRead(off, n); err != nil {
				s.sendError(h.id, KindInvalid, err)
				continue
			}
			s.work <- request{typ: frameRead, id: h.id, off: off, n: n}
		case frameExtents:
			if len(p) != 16 {
				s.sendError(h.id, KindInvalid, errors.New("bad EXTENTS frame"))
				continue
			}
			if !s.lib.qab {
				s.sendError(h.id, KindUnsupported, fmt.Errorf("%s has no VixDiskLib_QueryAllocatedBlocks (VDDK 6.7 or later has it)", s.lib.resolvedPath()))
				continue
			}
			s.work <- request{typ: frameExtents, id: h.id, off: int64(binary.BigEndian.Uint64(p)), n: int64(binary.BigEndian.Uint64(p[8:]))}
		default:
			s.sendError(h.id, KindInvalid, fmt.Errorf("unknown frame type %d", h.typ))
		}
	}
}

// checkRead refuses what VixDiskLib_Read cannot do: partial sectors, reads past the end,
// more than the agent said it would ask for.
func (s *server) checkRead(off, n int64) error {
	switch {
	case off < 0 || n <= 0 || off%sectorSize != 0 || n%sectorSize != 0:
		return fmt.Errorf("read of %d bytes at %d is not whole %d-byte sectors", n, off, sectorSize)
	case n > int64(s.req.MaxRead):
		return fmt.Errorf("read of %d bytes exceeds the %d-byte maximum", n, s.req.MaxRead)
	case off+n > s.info.Capacity:
		return fmt.Errorf("read of %d bytes at %d is beyond the disk's %d bytes", n, off, s.info.Capacity)
	}
	return nil
}

func (w *worker) handle(r request) {
	s := w.s
	if w.d == nil && !w.reconnect() {
		s.sendError(r.id, KindIO, errors.New("connection lost and could not be reopened"))
		return
	}
	switch r.typ {
	case frameRead:
		if err := w.d.read(r.off, r.n, w.buf); err != nil {
			// A failed read may have broken the connection (NFC drops it): reopen it so
			// that the agent's retry finds a working one.
			w.reconnect()
			s.sendError(r.id, KindIO, err)
			return
		}
		if err := s.send(frameData, r.id, w.buf.bytes(int(r.n))); err != nil {
			return // the agent is gone; the loop ends on its own
		}
	case frameExtents:
		ext, err := w.extents(r.off, r.n)
		if err != nil {
			s.sendError(r.id, KindIO, err)
			return
		}
		b := make([]byte, 16*len(ext))
		for i, e := range ext {
			binary.BigEndian.PutUint64(b[16*i:], uint64(e.Offset))
			binary.BigEndian.PutUint64(b[16*i+8:], uint64(e.Length))
		}
		_ = s.send(frameBlocks, r.id, b)
	}
}

func (w *worker) reconnect() bool {
	s := w.s
	if w.d != nil {
		_ = w.d.close()
		w.d = nil
	}
	d, err := s.lib.connect(s.connParams(), s.req.File)
	if err != nil {
		s.note("reopening connection %d: %v", w.idx+1, Scrub(err.Error(), s.secrets))
		return false
	}
	w.d = d
	return true
}

// extents asks QueryAllocatedBlocks about [off, off+n) in windows of whole chunks (VDDK's
// rule) and returns the allocated byte ranges inside it, merged and sorted.
func (w *worker) extents(off, n int64) ([]Extent, error) {
	capacity := w.s.info.Capacity
	end := min(off+n, capacity)
	if off < 0 || off >= end {
		return nil, nil
	}
	chunk := int64(chunkSectors * sectorSize)
	start := off / chunk * chunk
	stop := (end + chunk - 1) / chunk * chunk
	var blocks []Extent
	for pos := start; pos < stop; {
		win := min(stop-pos, int64(maxChunksPerQuery)*chunk)
		b, err := w.d.allocated(uint64(pos/sectorSize), uint64(win/sectorSize), chunkSectors)
		if err != nil {
			return nil, err
		}
		blocks = append(blocks, b...)
		pos += win
	}
	return clipMerge(blocks, off, end), nil
}

// clipMerge sorts blocks, clips them to [off, end) and merges those that touch.
func clipMerge(blocks []Extent, off, end int64) []Extent {
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].Offset < blocks[j].Offset })
	var out []Extent
	for _, b := range blocks {
		s, e := max(b.Offset, off), min(b.Offset+b.Length, end)
		if s >= e {
			continue
		}
		if k := len(out); k > 0 && out[k-1].Offset+out[k-1].Length >= s {
			out[k-1].Length = max(out[k-1].Length, e-out[k-1].Offset)
			continue
		}
		out = append(out, Extent{Offset: s, Length: e - s})
	}
	return out
}

// ParseProbe decodes the output of `vddk-reader probe`.
func ParseProbe(out []byte) (ProbeResult, error) {
	var r ProbeResult
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("vddk-reader probe: %v: %q", err, out)
	}
	return r, nil
}
