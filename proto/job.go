// Package proto is the wire contract shared by the controller, the agent and hyperctl: the
// JSON types of the HyperSDK API document plus the fleet's own (agents, leases). It holds
// validation and nothing else.
package proto

import (
	"encoding/json"
	"time"
)

// JobStatus is the lifecycle state of a job: pending → running → completed | failed | cancelled.
type JobStatus string

const (
	StatusPending   JobStatus = "pending"
	StatusRunning   JobStatus = "running"
	StatusCompleted JobStatus = "completed"
	StatusFailed    JobStatus = "failed"
	StatusCancelled JobStatus = "cancelled"
)

// AllStatuses lists every status in lifecycle order (used by metrics and indexes).
var AllStatuses = []JobStatus{StatusPending, StatusRunning, StatusCompleted, StatusFailed, StatusCancelled}

// Terminal reports whether no further transition can happen.
func (s JobStatus) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Valid reports whether s is one of the known statuses.
func (s JobStatus) Valid() bool {
	for _, k := range AllStatuses {
		if s == k {
			return true
		}
	}
	return false
}

// Progress stages reported by the migration pipeline.
const (
	StageQueued     = "queued"
	StageConnecting = "connecting"
	StagePreparing  = "preparing"
	StageConversion = "conversion"
	// StageGuestConversion: virt-v2v adapts the guest to KVM (drivers, fstab, bootloader).
	StageGuestConversion = "guest_conversion"
	StageDefining        = "defining"
	// StageBootCheck: the domain is started and its serial console read (options.verify_boot).
	StageBootCheck = "boot_check"
	StageCompleted = "completed"
)

// RedactedPassword replaces every password in anything the system shows.
const RedactedPassword = "********"

// Source is where the VM lives.
type Source struct {
	Type       string `json:"type"`
	VCenterURL string `json:"vcenter_url"`
	Username   string `json:"username"`
	Password   string `json:"password"`
	Datacenter string `json:"datacenter,omitempty"`
	// Insecure skips certificate verification of the vCenter; Thumbprint pins its
	// certificate (SHA-1 or SHA-256 hex, colon separated) instead.
	Insecure   bool   `json:"insecure,omitempty"`
	Thumbprint string `json:"thumbprint,omitempty"`
}

// Destination is where the VM goes.
type Destination struct {
	Type       string `json:"type"`
	LibvirtURI string `json:"libvirt_uri,omitempty"`
}

// Options tune how a job runs. Zero values mean the documented default.
type Options struct {
	ConversionMethod       string            `json:"conversion_method,omitempty"` // auto|vddk|https|nfc
	OutputFormat           string            `json:"output_format,omitempty"`     // qcow2|raw
	NetworkMapping         map[string]string `json:"network_mapping,omitempty"`
	Shutdown               bool              `json:"shutdown,omitempty"`
	ShutdownTimeoutSeconds int               `json:"shutdown_timeout_seconds,omitempty"`
	PowerOff               bool              `json:"power_off,omitempty"`
	RemoveCDROM            bool              `json:"remove_cdrom,omitempty"`
	// DiskBus overrides the agent's choice (virtio for a converted guest, sata otherwise).
	DiskBus string `json:"disk_bus,omitempty"` // virtio|sata|scsi
	// GuestConversion runs virt-v2v on the disks before the domain is defined: true
	// requires it (the job fails without virt-v2v, or when it fails), false skips it (the
	// domain gets compatibility devices), absent follows the agent (by default: convert
	// when virt-v2v is installed, and then a failure fails the job).
	GuestConversion *bool `json:"guest_conversion,omitempty"`
	// VerifyBoot starts the domain after define and waits for the guest's login prompt on
	// its serial console (result.boot); a guest not up within BootTimeoutSeconds (default
	// 300) fails the job and its domain is kept. The domain is shut down afterwards unless
	// StartAfter.
	VerifyBoot         bool   `json:"verify_boot,omitempty"`
	BootTimeoutSeconds int    `json:"boot_timeout_seconds,omitempty"`
	StartAfter         bool   `json:"start_after,omitempty"`
	TargetAgent        string `json:"target_agent,omitempty"`
	MaxAttempts        int    `json:"max_attempts,omitempty"`
	// MaxMbps caps the job's disk copy, all its disks together, in megabits per second
	// (1 Mbit/s = 125,000 bytes/s; 0: no cap beyond the agent's transfer.max_mbps).
	MaxMbps int `json:"max_mbps,omitempty"`
	// Warm copies the disks while the VM runs and stops it only for the cutover (see
	// warm.go); PrecopyIntervalSeconds is the wait between rounds and CutoverAt (RFC 3339)
	// when to cut over (else on POST /jobs/{id}/cutover).
	Warm                   bool       `json:"warm,omitempty"`
	PrecopyIntervalSeconds int        `json:"precopy_interval_seconds,omitempty"`
	CutoverAt              *time.Time `json:"cutover_at,omitempty"`
	// AllowDuplicate lets a job be submitted while another job of the same source VM is
	// pending or running (otherwise 409: one VM migrated twice is two domains).
	AllowDuplicate bool `json:"allow_duplicate,omitempty"`
	// SkipValidation submits without the pre-flight checks (POST /jobs/validate).
	SkipValidation bool `json:"skip_validation,omitempty"`
	// Hooks run before and after the migration on the agent (hooks.go).
	Hooks *Hooks `json:"hooks,omitempty"`
}

