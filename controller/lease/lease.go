// Package lease hands pending jobs to agents and takes them back when agents go quiet.
// It runs on the leader only (Run is registered with cluster.OnLeadership).
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
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
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
	Get(name string) (proto.AgentInfo, bool)
}

// Config tunes leasing. Zero values mean the defaults.
type Config struct {
	// TTL is how long a lease lives without a heartbeat. Agents renew every TTL/3.
	TTL time.Duration
	// MaxWait caps an agent's long-poll.
	MaxWait time.Duration
	// PerVCenterLimit bounds running jobs per source vCenter (0 = default 8).
	PerVCenterLimit int
	// ProgressInterval is the minimum time between two progress writes of one job.
	ProgressInterval time.Duration
	// Secrets opens sealed passwords for the agent's lease (nil: stored in clear).
	Secrets *secrets.Box
	Logger  *slog.Logger
}

// DefaultConfig returns production timings.
func DefaultConfig() Config {
	return Config{TTL: 15 * time.Second, MaxWait: 25 * time.Second, PerVCenterLimit: 8, ProgressInterval: time.Second}
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
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = d.ProgressInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// held is one live lease on the leader.
type held struct {
	token state.LeaseToken
	agent string
	timer *time.Timer
}

// waiter is an agent's long-poll.
type waiter struct {
	req   proto.LeaseRequest
	since time.Time
	got   chan *proto.Lease // buffered 1: the dispatcher never blocks on it
}

// Manager grants, renews and expires leases.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	st    *state.State
	raft  Applier
	fleet Fleet
	now   func() time.Time

	mu       sync.Mutex
	leading  bool
	term     context.Context
	leases   map[string]*held // by job id
	waiters  map[*waiter]struct{}
	reserved map[string]bool // jobs being granted right now
	// sealedFail holds jobs whose password this leader cannot open (wrong or missing
	// secrets key): skipping them keeps the dispatcher from spinning on them.
	sealedFail   map[string]bool
	lastProgress map[string]time.Time
	wake         chan struct{}
	expireCh     chan state.LeaseToken
}

// New returns a manager; it does nothing until Run is called on the leader.
func New(cfg Config, st *state.State, raft Applier, fleet Fleet) *Manager {
	cfg.fill()
	return &Manager{
		cfg: cfg, log: cfg.Logger.With("component", "lease"), st: st, raft: raft, fleet: fleet,
		now:    func() time.Time { return time.Now().UTC() },
		leases: map[string]*held{}, waiters: map[*waiter]struct{}{}, reserved: map[string]bool{}, sealedFail: map[string]bool{},
		lastProgress: map[string]time.Time{},
		wake:         make(chan struct{}, 1), expireCh: make(chan state.LeaseToken, 1024),
	}
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
	m.term = ctx
	m.leases = map[string]*held{}
	m.lastProgress = map[string]time.Time{}
	n := 0
	m.st.Jobs(proto.StatusRunning, func(j *proto.Job) bool {
		m.armLocked(state.LeaseToken{JobID: j.Definition.ID, Attempt: j.Attempt}, j.Agent)
		n++
		return true
	})
	m.mu.Unlock()
	m.log.Info("lease manager started", "running_leases", n, "ttl", m.cfg.TTL)
	m.poke()

	defer func() {
		m.mu.Lock()
		m.leading = false
		for _, h := range m.leases {
			h.timer.Stop()
		}
		m.leases = map[string]*held{}
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
		case tok := <-m.expireCh:
			m.expire(tok, "")
		case <-m.wake:
			m.dispatch(ctx)
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
	case state.EventJobSubmitted, state.EventJobRequeued, state.EventRestored:
		m.poke()
	case state.EventJobCompleted, state.EventJobFailed, state.EventJobCancelled:
		m.mu.Lock()
		if h, ok := m.leases[ev.Job.Definition.ID]; ok {
			h.timer.Stop()
			delete(m.leases, ev.Job.Definition.ID)
		}
		delete(m.lastProgress, ev.Job.Definition.ID)
		m.mu.Unlock()
		m.poke() // a slot and a vCenter share freed up
	case state.EventJobStarted:
		// Grants made by this leader are armed in grant(); this covers a grant applied
		// by a previous leader that we learn about through the log.
		m.mu.Lock()
		if _, ok := m.leases[ev.Job.Definition.ID]; !ok && m.leading {
			m.armLocked(state.LeaseToken{JobID: ev.Job.Definition.ID, Attempt: ev.Job.Attempt}, ev.Job.Agent)
		}
		m.mu.Unlock()
	}
}

