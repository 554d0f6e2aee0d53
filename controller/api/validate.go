package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

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
