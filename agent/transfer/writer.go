package transfer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// imageWriter is where a transfer's bytes go: a new, empty image that reads as zeros, so
// zero blocks are never written. WriteAt must be safe for concurrent use; p may be reused
// once it returns.
type imageWriter interface {
	WriteAt(p []byte, off int64) error
	// Finish makes the image durable and releases it.
	Finish() error
	// Abort releases it after a failure (the caller removes the file).
	Abort()
	// granularity is the size of the zero blocks worth leaving out: smaller zero runs
	// inside data are written, since skipping them saves no space in the image.
	granularity() int
}

// newImageWriter creates the output image of a transfer that writes it itself (https,
// nfc, vddk): a sparse raw file, or qcow2 through qemu-nbd. On error the file is gone and
// the error says why (ErrNoSpace with the numbers when the disk is full).
func (t *Transferer) newImageWriter(ctx context.Context, path, format string, capacity int64, log *slog.Logger) (imageWriter, error) {
	var w imageWriter
	var err error
	switch format {
	case FormatRaw:
		w, err = newRawWriter(path, capacity)
	default:
		w, err = t.newQcow2Writer(ctx, path, capacity, log)
	}
	if err != nil {
		return nil, t.writeFailed(ctx, path, capacity, err)
	}
	return w, nil
}

// writeFailed removes the partial image of a failed transfer and returns the error to
// report: the cancel if ctx ended, ErrNoSpace if the disk filled up, else err.
func (t *Transferer) writeFailed(ctx context.Context, path string, capacity int64, err error) error {
	t.removeOutput(path)
	if cerr := ctxErr(ctx, "transfer"); cerr != nil {
		return cerr
	}
	if errors.Is(err, syscall.ENOSPC) || isNoSpace(err.Error()) {
		return noSpaceError(path, capacity, err.Error())
	}
	return err
}

// rawWriter writes a sparse raw file with pwrite: aligned blocks with direct I/O where the
// filesystem allows it, the rest (a disk's last partial block) through the page cache.
type rawWriter struct {
	f      *os.File // buffered
	direct *os.File // O_DIRECT, or nil
}

func newRawWriter(path string, size int64) (*rawWriter, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%w: creating %s: %v", ErrTool, path, err)
	}
	// Truncate makes a file of the full size that is all hole: nothing is allocated.
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("sizing %s: %w", path, err)
	}
	return &rawWriter{f: f, direct: openDirect(path)}, nil
}

// directAlign is what direct I/O asks of offsets, lengths and buffer addresses: the
// largest logical block size in use, so it holds on any device.
const directAlign = 4 << 10

// openDirect opens path for direct I/O, or returns nil where the filesystem does not
// support it (tmpfs, some network filesystems). Direct I/O skips the copy into the page
// cache: on a host where that copy is the largest cost of writing an image (measured here:
// 0.6–1.5 CPU s per 512 MiB buffered, 0.2 direct, and a shorter final fsync), the writes
// cost almost nothing.
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

func aligned(p []byte, off int64) bool {
	return off%directAlign == 0 && len(p)%directAlign == 0 && len(p) > 0 &&
		uintptr(unsafe.Pointer(&p[0]))%directAlign == 0
}

func (r *rawWriter) WriteAt(p []byte, off int64) error {
	f := r.f
	if r.direct != nil && aligned(p, off) {
		f = r.direct
	}
	_, err := f.WriteAt(p, off)
	return err
}

// 4 KiB is the filesystem block: a zero block of that size left out is a block saved, as
// qemu-img convert's default -S 4k does.
func (r *rawWriter) granularity() int { return 4 << 10 }

func (r *rawWriter) Finish() error {
	// The image must be on stable storage before a domain is defined on it. Direct writes
	// are on the device already; fsync flushes its cache, and the buffered rest.
	err := r.f.Sync()
	r.Abort()
	return err
}

func (r *rawWriter) Abort() {
	r.f.Close()
	if r.direct != nil {
		r.direct.Close()
	}
}

// qcow2Writer writes through qemu-nbd into a fresh qcow2 image.
type qcow2Writer struct {
	srv *child
	nbd *nbdWriter
	dir string
}

// qcow2Cluster is the cluster size of the images created: qemu-img's default. A zero run
// shorter than a cluster inside data still allocates the cluster.
const qcow2Cluster = 64 << 10