// armLocked starts (or restarts) the full-TTL timer of a lease. Caller holds mu.
func (m *Manager) armLocked(tok state.LeaseToken, agent string) {
	if h, ok := m.leases[tok.JobID]; ok {
		h.timer.Stop()
	}
	h := &held{token: tok, agent: agent}
	h.timer = time.AfterFunc(m.cfg.TTL, func() {
		select {
		case m.expireCh <- tok:
		default:
			// The channel is large; if it is full the next heartbeat check catches up.
			m.log.Warn("lease expiry queue full", "job", tok.JobID)
		}
	})
	m.leases[tok.JobID] = h
}

// expire commits LeaseExpire for a token unless it was renewed meanwhile.
func (m *Manager) expire(tok state.LeaseToken, reason string) {
	m.mu.Lock()
	h, ok := m.leases[tok.JobID]
	if !ok || h.token != tok {
		m.mu.Unlock()
		return
	}
	agent := h.agent
	delete(m.leases, tok.JobID)
	m.mu.Unlock()
	if reason == "" {
		reason = fmt.Sprintf("lease expired: agent %s sent no heartbeat for %s", agent, m.cfg.TTL)
	}
	_, err := m.raft.Apply(state.MustEncode(state.CmdLeaseExpire, state.LeaseExpire{LeaseToken: tok, Reason: reason, At: m.now()}))
	switch {
	case err == nil:
		m.log.Info("lease expired", "job", tok.JobID, "attempt", tok.Attempt, "agent", agent, "reason", reason)
	case errors.Is(err, state.ErrStaleLease), errors.Is(err, state.ErrNotFound):
		// The job ended or moved on meanwhile: nothing to expire.
	default:
		m.log.Warn("lease expiry not committed; will retry", "job", tok.JobID, "err", err)
		m.mu.Lock()
		if m.leading {
			if _, again := m.leases[tok.JobID]; !again {
				m.leases[tok.JobID] = &held{token: tok, agent: agent, timer: time.AfterFunc(time.Second, func() { m.expireCh <- tok })}
			}
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
	m.mu.Lock()
	n := 0
	for _, h := range m.leases {
		if h.agent == name {
			n++
		}
	}
	m.mu.Unlock()
	if n > 0 {
		m.log.Info("agent declared dead; its leases end when their TTL runs out", "agent", name, "leases", n, "reason", reason)
	}
}

// Lease long-polls for a job for the agent. It returns (nil, nil) when nothing came
// within the wait, ErrNotLeader when this node does not (or no longer) lead.
func (m *Manager) Lease(ctx context.Context, req proto.LeaseRequest) (*proto.Lease, error) {
	wait := m.cfg.MaxWait
	if req.WaitSeconds > 0 && time.Duration(req.WaitSeconds)*time.Second < wait {
		wait = time.Duration(req.WaitSeconds) * time.Second
	}
	w := &waiter{req: req, since: m.now(), got: make(chan *proto.Lease, 1)}
	m.mu.Lock()
	if !m.leading {
		m.mu.Unlock()
		return nil, ErrNotLeader
	}
	m.waiters[w] = struct{}{}
	m.mu.Unlock()
	m.poke()

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case l, ok := <-w.got:
		if !ok {
			return nil, ErrNotLeader
		}
		return l, nil
	case <-t.C:
	case <-ctx.Done():
	}
	m.mu.Lock()
	delete(m.waiters, w)
	m.mu.Unlock()
	// A grant may have raced the timeout: never drop a granted lease on the floor (it
	// would only come back after a TTL).
	select {
	case l, ok := <-w.got:
		if ok && l != nil {
			if ctx.Err() != nil {
				m.release(l.LeaseToken, "agent went away before receiving the lease")
				return nil, ctx.Err()
			}
			return l, nil
		}
		if !ok {
			return nil, ErrNotLeader
		}
	default:
	}
	return nil, ctx.Err()
}

// release hands a just-granted lease back (the agent disconnected before it arrived).
func (m *Manager) release(tok proto.LeaseToken, reason string) {
	st := state.LeaseToken{JobID: tok.JobID, Attempt: tok.Attempt}
	m.expire(st, reason)
}

// dispatch pairs waiting agents with pending jobs: agents with the most room go first,
// jobs oldest first. Grants of one pass are committed concurrently (raft batches them).
func (m *Manager) dispatch(ctx context.Context) {
	m.mu.Lock()
	if !m.leading || len(m.waiters) == 0 {
		m.mu.Unlock()
		return
	}
	ws := make([]*waiter, 0, len(m.waiters))
	for w := range m.waiters {
		ws = append(ws, w)
	}
	m.mu.Unlock()
	sort.Slice(ws, func(i, j int) bool { return better(ws[i].req, ws[j].req) })

	running := m.st.RunningByAgent()
	perVC := m.runningPerVCenter()
	known := m.knownAgents()
	type grant struct {
		w   *waiter
		job *proto.Job
	}
	var grants []grant
	for _, w := range ws {
		max := w.req.MaxJobs
		if max <= 0 {
			max = 1
		}
		if running[w.req.Agent] >= max {
			continue
		}
		var pick *proto.Job
		m.st.Jobs(proto.StatusPending, func(j *proto.Job) bool {
			if m.reserved[j.Definition.ID] || m.sealedFail[j.Definition.ID] || !fits(j, w.req, known) {
				return true
			}
			if perVC[vcenterKey(j)] >= m.cfg.PerVCenterLimit {
				return true
			}
			pick = j
			return false
		})
		if pick == nil {
			continue
		}
		m.mu.Lock()
		if _, still := m.waiters[w]; !still || !m.leading {
			m.mu.Unlock()
			continue
		}
		delete(m.waiters, w)
		m.reserved[pick.Definition.ID] = true
		m.mu.Unlock()
		running[w.req.Agent]++
		perVC[vcenterKey(pick)]++
		grants = append(grants, grant{w, pick})
	}
	if len(grants) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, g := range grants {
		wg.Add(1)
		go func(g grant) {
			defer wg.Done()
			l, err := m.grant(g.job, g.w.req.Agent)
			m.mu.Lock()
			delete(m.reserved, g.job.Definition.ID)
			if err != nil {
				// Put the agent back in line; the job stays pending.
				if m.leading {
					m.waiters[g.w] = struct{}{}
				} else {
					close(g.w.got)
				}
				m.mu.Unlock()
				if !errors.Is(err, state.ErrStaleLease) {
					m.log.Warn("grant not committed", "job", g.job.Definition.ID, "agent", g.w.req.Agent, "err", err)
				}
				return
			}
			m.mu.Unlock()
			g.w.got <- l
		}(g)
	}
	wg.Wait()
	// More jobs or waiters may remain (e.g. a failed grant): go around again.
	m.poke()
}

func (m *Manager) grant(j *proto.Job, agent string) (*proto.Lease, error) {
	def := j.Definition
	pw, err := m.cfg.Secrets.Open(def.Source.Password)
	if err != nil {
		// Granting would only make the agent fail with "bad credentials": keep it pending
		// until a leader with the right key takes over.
		m.mu.Lock()
		m.sealedFail[def.ID] = true
		m.mu.Unlock()
		return nil, fmt.Errorf("job %s: %w", def.ID, err)
	}
	def.Source.Password = pw
	tok := state.LeaseToken{JobID: j.Definition.ID, Attempt: j.Attempt + 1}
	at := m.now()
	if _, err := m.raft.Apply(state.MustEncode(state.CmdLeaseGrant, state.LeaseGrant{LeaseToken: tok, Agent: agent, At: at})); err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.armLocked(tok, agent)
	m.mu.Unlock()
	m.log.Info("lease granted", "job", tok.JobID, "attempt", tok.Attempt, "agent", agent, "vm", j.Definition.VMPath)
	return &proto.Lease{
		LeaseToken: proto.LeaseToken{JobID: tok.JobID, Attempt: tok.Attempt},
		TTLSeconds: m.cfg.TTL.Seconds(), Definition: def, GrantedAt: at,
	}, nil
}

// better orders agents for placement: most free storage, then most free memory, then the
// fewest running jobs, then name (deterministic).
func better(a, b proto.LeaseRequest) bool {
	if a.Capacity.StorageFreeBytes != b.Capacity.StorageFreeBytes {
		return a.Capacity.StorageFreeBytes > b.Capacity.StorageFreeBytes
	}
	if a.Capacity.MemoryFreeBytes != b.Capacity.MemoryFreeBytes {
		return a.Capacity.MemoryFreeBytes > b.Capacity.MemoryFreeBytes
	}
	if a.RunningJobs != b.RunningJobs {
		return a.RunningJobs < b.RunningJobs
	}
	return a.Agent < b.Agent
}

// knownAgents is the set of agent names the fleet knows (for libvirt_uri host matching)
// and which of them can run each transfer method.
type agentSet struct {
	names   map[string]bool
	methods map[string]bool // methods at least one live agent has
}

func (m *Manager) knownAgents() agentSet {
	s := agentSet{names: map[string]bool{}, methods: map[string]bool{}}
	if m.fleet != nil {
		for _, a := range m.fleet.List() {
			s.names[a.Name] = true
			if a.State.Member() {
				for _, meth := range a.Capabilities.Methods {
					s.methods[meth] = true
				}
			}
		}
	}
	m.mu.Lock()
	for w := range m.waiters {
		s.names[w.req.Agent] = true
		for _, meth := range w.req.Capabilities.Methods {
			s.methods[meth] = true
		}
	}
	m.mu.Unlock()
	return s
}

// TargetAgent is the agent a job must run on, if it names one: options.target_agent, or
// the host of destination.libvirt_uri when an agent has that name.
func TargetAgent(j *proto.Job, isAgent func(string) bool) string {
	if t := j.Definition.Options.TargetAgent; t != "" {
		return t
	}
	if u := j.Definition.Destination.LibvirtURI; u != "" {
		if pu, err := url.Parse(u); err == nil && pu.Hostname() != "" && isAgent(pu.Hostname()) {
			return pu.Hostname()
		}
	}
	return ""
}

func fits(j *proto.Job, req proto.LeaseRequest, known agentSet) bool {
	if t := TargetAgent(j, func(n string) bool { return known.names[n] }); t != "" && t != req.Agent {
		return false
	}
	// A job demanding a method goes to an agent that has it when any live agent does;
	// when none does, any agent takes it and fails it saying what is missing.
	if meth := j.Definition.Options.ConversionMethod; meth != "" && meth != "auto" && known.methods[meth] && !req.Capabilities.HasMethod(meth) {
		return false
	}
	return true
}

// vcenterKey identifies a job's source vCenter for the concurrency limit.
func vcenterKey(j *proto.Job) string {
	if u, err := proto.ParseVCenterURL(j.Definition.Source.VCenterURL); err == nil {
		return strings.ToLower(u.Host)
	}
	return strings.ToLower(j.Definition.Source.VCenterURL)
}

func (m *Manager) runningPerVCenter() map[string]int {
	out := map[string]int{}
	m.st.Jobs(proto.StatusRunning, func(j *proto.Job) bool {
		out[vcenterKey(j)]++
		return true
	})
	return out
}

// Heartbeat renews the agent's leases and tells it which to stop.
func (m *Manager) Heartbeat(req proto.HeartbeatRequest) (proto.HeartbeatResponse, error) {
	resp := proto.HeartbeatResponse{TTLSeconds: m.cfg.TTL.Seconds()}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leading {
		return resp, ErrNotLeader
	}
	for _, t := range req.Leases {
		j, ok := m.st.Job(t.JobID)
		if !ok || j.Status != proto.StatusRunning || j.Attempt != t.Attempt || j.Agent != req.Agent {
			resp.Lost = append(resp.Lost, t)
			continue
		}
		m.armLocked(state.LeaseToken{JobID: t.JobID, Attempt: t.Attempt}, req.Agent)
		if j.CancelRequested {
			resp.Cancel = append(resp.Cancel, t)
		}
	}
	return resp, nil
}

// checkOwner verifies a report comes from the agent holding the lease (a token alone
// could be replayed by another agent).
func (m *Manager) checkOwner(tok proto.LeaseToken, agent string) error {
	j, ok := m.st.Job(tok.JobID)
	if !ok {
		return fmt.Errorf("job %s: %w", tok.JobID, state.ErrNotFound)
	}
	if j.Status != proto.StatusRunning || j.Attempt != tok.Attempt || j.Agent != agent {
		return fmt.Errorf("job %s attempt %d is not leased to %s (job is %s, attempt %d, agent %q): %w",
			tok.JobID, tok.Attempt, agent, j.Status, j.Attempt, j.Agent, state.ErrStaleLease)
	}
	return nil
}

// Progress records progress (at most once per ProgressInterval per job; more frequent
// reports are acknowledged as throttled) and renews the lease.
func (m *Manager) Progress(req proto.ProgressRequest) (proto.ReportResponse, error) {
	if err := m.checkOwner(req.LeaseToken, req.Agent); err != nil {
		return proto.ReportResponse{}, err
	}
	tok := state.LeaseToken{JobID: req.JobID, Attempt: req.Attempt}
	now := m.now()
	m.mu.Lock()
	if !m.leading {
		m.mu.Unlock()
		return proto.ReportResponse{}, ErrNotLeader
	}
	m.armLocked(tok, req.Agent)
	last := m.lastProgress[req.JobID]
	// 80% of the interval: agents pace reports at the interval on their side, and network
	// jitter must not make every other one arrive "too early".
	throttled := now.Sub(last) < m.cfg.ProgressInterval*8/10 && len(req.Warnings) == 0
	if !throttled {
		m.lastProgress[req.JobID] = now
	}
	m.mu.Unlock()
	j, _ := m.st.Job(req.JobID)
	resp := proto.ReportResponse{Message: "progress recorded", Throttled: throttled, Cancel: j != nil && j.CancelRequested}
	if throttled {
		resp.Message = "progress throttled"
		return resp, nil
	}
	_, err := m.raft.Apply(state.MustEncode(state.CmdProgress, state.ProgressReport{LeaseToken: tok, Progress: req.Progress, Warnings: req.Warnings, At: now}))
	return resp, err
}

// Complete finishes a job.
func (m *Manager) Complete(req proto.CompleteRequest) error {
	if err := m.checkOwner(req.LeaseToken, req.Agent); err != nil {
		return err
	}
	tok := state.LeaseToken{JobID: req.JobID, Attempt: req.Attempt}
	_, err := m.raft.Apply(state.MustEncode(state.CmdComplete, state.CompleteReport{LeaseToken: tok, Result: req.Result, Progress: req.Progress, Warnings: req.Warnings, At: m.now()}))
	return err
}

// Fail ends an attempt.
func (m *Manager) Fail(req proto.FailRequest) error {
	if err := m.checkOwner(req.LeaseToken, req.Agent); err != nil {
		return err
	}
	tok := state.LeaseToken{JobID: req.JobID, Attempt: req.Attempt}
	_, err := m.raft.Apply(state.MustEncode(state.CmdFail, state.FailReport{
		LeaseToken: tok, Error: req.Error, Cancelled: req.Cancelled, Retryable: req.Retryable, Warnings: req.Warnings, At: m.now(),
	}))
	return err
}

// PendingReason explains, from this node's view, why a pending job is not running. It is
// computed at read time from the fleet and the state, so it needs no raft writes.
func PendingReason(j *proto.Job, st *state.State, fleet Fleet, perVCenterLimit int) string {
	if j.Status != proto.StatusPending {
		return ""
	}
	if perVCenterLimit <= 0 {
		perVCenterLimit = DefaultConfig().PerVCenterLimit
	}
	var agents []proto.AgentInfo
	if fleet != nil {
		agents = fleet.List()
	}
	alive := 0
	byName := map[string]proto.AgentInfo{}
	// Leases in the state are fresher than the running count an agent gossips.
	leased := st.RunningByAgent()
	for i, a := range agents {
		if n := leased[a.Name]; n > a.RunningJobs {
			agents[i].RunningJobs = n
			a.RunningJobs = n
		}
		byName[a.Name] = a
		if a.State.Member() {
			alive++
		}
	}
	if t := TargetAgent(j, func(n string) bool { _, ok := byName[n]; return ok }); t != "" {
		a, ok := byName[t]
		switch {
		case !ok:
			return fmt.Sprintf("target agent %q is not in the fleet", t)
		case !a.State.Member():
			return fmt.Sprintf("target agent %q is %s", t, a.State)
		case a.MaxJobs > 0 && a.RunningJobs >= a.MaxJobs:
			return fmt.Sprintf("target agent %q is busy (%d/%d jobs)", t, a.RunningJobs, a.MaxJobs)
		}
	}
	if fleet != nil && alive == 0 {
		return "no agent is alive in the fleet"
	}
	n := 0
	key := vcenterKey(j)
	st.Jobs(proto.StatusRunning, func(r *proto.Job) bool {
		if vcenterKey(r) == key {
			n++
		}
		return true
	})
	if n >= perVCenterLimit {
		return fmt.Sprintf("vCenter %s is at its limit of %d concurrent migrations", key, perVCenterLimit)
	}
	if fleet != nil {
		free := false
		for _, a := range agents {
			if a.State.Member() && (a.MaxJobs == 0 || a.RunningJobs < a.MaxJobs) {
				free = true
			}
		}
		if !free {
			return fmt.Sprintf("all %d alive agents are busy", alive)
		}
	}
	if j.PendingReason != "" {
		return j.PendingReason
	}
	return ""
}
