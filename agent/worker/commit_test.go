package worker_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// commitExec is an executor with a commit point: it waits for its gate, asks to commit,
// then "defines" (counted) only when committed, and waits hold before it returns. It
// records what Commit answered and what stopped it.
type commitExec struct {
	gate chan struct{}
	hold time.Duration

	mu        sync.Mutex
	commitErr map[int]error // by attempt
	cause     map[int]error
	defined   atomic.Int32
	definedBy map[int]bool
	attempts  chan int // each attempt as it starts
}

func newCommitExec(hold time.Duration) *commitExec {
	return &commitExec{gate: make(chan struct{}), hold: hold, commitErr: map[int]error{}, cause: map[int]error{}, definedBy: map[int]bool{}, attempts: make(chan int, 8)}
}

func (e *commitExec) Run(ctx context.Context, l proto.Lease, r worker.Reporter) (*proto.JobResult, error) {
	e.attempts <- l.Attempt
	if l.Attempt == 1 {
		select {
		case <-e.gate:
		case <-ctx.Done():
		}
	}
	err := r.Commit(ctx, "dom-"+l.JobID, "test:///default")
	e.mu.Lock()
	e.commitErr[l.Attempt] = err
	e.mu.Unlock()
	if err != nil {
		e.stopped(l, ctx)
		return nil, err
	}
	e.mu.Lock()
	e.definedBy[l.Attempt] = true
	e.mu.Unlock()
	e.defined.Add(1)
	select {
	case <-time.After(e.hold):
	case <-ctx.Done():
		e.stopped(l, ctx)
		return nil, ctx.Err()
	}
	return &proto.JobResult{DomainName: "dom-" + l.JobID}, nil
}

func (e *commitExec) stopped(l proto.Lease, ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cause[l.Attempt] = context.Cause(ctx)
}

func (e *commitExec) result(attempt int) (commitErr, cause error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.commitErr[attempt], e.cause[attempt]
}

