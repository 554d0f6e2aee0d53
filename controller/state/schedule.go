package state

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// ErrStaleFire: a ScheduleFired whose fire time is not after the schedule's last scheduled
// fire. It is how a failover never fires a schedule twice: the new leader may propose a
// fire the old one already committed, and apply refuses the second.
var ErrStaleFire = fmt.Errorf("%w: schedule already fired at or after that time", ErrInvalidState)

// ScheduleUpsert creates (Create) or changes a schedule. On update only the non-nil fields
// change; a JobTemplate whose password is the mask keeps the stored password. next_run is
// computed here from At, so every node derives the same value.
type ScheduleUpsert struct {
	ID          string               `json:"id"`
	Create      bool                 `json:"create,omitempty"`
	Name        *string              `json:"name,omitempty"`
	Description *string              `json:"description,omitempty"`
	Schedule    *string              `json:"schedule,omitempty"`
	Enabled     *bool                `json:"enabled,omitempty"`
	JobTemplate *proto.JobDefinition `json:"job_template,omitempty"`
	// MaskKeepsSource (set by leaders since issue 18) lets the mask keep the stored
	// password only for the same vcenter_url and username: a template that points the
	// password at another host or user must carry it again. Older entries lack it and are
	// applied as they always were, the same on every controller version.
	MaskKeepsSource bool      `json:"mask_keeps_source,omitempty"`
	At              time.Time `json:"at"`
}

// ScheduleDelete removes a schedule. Runs in progress keep being tracked to their end.
type ScheduleDelete struct {
	ID string `json:"id"`
}

// ScheduleFired records one run of a schedule and creates its jobs, in one entry. The
// leader expanded the template (a vm_path glob becomes one job per VM) and stamped the
// jobs' ids and times. Error set means the expansion failed: the run is recorded as failed
// with no jobs. Manual runs (POST /schedules/{id}/trigger) do not move next_run and are
// not subject to the fire-time check.
type ScheduleFired struct {
	ID       string                `json:"id"`
	FireTime time.Time             `json:"fire_time"`
	Manual   bool                  `json:"manual,omitempty"`
	Jobs     []proto.JobDefinition `json:"jobs,omitempty"`
	Error    string                `json:"error,omitempty"`
	At       time.Time             `json:"at"`
	// Concerns by job id: the pre-flight findings of the jobs created (none critical).
	Concerns map[string][]proto.Concern `json:"concerns,omitempty"`
	// Refused are the VMs the firing did not create a job for, because validation found a
	// critical concern; the run's outcome names them.
	Refused []proto.ValidationResult `json:"refused,omitempty"`
}

// ScheduleRunResult is the response of an applied ScheduleFired.
type ScheduleRunResult struct {
	ScheduleID string
	Run        int
	JobIDs     []string
	Error      string
}

// scheduleRecord is a stored schedule. s is immutable: apply swaps in a modified copy.
type scheduleRecord struct {
	seq uint64
	s   *proto.Schedule
	// lastFire is the fire time of the last scheduled (not manual) run: the fence against a
	// second fire of the same time.
	lastFire time.Time
}

// runRecord tracks a run until every job it created has ended.
type runRecord struct {
	ScheduleID string    `json:"schedule_id"`
	Run        int       `json:"run"`
	Manual     bool      `json:"manual,omitempty"`
	JobIDs     []string  `json:"job_ids"`
	Pending    int       `json:"pending"`
	Failed     bool      `json:"failed,omitempty"`
	Started    time.Time `json:"started"`
}

func runKey(scheduleID string, run int) string { return fmt.Sprintf("%s#%d", scheduleID, run) }

// nextRun is the first activation of expr strictly after t (nil: never, or invalid).
// Evaluated in UTC unless the expression names a zone (CRON_TZ=), so it is deterministic.
func nextRun(expr string, t time.Time) *time.Time {
	sched, err := proto.ParseStoredCron(expr)
	if err != nil {
		return nil
	}
	n := sched.Next(t.UTC())
	if n.IsZero() {
		return nil
	}
	n = n.UTC()
	return &n
}

