package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/version"
)

// CommandType is the first byte of every raft log entry. Types are append-only: never
// renumber or reuse one, old logs and snapshots must replay forever.
type CommandType uint8

const (
	CmdSubmitJob    CommandType = 1
	CmdCancelJobs   CommandType = 2
	CmdLeaseGrant   CommandType = 3
	CmdLeaseExpire  CommandType = 4
	CmdProgress     CommandType = 5
	CmdComplete     CommandType = 6
	CmdFail         CommandType = 7
	CmdRegisterNode CommandType = 8
	CmdRemoveNode   CommandType = 9
	CmdSubmitBatch  CommandType = 10
	// 11-12: warm migrations (warm.go).
	CmdWarmReport CommandType = 11
	CmdCutover    CommandType = 12
	// CmdLeaseCommit is the commit point (commit.go): the attempt that may define the domain.
	CmdLeaseCommit CommandType = 13
	// 20-29: schedules (schedule.go) and webhooks (webhook.go).
	CmdScheduleUpsert   CommandType = 20
	CmdScheduleDelete   CommandType = 21
	CmdScheduleFired    CommandType = 22
	CmdWebhookAdd       CommandType = 23
	CmdWebhookDelete    CommandType = 24
	CmdWebhookDelivered CommandType = 25
	CmdWebhookSeed      CommandType = 26
	// 40-49: agent identities (agentid.go).
	CmdAgentEnroll        CommandType = 40
	CmdAgentForget        CommandType = 41
	CmdAgentRotate        CommandType = 42
	CmdAgentRotateRequest CommandType = 43
)

var commandNames = map[CommandType]string{
	CmdSubmitJob: "submit_job", CmdCancelJobs: "cancel_jobs", CmdLeaseGrant: "lease_grant", CmdLeaseExpire: "lease_expire",
	CmdProgress: "progress", CmdComplete: "complete", CmdFail: "fail", CmdRegisterNode: "register_node",
	CmdRemoveNode: "remove_node", CmdSubmitBatch: "submit_batch", CmdWarmReport: "warm_report", CmdCutover: "cutover",
	CmdLeaseCommit:    "lease_commit",
	CmdScheduleUpsert: "schedule_upsert", CmdScheduleDelete: "schedule_delete", CmdScheduleFired: "schedule_fired",
	CmdWebhookAdd: "webhook_add", CmdWebhookDelete: "webhook_delete", CmdWebhookDelivered: "webhook_delivered",
	CmdWebhookSeed: "webhook_seed",
	CmdAgentEnroll: "agent_enroll", CmdAgentForget: "agent_forget", CmdAgentRotate: "agent_rotate",
	CmdAgentRotateRequest: "agent_rotate_request",
}

func (t CommandType) String() string {
	if n, ok := commandNames[t]; ok {
		return n
	}
	return fmt.Sprintf("command(%d)", uint8(t))
}

// UnknownCommandError stops a node that meets a command type it does not know: a newer
// controller wrote the entry. Answering an error and skipping it (what apply once did)
// leaves this node's state silently different from the others', since the entry is
// committed everywhere; so Apply panics before anything of the entry is applied, raft's
// apply loop stops and the process exits with this message. Upgrading the binary and
// restarting applies the entry. Upgrade followers first, one at a time, the leader last
// (README: "Upgrading a cluster").
type UnknownCommandError struct {
	Type  CommandType
	Index uint64
}

func (e *UnknownCommandError) Error() string {
	return fmt.Sprintf("raft entry %d has command type %d, which this controller (version %s) does not know: "+
		"a newer controller wrote it. Stopping before applying it; upgrade this controller's binary and restart it "+
		"(upgrade followers first, one at a time, the leader last)", e.Index, uint8(e.Type), version.Version)
}

// Sentinel errors returned by apply (through ApplyFuture.Response) and by reads. The API
// maps them to status codes in one place.
var (
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrStaleLease    = errors.New("stale lease")
	ErrInvalidState  = errors.New("invalid state transition")
	ErrBadCommand    = errors.New("malformed command")
	ErrInvalidCursor = errors.New("invalid cursor")
)

