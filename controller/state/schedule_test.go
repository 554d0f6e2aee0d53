package state

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

func ptr[T any](v T) *T { return &v }

func tmpl() *proto.JobDefinition {
	d := def("")
	d.ID, d.CreatedAt, d.VMPath = "", time.Time{}, "DC0/vm/web-1"
	return &d
}

// masked is the test template with the password mask and one change.
func masked(change func(d *proto.JobDefinition)) *proto.JobDefinition {
	d := tmpl()
	d.Source.Password = proto.RedactedPassword
	change(d)
	return d
}

func createSched(id, expr string, at time.Time) ScheduleUpsert {
	return ScheduleUpsert{ID: id, Create: true, Name: ptr("nightly"), Schedule: ptr(expr), JobTemplate: tmpl(), At: at}
}

func fired(id string, fire, at time.Time, jobIDs ...string) ScheduleFired {
	c := ScheduleFired{ID: id, FireTime: fire, At: at}
	for _, j := range jobIDs {
		d := def(j)
		d.CreatedAt = at
		c.Jobs = append(c.Jobs, d)
	}
	return c
}

func TestScheduleUpsert(t *testing.T) {
	at := time.Date(2026, 1, 17, 10, 30, 0, 0, time.UTC)
	cases := []struct {
		name    string
		cmd     ScheduleUpsert
		wantErr error
		check   func(t *testing.T, s proto.Schedule)
	}{
		{"create computes next_run in UTC", createSched("a", "0 2 * * *", at), nil, func(t *testing.T, s proto.Schedule) {
			if !s.Enabled || s.NextRun == nil || !s.NextRun.Equal(time.Date(2026, 1, 18, 2, 0, 0, 0, time.UTC)) || s.LastRun != nil {
				t.Fatalf("schedule %+v next %v", s, s.NextRun)
			}
		}},
		{"duplicate id", createSched("a", "* * * * *", at), ErrExists, nil},
		{"update unknown", ScheduleUpsert{ID: "zz", Name: ptr("x"), At: at}, ErrNotFound, nil},
		{"invalid cron", ScheduleUpsert{ID: "a", Schedule: ptr("61 * * * *"), At: at}, proto.ErrInvalid, nil},
		{"six fields", ScheduleUpsert{ID: "a", Schedule: ptr("0 0 2 * * *"), At: at}, proto.ErrInvalid, nil},
		{"create without template", ScheduleUpsert{ID: "b", Create: true, Schedule: ptr("* * * * *"), At: at}, ErrBadCommand, nil},
		{"create with the mask", ScheduleUpsert{ID: "c", Create: true, Schedule: ptr("* * * * *"), At: at,
			JobTemplate: func() *proto.JobDefinition { d := tmpl(); d.Source.Password = proto.RedactedPassword; return d }()}, proto.ErrInvalid, nil},
		{"disable clears next_run", ScheduleUpsert{ID: "a", Enabled: ptr(false), At: at}, nil, func(t *testing.T, s proto.Schedule) {
			if s.Enabled || s.NextRun != nil {
				t.Fatalf("disabled schedule %+v", s)
			}
		}},
		{"enable starts from now", ScheduleUpsert{ID: "a", Enabled: ptr(true), At: at.Add(48 * time.Hour)}, nil, func(t *testing.T, s proto.Schedule) {
			if s.NextRun == nil || !s.NextRun.Equal(time.Date(2026, 1, 20, 2, 0, 0, 0, time.UTC)) {
				t.Fatalf("next %v", s.NextRun)
			}
		}},
		{"masked template keeps the password", ScheduleUpsert{ID: "a", At: at, JobTemplate: func() *proto.JobDefinition {
			d := tmpl()
			d.VMPath = "DC0/vm/other"
			d.Source.Password = proto.RedactedPassword
			return d
		}()}, nil, func(t *testing.T, s proto.Schedule) {
			if s.JobTemplate.Source.Password != "secret" || s.JobTemplate.VMPath != "DC0/vm/other" {
				t.Fatalf("template %+v", s.JobTemplate)
			}
		}},
		// Issue 18: the mask kept the sealed password when vcenter_url changed, so the leader
		// sent it to the new host.
		{"mask with another vcenter_url is refused", ScheduleUpsert{ID: "a", At: at, MaskKeepsSource: true,
			JobTemplate: masked(func(d *proto.JobDefinition) { d.Source.VCenterURL = "https://capture.example:443/sdk" })}, proto.ErrInvalid,
			func(t *testing.T, s proto.Schedule) {
				if s.JobTemplate.Source.VCenterURL != "127.0.0.1:8989" || s.JobTemplate.Source.Password != "secret" {
					t.Fatalf("template changed by a refused update: %+v", s.JobTemplate.Source)
				}
			}},
		{"mask with another username is refused", ScheduleUpsert{ID: "a", At: at, MaskKeepsSource: true,
			JobTemplate: masked(func(d *proto.JobDefinition) { d.Source.Username = "root" })}, proto.ErrInvalid, nil},
		{"mask with the same vCenter spelled out keeps the password", ScheduleUpsert{ID: "a", At: at, MaskKeepsSource: true,
			JobTemplate: masked(func(d *proto.JobDefinition) { d.Source.VCenterURL = "https://127.0.0.1:8989/sdk" })}, nil,
			func(t *testing.T, s proto.Schedule) {
				if s.JobTemplate.Source.Password != "secret" || s.JobTemplate.Source.VCenterURL != "https://127.0.0.1:8989/sdk" {
					t.Fatalf("template %+v", s.JobTemplate.Source)
				}
			}},
		{"another vcenter_url with its password", ScheduleUpsert{ID: "a", At: at, MaskKeepsSource: true,
			JobTemplate: func() *proto.JobDefinition {
				d := tmpl()
				d.Source.VCenterURL, d.Source.Password = "vc2.example", "other"
				return d
			}()}, nil,
			func(t *testing.T, s proto.Schedule) {
				if s.JobTemplate.Source.Password != "other" {
					t.Fatalf("template %+v", s.JobTemplate.Source)
				}
			}},
		{"an entry of an older leader is applied as it always was", ScheduleUpsert{ID: "a", At: at,
			JobTemplate: masked(func(d *proto.JobDefinition) { d.Source.VCenterURL = "vc3.example" })}, nil,
			func(t *testing.T, s proto.Schedule) {
				if s.JobTemplate.Source.Password != "other" || s.JobTemplate.Source.VCenterURL != "vc3.example" {
					t.Fatalf("template %+v", s.JobTemplate.Source)
				}
			}},
		{"new expression recomputes", ScheduleUpsert{ID: "a", Schedule: ptr("*/15 * * * *"), At: at}, nil, func(t *testing.T, s proto.Schedule) {
			if s.NextRun == nil || !s.NextRun.Equal(at.Add(15*time.Minute)) || s.Name != "nightly" {
				t.Fatalf("schedule %+v next %v", s, s.NextRun)
			}
		}},
		{"time zone prefix", ScheduleUpsert{ID: "a", Schedule: ptr("CRON_TZ=America/New_York 0 2 * * *"), At: at}, nil, func(t *testing.T, s proto.Schedule) {
			if s.NextRun == nil || s.NextRun.Hour() != 7 {
				t.Fatalf("next %v, want 07:00 UTC", s.NextRun)
			}
		}},
	}
	a := newApplier(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := a.do(CmdScheduleUpsert, tc.cmd)
			err, _ := r.(error)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", r, tc.wantErr)
			}
			if tc.check != nil {
				s, ok := a.s.Schedule(tc.cmd.ID)
				if !ok {
					t.Fatal("schedule missing")
				}
				tc.check(t, s)
			}
		})
	}
	if r := a.do(CmdScheduleDelete, ScheduleDelete{ID: "a"}); r != nil {
		t.Fatalf("delete: %v", r)
	}
	if r := a.do(CmdScheduleDelete, ScheduleDelete{ID: "a"}); !errors.Is(r.(error), ErrNotFound) {
		t.Fatalf("second delete: %v", r)
	}
}