// JobDefinition is what an operator submits. ID and CreatedAt are stamped by the leader.
type JobDefinition struct {
	ID          string      `json:"id,omitempty"`
	Name        string      `json:"name,omitempty"`
	VMPath      string      `json:"vm_path"`
	Source      Source      `json:"source"`
	Destination Destination `json:"destination"`
	Options     Options     `json:"options"`
	CreatedAt   time.Time   `json:"created_at,omitzero"`
	// ScheduleID names the schedule whose firing created the job, if any.
	ScheduleID string `json:"schedule_id,omitempty"`
	// SourceHost is the ESXi host the VM runs on and its disk count, stamped by the leader
	// from pre-flight validation: placement limits the disks copied at once per host.
	SourceHost *SourceHost `json:"source_host,omitempty"`
}

// SourceHost is where a job's VM runs on the source side.
type SourceHost struct {
	// Moref is the host's managed object id (runtime.host), Name its name in vCenter.
	Moref string `json:"moref"`
	Name  string `json:"name,omitempty"`
	// Disks is how many disks the job copies from it.
	Disks int `json:"disks"`
}

// SourceHostKey names the job's source ESXi host for the per-host limit ("" when not
// known: submitted with skip_validation, or before validation existed).
func (d *JobDefinition) SourceHostKey() string {
	if d.SourceHost == nil || d.SourceHost.Moref == "" {
		return ""
	}
	return d.VCenterKey() + "/" + d.SourceHost.Moref
}

// Redacted returns a copy safe to show anyone: the password is masked.
func (d JobDefinition) Redacted() JobDefinition {
	if d.Source.Password != "" {
		d.Source.Password = RedactedPassword
	}
	if d.Options.NetworkMapping != nil {
		m := make(map[string]string, len(d.Options.NetworkMapping))
		for k, v := range d.Options.NetworkMapping {
			m[k] = v
		}
		d.Options.NetworkMapping = m
	}
	return d
}

// Progress is always present on a job (zeros while pending) so a client can read
// progress.percent_complete at any time.
type Progress struct {
	Stage           string  `json:"stage"`
	PercentComplete float64 `json:"percent_complete"`
	CurrentBytes    int64   `json:"current_bytes"`
	TotalBytes      int64   `json:"total_bytes"`
	BytesPerSecond  float64 `json:"bytes_per_second"`
	ETASeconds      float64 `json:"eta_seconds"`
	Message         string  `json:"message,omitempty"`
}

// JobResult is what a completed migration produced.
type JobResult struct {
	DomainName string   `json:"domain_name,omitempty"`
	DomainUUID string   `json:"domain_uuid,omitempty"`
	LibvirtURI string   `json:"libvirt_uri,omitempty"`
	Disks      []string `json:"disks,omitempty"`
	// Virtualization is how the agent runs the domain (kvm or qemu/TCG, CPU definition).
	Virtualization *Virtualization `json:"virtualization,omitempty"`
	// Devices are the disk bus and NIC model the domain got, and why.
	Devices *DeviceChoice `json:"devices,omitempty"`
	// Conversion says whether and how virt-v2v converted the guest.
	Conversion *ConversionResult `json:"conversion,omitempty"`
	// Boot is the boot check's outcome (options.verify_boot).
	Boot *BootResult `json:"boot,omitempty"`
}

// Job is the job status document of the API (GET /jobs/{id}, query results, job_update).
type Job struct {
	Definition  JobDefinition `json:"definition"`
	Status      JobStatus     `json:"status"`
	Progress    Progress      `json:"progress"`
	SubmittedAt time.Time     `json:"submitted_at"`
	StartedAt   *time.Time    `json:"started_at"`
	CompletedAt *time.Time    `json:"completed_at,omitempty"`
	UpdatedAt   time.Time     `json:"updated_at"`
	Error       *string       `json:"error"`
	Agent       string        `json:"agent,omitempty"`
	Attempt     int           `json:"attempt"`
	// FailedAgents are the agents earlier attempts ended on without success: placement
	// gives the next attempt to another agent while one may take it.
	FailedAgents    []string `json:"failed_agents,omitempty"`
	CancelRequested bool     `json:"cancel_requested,omitempty"`
	PendingReason   string   `json:"pending_reason,omitempty"`
	Warnings        []string `json:"warnings,omitempty"`
	// Concerns are what the pre-flight validation found at submit (none critical).
	Concerns []Concern  `json:"concerns,omitempty"`
	Result   *JobResult `json:"result,omitempty"`
	// Commit is set once the leader has committed the current attempt as the one that
	// defines the job's domain (the commit point): from then on no other attempt takes
	// the job while this one is silent. Cleared when the attempt ends and the job waits
	// for another.
	Commit *JobCommit `json:"commit,omitempty"`
	// Warm is a warm job's precopy and cutover (warm.go).
	Warm *WarmStatus `json:"warm,omitempty"`
	// WarmResume is where the last attempt left its warm copy: replicated state for the
	// next attempt's lease, not shown (Redacted drops it).
	WarmResume *WarmResume `json:"warm_resume,omitempty"`
}

