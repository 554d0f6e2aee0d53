package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Agent identity (issue 18). The join token only enrols: POST /agent/v1/enroll records the
// SHA-256 of a credential the agent made up under its name (controller/state, agentid.go).
// Every other agent call is authenticated by that credential, and the request's "agent"
// must be the name it was enrolled under, so a holder of the join token cannot lease a job
// pinned to another agent, receive its password or report for it. API tokens (admin
// included) are not agent credentials. A controller with neither a join token nor API
// tokens (loopback only) checks nothing, as for the rest of its API.

type agentKey struct{}

// agentOpen reports the no-token mode: no identity is checked.
func (s *Server) agentOpen() bool { return s.agents.JoinToken == "" && !s.auth.Enabled() }

// agentAuth authenticates every /agent/v1 call: the join token on enroll, the agent's own
// credential on everything else.
func (s *Server) agentAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.agentOpen() {
			next.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == "/agent/v1/enroll" {
			if !s.agentRateOK(w, r) {
				return
			}
			if s.agents.JoinToken == "" {
				writeError(w, http.StatusUnauthorized, "this controller has no agents.join_token: agents cannot enrol")
				return
			}
			if !s.joinTokenOK(r) {
				writeError(w, http.StatusUnauthorized, "agent join token missing or wrong")
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		id, ok := s.lookupAgent(r)
		if !ok {
			if !s.agentRateOK(w, r) {
				return
			}
			writeError(w, http.StatusUnauthorized, "agent credential missing or unknown: an agent enrols with the join token (POST /agent/v1/enroll) and then presents its own credential; API tokens are not agent credentials")
			return
		}
		// Every agent call names its agent: it must be this credential's, whatever the
		// route (a route added later cannot forget the check). The handler reads the body
		// again from the copy.
		body, ok := s.readBody(w, r)
		if !ok {
			return
		}
		var named struct {
			Agent string `json:"agent"`
		}
		if json.Unmarshal(body, &named) == nil && named.Agent != "" && named.Agent != id.Name {
			writeError(w, http.StatusForbidden, fmt.Sprintf("this credential is agent %s's: it cannot act as %s", id.Name, named.Agent))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		if id.RotateRequested {
			w.Header().Set(proto.AgentRotateHeader, "1")
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), agentKey{}, id)))
	})
}

// followerCatchUp bounds how long a follower waits to apply an enrolment it does not know
// yet: an agent that enrolled through it (forwarded to the leader) calls it right after,
// often before the entry reached it.
const followerCatchUp = 2 * time.Second

// lookupAgent finds the identity of the request's credential.
func (s *Server) lookupAgent(r *http.Request) (state.AgentIdentity, bool) {
	cred := r.Header.Get(proto.AgentCredentialHeader)
	if cred == "" || s.agents.Identities == nil {
		return state.AgentIdentity{}, false
	}
	sum := credentialHash(cred)
	deadline := time.Now().Add(followerCatchUp)
	for {
		id, ok := s.agents.Identities.AgentByCredential(sum)
		if ok || s.node.IsLeader() || time.Now().After(deadline) {
			return id, ok
		}
		select {
		case <-r.Context().Done():
			return id, false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// agentRateOK paces enrolments and refused agent calls per client address like user
// requests (api.rate_limit): the agent API is otherwise not rate-limited (agents are paced
// by their slots), and these are the calls that guess join tokens and credentials.
func (s *Server) agentRateOK(w http.ResponseWriter, r *http.Request) bool {
	if s.limiter == nil || fromPeer(r) {
		return true
	}
	ok, wait := s.limiter.allow("agent-auth:"+clientIP(r), time.Now())
	if !ok {
		secs := int(wait.Seconds()) + 1
		w.Header().Set("Retry-After", fmt.Sprint(secs))
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("too many agent enrolments or refused agent calls from this address; retry in %d s", secs))
	}
	return ok
}

// joinTokenOK compares the join token in constant time.
func (s *Server) joinTokenOK(r *http.Request) bool {
	got := r.Header.Get(proto.AgentTokenHeader)
	if got == "" {
		got = strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	}
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(s.agents.JoinToken))
	return got != "" && subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

func credentialHash(cred string) string {
	sum := sha256.Sum256([]byte(cred))
	return hex.EncodeToString(sum[:])
}

// authenticatedAgent is the identity agentAuth proved (false in no-token mode).
func authenticatedAgent(r *http.Request) (state.AgentIdentity, bool) {
	id, ok := r.Context().Value(agentKey{}).(state.AgentIdentity)
	return id, ok
}

// actingAs refuses a request whose "agent" is not the authenticated agent (403).
func actingAs(w http.ResponseWriter, r *http.Request, agent string) bool {
	id, ok := authenticatedAgent(r)
	if !ok || id.Name == agent {
		return true
	}
	writeError(w, http.StatusForbidden, fmt.Sprintf("this credential is agent %s's: it cannot act as %s", id.Name, agent))
	return false
}

func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.EnrollRequest](s, w, r, false)
	if !ok {
		return
	}
	if s.agentOpen() {
		writeJSON(w, http.StatusOK, proto.EnrollResponse{Agent: req.Agent})
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		v, err := s.node.Apply(state.MustEncode(state.CmdAgentEnroll, state.AgentEnroll{Name: req.Agent, CredentialSHA256: req.CredentialSHA256, At: s.now()}))
		if err != nil {
			return 0, nil, err
		}
		id := v.(state.AgentIdentity)
		s.log.Info("agent enrolled", "agent", id.Name, "remote", clientIP(r))
		return http.StatusOK, proto.EnrollResponse{Agent: id.Name, EnrolledAt: id.EnrolledAt, CredentialRequired: true}, nil
	})
}