func TestScheduleFiredOnceAcrossRetries(t *testing.T) {
	at := time.Date(2026, 1, 17, 10, 0, 30, 0, time.UTC)
	m1 := time.Date(2026, 1, 17, 10, 1, 0, 0, time.UTC)
	a := newApplier(t)
	a.ok(CmdScheduleUpsert, createSched("s", "* * * * *", at))
	sub := a.s.Subscribe(64)

	res := a.ok(CmdScheduleFired, fired("s", m1, m1.Add(time.Second), "j1")).(ScheduleRunResult)
	if res.Run != 1 || len(res.JobIDs) != 1 {
		t.Fatalf("result %+v", res)
	}
	// The same fire again (a new leader re-proposing it) and an older one are refused, and
	// nothing of them is applied: no job, no run.
	for _, c := range []ScheduleFired{fired("s", m1, m1.Add(2*time.Second), "j2"), fired("s", m1.Add(-time.Minute), m1, "j3")} {
		if r := a.do(CmdScheduleFired, c); !errors.Is(r.(error), ErrStaleFire) || !errors.Is(r.(error), ErrInvalidState) {
			t.Fatalf("stale fire: %v", r)
		}
	}
	for _, id := range []string{"j2", "j3"} {
		if _, ok := a.s.Job(id); ok {
			t.Fatalf("a refused fire created job %s", id)
		}
	}
	s, _ := a.s.Schedule("s")
	if s.RunCount != 1 || !s.LastRun.Equal(m1) || !s.NextRun.Equal(m1.Add(time.Minute)) {
		t.Fatalf("after fire: run_count %d last %v next %v", s.RunCount, s.LastRun, s.NextRun)
	}
	j1 := a.job("j1")
	if j1.Definition.ScheduleID != "s" || j1.Status != proto.StatusPending {
		t.Fatalf("job %+v", j1)
	}

	// A leader that was away for five minutes catches up once: next_run moves past now.
	late := m1.Add(5*time.Minute + 10*time.Second)
	a.ok(CmdScheduleFired, fired("s", m1.Add(time.Minute), late, "j4"))
	s, _ = a.s.Schedule("s")
	if s.RunCount != 2 || !s.NextRun.Equal(m1.Add(6*time.Minute)) {
		t.Fatalf("catch-up: run_count %d next %v", s.RunCount, s.NextRun)
	}

	// A manual run does not move next_run and is not fenced by fire time.
	a.ok(CmdScheduleFired, ScheduleFired{ID: "s", FireTime: at, Manual: true, At: late, Jobs: []proto.JobDefinition{def("j5")}})
	s, _ = a.s.Schedule("s")
	if s.RunCount != 3 || !s.NextRun.Equal(m1.Add(6*time.Minute)) || !s.LastRun.Equal(late) {
		t.Fatalf("manual: %+v", s)
	}

	// A disabled schedule does not fire (a fire proposed just before the disable committed).
	a.ok(CmdScheduleUpsert, ScheduleUpsert{ID: "s", Enabled: ptr(false), At: late})
	if r := a.do(CmdScheduleFired, fired("s", m1.Add(10*time.Minute), late, "j6")); !errors.Is(r.(error), ErrInvalidState) {
		t.Fatalf("disabled fire: %v", r)
	}
	// Unknown schedule; duplicate job ids refuse the whole run.
	if r := a.do(CmdScheduleFired, fired("nope", m1, m1)); !errors.Is(r.(error), ErrNotFound) {
		t.Fatalf("unknown: %v", r)
	}
	a.ok(CmdScheduleUpsert, ScheduleUpsert{ID: "s", Enabled: ptr(true), At: late})
	if r := a.do(CmdScheduleFired, fired("s", m1.Add(10*time.Minute), late, "j7", "j1")); !errors.Is(r.(error), ErrExists) {
		t.Fatalf("duplicate job: %v", r)
	}
	if s2, _ := a.s.Schedule("s"); s2.RunCount != 3 {
		t.Fatalf("a refused run counted: %d", s2.RunCount)
	}
	var kinds []EventKind
	for len(sub.C) > 0 {
		ev := <-sub.C
		kinds = append(kinds, ev.Kind)
	}
	want := []EventKind{EventJobSubmitted, EventScheduleTriggered, EventJobSubmitted, EventScheduleTriggered, EventJobSubmitted, EventScheduleTriggered}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
}

