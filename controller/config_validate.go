package controller

import (
	"time"

	"github.com/hypersdk/hypersdk/controller/api"
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
}
