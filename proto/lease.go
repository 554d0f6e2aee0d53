package proto

import (
	"strings"
	"time"
)

// The agent API (/agent/v1/...): how agents lease jobs and report on them. Every report
// carries the (job_id, attempt) fencing token; a stale token gets 409 and the agent must
// abort that work.

// AgentTokenHeader carries the agent join token (also accepted as "Authorization: Bearer").
// The join token only enrols (POST /agent/v1/enroll); every other agent call carries the
// agent's own credential in AgentCredentialHeader.
const AgentTokenHeader = "X-Hypersdk-Agent-Token"

// AgentCredentialHeader carries the agent's own credential: a secret the agent made up,
// whose SHA-256 it enrolled under its name.
const AgentCredentialHeader = "X-Hypersdk-Agent-Credential"

// AgentRotateHeader is set (to "1") on answers to an agent an admin asked to rotate its
// credential (hyperctl agents rotate): the agent calls POST /agent/v1/rotate.
const AgentRotateHeader = "X-Hypersdk-Agent-Rotate"

// EnrollRequest enrols an agent (join token) or rotates its credential (POST
// /agent/v1/rotate, authenticated by the current credential): CredentialSHA256 is the
// lower-case hex SHA-256 of the agent's new credential.
type EnrollRequest struct {
	Agent            string `json:"agent"`
	CredentialSHA256 string `json:"credential_sha256"`
}

// EnrollResponse answers an enrolment. CredentialRequired is false on a controller with no
// join token and no API tokens (loopback only): it checks no agent identity.
type EnrollResponse struct {
	Agent              string    `json:"agent"`
	EnrolledAt         time.Time `json:"enrolled_at,omitzero"`
	CredentialRequired bool      `json:"credential_required"`
}

// AgentIdentity is an enrolled agent as GET /agents/identities shows it (no credential).
type AgentIdentity struct {
	Name            string    `json:"name"`
	EnrolledAt      time.Time `json:"enrolled_at"`
	RotatedAt       time.Time `json:"rotated_at,omitzero"`
	RotateRequested bool      `json:"rotate_requested,omitempty"`
}

// LeaseToken fences every report: the job and the attempt the agent was granted.
type LeaseToken struct {
	JobID   string `json:"job_id"`
	Attempt int    `json:"attempt"`
}

// LeaseRequest is a long-poll for work: the agent says who it is and what room it has.
type LeaseRequest struct {
	Agent        string            `json:"agent"`
	Capacity     AgentCapacity     `json:"capacity"`
	RunningJobs  int               `json:"running_jobs"`
	MaxJobs      int               `json:"max_jobs"`
	Capabilities AgentCapabilities `json:"capabilities"`
	// WaitSeconds bounds the long-poll (capped by the controller at 25 s).
	WaitSeconds int `json:"wait_seconds,omitempty"`
	// WarmCopies lists jobs whose warm images the agent keeps for a later attempt (not
	// its running jobs): the answer's Discard says which no attempt will use.
	WarmCopies []string `json:"warm_copies,omitempty"`
}

// Lease is a granted job. Definition includes the source password: it is the only
// message that ever carries it, and only to an authenticated agent.
type Lease struct {
	LeaseToken
	TTLSeconds float64       `json:"ttl_seconds"`
	Definition JobDefinition `json:"definition"`
	GrantedAt  time.Time     `json:"granted_at"`
	// Warm is where the job's earlier attempt left its warm copy (nil: none, or not warm).
	Warm *WarmResume `json:"warm,omitempty"`
	// CutoverRequested: an operator asked a warm job's cutover before this attempt.
	CutoverRequested bool `json:"cutover_requested,omitempty"`
}

// LeaseResponse answers a lease request: Lease is nil when the long-poll timed out.
type LeaseResponse struct {
	Lease *Lease `json:"lease"`
	// Discard lists jobs of LeaseRequest.WarmCopies that no attempt will resume (the job
	// ended, or its copy is now another agent's): the agent removes their images.
	Discard []string `json:"discard,omitempty"`
}

// HeartbeatRequest renews every lease the agent holds.
type HeartbeatRequest struct {
	Agent  string       `json:"agent"`
	Leases []LeaseToken `json:"leases"`
}

// HeartbeatResponse tells the agent which jobs to stop: Cancel (an operator cancelled
// them: clean up and report cancelled) and Lost (the lease is no longer this agent's:
// stop without reporting); and which warm jobs to cut over.
type HeartbeatResponse struct {
	Cancel []LeaseToken `json:"cancel,omitempty"`
	Lost   []LeaseToken `json:"lost,omitempty"`
	// Cutover lists warm jobs whose cutover an operator asked for.
	Cutover []LeaseToken `json:"cutover,omitempty"`
	// HandBack: the agent is being drained (hyperctl agents drain): stop these jobs,
	// clean up and report them retryable, so another agent runs them.
	HandBack   []LeaseToken `json:"hand_back,omitempty"`
	TTLSeconds float64      `json:"ttl_seconds"`
}

// ProgressRequest reports progress (at most once a second per job).
type ProgressRequest struct {
	LeaseToken
	Agent    string   `json:"agent"`
	Progress Progress `json:"progress"`
	Warnings []string `json:"warnings,omitempty"`
}