func TestScheduleRunOutcomes(t *testing.T) {
	at := time.Date(2026, 1, 17, 10, 0, 0, 0, time.UTC)
	a := newApplier(t)
	a.ok(CmdScheduleUpsert, createSched("s", "* * * * *", at))
	sub := a.s.Subscribe(256)
	finish := func(id string, ok bool) {
		a.ok(CmdLeaseGrant, LeaseGrant{tok(id, 1), "ag", at})
		if ok {
			a.ok(CmdComplete, CompleteReport{LeaseToken: tok(id, 1), At: at})
		} else {
			a.ok(CmdFail, FailReport{LeaseToken: tok(id, 1), Error: "disk full", At: at})
		}
	}
	// Run 1: both jobs complete → successful. Run 2: one fails → failed. Run 3: expansion
	// failed → failed at once. Run 4: a cancelled job → failed. Run 5 stays open.
	a.ok(CmdScheduleFired, fired("s", at.Add(1*time.Minute), at.Add(1*time.Minute), "r1a", "r1b"))
	finish("r1a", true)
	if st := a.s.ScheduleStats(); st.SuccessfulRuns != 0 || st.RunningRuns != 1 {
		t.Fatalf("half-finished run counted: %+v", st)
	}
	finish("r1b", true)
	a.ok(CmdScheduleFired, fired("s", at.Add(2*time.Minute), at.Add(2*time.Minute), "r2a", "r2b"))
	finish("r2a", false)
	finish("r2b", true)
	a.ok(CmdScheduleFired, ScheduleFired{ID: "s", FireTime: at.Add(3 * time.Minute), At: at.Add(3 * time.Minute), Error: "vCenter unreachable"})
	a.ok(CmdScheduleFired, fired("s", at.Add(4*time.Minute), at.Add(4*time.Minute), "r4"))
	a.ok(CmdCancelJobs, CancelJobs{JobIDs: []string{"r4"}, At: at})
	a.ok(CmdScheduleFired, fired("s", at.Add(5*time.Minute), at.Add(5*time.Minute), "r5"))

	st := a.s.ScheduleStats()
	want := proto.ScheduleStats{TotalSchedules: 1, EnabledSchedules: 1, TotalRuns: 5, SuccessfulRuns: 1, FailedRuns: 3, RunningRuns: 1}
	if st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	if trig, succ, fail := a.s.ScheduleRunCounters(); trig != 5 || succ != 1 || fail != 3 {
		t.Fatalf("counters %d %d %d", trig, succ, fail)
	}
	s, _ := a.s.Schedule("s")
	if s.LastError == "" {
		t.Fatal("no last_error after failed runs")
	}
	var got []string
	for len(sub.C) > 0 {
		ev := <-sub.C
		if ev.Schedule != nil {
			got = append(got, fmt.Sprintf("%d:%s", ev.Schedule.Run, ev.Schedule.Event))
		}
	}
	wantEv := "[1:triggered 1:completed 2:triggered 2:failed 3:triggered 3:failed 4:triggered 4:failed 5:triggered]"
	if fmt.Sprint(got) != wantEv {
		t.Fatalf("schedule events %v, want %s", got, wantEv)
	}
	// Deleting the schedule keeps the cluster-wide counters (they are Prometheus counters).
	a.ok(CmdScheduleDelete, ScheduleDelete{ID: "s"})
	finish("r5", true)
	if trig, succ, _ := a.s.ScheduleRunCounters(); trig != 5 || succ != 2 {
		t.Fatalf("counters after delete: %d %d", trig, succ)
	}
}
