package client

import (
	"context"

	"github.com/hypersdk/hypersdk/proto"
)

// Cluster calls GET /cluster.
func (c *Client) Cluster(ctx context.Context) (proto.ClusterStatus, error) {
	var out proto.ClusterStatus
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
