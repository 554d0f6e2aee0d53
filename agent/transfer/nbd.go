package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, simple replies) that only
// writes. It lets the NFC path put decoded grains straight into qemu-nbd at their offsets, in
// any order, with several writes in flight, and send nothing at all for holes. The
// alternative, piping raw bytes into `nbdcopy - [ qemu-nbd ... ]`, forces strictly
// sequential input (zeros for every hole travel through the pipe) and nbdcopy falls back to
// synchronous mode for pipes.

const (
	nbdMagic          = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic       = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic       = 0x0003e889045565a9
	nbdRequestMagic   = 0x25609513
	nbdSimpleReply    = 0x67446698
	nbdFlagFixedNew   = 1 << 0
	nbdFlagNoZeroes   = 1 << 1
	nbdOptGo          = 7
	nbdRepAck         = 1
	nbdRepInfo        = 3
	nbdInfoExport     = 0
	nbdFlagReadOnly   = 1 << 1
	nbdCmdWrite       = 1
	nbdCmdDisc        = 2
	nbdCmdFlush       = 3
	nbdMaxInFlight    = 16
	nbdMaxOptReplyLen = 64 << 10
)

// nbdMaxWrite bounds one request: the server holds a buffer per request in flight, so this
// bounds its memory (nbdMaxInFlight × 2 MiB), whatever size the caller writes.
const nbdMaxWrite = 2 << 20

// nbdErrnos maps NBD protocol error values to errno (the protocol uses Linux values for
// the ones it defines).
var nbdErrnos = map[uint32]syscall.Errno{
	1: syscall.EPERM, 5: syscall.EIO, 12: syscall.ENOMEM, 22: syscall.EINVAL,
	28: syscall.ENOSPC, 75: syscall.EOVERFLOW, 95: syscall.EOPNOTSUPP, 108: syscall.ESHUTDOWN,
}

type nbdWriter struct {
	conn  net.Conn
	size  int64
	flags uint16

	sendMu sync.Mutex // one request on the wire at a time
	handle uint64
	slots  chan struct{} // bounds requests in flight

	errMu sync.Mutex
	err   error // first error from a reply or the connection

	readerDone chan struct{}
}

// dialNBD connects to a Unix socket, retrying until the server listens (or srv exits, or
// the deadline passes), and negotiates the default export.
func dialNBD(ctx context.Context, srv *child, socket string, timeout time.Duration) (*nbdWriter, error) {
	w, err := dialNBDExport(ctx, srv, socket, timeout)
	if err != nil {
		return nil, err
	}
	if w.flags&nbdFlagReadOnly != 0 {
		w.conn.Close()
		return nil, errors.New("nbd export is read-only")
	}
	go w.readReplies()
	return w, nil
}

func dialNBDExport(ctx context.Context, srv *child, socket string, timeout time.Duration) (*nbdWriter, error) {
	deadline := time.Now().Add(timeout)
	var conn net.Conn
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", socket)
		if err == nil {
			conn = c
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if srv.exited() {
			return nil, fmt.Errorf("%s exited before it listened: %v: %s", srv.name, srv.err, srv.stderr.String())
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s not listening after %s: %v", srv.name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond): // poll interval, bounded by the deadline
		}
	}
	growSendBuffer(conn, nbdSendBuffer)
	w := &nbdWriter{conn: conn, slots: make(chan struct{}, nbdMaxInFlight), readerDone: make(chan struct{})}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if err := w.handshake(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return w, nil
}

// nbdSendBuffer lets one write request of the copier (a piece, 4 MiB by default) sit in the
// socket at once: with the default buffer (~200 KiB) every request costs dozens of
// partial writes and as many wake-ups of qemu-nbd.
const nbdSendBuffer = 8 << 20

// growSendBuffer raises the socket's send buffer: past net.core.wmem_max when the agent
// may (root, SO_SNDBUFFORCE), else as far as the limit allows.
func growSendBuffer(conn net.Conn, size int) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return
	}
	if rc, err := uc.SyscallConn(); err == nil {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, size)
		}); err == nil && serr == nil {
			return
		}
	}
	_ = uc.SetWriteBuffer(size)
}

