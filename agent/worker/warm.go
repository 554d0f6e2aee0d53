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

// CopyKeeper is an executor that keeps a job's work for a later attempt after an attempt
// stopped (a warm job's images): the lease loop tells the controller which copies it keeps
// and removes those the controller says no attempt will resume.
type CopyKeeper interface {
	// KeptCopies lists the jobs whose copies are kept, but for those running says run.
	KeptCopies(running func(jobID string) bool) []string
	// Discard removes the copies of these jobs (never of one running says runs).
	Discard(jobIDs []string, running func(jobID string) bool)
}

func (w *Worker) isRunning(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.jobs[id]
	return ok
}

func (w *Worker) keptCopies() []string {
	k, ok := w.exec.(CopyKeeper)
	if !ok {
		return nil
	}
	ids := k.KeptCopies(w.isRunning)
	if len(ids) > proto.MaxWarmCopies {
		ids = ids[:proto.MaxWarmCopies]
	}
	return ids
}

func (w *Worker) discard(ids []string) {
	if k, ok := w.exec.(CopyKeeper); ok && len(ids) > 0 {
		w.log.Info("removing kept copies no attempt will resume", "jobs", ids)
		k.Discard(ids, w.isRunning)
	}
}

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
