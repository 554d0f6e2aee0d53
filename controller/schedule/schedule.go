// Package schedule fires the replicated schedules. It runs on the leader only (Run is
// registered with cluster.OnLeadership); the schedules themselves, and the fence against a
// double fire, live in controller/state.
//
// The rules (DESIGN.md "Schedules"):
//   - A firing is one raft entry, ScheduleFired{id, fire_time, jobs}: the jobs, last_run,
//     next_run and run_count change together or not at all.
//   - Apply refuses a fire_time not after the last one, so a new leader that re-proposes
//     a fire the old leader already committed changes nothing.
//   - next_run is computed in apply from the entry's time; a new leader that finds a
//     next_run in the past fires it once and moves on to the next future time (one
//     catch-up, not one per missed period).
//   - A vm_path glob in the template expands here, at fire time, to one job per VM.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Sentinel errors.
var (
	// ErrNoLister: the template's vm_path is a glob and this controller cannot list VMs.
	ErrNoLister = errors.New("vm_path is a pattern but this controller has no vSphere inventory lister to expand it")
	// ErrNoMatch: the glob matched no VM.
	ErrNoMatch = errors.New("vm_path pattern matched no VM")
	// ErrTooManyJobs: the glob matched more VMs than one firing may create.
	ErrTooManyJobs = errors.New("too many jobs for one firing")
)

// DefaultMaxJobsPerFire is Config.MaxJobsPerFire's default.
const DefaultMaxJobsPerFire = 500

// VMLister lists the VMs of a vSphere inventory matching a path glob ("DC0/vm/prod/*"),
// returning their inventory paths. The controller wires one backed by shared/vsphere.
type VMLister interface {
	ListVMs(ctx context.Context, source proto.Source, glob string) ([]string, error)
}

// Applier commits commands (the raft node).
type Applier interface {
	Apply(cmd []byte) (any, error)
}

// Clock tells the time. Tests inject a fake one to cross minute boundaries without waiting.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now().UTC() }

// Config tunes the scheduler. Zero values mean the defaults.
type Config struct {
	// Poll is the longest the loop sleeps between two looks at the schedules (it also
	// wakes on any schedule change and at the earliest next_run).
	Poll time.Duration
	// ListTimeout bounds one glob expansion against vCenter.
	ListTimeout time.Duration
	// MaxAttempts is stamped into jobs whose template does not set options.max_attempts.
	MaxAttempts int
	// MaxJobsPerFire caps the jobs one firing may create (default 500): a glob that
	// matches more fails the run with the count, rather than flooding the cluster.
	MaxJobsPerFire int
	// Lister expands vm_path globs (nil: a glob template fails its run with ErrNoLister).
	Lister VMLister
	// Validate runs pre-flight validation on a run's jobs (nil: none; validate.go).
	Validate Validate
	Logger   *slog.Logger
}