// CompleteRequest reports success. Progress is the attempt's last progress (final byte
// counts): a job that ends within a second of its previous report never got it sent.
type CompleteRequest struct {
	LeaseToken
	Agent    string     `json:"agent"`
	Result   *JobResult `json:"result,omitempty"`
	Progress *Progress  `json:"progress,omitempty"`
	Warnings []string   `json:"warnings,omitempty"`
}

// FailRequest reports a failed attempt; Cancelled acknowledges a cancel, Retryable asks
// for another attempt (e.g. the agent is shutting down or a transfer broke).
type FailRequest struct {
	LeaseToken
	Agent     string   `json:"agent"`
	Error     string   `json:"error"`
	Cancelled bool     `json:"cancelled,omitempty"`
	Retryable bool     `json:"retryable,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

// CommitRequest asks the leader to commit the attempt as the one that defines the job's
// domain (POST /agent/v1/commit). An agent defines nothing on its host before the answer
// says committed; 409 means the lease moved on and the attempt must delete its disks and
// stop. Domain and LibvirtURI say what it is about to define, for the operator.
type CommitRequest struct {
	LeaseToken
	Agent      string `json:"agent"`
	Domain     string `json:"domain,omitempty"`
	LibvirtURI string `json:"libvirt_uri,omitempty"`
}

// CommitResponse answers a commit. Committed is false only when the job was cancelled
// (Cancel): the agent cleans up and reports cancelled. GraceSeconds is how long the
// leader keeps a committed attempt's job after its last heartbeat before it gives the
// job to the operator (it never hands it to another attempt): the agent keeps retrying
// its final report that long.
type CommitResponse struct {
	Message      string  `json:"message"`
	Committed    bool    `json:"committed"`
	Cancel       bool    `json:"cancel,omitempty"`
	GraceSeconds float64 `json:"grace_seconds,omitempty"`
}

// ReportResponse answers progress, complete and fail.
type ReportResponse struct {
	Message   string `json:"message"`
	Throttled bool   `json:"throttled,omitempty"`
	// Cancel tells the agent on a progress report that the job was cancelled.
	Cancel bool `json:"cancel,omitempty"`
}

// Validate checks the identity part every agent request shares.
func validAgentName(name string) error {
	if name == "" {
		return invalid("agent is required")
	}
	if len(name) > MaxNodeNameLen {
		return invalid("agent name is longer than %d bytes", MaxNodeNameLen)
	}
	return nil
}

func (t LeaseToken) validate() error {
	if t.JobID == "" || t.Attempt <= 0 {
		return invalid("job_id and attempt (>= 1) are required")
	}
	return nil
}

// Validate checks an enrolment or rotation.
func (r *EnrollRequest) Validate() error {
	if err := validAgentName(r.Agent); err != nil {
		return err
	}
	if len(r.CredentialSHA256) != 64 || strings.Trim(r.CredentialSHA256, "0123456789abcdef") != "" {
		return invalid("credential_sha256 must be 64 lower-case hex digits (the SHA-256 of the agent's credential)")
	}
	return nil
}

// Validate checks a lease request.
func (r *LeaseRequest) Validate() error {
	if err := validAgentName(r.Agent); err != nil {
		return err
	}
	if r.MaxJobs < 0 || r.RunningJobs < 0 || r.WaitSeconds < 0 {
		return invalid("max_jobs, running_jobs and wait_seconds must not be negative")
	}
	if len(r.WarmCopies) > MaxWarmCopies {
		return invalid("warm_copies: at most %d", MaxWarmCopies)
	}
	for _, id := range r.WarmCopies {
		if id == "" || len(id) > 256 {
			return invalid("warm_copies: job ids of 1 to 256 bytes")
		}
	}
	return nil
}

// Validate checks a heartbeat.
func (r *HeartbeatRequest) Validate() error {
	if err := validAgentName(r.Agent); err != nil {
		return err
	}
	for _, t := range r.Leases {
		if err := t.validate(); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks a progress report.
func (r *ProgressRequest) Validate() error {
	if err := validAgentName(r.Agent); err != nil {
		return err
	}
	if r.Progress.PercentComplete < 0 || r.Progress.PercentComplete > 100 {
		return invalid("progress.percent_complete must be between 0 and 100")
	}
	return r.LeaseToken.validate()
}

// Validate checks a completion.
func (r *CompleteRequest) Validate() error {
	if err := validAgentName(r.Agent); err != nil {
		return err
	}
	if p := r.Progress; p != nil && (p.PercentComplete < 0 || p.PercentComplete > 100 || p.CurrentBytes < 0 || p.TotalBytes < 0) {
		return invalid("progress: percent_complete must be between 0 and 100 and byte counts not negative")
	}
	return r.LeaseToken.validate()
}

// MaxDomainNameLen bounds the domain name a commit names (libvirt has no hard limit;
// VMware's VM names end at 80 characters).
const MaxDomainNameLen = 255

// Validate checks a commit request.
func (r *CommitRequest) Validate() error {
	if err := validAgentName(r.Agent); err != nil {
		return err
	}
	if len(r.Domain) > MaxDomainNameLen || len(r.LibvirtURI) > 1024 {
		return invalid("domain (at most %d bytes) or libvirt_uri (at most 1024 bytes) is too long", MaxDomainNameLen)
	}
	return r.LeaseToken.validate()
}

// Validate checks a failure report.
func (r *FailRequest) Validate() error {
	if err := validAgentName(r.Agent); err != nil {
		return err
	}
	return r.LeaseToken.validate()
}
