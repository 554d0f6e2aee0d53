package transfer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
//
// Near areas are read together (coalesceAreas), no more VDDK connections are opened than
// there are reads (deltaConnections), the VDDK reader starts while qemu-nbd opens the
// image and ends while it closes it: at the cutover this copy is most of the VM's downtime.
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
	var total, last int64
	for _, a := range areas {
		if a.Offset < 0 || a.Length <= 0 || a.Offset%512 != 0 || a.Length%512 != 0 {
			return nil, fmt.Errorf("%w: changed area %d+%d is not whole sectors", ErrSource, a.Offset, a.Length)
		}
		total, last = total+a.Length, max(last, a.Offset+a.Length)
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
	lims := limits{out.Limiter, t.limiter}.active()
	piece := pieceSize(min(t.cfg.ReadSize, vddkMaxRead), lims.chunk())
	merged := coalesceAreas(areas, coalesceGap, int64(piece))
	var reading int64
	for _, a := range merged {
		reading += a.Length
	}
	if src.Connections <= 0 {
		src.Connections = t.cfg.VDDKConnections
	}
	reads := pieceCount(merged, int64(piece))
	src.Connections = deltaConnections(src.Connections, reads)

	// The reader (a process, its connections) and qemu-nbd start at once; neither needs
	// the other.
	type opened struct {
		d   *vddkDisk
		err error
	}
	openc := make(chan opened, 1)
	go func() {
		d, err := t.openVDDK(ctx, src, log)
		openc <- opened{d, err}
	}()
	w, size, pooled := out.Images.take(out.Path, format)
	var werr error
	if pooled {
		log.Info("image opened ahead of the copy", "format", format)
	} else {
		w, size, werr = t.openImageWriter(ctx, out.Path, format, log)
	}
	o := <-openc
	if o.err != nil || werr != nil {
		if o.err == nil {
			o.d.close()
		}
		if werr == nil {
			w.Abort()
		}
		return nil, cmp.Or(o.err, werr)
	}
	d := o.d
	closeReader := sync.OnceFunc(d.close)
	defer closeReader()
	capacity := d.Capacity()
	if size != capacity {
		w.Abort()
		return nil, fmt.Errorf("%w: %s holds %d bytes, the disk %d", ErrTool, out.Path, size, capacity)
	}
	if last > capacity {
		w.Abort()
		return nil, fmt.Errorf("%w: changed areas reach byte %d of the disk of %d bytes", ErrSource, last, capacity)
	}
	workers, _ := d.readBounds()
	var done atomic.Int64
	var st copyStats
	t.buffers.begin()
	defer t.buffers.end()
	// Progress in the areas' bytes: the gaps read with them are scaled out.
	scale := float64(total) / float64(reading)
	err = t.copyPieces(ctx, log, d, w, merged, piece, max(workers, 1), lims, &st, true, func(n int64) {
		tracker.Update(int64(float64(done.Add(n)) * scale))
	})
	// Every read is done: the reader ends (VDDK's exit, the process) while the image is
	// flushed and closed, both on the cutover's path.
	readerClosed := make(chan struct{})
	go func() { closeReader(); close(readerClosed) }()
	if err == nil {
		err = w.Finish()
	} else {
		w.Abort()
	}
	<-readerClosed
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
	log.Info("vddk delta copied", "areas", len(areas), "bytes", total, "reads", reads, "read_bytes", reading,
		"connections", d.c.Info.Connections, "seconds", res.Duration.Seconds())
	return res, nil
}

// coalesceGap is the largest run of unchanged bytes between two changed areas that a
// delta copy reads and writes anyway, to copy both areas in one read instead of two. It
// is about what a link carries in one request's round trip (1 Gbit/s at 2 ms to ESXi's
// NFC server): a request costs a round trip, one per connection at a time, while a
// larger gap would cost more in bytes than the request it saves.
const coalesceGap = 256 << 10

