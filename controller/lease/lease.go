// Package lease hands pending jobs to agents and takes them back when agents go quiet.
// Its concerns live in their own files:
//   - placement.go: which job goes to which agent and why a job waits (a pure function of
//     the pending jobs, the agents and the running leases; every node explains pending
//     jobs with it, the leader places them with it);
//   - timers.go: the leader's in-memory lease timers;
//   - broker.go: the leader's long-polls, which it answers with grants;
//   - reports.go: heartbeats, progress, completion and failure, fenced by the lease token.
//
// The rules (DESIGN.md "Leases"):
//   - A grant is the raft command LeaseGrant{job, agent, attempt+1}; (job, attempt) is the
//     fencing token every later report carries. Apply rejects a stale token.
//   - Renewals reset an in-memory timer on the leader: no raft write per heartbeat.
//   - A timer that fires commits LeaseExpire; apply requeues (or fails after max attempts).
//   - A new leader rebuilds every timer with a full TTL: a lease may outlive its TTL after
//     a failover, it never dies early.
//   - Gossip declaring an agent dead does not shorten its leases: a partitioned agent looks
//     dead too, and works on until it fences itself (see ExpireAgent).
//   - commit.go: the commit point. An attempt defines its domain only once the leader has
//     committed it; a committed lease's timer runs for CommitGrace, and its expiry gives
//     the job to the operator instead of another attempt.
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/secrets"
)

// Sentinel errors.
var (
	ErrNotLeader = errors.New("lease manager is not running on this node (not the leader)")
	ErrStale     = state.ErrStaleLease
)

// Applier commits commands (the raft node).
type Applier interface {
	Apply(cmd []byte) (any, error)
}

// Fleet is the gossip view of agents the placement consults (nil: no view, every polling
// agent is taken at its word).
type Fleet interface {
	List() []proto.AgentInfo
}

// Config tunes leasing. Zero values mean the defaults.
type Config struct {
	// TTL is how long a lease lives without a heartbeat. Agents renew every TTL/3.
	TTL time.Duration
	// MaxWait caps an agent's long-poll.
	MaxWait time.Duration
	// PerVCenterLimit bounds running jobs per source vCenter (0 = default 8).
	PerVCenterLimit int
	// PerHostDiskLimit bounds the disks copied at once from one source ESXi host
	// (0 = default 10).
	PerHostDiskLimit int
	// ProgressInterval is the minimum time between two progress writes of one job.
	ProgressInterval time.Duration
	// CommitGrace is how long a committed attempt's agent may stay silent before its job
	// fails for the operator (commit.go); at least TTL.
	CommitGrace time.Duration
	// Secrets opens sealed passwords for the agent's lease (nil: stored in clear).
	Secrets *secrets.Box
	Logger  *slog.Logger
}

// DefaultConfig returns production timings.
func DefaultConfig() Config {
	return Config{TTL: 15 * time.Second, MaxWait: 25 * time.Second, PerVCenterLimit: 8, PerHostDiskLimit: 10, ProgressInterval: time.Second,
		CommitGrace: DefaultCommitGrace}
}

func (c *Config) fill() {
	d := DefaultConfig()
	if c.TTL <= 0 {
		c.TTL = d.TTL
	}
	if c.MaxWait <= 0 {
		c.MaxWait = d.MaxWait
	}
	if c.PerVCenterLimit <= 0 {
		c.PerVCenterLimit = d.PerVCenterLimit
	}
	if c.PerHostDiskLimit <= 0 {
		c.PerHostDiskLimit = d.PerHostDiskLimit
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = d.ProgressInterval
	}
	if c.CommitGrace <= 0 {
		c.CommitGrace = d.CommitGrace
	}
	c.CommitGrace = max(c.CommitGrace, c.TTL)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Manager grants, renews and expires leases on the leader, and explains pending jobs on
// every node.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	st     *state.State
	raft   Applier
	fleet  Fleet
	now    func() time.Time
	timers *Timers

	mu           sync.Mutex
	leading      bool
	waiters      map[*waiter]struct{}
	lastProgress map[string]time.Time
	wake         chan struct{}
	expireCh     chan Expiry

	// sealed caches, per job, why its password does not open with this controller's key.
	// Its own lock: placement asks while it holds the state's read lock.
	sealedMu sync.Mutex
	sealed   map[string]error
}

