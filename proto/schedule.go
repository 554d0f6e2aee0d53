package proto

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule is a recurring job: GET /schedules, GET /schedules/{id}. The template's
// password is replicated (agents need it) but every copy shown is Redacted.
type Schedule struct {
	ID          string        `json:"id"`
	Name        string        `json:"name,omitempty"`
	Description string        `json:"description,omitempty"`
	Schedule    string        `json:"schedule"`
	Enabled     bool          `json:"enabled"`
	JobTemplate JobDefinition `json:"job_template"`
	CreatedAt   time.Time     `json:"created_at"`
	UpdatedAt   time.Time     `json:"updated_at"`
	LastRun     *time.Time    `json:"last_run"`
	NextRun     *time.Time    `json:"next_run"`
	RunCount    int           `json:"run_count"`
	// Beyond the document: outcomes of the finished runs (a run succeeds when every job it
	// created completed) and why the last run failed, if it did.
	SuccessfulRuns int    `json:"successful_runs"`
	FailedRuns     int    `json:"failed_runs"`
	LastError      string `json:"last_error,omitempty"`
	// LastRunRefused are the VMs of the last run that pre-flight validation refused (no
	// job was created for them), with its concerns.
	LastRunRefused []ValidationResult `json:"last_run_refused,omitempty"`
}

// Redacted returns a copy safe to show: the template's password is masked.
func (s Schedule) Redacted() Schedule {
	s.JobTemplate = s.JobTemplate.Redacted()
	return s
}

// ScheduleRequest is the body of POST /schedules. Enabled defaults to true.
type ScheduleRequest struct {
	ID          string         `json:"id,omitempty"`
	Name        string         `json:"name,omitempty"`
	Description string         `json:"description,omitempty"`
	Schedule    string         `json:"schedule"`
	Enabled     *bool          `json:"enabled,omitempty"`
	JobTemplate *JobDefinition `json:"job_template"`
}

// ScheduleUpdate is the body of PUT /schedules/{id}: only the fields sent change. A
// job_template whose password is the mask "********" keeps the stored password, so a
// client can send back what it read.
type ScheduleUpdate struct {
	ID          string         `json:"id,omitempty"`
	Name        *string        `json:"name,omitempty"`
	Description *string        `json:"description,omitempty"`
	Schedule    *string        `json:"schedule,omitempty"`
	Enabled     *bool          `json:"enabled,omitempty"`
	JobTemplate *JobDefinition `json:"job_template,omitempty"`
}

// ScheduleListResponse answers GET /schedules.
type ScheduleListResponse struct {
	Schedules []Schedule `json:"schedules"`
	Total     int        `json:"total"`
	Timestamp time.Time  `json:"timestamp"`
}

// ScheduleResponse answers create and update.
type ScheduleResponse struct {
	Message  string    `json:"message"`
	Schedule *Schedule `json:"schedule,omitempty"`
}

// ScheduleTriggerResponse answers POST /schedules/{id}/trigger.
type ScheduleTriggerResponse struct {
	Message    string   `json:"message"`
	ScheduleID string   `json:"schedule_id"`
	Run        int      `json:"run"`
	JobIDs     []string `json:"job_ids"`
}

// ScheduleStats answers GET /schedules/stats. Runs count over the existing schedules;
// a run is successful when every job it created completed, failed otherwise.
type ScheduleStats struct {
	TotalSchedules    int       `json:"total_schedules"`
	EnabledSchedules  int       `json:"enabled_schedules"`
	DisabledSchedules int       `json:"disabled_schedules"`
	TotalRuns         int       `json:"total_runs"`
	SuccessfulRuns    int       `json:"successful_runs"`
	FailedRuns        int       `json:"failed_runs"`
	RunningRuns       int       `json:"running_runs"`
	Timestamp         time.Time `json:"timestamp"`
}

// Schedule event names: the WebSocket schedule_event's "event" and, prefixed with
// "schedule.", the webhook events.
const (
	ScheduleTriggered = "triggered"
	ScheduleCompleted = "completed"
	ScheduleFailed    = "failed"
)

// ScheduleEvent is the data of a schedule_event WebSocket message and of the schedule.*
// webhooks.
type ScheduleEvent struct {
	ScheduleID string    `json:"schedule_id"`
	Event      string    `json:"event"`
	Run        int       `json:"run"`
	Manual     bool      `json:"manual,omitempty"`
	JobIDs     []string  `json:"job_ids,omitempty"`
	Error      string    `json:"error,omitempty"`
	Time       time.Time `json:"time"`
}

