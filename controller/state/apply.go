package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// DefaultMaxAttempts is used when a job was stored without one (the leader normally stamps it).
const DefaultMaxAttempts = 3

// Apply applies one encoded command at raft index idx and returns its response: a value
// or an error. A malformed payload is answered with an error and changes nothing; a
// command type this binary does not know stops the node (UnknownCommandError).
func (s *State) Apply(idx uint64, data []byte) any {
	if len(data) == 0 {
		s.appliedIndex.Store(idx)
		return fmt.Errorf("%w: empty entry", ErrBadCommand)
	}
	r, known := s.dispatch(idx, CommandType(data[0]), data[1:])
	if !known {
		panic(&UnknownCommandError{Type: CommandType(data[0]), Index: idx})
	}
	s.appliedIndex.Store(idx)
	return r
}

// dispatch is the one switch over every command type; known is false for a type this
// binary does not know.
func (s *State) dispatch(idx uint64, t CommandType, body []byte) (_ any, known bool) {
	switch t {
	case CmdSubmitJob:
		return decoded(body, func(c SubmitJob) any {
			return s.applySubmit(idx, []proto.JobDefinition{c.Definition}, map[string][]proto.Concern{c.Definition.ID: c.Concerns})
		}), true
	case CmdSubmitBatch:
		return decoded(body, func(c SubmitBatch) any { return s.applySubmit(idx, c.Definitions, c.Concerns) }), true
	case CmdCancelJobs:
		return decoded(body, func(c CancelJobs) any { return s.applyCancel(idx, c) }), true
	case CmdLeaseGrant:
		return decoded(body, func(c LeaseGrant) any { return s.applyLeaseGrant(idx, c) }), true
	case CmdLeaseExpire:
		return decoded(body, func(c LeaseExpire) any { return s.applyLeaseExpire(idx, c) }), true
	case CmdProgress:
		return decoded(body, func(c ProgressReport) any { return s.applyProgress(idx, c) }), true
	case CmdComplete:
		return decoded(body, func(c CompleteReport) any { return s.applyComplete(idx, c) }), true
	case CmdFail:
		return decoded(body, func(c FailReport) any { return s.applyFail(idx, c) }), true
	case CmdLeaseCommit:
		return decoded(body, func(c LeaseCommit) any { return s.applyLeaseCommit(idx, c) }), true
	case CmdWarmReport:
		return decoded(body, func(c WarmReport) any { return s.applyWarmReport(idx, c) }), true
	case CmdCutover:
		return decoded(body, func(c CutoverRequest) any { return s.applyCutover(idx, c) }), true
	case CmdRegisterNode:
		return decoded(body, s.applyRegisterNode), true
	case CmdRemoveNode:
		return decoded(body, s.applyRemoveNode), true
	case CmdScheduleUpsert:
		return decoded(body, s.applyScheduleUpsert), true
	case CmdScheduleDelete:
		return decoded(body, s.applyScheduleDelete), true
	case CmdScheduleFired:
		return decoded(body, func(c ScheduleFired) any { return s.applyScheduleFired(idx, c) }), true
	case CmdWebhookAdd:
		return decoded(body, s.applyWebhookAdd), true
	case CmdWebhookDelete:
		return decoded(body, s.applyWebhookDelete), true
	case CmdWebhookDelivered:
		return decoded(body, s.applyWebhookDelivered), true
	case CmdWebhookSeed:
		return decoded(body, s.applyWebhookSeed), true
	case CmdAgentEnroll:
		return decoded(body, s.applyAgentEnroll), true
	case CmdAgentForget:
		return decoded(body, s.applyAgentForget), true
	case CmdAgentRotate:
		return decoded(body, s.applyAgentRotate), true
	case CmdAgentRotateRequest:
		return decoded(body, s.applyAgentRotateRequest), true
	case CmdAgentControl:
		return decoded(body, func(c AgentControl) any { return s.applyAgentControl(idx, c) }), true
	}
	return nil, false
}

