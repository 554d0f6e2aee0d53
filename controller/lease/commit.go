package lease

import (
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// The commit point (DESIGN.md "Leases" 8; the rule itself is in controller/state/commit.go).
//
// An agent asks to commit its attempt right before it defines the job's domain. Committed,
// the attempt owns the job: its lease is renewed by heartbeats as before, but its timer runs
// for CommitGrace instead of the TTL, and when even that runs out the job fails with a
// message for the operator instead of going to another attempt. Why not requeue: the
// leader cannot tell an agent that died before defining from one that defined and then
// lost its network, and a second attempt in the second case leaves the VM defined on two
// hosts. Why a grace longer than the TTL: an agent cut off after its commit carries on (it
// defines, checks the boot, retries its report), and a controller failover or a short
// partition must not turn a migration that worked into an operator's chore.

// DefaultCommitGrace is how long a committed attempt's agent may stay silent by default.
const DefaultCommitGrace = 2 * time.Minute

// CommitGrace is the configured grace (agents keep retrying their final report that long).
func (m *Manager) CommitGrace() time.Duration { return m.cfg.CommitGrace }

// Commit commits the agent's attempt as the one that defines the job's domain. A stale
// token or another agent's lease is ErrStale (409: the attempt deletes its disks and
// stops); a job cancelled meanwhile answers Cancel and is not committed.
func (m *Manager) Commit(req proto.CommitRequest) (proto.CommitResponse, error) {
	if err := m.checkOwner(req.LeaseToken, req.Agent); err != nil {
		return proto.CommitResponse{}, err
	}
	if j, ok := m.st.Job(req.JobID); ok && j.CancelRequested {
		return proto.CommitResponse{Cancel: true,
			Message: fmt.Sprintf("job %s was cancelled: attempt %d is not committed; delete its disks and report cancelled", req.JobID, req.Attempt)}, nil
	}
	tok := state.LeaseToken{JobID: req.JobID, Attempt: req.Attempt}
	if _, err := m.raft.Apply(state.MustEncode(state.CmdLeaseCommit, state.LeaseCommit{
		LeaseToken: tok, Agent: req.Agent, Domain: req.Domain, LibvirtURI: req.LibvirtURI, At: m.now(),
	})); err != nil {
		return proto.CommitResponse{}, err
	}
	// The commit event re-arms the lease for the grace too; doing it here as well means
	// the TTL timer armed before cannot win a race with that event.
	m.mu.Lock()
	if j, ok := m.st.Job(req.JobID); ok && m.leading && j.Status == proto.StatusRunning && j.Attempt == req.Attempt {
		m.arm(j)
	}
	m.mu.Unlock()
	m.log.Info("attempt committed: it may define its domain", "job", req.JobID, "attempt", req.Attempt, "agent", req.Agent,
		"domain", req.Domain)
	return proto.CommitResponse{Committed: true, GraceSeconds: m.cfg.CommitGrace.Seconds(),
		Message: fmt.Sprintf("attempt %d of job %s committed: define the domain", req.Attempt, req.JobID)}, nil
}

// committedSilence is the job's error when a committed attempt's agent stayed silent for
// the whole grace: what happened, where the domain may be, what to do.
func (m *Manager) committedSilence(tok state.LeaseToken, agent string) string {
	domain, uri := "", ""
	if j, ok := m.st.Job(tok.JobID); ok && j.Commit != nil {
		domain, uri = j.Commit.Domain, j.Commit.LibvirtURI
	}
	where := "its domain"
	if domain != "" {
		where = fmt.Sprintf("domain %q", domain)
		if uri != "" {
			where += " on " + uri
		}
	}
	return fmt.Sprintf("attempt %d was committed on agent %s, which then sent no heartbeat for %s: %s may be defined on that host, "+
		"so the job is not run again automatically (a second attempt could define the VM on two hosts). "+
		"Check the agent's host (virsh dominfo %s); if the domain is not there, resubmit the job",
		tok.Attempt, agent, m.cfg.CommitGrace, where, orName(domain))
}

func orName(domain string) string {
	if domain == "" {
		return "NAME"
	}
	return domain
}