func (t *Transferer) newQcow2Writer(ctx context.Context, path string, size int64, log *slog.Logger) (*qcow2Writer, error) {
	mk, err := startChild(ctx, t.log, "qemu-img", []string{t.cfg.QemuImg, "create", "-q", "-f", "qcow2",
		"-o", "cluster_size=" + strconv.Itoa(qcow2Cluster), path, strconv.FormatInt(size, 10)}, nil)
	if err != nil {
		return nil, err
	}
	if err := mk.wait(); err != nil {
		return nil, fmt.Errorf("%w: qemu-img create: %v: %s", ErrTool, err, lastLines(mk.stderr.String(), 2))
	}
	dir, err := t.privateDir()
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "nbd.sock") // short: socket paths end at 107 bytes
	// Direct I/O with Linux AIO where the filesystem has it (see openDirect: for qemu-nbd it
	// also means one copy less and a quarter of the CPU), else the page cache.
	modes := [][]string{{"--cache=writeback"}}
	if d := openDirect(path); d != nil {
		d.Close()
		modes = [][]string{{"--cache=none", "--aio=native"}, {"--cache=writeback"}}
	}
	var lastErr error
	for _, mode := range modes {
		// No --persistent: qemu-nbd exits once we disconnect, after closing the image cleanly.
		argv := append(append([]string{t.cfg.QemuNBD, "-f", "qcow2"}, mode...), "--socket="+sock, path)
		srv, err := startChild(ctx, t.log, "qemu-nbd", argv, nil, withMallocReuse)
		if err != nil {
			removeAll(dir)
			return nil, err
		}
		nbd, err := dialNBD(ctx, srv, sock, t.cfg.ReadyTimeout)
		if err == nil {
			log.Debug("qemu-nbd ready", "export_size", nbd.size, "mode", strings.Join(mode, " "))
			return &qcow2Writer{srv: srv, nbd: nbd, dir: dir}, nil
		}
		srv.stop()
		_ = os.Remove(sock)
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		// Linux AIO can be unavailable (aio-max-nr reached, a sandbox): fall back.
		log.Debug("qemu-nbd did not start", "mode", strings.Join(mode, " "), "err", err)
	}
	removeAll(dir)
	return nil, fmt.Errorf("%w: qemu-nbd: %v", ErrTool, lastErr)
}

// withMallocReuse makes glibc serve qemu-nbd's request buffers from its heap and keep them.
// qemu-nbd allocates a buffer per write request; by default glibc maps every buffer of
// more than its (adaptive) threshold afresh and unmaps it on free, so each byte written
// costs a page fault, which on a paravirtualised host is most of qemu-nbd's time
// (measured: 3.4 → 2.0 CPU s per 512 MiB written, wall time halved). What it keeps is
// bounded by the requests in flight (nbdMaxInFlight × nbdMaxWrite = 32 MiB) and by the
// trim threshold beyond which freed heap goes back to the system.
func withMallocReuse(cmd *exec.Cmd) {
	const tunables = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864"
	for i, kv := range cmd.Env {
		if v, ok := strings.CutPrefix(kv, "GLIBC_TUNABLES="); ok {
			cmd.Env[i] = "GLIBC_TUNABLES=" + v + ":" + tunables
			return
		}
	}
	cmd.Env = append(cmd.Env, "GLIBC_TUNABLES="+tunables)
}

func (q *qcow2Writer) WriteAt(p []byte, off int64) error { return q.nbd.WriteAt(p, off) }

func (q *qcow2Writer) granularity() int { return qcow2Cluster }

func (q *qcow2Writer) Finish() error {
	defer removeAll(q.dir)
	err := q.nbd.Flush()
	cerr := q.nbd.Close()
	if err == nil {
		err = cerr
	}
	if err != nil {
		q.srv.stop()
		return fmt.Errorf("%w (qemu-nbd: %s)", err, lastLines(q.srv.stderr.String(), 2))
	}
	// qemu-nbd exits by itself after the disconnect; its exit status tells whether the
	// image was closed cleanly.
	select {
	case <-q.srv.done:
	case <-time.After(time.Minute):
		q.srv.stop()
		return fmt.Errorf("%w: qemu-nbd did not exit after disconnect", ErrTool)
	}
	if q.srv.err != nil {
		return fmt.Errorf("%w: qemu-nbd: %v: %s", ErrTool, q.srv.err, lastLines(q.srv.stderr.String(), 2))
	}
	return nil
}

func (q *qcow2Writer) Abort() {
	_ = q.nbd.conn.Close()
	q.srv.stop()
	removeAll(q.dir)
}

// writeNonZero writes the parts of p (which belongs at off) that are not zero, in runs of
// whole blocks of the writer's granularity (blocks aligned to the disk, so the same data
// leaves the same holes whatever the piece boundaries), and returns the bytes written.
func writeNonZero(w imageWriter, p []byte, off int64) (int64, error) {
	g := int64(w.granularity())
	var written int64
	runStart := int64(-1) // index into p of the current non-zero run
	flush := func(end int64) error {
		if runStart < 0 {
			return nil
		}
		err := w.WriteAt(p[runStart:end], off+runStart)
		written += end - runStart
		runStart = -1
		return err
	}
	for i := int64(0); i < int64(len(p)); {
		// Block boundaries are multiples of g in disk offsets.
		end := min(int64(len(p)), (off+i)/g*g+g-off)
		if isZero(p[i:end]) {
			if err := flush(i); err != nil {
				return written, err
			}
		} else if runStart < 0 {
			runStart = i
		}
		i = end
	}
	return written, flush(int64(len(p)))
}
