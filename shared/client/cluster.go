package client

import (
	"context"

	"github.com/hypersdk/hypersdk/proto"
)

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

// ClusterStatus is GET /cluster: the members as the answering node sees them.
type ClusterStatus struct {
	Leader       ClusterLeader `json:"leader"`
	Nodes        []ClusterNode `json:"nodes"`
	CommitIndex  uint64        `json:"commit_index"`
	AppliedIndex uint64        `json:"applied_index"`
	NodeID       string        `json:"node_id"`
}

// Cluster calls GET /cluster.
func (c *Client) Cluster(ctx context.Context) (ClusterStatus, error) {
	var out ClusterStatus
	return out, c.get(ctx, "/cluster", nil, &out)
}

// RemoveNode calls DELETE /cluster/nodes/{id}: the controller leaves the raft
// configuration (stop its process first, or it will keep asking to rejoin).
func (c *Client) RemoveNode(ctx context.Context, id string) (proto.MessageResponse, error) {
	var out proto.MessageResponse
	return out, c.delete(ctx, "/cluster/nodes/"+pathEscape(id), &out)
}

// Agents calls GET /agents.
func (c *Client) Agents(ctx context.Context) (proto.AgentsResponse, error) {
	var out proto.AgentsResponse
	return out, c.get(ctx, "/agents", nil, &out)
}

// Agent calls GET /agents/{name}.
func (c *Client) Agent(ctx context.Context, name string) (proto.AgentInfo, error) {
	var out proto.AgentInfo
	return out, c.get(ctx, "/agents/"+pathEscape(name), nil, &out)
}
