//go:build !cgo || !linux

package vddk

import "errors"

// cgoEnabled: without cgo (or off Linux) the agent builds and runs, with no vddk method.
const cgoEnabled = false

var errNoCgo = errors.New("this hypersdk-agent was built without cgo (CGO_ENABLED=0) or not for Linux, so it cannot load VDDK: rebuild it with cgo")

type library struct {
	path    string
	version int
	qab     bool
}

func loadLibrary(string) (*library, error) { return nil, errNoCgo }
func (l *library) init(string) error       { return errNoCgo }
func (l *library) exit()                   {}
func (l *library) resolvedPath() string    { return l.path }

type connParams struct {
	Server, Thumbprint, User, Password, VMXSpec, Snapshot, Transports string
	Port                                                              int
}

type disk struct{ mode string }

func (l *library) connect(connParams, string) (*disk, error)       { return nil, errNoCgo }
func (d *disk) info() (int64, int, error)                          { return 0, 0, errNoCgo }
func (d *disk) read(int64, int64, *cBuffer) error                  { return errNoCgo }
func (d *disk) allocated(uint64, uint64, uint64) ([]Extent, error) { return nil, errNoCgo }
func (d *disk) close() error                                       { return nil }

type vixError struct {
	call string
	code uint64
	text string
}

func (e *vixError) Error() string     { return e.text }
func (e *vixError) errorCode() uint64 { return e.code & 0xffff }

type cBuffer struct{ b []byte }

func newCBuffer(n int) *cBuffer       { return &cBuffer{b: make([]byte, n)} }
func (b *cBuffer) bytes(n int) []byte { return b.b[:n] }
func (b *cBuffer) free()              {}
