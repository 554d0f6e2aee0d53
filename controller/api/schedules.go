package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// ScheduleRunner runs a schedule now (the scheduler; only called on the leader).
type ScheduleRunner interface {
	Trigger(ctx context.Context, id string) (state.ScheduleRunResult, error)
}

// SchedulesConfig wires the schedule routes.
type SchedulesConfig struct {
	// Enabled is scheduler.enabled; when false every /schedules route answers 503.
	Enabled bool
	Runner  ScheduleRunner
}

type scheduleAPI struct {
	s   *Server
	cfg SchedulesConfig
}

// SetSchedules adds the /schedules routes. Call once, before serving.
func (s *Server) SetSchedules(cfg SchedulesConfig) {
	a := &scheduleAPI{s: s, cfg: cfg}
	r := s.router
	// /schedules/stats before /schedules/{id}: gorilla matches in order.
	r.HandleFunc("/schedules/stats", a.enabled(a.handleStats)).Methods(http.MethodGet)
	r.HandleFunc("/schedules", a.enabled(a.handleList)).Methods(http.MethodGet)
	r.HandleFunc("/schedules", a.enabled(a.handleCreate)).Methods(http.MethodPost)
	r.HandleFunc("/schedules/{id}", a.enabled(a.handleGet)).Methods(http.MethodGet)
	r.HandleFunc("/schedules/{id}", a.enabled(a.handleUpdate)).Methods(http.MethodPut)
	r.HandleFunc("/schedules/{id}", a.enabled(a.handleDelete)).Methods(http.MethodDelete)
	r.HandleFunc("/schedules/{id}/enable", a.enabled(a.handleEnable(true))).Methods(http.MethodPost)
	r.HandleFunc("/schedules/{id}/disable", a.enabled(a.handleEnable(false))).Methods(http.MethodPost)
	r.HandleFunc("/schedules/{id}/trigger", a.enabled(a.handleTrigger)).Methods(http.MethodPost)
}

func (a *scheduleAPI) enabled(h http.HandlerFunc) http.HandlerFunc {
	if a.cfg.Enabled && a.cfg.Runner != nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusServiceUnavailable, "scheduler is not enabled on this controller (scheduler.enabled: false in its config)")
	}
}

func (a *scheduleAPI) handleList(w http.ResponseWriter, r *http.Request) {
	list := a.s.st.Schedules()
	out := proto.ScheduleListResponse{Schedules: make([]proto.Schedule, 0, len(list)), Total: len(list), Timestamp: a.s.now()}
	for _, sc := range list {
		out.Schedules = append(out.Schedules, sc.Redacted())
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *scheduleAPI) handleStats(w http.ResponseWriter, r *http.Request) {
	st := a.s.st.ScheduleStats()
	st.Timestamp = a.s.now()
	writeJSON(w, http.StatusOK, st)
}

func (a *scheduleAPI) handleGet(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	sc, ok := a.s.st.Schedule(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("schedule %s not found", id))
		return
	}
	writeJSON(w, http.StatusOK, sc.Redacted())
}

// checkFires refuses an expression that never fires (e.g. "0 0 30 2 *"): it parses, but a
// schedule that never runs is a mistake the operator wants to hear about now.
func (a *scheduleAPI) checkFires(expr string) error {
	sched, err := proto.ParseCron(expr)
	if err != nil {
		return err
	}
	if sched.Next(a.s.now()).IsZero() {
		return fmt.Errorf("%w: schedule %q never fires", proto.ErrInvalid, expr)
	}
	return nil
}

