package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// NFCSource is one disk of an HttpNfcLease (ExportVm / ExportSnapshot): a device URL that
// serves a stream-optimized VMDK, chunked, without Range support and often without a size.
type NFCSource struct {
	// URL is the lease's device URL with the host filled in (ESXi reports "*").
	URL string
	// Header carries the session cookie; never logged.
	Header http.Header
	Trust  Trust
}

// NFC copies a disk from an NFC device URL: it decodes the stream-optimized VMDK as it
// arrives (one goroutine reads and frames grains, DecodeWorkers goroutines inflate runs of
// consecutive grains into one buffer) and writes the non-zero parts at their offsets, a run
// at a time (one request of up to nfcBatchBytes rather than one per 64 KiB grain):
//   - raw: straight into a sparse file with pwrite. Nothing else is needed, holes and zero
//     grains are never written.
//   - qcow2: into `qemu-nbd -f qcow2` over NBD, with up to 16 writes in flight, since only
//     qemu can write qcow2. The image is created empty first (reads as zeros), so holes
//     again cost nothing.
//
// There is no temporary copy and memory stays at a couple of runs per worker. There is no
// resume: the URL has no Range, so a broken stream fails the transfer (the job's retry
// starts a new lease). The stream is paced by Output.Limiter and the agent's cap.
func (t *Transferer) NFC(ctx context.Context, src NFCSource, out Output) (*Result, error) {
	start := time.Now()
	format, err := out.validate()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(src.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Host == "*" {
		return nil, fmt.Errorf("nfc device URL %q: want an http(s) URL with a host", redactURL(src.URL))
	}
	log := t.log.With("method", MethodNFC, "disk", labelOr(out.Label, u.Path), "output", out.Path)
	secrets := headerSecrets(src.Header)

	client, err := src.Trust.httpClient()
	if err != nil {
		return nil, err
	}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.URL, nil)
	if err != nil {
		return nil, err
	}
	addHeader(req, src.Header)
	resp, err := client.Do(req)
	if err != nil {
		if cerr := ctxErr(ctx, "transfer"); cerr != nil {
			return nil, cerr
		}
		return nil, fmt.Errorf("nfc GET %s: %w", redactURL(src.URL), tlsHint(err))
	}
	defer resp.Body.Close()
	if err := statusError(resp, src.URL, http.StatusOK); err != nil {
		return nil, err
	}
	body := &errRecorder{r: &limitedReader{ctx: ctx, r: resp.Body, ls: limits{out.Limiter, t.limiter}.active(), m: t.meter}}
	sr, err := NewStreamOptimizedReader(body)
	if err != nil {
		return nil, t.nfcReadError(ctx, body, err, src.URL)
	}
	capacity := sr.Capacity()
	log.Info("nfc transfer starting", "capacity", capacity, "format", format, "content_length", resp.ContentLength)

	w, err := t.newImageWriter(ctx, out.Path, format, capacity, log)
	if err != nil {
		return nil, err
	}

	tracker := newProgressTracker(out.Progress, capacity, t.cfg.ProgressInterval, out.Label)
	tracker.Update(0)
	t.buffers.begin()
	defer t.buffers.end()
	derr := t.decodeInto(ctx, sr, w, tracker)
	if derr == nil {
		derr = w.Finish()
	} else {
		w.Abort()
	}
	if derr != nil {
		t.removeOutput(out.Path)
		if cerr := ctxErr(ctx, "transfer"); cerr != nil {
			return nil, cerr
		}
		if errors.Is(derr, syscall.ENOSPC) || isNoSpace(derr.Error()) {
			return nil, noSpaceError(out.Path, capacity, redact(derr.Error(), secrets))
		}
		return nil, t.nfcReadError(ctx, body, derr, src.URL)
	}
	if !sr.SawEndOfStream() {
		log.Debug("stream ended without an end-of-stream marker (qemu-img style stream)")
	}
	tracker.Finish()
	res := &Result{
		Method:         MethodNFC,
		Path:           out.Path,
		Format:         format,
		VirtualSize:    capacity,
		AllocatedBytes: allocated(out.Path),
		SourceBytes:    sr.Consumed(),
		Duration:       time.Since(start),
		Descriptor:     sr.Descriptor(),
	}
	log.Info("nfc transfer done", "bytes", capacity, "stream_bytes", res.SourceBytes, "allocated", res.AllocatedBytes,
		"seconds", res.Duration.Seconds(), "MBps", float64(capacity)/1e6/res.Duration.Seconds())
	return res, nil
}