// SubmitJob adds a job. The leader stamps ID, CreatedAt and the default max attempts.
type SubmitJob struct {
	Definition proto.JobDefinition `json:"definition"`
	// Concerns are the pre-flight validation's findings (none critical): the job keeps
	// them, and its warnings start with the warning ones.
	Concerns []proto.Concern `json:"concerns,omitempty"`
}

// SubmitBatch adds several jobs in one entry (schedules expanding a glob, bulk submits).
type SubmitBatch struct {
	Definitions []proto.JobDefinition `json:"definitions"`
	// Concerns by job id, as SubmitJob's.
	Concerns map[string][]proto.Concern `json:"concerns,omitempty"`
}

// CancelJobs cancels pending jobs at once and marks running ones for their agent.
type CancelJobs struct {
	JobIDs []string        `json:"job_ids,omitempty"`
	Status proto.JobStatus `json:"status,omitempty"`
	At     time.Time       `json:"at"`
}

// CancelResult is the response of CancelJobs.
type CancelResult struct {
	Cancelled []string `json:"cancelled"`
	NotFound  []string `json:"not_found,omitempty"`
	Skipped   []string `json:"skipped,omitempty"`
}

// LeaseToken fences every report of an agent: (job id, attempt).
type LeaseToken struct {
	JobID   string `json:"job_id"`
	Attempt int    `json:"attempt"`
}

// LeaseGrant hands a pending job to an agent as attempt Attempt (= job.Attempt+1).
type LeaseGrant struct {
	LeaseToken
	Agent string    `json:"agent"`
	At    time.Time `json:"at"`
}

// LeaseExpire ends a lease whose agent stopped renewing: requeue, or fail after the last
// attempt, or finish a cancel the agent could not acknowledge. Committed says the leader's
// timer was a committed attempt's grace (commit.go): only such an expiry ends a committed
// attempt, and it never requeues.
type LeaseExpire struct {
	LeaseToken
	Reason    string    `json:"reason"`
	Committed bool      `json:"committed,omitempty"`
	At        time.Time `json:"at"`
}

// ProgressReport updates a running job's progress.
type ProgressReport struct {
	LeaseToken
	Progress proto.Progress `json:"progress"`
	Warnings []string       `json:"warnings,omitempty"`
	At       time.Time      `json:"at"`
}

// CompleteReport finishes a job successfully. Progress (absent from agents older than
// issue 11) is the attempt's final progress: its byte counts become the job's.
type CompleteReport struct {
	LeaseToken
	Result   *proto.JobResult `json:"result,omitempty"`
	Progress *proto.Progress  `json:"progress,omitempty"`
	Warnings []string         `json:"warnings,omitempty"`
	At       time.Time        `json:"at"`
}

// FailReport ends an attempt with an error. Cancelled acknowledges a cancel; Retryable asks
// for another attempt if any remain.
type FailReport struct {
	LeaseToken
	Error     string    `json:"error"`
	Cancelled bool      `json:"cancelled,omitempty"`
	Retryable bool      `json:"retryable,omitempty"`
	Warnings  []string  `json:"warnings,omitempty"`
	At        time.Time `json:"at"`
}

// NodeInfo is a controller's addresses, registered through raft so every node can find the
// leader's API to forward writes to.
type NodeInfo struct {
	ID       string `json:"id"`
	APIAddr  string `json:"api_addr"`
	RaftAddr string `json:"raft_addr"`
	// GossipAddr: where the node's gossip pool is joined (absent from older controllers).
	GossipAddr string `json:"gossip_addr,omitempty"`
}

// RemoveNode forgets a controller's registration.
type RemoveNode struct {
	ID string `json:"id"`
}

// Encode serialises a command into a raft log entry.
func Encode(t CommandType, payload any) ([]byte, error) {
	b, err := json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(b)+1)
	out = append(out, byte(t))
	return append(out, b...), nil
}

// MustEncode is Encode for payloads that always marshal (our own structs).
func MustEncode(t CommandType, payload any) []byte {
	b, err := Encode(t, payload)
	if err != nil {
		panic(fmt.Sprintf("encode %s: %v", t, err))
	}
	return b
}