func (s *State) applyRegisterNode(c NodeInfo) any {
	if c.ID == "" {
		return fmt.Errorf("%w: register_node without id", ErrBadCommand)
	}
	s.mu.Lock()
	s.nodes[c.ID] = c
	s.mu.Unlock()
	return nil
}

func (s *State) applyRemoveNode(c RemoveNode) any {
	s.mu.Lock()
	delete(s.nodes, c.ID)
	s.mu.Unlock()
	return nil
}

// decoded decodes a command payload of type T and hands it to apply (a malformed payload
// is the answer instead).
func decoded[T any](body []byte, apply func(T) any) any {
	var c T
	if err := decode(body, &c); err != nil {
		return err
	}
	return apply(c)
}

func decode(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return nil
}

// applySubmit stores new jobs. The whole batch is checked first so a batch is applied
// entirely or not at all.
func (s *State) applySubmit(idx uint64, defs []proto.JobDefinition, concerns map[string][]proto.Concern) any {
	s.mu.Lock()
	seen := make(map[string]bool, len(defs))
	for i := range defs {
		id := defs[i].ID
		if id == "" {
			s.mu.Unlock()
			return fmt.Errorf("%w: job without id", ErrBadCommand)
		}
		if _, ok := s.jobs[id]; ok || seen[id] {
			s.mu.Unlock()
			return fmt.Errorf("job %s: %w", id, ErrExists)
		}
		seen[id] = true
	}
	created := make([]*proto.Job, 0, len(defs))
	for _, d := range defs {
		if d.Options.MaxAttempts <= 0 {
			d.Options.MaxAttempts = DefaultMaxAttempts
		}
		j := &proto.Job{
			Definition:  d,
			Status:      proto.StatusPending,
			Progress:    proto.Progress{Stage: proto.StageQueued},
			SubmittedAt: d.CreatedAt,
			UpdatedAt:   d.CreatedAt,
		}
		if d.Options.Warm {
			j.Warm = &proto.WarmStatus{Phase: proto.WarmPhasePrecopy}
		}
		if c := concerns[d.ID]; len(c) > 0 {
			j.Concerns = c
			j.Warnings = proto.ValidationResult{Concerns: c}.Warnings()
		}
		s.insert(j)
		created = append(created, j)
	}
	s.mu.Unlock()
	for _, j := range created {
		s.events.publish(Event{Kind: EventJobSubmitted, Job: j, Index: idx})
	}
	return len(created)
}

func (s *State) applyCancel(idx uint64, c CancelJobs) any {
	s.mu.Lock()
	var res CancelResult
	var evs []Event
	cancel := func(e *entry) {
		j := e.job
		switch j.Status {
		case proto.StatusPending:
			nj := *j
			nj.Status = proto.StatusCancelled
			nj.PendingReason = ""
			nj.Progress.Stage = string(proto.StatusCancelled)
			nj.UpdatedAt = c.At
			at := c.At
			nj.CompletedAt = &at
			s.replace(e, &nj)
			res.Cancelled = append(res.Cancelled, j.Definition.ID)
			evs = append(evs, Event{Kind: EventJobCancelled, Job: &nj, Index: idx})
		case proto.StatusRunning:
			if j.CancelRequested {
				res.Skipped = append(res.Skipped, j.Definition.ID)
				return
			}
			nj := *j
			nj.CancelRequested = true
			nj.UpdatedAt = c.At
			s.replace(e, &nj)
			res.Cancelled = append(res.Cancelled, j.Definition.ID)
			evs = append(evs, Event{Kind: EventJobCancelRequested, Job: &nj, Index: idx})
		default:
			res.Skipped = append(res.Skipped, j.Definition.ID)
		}
	}
	done := make(map[string]bool)
	for _, id := range c.JobIDs {
		if done[id] {
			continue
		}
		done[id] = true
		e, ok := s.jobs[id]
		if !ok {
			res.NotFound = append(res.NotFound, id)
			continue
		}
		if c.Status != "" && e.job.Status != c.Status {
			res.Skipped = append(res.Skipped, id)
			continue
		}
		cancel(e)
	}
	if len(c.JobIDs) == 0 && c.Status != "" {
		if t, ok := s.byStatus[c.Status]; ok {
			// Collect first: cancel moves entries between the indexes being walked.
			var targets []*entry
			t.Ascend(func(e *entry) bool { targets = append(targets, e); return true })
			for _, e := range targets {
				cancel(e)
			}
		}
	}
	s.mu.Unlock()
	for _, ev := range evs {
		s.events.publish(ev)
	}
	return res
}

