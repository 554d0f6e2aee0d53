package transfer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// The parallel copier: how the agent reads a disk it can address by offset into a local
// image. The https method (httpsDisk) and the vddk method (vddkDisk) use it.
//
// A source implements DiskSource: its capacity, optionally the allocated extents, and
// ReadAt of a range. Transferer.Copy then
//   - splits the allocated extents (the whole disk when the source cannot tell) into spans
//     (up to 32 MiB, smaller on a small disk so that every worker gets one) and the spans
//     into pieces of at most Config.ReadSize bytes, aligned to that size;
//   - reads them with Config.Connections workers at once (a source with readBounds sets
//     its own number and largest piece), each worker a span at a time,
//     its pieces in order (each piece is one ReadAt; the HTTP source answers a span's
//     pieces from one range request on a keep-alive connection);
//   - retries a failed piece on its own (Config.Retries times, back-off from
//     Config.RetryDelay doubling; each attempt bounded by Config.RequestTimeout), so one
//     broken stream costs one piece, not the disk; an error marked Permanent fails at once;
//   - leaves zero blocks out, so holes are never written;
//   - writes the rest at its offset into a new sparse raw file (pwrite, direct I/O where
//     the filesystem has it) or a new qcow2 image (through qemu-nbd);
//   - reports progress (≤ 1 per Config.ProgressInterval, bytes, rate, ETA) through
//     Output.Progress, counting pieces as they are written and holes as done at once;
//   - paces reads with Output.Limiter (the job's cap) and the agent's cap
//     (Config.MaxBytesPerSecond): one token bucket per cap shared by every worker, pieces
//     no larger than an eighth of a second at the tightest cap, one request per piece;
//   - on failure or cancel stops every worker and child and removes the partial image.
//
// Memory is bounded by the Transferer's buffer pool (Config.Buffers × Config.ReadSize)
// whatever the number of disks and jobs.
//
// To plug a source in: implement DiskSource (ReadAt safe for concurrent use; wrap errors
// that another attempt would repeat with Permanent), optionally setSpan to learn the span
// boundaries (a streaming source) and readBounds to set the workers and the largest read,
// call Copy and fill Result.Method.

// DiskRange is a byte range of a disk.
type DiskRange struct {
	Offset, Length int64
}

// DiskSource is a disk the copier can read at any offset.
type DiskSource interface {
	// Capacity is the disk's size in bytes.
	Capacity() int64
	// Extents lists the allocated ranges, sorted and disjoint; bytes outside them read as
	// zeros and are not read at all. ok is false when the source cannot tell (the whole
	// disk is then read and zeros are found by looking).
	Extents(ctx context.Context) (ext []DiskRange, ok bool, err error)
	// ReadAt fills p with the bytes at off (off+len(p) ≤ Capacity). It is called by several
	// workers at once, each with its own piece. An error is retried unless it wraps
	// ErrPermanent or ctx ended; ctx carries the per-attempt deadline.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// Name identifies the source in errors (no secrets).
	Name() string
}

// ErrPermanent marks a read error that another attempt would repeat (no such file, access
// refused, a server that ignores ranges): Copy fails at once instead of retrying.
var ErrPermanent = errors.New("not retried")

// Permanent marks err as not worth retrying.
func Permanent(err error) error { return fmt.Errorf("%w (%w)", err, ErrPermanent) }

// copyStats is what a copy read and wrote.
type copyStats struct {
	read, written atomic.Int64
	retries       atomic.Int64
}

