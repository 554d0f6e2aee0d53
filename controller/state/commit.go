package state

import (
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// The commit point (DESIGN.md "Leases" 8): one job leaves one domain in the whole fleet.
//
// A lease is at-least-once: the attempt of an agent that is cut off, paused or slow may
// still be running when its lease expires and the job runs again elsewhere. Copying disks
// twice is harmless (each attempt writes its own host's storage dir and deletes it when it
// stops), defining the domain twice is not: the VM would then exist on two hosts, with the
// same MACs and SMBIOS UUID. So an agent defines a domain only after the leader has
// committed its (job, attempt) as committing (LeaseCommit, command 13), and apply accepts
// that for the current attempt of a running job, held by the agent that asks, not
// cancelled. A refused commit (409: the lease moved on, or the job is gone) makes the
// attempt delete its disks and stop without defining.
//
// Once committed, the attempt owns the job: no other attempt takes it while this one is
// silent, because the controllers cannot tell "the agent died before define" from "it
// defined and then went silent", and only in the first case would another attempt be
// safe. The rule, for every command that ends an attempt:
//   - the agent's own fail report still ends it (it cleaned up before reporting) and may
//     requeue: the next attempt commits afresh;
//   - a TTL expiry armed before the commit (LeaseExpire without Committed) is stale: the
//     leader re-arms the lease with the commit grace;
//   - an expiry of the grace (LeaseExpire{Committed: true}: the agent sent no heartbeat for
//     the whole grace, minutes, not one TTL) never requeues: the job fails with the
//     leader's reason, which names the agent and the domain and asks the operator to check
//     that host, or it ends cancelled if a cancel was asked for.
// An operator would rather read "check host X, resubmit if the domain is not there" than
// find the same VM defined (and, with start_after, running) on two hosts.

// LeaseCommit commits an attempt as the one that defines the job's domain.
type LeaseCommit struct {
	LeaseToken
	Agent      string    `json:"agent"`
	Domain     string    `json:"domain,omitempty"`
	LibvirtURI string    `json:"libvirt_uri,omitempty"`
	At         time.Time `json:"at"`
}

// committed says whether the job's current attempt passed the commit point.
func committed(j *proto.Job) bool {
	return j.Commit != nil && j.Commit.Attempt == j.Attempt
}

// Committed is committed for readers outside apply (the lease manager arms a committed
// lease's timer with the grace).
func Committed(j *proto.Job) bool { return committed(j) }

func (s *State) applyLeaseCommit(idx uint64, c LeaseCommit) any {
	check := func(j *proto.Job) error {
		switch {
		case c.Agent == "" || j.Agent != c.Agent:
			return fmt.Errorf("job %s attempt %d is leased to %q, not %q: %w", c.JobID, c.Attempt, j.Agent, c.Agent, ErrStaleLease)
		case committed(j):
			if j.Commit.Agent == c.Agent {
				return nil // a retried commit whose answer was lost: the same answer again
			}
			return fmt.Errorf("job %s attempt %d is committed by %s: %w", c.JobID, c.Attempt, j.Commit.Agent, ErrStaleLease)
		case j.CancelRequested:
			return fmt.Errorf("job %s was cancelled: attempt %d may not define its domain: %w", c.JobID, c.Attempt, ErrInvalidState)
		}
		return nil
	}
	return s.updateLeaseIf(idx, c.LeaseToken, check, func(nj *proto.Job) EventKind {
		if !committed(nj) {
			nj.Commit = &proto.JobCommit{Attempt: c.Attempt, Agent: c.Agent, Domain: c.Domain, LibvirtURI: c.LibvirtURI, At: c.At}
			nj.UpdatedAt = c.At
		}
		return EventJobCommitted
	})
}

// expiryFits refuses an expiry that does not fit the lease it would end: a TTL expiry of a
// committed attempt (armed before the commit; the leader re-arms with the grace).
func expiryFits(j *proto.Job, c LeaseExpire) error {
	if committed(j) && !c.Committed {
		return fmt.Errorf("job %s attempt %d is committed: only its grace ends it: %w", c.JobID, c.Attempt, ErrStaleLease)
	}
	return nil
}

// endCommitted ends a committed attempt whose agent stayed silent for the whole grace:
// never requeued (its domain may exist on its host), failed with reason for the operator,
// or cancelled when a cancel was asked for.
func endCommitted(nj *proto.Job, reason string, at time.Time) EventKind {
	nj.UpdatedAt = at
	nj.CompletedAt = &at
	if nj.CancelRequested {
		nj.Status = proto.StatusCancelled
		nj.Progress.Stage = string(proto.StatusCancelled)
		nj.Warnings = appendWarnings(nj.Warnings, []string{reason})
		return EventJobCancelled
	}
	nj.Status = proto.StatusFailed
	nj.Error = &reason
	return EventJobFailed
}
