package worker_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// testExec is a test executor: each job runs until released (or forever), reporting
// progress; it records every (job, attempt) run and how it ended. It exists only in tests:
// the agent ships the migration pipeline.
type testExec struct {
	mu       sync.Mutex
	runs     map[string][]string // job id → "attempt N on agent: result"
	release  map[string]chan struct{}
	autoDone bool // finish every job after ~300ms of progress
	active   map[string]int
	overlap  bool
}

func newExec(auto bool) *testExec {
	return &testExec{runs: map[string][]string{}, release: map[string]chan struct{}{}, autoDone: auto, active: map[string]int{}}
}

func (e *testExec) ch(id string) chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.release[id]
	if !ok {
		c = make(chan struct{})
		e.release[id] = c
	}
	return c
}

func (e *testExec) finish(id string) { close(e.ch(id)) }

func (e *testExec) Run(ctx context.Context, l proto.Lease, r worker.Reporter) (*proto.JobResult, error) {
	e.mu.Lock()
	e.active[l.JobID]++
	if e.active[l.JobID] > 1 {
		e.overlap = true
	}
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.active[l.JobID]--
		e.mu.Unlock()
	}()
	release := e.ch(l.JobID)
	if e.autoDone {
		release = make(chan struct{})
		time.AfterFunc(300*time.Millisecond, func() { close(release) })
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var n int64
	for {
		select {
		case <-ctx.Done():
			e.record(l, "stopped: "+context.Cause(ctx).Error())
			return nil, ctx.Err()
		case <-release:
			e.record(l, "completed")
			return &proto.JobResult{DomainName: "dom-" + l.JobID[:8]}, nil
		case <-tick.C:
			n += 1 << 20
			r.Progress(proto.Progress{Stage: proto.StageConversion, CurrentBytes: n, TotalBytes: 1 << 30, PercentComplete: float64(n) / float64(1<<30) * 100})
		}
	}
}

func (e *testExec) record(l proto.Lease, what string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.runs[l.JobID] = append(e.runs[l.JobID], fmt.Sprintf("attempt %d: %s", l.Attempt, what))
}

func (e *testExec) completions(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, r := range e.runs[id] {
		if len(r) > 0 && r[len(r)-9:] == "completed" {
			n++
		}
	}
	return n
}

func startCluster(t *testing.T, n int, ttl time.Duration) []*controller.Controller {
	t.Helper()
	return startClusterGrace(t, n, ttl, 0)
}

// startClusterGrace is startCluster with agents.commit_grace (0: the default).
func startClusterGrace(t *testing.T, n int, ttl, grace time.Duration) []*controller.Controller {
	t.Helper()
	return startClusterWith(t, n, func(cfg *controller.Config) {
		cfg.Agents.LeaseTTL = ttl
		cfg.Agents.CommitGrace = grace
	})
}

// startClusterWith starts n controllers, each config changed by mutate, and waits until
// every node knows all and a leader.
func startClusterWith(t *testing.T, n int, mutate func(cfg *controller.Config)) []*controller.Controller {
	t.Helper()
	var nodes []*controller.Controller
	for i := 0; i < n; i++ {
		var join []string
		if i > 0 {
			join = []string{nodes[0].APIAddr()}
		}
		cfg := controller.TestConfig(t, fmt.Sprintf("n%d", i+1), t.TempDir(), join...)
		mutate(&cfg)
		c, err := controller.New(cfg, controller.TestLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		nodes = append(nodes, c)
	}
	controller.WaitFor(t, 15*time.Second, "cluster formed", func() bool {
		for _, c := range nodes {
			if id, _ := c.Node.Leader(); id == "" || len(c.State.Nodes()) != n {
				return false
			}
		}
		return true
	})
	return nodes
}

func urls(cs []*controller.Controller) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.URL())
	}
	return out
}

func startWorker(t *testing.T, name string, ctrl []string, max int, exec worker.Executor) (*worker.Worker, context.CancelFunc, chan struct{}) {
	t.Helper()
	return startWorkerWith(t, worker.Config{Name: name, Controllers: ctrl, MaxJobs: max}, exec)
}

