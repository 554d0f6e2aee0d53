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