// handleRotate replaces the caller's credential with a new one it made up.
func (s *Server) handleRotate(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.EnrollRequest](s, w, r, false)
	if !ok || !actingAs(w, r, req.Agent) {
		return
	}
	id, authed := authenticatedAgent(r)
	if !authed {
		writeError(w, http.StatusBadRequest, "this controller checks no agent credentials (no join token, no API tokens): nothing to rotate")
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		v, err := s.node.Apply(state.MustEncode(state.CmdAgentRotate, state.AgentRotate{Name: id.Name, Old: id.CredentialSHA256, New: req.CredentialSHA256, At: s.now()}))
		if err != nil {
			return 0, nil, err
		}
		n := v.(state.AgentIdentity)
		s.log.Info("agent credential rotated", "agent", n.Name)
		return http.StatusOK, proto.EnrollResponse{Agent: n.Name, EnrolledAt: n.EnrolledAt, CredentialRequired: true}, nil
	})
}

func (s *Server) handleIdentities(w http.ResponseWriter, r *http.Request) {
	out := []proto.AgentIdentity{}
	if s.agents.Identities != nil {
		for _, id := range s.agents.Identities.AgentIdentities() {
			out = append(out, proto.AgentIdentity{Name: id.Name, EnrolledAt: id.EnrolledAt, RotatedAt: id.RotatedAt, RotateRequested: id.RotateRequested})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// handleForget (admin) removes an agent's identity: its credential stops working at once
// and the name may be enrolled again (a replaced host).
func (s *Server) handleForget(w http.ResponseWriter, r *http.Request) {
	name := mux.Vars(r)["name"]
	s.write(w, r, nil, func() (int, any, error) {
		if _, err := s.node.Apply(state.MustEncode(state.CmdAgentForget, state.AgentForget{Name: name})); err != nil {
			return 0, nil, err
		}
		s.log.Info("agent identity forgotten", "agent", name)
		return http.StatusOK, proto.MessageResponse{Message: fmt.Sprintf("agent %s forgotten: its credential no longer works and the name may enrol again", name)}, nil
	})
}

// handleRotateRequest (admin) asks an agent to replace its credential on its next call.
func (s *Server) handleRotateRequest(w http.ResponseWriter, r *http.Request) {
	name := mux.Vars(r)["name"]
	s.write(w, r, nil, func() (int, any, error) {
		if _, err := s.node.Apply(state.MustEncode(state.CmdAgentRotateRequest, state.AgentRotateRequest{Name: name})); err != nil {
			return 0, nil, err
		}
		return http.StatusOK, proto.MessageResponse{Message: fmt.Sprintf("agent %s will rotate its credential on its next call", name)}, nil
	})
}
