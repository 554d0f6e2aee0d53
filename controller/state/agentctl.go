package state

import (
	"fmt"
	"sort"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// Agent controls: an operator's cordon, drain and uncordon of an agent, replicated so
// every controller (and the next leader) keeps an agent out of work. Commands 30-39.

const (
	// CmdAgentControl sets or clears an agent's cordon (AgentControl).
	CmdAgentControl CommandType = 30
)

func init() { commandNames[CmdAgentControl] = "agent_control" }

// EventAgentControl: an agent was cordoned, drained or uncordoned (no job changed).
const EventAgentControl EventKind = "agent.control"

// Agent control actions.
const (
	AgentCordon   = "cordon"   // no new jobs; running ones finish
	AgentDrain    = "drain"    // no new jobs; running ones are handed back at a safe point
	AgentUncordon = "uncordon" // back to work
)

// AgentControl is the command, and the stored control of one agent.
type AgentControl struct {
	Agent  string    `json:"agent"`
	Action string    `json:"action"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

func (s *State) applyAgentControl(idx uint64, c AgentControl) any {
	if c.Agent == "" {
		return fmt.Errorf("%w: agent control without an agent", ErrBadCommand)
	}
	s.mu.Lock()
	switch c.Action {
	case AgentCordon, AgentDrain:
		s.agentCtl[c.Agent] = c
	case AgentUncordon:
		delete(s.agentCtl, c.Agent)
	default:
		s.mu.Unlock()
		return fmt.Errorf("%w: agent control action %q", ErrBadCommand, c.Action)
	}
	s.mu.Unlock()
	s.events.publish(Event{Kind: EventAgentControl, Index: idx})
	return nil
}

// AgentControlOf returns the agent's cordon or drain (ok false: it takes work).
func (s *State) AgentControlOf(agent string) (AgentControl, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.agentCtl[agent]
	return c, ok
}

// AgentControls returns every cordoned or draining agent, by name.
func (s *State) AgentControls() []AgentControl {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.agentControlsLocked()
}

func (s *State) agentControlsLocked() []AgentControl {
	out := make([]AgentControl, 0, len(s.agentCtl))
	for _, c := range s.agentCtl {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Agent < out[j].Agent })
	return out
}

// AgentEverSeen reports whether the replicated state knows the agent: a job ran (or runs)
// on it, it is enrolled with its own credential, or it is cordoned.
func (s *State) AgentEverSeen(agent string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.byAgent[agent]
	_, ctl := s.agentCtl[agent]
	_, enrolled := s.agentIDs[agent]
	return ok || ctl || enrolled
}

// ActiveJobForVM returns a pending or running job of the source VM (same vm_path and
// vCenter), if there is one.
func (s *State) ActiveJobForVM(vmPath, vcenterKey string) (*proto.Job, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, e := range s.byVMPath[vmPath] {
		j := e.job
		if !j.Status.Terminal() && j.Definition.VCenterKey() == vcenterKey {
			return j, true
		}
	}
	return nil, false
}

// OldestPending is when the job pending longest was submitted (ok false: none pending).
// The pending index is in submission order, so this is its first entry.
func (s *State) OldestPending() (time.Time, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.byStatus[proto.StatusPending].Min()
	if !ok {
		return time.Time{}, false
	}
	return e.job.SubmittedAt, true
}

// LeaseCounters are cluster-wide totals that apply keeps (every node the same, surviving
// failover): leases that expired, and attempts that ended with the job pending again.
type LeaseCounters struct {
	LeaseExpiries uint64 `json:"lease_expiries"`
	Requeues      uint64 `json:"requeues"`
}

// Counters returns the lease counters.
func (s *State) Counters() LeaseCounters {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.counters
}