// New returns a manager; it leases nothing until Run is called on the leader.
func New(cfg Config, st *state.State, raft Applier, fleet Fleet) *Manager {
	cfg.fill()
	m := &Manager{
		cfg: cfg, log: cfg.Logger.With("component", "lease"), st: st, raft: raft, fleet: fleet,
		now:     func() time.Time { return time.Now().UTC() },
		waiters: map[*waiter]struct{}{}, lastProgress: map[string]time.Time{}, sealed: map[string]error{},
		wake: make(chan struct{}, 1), expireCh: make(chan Expiry, 1024),
	}
	m.timers = NewTimers(cfg.TTL, nil, func(e Expiry) bool {
		select {
		case m.expireCh <- e:
			return true
		default:
			return false // the timer fires again shortly
		}
	})
	return m
}

// TTL is the lease time-to-live agents must renew within.
func (m *Manager) TTL() time.Duration { return m.cfg.TTL }

// Run is the leader-only loop: it rebuilds timers, dispatches pending jobs to waiting
// agents and commits expiries until ctx ends (leadership lost).
func (m *Manager) Run(ctx context.Context) {
	sub := m.st.Subscribe(4096)
	defer sub.Close()

	m.mu.Lock()
	m.leading = true
	m.lastProgress = map[string]time.Time{}
	running := map[state.LeaseToken]string{}
	var committed []*proto.Job
	m.st.Jobs(proto.StatusRunning, func(j *proto.Job) bool {
		running[state.LeaseToken{JobID: j.Definition.ID, Attempt: j.Attempt}] = j.Agent
		if state.Committed(j) {
			committed = append(committed, j)
		}
		return true
	})
	m.timers.Rebuild(running)
	for _, j := range committed {
		m.arm(j)
	}
	m.mu.Unlock()
	m.log.Info("lease manager started", "running_leases", len(running), "committed", len(committed), "ttl", m.cfg.TTL,
		"commit_grace", m.cfg.CommitGrace)
	m.poke()

	defer func() {
		m.mu.Lock()
		m.leading = false
		m.timers.StopAll()
		for w := range m.waiters {
			close(w.got) // long-polls answer "not leader" and agents find the new one
			delete(m.waiters, w)
		}
		m.mu.Unlock()
		m.log.Info("lease manager stopped")
	}()

	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C:
			if !ok {
				return
			}
			m.onEvent(ev)
		case e := <-m.expireCh:
			if m.timers.Take(e) {
				m.expire(e, "")
			}
		case <-m.wake:
			m.dispatch()
		}
		// Events may have been dropped if we fell behind: a dispatch pass is idempotent.
		if sub.Dropped() > 0 {
			m.poke()
		}
	}
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *Manager) onEvent(ev state.Event) {
	switch ev.Kind {
	case state.EventJobSubmitted, state.EventJobRequeued, state.EventRestored, state.EventAgentControl:
		m.poke()
	case state.EventJobCompleted, state.EventJobFailed, state.EventJobCancelled:
		id := ev.Job.Definition.ID
		m.timers.Stop(id)
		m.mu.Lock()
		delete(m.lastProgress, id)
		m.mu.Unlock()
		m.sealedMu.Lock()
		delete(m.sealed, id)
		m.sealedMu.Unlock()
		m.poke() // a slot and a vCenter share freed up
	case state.EventJobStarted:
		// Grants made by this leader are armed in grant(); this covers a grant applied
		// by a previous leader that we learn about through the log.
		tok := state.LeaseToken{JobID: ev.Job.Definition.ID, Attempt: ev.Job.Attempt}
		m.mu.Lock()
		if _, ok := m.timers.Holds(tok); !ok && m.leading {
			m.timers.Arm(tok, ev.Job.Agent)
		}
		m.mu.Unlock()
	case state.EventJobCommitted:
		// From now on the lease runs for the grace (also for a commit this leader learns
		// from the log of a previous one).
		m.mu.Lock()
		if m.leading {
			m.arm(ev.Job)
		}
		m.mu.Unlock()
	}
}

