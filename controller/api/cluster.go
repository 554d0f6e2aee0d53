package api

import (
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/version"
)

func versionString() string { return version.Version }

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	servers, err := s.node.Servers()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	leaderID, _ := s.node.Leader()
	resp := proto.ClusterStatus{NodeID: s.node.ID(), Nodes: []proto.ClusterNode{}}
	resp.CommitIndex, resp.AppliedIndex = s.node.Indexes()
	if leaderID != "" {
		resp.Leader.ID = leaderID
		if n, ok := s.st.Node(leaderID); ok {
			resp.Leader.APIAddr = n.APIAddr
		}
	}
	for _, srv := range servers {
		cn := proto.ClusterNode{ID: srv.ID, RaftAddr: srv.RaftAddr, Voter: srv.Voter, State: "follower"}
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

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request) {
	body, j, ok := readRequest[proto.JoinRequest](s, w, r, false)
	if !ok {
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
