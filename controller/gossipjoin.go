package controller

import (
	"context"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip"
)

// Controllers share one gossip pool without --gossip-join: each registers its gossip
// address in the replicated state (NodeInfo.GossipAddr), and each joins the addresses of
// the registered controllers it does not see as alive members. Without this an agent
// that joined through c1 was invisible from c2 and c3 until the operator added
// --gossip-join (issue 17, the README's three nodes on one machine).

// gossipJoinTimeout bounds one join of the other controllers' addresses. One join runs
// at a time (Controller.gossipJoining): the registration loop ticks faster than an
// unreachable address times out.
const gossipJoinTimeout = 5 * time.Second

// gossipAddr is this controller's gossip address ("" without gossip).
func (c *Controller) gossipAddr() string {
	if c.Gossip == nil {
		return ""
	}
	if c.cfg.Gossip.Advertise != "" {
		return c.cfg.Gossip.Advertise
	}
	return c.Gossip.Addr()
}

// joinControllersGossip joins, in the background, the gossip pools of the registered
// controllers that are not alive members of this node's pool.
func (c *Controller) joinControllersGossip(ctx context.Context) {
	if c.Gossip == nil || c.gossipJoining.Load() {
		return
	}
	var addrs []string
	for _, n := range c.State.Nodes() {
		if n.ID == c.Node.ID() || n.GossipAddr == "" || n.GossipAddr == c.gossipAddr() {
			continue
		}
		if m, ok := c.Gossip.Member(gossip.MemberName(proto.RoleController, n.ID)); ok && m.State == gossip.StateAlive {
			continue
		}
		addrs = append(addrs, n.GossipAddr)
	}
	if len(addrs) == 0 {
		return
	}
	c.gossipJoining.Store(true)
	go func() {
		defer c.gossipJoining.Store(false)
		jctx, cancel := context.WithTimeout(ctx, gossipJoinTimeout)
		defer cancel()
		if n, err := c.Gossip.Join(jctx, addrs); err == nil && n > 0 {
			c.log.Info("joined the other controllers' gossip pool", "addrs", addrs)
		}
	}()
}