// scheduleIDPattern: ids appear in URLs and logs.
var scheduleIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// MinEvery is the shortest "@every" interval a schedule may use: a schedule is a
// recurring migration, and an interval of seconds only floods the cluster with jobs.
const MinEvery = time.Minute

// ParseCron parses what an operator may send as a schedule: a five-field cron expression
// (minute hour day-of-month month day-of-week), a descriptor such as @daily, or
// "@every DURATION" of at least MinEvery, optionally prefixed by CRON_TZ=Zone. Without a
// zone the schedule is evaluated in UTC, so every controller computes the same times.
func ParseCron(expr string) (cron.Schedule, error) {
	sched, err := ParseStoredCron(expr)
	if err != nil {
		return nil, err
	}
	if every, ok := sched.(cron.ConstantDelaySchedule); ok && every.Delay < MinEvery {
		return nil, invalid("schedule %q fires more often than every %s (the shortest @every allowed)", expr, MinEvery)
	}
	return sched, nil
}

// ParseStoredCron parses a schedule already in the replicated state. It is ParseCron
// without the rules added since (an @every shorter than a minute was once accepted):
// apply must treat an old log entry the same way on every controller version, so the
// stricter checks belong to the API, never to apply.
func ParseStoredCron(expr string) (cron.Schedule, error) {
	s := strings.TrimSpace(expr)
	if s == "" {
		return nil, invalid("schedule is required (cron: minute hour day month weekday)")
	}
	sched, err := cron.ParseStandard(s)
	if err != nil {
		return nil, invalid("schedule %q is not a valid cron expression (minute hour day month weekday): %v", expr, err)
	}
	return sched, nil
}

// ValidateScheduleID checks a client-chosen schedule id.
func ValidateScheduleID(id string) error {
	if !scheduleIDPattern.MatchString(id) || id == "stats" {
		return invalid("id must be 1-128 characters of letters, digits, '.', '_' or '-' (and not \"stats\")")
	}
	return nil
}

// ValidateTemplate checks a job template: a job definition without the fields the
// controller stamps. A vm_path may be a glob ("DC0/vm/prod/*"): it expands at fire time.
func ValidateTemplate(t *JobDefinition) error {
	if t == nil {
		return invalid("job_template is required")
	}
	if t.ID != "" || !t.CreatedAt.IsZero() || t.ScheduleID != "" {
		return invalid("job_template must not set id, created_at or schedule_id (each run stamps them)")
	}
	if err := t.Validate(); err != nil {
		if errors.Is(err, ErrTooLarge) {
			return fmt.Errorf("job_template: %w", err)
		}
		return invalid("job_template: %s", strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
	}
	return nil
}

func validateScheduleText(name, description string) error {
	if len(name) > 256 {
		return invalid("name is longer than 256 characters")
	}
	if len(description) > 4096 {
		return invalid("description is longer than 4096 characters")
	}
	return nil
}

// Validate checks a create request. An empty id is allowed (the controller picks one).
func (r *ScheduleRequest) Validate() error {
	if r.ID != "" {
		if err := ValidateScheduleID(r.ID); err != nil {
			return err
		}
	}
	if err := validateScheduleText(r.Name, r.Description); err != nil {
		return err
	}
	if _, err := ParseCron(r.Schedule); err != nil {
		return err
	}
	return ValidateTemplate(r.JobTemplate)
}

// Validate checks an update. A template password equal to the mask means "keep".
func (u *ScheduleUpdate) Validate() error {
	var name, desc string
	if u.Name != nil {
		name = *u.Name
	}
	if u.Description != nil {
		desc = *u.Description
	}
	if err := validateScheduleText(name, desc); err != nil {
		return err
	}
	if u.Schedule != nil {
		if _, err := ParseCron(*u.Schedule); err != nil {
			return err
		}
	}
	if u.JobTemplate != nil {
		t := *u.JobTemplate
		if t.Source.Password == RedactedPassword {
			t.Source.Password = "kept"
		}
		if err := ValidateTemplate(&t); err != nil {
			return err
		}
	}
	if u.Name == nil && u.Description == nil && u.Schedule == nil && u.Enabled == nil && u.JobTemplate == nil {
		return invalid("nothing to update: send name, description, schedule, enabled or job_template")
	}
	return nil
}

// IsVMPathGlob reports whether a template's vm_path names several VMs.
func IsVMPathGlob(p string) bool { return strings.ContainsAny(p, "*?[") }
