package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/proto"
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
	// 20-29: schedules and webhooks, defined in swstate.go.
)

func (t CommandType) String() string {
	switch t {
	case CmdSubmitJob:
		return "submit_job"
	case CmdCancelJobs:
		return "cancel_jobs"
	case CmdLeaseGrant:
		return "lease_grant"
	case CmdLeaseExpire:
		return "lease_expire"
	case CmdProgress:
		return "progress"
	case CmdComplete:
		return "complete"
	case CmdFail:
		return "fail"
	case CmdRegisterNode:
		return "register_node"
	case CmdRemoveNode:
		return "remove_node"
	case CmdSubmitBatch:
		return "submit_batch"
	}
	if n, ok := swCommandNames[t]; ok {
		return n
	}
	return fmt.Sprintf("command(%d)", uint8(t))
}

// Sentinel errors returned by apply (through ApplyFuture.Response) and by reads. The API
// maps them to status codes in one place.
var (
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrStaleLease    = errors.New("stale lease")
	ErrInvalidState  = errors.New("invalid state transition")
	ErrUnknownCmd    = errors.New("unknown command type")
	ErrBadCommand    = errors.New("malformed command")
	ErrInvalidCursor = errors.New("invalid cursor")
)

// SubmitJob adds a job. The leader stamps ID, CreatedAt and the default max attempts.
type SubmitJob struct {
	Definition proto.JobDefinition `json:"definition"`
}

// SubmitBatch adds several jobs in one entry (schedules expanding a glob, bulk submits).
type SubmitBatch struct {
	Definitions []proto.JobDefinition `json:"definitions"`
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
// attempt, or finish a cancel the agent could not acknowledge.
type LeaseExpire struct {
	LeaseToken
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
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