func (c *Config) fill() {
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.ListTimeout <= 0 {
		c.ListTimeout = 30 * time.Second
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = state.DefaultMaxAttempts
	}
	if c.MaxJobsPerFire <= 0 {
		c.MaxJobsPerFire = DefaultMaxJobsPerFire
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Scheduler fires due schedules while its node leads.
type Scheduler struct {
	cfg   Config
	log   *slog.Logger
	st    *state.State
	apply Applier
	clock atomic.Pointer[Clock]
	kick  chan struct{}
	// passes counts completed looks at the schedules (tests wait for one after moving the
	// clock, instead of sleeping).
	passes atomic.Uint64
	// fireMu serialises firings: the loop and a manual trigger never expand at once.
	fireMu sync.Mutex
	newID  func() string
}

// New builds a scheduler over the replicated state.
func New(cfg Config, st *state.State, apply Applier) *Scheduler {
	cfg.fill()
	s := &Scheduler{cfg: cfg, log: cfg.Logger.With("component", "scheduler"), st: st, apply: apply,
		kick: make(chan struct{}, 1), newID: uuid.NewString}
	var c Clock = realClock{}
	s.clock.Store(&c)
	return s
}

// SetClock replaces the clock (tests). Safe while running.
func (s *Scheduler) SetClock(c Clock) {
	s.clock.Store(&c)
	s.Kick()
}

// Kick makes the loop look at the schedules now.
func (s *Scheduler) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Passes is the number of completed looks at the schedules.
func (s *Scheduler) Passes() uint64 { return s.passes.Load() }

func (s *Scheduler) now() time.Time { return (*s.clock.Load()).Now().UTC() }

// Run fires due schedules until ctx ends (leadership lost or shutdown).
func (s *Scheduler) Run(ctx context.Context) {
	s.log.Info("scheduler started")
	defer s.log.Info("scheduler stopped")
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wait := s.pass(ctx)
		s.passes.Add(1)
		if ctx.Err() != nil {
			return
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.kick:
		case <-s.st.ScheduleSignal():
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// pass fires every due schedule and returns how long to sleep until the next one is due.
func (s *Scheduler) pass(ctx context.Context) time.Duration {
	now := s.now()
	wait := s.cfg.Poll
	for _, sc := range s.st.Schedules() {
		if ctx.Err() != nil {
			return wait
		}
		if !sc.Enabled || sc.NextRun == nil {
			continue
		}
		if sc.NextRun.After(now) {
			wait = min(wait, sc.NextRun.Sub(now))
			continue
		}
		if _, err := s.fire(ctx, sc, *sc.NextRun, false); err != nil && !errors.Is(err, state.ErrStaleFire) {
			s.log.Warn("schedule fire not recorded", "schedule", sc.ID, "fire_time", sc.NextRun, "err", err)
			// Not recorded (e.g. leadership lost): look again soon, not in a tight loop.
			wait = min(wait, s.cfg.Poll)
		}
	}
	return max(wait, time.Millisecond)
}

// Trigger runs a schedule now, outside its cron times (POST /schedules/{id}/trigger).
// Leader only. An expansion failure is recorded as a failed run and returned in Error.
func (s *Scheduler) Trigger(ctx context.Context, id string) (state.ScheduleRunResult, error) {
	sc, ok := s.st.Schedule(id)
	if !ok {
		return state.ScheduleRunResult{}, fmt.Errorf("schedule %s: %w", id, state.ErrNotFound)
	}
	return s.fire(ctx, sc, s.now(), true)
}

// fire expands the template and commits the run.
func (s *Scheduler) fire(ctx context.Context, sc proto.Schedule, fireTime time.Time, manual bool) (state.ScheduleRunResult, error) {
	s.fireMu.Lock()
	defer s.fireMu.Unlock()
	now := s.now()
	cmd := state.ScheduleFired{ID: sc.ID, FireTime: fireTime, Manual: manual, At: now}
	jobs, err := s.jobs(ctx, sc, now)
	if err != nil {
		cmd.Error = err.Error()
	} else {
		cmd.Jobs = jobs
	}
	s.validate(ctx, sc, &cmd)
	v, err := s.apply.Apply(state.MustEncode(state.CmdScheduleFired, cmd))
	if err != nil {
		return state.ScheduleRunResult{}, err
	}
	res := v.(state.ScheduleRunResult)
	s.log.Info("schedule fired", "schedule", sc.ID, "run", res.Run, "manual", manual,
		"fire_time", fireTime, "jobs", len(res.JobIDs), "error", res.Error)
	return res, nil
}

// jobs builds the run's jobs: one per VM the template's vm_path names, each checked as
// a direct submit would be (a VM whose name makes an unusable path fails the run rather
// than becoming a job for another inventory object), at most MaxJobsPerFire of them.
func (s *Scheduler) jobs(ctx context.Context, sc proto.Schedule, now time.Time) ([]proto.JobDefinition, error) {
	t := sc.JobTemplate
	paths, err := s.expand(ctx, t)
	if err != nil {
		return nil, err
	}
	if len(paths) > s.cfg.MaxJobsPerFire {
		return nil, fmt.Errorf("%w: vm_path %s matched %d VMs, more than scheduler.max_jobs_per_fire (%d): narrow the pattern or raise the limit",
			ErrTooManyJobs, t.VMPath, len(paths), s.cfg.MaxJobsPerFire)
	}
	jobs := make([]proto.JobDefinition, 0, len(paths))
	for _, p := range paths {
		d := t
		d.ID = s.newID()
		d.VMPath = p
		d.CreatedAt = now
		d.ScheduleID = sc.ID
		if d.Name == "" {
			d.Name = sc.Name
		}
		if d.Options.MaxAttempts == 0 {
			d.Options.MaxAttempts = s.cfg.MaxAttempts
		}
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("vm_path %s: matched VM %q cannot become a job: %w", t.VMPath, p, err)
		}
		jobs = append(jobs, d)
	}
	return jobs, nil
}

// expand turns the template's vm_path into the VM paths of the run.
func (s *Scheduler) expand(ctx context.Context, t proto.JobDefinition) ([]string, error) {
	if !proto.IsVMPathGlob(t.VMPath) {
		return []string{t.VMPath}, nil
	}
	if s.cfg.Lister == nil {
		return nil, fmt.Errorf("%w (%s)", ErrNoLister, t.VMPath)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ListTimeout)
	defer cancel()
	paths, err := s.cfg.Lister.ListVMs(ctx, t.Source, t.VMPath)
	if err != nil {
		// The lister's error must not carry the password (shared/vsphere never includes
		// it); it is stored as the run's error and shown by the API.
		return nil, fmt.Errorf("expand vm_path %s: %w", t.VMPath, err)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoMatch, t.VMPath)
	}
	return paths, nil
}
