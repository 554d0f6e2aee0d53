package controller

import (
	"context"
	"time"

	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/controller/schedule"
	"github.com/hypersdk/hypersdk/controller/validate"
	"github.com/hypersdk/hypersdk/proto"
)

// ValidationConfig is pre-flight validation (controller/validate): POST /jobs/validate is
// always served; OnSubmit runs the same checks before a job is stored (a job skips them
// with options.skip_validation).
type ValidationConfig struct {
	// OnSubmit: default true. In-process test controllers (TestConfig) and the test
	// harness turn it off, since most tests submit to vCenters that are not there.
	OnSubmit *bool `yaml:"on_submit"`
	// AgentFactsTimeout bounds asking one agent for its host facts (default 3 s).
	AgentFactsTimeout time.Duration `yaml:"agent_facts_timeout"`
	// Timeout bounds one validation (default 25 s: below the 30 s a follower waits for a
	// forwarded submit).
	Timeout time.Duration `yaml:"timeout"`
}

// onSubmit reports whether submit validates.
func (v ValidationConfig) onSubmit() bool { return v.OnSubmit == nil || *v.OnSubmit }

// setupValidation wires POST /jobs/validate and the checks at submit.
func (c *Controller) setupValidation() {
	timeout := c.cfg.Validation.Timeout
	if timeout <= 0 {
		timeout = 25 * time.Second
	}
	v := validate.New(validate.Config{
		Connect: c.API.ConnectVCenter,
		Agents:  func() []proto.AgentInfo { return c.Fleet.List() },
		Facts:   validate.HTTPFacts(c.cfg.Agents.JoinToken, c.cfg.Validation.AgentFactsTimeout),
		Timeout: timeout,
		Logger:  c.log,
	})
	c.API.SetValidator(api.ValidatorConfig{Validator: v, OnSubmit: c.cfg.Validation.onSubmit()})
	c.validator = v
}

// scheduleValidate is what the scheduler checks a run's jobs with: the same checks as
// submit, when submit runs them.
func (c *Controller) scheduleValidate() schedule.Validate {
	if c.validator == nil || !c.cfg.Validation.onSubmit() {
		return nil
	}
	return c.validateSealed
}

// validateSealed validates a schedule run's jobs, whose passwords are sealed in the state.
func (c *Controller) validateSealed(ctx context.Context, defs []proto.JobDefinition) ([]proto.ValidationResult, error) {
	open := make([]proto.JobDefinition, len(defs))
	for i, d := range defs {
		pw, err := c.secrets.Open(d.Source.Password)
		if err != nil {
			return nil, err
		}
		d.Source.Password = pw
		open[i] = d
	}
	return c.validator.Validate(ctx, open)
}
