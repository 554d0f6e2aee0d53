package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Submit you can trust (issue 17): a list of jobs is one raft entry, all or nothing, with
// every bad document named; a target_agent no agent ever had is a 400 naming the known
// ones; a second active job for one source VM is a 409 unless options.allow_duplicate.

// MaxBatchJobs bounds one POST /jobs/submit with a list.
const MaxBatchJobs = 1000

// checkSubmitted is what a submitted definition must pass beyond its own Validate.
func (s *Server) checkSubmitted(def *proto.JobDefinition) error {
	if def.ID != "" && (!jobIDPattern.MatchString(def.ID) || def.ID == "submit" || def.ID == "query" || def.ID == "cancel" || def.ID == "validate") {
		return errors.New("id must be 1-128 characters of letters, digits, '.', '_' or '-'")
	}
	if !def.CreatedAt.IsZero() {
		return errors.New("created_at is set by the controller")
	}
	if def.SourceHost != nil {
		return errors.New("source_host is set by the controller (pre-flight validation)")
	}
	if t := def.Options.TargetAgent; t != "" && s.agents.Fleet != nil {
		known := s.knownAgents()
		if !slices.Contains(known, t) && !s.st.AgentEverSeen(t) {
			return fmt.Errorf("options.target_agent: no agent %q has ever been in the fleet (known agents: %s)", t, listOrNone(known))
		}
	}
	return nil
}

// checkDuplicates refuses a job whose source VM has a pending or running job, or a second
// one in the same batch (on the leader, just before the apply: two submits racing past
// it both land, which the check narrows, not closes). Every conflict is named.
func (s *Server) checkDuplicates(defs []proto.JobDefinition) error {
	var msgs []string
	inBatch := map[string]int{}
	for i, d := range defs {
		if d.Options.AllowDuplicate {
			continue
		}
		key := d.VCenterKey() + "\x00" + d.VMPath
		where := ""
		if len(defs) > 1 {
			where = fmt.Sprintf("document %d: ", i+1)
		}
		if j, ok := s.st.ActiveJobForVM(d.VMPath, d.VCenterKey()); ok {
			msgs = append(msgs, fmt.Sprintf("%ssource VM %s already has job %s (%s)", where, d.VMPath, j.Definition.ID, j.Status))
		} else if k, ok := inBatch[key]; ok {
			msgs = append(msgs, fmt.Sprintf("%ssource VM %s is also document %d", where, d.VMPath, k+1))
		}
		inBatch[key] = i
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%s; set options.allow_duplicate to migrate it again: %w", strings.Join(msgs, "; "), state.ErrExists)
}

// submitBatchIfArray answers POST /jobs/submit whose body is a JSON list of jobs (true),
// or leaves a single job to handleSubmit (false, the body untouched).
func (s *Server) submitBatchIfArray(w http.ResponseWriter, r *http.Request) bool {
	body, ok := s.readBody(w, r)
	if !ok {
		return true
	}
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '[' {
		r.Body = readerOf(body)
		return false
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		writeError(w, http.StatusBadRequest, "a list of jobs: "+proto.DecodeStrict(body, &raws, false).Error())
		return true
	}
	if len(raws) == 0 || len(raws) > MaxBatchJobs {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("a list of jobs holds 1 to %d jobs, not %d", MaxBatchJobs, len(raws)))
		return true
	}
	defs := make([]proto.JobDefinition, len(raws))
	var bad []string
	for i, raw := range raws {
		err := proto.DecodeStrict(raw, &defs[i], false)
		if err == nil {
			err = defs[i].Validate()
		}
		if err == nil {
			err = s.checkSubmitted(&defs[i])
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("document %d: %v", i+1, err))
		}
	}
	if len(bad) > 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%d of %d jobs are invalid, none was submitted: %s", len(bad), len(defs), strings.Join(bad, "; ")))
		return true
	}
	s.write(w, r, body, func() (int, any, error) {
		if err := s.checkDuplicates(defs); err != nil {
			return 0, nil, err
		}
		resp := proto.SubmitBatchResponse{Jobs: make([]proto.SubmitResponse, len(defs))}
		stamped := slices.Clone(defs)
		for i := range stamped {
			d := &stamped[i]
			if d.ID == "" {
				d.ID = s.newID()
			}
			d.CreatedAt = s.now()
			if d.Options.MaxAttempts == 0 {
				d.Options.MaxAttempts = s.cfg.MaxAttempts
			}
			resp.Jobs[i] = proto.SubmitResponse{JobID: d.ID, Message: "job submitted successfully"}
		}
		concerns, code, refusal := s.preflightBatch(r.Context(), stamped)
		if refusal != nil {
			return code, refusal, nil
		}
		for i := range stamped {
			if err := s.sealPassword(&stamped[i]); err != nil {
				return 0, nil, err
			}
		}
		_, err := s.node.Apply(state.MustEncode(state.CmdSubmitBatch, state.SubmitBatch{Definitions: stamped, Concerns: concerns}))
		if errors.Is(err, cluster.ErrLeadershipLost) {
			return 0, nil, fmt.Errorf("%w; the jobs may have been stored: resubmit the list with the ids of this answer's jobs set to be sure", err)
		}
		if err != nil {
			return 0, nil, err
		}
		s.metrics.JobsSubmitted.Add(float64(len(stamped)))
		resp.Message = fmt.Sprintf("%d jobs submitted in one entry", len(stamped))
		return http.StatusCreated, resp, nil
	})
	return true
}

// readerOf gives a body already read back to the next reader of the request.
func readerOf(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }
