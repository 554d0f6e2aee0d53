package proto

import (
	"strings"
	"time"
)

// Warm migration (options.warm): the disks are copied while the source VM runs, in
// precopy rounds of the blocks changed since the last round (vSphere's changed-block
// tracking), and the VM is stopped only for the cutover: a last round of changes, then the
// domain is defined.

// Stages of a warm job, beside the cold ones.
const (
	// StagePrecopy: copying while the VM runs (the first full copy and the rounds after
	// it), and waiting between rounds.
	StagePrecopy = "precopy"
	// StageCutover: the VM is shut down and its last changes copied.
	StageCutover = "cutover"
)

// DefaultPrecopyIntervalSeconds is the wait between precopy rounds when the job does not
// set precopy_interval_seconds.
const DefaultPrecopyIntervalSeconds = 3600

// MaxPrecopyIntervalSeconds bounds precopy_interval_seconds (a week).
const MaxPrecopyIntervalSeconds = 7 * 24 * 3600

// Webhook events of warm jobs (the job is the payload).
const (
	// EventJobPrecopyRound: a precopy round is done (warm.rounds, warm.changed_bytes).
	EventJobPrecopyRound = "job.precopy_round"
	// EventJobCutover: the cutover began (the source VM is being stopped).
	EventJobCutover = "job.cutover"
)

// MaxWarmCopies bounds LeaseRequest.WarmCopies.
const MaxWarmCopies = 4096

// Phases of WarmStatus.Phase.
const (
	WarmPhasePrecopy = "precopy"
	WarmPhaseCutover = "cutover"
	WarmPhaseDone    = "done"
)

// WarmStatus is a warm job's "warm" field: how far the copy is.
type WarmStatus struct {
	// Phase is precopy, cutover (the VM is being stopped and its last changes copied) or
	// done (the domain is defined).
	Phase string `json:"phase"`
	// Rounds counts the precopy rounds done; the first is the full copy.
	Rounds      int        `json:"rounds"`
	LastRoundAt *time.Time `json:"last_round_at,omitempty"`
	// NextRoundAt is when the next precopy round starts (absent when the cutover comes
	// first).
	NextRoundAt *time.Time `json:"next_round_at,omitempty"`
	// ChangedBytes are the bytes the last round copied (the first: every allocated byte).
	ChangedBytes int64 `json:"changed_bytes"`
	// CutoverRequested: POST /jobs/{id}/cutover was called; the agent cuts over after
	// the round in progress.
	CutoverRequested bool `json:"cutover_requested,omitempty"`
	// CutoverStartedAt is when the cutover began (the guest shutdown was asked).
	CutoverStartedAt *time.Time `json:"cutover_started_at,omitempty"`
	// DowntimeSeconds is from the source VM's power-off to the domain defined.
	DowntimeSeconds float64 `json:"downtime_seconds,omitempty"`
	// FullCopy says why this attempt copied every disk again instead of resuming the
	// earlier attempt's rounds.
	FullCopy string `json:"full_copy,omitempty"`
}

// WarmResume is what a later attempt of a warm job needs to go on from the last round
// instead of copying everything again: where the images are and the change id each holds
// its disk as of. The agent reports it after every round (a fenced report); it is
// replicated with the job and handed to the next attempt in its lease.
type WarmResume struct {
	// Agent holds the images; an attempt on another agent copies in full.
	Agent  string     `json:"agent"`
	Format string     `json:"format"`
	Rounds int        `json:"rounds"`
	Disks  []WarmDisk `json:"disks"`
	// PoweredOffAt is set once the cutover powered the source off: the downtime counts
	// from there whichever attempt defines the domain.
	PoweredOffAt *time.Time `json:"powered_off_at,omitempty"`
}

// WarmDisk is one disk of WarmResume.
type WarmDisk struct {
	Key      int32  `json:"key"` // the source disk's device key
	Path     string `json:"path"`
	Capacity int64  `json:"capacity"`
	ChangeID string `json:"change_id"`
}

// validateWarm checks the warm options.
func (o *Options) validateWarm() error {
	if !o.Warm {
		switch {
		case o.PrecopyIntervalSeconds != 0:
			return invalid("options.precopy_interval_seconds is for warm migrations: set options.warm: true")
		case o.CutoverAt != nil:
			return invalid("options.cutover_at is for warm migrations: set options.warm: true")
		}
		return nil
	}
	switch strings.ToLower(o.ConversionMethod) {
	case "", "auto", "vddk":
	default:
		return invalid("options.warm needs conversion_method vddk (or auto, which picks vddk): %s reads a powered-off VM once; "+
			"a warm migration reads the blocks changed between snapshots of the running VM through VDDK", o.ConversionMethod)
	}
	if o.PrecopyIntervalSeconds < 0 || o.PrecopyIntervalSeconds > MaxPrecopyIntervalSeconds {
		return invalid("options.precopy_interval_seconds must be between 1 and %d (0: the default %d)", MaxPrecopyIntervalSeconds, DefaultPrecopyIntervalSeconds)
	}
	return nil
}

// PrecopyInterval is the wait between precopy rounds.
func (o *Options) PrecopyInterval() time.Duration {
	if o.PrecopyIntervalSeconds > 0 {
		return time.Duration(o.PrecopyIntervalSeconds) * time.Second
	}
	return DefaultPrecopyIntervalSeconds * time.Second
}

// WarmReport (POST /agent/v1/warm) replicates a warm job's status and resume point after
// each round and at the cutover. Like every agent report it carries the lease token: a
// report of an attempt that is no longer the job's is refused (409).
type WarmReport struct {
	LeaseToken
	Agent  string      `json:"agent"`
	Status WarmStatus  `json:"status"`
	Resume *WarmResume `json:"resume,omitempty"`
}

// Validate checks a warm report.
func (r *WarmReport) Validate() error {
	if err := validAgentName(r.Agent); err != nil {
		return err
	}
	switch r.Status.Phase {
	case WarmPhasePrecopy, WarmPhaseCutover, WarmPhaseDone:
	default:
		return invalid("status.phase %q is not precopy, cutover or done", r.Status.Phase)
	}
	if r.Status.Rounds < 0 || r.Status.ChangedBytes < 0 || r.Status.DowntimeSeconds < 0 {
		return invalid("status: rounds, changed_bytes and downtime_seconds must not be negative")
	}
	if res := r.Resume; res != nil {
		if res.Agent != r.Agent {
			return invalid("resume.agent must be the reporting agent")
		}
		if len(res.Disks) > 256 {
			return invalid("resume: at most 256 disks")
		}
		for _, d := range res.Disks {
			if d.Path == "" || d.Capacity < 0 || len(d.Path) > 4096 || len(d.ChangeID) > 256 {
				return invalid("resume: every disk needs a path (at most 4096 bytes), a capacity and a change id of at most 256 bytes")
			}
		}
	}
	return r.LeaseToken.validate()
}

// CutoverResponse answers POST /jobs/{id}/cutover.
type CutoverResponse struct {
	JobID   string `json:"job_id"`
	Message string `json:"message"`
	// AlreadyRequested: an earlier call asked for it (this one changed nothing).
	AlreadyRequested bool `json:"already_requested,omitempty"`
}
