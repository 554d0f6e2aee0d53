package main

import (
	"fmt"
)

func init() {
	register("cluster", "status", &command{help: "controllers, their roles, the leader and the raft indexes", run: (*app).clusterStatus})
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
	if err := fields(a.stdout,
		"Leader", leader,
		"Answered by", cl.NodeID,
		"Commit index", fmt.Sprint(cl.CommitIndex),
		"Applied index", fmt.Sprint(cl.AppliedIndex),
	); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	t := a.table("ID", "STATE", "VOTER", "API", "RAFT")
	for _, n := range cl.Nodes {
		t.row(n.ID, n.State, yesNo(n.Voter), n.APIAddr, n.RaftAddr)
	}
	return t.flush()
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
