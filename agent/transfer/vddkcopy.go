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

// The copy of a disk the agent reads itself, range by range (VDDK today). It has the
// shape of a generic copier on purpose: a source with a capacity, allocated extents and
// ReadAt, written in parallel into the image writers the nfc method uses (sparse raw, or
// qcow2 through qemu-nbd), zero blocks skipped, with progress and per-range retries.

// Range is an allocated byte range of a source disk.
type Range struct {
	Offset, Length int64
}

// diskSource is a disk read by ranges. ReadAt is safe for concurrent use.
type diskSource interface {
	Capacity() int64
	// Extents lists the allocated ranges, sorted and disjoint. ok is false when the source
	// cannot tell: then the whole disk is read.
	Extents(ctx context.Context) (ext []Range, ok bool, err error)
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// transientError is a read failure worth repeating (the source reopened its connection).
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// copyDisk reads src's allocated ranges with workers goroutines, in pieces of at most
// vddkMaxRead bytes aligned to that size, and writes the non-zero ones to a new image.
func (t *Transferer) copyDisk(ctx context.Context, log *slog.Logger, src diskSource, out Output, format string, workers int) (*Result, error) {
	capacity := src.Capacity()
	ext, known, err := src.Extents(ctx)
	if err != nil {
		return nil, err
	}
	if !known {
		ext = []Range{{0, capacity}}
	}
	var allocBytes int64
	for _, e := range ext {
		allocBytes += e.Length
	}
	log.Info("copying disk", "capacity", capacity, "allocated", allocBytes, "extents", len(ext), "extents_known", known, "format", format)

	w, err := t.newImageWriter(ctx, out.Path, format, capacity, log)
	if err != nil {
		return nil, err
	}
	tracker := newProgressTracker(out.Progress, capacity, t.cfg.ProgressInterval, out.Label)
	// Holes are done as soon as they are known to be holes.
	var done, read atomic.Int64
	done.Store(capacity - allocBytes)
	tracker.Update(done.Load())

	err = t.copyRanges(ctx, src, w, ext, max(workers, 1), func(n int64, isRead bool) {
		if isRead {
			read.Add(n)
			return
		}
		tracker.Update(done.Add(n))
	})
	if err == nil {
		err = w.Finish()
	} else {
		w.Abort()
	}
	if err != nil {
		return nil, t.writeFailed(ctx, out.Path, capacity, err)
	}
	tracker.Finish()
	return &Result{Path: out.Path, Format: format, VirtualSize: capacity, AllocatedBytes: allocated(out.Path), SourceBytes: read.Load()}, nil
}

// copyRanges runs the workers over ext until all is written or the first error.
func (t *Transferer) copyRanges(ctx context.Context, src diskSource, w imageWriter, ext []Range, workers int, count func(n int64, isRead bool)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pieces := make(chan Range, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, vddkMaxRead)
			for p := range pieces {
				if ctx.Err() != nil {
					continue // drain
				}
				b := buf[:p.Length]
				if err := t.readRetrying(ctx, src, b, p.Offset); err != nil {
					cancel(err)
					continue
				}
				count(p.Length, true)
				if !isZero(b) {
					if err := w.WriteAt(b, p.Offset); err != nil {
						cancel(fmt.Errorf("writing %d bytes at %d: %w", len(b), p.Offset, err))
						continue
					}
				}
				count(p.Length, false)
			}
		}()
	}
feed:
	for _, e := range ext {
		for off := e.Offset; off < e.Offset+e.Length; {
			// Pieces end on multiples of the read size, so reads stay aligned however the
			// extents fall.
			end := min(e.Offset+e.Length, (off/vddkMaxRead+1)*vddkMaxRead)
			select {
			case pieces <- Range{off, end - off}:
			case <-ctx.Done():
				break feed
			}
			off = end
		}
	}
	close(pieces)
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return nil
}

// readRetrying repeats a transiently failed read Config.Retries times with a doubling
// back-off from Config.RetryDelay.
func (t *Transferer) readRetrying(ctx context.Context, src diskSource, p []byte, off int64) error {
	delay := t.cfg.RetryDelay
	for attempt := 0; ; attempt++ {
		err := src.ReadAt(ctx, p, off)
		var te *transientError
		if err == nil || !errors.As(err, &te) {
			return err
		}
		if attempt >= t.cfg.Retries {
			return fmt.Errorf("%w: %v (after %d retries)", ErrSource, err, attempt)
		}
		t.log.Warn("source read failed: retrying", "offset", off, "bytes", len(p), "retry", attempt+1, "in", delay, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
}
