package transfer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The delta copy of a warm migration: the areas of a disk that changed since the last
// round (vSphere's QueryChangedDiskAreas), read through VDDK at the round's snapshot and
// written over the image the earlier rounds made. Unlike a first copy, every byte of an
// area is written, zeros too: an area that is zero now may have held data before. Zeros
// become holes (raw: a punched hole; qcow2: qemu-nbd turns them into zero clusters).
//
// A delta copy that fails leaves the image as it is, part old and part new: the areas it
// was copying are still changed since the previous change id, so the next round (or the
// next attempt resuming from that change id) copies them again.

// VDDKDelta copies areas of src (at src.Snapshot) into the existing image out.Path, which
// must have src's capacity. Progress counts the areas' bytes.
func (t *Transferer) VDDKDelta(ctx context.Context, src VDDKSource, out Output, areas []DiskRange) (*Result, error) {
	start := time.Now()
	format, err := out.validate()
	if err != nil {
		return nil, err
	}
	if err := src.validate(); err != nil {
		return nil, err
	}
	log := t.log.With("method", MethodVDDK, "disk", labelOr(out.Label, src.File), "output", out.Path, "delta", true)
	var total int64
	for _, a := range areas {
		total += a.Length
	}
	tracker := newProgressTracker(out.Progress, total, t.cfg.ProgressInterval, out.Label)
	tracker.Update(0)
	res := &Result{Method: MethodVDDK, Path: out.Path, Format: format}
	if total == 0 {
		tracker.Finish()
		res.Duration = time.Since(start)
		res.AllocatedBytes = allocated(out.Path)
		return res, nil
	}
	d, err := t.openVDDK(ctx, src, log)
	if err != nil {
		return nil, err
	}
	defer d.close()
	capacity := d.Capacity()
	for _, a := range areas {
		if a.Offset < 0 || a.Length <= 0 || a.Offset+a.Length > capacity || a.Offset%512 != 0 || a.Length%512 != 0 {
			return nil, fmt.Errorf("%w: changed area %d+%d is not whole sectors within the disk of %d bytes", ErrSource, a.Offset, a.Length, capacity)
		}
	}
	w, err := t.openImageWriter(ctx, out.Path, format, capacity, log)
	if err != nil {
		return nil, err
	}
	lims := limits{out.Limiter, t.limiter}.active()
	workers, maxRead := d.readBounds()
	piece := pieceSize(min(t.cfg.ReadSize, maxRead), lims.chunk())
	var done atomic.Int64
	var st copyStats
	t.buffers.begin()
	defer t.buffers.end()
	err = t.copyAreas(ctx, log, d, w, areas, piece, workers, lims, &st, func(n int64) { tracker.Update(done.Add(n)) })
	if err == nil {
		err = w.Finish()
	} else {
		w.Abort()
	}
	if err != nil {
		if cerr := ctxErr(ctx, "delta copy"); cerr != nil {
			return nil, cerr
		}
		if errors.Is(err, syscall.ENOSPC) || isNoSpace(err.Error()) {
			return nil, noSpaceError(out.Path, capacity, err.Error())
		}
		return nil, err
	}
	tracker.Finish()
	res.VirtualSize, res.SourceBytes, res.Retries = capacity, st.read.Load(), st.retries.Load()
	res.Duration, res.AllocatedBytes = time.Since(start), allocated(out.Path)
	log.Info("vddk delta copied", "areas", len(areas), "bytes", total, "seconds", res.Duration.Seconds())
	return res, nil
}

// copyAreas reads the areas in pieces (aligned to piece, at most piece bytes) with
// workers goroutines, each read retried and paced like the copier's (readPiece), and
// writes every piece, zeros included: unlike a first copy (copyPieces, which leaves zero
// blocks out of a fresh image) an area that is zero now may hold old data in the image.
func (t *Transferer) copyAreas(ctx context.Context, log *slog.Logger, src DiskSource, w imageWriter, areas []DiskRange, piece, workers int,
	lims limits, st *copyStats, progress func(int64)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pieces := make(chan DiskRange, workers)
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for p := range pieces {
				if ctx.Err() != nil {
					continue // drain
				}
				if err := t.copyArea(ctx, log, src, w, p, lims, st); err != nil {
					cancel(err)
					continue
				}
				progress(p.Length)
			}
		})
	}
	p := int64(piece)
feed:
	for _, a := range areas {
		for off := a.Offset; off < a.Offset+a.Length; {
			end := min(a.Offset+a.Length, (off/p+1)*p)
			select {
			case pieces <- DiskRange{off, end - off}:
			case <-ctx.Done():
				break feed
			}
			off = end
		}
	}
	close(pieces)
	wg.Wait()
	return context.Cause(ctx)
}

