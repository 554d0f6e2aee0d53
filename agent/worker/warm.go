package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/hypersdk/hypersdk/proto"
)

// What a warm migration needs from the worker (migrate.WarmReporter): the cutover an
// operator asks for reaches the agent in a heartbeat answer, like a cancel, and the warm
// state goes to the controller in a fenced report that must be committed before the
// pipeline goes on (it is what a later attempt resumes from).

// CutoverRequested is closed when the controller asked for this job's cutover.
func (r *reporter) CutoverRequested() <-chan struct{} { return r.cut }

// cutover closes CutoverRequested once.
func (r *reporter) cutover() {
	r.cutOnce.Do(func() { close(r.cut) })
}

// AgentName is the agent's name, which the resume point records.
func (r *reporter) AgentName() string { return r.w.cfg.Name }

// Warm sends a warm report and waits for the controller to commit it. A refusal (the
// lease is no longer this attempt's) stops the job like a refused progress report.
func (r *reporter) Warm(ctx context.Context, status proto.WarmStatus, resume *proto.WarmResume) error {
	err := r.w.c.postRetry(ctx, "/agent/v1/warm", proto.WarmReport{LeaseToken: r.tok, Agent: r.w.cfg.Name, Status: status, Resume: resume},
		nil, r.w.reportDeadline())
	if errors.Is(err, ErrStale) {
		r.cancel(ErrLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("warm report: %w", err)
	}
	r.w.log.Debug("warm state recorded", "job", r.tok.JobID, "phase", status.Phase, "rounds", status.Rounds)
	return nil
}
