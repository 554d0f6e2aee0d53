package proto

import (
	"encoding/json"
	"strings"
)

// Pre-flight validation (POST /jobs/validate, and submit unless options.skip_validation):
// what the controller found out about a job before anything is copied.

// ConcernCategory is how bad a concern is: a critical one stops the job (submit answers
// 400), a warning goes into the job's warnings, info only informs.
type ConcernCategory string

const (
	ConcernCritical ConcernCategory = "critical"
	ConcernWarning  ConcernCategory = "warning"
	ConcernInfo     ConcernCategory = "info"
)

// Concern is one finding of one rule: the rule's id (stable, for scripts), how bad it is,
// what was found and what the operator can do about it.
type Concern struct {
	ID       string          `json:"id"`
	Category ConcernCategory `json:"category"`
	Message  string          `json:"message"`
	Fix      string          `json:"fix,omitempty"`
}

// ValidationResult is the validation of one job definition. Agent is the agent the checks
// of the fleet were made against: the job's target, or the agent placement would pick
// among those that pass them ("" when no agent was considered).
type ValidationResult struct {
	VMPath   string    `json:"vm_path"`
	Concerns []Concern `json:"concerns"`
	Agent    string    `json:"agent,omitempty"`
	// SourceHost is the ESXi host the VM runs on (when the VM was found).
	SourceHost *SourceHost `json:"source_host,omitempty"`
}

// Critical reports whether any concern is critical.
func (r ValidationResult) Critical() bool {
	for _, c := range r.Concerns {
		if c.Category == ConcernCritical {
			return true
		}
	}
	return false
}

// Warnings are the messages of the warning concerns, as a job's warnings show them.
func (r ValidationResult) Warnings() []string {
	var w []string
	for _, c := range r.Concerns {
		if c.Category == ConcernWarning {
			w = append(w, "validation: "+c.Message)
		}
	}
	return w
}

// Criticals joins the critical concerns' messages into one line (error messages).
func (r ValidationResult) Criticals() string {
	var m []string
	for _, c := range r.Concerns {
		if c.Category == ConcernCritical {
			m = append(m, c.Message)
		}
	}
	return strings.Join(m, "; ")
}

// MaxValidateBatch bounds the definitions of one POST /jobs/validate.
const MaxValidateBatch = 1000

// ValidateRequest is the body of POST /jobs/validate: one job definition (the submit
// body) or a JSON array of them. Batch says which it was, so the answer has the same shape.
type ValidateRequest struct {
	Jobs  []JobDefinition
	Batch bool
}

// UnmarshalJSON accepts an object or an array of objects, strictly (unknown fields are
// errors, as on submit).
func (v *ValidateRequest) UnmarshalJSON(b []byte) error {
	t := strings.TrimLeft(string(b), " \t\r\n")
	if strings.HasPrefix(t, "[") {
		var raw []json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return err
		}
		v.Batch = true
		v.Jobs = make([]JobDefinition, len(raw))
		for i, r := range raw {
			if err := DecodeStrict(r, &v.Jobs[i], false); err != nil {
				return invalid("job %d: %v", i+1, err)
			}
		}
		return nil
	}
	v.Jobs = make([]JobDefinition, 1)
	return DecodeStrict(b, &v.Jobs[0], false)
}

// Validate checks every definition as submit would.
func (v *ValidateRequest) Validate() error {
	if len(v.Jobs) == 0 {
		return invalid("no job definition to validate")
	}
	if len(v.Jobs) > MaxValidateBatch {
		return invalid("at most %d job definitions per request", MaxValidateBatch)
	}
	for i := range v.Jobs {
		if err := v.Jobs[i].Validate(); err != nil {
			if v.Batch {
				return invalid("job %d (%s): %v", i+1, v.Jobs[i].VMPath, strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
			}
			return err
		}
	}
	return nil
}

// ValidationFailed is the 400 answer of a submit whose checks found a critical concern:
// nothing was stored.
type ValidationFailed struct {
	Error   string             `json:"error"`
	Results []ValidationResult `json:"results"`
}