func (s *State) applyScheduleUpsert(c ScheduleUpsert) any {
	if c.ID == "" {
		return fmt.Errorf("%w: schedule without id", ErrBadCommand)
	}
	if c.Schedule != nil {
		if _, err := proto.ParseStoredCron(*c.Schedule); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := s.sw
	rec, exists := sw.schedules[c.ID]
	var ns proto.Schedule
	switch {
	case c.Create && exists:
		return fmt.Errorf("schedule %s: %w", c.ID, ErrExists)
	case c.Create:
		if c.Schedule == nil || c.JobTemplate == nil {
			return fmt.Errorf("%w: schedule create without schedule or job_template", ErrBadCommand)
		}
		ns = proto.Schedule{ID: c.ID, Enabled: true, CreatedAt: c.At}
	case !exists:
		return fmt.Errorf("schedule %s: %w", c.ID, ErrNotFound)
	default:
		ns = *rec.s
	}
	recompute := c.Create
	if c.Name != nil {
		ns.Name = *c.Name
	}
	if c.Description != nil {
		ns.Description = *c.Description
	}
	if c.Schedule != nil {
		recompute = recompute || ns.Schedule != *c.Schedule
		ns.Schedule = *c.Schedule
	}
	if c.Enabled != nil {
		recompute = recompute || ns.Enabled != *c.Enabled
		ns.Enabled = *c.Enabled
	}
	if c.JobTemplate != nil {
		t := *c.JobTemplate
		if t.Source.Password == proto.RedactedPassword {
			if !exists {
				return fmt.Errorf("%w: job_template.source.password is the redaction mask", proto.ErrInvalid)
			}
			old := rec.s.JobTemplate.Source
			if c.MaskKeepsSource && !sameSource(old, t.Source) {
				return fmt.Errorf("%w: job_template.source.password is the mask, but vcenter_url or username changed: "+
					"send the password for the new vCenter or user", proto.ErrInvalid)
			}
			t.Source.Password = old.Password
		}
		ns.JobTemplate = t
	}
	if recompute {
		// Enabling starts from now: runs missed while disabled are not caught up.
		ns.NextRun = nil
		if ns.Enabled {
			ns.NextRun = nextRun(ns.Schedule, c.At)
		}
	}
	ns.UpdatedAt = c.At
	if !exists {
		sw.schedSeq++
		rec = &scheduleRecord{seq: sw.schedSeq}
		sw.schedules[c.ID] = rec
	}
	rec.s = &ns
	sw.signal(sw.scheduleCh)
	out := ns
	return &out
}

// sameSource reports whether a stored password may stay with a changed template: the same
// vCenter (compared as the SDK URL it resolves to) and the same user.
func sameSource(old, cur proto.Source) bool {
	if old.Username != cur.Username {
		return false
	}
	a, errA := proto.ParseVCenterURL(old.VCenterURL)
	b, errB := proto.ParseVCenterURL(cur.VCenterURL)
	if errA != nil || errB != nil {
		return old.VCenterURL == cur.VCenterURL
	}
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host) && a.Path == b.Path
}

func (s *State) applyScheduleDelete(c ScheduleDelete) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sw.schedules[c.ID]; !ok {
		return fmt.Errorf("schedule %s: %w", c.ID, ErrNotFound)
	}
	delete(s.sw.schedules, c.ID)
	s.sw.signal(s.sw.scheduleCh)
	return nil
}

func (s *State) applyScheduleFired(idx uint64, c ScheduleFired) any {
	s.mu.RLock()
	rec, ok := s.sw.schedules[c.ID]
	var lastFire time.Time
	var enabled bool
	if ok {
		lastFire, enabled = rec.lastFire, rec.s.Enabled
	}
	s.mu.RUnlock()
	switch {
	case !ok:
		return fmt.Errorf("schedule %s: %w", c.ID, ErrNotFound)
	case !c.Manual && !c.FireTime.After(lastFire):
		return fmt.Errorf("schedule %s at %s: %w", c.ID, c.FireTime.Format(time.RFC3339), ErrStaleFire)
	case !c.Manual && !enabled:
		return fmt.Errorf("schedule %s is disabled: %w", c.ID, ErrInvalidState)
	}
	for i := range c.Jobs {
		c.Jobs[i].ScheduleID = c.ID
	}
	if len(c.Jobs) > 0 {
		// Creates every job or none (duplicate ids are refused before anything changes).
		if r, isErr := s.applySubmit(idx, c.Jobs, c.Concerns).(error); isErr {
			return r
		}
	}

	s.mu.Lock()
	sw := s.sw
	rec = sw.schedules[c.ID] // still there: apply is the only writer and runs serially
	ns := *rec.s
	ns.RunCount++
	if c.Manual {
		at := c.At
		ns.LastRun = &at
	} else {
		ft := c.FireTime.UTC()
		ns.LastRun = &ft
		rec.lastFire = c.FireTime
		// From the later of the fire time and now: a new leader that finds several runs
		// missed fires once (this entry) and then waits for the next future time.
		from := c.FireTime
		if c.At.After(from) {
			from = c.At
		}
		ns.NextRun = nextRun(ns.Schedule, from)
	}
	ids := make([]string, len(c.Jobs))
	for i, d := range c.Jobs {
		ids[i] = d.ID
	}
	ev := proto.ScheduleEvent{ScheduleID: c.ID, Event: proto.ScheduleTriggered, Run: ns.RunCount, Manual: c.Manual, JobIDs: ids, Time: c.At}
	events := []Event{{Kind: EventScheduleTriggered, Schedule: &ev, Index: idx}}
	sw.runsTriggered++
	// Pre-flight validation refused some VMs: the run goes on with the others, and the
	// schedule shows which VMs were left out and why.
	ns.LastRunRefused = c.Refused
	if c.Error != "" || len(c.Jobs) == 0 {
		msg := c.Error
		switch {
		case msg == "" && len(c.Refused) > 0:
			msg = refusedMessage(c.Refused)
		case msg == "":
			msg = "the run created no jobs"
		}
		ns.FailedRuns++
		ns.LastError = msg
		sw.runsFailed++
		fe := ev
		fe.Event, fe.Error, fe.JobIDs = proto.ScheduleFailed, msg, nil
		events = append(events, Event{Kind: EventScheduleFailed, Schedule: &fe, Index: idx})
	} else {
		key := runKey(c.ID, ns.RunCount)
		sw.runs[key] = &runRecord{ScheduleID: c.ID, Run: ns.RunCount, Manual: c.Manual, JobIDs: ids, Pending: len(ids), Started: c.At}
		for _, id := range ids {
			sw.jobRuns[id] = key
		}
	}
	rec.s = &ns
	sw.signal(sw.scheduleCh)
	s.mu.Unlock()
	for _, e := range events {
		s.events.publish(e)
	}
	return ScheduleRunResult{ScheduleID: c.ID, Run: ns.RunCount, JobIDs: ids, Error: c.Error}
}

