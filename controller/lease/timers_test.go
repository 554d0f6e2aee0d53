package lease

import (
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
)

// fakeClock runs AfterFunc timers when the test advances it: the timer tests assert on
// instants, never on the machine's speed.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Duration
	seq    int
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Duration
	seq     int
	f       func()
	stopped bool
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	ft := &fakeTimer{at: c.now + d, seq: c.seq, f: f}
	c.timers = append(c.timers, ft)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !ft.stopped
		ft.stopped = true
		return was
	}
}

// Advance moves the clock by d, running every timer that comes due, in time order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now + d
	c.mu.Unlock()
	for {
		c.mu.Lock()
		sort.Slice(c.timers, func(i, j int) bool {
			if c.timers[i].at != c.timers[j].at {
				return c.timers[i].at < c.timers[j].at
			}
			return c.timers[i].seq < c.timers[j].seq
		})
		var next *fakeTimer
		for _, ft := range c.timers {
			if !ft.stopped && ft.at <= end {
				next = ft
				break
			}
		}
		if next == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		next.stopped = true
		c.now = next.at
		c.mu.Unlock()
		next.f() // outside the lock: it may arm timers
	}
}

// expiries records what the timers hand over.
type expiries struct {
	mu   sync.Mutex
	got  []Expiry
	take bool // what fire answers
}

func (e *expiries) fire(x Expiry) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.take {
		return false
	}
	e.got = append(e.got, x)
	return true
}

func (e *expiries) jobs() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, x := range e.got {
		out = append(out, x.Token.JobID)
	}
	slices.Sort(out)
	return out
}

func newTestTimers(ttl time.Duration) (*Timers, *fakeClock, *expiries) {
	c := &fakeClock{}
	e := &expiries{take: true}
	return NewTimers(ttl, c.AfterFunc, e.fire), c, e
}

func ltok(id string, attempt int) state.LeaseToken {
	return state.LeaseToken{JobID: id, Attempt: attempt}
}

// Each case arms and advances the clock; a lease never expires before a full TTL after
// its last arming (grant, renewal, or a new leader's rebuild).
func TestTimers(t *testing.T) {
	const ttl = 15 * time.Second
	cases := []struct {
		name string
		want []string // the jobs that must have expired
		run  func(tm *Timers, c *fakeClock, e *expiries) []string
	}{
		{"not a nanosecond early", []string{"a"}, func(tm *Timers, c *fakeClock, e *expiries) []string {
			tm.Arm(ltok("a", 1), "ag")
			c.Advance(ttl - time.Nanosecond)
			if len(e.jobs()) != 0 {
				return []string{"(expired early)"}
			}
			c.Advance(time.Nanosecond)
			return e.jobs()
		}},
		{"a renewal restarts the full TTL", []string{"a"}, func(tm *Timers, c *fakeClock, e *expiries) []string {
			tm.Arm(ltok("a", 1), "ag")
			c.Advance(ttl * 2 / 3)
			tm.Arm(ltok("a", 1), "ag") // heartbeat
			c.Advance(ttl - time.Nanosecond)
			if len(e.jobs()) != 0 {
				return []string{"(expired early)"}
			}
			c.Advance(time.Nanosecond)
			return e.jobs()
		}},
		{"a new leader re-arms every lease at a full TTL", []string{"a", "b"}, func(tm *Timers, c *fakeClock, e *expiries) []string {
			// Granted long ago on the old leader; this leader knows only that they run.
			c.Advance(time.Hour)
			tm.Rebuild(map[state.LeaseToken]string{ltok("a", 1): "x", ltok("b", 2): "y"})
			c.Advance(ttl - time.Nanosecond)
			if len(e.jobs()) != 0 {
				return []string{"(expired early)"}
			}
			c.Advance(time.Nanosecond)
			return e.jobs()
		}},
		{"a rebuild drops the previous term's timers", []string{"a"}, func(tm *Timers, c *fakeClock, e *expiries) []string {
			tm.Arm(ltok("old", 1), "x")
			tm.Rebuild(map[state.LeaseToken]string{ltok("a", 1): "x"})
			c.Advance(ttl)
			return e.jobs()
		}},
		{"an ended job never expires", []string{"b"}, func(tm *Timers, c *fakeClock, e *expiries) []string {
			tm.Arm(ltok("a", 1), "ag")
			tm.Arm(ltok("b", 1), "ag")
			tm.Stop("a")
			c.Advance(2 * ttl)
			return e.jobs()
		}},
		{"leadership lost stops all", nil, func(tm *Timers, c *fakeClock, e *expiries) []string {
			tm.Arm(ltok("a", 1), "ag")
			tm.StopAll()
			c.Advance(2 * ttl)
			return e.jobs()
		}},
		{"a new attempt replaces the old attempt's timer", []string{"a"}, func(tm *Timers, c *fakeClock, e *expiries) []string {
			tm.Arm(ltok("a", 1), "x")
			c.Advance(ttl / 2)
			tm.Arm(ltok("a", 2), "y")
			c.Advance(ttl - time.Nanosecond)
			if len(e.jobs()) != 0 {
				return []string{"(attempt 1's timer fired)"}
			}
			c.Advance(time.Nanosecond)
			if e.got[0].Token != ltok("a", 2) || e.got[0].Agent != "y" {
				return []string{"(wrong token)"}
			}
			return e.jobs()
		}},
		{"an expiry not taken fires again", []string{"a"}, func(tm *Timers, c *fakeClock, e *expiries) []string {
			e.take = false
			tm.Arm(ltok("a", 1), "ag")
			c.Advance(ttl)
			e.take = true
			c.Advance(retryAfter)
			return e.jobs()
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tm, c, e := newTestTimers(ttl)
			got := tc.run(tm, c, e)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("expired %v, want %v", got, tc.want)
			}
		})
	}
}