// coalesceAreas merges changed areas that lie in the same piece (a range aligned to
// piece, piece bytes long: what the copier reads in one request) and are at most gap
// bytes apart, overlapping and adjacent areas always: the copier then reads the merged
// area in as many requests as its last area alone would have taken more, never more
// requests than before and at most gap bytes more per merge. The areas are sorted
// first; areas is not modified.
//
// Why copying the gaps is safe: the image holds exactly the disk as of the change id the
// areas are relative to (the previous round's snapshot; a delta that failed half-way
// wrote only bytes of later snapshots within areas that are changed since that change id
// again, and gap bytes, which equal it). vSphere's QueryChangedDiskAreas lists every
// byte written since that change id, so a byte outside the areas is the same in this
// round's snapshot as in the image: reading it from the snapshot and writing it back
// changes nothing, zeros included, and if the copy fails half-way the image is still
// the previous snapshot outside the areas.
func coalesceAreas(areas []DiskRange, gap, piece int64) []DiskRange {
	sorted := slices.Clone(areas)
	slices.SortFunc(sorted, func(a, b DiskRange) int { return cmp.Compare(a.Offset, b.Offset) })
	var out []DiskRange
	for _, a := range sorted {
		if len(out) > 0 {
			cur := &out[len(out)-1]
			end := cur.Offset + cur.Length
			near := a.Offset-end <= gap && (end-1)/piece == a.Offset/piece
			if a.Offset <= end || near {
				cur.Length = max(end, a.Offset+a.Length) - cur.Offset
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// deltaConnections is how many VDDK connections read a delta of n pieces: the configured
// number, but no more than there are reads (each connection is a login and an NFC session
// to open before the first read). Not more than configured: on the fake (a local disk,
// 2 cores) a delta of 656 scattered 64 KiB areas copies in the same time through 2, 4 or
// 8 connections (BenchmarkVDDKDelta) and 8 take longer to open, so the cutover gained
// nothing from more; against ESXi, where a connection's round trip bounds its reads, an
// operator raises transfer.vddk_connections.
func deltaConnections(configured int, pieces int64) int {
	return int(max(1, min(int64(configured), pieces)))
}

// pieceCount is how many reads the copier makes of areas (sorted, disjoint) in pieces
// aligned to piece.
func pieceCount(areas []DiskRange, piece int64) int64 {
	var n int64
	for _, a := range areas {
		n += (a.Offset+a.Length-1)/piece - a.Offset/piece + 1
	}
	return n
}

// ImagePool holds images the earlier rounds made, opened for writing in place before the
// delta that writes them can start: a warm cutover opens them while the guest shuts down,
// since starting qemu-nbd on an image is otherwise on the downtime's path. A nil pool
// holds nothing.
type ImagePool struct {
	mu     sync.Mutex
	format string
	open   map[string]pooledImage
}

type pooledImage struct {
	w    imageWriter
	size int64
}

// OpenImages opens the images at paths (format raw or qcow2) for writing in place; one
// that does not open is left out (its delta opens it, and fails there if it must).
func (t *Transferer) OpenImages(ctx context.Context, paths []string, format string) *ImagePool {
	p := &ImagePool{format: format, open: map[string]pooledImage{}}
	for _, path := range paths {
		w, size, err := t.openImageWriter(ctx, path, format, t.log)
		if err != nil {
			t.log.Warn("could not open an image ahead of the copy", "path", path, "err", err)
			continue
		}
		p.open[path] = pooledImage{w, size}
	}
	return p
}

// take hands out the writer of path (false: none for it in this format).
func (p *ImagePool) take(path, format string) (imageWriter, int64, bool) {
	if p == nil {
		return nil, 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	img, ok := p.open[path]
	if !ok || format != p.format {
		return nil, 0, false
	}
	delete(p.open, path)
	return img.w, img.size, true
}

// release closes the writer of path if the pool still holds it.
func (p *ImagePool) release(path string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	img, ok := p.open[path]
	delete(p.open, path)
	p.mu.Unlock()
	if ok {
		_ = img.w.Finish() // nothing written: a clean close
	}
}

// Close closes the writers nobody took; their images are as they were.
func (p *ImagePool) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	paths := make([]string, 0, len(p.open))
	for path := range p.open {
		paths = append(paths, path)
	}
	p.mu.Unlock()
	for _, path := range paths {
		p.release(path)
	}
}

// openImageWriter opens an image the earlier rounds made, for writing in place, and
// returns the size of the disk it holds: a raw file whose zero writes punch holes, or
// qcow2 through qemu-nbd, which turns zero writes into zero clusters.
func (t *Transferer) openImageWriter(ctx context.Context, path, format string, log *slog.Logger) (imageWriter, int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: the image of the earlier rounds: %v", ErrTool, err)
	}
	if format == FormatRaw {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %v", ErrTool, err)
		}
		return &rawOverwriter{rawWriter{f: f}}, st.Size(), nil
	}
	dir, err := t.privateDir()
	if err != nil {
		return nil, 0, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	srv, err := startChild(ctx, t.log, "qemu-nbd", []string{t.cfg.QemuNBD, "-f", "qcow2", "--cache=writeback",
		"--discard=unmap", "--detect-zeroes=unmap", "--socket=" + sock, path}, nil)
	if err != nil {
		removeAll(dir)
		return nil, 0, err
	}
	nbd, err := dialNBD(ctx, srv, sock, t.cfg.ReadyTimeout)
	if err != nil {
		srv.stop()
		removeAll(dir)
		return nil, 0, fmt.Errorf("%w: qemu-nbd: %v", ErrTool, err)
	}
	log.Debug("qemu-nbd ready on the existing image", "export_size", nbd.size)
	return &qcow2Writer{srv: srv, nbd: nbd, dir: dir}, nbd.size, nil
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
