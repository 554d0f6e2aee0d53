package transfer

import (
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// ProgressFunc receives progress of one disk. It is called at most once per progress
// interval (one second by default) plus once at the end, never concurrently, with
// CurrentBytes and PercentComplete never going backwards.
type ProgressFunc func(proto.Progress)

// rateWindow is how far back bytes_per_second looks: long enough to smooth the
// piece-at-a-time steps of parallel readers and TCP bursts, short enough to follow a real
// slowdown within seconds.
const rateWindow = 10 * time.Second

type sample struct {
	t time.Time
	n int64
}

// progressTracker turns a stream of "bytes done" observations into rate-limited
// proto.Progress updates with a sliding-window rate and an ETA.
type progressTracker struct {
	mu       sync.Mutex
	fn       ProgressFunc
	total    int64
	interval time.Duration
	message  string
	now      func() time.Time

	cur     int64
	started bool
	last    time.Time // last emission
	samples []sample  // one per emission (and the start), oldest first, within rateWindow
	final   bool
}

func newProgressTracker(fn ProgressFunc, total int64, interval time.Duration, message string) *progressTracker {
	if interval <= 0 {
		interval = time.Second
	}
	return &progressTracker{fn: fn, total: total, interval: interval, message: message, now: time.Now}
}

// Update records that cur bytes are done and emits if an interval has passed.
func (p *progressTracker) Update(cur int64) {
	if p == nil || p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.final {
		return
	}
	if p.total > 0 {
		// 100% means done: the last bytes may be counted before the image is flushed and
		// closed. Only Finish reaches the total.
		cur = min(cur, p.total-1)
	}
	if cur > p.cur {
		p.cur = cur
	}
	now := p.now()
	if !p.started {
		p.started = true
		p.samples = append(p.samples, sample{now, 0})
		p.emit(now)
		return
	}
	if now.Sub(p.last) >= p.interval {
		p.emit(now)
	}
}

// Finish emits the final update (100%) once; later updates are ignored.
func (p *progressTracker) Finish() {
	if p == nil || p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.final {
		return
	}
	now := p.now()
	if !p.started {
		p.samples = append(p.samples, sample{now, 0})
	}
	p.cur = p.total
	p.final = true
	p.emit(now)
}

// emit must be called with p.mu held: the callback runs under the lock, which is what makes
// "never concurrently" and "monotonic" hold without asking the callback to synchronise.
func (p *progressTracker) emit(now time.Time) {
	p.last = now
	p.samples = append(p.samples, sample{now, p.cur})
	// Keep one sample at or beyond the window edge so the rate always spans ≥ rateWindow
	// once the transfer is that old.
	for len(p.samples) > 2 && now.Sub(p.samples[1].t) >= rateWindow {
		p.samples = p.samples[1:]
	}
	pr := proto.Progress{
		Stage:        proto.StageConversion,
		CurrentBytes: p.cur,
		TotalBytes:   p.total,
		Message:      p.message,
	}
	if p.total > 0 {
		pr.PercentComplete = float64(p.cur) * 100 / float64(p.total)
	}
	if p.final {
		pr.PercentComplete = 100
	}
	first := p.samples[0]
	if dt := now.Sub(first.t).Seconds(); dt > 0 {
		pr.BytesPerSecond = float64(p.cur-first.n) / dt
	}
	if pr.BytesPerSecond > 0 && !p.final {
		pr.ETASeconds = float64(p.total-p.cur) / pr.BytesPerSecond
	}
	p.fn(pr)
}

// Aggregator combines the progress of a VM's disks, copied in parallel, into one
// rate-limited progress for the job: bytes add up, the rate and ETA are the VM's.
type Aggregator struct {
	mu      sync.Mutex
	current []int64
	tracker *progressTracker
}

// NewAggregator returns an aggregator for disks of the given sizes reporting to fn at most
// once per interval (≤ 0: one second).
func NewAggregator(fn ProgressFunc, sizes []int64, interval time.Duration, message string) *Aggregator {
	var total int64
	for _, s := range sizes {
		total += s
	}
	return &Aggregator{current: make([]int64, len(sizes)), tracker: newProgressTracker(fn, total, interval, message)}
}

// Disk returns the ProgressFunc to pass as Output.Progress for disk i.
func (a *Aggregator) Disk(i int) ProgressFunc {
	return func(p proto.Progress) {
		a.mu.Lock()
		if p.CurrentBytes > a.current[i] {
			a.current[i] = p.CurrentBytes
		}
		var sum int64
		for _, c := range a.current {
			sum += c
		}
		a.mu.Unlock()
		a.tracker.Update(sum)
	}
}

// Finish emits the final 100% update (call it once every disk succeeded).
func (a *Aggregator) Finish() { a.tracker.Finish() }
