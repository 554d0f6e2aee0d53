// Package worker is the agent's lease loop: it long-polls controllers for jobs, runs each
// with the executor (the migration pipeline), renews leases by heartbeat, relays progress
// at most once a second, stops work that was cancelled or whose lease is lost, and fences
// itself when it cannot renew for a TTL.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// Why a job's context was cancelled (context.Cause).
var (
	// ErrCancelRequested: an operator cancelled the job; clean up and report "cancelled".
	ErrCancelRequested = errors.New("job cancelled by request")
	// ErrLeaseLost: the controller gave the job to someone else; stop without reporting.
	ErrLeaseLost = errors.New("lease lost")
	// ErrFenced: no heartbeat got through for a whole TTL; the lease may already be
	// someone else's, so stop before the controller could hand the job out again.
	ErrFenced = errors.New("lease not renewed within its TTL; stopped by self-fencing")
	// ErrShuttingDown: the agent stops; the job is handed back for another agent.
	ErrShuttingDown = errors.New("agent shutting down")
	// ErrDrained: an operator drains this agent; the job is handed back to run elsewhere.
	ErrDrained = errors.New("agent drained")
	// ErrRetryable wraps executor errors worth another attempt (possibly elsewhere).
	ErrRetryable = errors.New("retryable")
	// ErrNotCommitted: the leader did not commit the attempt (Reporter.Commit): it must
	// not define anything; its disks go.
	ErrNotCommitted = errors.New("attempt not committed")
)

// Retryable marks err as worth another attempt. The message stays err's own: it becomes
// the job's error, which an operator reads.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return retryableError{err}
}

type retryableError struct{ err error }

func (e retryableError) Error() string   { return e.err.Error() }
func (e retryableError) Unwrap() []error { return []error{ErrRetryable, e.err} }

// Reporter is how an executor reports on its job.
type Reporter interface {
	// Progress records the latest progress; it is sent at most once a second.
	Progress(p proto.Progress)
	// Warn adds a warning to the job (sent with the next report).
	Warn(msg string)
	// Commit is the commit point (DESIGN.md "Leases" 8): it asks the leader to commit this
	// attempt as the one that defines the job's domain (domain on libvirtURI, named for
	// the operator) and must have returned nil before the executor defines anything on
	// the host. It retries while no controller answers, until ctx ends (the fence ends it
	// when that lasts). An error (wrapping ErrNotCommitted) means: define nothing, delete
	// this attempt's disks, return; ctx is then cancelled with the cause (lease lost,
	// cancelled) when there is one. Once committed, the attempt is no longer fenced: no
	// other attempt can take the job, and the leader waits for its report for a grace.
	Commit(ctx context.Context, domain, libvirtURI string) error
}

// Executor runs one leased job. It must stop promptly when ctx is cancelled, clean up
// after itself (child processes, partial files), and return ctx's error then.
type Executor interface {
	Run(ctx context.Context, lease proto.Lease, r Reporter) (*proto.JobResult, error)
}

// Config configures a worker. Zero values mean defaults.
type Config struct {
	Name        string
	Controllers []string
	// Token is the join token: it only enrols this agent's own credential.
	Token string
	// CredentialFile keeps the agent's credential across restarts (empty: in memory only,
	// so a restarted process cannot enrol under its name again).
	CredentialFile string
	MaxJobs        int
	// Probe returns the current capacity and capabilities sent with each lease request.
	Probe func() (proto.AgentCapacity, proto.AgentCapabilities)
	// ShutdownGrace is how long running jobs may finish after a stop before they are
	// handed back.
	ShutdownGrace time.Duration
	// WaitSeconds is the long-poll duration asked for.
	WaitSeconds int
	// OnChange is called when the number of running jobs changes (gossip metadata).
	OnChange func(running int)
	// AttemptLog, when set, receives one JSON line when the executor starts an attempt and
	// one when it has returned (its processes stopped, its cleanup done): the record an
	// audit, or a test, needs to show that no job ran on two agents at once.
	AttemptLog io.Writer
	// ControllerGrace is how long lease requests may fail before ControllersError says no
	// controller answers (default 10 s: a leader election is not an outage).
	ControllerGrace time.Duration
	// UnhealthyWait is how long the lease loop waits before probing again while a health
	// check other than the controllers' fails (default 2 s).
	UnhealthyWait time.Duration
	Logger        *slog.Logger
}

