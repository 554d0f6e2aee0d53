package lease

import (
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
)

// Timers are the leader's lease timers, one per running job, in the shape of nomad's
// heartbeat timers: a renewal resets the job's timer to a full TTL in memory (no raft
// write), and a timer that runs out reports the lease for expiry. They hold no other
// state: a new leader arms one for every running job of the replicated state with a full
// TTL (Rebuild), so after a failover a lease may outlive its TTL, never die early.
type Timers struct {
	ttl   time.Duration
	after func(d time.Duration, f func()) (stop func() bool)
	// fire is called (from the timer's goroutine) when a lease's TTL ran out; false means
	// it could not take it now, and the timer fires again after retryAfter.
	fire func(Expiry) bool

	mu   sync.Mutex
	held map[string]*timer // by job id
}

type timer struct {
	tok   state.LeaseToken
	agent string
	// committed: the lease passed the commit point and runs for the grace, not the TTL.
	committed bool
	stop      func() bool
}

// Expiry is a timer that ran out. It stays valid only while that very timer is the job's:
// a renewal or a new term replaces the timer, and a stale expiry is then ignored (Take).
type Expiry struct {
	Token state.LeaseToken
	Agent string
	// Committed: the timer was a committed lease's grace (ArmCommitted).
	Committed bool
	t         *timer
}

// retryAfter is how soon an expiry that could not be handed over (or committed) fires again.
const retryAfter = time.Second

// NewTimers returns timers of the given TTL. after is time.AfterFunc's shape (nil:
// time.AfterFunc); fire receives the leases that ran out.
func NewTimers(ttl time.Duration, after func(time.Duration, func()) func() bool, fire func(Expiry) bool) *Timers {
	if after == nil {
		after = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	return &Timers{ttl: ttl, after: after, fire: fire, held: map[string]*timer{}}
}

// TTL is the lease time-to-live.
func (t *Timers) TTL() time.Duration { return t.ttl }

// Arm starts the lease's timer with a full TTL, or restarts it (a renewal). A timer of an
// older attempt of the same job is replaced.
func (t *Timers) Arm(tok state.LeaseToken, agent string) {
	t.armFor(tok, agent, t.ttl, false)
}

// ArmCommitted starts or restarts the timer of a lease that passed the commit point, for
// grace instead of the TTL: its expiry ends the job for the operator rather than requeue
// it (controller/state/commit.go), so it must not come after one missed heartbeat.
func (t *Timers) ArmCommitted(tok state.LeaseToken, agent string, grace time.Duration) {
	t.armFor(tok, agent, grace, true)
}

func (t *Timers) armFor(tok state.LeaseToken, agent string, d time.Duration, committed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.held[tok.JobID]; ok {
		old.stop()
	}
	tm := &timer{tok: tok, agent: agent, committed: committed}
	tm.stop = t.after(d, func() { t.ran(tm) })
	t.held[tok.JobID] = tm
}

// ran is a timer running out: unless renewed or stopped meanwhile, it is handed to fire.
func (t *Timers) ran(tm *timer) {
	t.mu.Lock()
	if t.held[tm.tok.JobID] != tm {
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	if !t.fire(Expiry{Token: tm.tok, Agent: tm.agent, Committed: tm.committed, t: tm}) {
		t.mu.Lock()
		if t.held[tm.tok.JobID] == tm {
			tm.stop = t.after(retryAfter, func() { t.ran(tm) })
		}
		t.mu.Unlock()
	}
}

// Retry arms an expiry that could not be committed to fire again soon, unless the lease
// was renewed or ended meanwhile.
func (t *Timers) Retry(e Expiry) {
	t.mu.Lock()
	_, other := t.held[e.Token.JobID]
	_, same := t.current(e.Token)
	t.mu.Unlock()
	if !other || same {
		t.armFor(e.Token, e.Agent, retryAfter, e.Committed)
	}
}

// current is tok's timer, if tok (this job, this attempt) holds one. Caller holds mu.
func (t *Timers) current(tok state.LeaseToken) (*timer, bool) {
	tm, ok := t.held[tok.JobID]
	return tm, ok && tm.tok == tok
}

// Holds reports whether tok's timer runs, and for which agent.
func (t *Timers) Holds(tok state.LeaseToken) (agent string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tm, ok := t.current(tok); ok {
		return tm.agent, true
	}
	return "", false
}

// Take stops and forgets the timer that ran out, if it is still the job's; ok is false
// when it was renewed, rebuilt by a new term, or the job ended since.
func (t *Timers) Take(e Expiry) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.t == nil || t.held[e.Token.JobID] != e.t {
		return false
	}
	delete(t.held, e.Token.JobID)
	return true
}

// Release stops and forgets tok's timer now (a lease handed back before its agent got
// it); ok is false when tok holds no timer.
func (t *Timers) Release(tok state.LeaseToken) (agent string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tm, ok := t.current(tok)
	if !ok {
		return "", false
	}
	tm.stop()
	delete(t.held, tok.JobID)
	return tm.agent, true
}

// Stop forgets a job's timer (the job ended).
func (t *Timers) Stop(jobID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tm, ok := t.held[jobID]; ok {
		tm.stop()
		delete(t.held, jobID)
	}
}

// Rebuild replaces every timer with one per given lease, each with a full TTL: what a new
// leader knows of a lease is only that it was running, not when it was last renewed.
func (t *Timers) Rebuild(leases map[state.LeaseToken]string) {
	t.StopAll()
	for tok, agent := range leases {
		t.Arm(tok, agent)
	}
}

// StopAll stops every timer (leadership lost: the next leader rebuilds them).
func (t *Timers) StopAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, tm := range t.held {
		tm.stop()
		delete(t.held, id)
	}
}

// Agent counts the leases an agent holds timers for.
func (t *Timers) Agent(name string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, tm := range t.held {
		if tm.agent == name {
			n++
		}
	}
	return n
}

// Len is the number of running timers.
func (t *Timers) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.held)
}
