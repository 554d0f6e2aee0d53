package lease

import (
	"fmt"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// WarmDiscard says which of the warm copies an agent keeps no attempt will resume: the job
// ended or is unknown, or its resume point names another agent (an attempt there copied
// in full). A job whose resume point is this agent's may come back to it: kept.
func (m *Manager) WarmDiscard(agent string, copies []string) []string {
	var out []string
	for _, id := range copies {
		j, ok := m.st.Job(id)
		if !ok || j.Status.Terminal() || j.WarmResume == nil || j.WarmResume.Agent != agent {
			out = append(out, id)
		}
	}
	return out
}

// Warm commits a warm job's report (its status and resume point) and renews the lease.
// Like progress it is fenced by the lease token and the agent holding it; unlike progress
// it is never throttled: the agent waits for it before going on (it is what the next
// attempt resumes from).
func (m *Manager) Warm(req proto.WarmReport) error {
	if err := m.checkOwner(req.LeaseToken, req.Agent); err != nil {
		return err
	}
	if j, _ := m.st.Job(req.JobID); j != nil && !j.Definition.Options.Warm {
		return fmt.Errorf("job %s is not a warm migration: %w", req.JobID, state.ErrInvalidState)
	}
	tok := state.LeaseToken{JobID: req.JobID, Attempt: req.Attempt}
	m.mu.Lock()
	if !m.leading {
		m.mu.Unlock()
		return ErrNotLeader
	}
	m.timers.Arm(tok, req.Agent)
	m.mu.Unlock()
	_, err := m.raft.Apply(state.MustEncode(state.CmdWarmReport, state.WarmReport{LeaseToken: tok, Status: req.Status, Resume: req.Resume, At: m.now()}))
	return err
}
