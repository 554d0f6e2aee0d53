package proto

import "net"

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
	State    string `json:"state"`
	Voter    bool   `json:"voter"`
}

// ClusterStatus answers GET /cluster: the members as the answering node sees them.
type ClusterStatus struct {
	Leader       ClusterLeader `json:"leader"`
	Nodes        []ClusterNode `json:"nodes"`
	CommitIndex  uint64        `json:"commit_index"`
	AppliedIndex uint64        `json:"applied_index"`
	NodeID       string        `json:"node_id"`
}

// JoinRequest (POST /cluster/join) is what a new or restarted controller sends to be
// added as a voter and to register its API address.
type JoinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}

// Validate checks a join request.
func (r *JoinRequest) Validate() error {
	if r.ID == "" || !validHostPort(r.RaftAddr) || !validHostPort(r.APIAddr) {
		return invalid("join needs id, raft_addr (host:port) and api_addr (host:port)")
	}
	return nil
}

func validHostPort(a string) bool {
	h, p, err := net.SplitHostPort(a)
	return err == nil && h != "" && p != "" && p != "0"
}
