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

// AgentIdentities calls GET /agents/identities: the enrolled agents.
func (c *Client) AgentIdentities(ctx context.Context) ([]proto.AgentIdentity, error) {
	var out []proto.AgentIdentity
	return out, c.get(ctx, "/agents/identities", nil, &out)
}

// ForgetAgent calls POST /agents/{name}/forget (admin): the agent's credential stops
// working and the name may enrol again (a replaced host).
func (c *Client) ForgetAgent(ctx context.Context, name string) (proto.MessageResponse, error) {
	var out proto.MessageResponse
	return out, c.post(ctx, "/agents/"+pathEscape(name)+"/forget", nil, &out)
}

// RotateAgent calls POST /agents/{name}/rotate (admin): the agent replaces its credential
// on its next call.
func (c *Client) RotateAgent(ctx context.Context, name string) (proto.MessageResponse, error) {
	var out proto.MessageResponse
	return out, c.post(ctx, "/agents/"+pathEscape(name)+"/rotate", nil, &out)
}

// AgentControl cordons, drains or uncordons an agent (action: cordon, drain, uncordon).
func (c *Client) AgentControl(ctx context.Context, name, action, reason string) (proto.AgentControlResponse, error) {
	var out proto.AgentControlResponse
	return out, c.post(ctx, "/agents/"+pathEscape(name)+"/"+action, proto.AgentControlRequest{Reason: reason}, &out)
}
