package controller_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// warmJobBody is a warm job definition with the given conversion method.
func warmJobBody(id, vm, method string) []byte {
	var m map[string]any
	_ = json.Unmarshal(jobBodyID(id, vm), &m)
	m["options"] = map[string]any{"warm": true, "conversion_method": method, "precopy_interval_seconds": 60}
	b, _ := json.Marshal(m)
	return b
}

// agentPost sends an agent report and returns the status code.
func agentPost(t *testing.T, c *controller.Controller, path string, in, out any) int {
	t.Helper()
	code, err := harness.PostJSON(c.URL()+"/agent/v1/"+path, in, out)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return code
}

// TestWarmJobThroughTheCluster: a warm job's API on a three-node cluster, with a stand-in
// agent speaking the agent protocol: validation (https/nfc refused, naming vddk), the
// cutover endpoint's answers (404, 409, 200, a repeat 200), the fenced warm reports, the
// cutover reaching the agent by heartbeat and by the next attempt's lease with the resume
// point, job_update per round on a follower's WebSocket, and the job.precopy_round and
// job.cutover webhooks.
func TestWarmJobThroughTheCluster(t *testing.T) {
	rcv, srv := newReceiver(t, "hush")
	retries := 5
	nodes := controller.StartTestClusterWith(t, 3, func(_ int, cfg *controller.Config) {
		cfg.Webhooks = []controller.WebhookConfig{{URL: srv.URL + "/hook", Events: []string{proto.EventJobPrecopyRound, proto.EventJobCutover},
			Timeout: 2, RetryCount: &retries, Secret: "hush", Headers: map[string]string{"Authorization": "Bearer hook-token"}}}
		cfg.WebhookDelivery.Backoff = 20 * time.Millisecond
	})
	leader := controller.Leader(nodes)
	follower := others(nodes, leader)[0]

	for _, m := range []string{"https", "nfc"} {
		code, out := postOnce(t, follower.URL()+"/jobs/submit", warmJobBody("bad-"+m, "DC0/vm/bad", m))
		if code != http.StatusBadRequest || !strings.Contains(out["error"].(string), "vddk") {
			t.Errorf("warm with %s: %d %v, want 400 naming vddk", m, code, out)
		}
	}
	if code, out := postRetry(t, follower.URL()+"/jobs/submit", warmJobBody("warm", "DC0/vm/warm", "vddk"), http.StatusCreated); code != http.StatusCreated {
		t.Fatalf("submit: %d %v", code, out)
	}
	ws := reading(t, dialWS(t, follower, 0))
	var lr proto.LeaseResponse
	if code := agentPost(t, leader, "lease", proto.LeaseRequest{Agent: "a1", MaxJobs: 1, WaitSeconds: 5}, &lr); code != http.StatusOK ||
		lr.Lease == nil || lr.Lease.JobID != "warm" {
		t.Fatalf("lease: %d %+v", code, lr)
	}
	l := lr.Lease
	if l.Warm != nil || l.CutoverRequested {
		t.Fatalf("first lease of the warm job: %+v", l)
	}
	if code, _ := postRetry(t, follower.URL()+"/jobs/submit", jobBodyID("cold", "DC0/vm/cold"), http.StatusCreated); code != http.StatusCreated {
		t.Fatal("submit cold")
	}
	for _, tc := range []struct {
		id   string
		code int
	}{{"nope", http.StatusNotFound}, {"cold", http.StatusConflict}} {
		if code, out := postOnce(t, follower.URL()+"/jobs/"+tc.id+"/cutover", nil); code != tc.code || out["error"] == nil {
			t.Errorf("cutover of %s: %d %v, want %d with an error", tc.id, code, out, tc.code)
		}
	}
	const agent = "a1"
	resume := &proto.WarmResume{Agent: agent, Format: "qcow2", Rounds: 1,
		Disks: []proto.WarmDisk{{Key: 2000, Path: "/var/lib/hypersdk/storage/warm/d0.qcow2", Capacity: 1 << 30, ChangeID: "52 aa/1"}}}
	report := func(tok proto.LeaseToken, st proto.WarmStatus) int {
		return agentPost(t, leader, "warm", proto.WarmReport{LeaseToken: tok, Agent: agent, Status: st, Resume: resume}, nil)
	}
	if code := report(l.LeaseToken, proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 1, ChangedBytes: 512 << 20}); code != http.StatusOK {
		t.Fatalf("warm report: %d", code)
	}
	stale := l.LeaseToken
	stale.Attempt++
	if code := report(stale, proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 5}); code != http.StatusConflict {
		t.Errorf("report with a stale token: %d, want 409", code)
	}
	m := ws.next(t, "job_update of round 1", func(m proto.WSMessage) bool {
		var j proto.Job
		_ = json.Unmarshal(m.Data, &j)
		return m.Type == proto.WSJobUpdate && j.Definition.ID == "warm" && j.Warm != nil && j.Warm.Rounds == 1
	})
	if strings.Contains(string(m.Data), "warm_resume") {
		t.Errorf("job_update shows the resume point: %s", m.Data)
	}
	// Every round is a job_update of its own.
	if code := report(l.LeaseToken, proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 2, ChangedBytes: 3 << 20}); code != http.StatusOK {
		t.Fatalf("warm report of round 2: %d", code)
	}
	ws.next(t, "job_update of round 2", func(m proto.WSMessage) bool {
		var j proto.Job
		_ = json.Unmarshal(m.Data, &j)
		return m.Type == proto.WSJobUpdate && j.Definition.ID == "warm" && j.Warm != nil && j.Warm.Rounds == 2 && j.Warm.ChangedBytes == 3<<20
	})

	code, out := postOnce(t, follower.URL()+"/jobs/warm/cutover", nil)
	if code != http.StatusOK || out["already_requested"] == true {
		t.Fatalf("cutover: %d %v", code, out)
	}
	if code, out := postOnce(t, nodes[2].URL()+"/jobs/warm/cutover", []byte(`{}`)); code != http.StatusOK || out["already_requested"] != true {
		t.Fatalf("second cutover: %d %v, want 200 already requested", code, out)
	}
	// A follower trails the leader by a few milliseconds.
	controller.WaitFor(t, 5*time.Second, "the request replicated", func() bool {
		j, _ := follower.State.Job("warm")
		return j.Warm != nil && j.Warm.CutoverRequested
	})
	if _, j := getJob(t, follower.URL(), "warm"); j.Warm == nil || !j.Warm.CutoverRequested || j.Warm.Rounds != 2 || j.WarmResume != nil {
		t.Fatalf("job after the request: %+v resume %+v", j.Warm, j.WarmResume)
	}
	var hb proto.HeartbeatResponse
	agentPost(t, leader, "heartbeat", proto.HeartbeatRequest{Agent: agent, Leases: []proto.LeaseToken{l.LeaseToken}}, &hb)
	if len(hb.Cutover) != 1 || hb.Cutover[0] != l.LeaseToken {
		t.Fatalf("heartbeat answer %+v: want the cutover of %+v", hb, l.LeaseToken)
	}

	// The agent is lost: the next attempt's lease says where the copy is and that the
	// cutover is due.
	if code := agentPost(t, leader, "fail", proto.FailRequest{LeaseToken: l.LeaseToken, Agent: agent, Error: "agent lost", Retryable: true}, nil); code != http.StatusOK {
		t.Fatalf("fail: %d", code)
	}
	var next proto.LeaseResponse
	agentPost(t, leader, "lease", proto.LeaseRequest{Agent: agent, MaxJobs: 1, WaitSeconds: 5, WarmCopies: []string{"warm", "nope"}}, &next)
	if len(next.Discard) != 1 || next.Discard[0] != "nope" {
		t.Errorf("discard %v: want the unknown job's copy only (the warm job's is resumed by this lease)", next.Discard)
	}
	if next.Lease == nil || next.Lease.JobID != "warm" || next.Lease.Attempt != 2 || !next.Lease.CutoverRequested ||
		next.Lease.Warm == nil || next.Lease.Warm.Disks[0].ChangeID != "52 aa/1" {
		t.Fatalf("second lease %+v", next.Lease)
	}
	if code := report(next.Lease.LeaseToken, proto.WarmStatus{Phase: proto.WarmPhaseCutover, Rounds: 1}); code != http.StatusOK {
		t.Fatalf("cutover report: %d", code)
	}
	if code := report(next.Lease.LeaseToken, proto.WarmStatus{Phase: proto.WarmPhaseDone, Rounds: 1, DowntimeSeconds: 2.5}); code != http.StatusOK {
		t.Fatalf("done report: %d", code)
	}
	if code := agentPost(t, leader, "complete", proto.CompleteRequest{LeaseToken: next.Lease.LeaseToken, Agent: agent}, nil); code != http.StatusOK {
		t.Fatalf("complete: %d", code)
	}
	controller.WaitFor(t, 5*time.Second, "the job completed everywhere", func() bool {
		for _, c := range nodes {
			if j, ok := c.State.Job("warm"); !ok || j.Status != proto.StatusCompleted || j.Warm.DowntimeSeconds != 2.5 {
				return false
			}
		}
		return true
	})
	if code, out := postOnce(t, follower.URL()+"/jobs/warm/cutover", nil); code != http.StatusOK || out["already_requested"] != true {
		t.Errorf("cutover of the completed job whose cutover was asked: %d %v, want the repeat's 200", code, out)
	}
	var after proto.LeaseResponse
	agentPost(t, leader, "lease", proto.LeaseRequest{Agent: "a2", MaxJobs: 1, WaitSeconds: 1, WarmCopies: []string{"warm"}}, &after)
	if len(after.Discard) != 1 {
		t.Errorf("discard %v: a completed job's copy is no attempt's", after.Discard)
	}
	controller.WaitFor(t, 10*time.Second, "webhooks delivered", func() bool {
		got := map[string]bool{}
		for _, ev := range rcv.delivered() {
			got[ev] = true
		}
		return got["job.precopy_round DC0/vm/warm"] && got["job.cutover DC0/vm/warm"]
	})
}
