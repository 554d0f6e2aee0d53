package worker_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// warmReporter is what the migration pipeline asks of the worker's reporter for a warm
// job (migrate.WarmReporter; the worker cannot import migrate).
type warmReporter interface {
	CutoverRequested() <-chan struct{}
	Warm(ctx context.Context, status proto.WarmStatus, resume *proto.WarmResume) error
	AgentName() string
}

// warmExec reports one precopy round, waits for the cutover, reports it and completes.
type warmExec struct{ rounds chan int }

func (e *warmExec) Run(ctx context.Context, l proto.Lease, r worker.Reporter) (*proto.JobResult, error) {
	wr, ok := r.(warmReporter)
	if !ok {
		panic("the worker's reporter does not serve warm jobs")
	}
	resume := &proto.WarmResume{Agent: wr.AgentName(), Format: "qcow2", Rounds: 1,
		Disks: []proto.WarmDisk{{Key: 2000, Path: "/s/d0.qcow2", Capacity: 1 << 20, ChangeID: "52 00/1"}}}
	if err := wr.Warm(ctx, proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 1, ChangedBytes: 1 << 20}, resume); err != nil {
		return nil, err
	}
	e.rounds <- 1
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-wr.CutoverRequested():
	}
	if err := wr.Warm(ctx, proto.WarmStatus{Phase: proto.WarmPhaseCutover, Rounds: 1, CutoverRequested: true}, resume); err != nil {
		return nil, err
	}
	return &proto.JobResult{DomainName: "warm"}, nil
}

// TestWarmCutoverReachesTheAgent: a warm round reported by the worker is committed (and
// fenced: the report names the agent holding the lease), and POST /jobs/{id}/cutover on
// any controller reaches the running job through the heartbeat.
func TestWarmCutoverReachesTheAgent(t *testing.T) {
	cs := startCluster(t, 3, 2*time.Second)
	exec := &warmExec{rounds: make(chan int, 1)}
	startWorker(t, "agent-w", urls(cs), 1, exec)
	body := harness.JobBody("DC0/vm/warm")
	var def map[string]any
	_ = json.Unmarshal(body, &def)
	def["options"] = map[string]any{"warm": true}
	var sub proto.SubmitResponse
	if code, err := harness.PostJSON(cs[1].URL()+"/jobs/submit", def, &sub); err != nil || code != http.StatusCreated {
		t.Fatalf("submit: %d %v", code, err)
	}
	select {
	case <-exec.rounds:
	case <-time.After(15 * time.Second):
		t.Fatal("no round reported")
	}
	if j := job(cs[0], sub.JobID); j.Warm == nil || j.Warm.Rounds != 1 || j.WarmResume == nil || j.WarmResume.Agent != "agent-w" {
		t.Fatalf("after the round: %+v %+v", j.Warm, j.WarmResume)
	}
	var out proto.CutoverResponse
	if code, err := harness.PostJSON(cs[2].URL()+"/jobs/"+sub.JobID+"/cutover", struct{}{}, &out); err != nil || code != http.StatusOK {
		t.Fatalf("cutover: %d %v", code, err)
	}
	controller.WaitFor(t, 15*time.Second, "completed after the cutover", func() bool {
		j := job(cs[0], sub.JobID)
		return j.Status == proto.StatusCompleted && j.Warm.Phase == proto.WarmPhaseCutover && j.Warm.CutoverRequested
	})
}

// keeper is an executor that keeps copies: one of a job the controller never heard of.
type keeper struct {
	*testExec
	discarded chan []string
}

func (k *keeper) KeptCopies(running func(string) bool) []string { return []string{"gone-job"} }
func (k *keeper) Discard(ids []string, running func(string) bool) {
	select {
	case k.discarded <- ids:
	default:
	}
}

// TestKeptCopiesDiscarded: the lease loop lists the executor's kept copies, and removes
// those the controller says no attempt will resume.
func TestKeptCopiesDiscarded(t *testing.T) {
	cs := startCluster(t, 1, 2*time.Second)
	k := &keeper{testExec: newExec(true), discarded: make(chan []string, 1)}
	startWorker(t, "agent-k", urls(cs), 1, k)
	select {
	case ids := <-k.discarded:
		if len(ids) != 1 || ids[0] != "gone-job" {
			t.Fatalf("discarded %v", ids)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the copy of an unknown job was not discarded")
	}
}
