package api

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// handleCutover is POST /jobs/{id}/cutover: a warm job stops precopying after the round in
// progress and cuts over. 404 for an unknown job, 409 for one that is not warm or is past
// its cutover; asking again is 200 with nothing changed.
func (s *Server) handleCutover(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	if err := decodeStrict(body, &struct{}{}, true); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	id := mux.Vars(r)["id"]
	s.write(w, r, body, func() (int, any, error) {
		v, err := s.node.Apply(state.MustEncode(state.CmdCutover, state.CutoverRequest{JobID: id, At: s.now()}))
		if err != nil {
			return 0, nil, err
		}
		if res, _ := v.(state.CutoverResult); res.AlreadyRequested {
			return http.StatusOK, proto.CutoverResponse{JobID: id, AlreadyRequested: true,
				Message: "cutover already requested: the job cuts over after the round in progress"}, nil
		}
		return http.StatusOK, proto.CutoverResponse{JobID: id,
			Message: "cutover requested: the job cuts over after the round in progress"}, nil
	})
}

// handleWarm is the agents' warm report (POST /agent/v1/warm).
func (s *Server) handleWarm(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.WarmReport](s, w, r, false)
	if !ok {
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		if err := s.agents.Leases.Warm(req); err != nil {
			return 0, nil, leaseErr(err)
		}
		return http.StatusOK, proto.ReportResponse{Message: "warm state recorded"}, nil
	})
}
