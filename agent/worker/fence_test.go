package worker_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
)

// stopExec runs every job until its context ends and reports when and why.
type stopExec struct{ stopped chan error }

func (e *stopExec) Run(ctx context.Context, l proto.Lease, r worker.Reporter) (*proto.JobResult, error) {
	<-ctx.Done()
	e.stopped <- context.Cause(ctx)
	return nil, ctx.Err()
}

// TestFenceWhileHeartbeatHangs: in a partition that drops packets, a heartbeat hangs for
// its whole timeout; the fence must still stop the job at 80% of the TTL after the last
// renewal, not when the hanging heartbeats give up (which came after the leader could
// already have given the job to another agent).
func TestFenceWhileHeartbeatHangs(t *testing.T) {
	const ttl = 3 * time.Second
	cs := startCluster(t, 1, ttl)
	target, _ := url.Parse(cs[0].URL())
	fwd := httputil.NewSingleHostReverseProxy(target)
	var hang atomic.Bool
	quit := make(chan struct{})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hang.Load() {
			// A silent network: no answer, no error, until the client gives up.
			_, _ = io.Copy(io.Discard, r.Body) // lets the server notice the client leaving
			select {
			case <-r.Context().Done():
			case <-quit:
			}
			return
		}
		fwd.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	t.Cleanup(func() { close(quit) })

	exec := &stopExec{stopped: make(chan error, 1)}
	w, err := worker.New(worker.Config{Name: "cut-off", Controllers: []string{front.URL}, MaxJobs: 1, WaitSeconds: 1,
		Logger: controller.TestLogger(t)}, exec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	id := submit(t, cs[0].URL(), "DC0/vm/fenced")
	controller.WaitFor(t, 10*time.Second, "running", func() bool { return job(cs[0], id).Status == proto.StatusRunning })
	// Let a few heartbeats renew the lease, then go silent.
	time.Sleep(ttl / 2) // the condition is the passage of time itself
	hang.Store(true)
	silent := time.Now()
	select {
	case cause := <-exec.stopped:
		took := time.Since(silent)
		if !errors.Is(cause, worker.ErrFenced) {
			t.Fatalf("stopped by %v, want the fence", cause)
		}
		// The last renewal was at most TTL/3 before the silence: the fence is due by
		// 0.8 TTL after it, checked every TTL/10.
		if limit := time.Duration(0.8*float64(ttl)) + ttl/10 + 200*time.Millisecond; took > limit {
			t.Errorf("fenced %s after the controllers went silent, want at most %s (the lease ends %s after the last renewal)", took, limit, ttl)
		}
		t.Logf("fenced %s after the controllers went silent (TTL %s)", took.Round(10*time.Millisecond), ttl)
	case <-time.After(3 * ttl):
		t.Fatal("the job was never fenced")
	}
}

// TestLateReportKeepsTheNewAttempt: an attempt finishes while the controllers do not
// answer its report; meanwhile its lease expires and the same agent is granted the next
// attempt of the job. When the old report finally gives up, the new attempt must stay
// tracked (heartbeats, fence): dropping it let its lease expire while it ran, and a third
// attempt ran beside it.
func TestLateReportKeepsTheNewAttempt(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	cs := startCluster(t, 1, ttl)
	target, _ := url.Parse(cs[0].URL())
	fwd := httputil.NewSingleHostReverseProxy(target)
	var hangBeats, hangReports atomic.Bool
	quit := make(chan struct{})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case hangBeats.Load() && r.URL.Path == "/agent/v1/heartbeat",
			hangReports.Load() && (r.URL.Path == "/agent/v1/complete" || r.URL.Path == "/agent/v1/progress"):
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-quit:
			}
			return
		}
		fwd.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	t.Cleanup(func() { close(quit) })

	exec := &firstEndsExec{release: make(chan struct{})}
	w, err := worker.New(worker.Config{Name: "slow-reporter", Controllers: []string{front.URL}, MaxJobs: 2, WaitSeconds: 1, ShutdownGrace: 100 * time.Millisecond,
		Logger: controller.TestLogger(t)}, exec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	id := submit(t, cs[0].URL(), "DC0/vm/late-report")
	controller.WaitFor(t, 10*time.Second, "attempt 1 running", func() bool { return job(cs[0], id).Status == proto.StatusRunning })
	// Attempt 1 finishes but nothing it sends is answered; its lease runs out.
	hangBeats.Store(true)
	hangReports.Store(true)
	close(exec.release)
	controller.WaitFor(t, 20*time.Second, "attempt 2 granted to the same agent", func() bool {
		j := job(cs[0], id)
		return j.Attempt == 2 && j.Status == proto.StatusRunning
	})
	// The network heals for heartbeats; attempt 1's report still hangs until it gives up.
	hangBeats.Store(false)
	time.Sleep(15 * time.Second) // past attempt 1's report deadline, then several TTLs: the condition is time passing
	j := job(cs[0], id)
	if j.Attempt != 2 || j.Status != proto.StatusRunning {
		t.Errorf("job is %s at attempt %d: attempt 2 lost its lease while it ran", j.Status, j.Attempt)
	}
	if exec.overlap.Load() {
		t.Error("two attempts of the job ran at once on the agent")
	}
}

// firstEndsExec finishes attempt 1 when release is closed; later attempts run until
// stopped. It notes two attempts running at once.
type firstEndsExec struct {
	release chan struct{}
	active  atomic.Int32
	overlap atomic.Bool
}

func (e *firstEndsExec) Run(ctx context.Context, l proto.Lease, r worker.Reporter) (*proto.JobResult, error) {
	if e.active.Add(1) > 1 {
		e.overlap.Store(true)
	}
	defer e.active.Add(-1)
	if l.Attempt == 1 {
		select {
		case <-e.release:
			return &proto.JobResult{DomainName: "first"}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	<-ctx.Done()
	return nil, ctx.Err()
}