func waitAttempt(t *testing.T, e *commitExec, want int) {
	t.Helper()
	select {
	case a := <-e.attempts:
		if a != want {
			t.Fatalf("attempt %d started, want %d", a, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("attempt %d never started", want)
	}
}

// The lease moved on while the attempt copied (its agent was paused, say): its commit is
// refused with 409, it defines nothing and stops as lease lost, and the job is untouched.
func TestCommitRefusedWhenTheLeaseMovedOn(t *testing.T) {
	cs := startCluster(t, 1, time.Minute) // heartbeats every 20 s: the commit comes first
	exec := newCommitExec(0)
	startWorker(t, "paused", []string{cs[0].URL()}, 1, exec)
	id := submit(t, cs[0].URL(), "DC0/vm/moved-on")
	waitAttempt(t, exec, 1)
	// What the leader commits when the lease's timer runs out.
	if _, err := cs[0].Node.Apply(state.MustEncode(state.CmdLeaseExpire, state.LeaseExpire{
		LeaseToken: state.LeaseToken{JobID: id, Attempt: 1}, Reason: "no heartbeat", At: time.Now()})); err != nil {
		t.Fatal(err)
	}
	close(exec.gate)
	controller.WaitFor(t, 20*time.Second, "attempt 1 stopped", func() bool { _, cause := exec.result(1); return cause != nil })
	commitErr, cause := exec.result(1)
	if !errors.Is(commitErr, worker.ErrNotCommitted) || !errors.Is(cause, worker.ErrLeaseLost) {
		t.Fatalf("commit answered %v, attempt stopped by %v; want not committed, lease lost", commitErr, cause)
	}
	exec.mu.Lock()
	defined := exec.definedBy[1]
	exec.mu.Unlock()
	if defined {
		t.Fatal("the attempt whose lease moved on defined its domain")
	}
	// The same (idle) agent may lease attempt 2 of the job meanwhile: that one commits.
	controller.WaitFor(t, 30*time.Second, "the job completes at attempt 2", func() bool {
		j := job(cs[0], id)
		return j.Status == proto.StatusCompleted
	})
	if j := job(cs[0], id); j.Attempt != 2 || j.Commit == nil || j.Commit.Attempt != 2 || exec.defined.Load() != 1 {
		t.Fatalf("job %s attempt %d commit %+v, %d domains defined; want one, by attempt 2", j.Status, j.Attempt, j.Commit, exec.defined.Load())
	}
}

// A cancelled job is not committed: the attempt defines nothing, cleans up and reports
// cancelled.
func TestCommitOfACancelledJob(t *testing.T) {
	cs := startCluster(t, 1, time.Minute)
	exec := newCommitExec(0)
	startWorker(t, "cancelled", []string{cs[0].URL()}, 1, exec)
	id := submit(t, cs[0].URL(), "DC0/vm/cancelled")
	waitAttempt(t, exec, 1)
	if _, err := cs[0].Node.Apply(state.MustEncode(state.CmdCancelJobs, state.CancelJobs{JobIDs: []string{id}, At: time.Now()})); err != nil {
		t.Fatal(err)
	}
	close(exec.gate)
	controller.WaitFor(t, 20*time.Second, "the job cancelled", func() bool { return job(cs[0], id).Status == proto.StatusCancelled })
	commitErr, cause := exec.result(1)
	if !errors.Is(commitErr, worker.ErrNotCommitted) || !errors.Is(cause, worker.ErrCancelRequested) || exec.defined.Load() != 0 {
		t.Fatalf("commit %v, cause %v, %d defined; want not committed, cancelled, none", commitErr, cause, exec.defined.Load())
	}
	if j := job(cs[0], id); j.Commit != nil {
		t.Fatalf("cancelled job committed: %+v", j.Commit)
	}
}

// frontProxy forwards to a controller, except what the test makes hang: a silent network
// for heartbeats, and a commit that reaches the leader but whose answer is lost.
type frontProxy struct {
	*httptest.Server
	hangBeats, loseCommitAnswer atomic.Bool
	// silent: every request hangs (the agent is cut off).
	silent atomic.Bool
}

func newFrontProxy(t *testing.T, target string) *frontProxy {
	u, _ := url.Parse(target)
	fwd := httputil.NewSingleHostReverseProxy(u)
	quit := make(chan struct{})
	p := &frontProxy{}
	wait := func(r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-quit:
		}
	}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case p.silent.Load(), p.hangBeats.Load() && r.URL.Path == "/agent/v1/heartbeat":
			_, _ = io.Copy(io.Discard, r.Body)
			wait(r)
		case p.loseCommitAnswer.Load() && r.URL.Path == "/agent/v1/commit":
			fwd.ServeHTTP(httptest.NewRecorder(), r) // the leader commits; the answer is dropped
			wait(r)
		default:
			fwd.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(p.Close)
	t.Cleanup(func() { close(quit) })
	return p
}

// Once committed, the attempt is not fenced: its heartbeats go unanswered for longer than
// the TTL, yet it defines and completes (the leader holds a committed lease for the
// commit grace, not the TTL), once.
func TestCommittedAttemptIsNotFenced(t *testing.T) {
	const ttl = 2 * time.Second
	cs := startCluster(t, 1, ttl)
	front := newFrontProxy(t, cs[0].URL())
	exec := newCommitExec(2 * ttl)
	w, _, _ := startWorker(t, "committed", []string{front.URL}, 1, exec)

	id := submit(t, cs[0].URL(), "DC0/vm/committed")
	waitAttempt(t, exec, 1)
	close(exec.gate)
	controller.WaitFor(t, 10*time.Second, "committed", func() bool { return exec.defined.Load() == 1 })
	front.hangBeats.Store(true) // silent for 2 TTLs while the domain is "defined"
	controller.WaitFor(t, 30*time.Second, "the job ends", func() bool {
		s := job(cs[0], id).Status
		return s != proto.StatusRunning && s != proto.StatusPending
	})
	j := job(cs[0], id)
	if _, cause := exec.result(1); j.Status != proto.StatusCompleted || j.Attempt != 1 || cause != nil {
		t.Fatalf("job %s at attempt %d, attempt stopped by %v; want completed at attempt 1, never stopped", j.Status, j.Attempt, cause)
	}
	if got := w.Snapshot(); got.Fenced != 0 {
		t.Fatalf("a committed attempt was fenced (%d fenced)", got.Fenced)
	}
}

// The commit reaches the leader but its answer is lost, and the agent is cut off: it is
// fenced before it defines anything, deletes its disks, and, once it reaches a controller
// again, says so; the job then runs again at once instead of waiting out the grace.
func TestUnansweredCommitIsHandedBack(t *testing.T) {
	const ttl = 2 * time.Second
	cs := startCluster(t, 1, ttl)
	front := newFrontProxy(t, cs[0].URL())
	exec := newCommitExec(0)
	startWorker(t, "unsure", []string{front.URL}, 1, exec)

	id := submit(t, cs[0].URL(), "DC0/vm/unsure")
	waitAttempt(t, exec, 1)
	front.loseCommitAnswer.Store(true)
	front.hangBeats.Store(true)
	close(exec.gate)
	controller.WaitFor(t, 10*time.Second, "the leader committed attempt 1", func() bool {
		j := job(cs[0], id)
		return j.Commit != nil && j.Commit.Attempt == 1
	})
	controller.WaitFor(t, 3*ttl, "attempt 1 fenced", func() bool { _, cause := exec.result(1); return cause != nil })
	if commitErr, cause := exec.result(1); !errors.Is(commitErr, worker.ErrNotCommitted) || !errors.Is(cause, worker.ErrFenced) || exec.defined.Load() != 0 {
		t.Fatalf("commit %v, cause %v, %d defined; want not committed, fenced, none", commitErr, cause, exec.defined.Load())
	}
	front.hangBeats.Store(false)
	front.loseCommitAnswer.Store(false)
	// Far sooner than the 2-minute grace: the agent's report requeued it.
	controller.WaitFor(t, 30*time.Second, "the job completes at attempt 2", func() bool { return job(cs[0], id).Status == proto.StatusCompleted })
	if j := job(cs[0], id); j.Attempt != 2 || exec.defined.Load() != 1 {
		t.Fatalf("job completed at attempt %d with %d domains defined; want attempt 2, one", j.Attempt, exec.defined.Load())
	}
}

// A committed attempt whose agent is cut off for longer than the commit grace: the job is
// not run again (that could define the VM twice) but fails for the operator, naming the
// agent and the domain; the cut-off agent is not fenced, defines its domain, and keeps it
// when its report is refused.
func TestCommittedAttemptSilentPastTheGrace(t *testing.T) {
	const ttl, grace = time.Second, 4 * time.Second
	cs := startClusterGrace(t, 1, ttl, grace)
	front := newFrontProxy(t, cs[0].URL())
	exec := newCommitExec(grace + 2*ttl)
	w, _, _ := startWorker(t, "gone", []string{front.URL}, 1, exec)
	id := submit(t, cs[0].URL(), "DC0/vm/gone")
	waitAttempt(t, exec, 1)
	close(exec.gate)
	controller.WaitFor(t, 10*time.Second, "committed", func() bool { return exec.defined.Load() == 1 })
	front.silent.Store(true)
	cut := time.Now()
	controller.WaitFor(t, 30*time.Second, "the job ends", func() bool { return job(cs[0], id).Status != proto.StatusRunning })
	ended := time.Since(cut)
	j := job(cs[0], id)
	if j.Status != proto.StatusFailed || j.Attempt != 1 || j.Error == nil {
		t.Fatalf("job %s at attempt %d, want failed at attempt 1 (never run again)", j.Status, j.Attempt)
	}
	for _, want := range []string{"committed on agent gone", `"dom-` + id + `" on test:///default`, "resubmit"} {
		if !strings.Contains(*j.Error, want) {
			t.Errorf("job error %q does not say %q", *j.Error, want)
		}
	}
	// The grace counts from the last heartbeat, up to TTL/3 before the cut.
	if ended < grace-ttl {
		t.Errorf("the job ended %s after its committed agent went silent, before the %s grace", ended, grace)
	}
	// The agent finishes (it is not fenced) and its completion is refused: nothing more
	// happens to the job, and it was defined once.
	controller.WaitFor(t, 3*grace, "the agent gives up its report", func() bool { return w.Running() == 0 })
	if _, cause := exec.result(1); cause != nil || exec.defined.Load() != 1 || w.Snapshot().Completed != 0 {
		t.Fatalf("attempt stopped by %v, %d defined, %d completed; want never stopped, one, none", cause, exec.defined.Load(), w.Snapshot().Completed)
	}
	if j := job(cs[0], id); j.Status != proto.StatusFailed || j.Attempt != 1 {
		t.Fatalf("after the late report: %s at attempt %d", j.Status, j.Attempt)
	}
}