// An expiry handed over is void once the lease is renewed or rebuilt before it is taken
// (a heartbeat racing the timer): late is fine, early never.
func TestStaleExpiryIsNotTaken(t *testing.T) {
	const ttl = time.Second
	for _, name := range []string{"renewed", "rebuilt", "stopped"} {
		t.Run(name, func(t *testing.T) {
			tm, c, e := newTestTimers(ttl)
			tm.Arm(ltok("a", 1), "ag")
			c.Advance(ttl)
			if len(e.got) != 1 {
				t.Fatalf("fired %d", len(e.got))
			}
			switch name {
			case "renewed":
				tm.Arm(ltok("a", 1), "ag")
			case "rebuilt":
				tm.Rebuild(map[state.LeaseToken]string{ltok("a", 1): "ag"})
			case "stopped":
				tm.Stop("a")
			}
			if tm.Take(e.got[0]) {
				t.Fatal("a stale expiry was taken")
			}
		})
	}
	tm, c, e := newTestTimers(ttl)
	tm.Arm(ltok("a", 1), "ag")
	c.Advance(ttl)
	if !tm.Take(e.got[0]) || tm.Len() != 0 {
		t.Fatal("a current expiry must be taken once")
	}
	if tm.Take(e.got[0]) {
		t.Fatal("taken twice")
	}
}

func TestTimersCountAndRelease(t *testing.T) {
	tm, _, _ := newTestTimers(time.Second)
	tm.Arm(ltok("a", 1), "x")
	tm.Arm(ltok("b", 1), "x")
	tm.Arm(ltok("c", 1), "y")
	if tm.Agent("x") != 2 || tm.Agent("y") != 1 || tm.Len() != 3 {
		t.Fatalf("counts x=%d y=%d len=%d", tm.Agent("x"), tm.Agent("y"), tm.Len())
	}
	if _, ok := tm.Release(ltok("a", 2)); ok {
		t.Fatal("released another attempt's lease")
	}
	if agent, ok := tm.Release(ltok("a", 1)); !ok || agent != "x" || tm.Agent("x") != 1 {
		t.Fatalf("release: %q %v", agent, ok)
	}
	if a, ok := tm.Holds(ltok("c", 1)); !ok || a != "y" {
		t.Fatalf("holds: %q %v", a, ok)
	}
}

// A committed lease's timer runs for the grace, not the TTL, and its expiry says it was a
// committed one (the state then ends the job for the operator instead of requeueing it);
// a retried expiry keeps that.
func TestCommittedTimerRunsForTheGrace(t *testing.T) {
	const ttl, grace = 15 * time.Second, 2 * time.Minute
	tm, c, e := newTestTimers(ttl)
	tm.Arm(ltok("a", 1), "ag")
	c.Advance(ttl / 2)
	tm.ArmCommitted(ltok("a", 1), "ag", grace)
	c.Advance(grace - time.Nanosecond)
	if len(e.jobs()) != 0 {
		t.Fatalf("a committed lease expired before its grace: %v", e.jobs())
	}
	c.Advance(time.Nanosecond)
	if len(e.got) != 1 || !e.got[0].Committed || e.got[0].Token != ltok("a", 1) {
		t.Fatalf("expiries %+v, want one committed expiry of a/1", e.got)
	}
	if !tm.Take(e.got[0]) {
		t.Fatal("the committed expiry could not be taken")
	}
	tm.Retry(e.got[0])
	c.Advance(retryAfter)
	if len(e.got) != 2 || !e.got[1].Committed {
		t.Fatalf("the retried expiry %+v lost its committed mark", e.got)
	}
}
