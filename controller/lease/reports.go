package lease

import (
	"fmt"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Reports: heartbeats renew leases in memory; progress, completion and failure are
// committed. Each is fenced by the (job, attempt) token and the agent holding it.

// Heartbeat renews the agent's leases and tells it which to stop.
func (m *Manager) Heartbeat(req proto.HeartbeatRequest) (proto.HeartbeatResponse, error) {
	resp := proto.HeartbeatResponse{TTLSeconds: m.cfg.TTL.Seconds()}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leading {
		return resp, ErrNotLeader
	}
	ctl, _ := m.st.AgentControlOf(req.Agent)
	draining := ctl.Action == state.AgentDrain
	for _, t := range req.Leases {
		j, ok := m.st.Job(t.JobID)
		if !ok || j.Status != proto.StatusRunning || j.Attempt != t.Attempt || j.Agent != req.Agent {
			resp.Lost = append(resp.Lost, t)
			continue
		}
		m.arm(j)
		switch {
		case j.CancelRequested:
			resp.Cancel = append(resp.Cancel, t)
		case draining && j.Commit == nil && handBackSafe(j.Progress.Stage):
			resp.HandBack = append(resp.HandBack, t)
		}
		if j.Warm != nil && j.Warm.CutoverRequested && j.Warm.Phase == proto.WarmPhasePrecopy {
			resp.Cutover = append(resp.Cutover, t)
		}
	}
	return resp, nil
}

// handBackSafe says whether a drained agent's job may be stopped and run elsewhere at its
// stage: before its commit point (Job.Commit, checked by the caller) and before it defines
// its domain, the work is only disk copies the agent deletes; from there on the job
// finishes where it is (a hand-back would leave a domain on the drained host and define
// another elsewhere).
func handBackSafe(stage string) bool {
	switch stage {
	case proto.StageDefining, proto.StageBootCheck, proto.StageCompleted:
		return false
	}
	return true
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
	if j, ok := m.st.Job(req.JobID); ok && j.Status == proto.StatusRunning && j.Attempt == req.Attempt {
		m.arm(j)
	}
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