// nfcReadError prefers the network's error (the body broke) over the decoder's view of it
// (a truncated grain).
func (t *Transferer) nfcReadError(ctx context.Context, body *errRecorder, err error, u string) error {
	if cerr := ctxErr(ctx, "transfer"); cerr != nil {
		return cerr
	}
	if berr := body.failed(); berr != nil {
		return fmt.Errorf("%w: nfc stream %s broke after %d bytes: %v", ErrSource, redactURL(u), body.n.Load(), berr)
	}
	return fmt.Errorf("nfc stream %s: %w", redactURL(u), err)
}

// nfcBatchBytes bounds a run of consecutive grains inflated and written together: large
// writes cost the writer (and qemu-nbd) one request instead of 32.
const nfcBatchBytes = 2 << 20

// grainRun is consecutive grains, still compressed, back to back in z.
type grainRun struct {
	off   int64 // disk offset of the first grain
	zlens []int // compressed size of each grain
	size  int   // bytes the run covers on the disk
	z     *[]byte
}

// decodeInto runs the reader → inflaters → writer pipeline until the stream ends.
func (t *Transferer) decodeInto(ctx context.Context, sr *StreamOptimizedReader, w imageWriter, tracker *progressTracker) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers := t.cfg.DecodeWorkers
	runs := make(chan grainRun, workers)
	zpool := sync.Pool{New: func() any { b := make([]byte, 0, nfcBatchBytes+nfcBatchBytes/8); return &b }}
	batchBytes := max(nfcBatchBytes, sr.GrainLen(0))

	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, batchBytes)
			var zr io.ReadCloser
			var cbuf bytes.Reader
			for r := range runs {
				if ctx.Err() != nil {
					zpool.Put(r.z)
					continue // drain
				}
				err := func() error {
					z, pos := *r.z, 0
					for i, n := range r.zlens {
						goff := r.off + int64(pos)
						want := sr.GrainLen(goff)
						var err error
						_, zr, err = InflateGrain(zr, &cbuf, z[:n], out[pos:pos+want], want)
						if err != nil {
							return fmt.Errorf("grain %d of the run at byte %d: %w", i, r.off, err)
						}
						z, pos = z[n:], pos+want
					}
					if _, err := writeNonZero(w, out[:r.size], r.off); err != nil {
						return fmt.Errorf("writing at byte %d: %w", r.off, err)
					}
					return nil
				}()
				zpool.Put(r.z)
				if err != nil {
					cancel(err)
				}
			}
		}()
	}

	var cur grainRun
	send := func() {
		if cur.z == nil || cur.off < 0 {
			return // nothing read into it yet
		}
		select {
		case runs <- cur:
		case <-ctx.Done():
			zpool.Put(cur.z)
		}
		cur = grainRun{}
	}
	var rerr error
	for ctx.Err() == nil {
		if cur.z != nil && cur.size+sr.GrainLen(0) > batchBytes {
			send() // full
		}
		if cur.z == nil {
			cur = grainRun{off: -1, z: zpool.Get().(*[]byte)}
			*cur.z = (*cur.z)[:0]
		}
		// The grain is read straight into the run's buffer; if it does not continue the
		// run (after a hole), it moves to a new run.
		had := len(*cur.z)
		off, z, err := sr.appendNextCompressed(*cur.z)
		*cur.z = z
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = err
			break
		}
		glen := sr.GrainLen(off)
		if cur.off >= 0 && (off != cur.off+int64(cur.size) || cur.size+glen > batchBytes) {
			grain := append([]byte(nil), z[had:]...)
			*cur.z = z[:had]
			send()
			cur = grainRun{off: off, z: zpool.Get().(*[]byte)}
			*cur.z = append((*cur.z)[:0], grain...)
		} else if cur.off < 0 {
			cur.off = off
		}
		cur.zlens = append(cur.zlens, len(z)-had)
		cur.size += glen
		// The stream position is the honest measure: holes count as done once passed.
		tracker.Update(off + int64(glen))
	}
	if rerr == nil {
		send()
	}
	if cur.z != nil {
		zpool.Put(cur.z) // not sent: empty, or the stream failed
	}
	close(runs)
	wg.Wait()
	if rerr != nil {
		return rerr
	}
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return nil
}

// errRecorder remembers the first transport error of the body and counts bytes.
type errRecorder struct {
	r   io.Reader
	n   atomic.Int64
	mu  sync.Mutex
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n.Add(int64(n))
	if err != nil && err != io.EOF {
		e.mu.Lock()
		if e.err == nil {
			e.err = err
		}
		e.mu.Unlock()
	}
	return n, err
}

func (e *errRecorder) failed() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}
