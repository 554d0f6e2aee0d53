package controller_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/client"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

// TestCordonAndDrainAcrossFailover: a cordon made through a follower is replicated, so
// after the leader is stopped the new leader and every node still show it and keep the
// agent out of work; a drain hands back a running job (via the agent's heartbeat) that
// then runs elsewhere; uncordon lets the agent take jobs again; a cordon of an agent the
// fleet has never seen is a 404 naming the known agents.
func TestCordonAndDrainAcrossFailover(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	var gossip []string
	for _, n := range nodes {
		gossip = append(gossip, n.GossipAddr())
	}
	fleettest.StartMember(t, "kvm-a", 4, gossip...)
	fleettest.StartMember(t, "kvm-b", 4, gossip...)
	leader := controller.Leader(nodes)
	var follower *controller.Controller
	for _, n := range nodes {
		if n != leader {
			follower = n
		}
	}
	ctx := context.Background()
	viaFollower, err := client.New(client.Config{Servers: []string{follower.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	controller.WaitFor(t, 15*time.Second, "both agents in the follower's fleet", func() bool {
		res, err := viaFollower.Agents(ctx)
		return err == nil && res.Total == 2
	})
	res, err := viaFollower.AgentControl(ctx, "kvm-a", "cordon", "")
	if err != nil || res.Cordon != "cordoned" || !strings.Contains(res.Message, "no new jobs") {
		t.Fatalf("cordon through a follower: %+v %v", res, err)
	}
	if _, err := viaFollower.AgentControl(ctx, "kvm-typo", "cordon", ""); err == nil ||
		!strings.Contains(err.Error(), "kvm-a, kvm-b") || !strings.Contains(err.Error(), "404") {
		t.Fatalf("cordon of an unknown agent: %v", err)
	}

	_, survivors := controller.StopLeader(t, nodes)
	newLeader := controller.Leader(survivors)
	for _, n := range survivors {
		controller.WaitFor(t, 10*time.Second, "the cordon on "+n.Node.ID(), func() bool {
			var ag proto.AgentInfo
			code, _ := getJSON(t, n.URL()+"/agents/kvm-a", &ag)
			return code == http.StatusOK && ag.Cordon == "cordoned"
		})
	}

	cl, err := client.New(client.Config{Servers: []string{newLeader.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := cl.SubmitJob(ctx, fleettest.JobBody("DC0/vm/cordon-1"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := fleettest.NewAgent("kvm-a", newLeader.URL()), fleettest.NewAgent("kvm-b", newLeader.URL())
	if l, err := a.TryLease(2 * time.Second); err != nil || l != nil {
		t.Fatalf("cordoned kvm-a was offered a job: %+v %v", l, err)
	}
	l := b.Lease(t, 10*time.Second)
	if l.JobID != sub.JobID {
		t.Fatalf("kvm-b leased %s, want %s", l.JobID, sub.JobID)
	}
	b.Progress(t, l, proto.Progress{Stage: proto.StageConversion, PercentComplete: 10})
	if hb := b.Renew(t, l); len(hb.HandBack) != 0 {
		t.Fatalf("hand-back before any drain: %+v", hb)
	}

	// Drain kvm-b: its job comes back through the heartbeat; kvm-a is uncordoned and gets it.
	if res, err := cl.AgentControl(ctx, "kvm-b", "drain", ""); err != nil || res.Cordon != "draining" {
		t.Fatalf("drain: %+v %v", res, err)
	}
	hb := b.Renew(t, l)
	if len(hb.HandBack) != 1 || hb.HandBack[0] != l.LeaseToken {
		t.Fatalf("drain did not hand back %v: %+v", l.LeaseToken, hb)
	}
	b.FailRetryable(t, l, "agent kvm-b is drained: job handed back")
	if res, err := cl.AgentControl(ctx, "kvm-a", "uncordon", ""); err != nil || res.Cordon != "" {
		t.Fatalf("uncordon: %+v %v", res, err)
	}
	l2 := a.Lease(t, 10*time.Second)
	if l2.JobID != sub.JobID || l2.Attempt != 2 {
		t.Fatalf("kvm-a leased %+v, want %s attempt 2", l2.LeaseToken, sub.JobID)
	}
	if l, err := b.TryLease(time.Second); err != nil || l != nil {
		t.Fatalf("draining kvm-b was offered a job: %+v %v", l, err)
	}
	j, err := cl.Job(ctx, sub.JobID)
	if err != nil || !slices.Equal(j.FailedAgents, []string{"kvm-b"}) {
		t.Fatalf("job after the hand-back: %+v %v", j, err)
	}
}
