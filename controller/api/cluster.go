package api

import (
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/shared/version"
)

func versionString() string { return version.Version }

// ClusterLeader names the leader in GET /cluster.
type ClusterLeader struct {
	ID      string `json:"id"`
	APIAddr string `json:"api_addr"`
}

// ClusterNode is one controller in GET /cluster.
type ClusterNode struct {
	ID       string `json:"id"`
	APIAddr  string `json:"api_addr"`
	RaftAddr string `json:"raft_addr"`
	State    string `json:"state"`
	Voter    bool   `json:"voter"`
}

// ClusterResponse answers GET /cluster.
type ClusterResponse struct {
	Leader       ClusterLeader `json:"leader"`
	Nodes        []ClusterNode `json:"nodes"`
	CommitIndex  uint64        `json:"commit_index"`
	AppliedIndex uint64        `json:"applied_index"`
	NodeID       string        `json:"node_id"`
}

// JoinRequest is what a new (or restarted) controller sends to be added as a voter.
type JoinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	servers, err := s.node.Servers()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	leaderID, _ := s.node.Leader()
	resp := ClusterResponse{NodeID: s.node.ID(), Nodes: []ClusterNode{}}
	resp.CommitIndex, resp.AppliedIndex = s.node.Indexes()
	if leaderID != "" {
		resp.Leader.ID = leaderID
		if n, ok := s.st.Node(leaderID); ok {
			resp.Leader.APIAddr = n.APIAddr
		}
	}
	for _, srv := range servers {
		cn := ClusterNode{ID: srv.ID, RaftAddr: srv.RaftAddr, Voter: srv.Voter, State: "follower"}
		if n, ok := s.st.Node(srv.ID); ok {
			cn.APIAddr = n.APIAddr
		}
		switch {
		case srv.ID == s.node.ID():
			cn.State = strings.ToLower(s.node.State())
		case srv.ID == leaderID:
			cn.State = "leader"
		}
		resp.Nodes = append(resp.Nodes, cn)
	}
	sort.Slice(resp.Nodes, func(i, j int) bool { return resp.Nodes[i].ID < resp.Nodes[j].ID })
	writeJSON(w, http.StatusOK, resp)
}

func validHostPort(a string) bool {
	h, p, err := net.SplitHostPort(a)
	return err == nil && h != "" && p != "" && p != "0"
}

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var j JoinRequest
	if err := decodeStrict(body, &j, false); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if j.ID == "" || !validHostPort(j.RaftAddr) || !validHostPort(j.APIAddr) {
		writeError(w, http.StatusBadRequest, "join needs id, raft_addr (host:port) and api_addr (host:port)")
		return
	}
	s.write(w, r, body, func() (int, any, error) {
		if err := s.node.Join(j.ID, j.RaftAddr); err != nil {
			return 0, nil, err
		}
		reg := state.NodeInfo{ID: j.ID, APIAddr: j.APIAddr, RaftAddr: j.RaftAddr}
		if cur, ok := s.st.Node(j.ID); !ok || cur != reg {
			if _, err := s.node.Apply(state.MustEncode(state.CmdRegisterNode, reg)); err != nil {
				return 0, nil, err
			}
		}
		return http.StatusOK, map[string]string{"message": fmt.Sprintf("node %s joined", j.ID)}, nil
	})
}

func (s *Server) handleRemoveNode(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	s.write(w, r, nil, func() (int, any, error) {
		servers, err := s.node.Servers()
		if err != nil {
			return 0, nil, err
		}
		known := false
		for _, srv := range servers {
			known = known || srv.ID == id
		}
		if !known {
			return 0, nil, fmt.Errorf("node %s: %w", id, cluster.ErrUnknownNode)
		}
		// Forget the registration first: when the leader removes itself it can no longer
		// apply anything afterwards.
		if _, err := s.node.Apply(state.MustEncode(state.CmdRemoveNode, state.RemoveNode{ID: id})); err != nil {
			return 0, nil, err
		}
		if err := s.node.Remove(id); err != nil {
			return 0, nil, err
		}
		return http.StatusOK, map[string]string{"message": fmt.Sprintf("node %s removed", id)}, nil
	})
}
