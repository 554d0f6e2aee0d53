package transfer

import (
	"context"
	"io"
	"math"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// BytesPerSecondFromMbps converts a cap in megabits per second (options.max_mbps,
// transfer.max_mbps: the unit links are sold in) to bytes per second.
func BytesPerSecondFromMbps(mbps int) float64 { return float64(mbps) * 1e6 / 8 }

// Limiter caps the bytes per second of every transfer it is given to (a job's disks, or
// all the transfers of an agent): one token bucket shared by all their connections, so N
// parallel streams together stay under the cap, not each of them. A nil *Limiter is no
// limit.
type Limiter struct {
	bps float64
	l   *rate.Limiter
}

const (
	// minLimitChunk and maxLimitChunk bound the bucket's depth. The depth is how far the
	// transfer may run ahead of the cap at any instant, and the largest piece a copier
	// may read under this cap: an eighth of a second of traffic keeps every window of a
	// second or more within a few per cent of the cap, while pieces stay large enough
	// that per-request overhead does not matter.
	minLimitChunk = 64 << 10
	maxLimitChunk = 8 << 20
)

// NewLimiter returns a limiter of bytesPerSecond, or nil (no limit) for ≤ 0.
func NewLimiter(bytesPerSecond float64) *Limiter {
	if bytesPerSecond <= 0 || math.IsInf(bytesPerSecond, 0) || math.IsNaN(bytesPerSecond) {
		return nil
	}
	burst := int(min(max(bytesPerSecond/8, minLimitChunk), maxLimitChunk))
	return &Limiter{bps: bytesPerSecond, l: rate.NewLimiter(rate.Limit(bytesPerSecond), burst)}
}

// BytesPerSecond is the cap (0 for a nil limiter).
func (l *Limiter) BytesPerSecond() float64 {
	if l == nil {
		return 0
	}
	return l.bps
}

// chunk is the largest amount one wait may ask for.
func (l *Limiter) chunk() int {
	if l == nil {
		return math.MaxInt
	}
	return l.l.Burst()
}

// wait blocks until n bytes (≤ chunk) may pass, or ctx ends.
func (l *Limiter) wait(ctx context.Context, n int) error {
	if l == nil || n <= 0 {
		return nil
	}
	return l.l.WaitN(ctx, n)
}

// limits is the set of limiters one transfer honours (its job's and its agent's).
type limits []*Limiter

// active drops the nil (unlimited) ones.
func (ls limits) active() limits {
	var out limits
	for _, l := range ls {
		if l != nil {
			out = append(out, l)
		}
	}
	return out
}

// min is the tightest cap in bytes per second (0: none).
func (ls limits) min() float64 {
	m := 0.0
	for _, l := range ls {
		if b := l.BytesPerSecond(); b > 0 && (m == 0 || b < m) {
			m = b
		}
	}
	return m
}

func (ls limits) chunk() int {
	c := math.MaxInt
	for _, l := range ls {
		c = min(c, l.chunk())
	}
	return c
}

func (ls limits) wait(ctx context.Context, n int) error {
	for _, l := range ls {
		if err := l.wait(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// limitedReader charges every read of a stream to the limits (the nfc stream, which has
// no ranges to pace). Tokens are taken after the bytes arrived: TCP flow control then
// holds the sender back while the reader waits.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	ls  limits
	m   *rateMeter
}

func (r *limitedReader) Read(p []byte) (int, error) {
	if c := r.ls.chunk(); len(p) > c {
		p = p[:c]
	}
	n, err := r.r.Read(p)
	r.m.add(int64(n))
	if werr := r.ls.wait(r.ctx, n); werr != nil && err == nil {
		err = werr
	}
	return n, err
}

// rateMeter measures an agent's transfer rate over the last few seconds, from the bytes
// every transfer reads from its source: what the agent advertises and what its cap limits.
type rateMeter struct {
	mu      sync.Mutex
	now     func() time.Time
	buckets [meterBuckets]int64 // bytes per second, indexed by unix second mod meterBuckets
	stamps  [meterBuckets]int64 // the unix second each bucket holds
}

const (
	meterBuckets = 8
	// meterWindow is how many whole seconds the rate averages: long enough to smooth TCP
	// bursts and the piece-at-a-time accounting of parallel readers.
	meterWindow = 5
)

func newRateMeter() *rateMeter { return &rateMeter{now: time.Now} }

func (m *rateMeter) add(n int64) {
	if m == nil || n <= 0 {
		return
	}
	sec := m.now().Unix()
	m.mu.Lock()
	i := sec % meterBuckets
	if m.stamps[i] != sec {
		m.stamps[i], m.buckets[i] = sec, 0
	}
	m.buckets[i] += n
	m.mu.Unlock()
}

// rate is the average bytes per second over the last meterWindow complete seconds.
func (m *rateMeter) rate() float64 {
	if m == nil {
		return 0
	}
	sec := m.now().Unix()
	m.mu.Lock()
	defer m.mu.Unlock()
	var sum int64
	for s := sec - meterWindow; s < sec; s++ {
		if i := s % meterBuckets; m.stamps[i] == s {
			sum += m.buckets[i]
		}
	}
	return float64(sum) / meterWindow
}

// bufferPool hands out the copy buffers of every transfer of a Transferer. Its bound is
// what keeps the agent's memory flat however many disks and jobs run at once: a worker
// that finds no free buffer waits, which also caps the reads in flight agent-wide (on a
// host with a few cores more would only queue for the CPU). Buffers are kept for reuse
// while any transfer runs (allocating a buffer per piece would have the garbage collector
// let the heap grow to twice the buffers in use) and dropped when the last one ends. The
// nfc method registers too (begin/end) so its memory is returned the same way.
type bufferPool struct {
	size int
	sem  chan struct{}

	mu     sync.Mutex
	free   []*[]byte
	active int // transfers between begin and end
}

func newBufferPool(size, count int) *bufferPool {
	return &bufferPool{size: size, sem: make(chan struct{}, count)}
}

func (b *bufferPool) begin() {
	b.mu.Lock()
	b.active++
	b.mu.Unlock()
}

func (b *bufferPool) end() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.active--; b.active == 0 {
		b.free = nil
		// The agent idles until its next job: hand the buffers back to the system now
		// rather than when the garbage collector gets round to it, which would be after
		// the next job allocated its own (twice the memory at the peak).
		go debug.FreeOSMemory()
	}
}

func (b *bufferPool) get(ctx context.Context) (*[]byte, error) {
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.free); n > 0 {
		p := b.free[n-1]
		b.free = b.free[:n-1]
		return p, nil
	}
	p := make([]byte, b.size)
	return &p, nil
}

func (b *bufferPool) put(p *[]byte) {
	b.mu.Lock()
	if b.active > 0 {
		b.free = append(b.free, p)
	}
	b.mu.Unlock()
	<-b.sem
}