func (c *Config) fill() error {
	if c.Name == "" {
		return errors.New("worker: agent name is required")
	}
	if len(c.Controllers) == 0 {
		return errors.New("worker: at least one controller URL is required")
	}
	if c.MaxJobs <= 0 {
		c.MaxJobs = 2
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	if c.WaitSeconds <= 0 {
		c.WaitSeconds = 20
	}
	if c.ControllerGrace <= 0 {
		c.ControllerGrace = 10 * time.Second
	}
	if c.UnhealthyWait <= 0 {
		c.UnhealthyWait = 2 * time.Second
	}
	if c.Probe == nil {
		c.Probe = func() (proto.AgentCapacity, proto.AgentCapabilities) {
			return proto.AgentCapacity{}, proto.AgentCapabilities{}
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// running is one job in progress.
type running struct {
	lease  proto.Lease
	cancel context.CancelCauseFunc
	// renewedAt: send time of the last heartbeat that renewed this lease (or arrival of the
	// grant). The leader's expiry is at least TTL after a renewal's send time.
	renewedAt time.Time
	done      chan struct{}
	rep       *reporter
	// committed: the leader committed this attempt (Reporter.Commit); grace is how long
	// it waits for the attempt's report after the last heartbeat.
	committed bool
	grace     time.Duration
}

// Worker is the agent's job loop.
type Worker struct {
	cfg  Config
	log  *slog.Logger
	exec Executor
	c    *client

	mu   sync.Mutex
	jobs map[string]*running // by job id
	ttl  time.Duration
	slot chan struct{} // signalled when a job ends (a slot may be free)
	wg   sync.WaitGroup

	stats Stats

	// leaseFailSince is when lease requests started failing (zero: the last one was
	// answered), leaseErr the last failure.
	leaseMu        sync.Mutex
	leaseFailSince time.Time
	leaseErr       error

	attemptMu sync.Mutex // one line per Write to AttemptLog
}

// AttemptRecord is one line of Config.AttemptLog.
type AttemptRecord struct {
	Time    time.Time `json:"time"`
	Agent   string    `json:"agent"`
	JobID   string    `json:"job_id"`
	Attempt int       `json:"attempt"`
	// Event is "start", "commit" or "end".
	Event string `json:"event"`
	// Outcome of an end: completed, failed, cancelled, lease_lost, fenced, shutting_down.
	// Of a commit: committed, refused (409: the lease moved on), cancelled, or abandoned
	// (the attempt stopped before any controller answered).
	Outcome string `json:"outcome,omitempty"`
	Error   string `json:"error,omitempty"`
	// Output is what a hook printed (events hook_pre and hook_post, hooklog.go).
	Output string `json:"output,omitempty"`
}

func (w *Worker) recordAttempt(at time.Time, tok proto.LeaseToken, event, outcome string, err error) {
	if w.cfg.AttemptLog == nil {
		return
	}
	rec := AttemptRecord{Time: at.UTC(), Agent: w.cfg.Name, JobID: tok.JobID, Attempt: tok.Attempt, Event: event, Outcome: outcome}
	if err != nil {
		rec.Error = err.Error()
	}
	w.writeAttempt(rec)
}

func (w *Worker) writeAttempt(rec AttemptRecord) {
	if w.cfg.AttemptLog == nil {
		return
	}
	b, _ := json.Marshal(rec)
	w.attemptMu.Lock()
	defer w.attemptMu.Unlock()
	if _, werr := w.cfg.AttemptLog.Write(append(b, '\n')); werr != nil {
		w.log.Warn("attempt log write failed", "err", werr)
	}
}

// Stats are counters for the agent's /metrics.
type Stats struct {
	mu                                       sync.Mutex
	Leased, Completed, Failed, Cancelled     int
	LeaseLost, Fenced, HandedBack, Heartbeat int
}

// New returns a worker.
func New(cfg Config, exec Executor) (*Worker, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	w := &Worker{
		cfg: cfg, log: cfg.Logger.With("component", "worker", "agent", cfg.Name), exec: exec,
		c: newClient(cfg.Controllers, cfg.Token, nil), jobs: map[string]*running{},
		ttl: 15 * time.Second, slot: make(chan struct{}, 1),
	}
	w.c.id = identity{name: cfg.Name, file: cfg.CredentialFile, log: w.log}
	return w, nil
}

// Running returns how many jobs run now.
func (w *Worker) Running() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.jobs)
}

// Snapshot returns the counters.
func (w *Worker) Snapshot() Stats {
	w.stats.mu.Lock()
	defer w.stats.mu.Unlock()
	return Stats{Leased: w.stats.Leased, Completed: w.stats.Completed, Failed: w.stats.Failed,
		Cancelled: w.stats.Cancelled, LeaseLost: w.stats.LeaseLost, Fenced: w.stats.Fenced,
		HandedBack: w.stats.HandedBack, Heartbeat: w.stats.Heartbeat}
}

func (w *Worker) count(f func(s *Stats)) {
	w.stats.mu.Lock()
	f(&w.stats)
	w.stats.mu.Unlock()
}

// Run leases and runs jobs until ctx ends, then shuts down gracefully: no new leases,
// running jobs get ShutdownGrace to finish, the rest are handed back.
func (w *Worker) Run(ctx context.Context) error {
	hbCtx, stopHB := context.WithCancel(context.Background())
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		w.heartbeatLoop(hbCtx)
	}()

	w.leaseLoop(ctx)

	// Graceful stop.
	w.log.Info("stopping: no new leases", "running", w.Running(), "grace", w.cfg.ShutdownGrace)
	deadline := time.NewTimer(w.cfg.ShutdownGrace)
	defer deadline.Stop()
	idle := make(chan struct{})
	go func() { w.wg.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-deadline.C:
		w.mu.Lock()
		for _, r := range w.jobs {
			r.cancel(ErrShuttingDown)
		}
		w.mu.Unlock()
		<-idle
	}
	stopHB()
	<-hbDone
	return nil
}

func (w *Worker) leaseLoop(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		if w.Running() >= w.cfg.MaxJobs {
			select {
			case <-ctx.Done():
				return
			case <-w.slot:
			}
			continue
		}
		capacity, caps := w.cfg.Probe()
		if blocking := hostProblems(capacity); blocking != "" {
			// Ask for no work this host cannot do: a broken libvirt used to lease a job,
			// copy every disk, then fail at define (issue 17). The controllers check is
			// not blocking: a lease request is how the agent finds a controller again.
			select {
			case <-ctx.Done():
				return
			case <-time.After(w.cfg.UnhealthyWait):
			}
			continue
		}
		req := proto.LeaseRequest{
			Agent: w.cfg.Name, Capacity: capacity, Capabilities: caps,
			RunningJobs: w.Running(), MaxJobs: w.cfg.MaxJobs, WaitSeconds: w.cfg.WaitSeconds,
			WarmCopies: w.keptCopies(),
		}
		var resp proto.LeaseResponse
		err := w.c.post(ctx, "/agent/v1/lease", req, &resp, time.Duration(w.cfg.WaitSeconds+10)*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.log.Warn("lease request failed", "err", err)
			w.noteLease(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
		w.noteLease(nil)
		if resp.Lease != nil {
			// The fence clock starts now, not when the long-poll was sent: the grant may
			// have come 20 s into the poll, and the leader's timer started at the grant.
			// The 20% fence margin covers the response's flight time.
			w.start(*resp.Lease, time.Now())
		}
		w.discard(resp.Discard)
	}
}

// hostProblems names the failed health checks that keep this host from work ("" when
// none does).
func hostProblems(c proto.AgentCapacity) string {
	var out []string
	for _, f := range c.FailedChecks {
		if f != proto.HealthCheckControllers {
			out = append(out, f)
		}
	}
	return strings.Join(out, ",")
}

func (w *Worker) noteLease(err error) {
	w.leaseMu.Lock()
	defer w.leaseMu.Unlock()
	w.leaseErr = err
	switch {
	case err == nil:
		w.leaseFailSince = time.Time{}
	case w.leaseFailSince.IsZero():
		w.leaseFailSince = time.Now()
	}
}

// ControllersError says why no controller answers the agent's lease requests, once they
// have failed for longer than ControllerGrace (nil while one answers).
func (w *Worker) ControllersError() error {
	w.leaseMu.Lock()
	defer w.leaseMu.Unlock()
	if w.leaseFailSince.IsZero() || time.Since(w.leaseFailSince) < w.cfg.ControllerGrace {
		return nil
	}
	return fmt.Errorf("lease requests to %s have failed for %s: %w", strings.Join(w.cfg.Controllers, ", "),
		time.Since(w.leaseFailSince).Round(time.Second), w.leaseErr)
}

func (w *Worker) start(l proto.Lease, received time.Time) {
	ctx, cancel := context.WithCancelCause(context.Background())
	r := &running{lease: l, cancel: cancel, renewedAt: received, done: make(chan struct{})}
	r.rep = newReporter(w, l.LeaseToken, cancel)
	w.mu.Lock()
	if l.TTLSeconds > 0 {
		w.ttl = time.Duration(l.TTLSeconds * float64(time.Second))
	}
	w.jobs[l.JobID] = r
	n := len(w.jobs)
	w.mu.Unlock()
	w.count(func(s *Stats) { s.Leased++ })
	w.log.Info("leased job", "job", l.JobID, "attempt", l.Attempt, "vm", l.Definition.VMPath)
	if w.cfg.OnChange != nil {
		w.cfg.OnChange(n)
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.runJob(ctx, r)
	}()
}

func (w *Worker) runJob(ctx context.Context, r *running) {
	defer close(r.done)
	tok := r.lease.LeaseToken
	w.recordAttempt(time.Now(), tok, "start", "", nil)
	res, err := w.exec.Run(ctx, r.lease, r.rep)
	// The attempt's work ends here; stopping the reporter may wait for a progress report
	// in flight, which is not work on the job.
	ended := time.Now()
	r.rep.stop()
	cause := context.Cause(ctx)
	how := outcome(err, ctx.Err(), cause)
	w.recordAttempt(ended, tok, "end", how, err)
	log := w.log.With("job", tok.JobID, "attempt", tok.Attempt)
	warnings := r.rep.warnings()
	var rerr error
	switch how {
	case "completed":
		rerr = w.c.postRetry(context.Background(), "/agent/v1/complete",
			proto.CompleteRequest{LeaseToken: tok, Agent: w.cfg.Name, Result: res, Progress: r.rep.final(), Warnings: warnings}, nil, w.completeDeadline(r))
		if rerr == nil {
			log.Info("job completed")
			w.count(func(s *Stats) { s.Completed++ })
		} else if w.isCommitted(r) {
			// The controllers gave the job to the operator (the commit grace ran out) or
			// could not be reached for that long: the job's error tells the operator to
			// look for this domain here, so it stays.
			log.Error("the completed attempt's report was not accepted: its domain stays on this host for the operator",
				"domain", res.DomainName, "err", rerr)
		}
	case "lease_lost":
		log.Warn("job stopped: lease lost to the controller")
		w.count(func(s *Stats) { s.LeaseLost++ })
	case "fenced":
		log.Warn("job stopped: self-fenced (controllers unreachable for a TTL)")
		w.count(func(s *Stats) { s.Fenced++ })
		if r.rep.commitUnsure() || w.isCommitted(r) {
			// A commit request was sent and never answered (or answered just as the fence
			// stopped the attempt, which a committed attempt's define checks first): it may
			// have been committed, and then no other attempt takes the job until the commit
			// grace runs out. The attempt defined nothing and deleted its disks: say so, so
			// that the job runs again at once if that commit did land (409 otherwise).
			rerr = w.c.postRetry(context.Background(), "/agent/v1/fail",
				proto.FailRequest{LeaseToken: tok, Agent: w.cfg.Name, Retryable: true, Warnings: warnings,
					Error: fmt.Sprintf("agent %s lost the controllers at the commit point: nothing defined, its disks deleted", w.cfg.Name)},
				nil, w.reportDeadline())
			if errors.Is(rerr, ErrStale) {
				rerr = nil // not committed after all: the lease had moved on
			}
		}
	case "cancelled":
		rerr = w.c.postRetry(context.Background(), "/agent/v1/fail",
			proto.FailRequest{LeaseToken: tok, Agent: w.cfg.Name, Error: "cancelled by request", Cancelled: true, Warnings: warnings}, nil, w.reportDeadline())
		log.Info("job cancelled and cleaned up")
		w.count(func(s *Stats) { s.Cancelled++ })
	case "shutting_down":
		rerr = w.c.postRetry(context.Background(), "/agent/v1/fail",
			proto.FailRequest{LeaseToken: tok, Agent: w.cfg.Name, Error: fmt.Sprintf("agent %s shut down during the job", w.cfg.Name), Retryable: true, Warnings: warnings}, nil, w.reportDeadline())
		log.Info("job handed back (shutdown)")
		w.count(func(s *Stats) { s.HandedBack++ })
	case "drained":
		rerr = w.c.postRetry(context.Background(), "/agent/v1/fail",
			proto.FailRequest{LeaseToken: tok, Agent: w.cfg.Name, Error: fmt.Sprintf("agent %s is drained: job handed back", w.cfg.Name), Retryable: true, Warnings: warnings}, nil, w.reportDeadline())
		log.Info("job handed back (agent drained)")
		w.count(func(s *Stats) { s.HandedBack++ })
	default:
		if err == nil {
			err = ctx.Err()
		}
		rerr = w.c.postRetry(context.Background(), "/agent/v1/fail",
			proto.FailRequest{LeaseToken: tok, Agent: w.cfg.Name, Error: err.Error(), Retryable: errors.Is(err, ErrRetryable), Warnings: warnings}, nil, w.reportDeadline())
		log.Warn("job failed", "err", err)
		w.count(func(s *Stats) { s.Failed++ })
	}
	if rerr != nil {
		log.Warn("final report not accepted", "err", rerr)
	}
	w.mu.Lock()
	// While this attempt's report was retried, the lease may have expired and the next
	// attempt of the job been granted to this agent: that one is not ours to drop (it
	// would no longer be renewed nor fenced).
	if w.jobs[tok.JobID] == r {
		delete(w.jobs, tok.JobID)
	}
	n := len(w.jobs)
	w.mu.Unlock()
	if w.cfg.OnChange != nil {
		w.cfg.OnChange(n)
	}
	select {
	case w.slot <- struct{}{}:
	default:
	}
}

// outcome names how an attempt ended, in the terms of the report runJob sends.
func outcome(err, ctxErr, cause error) string {
	switch {
	case err == nil && ctxErr == nil:
		return "completed"
	case errors.Is(cause, ErrLeaseLost):
		return "lease_lost"
	case errors.Is(cause, ErrFenced):
		return "fenced"
	case errors.Is(cause, ErrCancelRequested):
		return "cancelled"
	case errors.Is(cause, ErrShuttingDown):
		return "shutting_down"
	case errors.Is(cause, ErrDrained):
		return "drained"
	}
	return "failed"
}

// reportDeadline bounds retries of a final report: beyond about a TTL the lease has
// expired anyway and the report would be refused.
func (w *Worker) reportDeadline() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return 2 * w.ttl
}

// completeDeadline bounds retries of a completion: a committed attempt's lease lives for
// the commit grace after its last heartbeat, so its report is worth retrying that long.
func (w *Worker) completeDeadline(r *running) time.Duration {
	d := w.reportDeadline()
	w.mu.Lock()
	defer w.mu.Unlock()
	if r.committed {
		d = max(d, r.grace+w.ttl)
	}
	return d
}

func (w *Worker) isCommitted(r *running) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return r.committed
}

