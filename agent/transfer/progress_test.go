package transfer

import (
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// fakeClock lets the tracker's pacing be tested without waiting.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestProgressTrackerPacingRateETA(t *testing.T) {
	t.Parallel()
	var got []proto.Progress
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newProgressTracker(func(pr proto.Progress) { got = append(got, pr) }, 100<<20, time.Second, "disk")
	p.now = clk.now

	p.Update(0) // first observation: emitted at once
	for i := 1; i <= 30; i++ {
		clk.advance(100 * time.Millisecond)
		p.Update(int64(i) << 20) // 10 MiB/s
	}
	p.Update(1 << 20) // going backwards is ignored
	p.Finish()
	p.Update(5 << 20) // after Finish nothing is emitted

	// 3 s of updates every 100 ms: one at start, one per second, one final.
	if len(got) != 5 {
		t.Fatalf("%d updates, want 5: %+v", len(got), got)
	}
	mid := got[2] // at 2 s, 20 MiB done
	if mid.CurrentBytes != 20<<20 || mid.PercentComplete != 20 || mid.Stage != proto.StageConversion || mid.Message != "disk" {
		t.Errorf("mid = %+v", mid)
	}
	if mid.BytesPerSecond < 10.4e6 || mid.BytesPerSecond > 10.6e6 {
		t.Errorf("rate = %.0f, want ~10 MiB/s", mid.BytesPerSecond)
	}
	if eta := mid.ETASeconds; eta < 7.9 || eta > 8.1 {
		t.Errorf("eta = %.2f, want 8 s (80 MiB at 10 MiB/s)", eta)
	}
	last := got[len(got)-1]
	if last.PercentComplete != 100 || last.CurrentBytes != 100<<20 || last.ETASeconds != 0 {
		t.Errorf("final = %+v", last)
	}
	for i := 1; i < len(got); i++ {
		if got[i].CurrentBytes < got[i-1].CurrentBytes {
			t.Errorf("not monotonic at %d", i)
		}
	}
}

func TestProgressTrackerSlidingWindow(t *testing.T) {
	t.Parallel()
	var got []proto.Progress
	clk := &fakeClock{t: time.Unix(0, 0)}
	p := newProgressTracker(func(pr proto.Progress) { got = append(got, pr) }, 1<<40, time.Second, "")
	p.now = clk.now
	var done int64
	p.Update(0)
	// 30 s at 100 MB/s, then 20 s at 10 MB/s: the rate must follow within the window.
	for i := 0; i < 50; i++ {
		clk.advance(time.Second)
		if i < 30 {
			done += 100e6
		} else {
			done += 10e6
		}
		p.Update(done)
	}
	if r := got[len(got)-1].BytesPerSecond; r < 9e6 || r > 11e6 {
		t.Errorf("rate after slowdown = %.0f, want ~10 MB/s (window %s)", r, rateWindow)
	}
}

func TestAggregator(t *testing.T) {
	t.Parallel()
	var got []proto.Progress
	a := NewAggregator(func(pr proto.Progress) { got = append(got, pr) }, []int64{100, 300}, time.Nanosecond, "vm")
	d0, d1 := a.Disk(0), a.Disk(1)
	d0(proto.Progress{CurrentBytes: 50})
	d1(proto.Progress{CurrentBytes: 150})
	d0(proto.Progress{CurrentBytes: 20}) // stale, ignored
	d0(proto.Progress{CurrentBytes: 100})
	a.Finish()
	want := []int64{50, 200, 200, 250, 400}
	if len(got) != len(want) {
		t.Fatalf("got %d updates: %+v", len(got), got)
	}
	for i, w := range want {
		if got[i].CurrentBytes != w || got[i].TotalBytes != 400 {
			t.Errorf("update %d = %+v, want %d/400", i, got[i], w)
		}
	}
	if got[4].PercentComplete != 100 {
		t.Errorf("final = %+v", got[4])
	}
}
