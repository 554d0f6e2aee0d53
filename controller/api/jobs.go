package api

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

func newUUID() string { return uuid.NewString() }

// jobIDPattern: ids chosen by clients (for idempotent retries) must be safe in URLs and logs.
var jobIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Status())
}

// Status is the GET /status document (also the WebSocket "status" message).
func (s *Server) Status() proto.StatusResponse {
	c := s.st.Counts()
	total := 0
	for _, n := range c {
		total += n
	}
	resp := proto.StatusResponse{
		TotalJobs: total, PendingJobs: c[proto.StatusPending], RunningJobs: c[proto.StatusRunning],
		CompletedJobs: c[proto.StatusCompleted], FailedJobs: c[proto.StatusFailed], CancelledJobs: c[proto.StatusCancelled],
		NodeID: s.node.ID(), RaftRole: strings.ToLower(s.node.State()),
		UptimeS: int64(s.now().Sub(s.started).Seconds()),
	}
	resp.Version = versionString()
	resp.Leader, _ = s.node.Leader()
	resp.WorkerCount, resp.ActiveWorkers = s.slots()
	return resp
}

// slots returns the fleet's job slots; without a fleet the busy count comes from leases.
func (s *Server) slots() (total, busy int) {
	if s.fleet != nil {
		return s.fleet.Slots()
	}
	for _, n := range s.st.RunningByAgent() {
		busy += n
	}
	return 0, busy
}

// ActiveWorkers implements metrics.Source.
func (s *Server) ActiveWorkers() int { _, b := s.slots(); return b }

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request) {
	if s.submitBatchIfArray(w, r) {
		return
	}
	body, def, ok := readRequest[proto.JobDefinition](s, w, r, false)
	if !ok {
		return
	}
	if err := s.checkSubmitted(&def); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		if err := s.checkDuplicates([]proto.JobDefinition{def}); err != nil {
			return 0, nil, err
		}
		// The leader stamps id, time and defaults so apply stays deterministic.
		if def.ID == "" {
			def.ID = s.newID()
		}
		def.CreatedAt = s.now()
		if def.Options.MaxAttempts == 0 {
			def.Options.MaxAttempts = s.cfg.MaxAttempts
		}
		concerns, code, refusal := s.preflight(r.Context(), &def)
		if refusal != nil {
			return code, refusal, nil
		}
		if err := s.sealPassword(&def); err != nil {
			return 0, nil, err
		}
		_, err := s.node.Apply(state.MustEncode(state.CmdSubmitJob, state.SubmitJob{Definition: def, Concerns: concerns}))
		if errors.Is(err, cluster.ErrLeadershipLost) {
			return 0, nil, fmt.Errorf("%w; the job may have been stored: resubmit with \"id\": %q to be sure (409 then means it is stored)", err, def.ID)
		}
		if err != nil {
			return 0, nil, err
		}
		s.metrics.JobsSubmitted.Inc()
		return http.StatusCreated, proto.SubmitResponse{JobID: def.ID, Message: "job submitted successfully"}, nil
	})
}

func (s *Server) handleQuery(w http.ResponseWriter, r *http.Request) {
	_, q, ok := readRequest[proto.QueryRequest](s, w, r, true)
	if !ok {
		return
	}
	res, err := s.st.Query(q)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	out := proto.QueryResponse{Jobs: make([]proto.Job, 0, len(res.Jobs)), Total: res.Total, NextCursor: res.NextCursor}
	redact := s.redactor()
	for _, j := range res.Jobs {
		out.Jobs = append(out.Jobs, redact(j))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGetJob(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	if id == "submit" || id == "query" || id == "cancel" || id == "validate" {
		// GET /jobs/submit would otherwise read as "the job named submit".
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path))
		return
	}
	j, ok := s.st.Job(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("job %s not found", id))
		return
	}
	writeJSON(w, http.StatusOK, s.redactor()(j))
}

func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	body, c, ok := readRequest[proto.CancelRequest](s, w, r, false)
	if !ok {
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		v, err := s.node.Apply(state.MustEncode(state.CmdCancelJobs, state.CancelJobs{JobIDs: c.JobIDs, Status: c.Status, At: s.now()}))
		if err != nil {
			return 0, nil, err
		}
		res := v.(state.CancelResult)
		if len(c.JobIDs) > 0 && len(res.NotFound) == len(dedupe(c.JobIDs)) {
			return 0, nil, fmt.Errorf("job %s: %w", strings.Join(res.NotFound, ", "), state.ErrNotFound)
		}
		return http.StatusOK, proto.CancelResponse{
			Message: "jobs cancelled successfully", Count: len(res.Cancelled),
			NotFound: res.NotFound, Skipped: res.Skipped,
		}, nil
	})
}

func dedupe(ids []string) map[string]bool {
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}
