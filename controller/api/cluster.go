package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/version"
)

func versionString() string { return version.Version }

// handleCluster answers GET /cluster: the members as this node knows them, each with its
// health as the leader sees it (a follower asks the leader; only the leader hears from
// every member). A follower that cannot reach the leader answers without health.
func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	servers, err := s.node.Servers()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	leaderID, _ := s.node.Leader()
	resp := proto.ClusterStatus{NodeID: s.node.ID(), Nodes: []proto.ClusterNode{}, LastLogIndex: s.node.LastIndex()}
	resp.CommitIndex, resp.AppliedIndex = s.node.Indexes()
	sync := s.node.Sync()
	resp.CatchingUp, resp.Lag, resp.SyncReason = !sync.CaughtUp, sync.Lag, sync.Reason
	if leaderID != "" {
		resp.Leader.ID = leaderID
		resp.Leader.APIAddr = s.apiAddrOf(leaderID)
	}
	health, from := s.clusterHealth(r, leaderID, resp.Leader.APIAddr)
	resp.HealthFrom = from
	for _, srv := range servers {
		cn := proto.ClusterNode{ID: srv.ID, RaftAddr: srv.RaftAddr, Voter: srv.Voter, State: "follower", APIAddr: s.apiAddrOf(srv.ID)}
		switch {
		case srv.ID == s.node.ID():
			cn.State = strings.ToLower(s.node.State())
		case srv.ID == leaderID:
			cn.State = "leader"
		}
		if h, ok := health[srv.ID]; ok {
			cn.Health = &h
			if !h.Reachable && srv.ID != s.node.ID() {
				cn.State = proto.ClusterStateUnreachable
			}
		}
		resp.Nodes = append(resp.Nodes, cn)
	}
	sort.Slice(resp.Nodes, func(i, j int) bool { return resp.Nodes[i].ID < resp.Nodes[j].ID })
	writeJSON(w, http.StatusOK, resp)
}

// apiAddrOf is a controller's API address: registered in the replicated state, else as
// this node saved it (a restarted node has not replayed the registrations yet).
func (s *Server) apiAddrOf(id string) string {
	if n, ok := s.st.Node(id); ok && n.APIAddr != "" {
		return n.APIAddr
	}
	if s.cfg.SavedNodes != nil {
		for _, n := range s.cfg.SavedNodes() {
			if n.ID == id {
				return n.APIAddr
			}
		}
	}
	return ""
}

// clusterHealth is every member's health as the leader sees it, and the leader's id: this
// node's own view when it leads, else the leader's answer to GET /cluster (asked once: a
// request that was itself forwarded is answered from the local view).
func (s *Server) clusterHealth(r *http.Request, leaderID, leaderAPI string) (map[string]proto.ClusterNodeHealth, string) {
	if peers, ok := s.node.Peers(); ok {
		now := s.now()
		out := make(map[string]proto.ClusterNodeHealth, len(peers))
		for _, p := range peers {
			h := proto.ClusterNodeHealth{Reachable: p.Reachable, LastLogIndex: p.LastLogIndex, ReplicationLag: p.Lag}
			if !p.LastContact.IsZero() {
				t := p.LastContact.UTC()
				h.LastContact, h.LastContactSeconds = &t, max(0, now.Sub(t).Seconds())
			}
			out[p.ID] = h
		}
		return out, s.node.ID()
	}
	if leaderID == "" || leaderAPI == "" || r.Header.Get(forwardedHeader) != "" {
		return nil, ""
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.ForwardScheme+"://"+leaderAPI+"/cluster", nil)
	if err != nil {
		return nil, ""
	}
	if v := r.Header.Get("Authorization"); v != "" {
		req.Header.Set("Authorization", v)
	}
	req.Header.Set(forwardedHeader, s.node.ID())
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, ""
	}
	defer resp.Body.Close()
	var lv proto.ClusterStatus
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&lv) != nil || lv.HealthFrom == "" {
		return nil, ""
	}
	out := make(map[string]proto.ClusterNodeHealth, len(lv.Nodes))
	for _, n := range lv.Nodes {
		if n.Health != nil {
			out[n.ID] = *n.Health
		}
	}
	return out, lv.HealthFrom
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
		reg := state.NodeInfo{ID: j.ID, APIAddr: j.APIAddr, RaftAddr: j.RaftAddr, GossipAddr: j.GossipAddr}
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
