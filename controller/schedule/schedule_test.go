package schedule

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func setup(t *testing.T, vmPath string) (*Scheduler, *state.State, *clock, *state.LocalApplier) {
	st := state.New()
	a := state.NewLocalApplier(st)
	start := time.Date(2026, 1, 17, 10, 0, 30, 0, time.UTC)
	tpl := proto.JobDefinition{VMPath: vmPath, Source: proto.Source{Type: "vsphere", VCenterURL: "127.0.0.1:1", Username: "u", Password: "pw"}, Destination: proto.Destination{Type: "kvm"}}
	expr := "* * * * *"
	if _, err := a.Apply(state.MustEncode(state.CmdScheduleUpsert, state.ScheduleUpsert{ID: "s", Create: true, Schedule: &expr, JobTemplate: &tpl, At: start})); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Poll: 10 * time.Millisecond}, st, a)
	clk := &clock{t: start}
	s.SetClock(clk)
	return s, st, clk, a
}

func TestPassFiresDueSchedulesOnce(t *testing.T) {
	s, st, clk, _ := setup(t, "DC0/vm/web-1")
	ctx := context.Background()
	cases := []struct {
		name string
		now  time.Time
		runs int
	}{
		{"not due", time.Date(2026, 1, 17, 10, 0, 59, 0, time.UTC), 0},
		{"due", time.Date(2026, 1, 17, 10, 1, 0, 0, time.UTC), 1},
		{"same minute again", time.Date(2026, 1, 17, 10, 1, 30, 0, time.UTC), 1},
		{"ten minutes later: one catch-up", time.Date(2026, 1, 17, 10, 11, 5, 0, time.UTC), 2},
		{"next minute", time.Date(2026, 1, 17, 10, 12, 0, 0, time.UTC), 3},
	}
	for _, tc := range cases {
		clk.Set(tc.now)
		wait := s.pass(ctx)
		sc, _ := st.Schedule("s")
		if sc.RunCount != tc.runs {
			t.Fatalf("%s: run_count %d, want %d", tc.name, sc.RunCount, tc.runs)
		}
		if !sc.NextRun.After(tc.now) || wait > time.Minute {
			t.Fatalf("%s: next_run %v not after now %v (wait %v)", tc.name, sc.NextRun, tc.now, wait)
		}
	}
	var jobs []*proto.Job
	st.Jobs(proto.StatusPending, func(j *proto.Job) bool { jobs = append(jobs, j); return true })
	if len(jobs) != 3 || jobs[0].Definition.ScheduleID != "s" || jobs[0].Definition.Options.MaxAttempts != state.DefaultMaxAttempts {
		t.Fatalf("jobs %+v", jobs)
	}
}

func TestGlobWithoutListerFailsTheRun(t *testing.T) {
	s, st, _, _ := setup(t, "DC0/vm/prod-*")
	res, err := s.Trigger(context.Background(), "s")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Error, ErrNoLister.Error()) || len(res.JobIDs) != 0 {
		t.Fatalf("result %+v", res)
	}
	sc, _ := st.Schedule("s")
	if sc.RunCount != 1 || sc.FailedRuns != 1 || !strings.Contains(sc.LastError, "prod-*") {
		t.Fatalf("schedule %+v", sc)
	}
	if _, err := s.Trigger(context.Background(), "nope"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("unknown schedule: %v", err)
	}
}

func TestRunStopsWithLeadership(t *testing.T) {
	s, st, clk, _ := setup(t, "DC0/vm/web-1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	clk.Set(time.Date(2026, 1, 17, 10, 1, 0, 0, time.UTC))
	s.Kick()
	deadline := time.After(5 * time.Second)
	for sc, _ := st.Schedule("s"); sc.RunCount != 1; sc, _ = st.Schedule("s") {
		select {
		case <-deadline:
			t.Fatal("Run did not fire the due schedule")
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop when its context ended")
	}
}

// inventory is a VMLister over a fixed list of inventory paths (the real vSphere lister is
// exercised against the simulator in controller/events_test.go).
type inventory []string

func (inv inventory) ListVMs(ctx context.Context, src proto.Source, glob string) ([]string, error) {
	return inv, nil
}

// Issue 18: a glob had no cap (12,000 jobs from four firings) and its jobs skipped the
// checks of a direct submit (a VM named ".." became vm_path "DC0").
func TestExpansionIsCappedAndValidated(t *testing.T) {
	many := make(inventory, 501)
	for i := range many {
		many[i] = "DC0/vm/prod-" + strings.Repeat("x", i%7) + string(rune('a'+i%26))
	}
	cases := []struct {
		name    string
		inv     inventory
		max     int
		jobs    int
		errWant string
	}{
		{"at the default cap", many[:500], 0, 500, ""},
		{"over the default cap", many, 0, 0, "matched 501 VMs, more than scheduler.max_jobs_per_fire (500)"},
		{"over a configured cap", many[:3], 2, 0, "matched 3 VMs, more than scheduler.max_jobs_per_fire (2)"},
		{"a VM named ..", inventory{"DC0/vm/prod-1", "DC0/vm/.."}, 0, 0, `matched VM "DC0/vm/.." cannot become a job`},
		{"a VM named .", inventory{"DC0/vm/."}, 0, 0, `"." segment`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, st, _, _ := setup(t, "DC0/vm/prod-*")
			s.cfg.Lister = tc.inv
			if tc.max > 0 {
				s.cfg.MaxJobsPerFire = tc.max
			}
			res, err := s.Trigger(context.Background(), "s")
			if err != nil {
				t.Fatal(err)
			}
			if len(res.JobIDs) != tc.jobs || (tc.errWant == "") != (res.Error == "") || !strings.Contains(res.Error, tc.errWant) {
				t.Fatalf("run: %d jobs, error %q; want %d jobs, error containing %q", len(res.JobIDs), res.Error, tc.jobs, tc.errWant)
			}
			if n := st.Counts()[proto.StatusPending]; n != tc.jobs {
				t.Fatalf("%d jobs stored, want %d", n, tc.jobs)
			}
			st.Jobs(proto.StatusPending, func(j *proto.Job) bool {
				if j.Definition.VMPath == "DC0" || !strings.HasPrefix(j.Definition.VMPath, "DC0/vm/prod-") {
					t.Fatalf("job for %q", j.Definition.VMPath)
				}
				return true
			})
		})
	}
}