// Copy reads src into out as described at the top of this file and returns the result
// (Method is left empty for the caller to fill).
func (t *Transferer) Copy(ctx context.Context, src DiskSource, out Output) (*Result, error) {
	start := time.Now()
	format, err := out.validate()
	if err != nil {
		return nil, err
	}
	log := t.log.With("disk", labelOr(out.Label, src.Name()), "output", out.Path)
	capacity := src.Capacity()
	if capacity < 0 {
		return nil, fmt.Errorf("%w: %s: negative capacity %d", ErrSource, src.Name(), capacity)
	}
	ext, known, err := src.Extents(ctx)
	if err != nil {
		return nil, err
	}
	if !known {
		ext = []DiskRange{{0, capacity}}
	}
	var toRead int64
	for _, e := range ext {
		if e.Offset < 0 || e.Length < 0 || e.Offset+e.Length > capacity {
			return nil, fmt.Errorf("%w: %s: extent %d+%d outside the disk's %d bytes", ErrSource, src.Name(), e.Offset, e.Length, capacity)
		}
		toRead += e.Length
	}
	lims := limits{out.Limiter, t.limiter}.active()
	workers, readSize := t.cfg.Connections, t.cfg.ReadSize
	if b, ok := src.(bounded); ok {
		w, r := b.readBounds()
		workers, readSize = max(w, 1), min(readSize, r)
	}
	piece := pieceSize(readSize, lims.chunk())
	log.Info("copy starting", "capacity", capacity, "read", toRead, "extents", len(ext), "extents_known", known,
		"format", format, "connections", workers, "piece", piece, "cap_Bps", lims.min())

	out.Images.release(out.Path) // a fresh image replaces it: nothing may hold the old one
	w, err := t.newImageWriter(ctx, out.Path, format, capacity, log)
	if err != nil {
		return nil, err
	}
	tracker := newProgressTracker(out.Progress, capacity, t.cfg.ProgressInterval, out.Label)
	var done atomic.Int64
	done.Store(capacity - toRead) // holes are done as soon as they are known
	tracker.Update(done.Load())

	var st copyStats
	t.buffers.begin()
	defer t.buffers.end()
	err = t.copyPieces(ctx, log, src, w, ext, piece, workers, lims, &st, false, func(n int64) { tracker.Update(done.Add(n)) })
	if err == nil {
		err = w.Finish()
	} else {
		w.Abort()
	}
	if err != nil {
		return nil, t.writeFailed(ctx, out.Path, capacity, err)
	}
	tracker.Finish()
	res := &Result{
		Path: out.Path, Format: format, VirtualSize: capacity, AllocatedBytes: allocated(out.Path),
		SourceBytes: st.read.Load(), Retries: st.retries.Load(), Duration: time.Since(start),
	}
	log.Info("copy done", "bytes", capacity, "read", res.SourceBytes, "written", st.written.Load(), "retries", st.retries.Load(),
		"allocated", res.AllocatedBytes, "seconds", res.Duration.Seconds(), "MBps", float64(capacity)/1e6/res.Duration.Seconds())
	return res, nil
}

// pieceSize is the largest power of two ≤ both the configured read size and what one wait
// of the caps may ask for (at least 64 KiB): pieces aligned to it never straddle a multiple
// of it, which keeps reads aligned for sources that care (VDDK sectors, qcow2 clusters).
func pieceSize(readSize, capChunk int) int {
	n := min(readSize, capChunk)
	p := minLimitChunk
	for p*2 <= n {
		p *= 2
	}
	return p
}

// copySpan is the stretch of a disk one worker copies in order, piece after piece: a
// source that streams (an HTTP range of the whole span, see httpsDisk) keeps its connection
// busy while the worker writes the previous piece, and answers a quarter of the requests.
const copySpan = 32 << 20

// bounded is a source with its own number of parallel reads and largest read (VDDK: its
// connections, its reader's request size).
type bounded interface{ readBounds() (workers, maxRead int) }

// spanned is a source that wants to know the spans (their boundaries are multiples of
// the size given) before the copy starts.
type spanned interface{ setSpan(size int64) }