// JobCommit is an attempt committed as the one that defines the job's domain: which
// agent, which domain on which libvirt, and when.
type JobCommit struct {
	Attempt    int       `json:"attempt"`
	Agent      string    `json:"agent"`
	Domain     string    `json:"domain,omitempty"`
	LibvirtURI string    `json:"libvirt_uri,omitempty"`
	At         time.Time `json:"at"`
}

// Redacted returns a copy with the password masked and the agents' resume point left out.
func (j Job) Redacted() Job {
	j.Definition = j.Definition.Redacted()
	j.WarmResume = nil
	return j
}

// SubmitResponse answers POST /jobs/submit.
type SubmitResponse struct {
	JobID   string `json:"job_id"`
	Message string `json:"message"`
}

// StatusList accepts either one status ("running") or a list (["running","pending"]):
// the API document shows a string, older clients send a list.
type StatusList []JobStatus

func (s *StatusList) UnmarshalJSON(b []byte) error {
	var one JobStatus
	if err := json.Unmarshal(b, &one); err == nil {
		if one == "" {
			*s = nil
		} else {
			*s = StatusList{one}
		}
		return nil
	}
	var many []JobStatus
	if err := json.Unmarshal(b, &many); err != nil {
		return &json.UnmarshalTypeError{Value: "status", Type: nil, Field: "status"}
	}
	*s = many
	return nil
}

// QueryRequest is the body of POST /jobs/query. No filter means every job.
type QueryRequest struct {
	All    bool       `json:"all,omitempty"`
	JobIDs []string   `json:"job_ids,omitempty"`
	Status StatusList `json:"status,omitempty"`
	VMPath string     `json:"vm_path,omitempty"`
	Agent  string     `json:"agent,omitempty"`
	Limit  int        `json:"limit,omitempty"`
	Offset int        `json:"offset,omitempty"`
	// Cursor continues a previous query after its last job (next_cursor of the answer);
	// unlike offset it costs O(limit) however deep the page.
	Cursor string `json:"cursor,omitempty"`
}

// Query limits.
const (
	DefaultQueryLimit = 100
	MaxQueryLimit     = 1000
)

// QueryResponse answers POST /jobs/query. Total counts every job matching the filter,
// NextCursor is set when more remain.
type QueryResponse struct {
	Jobs       []Job  `json:"jobs"`
	Total      int    `json:"total"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// CancelRequest is the body of POST /jobs/cancel: by ids, by status, or both.
type CancelRequest struct {
	JobIDs []string  `json:"job_ids,omitempty"`
	Status JobStatus `json:"status,omitempty"`
}

// CancelResponse answers POST /jobs/cancel. Count is how many jobs the request cancelled
// (or, for running ones, asked their agent to stop).
type CancelResponse struct {
	Message  string   `json:"message"`
	Count    int      `json:"count"`
	NotFound []string `json:"not_found,omitempty"`
	Skipped  []string `json:"skipped,omitempty"`
}

// ErrorResponse is every error body: {"error": "..."}.
type ErrorResponse struct {
	Error string `json:"error"`
}

// MessageResponse is a plain {"message": "..."} answer.
type MessageResponse struct {
	Message string `json:"message"`
}

// HealthResponse answers GET /health.
type HealthResponse struct {
	Status string `json:"status"`
	// Lag and Reason (catching_up only): how many committed entries this controller has
	// not applied yet, and why it does not serve reads.
	Lag    uint64 `json:"lag,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Health statuses: ok (200), catching_up (503: the controller's state trails the leader's
// and its reads answer 503 until it catches up).
const (
	HealthOK         = "ok"
	HealthCatchingUp = "catching_up"
)

// StatusResponse answers GET /status.
type StatusResponse struct {
	TotalJobs     int `json:"total_jobs"`
	PendingJobs   int `json:"pending_jobs"`
	RunningJobs   int `json:"running_jobs"`
	CompletedJobs int `json:"completed_jobs"`
	FailedJobs    int `json:"failed_jobs"`
	CancelledJobs int `json:"cancelled_jobs"`
	WorkerCount   int `json:"worker_count"`
	ActiveWorkers int `json:"active_workers"`
	// Beyond the document: which node answered and who leads.
	NodeID   string `json:"node_id,omitempty"`
	Leader   string `json:"leader,omitempty"`
	Version  string `json:"version,omitempty"`
	UptimeS  int64  `json:"uptime_seconds"`
	RaftRole string `json:"raft_state,omitempty"`
}

// SubmitBatchResponse answers POST /jobs/submit with a list of jobs: one answer per job,
// in the list's order.
type SubmitBatchResponse struct {
	Jobs    []SubmitResponse `json:"jobs"`
	Message string           `json:"message"`
}
