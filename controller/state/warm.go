package state

import (
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// Warm migrations (proto/warm.go): the agent's warm reports after each round and at the
// cutover, and an operator's cutover request.

// Events of warm jobs.
const (
	// EventJobPrecopyRound: a warm job finished a precopy round (webhook job.precopy_round).
	EventJobPrecopyRound EventKind = proto.EventJobPrecopyRound
	// EventJobCutover: a warm job's cutover began (webhook job.cutover).
	EventJobCutover EventKind = proto.EventJobCutover
	// EventJobCutoverRequested: an operator asked for the cutover; the agent learns it on
	// its next heartbeat.
	EventJobCutoverRequested EventKind = "job.cutover_requested"
)

// WarmReport records a warm job's status and resume point (proto.WarmReport), fenced by
// the lease token like every agent report.
type WarmReport struct {
	LeaseToken
	Status proto.WarmStatus  `json:"status"`
	Resume *proto.WarmResume `json:"resume,omitempty"`
	At     time.Time         `json:"at"`
}

// CutoverRequest asks a warm job to cut over (POST /jobs/{id}/cutover).
type CutoverRequest struct {
	JobID string    `json:"job_id"`
	At    time.Time `json:"at"`
}

// CutoverResult answers CutoverRequest.
type CutoverResult struct {
	// AlreadyRequested: an earlier request asked for it; nothing changed.
	AlreadyRequested bool `json:"already_requested"`
}

// applyWarmReport stores the report's status (keeping a cutover an operator asked for,
// which the agent may not have heard of yet) and its resume point.
func (s *State) applyWarmReport(idx uint64, c WarmReport) any {
	s.mu.Lock()
	e, err := s.lookupLease(c.LeaseToken)
	if err == nil && !e.job.Definition.Options.Warm {
		err = fmt.Errorf("job %s is not a warm migration: %w", c.JobID, ErrInvalidState)
	}
	if err != nil {
		s.mu.Unlock()
		return err
	}
	nj := *e.job
	prev := nj.Warm
	st := c.Status
	if prev != nil {
		// A later attempt knows its own rounds only: what an earlier one saw stays.
		st.CutoverRequested = st.CutoverRequested || prev.CutoverRequested
		if st.LastRoundAt == nil {
			st.LastRoundAt = prev.LastRoundAt
		}
		if st.CutoverStartedAt == nil {
			st.CutoverStartedAt = prev.CutoverStartedAt
		}
	}
	nj.Warm = &st
	if c.Resume != nil {
		r := *c.Resume
		nj.WarmResume = &r
	}
	nj.UpdatedAt = c.At
	kind := EventJobProgress
	switch {
	case st.Phase == proto.WarmPhaseCutover && (prev == nil || prev.Phase == proto.WarmPhasePrecopy):
		kind = EventJobCutover
	case st.Phase == proto.WarmPhasePrecopy && (prev == nil || st.Rounds > prev.Rounds):
		kind = EventJobPrecopyRound
	}
	s.replace(e, &nj)
	s.mu.Unlock()
	s.events.publish(Event{Kind: kind, Job: &nj, Index: idx})
	return nil
}

// applyCutover marks a warm job's cutover as asked for. A job that is not warm, or is past
// its cutover (the agent began it, or the job ended), is refused; asking twice is no
// change.
func (s *State) applyCutover(idx uint64, c CutoverRequest) any {
	s.mu.Lock()
	e, ok := s.jobs[c.JobID]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("job %s: %w", c.JobID, ErrNotFound)
	}
	j := e.job
	switch {
	case !j.Definition.Options.Warm:
		s.mu.Unlock()
		return fmt.Errorf("job %s is not a warm migration (options.warm): it has no cutover: %w", c.JobID, ErrInvalidState)
	case j.Warm != nil && j.Warm.CutoverRequested:
		s.mu.Unlock()
		return CutoverResult{AlreadyRequested: true}
	case j.Status.Terminal():
		s.mu.Unlock()
		return fmt.Errorf("job %s is %s: past its cutover: %w", c.JobID, j.Status, ErrInvalidState)
	case j.Warm != nil && j.Warm.Phase != proto.WarmPhasePrecopy:
		s.mu.Unlock()
		return fmt.Errorf("job %s is past its cutover (phase %s): %w", c.JobID, j.Warm.Phase, ErrInvalidState)
	}
	nj := *j
	w := proto.WarmStatus{Phase: proto.WarmPhasePrecopy}
	if j.Warm != nil {
		w = *j.Warm
	}
	w.CutoverRequested = true
	nj.Warm = &w
	nj.UpdatedAt = c.At
	s.replace(e, &nj)
	s.mu.Unlock()
	s.events.publish(Event{Kind: EventJobCutoverRequested, Job: &nj, Index: idx})
	return CutoverResult{}
}

// CutoverDue says whether a warm job's agent must cut over as soon as it can: an operator
// asked, or an earlier attempt had begun it.
func CutoverDue(j *proto.Job) bool {
	return j.Warm != nil && (j.Warm.CutoverRequested || j.Warm.Phase != proto.WarmPhasePrecopy)
}