// startWorkerWith runs a worker of cfg (with short waits and the test logger) until the
// test ends.
func startWorkerWith(t *testing.T, cfg worker.Config, exec worker.Executor) (*worker.Worker, context.CancelFunc, chan struct{}) {
	t.Helper()
	cfg.WaitSeconds, cfg.ShutdownGrace, cfg.Logger = 2, 2*time.Second, controller.TestLogger(t)
	w, err := worker.New(cfg, exec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w, cancel, done
}

func submit(t *testing.T, base string, vm string) string {
	t.Helper()
	var out proto.SubmitResponse
	code, err := harness.PostJSON(base+"/jobs/submit", harness.JobBody(vm), &out)
	if err != nil || code != http.StatusCreated {
		t.Fatalf("submit: %d %v", code, err)
	}
	return out.JobID
}

func job(c *controller.Controller, id string) *proto.Job {
	j, _ := c.State.Job(id)
	return j
}

func TestJobsSpreadByMaxJobsAndComplete(t *testing.T) {
	cs := startCluster(t, 3, 2*time.Second)
	exec := newExec(false)
	startWorker(t, "agent-a", urls(cs), 2, exec)
	startWorker(t, "agent-b", urls(cs), 2, exec)
	var ids []string
	for i := 0; i < 6; i++ {
		ids = append(ids, submit(t, cs[i%3].URL(), fmt.Sprint("DC0/vm/s", i)))
	}
	c := cs[0]
	controller.WaitFor(t, 10*time.Second, "4 running, 2 per agent", func() bool {
		r := c.State.RunningByAgent()
		return r["agent-a"] == 2 && r["agent-b"] == 2
	})
	// Progress reaches the state (rate-limited) while they run.
	controller.WaitFor(t, 5*time.Second, "progress visible", func() bool {
		for _, id := range ids {
			if j := job(c, id); j.Status == proto.StatusRunning && j.Progress.CurrentBytes > 0 && j.Progress.Stage == proto.StageConversion {
				return true
			}
		}
		return false
	})
	for _, id := range ids {
		exec.finish(id)
	}
	controller.WaitFor(t, 15*time.Second, "all completed", func() bool {
		for _, id := range ids {
			if job(c, id).Status != proto.StatusCompleted {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		j := job(c, id)
		if j.Attempt != 1 || exec.completions(id) != 1 || j.Result == nil || j.Progress.PercentComplete != 100 {
			t.Fatalf("job %s: attempt %d completions %d result %v", id, j.Attempt, exec.completions(id), j.Result)
		}
	}
}

// A lease whose agent goes silent expires: the job is re-leased as attempt 2 and completes
// elsewhere, and the silent agent's late report is refused with 409.
func TestExpiredLeaseIsReleasedAndStaleReportRefused(t *testing.T) {
	cs := startCluster(t, 1, 1*time.Second)
	c := cs[0]
	id := submit(t, c.URL(), "DC0/vm/silent")
	var lr proto.LeaseResponse
	code, err := harness.PostJSON(c.URL()+"/agent/v1/lease", proto.LeaseRequest{Agent: "ghost", MaxJobs: 1, WaitSeconds: 2}, &lr)
	if err != nil || code != 200 || lr.Lease == nil || lr.Lease.JobID != id || lr.Lease.Attempt != 1 {
		t.Fatalf("ghost lease: %d %v %+v", code, err, lr.Lease)
	}
	if lr.Lease.Definition.Source.Password != "canary-pw" {
		t.Fatal("the lease must carry the password to the agent")
	}
	exec := newExec(true)
	startWorker(t, "real", urls(cs), 1, exec)
	controller.WaitFor(t, 10*time.Second, "completed by the real agent", func() bool {
		j := job(c, id)
		return j.Status == proto.StatusCompleted && j.Agent == "real" && j.Attempt == 2
	})
	var rr proto.ErrorResponse
	code, _ = harness.PostJSON(c.URL()+"/agent/v1/complete", proto.CompleteRequest{LeaseToken: lr.Lease.LeaseToken, Agent: "ghost"}, &rr)
	if code != http.StatusConflict {
		t.Fatalf("stale complete: %d %v", code, rr)
	}
	// A report from another agent with a valid token is refused too.
	id2 := submit(t, c.URL(), "DC0/vm/other")
	controller.WaitFor(t, 10*time.Second, "second completes", func() bool { return job(c, id2).Status == proto.StatusCompleted })
}

func TestMaxAttemptsThenFailed(t *testing.T) {
	cs := startCluster(t, 1, 500*time.Millisecond)
	c := cs[0]
	id := submit(t, c.URL(), "DC0/vm/doomed")
	for attempt := 1; attempt <= 3; attempt++ {
		var lr proto.LeaseResponse
		controller.WaitFor(t, 10*time.Second, fmt.Sprint("lease attempt ", attempt), func() bool {
			code, err := harness.PostJSON(c.URL()+"/agent/v1/lease", proto.LeaseRequest{Agent: "flaky", MaxJobs: 1, WaitSeconds: 1}, &lr)
			return err == nil && code == 200 && lr.Lease != nil
		})
		if lr.Lease.Attempt != attempt {
			t.Fatalf("attempt %d, want %d", lr.Lease.Attempt, attempt)
		}
		controller.WaitFor(t, 5*time.Second, "lease expires", func() bool { return job(c, id).Status != proto.StatusRunning })
	}
	j := job(c, id)
	if j.Status != proto.StatusFailed || j.Error == nil || !contains(*j.Error, "3 of 3 attempts") || !contains(*j.Error, "no heartbeat") {
		t.Fatalf("job after 3 expiries: %s %v", j.Status, j.Error)
	}
}

func contains(s, sub string) bool {
	return len(s) >= len(sub) && (s == sub || len(sub) == 0 || indexOf(s, sub) >= 0)
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

func TestCancelRunningJobReachesAgent(t *testing.T) {
	cs := startCluster(t, 3, 1500*time.Millisecond)
	exec := newExec(false)
	startWorker(t, "a1", urls(cs), 1, exec)
	id := submit(t, cs[1].URL(), "DC0/vm/cancel-me")
	controller.WaitFor(t, 10*time.Second, "running", func() bool { return job(cs[0], id).Status == proto.StatusRunning })
	code, err := harness.PostJSON(cs[2].URL()+"/jobs/cancel", fmt.Sprintf(`{"job_ids":[%q]}`, id), nil)
	if err != nil || code != 200 {
		t.Fatalf("cancel: %d %v", code, err)
	}
	controller.WaitFor(t, 10*time.Second, "cancelled", func() bool { return job(cs[0], id).Status == proto.StatusCancelled })
	exec.mu.Lock()
	runs := exec.runs[id]
	exec.mu.Unlock()
	if len(runs) != 1 || !contains(runs[0], worker.ErrCancelRequested.Error()) {
		t.Fatalf("executor saw %v", runs)
	}
}

// Every job ends exactly once across a leader failover while jobs run.
func TestLeaderFailoverWhileJobsRun(t *testing.T) {
	// The agents fence themselves after 80% of the TTL without a renewal, by design; an
	// election plus the new leader's Barrier took up to ~1.7 s on a loaded 2-core machine,
	// so a 2 s TTL fenced them (attempt 2) and the test measured the load, not the rule.
	cs := startCluster(t, 3, 6*time.Second)
	exec := newExec(false)
	startWorker(t, "w1", urls(cs), 3, exec)
	startWorker(t, "w2", urls(cs), 3, exec)
	var ids []string
	for i := 0; i < 6; i++ {
		ids = append(ids, submit(t, cs[0].URL(), fmt.Sprint("DC0/vm/f", i)))
	}
	controller.WaitFor(t, 10*time.Second, "all running", func() bool { return cs[0].State.Counts()[proto.StatusRunning] == 6 })
	leader := controller.Leader(cs)
	leader.Close()
	var rest []*controller.Controller
	for _, c := range cs {
		if c != leader {
			rest = append(rest, c)
		}
	}
	controller.WaitFor(t, 10*time.Second, "new leader", func() bool { return controller.Leader(rest) != nil })
	for _, id := range ids {
		exec.finish(id)
	}
	controller.WaitFor(t, 20*time.Second, "all completed after failover", func() bool {
		for _, id := range ids {
			if j := job(rest[0], id); j == nil || j.Status != proto.StatusCompleted {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		if n := exec.completions(id); n != 1 {
			t.Fatalf("job %s completed %d times", id, n)
		}
		if j := job(rest[0], id); j.Attempt != 1 {
			t.Fatalf("job %s needed attempt %d: a new leader must not expire leases early", id, j.Attempt)
		}
	}
	if exec.overlap {
		t.Fatal("a job ran twice at the same time")
	}
}

// An agent that cannot reach any controller for a TTL stops its work by itself, before the
// leader hands the job to another agent.
func TestSelfFencing(t *testing.T) {
	cs := startCluster(t, 1, 1500*time.Millisecond)
	c := cs[0]
	proxy := newProxy(t, c.APIAddr())
	exec := newExec(false)
	startWorker(t, "cut-off", []string{"http://" + proxy.addr}, 1, exec)
	id := submit(t, c.URL(), "DC0/vm/fence")
	controller.WaitFor(t, 10*time.Second, "running on cut-off", func() bool { return job(c, id).Agent == "cut-off" })
	proxy.cut()
	controller.WaitFor(t, 10*time.Second, "agent fenced itself", func() bool {
		exec.mu.Lock()
		defer exec.mu.Unlock()
		return len(exec.runs[id]) == 1 && contains(exec.runs[id][0], worker.ErrFenced.Error())
	})
	fencedAt := time.Now()
	controller.WaitFor(t, 10*time.Second, "lease expired on the controller", func() bool { return job(c, id).Status == proto.StatusPending })
	if time.Since(fencedAt) <= 0 {
		t.Fatal("unreachable")
	}
	exec2 := newExec(true)
	startWorker(t, "healthy", urls(cs), 1, exec2)
	controller.WaitFor(t, 10*time.Second, "completed elsewhere", func() bool {
		j := job(c, id)
		return j.Status == proto.StatusCompleted && j.Agent == "healthy" && j.Attempt == 2
	})
}

func TestGracefulShutdownHandsBack(t *testing.T) {
	cs := startCluster(t, 1, 2*time.Second)
	c := cs[0]
	exec := newExec(false)
	_, stop, done := startWorker(t, "leaving", urls(cs), 1, exec)
	id := submit(t, c.URL(), "DC0/vm/handback")
	controller.WaitFor(t, 10*time.Second, "running", func() bool { return job(c, id).Status == proto.StatusRunning })
	stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not stop")
	}
	j := job(c, id)
	if j.Status != proto.StatusPending || !contains(j.PendingReason, "shut down") {
		t.Fatalf("after shutdown the job should be handed back: %s %q", j.Status, j.PendingReason)
	}
}

func TestAgentAPIRejectsBadInput(t *testing.T) {
	cs := startCluster(t, 1, time.Second)
	base := cs[0].URL()
	cases := []struct {
		path, body string
		code       int
	}{
		{"/agent/v1/lease", `{}`, 400},
		{"/agent/v1/lease", `{"agent":"a","max_jobs":-1}`, 400},
		{"/agent/v1/lease", `{"agent":"a","bogus":1}`, 400},
		{"/agent/v1/heartbeat", `{"agent":"a","leases":[{"job_id":"","attempt":1}]}`, 400},
		{"/agent/v1/progress", `{"agent":"a","job_id":"x","attempt":0}`, 400},
		{"/agent/v1/progress", `{"agent":"a","job_id":"x","attempt":1,"progress":{"percent_complete":101}}`, 400},
		{"/agent/v1/complete", `{"agent":"a","job_id":"nope","attempt":1}`, 404},
		{"/agent/v1/fail", `{"agent":"a","job_id":"nope","attempt":1,"error":"x"}`, 404},
		{"/agent/v1/fail", `not json`, 400},
		{"/agent/v1/commit", `{"agent":"a","job_id":"nope","attempt":1}`, 404},
		{"/agent/v1/commit", `{"agent":"a","job_id":"x","attempt":0}`, 400},
		{"/agent/v1/commit", `{"job_id":"x","attempt":1}`, 400},
	}
	for _, tc := range cases {
		var e proto.ErrorResponse
		code, err := harness.PostJSON(base+tc.path, tc.body, &e)
		if err != nil || code != tc.code || e.Error == "" {
			t.Errorf("%s %s: %d %v %q, want %d", tc.path, tc.body, code, err, e.Error, tc.code)
		}
	}
}

// With a join token, the agent API takes no call without a credential, nor one with the
// join token where the credential goes; a worker with a wrong join token gets no work.
func TestJoinTokenRequired(t *testing.T) {
	cs := startJoinCluster(t, 1, joinToken)
	for _, hdr := range []map[string]string{
		nil,
		{proto.AgentTokenHeader: joinToken},
		{proto.AgentCredentialHeader: joinToken},
		{"Authorization": "Bearer " + joinToken},
	} {
		if code, _ := postJSONHeaders(cs[0].URL()+"/agent/v1/heartbeat", `{"agent":"a","leases":[]}`, hdr, nil); code != http.StatusUnauthorized {
			t.Fatalf("heartbeat with %v: %d, want 401", hdr, code)
		}
	}
	startWorkerWith(t, worker.Config{Name: "x", Controllers: urls(cs), Token: "wrong-join-token-0123456"}, newExec(true))
	id := submit(t, cs[0].URL(), "DC0/vm/wrong-token")
	// The worker with the wrong join token polls all along; only the right one gets the job.
	right := newExec(true)
	startTokenWorker(t, "y", urls(cs), "", right)
	waitCompleted(t, cs[0], id)
	if j := job(cs[0], id); j.Agent != "y" {
		t.Fatalf("the job ran on %q, the agent with the wrong join token", j.Agent)
	}
	if ids := cs[0].State.AgentIdentities(); len(ids) != 1 || ids[0].Name != "y" {
		t.Fatalf("enrolled: %+v", ids)
	}
}

type stringReader struct {
	s string
	i int
}

func (r *stringReader) Read(p []byte) (int, error) {
	if r.i >= len(r.s) {
		return 0, io.EOF
	}
	n := copy(p, r.s[r.i:])
	r.i += n
	return n, nil
}

func stringsReader(s string) io.Reader { return &stringReader{s: s} }

// proxy is a TCP proxy the test can cut, to make controllers unreachable for one agent.
type proxy struct {
	addr  string
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	dead  bool
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String(), ln: ln}
	t.Cleanup(p.cut)
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.dead {
				p.mu.Unlock()
				in.Close()
				continue
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				in.Close()
				continue
			}
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return p
}

// cut drops every connection and refuses new ones (the listener stays, so connects hang
// in the accept queue or are closed at once, like a partitioned host).
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dead = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// A grant that arrives late in a long-poll (after 80% of the TTL) must not be fenced at
// once: the fence clock starts when the lease arrives, as the leader's timer starts at
// the grant.
func TestLateGrantInLongPollIsNotFenced(t *testing.T) {
	cs := startCluster(t, 1, 1500*time.Millisecond)
	c := cs[0]
	exec := newExec(false)
	w, err := worker.New(worker.Config{Name: "patient", Controllers: urls(cs), MaxJobs: 1, WaitSeconds: 5, Logger: controller.TestLogger(t)}, exec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Let the long-poll wait longer than the TTL before there is work.
	time.Sleep(2 * time.Second) // the condition is the passage of time itself
	id := submit(t, c.URL(), "DC0/vm/late")
	controller.WaitFor(t, 10*time.Second, "running", func() bool { return job(c, id).Status == proto.StatusRunning })
	time.Sleep(2 * time.Second) // longer than the TTL: heartbeats must have kept it
	if j := job(c, id); j.Status != proto.StatusRunning || j.Attempt != 1 {
		t.Fatalf("job %s attempt %d: a late grant was fenced or expired", j.Status, j.Attempt)
	}
	exec.finish(id)
	controller.WaitFor(t, 10*time.Second, "completed", func() bool { return job(c, id).Status == proto.StatusCompleted })
}

// fastExec reports "connecting" and, once that report is in the job, ends at once with its
// byte counts, as a small migration does: within the reporter's one-second pacing, so the
// final report is not sent as progress.
type fastExec struct {
	total   int64
	relayed func(jobID string) bool // the first report reached the controller
}

func (e fastExec) Run(ctx context.Context, l proto.Lease, r worker.Reporter) (*proto.JobResult, error) {
	r.Progress(proto.Progress{Stage: proto.StageConnecting, Message: "connecting to 127.0.0.1:1"})
	for !e.relayed(l.JobID) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	r.Progress(proto.Progress{Stage: proto.StageConversion, CurrentBytes: e.total / 2, TotalBytes: e.total, PercentComplete: 50})
	r.Progress(proto.Progress{Stage: proto.StageCompleted, CurrentBytes: e.total, TotalBytes: e.total, PercentComplete: 100,
		Message: "domain dom-1 defined on test:///default"})
	return &proto.JobResult{DomainName: "dom-1"}, nil
}

// Fault 1 of issue 11: a job that ends before its second progress report could go out
// (the reporter sends at most one a second) ended with the first report's zero byte counts
// and its stale "connecting to" message. The completion carries the final progress.
func TestFastJobEndsWithItsByteCounts(t *testing.T) {
	cs := startCluster(t, 1, 2*time.Second)
	c := cs[0]
	const total = 128 << 20
	startWorker(t, "fast", urls(cs), 1, fastExec{total: total, relayed: func(id string) bool {
		j := job(c, id)
		return j != nil && j.Progress.Message != ""
	}})
	id := submit(t, c.URL(), "DC0/vm/fast")
	controller.WaitFor(t, 10*time.Second, "completed", func() bool { return job(c, id).Status == proto.StatusCompleted })
	p := job(c, id).Progress
	if p.Stage != proto.StageCompleted || p.PercentComplete != 100 || p.TotalBytes != total || p.CurrentBytes != total {
		t.Fatalf("final progress %+v: want %d of %d bytes, completed", p, total, total)
	}
	if strings.HasPrefix(p.Message, "connecting") {
		t.Fatalf("final progress keeps a stale message: %q", p.Message)
	}
}