// arm (re)starts the timer of a running job's lease: the TTL, or the grace once the attempt
// is committed. Caller holds m.mu.
func (m *Manager) arm(j *proto.Job) {
	tok := state.LeaseToken{JobID: j.Definition.ID, Attempt: j.Attempt}
	if state.Committed(j) {
		m.timers.ArmCommitted(tok, j.Agent, m.cfg.CommitGrace)
		return
	}
	m.timers.Arm(tok, j.Agent)
}

// expire commits LeaseExpire for a lease whose timer was taken.
// reason "" is the default: no heartbeat for the TTL (or, committed, for the grace).
func (m *Manager) expire(e Expiry, reason string) {
	tok, agent := e.Token, e.Agent
	switch {
	case e.Committed:
		reason = m.committedSilence(tok, agent)
	case reason == "":
		reason = fmt.Sprintf("lease expired: agent %s sent no heartbeat for %s", agent, m.cfg.TTL)
	}
	_, err := m.raft.Apply(state.MustEncode(state.CmdLeaseExpire, state.LeaseExpire{LeaseToken: tok, Reason: reason, Committed: e.Committed, At: m.now()}))
	switch {
	case err == nil && e.Committed:
		m.log.Error("committed attempt silent for its whole grace: job handed to the operator", "job", tok.JobID,
			"attempt", tok.Attempt, "agent", agent, "reason", reason)
	case err == nil:
		m.log.Info("lease expired", "job", tok.JobID, "attempt", tok.Attempt, "agent", agent, "reason", reason)
	case errors.Is(err, state.ErrStaleLease), errors.Is(err, state.ErrNotFound):
		// The job ended or moved on meanwhile: nothing to expire. Or the attempt committed
		// after this TTL timer was armed: its lease runs on, for the grace (without this,
		// a commit event this loop missed would leave the lease with no timer at all).
		m.mu.Lock()
		if j, ok := m.st.Job(tok.JobID); ok && m.leading && j.Status == proto.StatusRunning && j.Attempt == tok.Attempt {
			if _, held := m.timers.Holds(tok); !held {
				m.arm(j)
			}
		}
		m.mu.Unlock()
	default:
		m.log.Warn("lease expiry not committed; will retry", "job", tok.JobID, "err", err)
		m.mu.Lock()
		if m.leading {
			m.timers.Retry(e)
		}
		m.mu.Unlock()
	}
}

// ExpireAgent is told that gossip declared an agent dead. It does not end the agent's
// leases before their TTL: to memberlist an agent cut off by a partition looks exactly
// like a dead one, and such an agent keeps copying until it fences itself at 80% of the
// TTL after its last renewal. Ending its leases at once let a second agent start the same
// job while the first still ran (test/partition_test.go caught it); the TTL timers end
// them instead: late is fine, early never.
func (m *Manager) ExpireAgent(name, reason string) {
	if n := m.timers.Agent(name); n > 0 {
		m.log.Info("agent declared dead; its leases end when their TTL runs out", "agent", name, "leases", n, "reason", reason)
	}
}

// usable says why a job's password cannot be opened by this controller: the leader's
// check before a grant, cached per job (a definition never changes) until the job ends.
func (m *Manager) usable(j *proto.Job) error {
	id := j.Definition.ID
	m.sealedMu.Lock()
	err, seen := m.sealed[id]
	m.sealedMu.Unlock()
	if seen {
		return err
	}
	if _, err = m.cfg.Secrets.Open(j.Definition.Source.Password); err != nil {
		err = fmt.Errorf("the vCenter password does not open with this controller's secrets key: %w", err)
	}
	m.sealedMu.Lock()
	m.sealed[id] = err
	m.sealedMu.Unlock()
	return err
}

