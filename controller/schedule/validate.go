package schedule

import (
	"context"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Validate runs pre-flight validation (controller/validate) on job definitions whose
// passwords are sealed, as a run's are.
type Validate func(ctx context.Context, defs []proto.JobDefinition) ([]proto.ValidationResult, error)

// validate checks a run's jobs before they are committed: a VM with a critical concern
// gets no job and is named in the run's outcome (the others still run: one bad VM of a
// wave must not cancel the wave); the others keep their concerns. When validation cannot
// run (vCenter unreachable), the jobs are created unchecked, as they were before
// validation existed: the run's agents report what fails.
func (s *Scheduler) validate(ctx context.Context, sc proto.Schedule, cmd *state.ScheduleFired) {
	if s.cfg.Validate == nil || len(cmd.Jobs) == 0 || sc.JobTemplate.Options.SkipValidation {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ListTimeout)
	defer cancel()
	res, err := s.cfg.Validate(ctx, cmd.Jobs)
	if err != nil || len(res) != len(cmd.Jobs) {
		s.log.Warn("pre-flight validation of a run failed: its jobs are created unchecked", "schedule", sc.ID, "err", err)
		return
	}
	keep := cmd.Jobs[:0:0]
	for i, r := range res {
		if r.Critical() {
			cmd.Refused = append(cmd.Refused, r)
			continue
		}
		cmd.Jobs[i].SourceHost = r.SourceHost
		keep = append(keep, cmd.Jobs[i])
		if len(r.Concerns) > 0 {
			if cmd.Concerns == nil {
				cmd.Concerns = map[string][]proto.Concern{}
			}
			cmd.Concerns[cmd.Jobs[i].ID] = r.Concerns
		}
	}
	if len(cmd.Refused) > 0 {
		s.log.Warn("pre-flight validation refused VMs of a run", "schedule", sc.ID, "refused", len(cmd.Refused), "created", len(keep))
	}
	cmd.Jobs = keep
}
