package vddk

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
)

// The agent and its reader process talk over a socketpair (the reader's fd 3) in frames:
//
//	type u8 | 3 bytes zero | id u32 | payload length u64 | payload
//
// The agent sends OPEN once (JSON OpenRequest: the password travels here, in memory,
// never in argv, environment or a file), then READ and EXTENTS requests with ids of its
// choosing, several in flight, and CLOSE. The reader answers each request with DATA,
// BLOCKS or ERROR carrying the request's id (in any order: every connection reads on its
// own thread), and sends LOG frames (id 0) with VDDK's messages whenever they come.

const (
	frameOpen    = 1 // agent → reader: JSON OpenRequest
	frameOpened  = 2 // reader → agent: JSON OpenReply
	frameRead    = 3 // agent → reader: offset u64, length u32
	frameData    = 4 // reader → agent: the bytes
	frameExtents = 5 // agent → reader: offset u64, length u64
	frameBlocks  = 6 // reader → agent: (offset u64, length u64)… allocated byte ranges
	frameError   = 7 // reader → agent: JSON ErrorReply
	frameLog     = 8 // reader → agent: JSON LogLine
	frameClose   = 9 // agent → reader: close every connection, VixDiskLib_Exit, exit
	frameClosed  = 10
)

const (
	headerLen = 16
	// maxPayload bounds what either side accepts: the largest read and a block list for
	// one QueryAllocatedBlocks window (at most 512 Ki blocks of 16 bytes) fit.
	maxPayload = 16 << 20
)

type header struct {
	typ byte
	id  uint32
	n   uint64
}

func (h header) encode() [headerLen]byte {
	var b [headerLen]byte
	b[0] = h.typ
	binary.BigEndian.PutUint32(b[4:], h.id)
	binary.BigEndian.PutUint64(b[8:], h.n)
	return b
}

func readHeader(r io.Reader) (header, error) {
	var b [headerLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return header{}, err
	}
	h := header{typ: b[0], id: binary.BigEndian.Uint32(b[4:]), n: binary.BigEndian.Uint64(b[8:])}
	if h.n > maxPayload {
		return h, fmt.Errorf("vddk reader protocol: frame of %d bytes", h.n)
	}
	return h, nil
}

// writeFrame writes one frame; the caller serialises writers. On a socket (SocketConn)
// the header and payload leave in one writev: system calls, not bytes, are what a delta
// of many small reads costs (most of all in a VM, where each one traps).
func writeFrame(w io.Writer, typ byte, id uint32, payload ...[]byte) error {
	var n uint64
	for _, p := range payload {
		n += uint64(len(p))
	}
	h := header{typ: typ, id: id, n: n}.encode()
	bufs := make(net.Buffers, 0, 1+len(payload))
	bufs = append(bufs, h[:])
	bufs = append(bufs, payload...)
	_, err := bufs.WriteTo(w)
	return err
}

// SocketConn turns one end of the agent–reader socketpair into a net.Conn, taking f over
// (f is closed). Its reads and writes go through Go's network poller, so a goroutine
// waiting for the other side parks instead of holding a thread in a blocking read (each
// of which hands its processor to another thread: futex calls on every request).
func SocketConn(f *os.File) (net.Conn, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("vddk reader socket: %w", err)
	}
	return c, nil
}

func writeJSON(w io.Writer, typ byte, id uint32, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFrame(w, typ, id, b)
}

// OpenRequest is what the reader needs to open one disk.
type OpenRequest struct {
	// Libdir is VDDK's directory (the one holding lib64/), passed to InitEx.
	Libdir     string `json:"libdir"`
	Server     string `json:"server"`
	Port       int    `json:"port,omitempty"`
	User       string `json:"user"`
	Password   string `json:"password"`
	Thumbprint string `json:"thumbprint"`
	// VMXSpec is "moref=vm-NN".
	VMXSpec  string `json:"vmx_spec"`
	Snapshot string `json:"snapshot,omitempty"`
	// File is the disk as vSphere names it: "[datastore1] vm/vm.vmdk".
	File       string `json:"file"`
	Transports string `json:"transports,omitempty"`
	// Connections is how many VDDK connections (each with the disk open) serve reads
	// in parallel, one thread each.
	Connections int `json:"connections"`
	// MaxRead is the largest READ the agent will send (bytes, whole sectors).
	MaxRead int `json:"max_read"`
}

// OpenReply describes the opened disk.
type OpenReply struct {
	Capacity       int64  `json:"capacity"`    // bytes
	SectorSize     int    `json:"sector_size"` // logical; reads are whole 512-byte sectors regardless
	TransportMode  string `json:"transport_mode"`
	Connections    int    `json:"connections"`
	LibraryPath    string `json:"library_path"`
	LibraryVersion int    `json:"library_version"`
	// QueryAllocated: the library has QueryAllocatedBlocks (VDDK 6.7+), so EXTENTS works.
	QueryAllocated bool `json:"query_allocated"`
}

// Error kinds, so that the agent can tell the job's mistakes from the environment's.
const (
	KindLoad        = "load"        // the library does not load
	KindInit        = "init"        // InitEx failed
	KindAuth        = "auth"        // the server refused the credentials
	KindTrust       = "trust"       // the certificate does not match the thumbprint
	KindNotFound    = "not_found"   // no such disk (or VM, or snapshot)
	KindTransport   = "transport"   // none of the transport modes works from here
	KindIO          = "io"          // a read failed (the connection was reopened: retry)
	KindInvalid     = "invalid"     // a request the reader refuses (protocol misuse)
	KindUnsupported = "unsupported" // the library lacks the call (QueryAllocatedBlocks)
	KindFailed      = "failed"      // anything else
)

// ErrorReply is a failed request, or a failed OPEN.
type ErrorReply struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	Code    uint64 `json:"code,omitempty"` // VixError code, if any
}

// Error is an ErrorReply on the agent's side.
type Error struct{ ErrorReply }

func (e *Error) Error() string { return e.Message }

// KindOf returns the kind of a reader error ("" if err is not one).
func KindOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return ""
}

// Log levels of LogLine.
const (
	LevelInfo  = 0 // VDDK's log function
	LevelWarn  = 1 // warning function
	LevelPanic = 2 // panic function (VDDK is about to abort)
	LevelAgent = 3 // the reader's own notes
)

// LogLine is one message of VDDK (already scrubbed of secrets by the reader).
type LogLine struct {
	Level int    `json:"level"`
	Msg   string `json:"msg"`
}

// Extent is a byte range of the disk.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// sectorSize is VixDiskLib's unit: Read and QueryAllocatedBlocks count 512-byte sectors.
const sectorSize = 512

// chunkSectors is the QueryAllocatedBlocks granularity asked for: VDDK's minimum (64 KiB).
const chunkSectors = 128

// maxChunksPerQuery is VDDK's limit of chunks per QueryAllocatedBlocks call.
const maxChunksPerQuery = 512 * 1024
