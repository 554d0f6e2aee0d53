package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/lease"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Leases is the leader's lease manager as the agent API uses it.
type Leases interface {
	Lease(ctx context.Context, req proto.LeaseRequest) (*proto.Lease, error)
	Heartbeat(req proto.HeartbeatRequest) (proto.HeartbeatResponse, error)
	Progress(req proto.ProgressRequest) (proto.ReportResponse, error)
	Complete(req proto.CompleteRequest) error
	Fail(req proto.FailRequest) error
	// Commit is the commit point: the attempt may define its domain once committed.
	Commit(req proto.CommitRequest) (proto.CommitResponse, error)
	Warm(req proto.WarmReport) error
	WarmDiscard(agent string, copies []string) []string
	// PendingReasons explains pending jobs from this node's view as of now (one per
	// request: it costs O(agents) once, O(1) per job).
	PendingReasons() func(*proto.Job) string
}

// AgentFleet is the gossip view of agents.
type AgentFleet interface {
	Fleet
	List() []proto.AgentInfo
	Get(name string) (proto.AgentInfo, bool)
}

// Identities are the enrolled agents (controller/state, agentid.go).
type Identities interface {
	AgentByCredential(sum string) (state.AgentIdentity, bool)
	AgentIdentities() []state.AgentIdentity
}

// AgentsConfig wires the agent side of the API.
type AgentsConfig struct {
	Leases Leases
	Fleet  AgentFleet // may be nil (no gossip)
	// JoinToken, when set, lets agents enrol (POST /agent/v1/enroll); every other agent
	// call is authenticated by the agent's own credential (Identities).
	JoinToken  string
	Identities Identities
}

// SetAgents adds the agent API (/agent/v1/...) and the fleet view (/agents).
func (s *Server) SetAgents(cfg AgentsConfig) {
	s.agents = cfg
	if cfg.Fleet != nil {
		s.fleet = cfg.Fleet
	}
	r := s.router
	r.HandleFunc("/agents", s.handleAgents).Methods(http.MethodGet)
	r.HandleFunc("/agents/identities", s.handleIdentities).Methods(http.MethodGet)
	r.HandleFunc("/agents/{name}", s.handleAgent).Methods(http.MethodGet)
	r.HandleFunc("/agents/{name}/forget", s.handleForget).Methods(http.MethodPost)
	r.HandleFunc("/agents/{name}/rotate", s.handleRotateRequest).Methods(http.MethodPost)
	r.HandleFunc("/agents/{name}/{action:cordon|uncordon|drain}", s.handleAgentControl).Methods(http.MethodPost)
	a := r.PathPrefix("/agent/v1").Subrouter()
	a.Use(s.agentAuth)
	a.HandleFunc("/enroll", s.handleEnroll).Methods(http.MethodPost)
	a.HandleFunc("/rotate", s.handleRotate).Methods(http.MethodPost)
	a.HandleFunc("/lease", s.handleLease).Methods(http.MethodPost)
	a.HandleFunc("/heartbeat", s.handleHeartbeat).Methods(http.MethodPost)
	a.HandleFunc("/progress", s.handleProgress).Methods(http.MethodPost)
	a.HandleFunc("/complete", s.handleComplete).Methods(http.MethodPost)
	a.HandleFunc("/fail", s.handleFail).Methods(http.MethodPost)
	a.HandleFunc("/commit", s.handleCommit).Methods(http.MethodPost)
	a.HandleFunc("/warm", s.handleWarm).Methods(http.MethodPost)
}