// PendingReasons returns a function that explains pending jobs from this node's view as
// of now (its gossip view of the agents, its replicated state): the rules of placement,
// without the leader's waiting polls. Build one per query: it costs O(agents) once and
// O(1) per job.
func (m *Manager) PendingReasons() func(*proto.Job) string {
	open := func(j *proto.Job) error {
		if _, err := m.cfg.Secrets.Open(j.Definition.Source.Password); err != nil {
			return fmt.Errorf("the vCenter password does not open with this controller's secrets key: %w", err)
		}
		return nil
	}
	v := NewView(m.input(nil, open))
	return func(j *proto.Job) string {
		if r := v.Reason(j); r != "" {
			return r
		}
		return j.PendingReason // e.g. why the last attempt ended
	}
}

// unhealthy is what keeps an agent from work among its failed self-checks: all but the
// controllers' (an agent that polls this leader reaches it; one that cannot poll gets no
// job anyway).
func unhealthy(c proto.AgentCapacity) string {
	var r []string
	for i, f := range c.FailedChecks {
		if f == proto.HealthCheckControllers {
			continue
		}
		if i < len(c.Reasons) {
			r = append(r, c.Reasons[i])
		} else {
			r = append(r, f)
		}
	}
	return strings.Join(r, "; ")
}

func cordonWord(action string) string {
	if action == state.AgentDrain {
		return "draining"
	}
	return "cordoned"
}

// input is placement's input: the gossip view of agents merged with the waiting polls
// (which count as alive and carry the freshest capacity), the state's running counts.
func (m *Manager) input(polls []proto.LeaseRequest, usable func(*proto.Job) error) Input {
	byName := map[string]*Agent{}
	var order []string
	if m.fleet != nil {
		for _, a := range m.fleet.List() {
			byName[a.Name] = &Agent{Name: a.Name, Alive: a.State.Member(), State: a.State, Running: a.RunningJobs, MaxJobs: a.MaxJobs,
				StorageFree: a.Capacity.StorageFreeBytes, MemoryFree: a.Capacity.MemoryFreeBytes, Methods: a.Capabilities.Methods,
				Unhealthy: unhealthy(a.Capacity)}
			order = append(order, a.Name)
		}
	}
	for _, r := range polls {
		a, ok := byName[r.Agent]
		if !ok {
			a = &Agent{Name: r.Agent}
			byName[r.Agent] = a
			order = append(order, r.Agent)
		}
		max := r.MaxJobs
		if max <= 0 {
			max = 1
		}
		a.Alive, a.MaxJobs, a.Polls = true, max, a.Polls+1
		a.StorageFree, a.MemoryFree, a.Methods = r.Capacity.StorageFreeBytes, r.Capacity.MemoryFreeBytes, r.Capabilities.Methods
		a.Unhealthy = unhealthy(r.Capacity)
	}
	// Copies, not calls into the state: the broker places while it walks the pending jobs
	// under the state's read lock, and a second read lock there would wait behind a
	// waiting apply that waits for the first (TestDispatchNeverBlocksApply).
	in := Input{PerVCenterLimit: m.cfg.PerVCenterLimit, RunningPerVCenter: m.st.RunningPerVCenter(), Usable: usable,
		PerHostDiskLimit: m.cfg.PerHostDiskLimit, RunningDisksPerHost: m.st.RunningDisksPerHost(),
		Agents: make([]Agent, 0, len(order))}
	for _, name := range order {
		a := byName[name]
		// The leases in the state are fresher than the running count an agent gossips;
		// with a poll, the state's count is the one placement keeps up to date.
		if n := m.st.RunningOn(name); n > a.Running || a.Polls > 0 {
			a.Running = n
		}
		if c, ok := m.st.AgentControlOf(name); ok {
			a.Cordoned = cordonWord(c.Action)
		}
		in.Agents = append(in.Agents, *a)
	}
	return in
}