// copyArea reads one piece of a changed area into a pooled buffer and writes all of it.
func (t *Transferer) copyArea(ctx context.Context, log *slog.Logger, src DiskSource, w imageWriter, p DiskRange, lims limits, st *copyStats) error {
	buf, err := t.buffers.get(ctx)
	if err != nil {
		return err
	}
	defer t.buffers.put(buf)
	b := (*buf)[:p.Length]
	if err := t.readPiece(ctx, log, src, b, p.Offset, lims, st); err != nil {
		return err
	}
	if err := w.WriteAt(b, p.Offset); err != nil {
		return fmt.Errorf("writing %d bytes at %d: %w", len(b), p.Offset, err)
	}
	st.written.Add(p.Length)
	return nil
}

// openImageWriter opens an image the earlier rounds made, for writing in place: a raw
// file whose zero writes punch holes, or qcow2 through qemu-nbd, which turns zero writes
// into zero clusters.
func (t *Transferer) openImageWriter(ctx context.Context, path, format string, capacity int64, log *slog.Logger) (imageWriter, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: the image of the earlier rounds: %v", ErrTool, err)
	}
	if format == FormatRaw {
		if st.Size() != capacity {
			return nil, fmt.Errorf("%w: %s is %d bytes, the disk %d", ErrTool, path, st.Size(), capacity)
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrTool, err)
		}
		return &rawOverwriter{rawWriter{f: f}}, nil
	}
	dir, err := t.privateDir()
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	srv, err := startChild(ctx, t.log, "qemu-nbd", []string{t.cfg.QemuNBD, "-f", "qcow2", "--cache=writeback",
		"--discard=unmap", "--detect-zeroes=unmap", "--socket=" + sock, path}, nil)
	if err != nil {
		removeAll(dir)
		return nil, err
	}
	nbd, err := dialNBD(ctx, srv, sock, t.cfg.ReadyTimeout)
	if err != nil {
		srv.stop()
		removeAll(dir)
		return nil, fmt.Errorf("%w: qemu-nbd: %v", ErrTool, err)
	}
	if nbd.size != capacity {
		_ = nbd.Close()
		srv.stop()
		removeAll(dir)
		return nil, fmt.Errorf("%w: %s holds %d bytes, the disk %d", ErrTool, path, nbd.size, capacity)
	}
	log.Debug("qemu-nbd ready on the existing image", "export_size", nbd.size)
	return &qcow2Writer{srv: srv, nbd: nbd, dir: dir}, nil
}

// rawOverwriter writes a raw image in place: a zero piece becomes a hole.
type rawOverwriter struct{ rawWriter }

// fallocFlags: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE.
const fallocFlags = 0x02 | 0x01

func (r *rawOverwriter) WriteAt(p []byte, off int64) error {
	if isZero(p) {
		err := syscall.Fallocate(int(r.f.Fd()), fallocFlags, off, int64(len(p)))
		if err == nil || !errors.Is(err, syscall.EOPNOTSUPP) {
			return err
		}
	}
	return r.rawWriter.WriteAt(p, off)
}

// CheckImage says whether an image left by an earlier attempt (an agent killed between
// rounds) can be written on: qcow2 is checked by qemu-img (leaked clusters, which a kill
// can leave, are repaired); raw must have the disk's size.
func (t *Transferer) CheckImage(ctx context.Context, path, format string, capacity int64) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if format == FormatRaw {
		if st.Size() != capacity {
			return fmt.Errorf("%s is %d bytes, the disk %d", path, st.Size(), capacity)
		}
		return nil
	}
	c, err := startChild(ctx, t.log, "qemu-img", []string{t.cfg.QemuImg, "check", "-q", "-r", "leaks", "-f", "qcow2", path}, nil)
	if err != nil {
		return err
	}
	if err := c.wait(); err != nil {
		return fmt.Errorf("qemu-img check %s: %v: %s", path, err, lastLines(c.stderr.String(), 2))
	}
	c, err = startChild(ctx, t.log, "qemu-img", []string{t.cfg.QemuImg, "info", "-f", "qcow2", "--output=json", path}, nil)
	if err != nil {
		return err
	}
	if err := c.wait(); err != nil {
		return fmt.Errorf("qemu-img info %s: %v", path, err)
	}
	if !strings.Contains(c.stderr.String(), `"virtual-size": `+strconv.FormatInt(capacity, 10)) {
		return fmt.Errorf("%s is not an image of %d bytes", path, capacity)
	}
	return nil
}