// heartbeatLoop renews every lease each TTL/3 and checks the fence ten times per TTL.
func (w *Worker) heartbeatLoop(ctx context.Context) {
	var lastBeat time.Time
	// The heartbeat runs beside the loop, one at a time: in a partition it hangs for its
	// whole timeout (TTL/3), and the fence checks must go on meanwhile, or the job runs
	// past 80% of its TTL, up to past the lease itself (test/partition_test.go saw both
	// agents copy one job).
	inFlight := make(chan struct{}, 1)
	var beats sync.WaitGroup
	defer beats.Wait()
	for {
		w.mu.Lock()
		ttl := w.ttl
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(ttl / 10):
		}
		if time.Since(lastBeat) >= ttl/3 {
			select {
			case inFlight <- struct{}{}:
				lastBeat = time.Now()
				beats.Add(1)
				go func() {
					defer beats.Done()
					defer func() { <-inFlight }()
					w.heartbeat(ctx)
				}()
			default: // the previous heartbeat still waits for its answer
			}
		}
		w.fence()
	}
}

// fenceFraction of the TTL after the last renewal a job is stopped: the leader expires the
// lease no earlier than a full TTL after it received that renewal, so stopping at 80%
// leaves time to kill child processes before the job can be leased to someone else.
const fenceFraction = 0.8

