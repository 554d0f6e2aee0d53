package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// Pre-flight validation (controller/validate): POST /jobs/validate answers what the checks
// find without storing anything, and submit runs them before a job is stored.

// Validator runs the checks of controller/validate.
type Validator interface {
	Validate(ctx context.Context, defs []proto.JobDefinition) ([]proto.ValidationResult, error)
}

// ValidatorConfig wires validation into the API.
type ValidatorConfig struct {
	Validator Validator
	// OnSubmit runs the checks at submit (unless the job sets options.skip_validation).
	OnSubmit bool
}

// SetValidator adds POST /jobs/validate and, with OnSubmit, the checks at submit.
func (s *Server) SetValidator(cfg ValidatorConfig) {
	s.validation = cfg
	s.router.HandleFunc("/jobs/validate", s.handleValidate).Methods(http.MethodPost)
}

// ConnectVCenter logs in to a job's vCenter as VM discovery does (the validator's
// connector).
func (s *Server) ConnectVCenter(ctx context.Context, src proto.Source) (*vsphere.Client, error) {
	return s.connectVC(ctx, src)
}

// handleValidate is answered by the node that receives it: the vCenter and the gossip view
// of the fleet are as near from any controller, and nothing is written.
func (s *Server) handleValidate(w http.ResponseWriter, r *http.Request) {
	_, req, ok := readRequest[proto.ValidateRequest](s, w, r, false)
	if !ok {
		return
	}
	res, err := s.validation.Validator.Validate(r.Context(), req.Jobs)
	if err != nil {
		s.vcError(w, err)
		return
	}
	if req.Batch {
		writeJSON(w, http.StatusOK, res)
		return
	}
	writeJSON(w, http.StatusOK, res[0])
}

// preflightBatch is preflight for a list submitted as one entry: one validation of every
// job (one vCenter read, one fact fetch per agent); any critical concern refuses the whole
// list (all or nothing, like the list itself), naming every job that has one. It returns
// the concerns by job id (the ids are stamped already) and stamps each source host.
func (s *Server) preflightBatch(ctx context.Context, defs []proto.JobDefinition) (map[string][]proto.Concern, int, any) {
	var check []int
	for i := range defs {
		if !defs[i].Options.SkipValidation {
			check = append(check, i)
		}
	}
	if !s.validation.OnSubmit || s.validation.Validator == nil || len(check) == 0 {
		return nil, 0, nil
	}
	sub := make([]proto.JobDefinition, len(check))
	for k, i := range check {
		sub[k] = defs[i]
	}
	res, err := s.validation.Validator.Validate(ctx, sub)
	if err != nil {
		code := vcStatus(err)
		if code == http.StatusGatewayTimeout {
			code = http.StatusBadRequest
		}
		return nil, code, proto.ErrorResponse{Error: fmt.Sprintf("pre-flight validation: %v (set options.skip_validation to submit without it)", err)}
	}
	var bad []string
	for k, r := range res {
		if r.Critical() {
			bad = append(bad, fmt.Sprintf("document %d: %s", check[k]+1, r.Criticals()))
		}
	}
	if len(bad) > 0 {
		return nil, http.StatusBadRequest, proto.ValidationFailed{
			Error:   "pre-flight validation found critical concerns, none was stored: " + strings.Join(bad, "; "),
			Results: res,
		}
	}
	concerns := map[string][]proto.Concern{}
	for k, i := range check {
		defs[i].SourceHost = res[k].SourceHost
		if len(res[k].Concerns) > 0 {
			concerns[defs[i].ID] = res[k].Concerns
		}
	}
	return concerns, 0, nil
}

// preflight runs the checks for a submit. It returns the concerns to store with the job
// (and stamps the VM's source host into def, for the per-host limit), or the answer to
// send instead (4xx: a critical concern, or a vCenter the checks could
// not use). The definition's password is still in clear.
func (s *Server) preflight(ctx context.Context, def *proto.JobDefinition) ([]proto.Concern, int, any) {
	if !s.validation.OnSubmit || s.validation.Validator == nil || def.Options.SkipValidation {
		return nil, 0, nil
	}
	res, err := s.validation.Validator.Validate(ctx, []proto.JobDefinition{*def})
	if err != nil {
		code := vcStatus(err)
		if code == http.StatusGatewayTimeout {
			code = http.StatusBadRequest
		}
		msg := fmt.Sprintf("pre-flight validation: %v (set options.skip_validation to submit without it)", err)
		if errors.Is(err, context.Canceled) {
			msg = "pre-flight validation: request cancelled"
		}
		return nil, code, proto.ErrorResponse{Error: msg}
	}
	if res[0].Critical() {
		return nil, http.StatusBadRequest, proto.ValidationFailed{
			Error:   "pre-flight validation found critical concerns, nothing was stored: " + res[0].Criticals(),
			Results: res,
		}
	}
	def.SourceHost = res[0].SourceHost
	return res[0].Concerns, 0, nil
}