func (a *scheduleAPI) handleCreate(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.ScheduleRequest](a.s, w, r, false)
	if !ok {
		return
	}
	if err := a.checkFires(req.Schedule); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	a.s.write(w, r, body, func() (int, any, error) {
		if req.ID == "" {
			req.ID = a.s.newID()
		}
		if err := a.s.sealPassword(req.JobTemplate); err != nil {
			return 0, nil, err
		}
		cmd := state.ScheduleUpsert{
			ID: req.ID, Create: true, Name: &req.Name, Description: &req.Description, Schedule: &req.Schedule,
			Enabled: req.Enabled, JobTemplate: req.JobTemplate, At: a.s.now(),
		}
		v, err := a.s.node.Apply(state.MustEncode(state.CmdScheduleUpsert, cmd))
		if err != nil {
			return 0, nil, err
		}
		sc := v.(*proto.Schedule).Redacted()
		return http.StatusCreated, proto.ScheduleResponse{Message: "schedule created successfully", Schedule: &sc}, nil
	})
}

func (a *scheduleAPI) handleUpdate(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	body, ok := a.s.readBody(w, r)
	if !ok {
		return
	}
	var u proto.ScheduleUpdate
	if err := decodeStrict(body, &u, false); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if u.ID != "" && u.ID != id {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("id %q in the body differs from the URL's %q (ids cannot change)", u.ID, id))
		return
	}
	if err := u.Validate(); err != nil {
		writeError(w, invalidStatus(err), err.Error())
		return
	}
	if u.Schedule != nil {
		if err := a.checkFires(*u.Schedule); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	a.s.write(w, r, body, func() (int, any, error) {
		// The mask means "keep the stored password": apply must see it as sent, not sealed.
		if u.JobTemplate != nil && u.JobTemplate.Source.Password != proto.RedactedPassword {
			if err := a.s.sealPassword(u.JobTemplate); err != nil {
				return 0, nil, err
			}
		}
		cmd := state.ScheduleUpsert{ID: id, Name: u.Name, Description: u.Description, Schedule: u.Schedule,
			Enabled: u.Enabled, JobTemplate: u.JobTemplate, MaskKeepsSource: true, At: a.s.now()}
		v, err := a.s.node.Apply(state.MustEncode(state.CmdScheduleUpsert, cmd))
		if err != nil {
			return 0, nil, err
		}
		sc := v.(*proto.Schedule).Redacted()
		return http.StatusOK, proto.ScheduleResponse{Message: "schedule updated successfully", Schedule: &sc}, nil
	})
}

func (a *scheduleAPI) handleDelete(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	a.s.write(w, r, nil, func() (int, any, error) {
		if _, err := a.s.node.Apply(state.MustEncode(state.CmdScheduleDelete, state.ScheduleDelete{ID: id})); err != nil {
			return 0, nil, err
		}
		return http.StatusOK, proto.MessageResponse{Message: "schedule deleted successfully"}, nil
	})
}

func (a *scheduleAPI) handleEnable(on bool) http.HandlerFunc {
	msg := "schedule disabled successfully"
	if on {
		msg = "schedule enabled successfully"
	}
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)["id"]
		a.s.write(w, r, nil, func() (int, any, error) {
			cmd := state.ScheduleUpsert{ID: id, Enabled: &on, At: a.s.now()}
			if _, err := a.s.node.Apply(state.MustEncode(state.CmdScheduleUpsert, cmd)); err != nil {
				return 0, nil, err
			}
			return http.StatusOK, proto.MessageResponse{Message: msg}, nil
		})
	}
}

func (a *scheduleAPI) handleTrigger(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	a.s.write(w, r, nil, func() (int, any, error) {
		res, err := a.cfg.Runner.Trigger(r.Context(), id)
		if err != nil {
			return 0, nil, err
		}
		if res.Error != "" {
			// The run is recorded (run_count, failed_runs, last_error) but created no job:
			// say so rather than "triggered successfully".
			return http.StatusBadGateway, proto.ErrorResponse{Error: fmt.Sprintf("schedule %s run %d failed: %s", id, res.Run, res.Error)}, nil
		}
		return http.StatusOK, proto.ScheduleTriggerResponse{Message: "schedule triggered successfully", ScheduleID: id, Run: res.Run, JobIDs: res.JobIDs}, nil
	})
}