func (w *Worker) fence() {
	w.mu.Lock()
	defer w.mu.Unlock()
	limit := time.Duration(float64(w.ttl) * fenceFraction)
	for _, r := range w.jobs {
		// A committed attempt is not fenced: no other attempt can take its job (the
		// leader holds it for the commit grace, then gives it to the operator), and
		// stopping it half-way through define would only leave less for the operator.
		if r.committed {
			continue
		}
		if time.Since(r.renewedAt) > limit {
			r.cancel(ErrFenced)
		}
	}
}

func (w *Worker) heartbeat(ctx context.Context) {
	w.mu.Lock()
	ttl := w.ttl
	var toks []proto.LeaseToken
	for _, r := range w.jobs {
		toks = append(toks, r.lease.LeaseToken)
	}
	w.mu.Unlock()
	if len(toks) == 0 {
		return
	}
	sent := time.Now()
	var resp proto.HeartbeatResponse
	err := w.c.post(ctx, "/agent/v1/heartbeat", proto.HeartbeatRequest{Agent: w.cfg.Name, Leases: toks}, &resp, ttl/3)
	w.count(func(s *Stats) { s.Heartbeat++ })
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		if resp.TTLSeconds > 0 {
			w.ttl = time.Duration(resp.TTLSeconds * float64(time.Second))
		}
		stop := map[string]error{}
		for _, t := range resp.Lost {
			stop[t.JobID] = ErrLeaseLost
		}
		for _, t := range resp.HandBack {
			stop[t.JobID] = ErrDrained
		}
		for _, t := range resp.Cancel {
			stop[t.JobID] = ErrCancelRequested
		}
		for _, t := range resp.Cutover {
			if r, ok := w.jobs[t.JobID]; ok && r.lease.Attempt == t.Attempt {
				r.rep.cutover()
			}
		}
		for _, t := range toks {
			r, ok := w.jobs[t.JobID]
			if !ok || r.lease.Attempt != t.Attempt {
				continue
			}
			if cause, bad := stop[t.JobID]; bad {
				r.cancel(cause)
				if cause == ErrLeaseLost {
					continue
				}
			}
			r.renewedAt = sent
		}
	} else {
		w.log.Warn("heartbeat failed", "err", err)
	}
}

