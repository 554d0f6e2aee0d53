package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
)

// lockedBuffer is an io.Writer the test can read while the worker writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) records(t *testing.T) []worker.AttemptRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []worker.AttemptRecord
	for _, line := range bytes.Split(bytes.TrimSpace(l.b.Bytes()), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r worker.AttemptRecord
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("attempt log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// TestAttemptLog: every attempt leaves a "start" line and, once the executor has returned,
// an "end" line with its outcome; one JSON object per line.
func TestAttemptLog(t *testing.T) {
	cs := startCluster(t, 1, 2*time.Second)
	exec := newExec(false)
	var log lockedBuffer
	runLoggedWorker(t, cs, "agent-log", exec, &log)

	id := submit(t, cs[0].URL(), "DC0/vm/logged")
	controller.WaitFor(t, 10*time.Second, "start recorded", func() bool { return len(log.records(t)) == 1 })
	exec.finish(id)
	controller.WaitFor(t, 10*time.Second, "end recorded", func() bool { return len(log.records(t)) == 2 })
	recs := log.records(t)
	start, end := recs[0], recs[1]
	if start.Event != "start" || start.JobID != id || start.Attempt != 1 || start.Agent != "agent-log" {
		t.Errorf("start record %+v", start)
	}
	if end.Event != "end" || end.JobID != id || end.Attempt != 1 || end.Outcome != "completed" || end.Time.Before(start.Time) {
		t.Errorf("end record %+v (start %s)", end, start.Time)
	}
}

// hookExec runs a "hook" through the reporter and completes.
type hookExec struct{}

func (hookExec) Run(ctx context.Context, l proto.Lease, r worker.Reporter) (*proto.JobResult, error) {
	r.(worker.HookLogger).HookRan("pre", "ok", "freeze window open\n")
	return &proto.JobResult{DomainName: "x"}, nil
}

// TestAttemptLogHooks: a hook's outcome and output are a line of the attempt log, between
// the attempt's start and end.
func TestAttemptLogHooks(t *testing.T) {
	cs := startCluster(t, 1, 2*time.Second)
	var log lockedBuffer
	runLoggedWorker(t, cs, "agent-hooklog", hookExec{}, &log)
	id := submit(t, cs[0].URL(), "DC0/vm/hooked")
	controller.WaitFor(t, 10*time.Second, "end recorded", func() bool { return len(log.records(t)) == 3 })
	recs := log.records(t)
	if h := recs[1]; h.Event != "hook_pre" || h.JobID != id || h.Outcome != "ok" || h.Output != "freeze window open\n" {
		t.Fatalf("records %+v", recs)
	}
}

// runLoggedWorker runs a worker writing its attempt log to log until the test ends.
func runLoggedWorker(t *testing.T, cs []*controller.Controller, name string, exec worker.Executor, log *lockedBuffer) {
	t.Helper()
	w, err := worker.New(worker.Config{Name: name, Controllers: urls(cs), MaxJobs: 2, WaitSeconds: 2,
		ShutdownGrace: time.Second, AttemptLog: log, Logger: controller.TestLogger(t)}, exec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}
