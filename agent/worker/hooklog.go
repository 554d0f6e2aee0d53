package worker

import "time"

// HookLogger is what the worker's Reporter offers an executor that runs hooks: a hook's
// outcome and output become a line of the attempt log (Config.AttemptLog), next to the
// attempt's start and end.
type HookLogger interface {
	HookRan(phase, outcome, output string)
}

var _ HookLogger = (*reporter)(nil)

// HookRan records a hook of this attempt ("pre" or "post"; outcome ok or failed).
func (r *reporter) HookRan(phase, outcome, output string) {
	r.w.writeAttempt(AttemptRecord{Time: time.Now().UTC(), Agent: r.w.cfg.Name, JobID: r.tok.JobID, Attempt: r.tok.Attempt,
		Event: "hook_" + phase, Outcome: outcome, Output: output})
}
