package lease

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// The broker: agents' long-polls wait on the leader, and each dispatch pass asks placement
// which waiting poll gets which pending job, then commits the grants.

// waiter is an agent's long-poll.
type waiter struct {
	req proto.LeaseRequest
	got chan *proto.Lease // buffered 1: the dispatcher never blocks on it
}

// Lease long-polls for a job for the agent. It returns (nil, nil) when nothing came
// within the wait, ErrNotLeader when this node does not (or no longer) lead.
func (m *Manager) Lease(ctx context.Context, req proto.LeaseRequest) (*proto.Lease, error) {
	wait := m.cfg.MaxWait
	if req.WaitSeconds > 0 && time.Duration(req.WaitSeconds)*time.Second < wait {
		wait = time.Duration(req.WaitSeconds) * time.Second
	}
	w := &waiter{req: req, got: make(chan *proto.Lease, 1)}
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
		if !ok {
			return nil, ErrNotLeader
		}
		if ctx.Err() != nil {
			tok := state.LeaseToken{JobID: l.JobID, Attempt: l.Attempt}
			if agent, ok := m.timers.Release(tok); ok {
				m.expire(Expiry{Token: tok, Agent: agent}, "agent went away before receiving the lease")
			}
			return nil, ctx.Err()
		}
		return l, nil
	default:
	}
	return nil, ctx.Err()
}

// dispatch is one pass: placement pairs the waiting polls with pending jobs, and the
// grants are committed concurrently (raft batches them). A dispatch pass runs on Run's
// goroutine only, and ends when its grants are committed, so the next pass sees them.
func (m *Manager) dispatch() {
	m.mu.Lock()
	if !m.leading || len(m.waiters) == 0 {
		m.mu.Unlock()
		return
	}
	byAgent := map[string][]*waiter{}
	reqs := make([]proto.LeaseRequest, 0, len(m.waiters))
	for w := range m.waiters {
		byAgent[w.req.Agent] = append(byAgent[w.req.Agent], w)
		reqs = append(reqs, w.req)
	}
	m.mu.Unlock()

	grants := NewView(m.input(reqs, m.usable)).Place(func(yield func(*proto.Job) bool) {
		m.st.Jobs(proto.StatusPending, yield)
	})
	if len(grants) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, g := range grants {
		// Take one of the agent's polls still waiting (one may have timed out meanwhile:
		// the job then stays pending for the next pass).
		m.mu.Lock()
		var w *waiter
		for len(byAgent[g.Agent]) > 0 && w == nil {
			c := byAgent[g.Agent][0]
			byAgent[g.Agent] = byAgent[g.Agent][1:]
			if _, still := m.waiters[c]; still && m.leading {
				delete(m.waiters, c)
				w = c
			}
		}
		m.mu.Unlock()
		if w == nil {
			continue
		}
		wg.Add(1)
		go func(job *proto.Job, w *waiter) {
			defer wg.Done()
			l, err := m.grant(job, w.req.Agent)
			if err != nil {
				// Put the agent back in line; the job stays pending.
				m.mu.Lock()
				if m.leading {
					m.waiters[w] = struct{}{}
				} else {
					close(w.got)
				}
				m.mu.Unlock()
				if !errors.Is(err, state.ErrStaleLease) {
					m.log.Warn("grant not committed", "job", job.Definition.ID, "agent", w.req.Agent, "err", err)
				}
				return
			}
			w.got <- l
		}(g.Job, w)
	}
	wg.Wait()
	// More jobs or waiters may remain (e.g. a failed grant): go around again.
	m.poke()
}

// grant commits one lease and arms its timer; the lease carries the opened password.
func (m *Manager) grant(j *proto.Job, agent string) (*proto.Lease, error) {
	def := j.Definition
	pw, err := m.cfg.Secrets.Open(def.Source.Password)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", def.ID, err)
	}
	def.Source.Password = pw
	tok := state.LeaseToken{JobID: j.Definition.ID, Attempt: j.Attempt + 1}
	at := m.now()
	if _, err := m.raft.Apply(state.MustEncode(state.CmdLeaseGrant, state.LeaseGrant{LeaseToken: tok, Agent: agent, At: at})); err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.leading {
		m.timers.Arm(tok, agent)
	}
	m.mu.Unlock()
	m.log.Info("lease granted", "job", tok.JobID, "attempt", tok.Attempt, "agent", agent, "vm", j.Definition.VMPath)
	return &proto.Lease{
		LeaseToken: proto.LeaseToken{JobID: tok.JobID, Attempt: tok.Attempt},
		TTLSeconds: m.cfg.TTL.Seconds(), Definition: def, GrantedAt: at,
		// A warm job's next attempt goes on from where the last one left its copy.
		Warm: j.WarmResume, CutoverRequested: state.CutoverDue(j),
	}, nil
}
