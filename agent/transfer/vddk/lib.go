//go:build cgo && linux

package vddk

/*
#cgo CFLAGS: -O2 -Wall
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include <string.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"path/filepath"
	"sync"
	"unsafe"
)

// cgoEnabled: this build can load VDDK.
const cgoEnabled = true

// library is VMware's libvixDiskLib, loaded into this (reader) process.
type library struct {
	path    string
	version int // soname major: 8, 7 or 6
	qab     bool
}

var loadOnce struct {
	sync.Mutex
	lib *library
}

// loadLibrary dlopens the newest libvixDiskLib under libdir/lib64. A process loads one
// library once (VDDK cannot be unloaded cleanly).
func loadLibrary(libdir string) (*library, error) {
	loadOnce.Lock()
	defer loadOnce.Unlock()
	if loadOnce.lib != nil {
		return loadOnce.lib, nil
	}
	path, version, err := findLibrary(libdir)
	if err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var cerr *C.char
	if C.hs_load(cpath, &cerr) != 0 {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		return nil, fmt.Errorf("%w: %s", errLoad, msg)
	}
	loadOnce.lib = &library{path: path, version: version, qab: C.hs_has_query_allocated() != 0}
	return loadOnce.lib, nil
}

// vixError is a failed VixDiskLib call.
type vixError struct {
	call string
	code uint64 // VixError
	text string
}

func (e *vixError) Error() string {
	return fmt.Sprintf("VixDiskLib_%s: %s (VDDK error %d)", e.call, e.text, e.code&0xffff)
}

func (e *vixError) errorCode() uint64 { return e.code & 0xffff }

func check(call string, e C.VixError) error {
	if e == C.VIX_OK {
		return nil
	}
	t := C.hs_error_text(e)
	defer C.free(unsafe.Pointer(t))
	return &vixError{call: call, code: uint64(e), text: C.GoString(t)}
}

// init calls InitEx. The API version asked for is 6.5: the oldest this code supports, and
// every later library accepts it (QueryAllocatedBlocks is found by dlsym, not by version).
func (l *library) init(libdir string) error {
	cdir := C.CString(libdir)
	defer C.free(unsafe.Pointer(cdir))
	return check("InitEx", C.hs_init(6, 5, cdir))
}

func (l *library) exit() { C.hs_exit() }

// connParams are ConnectEx's inputs.
type connParams struct {
	Server, Thumbprint, User, Password, VMXSpec, Snapshot, Transports string
	Port                                                              int
}

// disk is one connection with the disk open on it. Every call on it must come from one
// thread at a time; the reader pins each disk to its own locked OS thread.
type disk struct {
	lib    *library
	conn   C.hs_conn
	handle C.VixDiskLibHandle
	mode   string
}

// openCloseMu serialises Open and Close across connections, which VDDK requires.
var openCloseMu sync.Mutex

// connect runs ConnectEx and Open (read-only) for file.
func (l *library) connect(p connParams, file string) (*disk, error) {
	cs := func(s string) *C.char { return C.CString(s) }
	vmx, server, thumb, user, snap, tr := cs(p.VMXSpec), cs(p.Server), cs(p.Thumbprint), cs(p.User), cs(p.Snapshot), cs(p.Transports)
	pw := cs(p.Password)
	defer func() {
		for _, s := range []*C.char{vmx, server, thumb, user, snap, tr} {
			C.free(unsafe.Pointer(s))
		}
		// The C copy of the password: wiped, not just freed.
		C.memset(unsafe.Pointer(pw), 0, C.size_t(len(p.Password)))
		C.free(unsafe.Pointer(pw))
	}()
	d := &disk{lib: l}
	if err := check("ConnectEx", C.hs_connect(&d.conn, vmx, server, thumb, user, pw, C.uint32_t(p.Port), snap, tr)); err != nil {
		return nil, err
	}
	cfile := cs(file)
	defer C.free(unsafe.Pointer(cfile))
	openCloseMu.Lock()
	err := check("Open", C.hs_open(&d.conn, cfile, &d.handle))
	openCloseMu.Unlock()
	if err != nil {
		C.hs_disconnect(&d.conn)
		return nil, err
	}
	if m := C.hs_transport_mode(d.handle); m != nil {
		d.mode = C.GoString(m)
	}
	return d, nil
}

// info returns the capacity in bytes and the logical sector size (512 before VDDK 7).
func (d *disk) info() (capacity int64, sector int, err error) {
	var sectors C.uint64_t
	var logical, physical C.uint32_t
	if err := check("GetInfo", C.hs_get_info(d.handle, C.int(d.lib.version), &sectors, &logical, &physical)); err != nil {
		return 0, 0, err
	}
	sector = int(logical)
	if sector == 0 {
		sector = sectorSize
	}
	return int64(sectors) * sectorSize, sector, nil
}

// read fills the first n bytes of buf from byte offset off; both are whole sectors.
func (d *disk) read(off, n int64, buf *cBuffer) error {
	return check("Read", C.hs_read(d.handle, C.uint64_t(off/sectorSize), C.uint64_t(n/sectorSize), (*C.uint8_t)(buf.p)))
}

// allocated lists the allocated blocks of [start, start+n) sectors in chunks of chunk
// sectors, as byte ranges.
func (d *disk) allocated(start, n, chunk uint64) ([]Extent, error) {
	var pairs *C.uint64_t
	var count C.uint32_t
	if err := check("QueryAllocatedBlocks", C.hs_query_allocated(d.handle, C.uint64_t(start), C.uint64_t(n), C.uint64_t(chunk), &pairs, &count)); err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(pairs))
	raw := unsafe.Slice((*uint64)(unsafe.Pointer(pairs)), int(count)*2)
	out := make([]Extent, count)
	for i := range out {
		out[i] = Extent{Offset: int64(raw[2*i]) * sectorSize, Length: int64(raw[2*i+1]) * sectorSize}
	}
	return out, nil
}

// close closes the disk and its connection.
func (d *disk) close() error {
	var err error
	if d.handle != nil {
		openCloseMu.Lock()
		err = check("Close", C.hs_close(d.handle))
		openCloseMu.Unlock()
		d.handle = nil
	}
	if derr := check("Disconnect", C.hs_disconnect(&d.conn)); err == nil {
		err = derr
	}
	return err
}

// cBuffer is read memory the library writes into: C memory, so that VDDK's threads never
// hold a pointer into the Go heap.
type cBuffer struct {
	p unsafe.Pointer
	n int
}

func newCBuffer(n int) *cBuffer { return &cBuffer{p: C.malloc(C.size_t(n)), n: n} }
func (b *cBuffer) bytes(n int) []byte {
	return unsafe.Slice((*byte)(b.p), n)
}
func (b *cBuffer) free() { C.free(b.p) }

//export hsVDDKLog
func hsVDDKLog(level C.int, msg *C.char) {
	vddkLog(int(level), C.GoString(msg))
}

// libraryPath reports the file loaded, resolved through symlinks (the name carries the
// full version, e.g. libvixDiskLib.so.8.0.3).
func (l *library) resolvedPath() string {
	if p, err := filepath.EvalSymlinks(l.path); err == nil {
		return p
	}
	return l.path
}