// copyPieces runs the workers over ext until everything is written or the first error.
// Each worker takes a span (a power of two multiple of the piece, up to copySpan, small
// enough for every worker to get one) and copies its pieces in order. overwrite is the
// delta copy's mode (delta.go): every byte of a piece is written, zeros too, since the
// image already holds data that a zero area must replace; a first copy (overwrite false)
// leaves zero blocks out of its fresh sparse image.
func (t *Transferer) copyPieces(ctx context.Context, log *slog.Logger, src DiskSource, w imageWriter, ext []DiskRange, piece, workers int,
	lims limits, st *copyStats, overwrite bool, progress func(int64)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Spans small enough that every worker gets some of a small disk.
	var total int64
	for _, e := range ext {
		total += e.Length
	}
	span := int64(piece)
	for span*2 <= copySpan && span*2*int64(workers) <= total {
		span *= 2
	}
	if len(lims) > 0 {
		// Under a cap, spans of one piece (one request each): what the link carries then
		// follows the bucket, never more than a piece per connection ahead of it (a span's
		// request lets the server fill the socket buffers past the cap), and every worker
		// of the disk waits at the bucket, so none of its tokens go unused while one
		// worker is busy writing.
		span = int64(piece)
	}
	if s, ok := src.(spanned); ok {
		s.setSpan(span)
	}
	spans := make(chan DiskRange, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := int64(piece)
			for sp := range spans {
				for off := sp.Offset; off < sp.Offset+sp.Length && ctx.Err() == nil; {
					end := min(sp.Offset+sp.Length, (off/p+1)*p)
					if err := t.copyPiece(ctx, log, src, w, DiskRange{off, end - off}, lims, st, overwrite); err != nil {
						cancel(err)
						break
					}
					progress(end - off)
					off = end
				}
			}
		}()
	}
feed:
	for _, e := range ext {
		for off := e.Offset; off < e.Offset+e.Length; {
			end := min(e.Offset+e.Length, (off/span+1)*span)
			select {
			case spans <- DiskRange{off, end - off}:
			case <-ctx.Done():
				break feed
			}
			off = end
		}
	}
	close(spans)
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return nil
}

// copyPiece reads one piece (with retries) into a pooled buffer and writes its non-zero
// blocks, or all of it when overwrite.
func (t *Transferer) copyPiece(ctx context.Context, log *slog.Logger, src DiskSource, w imageWriter, p DiskRange, lims limits, st *copyStats, overwrite bool) error {
	buf, err := t.buffers.get(ctx)
	if err != nil {
		return err
	}
	defer t.buffers.put(buf)
	b := (*buf)[:p.Length]
	if err := t.readPiece(ctx, log, src, b, p.Offset, lims, st); err != nil {
		return err
	}
	var n int64
	if overwrite {
		if err = w.WriteAt(b, p.Offset); err == nil {
			n = p.Length
		}
	} else {
		n, err = writeNonZero(w, b, p.Offset)
	}
	st.written.Add(n)
	if err != nil {
		return fmt.Errorf("writing %d bytes at %d: %w", len(b), p.Offset, err)
	}
	return nil
}

// readPiece reads p at off, retrying transient failures with a doubling back-off. Every
// attempt first waits for the caps (a repeated read uses the link again) and then has
// Config.RequestTimeout to complete, so a stalled source becomes a retry, however slowly
// the caps let the job go.
func (t *Transferer) readPiece(ctx context.Context, log *slog.Logger, src DiskSource, p []byte, off int64, lims limits, st *copyStats) error {
	delay := t.cfg.RetryDelay
	for attempt := 0; ; attempt++ {
		if err := lims.wait(ctx, len(p)); err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, t.cfg.RequestTimeout)
		err := src.ReadAt(actx, p, off)
		timedOut := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			st.read.Add(int64(len(p)))
			t.meter.add(int64(len(p)))
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if timedOut {
			err = fmt.Errorf("no complete answer within %s: %w", t.cfg.RequestTimeout, err)
		}
		if errors.Is(err, ErrPermanent) {
			return err
		}
		if attempt >= t.cfg.Retries {
			return fmt.Errorf("%w: %s: reading bytes %d-%d failed %d times, giving up: %v",
				ErrSource, src.Name(), off, off+int64(len(p))-1, attempt+1, err)
		}
		st.retries.Add(1)
		log.Warn("source read failed: retrying the piece", "offset", off, "bytes", len(p), "retry", attempt+1, "in", delay, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
}