func (w *nbdWriter) handshake() error {
	var hello [18]byte
	if _, err := io.ReadFull(w.conn, hello[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != nbdOptMagic {
		return errors.New("not a newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(hello[16:])
	if sflags&nbdFlagFixedNew == 0 {
		return errors.New("server lacks fixed newstyle negotiation")
	}
	cflags := uint32(nbdFlagFixedNew)
	if sflags&nbdFlagNoZeroes != 0 {
		cflags |= nbdFlagNoZeroes
	}
	// NBD_OPT_GO for the default export "" with no info requests.
	msg := binary.BigEndian.AppendUint32(nil, cflags)
	msg = binary.BigEndian.AppendUint64(msg, nbdOptMagic)
	msg = binary.BigEndian.AppendUint32(msg, nbdOptGo)
	msg = binary.BigEndian.AppendUint32(msg, 4+2) // name length field + info count
	msg = binary.BigEndian.AppendUint32(msg, 0)   // export name ""
	msg = binary.BigEndian.AppendUint16(msg, 0)   // no info requests
	if _, err := w.conn.Write(msg); err != nil {
		return err
	}
	gotExport := false
	for {
		var h [20]byte
		if _, err := io.ReadFull(w.conn, h[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(h[0:]) != nbdRepMagic {
			return errors.New("bad option reply magic")
		}
		typ := binary.BigEndian.Uint32(h[12:])
		n := binary.BigEndian.Uint32(h[16:])
		if n > nbdMaxOptReplyLen {
			return fmt.Errorf("option reply of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(w.conn, data); err != nil {
			return err
		}
		switch {
		case typ == nbdRepAck:
			if !gotExport {
				return errors.New("server acknowledged NBD_OPT_GO without export info")
			}
			return nil
		case typ == nbdRepInfo:
			if len(data) >= 12 && binary.BigEndian.Uint16(data) == nbdInfoExport {
				w.size = int64(binary.BigEndian.Uint64(data[2:]))
				w.flags = binary.BigEndian.Uint16(data[10:])
				gotExport = true
			}
		case typ&(1<<31) != 0:
			return fmt.Errorf("NBD_OPT_GO refused (reply %#x): %s", typ, data)
		}
	}
}

func (w *nbdWriter) setErr(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.errMu.Unlock()
}

func (w *nbdWriter) firstErr() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

// readReplies consumes simple replies; each frees a slot. Handles need no bookkeeping:
// every write is all-or-nothing for the transfer, so the first error is all that matters.
// When the connection dies, closing readerDone wakes every sender and waiter.
func (w *nbdWriter) readReplies() {
	defer close(w.readerDone)
	var r [16]byte
	for {
		if _, err := io.ReadFull(w.conn, r[:]); err != nil {
			w.setErr(fmt.Errorf("nbd connection: %w", err))
			return
		}
		if binary.BigEndian.Uint32(r[0:]) != nbdSimpleReply {
			w.setErr(errors.New("nbd: unexpected reply magic"))
			return
		}
		if e := binary.BigEndian.Uint32(r[4:]); e != 0 {
			errno, ok := nbdErrnos[e]
			if !ok {
				errno = syscall.EIO
			}
			w.setErr(fmt.Errorf("nbd write failed: %w", errno))
		}
		<-w.slots
	}
}

func (w *nbdWriter) deadErr() error {
	if err := w.firstErr(); err != nil {
		return err
	}
	return errors.New("nbd connection closed")
}

// header writes one request header (+ payload) to the wire.
func (w *nbdWriter) write(cmd uint16, off int64, p []byte) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	w.handle++
	var h [28]byte
	binary.BigEndian.PutUint32(h[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(h[4:], 0)
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], w.handle)
	binary.BigEndian.PutUint64(h[16:], uint64(off))
	binary.BigEndian.PutUint32(h[24:], uint32(len(p)))
	bufs := net.Buffers{h[:], p}
	if _, err := bufs.WriteTo(w.conn); err != nil {
		w.setErr(fmt.Errorf("nbd send: %w", err))
		return w.firstErr()
	}
	return nil
}

// send takes a slot (bounding requests in flight) and writes a request that gets a reply.
func (w *nbdWriter) send(cmd uint16, off int64, p []byte) error {
	if err := w.firstErr(); err != nil {
		return err
	}
	select {
	case w.slots <- struct{}{}:
	case <-w.readerDone:
		return w.deadErr()
	}
	return w.write(cmd, off, p)
}

// waitIdle returns once no request is in flight (all slots free). Only one goroutine may
// call it, with no concurrent senders.
func (w *nbdWriter) waitIdle() error {
	for i := 0; i < cap(w.slots); i++ {
		select {
		case w.slots <- struct{}{}:
		case <-w.readerDone:
			return w.deadErr()
		}
	}
	for i := 0; i < cap(w.slots); i++ {
		<-w.slots
	}
	return w.firstErr()
}

// WriteAt queues a write of p at off, as requests of at most nbdMaxWrite bytes; p may be
// reused when it returns. Errors of earlier writes are returned by later calls and by Flush.
func (w *nbdWriter) WriteAt(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > w.size {
		return fmt.Errorf("nbd write of %d bytes at %d beyond export size %d", len(p), off, w.size)
	}
	for len(p) > 0 {
		n := min(len(p), nbdMaxWrite)
		if err := w.send(nbdCmdWrite, off, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush waits for every write, then asks the server to persist them (NBD_CMD_FLUSH covers
// only writes already replied to, hence the wait first).
func (w *nbdWriter) Flush() error {
	if err := w.waitIdle(); err != nil {
		return err
	}
	if err := w.send(nbdCmdFlush, 0, nil); err != nil {
		return err
	}
	return w.waitIdle()
}

// Close says goodbye (the server, started without --persistent, then exits) and closes.
func (w *nbdWriter) Close() error {
	if w.waitIdle() == nil {
		_ = w.write(nbdCmdDisc, 0, nil) // no reply to NBD_CMD_DISC
	}
	err := w.conn.Close()
	<-w.readerDone
	return err
}