// jobEndedLocked advances the run a job belongs to; it returns the schedule event when the
// run is over. Caller holds the write lock.
func (s *State) jobEndedLocked(idx uint64, j *proto.Job) *Event {
	sw := s.sw
	key, ok := sw.jobRuns[j.Definition.ID]
	if !ok {
		return nil
	}
	delete(sw.jobRuns, j.Definition.ID)
	run := sw.runs[key]
	if run == nil {
		return nil
	}
	run.Pending--
	if j.Status != proto.StatusCompleted {
		run.Failed = true
	}
	if run.Pending > 0 {
		return nil
	}
	delete(sw.runs, key)
	ev := proto.ScheduleEvent{ScheduleID: run.ScheduleID, Event: proto.ScheduleCompleted, Run: run.Run, Manual: run.Manual, JobIDs: run.JobIDs, Time: j.UpdatedAt}
	kind := EventScheduleCompleted
	if run.Failed {
		ev.Event, kind = proto.ScheduleFailed, EventScheduleFailed
		ev.Error = "one or more jobs of the run did not complete"
		sw.runsFailed++
	} else {
		sw.runsSucceeded++
	}
	// The schedule may have been deleted meanwhile: the global counters still count it.
	if rec, ok := sw.schedules[run.ScheduleID]; ok {
		ns := *rec.s
		if run.Failed {
			ns.FailedRuns++
			ns.LastError = fmt.Sprintf("run %d: %s", run.Run, ev.Error)
		} else {
			ns.SuccessfulRuns++
		}
		rec.s = &ns
	}
	return &Event{Kind: kind, Schedule: &ev, Index: idx}
}

// Schedule returns one schedule (a copy; the template password is NOT masked).
func (s *State) Schedule(id string) (proto.Schedule, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	rec, ok := s.sw.schedules[id]
	if !ok {
		return proto.Schedule{}, false
	}
	return *rec.s, true
}

// Schedules returns every schedule in creation order (copies; passwords NOT masked).
func (s *State) Schedules() []proto.Schedule {
	type item struct {
		seq uint64
		s   *proto.Schedule
	}
	s.mu.RLock()
	// Copy the pointers under the lock: apply swaps rec.s for a new version.
	items := make([]item, 0, len(s.sw.schedules))
	for _, r := range s.sw.schedules {
		items = append(items, item{r.seq, r.s})
	}
	s.mu.RUnlock()
	sort.Slice(items, func(i, j int) bool { return items[i].seq < items[j].seq })
	out := make([]proto.Schedule, len(items))
	for i, it := range items {
		out[i] = *it.s
	}
	return out
}

// ScheduleStats sums the schedules' counters.
func (s *State) ScheduleStats() proto.ScheduleStats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var st proto.ScheduleStats
	for _, r := range s.sw.schedules {
		st.TotalSchedules++
		if r.s.Enabled {
			st.EnabledSchedules++
		} else {
			st.DisabledSchedules++
		}
		st.TotalRuns += r.s.RunCount
		st.SuccessfulRuns += r.s.SuccessfulRuns
		st.FailedRuns += r.s.FailedRuns
	}
	for _, run := range s.sw.runs {
		if _, ok := s.sw.schedules[run.ScheduleID]; ok {
			st.RunningRuns++
		}
	}
	return st
}

// ScheduleRunCounters are cluster-wide run totals since the cluster began (they survive
// schedule deletion, so they are Prometheus counters).
func (s *State) ScheduleRunCounters() (triggered, successful, failed uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sw.runsTriggered, s.sw.runsSucceeded, s.sw.runsFailed
}

// ScheduleSignal is signalled (without blocking apply) whenever a schedule changes, so the
// leader's scheduler re-reads next_run at once.
func (s *State) ScheduleSignal() <-chan struct{} { return s.sw.scheduleCh }

// refusedMessage says which VMs validation refused, in one line.
func refusedMessage(rs []proto.ValidationResult) string {
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		parts = append(parts, r.VMPath+": "+r.Criticals())
	}
	return fmt.Sprintf("pre-flight validation refused %d VM(s): %s", len(rs), strings.Join(parts, "; "))
}