// lookupLease finds a running job whose current attempt is the token's. Caller holds the lock.
func (s *State) lookupLease(tok LeaseToken) (*entry, error) {
	e, ok := s.jobs[tok.JobID]
	if !ok {
		return nil, fmt.Errorf("job %s: %w", tok.JobID, ErrNotFound)
	}
	if e.job.Status != proto.StatusRunning || e.job.Attempt != tok.Attempt {
		return nil, fmt.Errorf("job %s attempt %d (job is %s, attempt %d): %w",
			tok.JobID, tok.Attempt, e.job.Status, e.job.Attempt, ErrStaleLease)
	}
	return e, nil
}

func (s *State) applyLeaseGrant(idx uint64, c LeaseGrant) any {
	s.mu.Lock()
	e, ok := s.jobs[c.JobID]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("job %s: %w", c.JobID, ErrNotFound)
	}
	j := e.job
	if j.Status != proto.StatusPending || j.Attempt+1 != c.Attempt || c.Agent == "" {
		s.mu.Unlock()
		return fmt.Errorf("grant job %s attempt %d (job is %s, attempt %d): %w",
			c.JobID, c.Attempt, j.Status, j.Attempt, ErrStaleLease)
	}
	nj := *j
	nj.Status = proto.StatusRunning
	nj.Agent = c.Agent
	nj.Attempt = c.Attempt
	nj.PendingReason = ""
	nj.Progress = proto.Progress{Stage: proto.StageConnecting}
	at := c.At
	nj.StartedAt = &at
	nj.UpdatedAt = c.At
	s.replace(e, &nj)
	s.mu.Unlock()
	s.events.publish(Event{Kind: EventJobStarted, Job: &nj, Index: idx})
	return nil
}

// endAttempt moves a running job (nj, a copy) out of its attempt: to cancelled if a
// cancel was requested, else pending again when retry is wanted and attempts remain, else
// failed. It returns the event kind.
func endAttempt(nj *proto.Job, reason string, retry bool, at time.Time, warnings []string) EventKind {
	nj.UpdatedAt = at
	nj.Warnings = appendWarnings(nj.Warnings, warnings)
	if nj.Agent != "" && !nj.CancelRequested && !slices.Contains(nj.FailedAgents, nj.Agent) {
		nj.FailedAgents = append(slices.Clone(nj.FailedAgents), nj.Agent)
	}
	max := nj.Definition.Options.MaxAttempts
	if max <= 0 {
		max = DefaultMaxAttempts
	}
	switch {
	case nj.CancelRequested:
		nj.Status = proto.StatusCancelled
		nj.Progress.Stage = string(proto.StatusCancelled)
		nj.CompletedAt = &at
		return EventJobCancelled
	case retry && nj.Attempt < max:
		nj.Status = proto.StatusPending
		nj.Agent = ""
		// The attempt's agent said it failed after cleaning up: the next attempt commits
		// afresh.
		nj.Commit = nil
		nj.PendingReason = fmt.Sprintf("attempt %d of %d ended: %s; waiting for an agent", nj.Attempt, max, reason)
		nj.Progress = proto.Progress{Stage: proto.StageQueued}
		return EventJobRequeued
	default:
		nj.Status = proto.StatusFailed
		msg := reason
		if retry {
			msg = fmt.Sprintf("%s (after %d of %d attempts)", reason, nj.Attempt, max)
		}
		nj.Error = &msg
		nj.CompletedAt = &at
		return EventJobFailed
	}
}