func (s *Server) handleAgents(w http.ResponseWriter, r *http.Request) {
	resp := proto.AgentsResponse{Agents: []proto.AgentInfo{}}
	if s.agents.Fleet != nil {
		resp.Agents = append(resp.Agents, s.agents.Fleet.List()...)
	}
	for i := range resp.Agents {
		resp.Agents[i].Cordon = s.cordonOf(resp.Agents[i].Name)
	}
	resp.Total = len(resp.Agents)
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleAgent(w http.ResponseWriter, r *http.Request) {
	name := mux.Vars(r)["name"]
	if s.agents.Fleet != nil {
		if a, ok := s.agents.Fleet.Get(name); ok {
			a.Cordon = s.cordonOf(name)
			writeJSON(w, http.StatusOK, a)
			return
		}
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("agent %s not found", name))
}

// leaseErr maps the lease manager's "not running here" to the cluster's not-leader so
// write() looks for the leader again (a new leader starts its manager after a barrier).
func leaseErr(err error) error {
	if errors.Is(err, lease.ErrNotLeader) {
		return fmt.Errorf("%w: %v", cluster.ErrNotLeader, err)
	}
	return err
}

func (s *Server) handleLease(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.LeaseRequest](s, w, r, false)
	if !ok || !actingAs(w, r, req.Agent) {
		return
	}
	// The long-poll outlives the server's WriteTimeout: up to 25 s of waiting (more here
	// when forwarded) plus the answer.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(2 * time.Minute))
	s.write(w, r, body, func() (int, any, error) {
		l, err := s.agents.Leases.Lease(r.Context(), req)
		if err != nil {
			if r.Context().Err() != nil {
				return 0, nil, fmt.Errorf("%w: client went away", cluster.ErrShutdown)
			}
			return 0, nil, leaseErr(err)
		}
		// Answered after the grant: a copy this lease resumes is this agent's again.
		return http.StatusOK, proto.LeaseResponse{Lease: l, Discard: s.agents.Leases.WarmDiscard(req.Agent, req.WarmCopies)}, nil
	})
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.HeartbeatRequest](s, w, r, false)
	if !ok || !actingAs(w, r, req.Agent) {
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		resp, err := s.agents.Leases.Heartbeat(req)
		return http.StatusOK, resp, leaseErr(err)
	})
}

func (s *Server) handleProgress(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.ProgressRequest](s, w, r, false)
	if !ok || !actingAs(w, r, req.Agent) {
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		resp, err := s.agents.Leases.Progress(req)
		return http.StatusOK, resp, leaseErr(err)
	})
}

func (s *Server) handleComplete(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.CompleteRequest](s, w, r, false)
	if !ok || !actingAs(w, r, req.Agent) {
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		if err := s.agents.Leases.Complete(req); err != nil {
			return 0, nil, leaseErr(err)
		}
		return http.StatusOK, proto.ReportResponse{Message: "job completed"}, nil
	})
}

func (s *Server) handleFail(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.FailRequest](s, w, r, false)
	if !ok || !actingAs(w, r, req.Agent) {
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		if err := s.agents.Leases.Fail(req); err != nil {
			return 0, nil, leaseErr(err)
		}
		return http.StatusOK, proto.ReportResponse{Message: "failure recorded"}, nil
	})
}

// handleCommit is the commit point (DESIGN.md "Leases" 8): 200 with committed (define
// now) or cancel; 409 when the lease moved on (the agent deletes its disks, defines nothing).
func (s *Server) handleCommit(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.CommitRequest](s, w, r, false)
	if !ok || !actingAs(w, r, req.Agent) {
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		resp, err := s.agents.Leases.Commit(req)
		if err != nil {
			return 0, nil, leaseErr(err)
		}
		return http.StatusOK, resp, nil
	})
}

// redactor returns the function that turns stored jobs into API answers: the password
// masked, and a pending job's pending_reason from this node's view, built on first use
// so a page without pending jobs costs nothing. The reason is worked out on the stored
// job: the masked copy no longer holds the sealed password it checks.
func (s *Server) redactor() func(*proto.Job) proto.Job {
	var explain func(*proto.Job) string
	return func(j *proto.Job) proto.Job {
		out := j.Redacted()
		if j.Status == proto.StatusPending && s.agents.Leases != nil {
			if explain == nil {
				explain = s.agents.Leases.PendingReasons()
			}
			out.PendingReason = explain(j)
		}
		return out
	}
}