// reporter coalesces progress and sends it at most once a second.
type reporter struct {
	w      *Worker
	tok    proto.LeaseToken
	cancel context.CancelCauseFunc

	mu      sync.Mutex
	latest  *proto.Progress // not yet sent
	last    *proto.Progress // the executor's last report, sent or not
	warns   []string
	pending []string // warnings not yet sent
	// unsure: a commit request was sent and no answer came back (Commit).
	unsure bool
	kick   chan struct{}
	quit   chan struct{}
	done   chan struct{}
	// cut is closed when the controller asks for a warm job's cutover (warm.go).
	cut     chan struct{}
	cutOnce sync.Once
}

func newReporter(w *Worker, tok proto.LeaseToken, cancel context.CancelCauseFunc) *reporter {
	r := &reporter{w: w, tok: tok, cancel: cancel, kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		cut: make(chan struct{})}
	go r.loop()
	return r
}

func (r *reporter) Progress(p proto.Progress) {
	r.mu.Lock()
	r.latest, r.last = &p, &p
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *reporter) Warn(msg string) {
	r.mu.Lock()
	r.warns = append(r.warns, msg)
	r.pending = append(r.pending, msg)
	r.mu.Unlock()
}

// Commit asks the leader to commit the attempt (Reporter.Commit).
func (r *reporter) Commit(ctx context.Context, domain, libvirtURI string) error {
	req := proto.CommitRequest{LeaseToken: r.tok, Agent: r.w.cfg.Name, Domain: domain, LibvirtURI: libvirtURI}
	backoff := 100 * time.Millisecond
	for {
		var resp proto.CommitResponse
		r.setUnsure(true)
		err := r.w.c.post(ctx, "/agent/v1/commit", req, &resp, 10*time.Second)
		if err == nil || !errors.Is(err, ErrUnavailable) {
			r.setUnsure(false) // an answer came
		}
		switch {
		case err == nil && resp.Committed:
			r.w.committed(r.tok, time.Duration(resp.GraceSeconds*float64(time.Second)))
			return nil
		case err == nil:
			r.w.recordAttempt(time.Now(), r.tok, "commit", "cancelled", nil)
			r.cancel(ErrCancelRequested)
			return fmt.Errorf("%w: %s", ErrNotCommitted, resp.Message)
		case errors.Is(err, ErrStale):
			r.w.recordAttempt(time.Now(), r.tok, "commit", "refused", err)
			r.cancel(ErrLeaseLost)
			return fmt.Errorf("%w: %v", ErrNotCommitted, err)
		case !errors.Is(err, ErrUnavailable):
			r.w.recordAttempt(time.Now(), r.tok, "commit", "refused", err)
			return fmt.Errorf("%w: %v", ErrNotCommitted, err)
		}
		r.w.log.Warn("commit not answered; retrying", "job", r.tok.JobID, "attempt", r.tok.Attempt, "err", err)
		select {
		case <-ctx.Done():
			r.w.recordAttempt(time.Now(), r.tok, "commit", "abandoned", context.Cause(ctx))
			return fmt.Errorf("%w: no controller answered before the attempt stopped (%v): %v", ErrNotCommitted, context.Cause(ctx), err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

func (r *reporter) setUnsure(v bool) {
	r.mu.Lock()
	r.unsure = v
	r.mu.Unlock()
}

// commitUnsure: the attempt sent a commit request that was never answered.
func (r *reporter) commitUnsure() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unsure
}

// committed marks the attempt committed: no longer fenced, its completion retried for
// the grace.
func (w *Worker) committed(tok proto.LeaseToken, grace time.Duration) {
	w.mu.Lock()
	if r, ok := w.jobs[tok.JobID]; ok && r.lease.Attempt == tok.Attempt {
		r.committed, r.grace = true, grace
	}
	w.mu.Unlock()
	w.recordAttempt(time.Now(), tok, "commit", "committed", nil)
	w.log.Info("attempt committed: defining its domain", "job", tok.JobID, "attempt", tok.Attempt, "grace", grace)
}

func (r *reporter) warnings() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.warns...)
}

// final is the executor's last progress, for the completion report: reports are paced
// at one a second, so the last one is often still unsent when the job ends.
func (r *reporter) final() *proto.Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

func (r *reporter) stop() {
	close(r.quit)
	<-r.done
}

func (r *reporter) loop() {
	defer close(r.done)
	var last time.Time
	for {
		select {
		case <-r.quit:
			return
		case <-r.kick:
		}
		if wait := time.Second - time.Since(last); wait > 0 {
			select {
			case <-r.quit:
				return
			case <-time.After(wait):
			}
		}
		r.mu.Lock()
		p, warns := r.latest, r.pending
		r.latest, r.pending = nil, nil
		r.mu.Unlock()
		if p == nil {
			continue
		}
		last = time.Now()
		var resp proto.ReportResponse
		err := r.w.c.post(context.Background(), "/agent/v1/progress",
			proto.ProgressRequest{LeaseToken: r.tok, Agent: r.w.cfg.Name, Progress: *p, Warnings: warns}, &resp, 5*time.Second)
		switch {
		case errors.Is(err, ErrStale):
			r.cancel(ErrLeaseLost)
		case err != nil:
			r.mu.Lock()
			r.pending = append(warns, r.pending...) // resend warnings with the next report
			r.mu.Unlock()
		case resp.Cancel:
			r.cancel(ErrCancelRequested)
		}
	}
}