// updateLease changes the running job a lease token names, the one sequence every agent
// report and expiry takes: under the lock, check the token (a stale one is the answer and
// nothing changes), change a copy (jobs are immutable once stored), swap it in, and publish
// the event change names after the lock is released.
func (s *State) updateLease(idx uint64, tok LeaseToken, change func(nj *proto.Job) EventKind) any {
	return s.updateLeaseIf(idx, tok, nil, change)
}

// updateLeaseIf is updateLease with a further check of the job (nil: none) whose error is
// the answer, nothing changed.
func (s *State) updateLeaseIf(idx uint64, tok LeaseToken, check func(j *proto.Job) error, change func(nj *proto.Job) EventKind) any {
	s.mu.Lock()
	e, err := s.lookupLease(tok)
	if err == nil && check != nil {
		err = check(e.job)
	}
	if err != nil {
		s.mu.Unlock()
		return err
	}
	nj := *e.job
	kind := change(&nj)
	if kind == EventJobRequeued {
		s.counters.Requeues++
	}
	s.replace(e, &nj)
	s.mu.Unlock()
	s.events.publish(Event{Kind: kind, Job: &nj, Index: idx})
	return nil
}

func appendWarnings(old, add []string) []string {
	if len(add) == 0 {
		return old
	}
	out := slices.Clone(old)
	for _, w := range add {
		if !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

func (s *State) applyLeaseExpire(idx uint64, c LeaseExpire) any {
	return s.updateLeaseIf(idx, c.LeaseToken, func(j *proto.Job) error { return expiryFits(j, c) }, func(nj *proto.Job) EventKind {
		reason := c.Reason
		if reason == "" {
			reason = "lease expired"
		}
		s.counters.LeaseExpiries++
		if committed(nj) {
			return endCommitted(nj, reason, c.At)
		}
		return endAttempt(nj, reason, true, c.At, nil)
	})
}

func (s *State) applyProgress(idx uint64, c ProgressReport) any {
	return s.updateLease(idx, c.LeaseToken, func(nj *proto.Job) EventKind {
		nj.Progress = c.Progress
		nj.Warnings = appendWarnings(nj.Warnings, c.Warnings)
		nj.UpdatedAt = c.At
		return EventJobProgress
	})
}

func (s *State) applyComplete(idx uint64, c CompleteReport) any {
	return s.updateLease(idx, c.LeaseToken, func(nj *proto.Job) EventKind {
		nj.Status = proto.StatusCompleted
		nj.Progress = completedProgress(nj.Progress, c.Progress)
		nj.Result = c.Result
		nj.Warnings = appendWarnings(nj.Warnings, c.Warnings)
		nj.UpdatedAt = c.At
		at := c.At
		nj.CompletedAt = &at
		nj.CancelRequested = false
		return EventJobCompleted
	})
}

// completedProgress is a completed job's progress: the agent's final report when it sent
// one (a job that ends within a second of its previous report never had it relayed), else
// the last relayed one; the message of an earlier stage ("connecting to …") is not kept.
func completedProgress(last proto.Progress, final *proto.Progress) proto.Progress {
	p := last
	if final != nil {
		p = *final
	}
	if p.Stage != proto.StageCompleted || p.Message == "" {
		p.Message = "migration completed"
	}
	p.Stage = proto.StageCompleted
	p.PercentComplete = 100
	if p.TotalBytes > 0 {
		p.CurrentBytes = p.TotalBytes
	}
	p.ETASeconds = 0
	return p
}

func (s *State) applyFail(idx uint64, c FailReport) any {
	return s.updateLease(idx, c.LeaseToken, func(nj *proto.Job) EventKind {
		// An agent may only acknowledge a cancel that was asked for; anything else is a failure.
		if c.Cancelled && nj.CancelRequested {
			return endAttempt(nj, c.Error, false, c.At, c.Warnings)
		}
		msg := c.Error
		if msg == "" {
			msg = "failed without a message"
		}
		return endAttempt(nj, msg, c.Retryable, c.At, c.Warnings)
	})
}
