package api

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Cordon, drain and uncordon an agent (POST /agents/{name}/cordon|drain|uncordon): a raft
// command, so every controller and the next leader keep the agent out of work.

// cordonOf is the agent's cordon as the API shows it ("" when it takes work).
func (s *Server) cordonOf(agent string) string {
	c, ok := s.st.AgentControlOf(agent)
	switch {
	case !ok:
		return ""
	case c.Action == state.AgentDrain:
		return "draining"
	}
	return "cordoned"
}

func (s *Server) handleAgentControl(w http.ResponseWriter, r *http.Request) {
	name, action := mux.Vars(r)["name"], mux.Vars(r)["action"]
	body, req, ok := readRequest[proto.AgentControlRequest](s, w, r, true)
	if !ok {
		return
	}
	// Only an agent this fleet knows: a typo must not cordon a host that does not exist
	// while the real one keeps taking work. Uncordon accepts any agent with a cordon.
	if known := s.knownAgents(); !slices.Contains(known, name) && !s.st.AgentEverSeen(name) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("agent %s is not in the fleet (known agents: %s)", name, listOrNone(known)))
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		c := state.AgentControl{Agent: name, Action: action, Reason: req.Reason, At: s.now()}
		if _, err := s.node.Apply(state.MustEncode(state.CmdAgentControl, c)); err != nil {
			return 0, nil, err
		}
		resp := proto.AgentControlResponse{Agent: name, Cordon: s.cordonOf(name)}
		switch action {
		case state.AgentCordon:
			resp.Message = fmt.Sprintf("agent %s cordoned: it takes no new jobs; its running jobs finish", name)
		case state.AgentDrain:
			resp.Message = fmt.Sprintf("agent %s draining: it takes no new jobs; its running jobs not yet defining a domain are handed back to run elsewhere", name)
		default:
			resp.Message = fmt.Sprintf("agent %s uncordoned: it takes jobs again", name)
		}
		return http.StatusOK, resp, nil
	})
}

// knownAgents are the agents in the gossip view, by name.
func (s *Server) knownAgents() []string {
	var out []string
	if s.agents.Fleet != nil {
		for _, a := range s.agents.Fleet.List() {
			out = append(out, a.Name)
		}
	}
	slices.Sort(out)
	return out
}

func listOrNone(xs []string) string {
	if len(xs) == 0 {
		return "none"
	}
	return strings.Join(xs, ", ")
}
