package proto

import (
	"net"
	"time"
)

// The /cluster API: the controllers' raft membership.

// ClusterLeader names the raft leader in GET /cluster.
type ClusterLeader struct {
	ID      string `json:"id"`
	APIAddr string `json:"api_addr"`
}

// ClusterNode is one controller in GET /cluster.
type ClusterNode struct {
	ID       string `json:"id"`
	APIAddr  string `json:"api_addr"`
	RaftAddr string `json:"raft_addr"`
	// State is the member's raft role (leader, follower, candidate) as the answering node
	// knows it, or "unreachable" when the leader has not heard from it within seconds.
	State string `json:"state"`
	Voter bool   `json:"voter"`
	// Health is the member as the leader sees it (absent when no leader could be asked).
	Health *ClusterNodeHealth `json:"health,omitempty"`
}

// ClusterNodeHealth is a member as the leader sees it: whether it answers, when it last
// did, and how far its log trails the leader's.
type ClusterNodeHealth struct {
	Reachable bool `json:"reachable"`
	// LastContact is when it last answered the leader (absent: never since the leader
	// started); LastContactSeconds is its age as the leader measured it.
	LastContact        *time.Time `json:"last_contact,omitempty"`
	LastContactSeconds float64    `json:"last_contact_seconds"`
	LastLogIndex       uint64     `json:"last_log_index"`
	// ReplicationLag is how many entries the leader's log has beyond the member's.
	ReplicationLag uint64 `json:"replication_lag"`
}

// ClusterStateUnreachable is the State of a member the leader cannot reach.
const ClusterStateUnreachable = "unreachable"

// ClusterStatus answers GET /cluster: the members as the answering node sees them.
type ClusterStatus struct {
	Leader       ClusterLeader `json:"leader"`
	Nodes        []ClusterNode `json:"nodes"`
	CommitIndex  uint64        `json:"commit_index"`
	AppliedIndex uint64        `json:"applied_index"`
	NodeID       string        `json:"node_id"`
	// LastLogIndex is the answering node's last raft log index (its log survives a
	// restart: the commit index reads 0 until a leader speaks).
	LastLogIndex uint64 `json:"last_log_index"`
	// CatchingUp: the answering node has not caught up with the leader (its reads answer
	// 503); Lag is how many committed entries it has not applied, SyncReason why.
	CatchingUp bool   `json:"catching_up"`
	Lag        uint64 `json:"lag"`
	SyncReason string `json:"sync_reason,omitempty"`
	// HealthFrom is the leader whose view the nodes' health is ("" when none answered).
	HealthFrom string `json:"health_from,omitempty"`
}

// JoinRequest (POST /cluster/join) is what a new or restarted controller sends to be
// added as a voter and to register its API address.
type JoinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
	// GossipAddr is the node's gossip address: every controller joins the others' pools,
	// so agents joined through any one are seen by all (optional: older controllers).
	GossipAddr string `json:"gossip_addr,omitempty"`
}

// Validate checks a join request.
func (r *JoinRequest) Validate() error {
	if r.ID == "" || !validHostPort(r.RaftAddr) || !validHostPort(r.APIAddr) || r.GossipAddr != "" && !validHostPort(r.GossipAddr) {
		return invalid("join needs id, raft_addr (host:port) and api_addr (host:port)")
	}
	return nil
}

func validHostPort(a string) bool {
	h, p, err := net.SplitHostPort(a)
	return err == nil && h != "" && p != "" && p != "0"
}
