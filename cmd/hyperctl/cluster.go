package main

import (
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

func init() {
	register("cluster", "status", &command{help: "controllers, their roles and reachability as the leader sees them, last contact, replication lag, the raft indexes", run: (*app).clusterStatus})
	register("cluster", "remove", &command{
		usage: "ID",
		help:  "remove a controller from the raft cluster (stop it first)",
		run:   (*app).clusterRemove,
	})
}

func (a *app) clusterStatus(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	cl, err := a.client.Cluster(a.ctx)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(cl)
	}
	leader := "none (election in progress or no quorum)"
	if cl.Leader.ID != "" {
		leader = cl.Leader.ID
		if cl.Leader.APIAddr != "" {
			leader += " (" + cl.Leader.APIAddr + ")"
		}
	}
	caughtUp := "yes"
	if cl.CatchingUp {
		caughtUp = fmt.Sprintf("no: %s (its reads answer 503 until it is)", cl.SyncReason)
	}
	health := "from leader " + cl.HealthFrom
	if cl.HealthFrom == "" {
		health = "unknown: no leader answered (reachability, contact and lag need one)"
	}
	if err := fields(a.stdout,
		"Leader", leader,
		"Answered by", cl.NodeID,
		"Caught up", caughtUp,
		"Commit index", fmt.Sprint(cl.CommitIndex),
		"Applied index", fmt.Sprint(cl.AppliedIndex),
		"Last log index", fmt.Sprint(cl.LastLogIndex),
		"Member health", health,
	); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	t := a.table("ID", "STATE", "VOTER", "REACHABLE", "LAST CONTACT", "LAG", "API", "RAFT")
	for _, n := range cl.Nodes {
		reach, contact, lag := "?", "", ""
		if h := n.Health; h != nil {
			reach, lag = yesNo(h.Reachable), fmt.Sprint(h.ReplicationLag)
			contact = lastContact(h)
		}
		t.row(n.ID, n.State, yesNo(n.Voter), reach, contact, lag, n.APIAddr, n.RaftAddr)
	}
	return t.flush()
}

// lastContact is how long ago the leader last heard from a member, as the leader measured
// it (clocks of two machines are not compared).
func lastContact(h *proto.ClusterNodeHealth) string {
	if h.LastContact == nil {
		return "never"
	}
	if h.LastContactSeconds < 1 {
		return "now"
	}
	return humanDuration(time.Duration(h.LastContactSeconds*float64(time.Second))) + " ago"
}

func (a *app) clusterRemove(args []string) error {
	if err := needArgs(args, 1, "one controller ID"); err != nil {
		return err
	}
	res, err := a.client.RemoveNode(a.ctx, args[0])
	if err != nil {
		return err
	}
	return a.message(res, "controller %s removed from the cluster", args[0])
}
