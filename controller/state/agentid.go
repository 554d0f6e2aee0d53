package state

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// Agent identities (issue 18). The join token only enrols: an agent makes up its own
// credential, keeps it in its state dir and enrols the credential's SHA-256 under its
// name. Every later agent call is authenticated by that credential, and the name in the
// request must be the one it was enrolled under. The identities are replicated so any
// controller (a follower the agent happens to talk to, a new leader) can check them; the
// clear credential never leaves the agent.

// MaxAgentIdentities bounds the identities a holder of the join token can make the
// cluster keep (each is in every snapshot). A constant: every node must agree.
const MaxAgentIdentities = 10000

// AgentIdentity is an enrolled agent.
type AgentIdentity struct {
	Name string `json:"name"`
	// CredentialSHA256 is the hex SHA-256 of the agent's credential.
	CredentialSHA256 string    `json:"credential_sha256"`
	EnrolledAt       time.Time `json:"enrolled_at"`
	RotatedAt        time.Time `json:"rotated_at,omitzero"`
	// RotateRequested: an admin asked for a new credential (hyperctl agents rotate); the
	// agent is told on its next call and rotates itself (the controller never makes one).
	RotateRequested bool `json:"rotate_requested,omitempty"`
}

// AgentEnroll records an agent's credential under its name. A second enrolment with the
// same credential is a no-op (the agent retries after a lost answer); with another one it
// is refused: that name belongs to a live credential until an admin forgets it.
type AgentEnroll struct {
	Name             string    `json:"name"`
	CredentialSHA256 string    `json:"credential_sha256"`
	At               time.Time `json:"at"`
}

// AgentRotate replaces an agent's credential; Old must be the current one (the agent
// authenticated with it), so a rotation replayed after a newer one changes nothing.
type AgentRotate struct {
	Name string    `json:"name"`
	Old  string    `json:"old"`
	New  string    `json:"new"`
	At   time.Time `json:"at"`
}

// AgentForget removes an identity (an admin: the host was replaced, or its credential
// lost); the name may then be enrolled again.
type AgentForget struct {
	Name string `json:"name"`
}

// AgentRotateRequest marks an identity for rotation (an admin).
type AgentRotateRequest struct {
	Name string `json:"name"`
}

func validCredentialHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	return strings.Trim(h, "0123456789abcdef") == ""
}

func (s *State) applyAgentEnroll(c AgentEnroll) any {
	if c.Name == "" || len(c.Name) > proto.MaxNodeNameLen || !validCredentialHash(c.CredentialSHA256) {
		return fmt.Errorf("%w: agent_enroll needs a name and a lower-case hex SHA-256", ErrBadCommand)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.agentIDs[c.Name]; ok {
		if id.CredentialSHA256 == c.CredentialSHA256 {
			return *id
		}
		return fmt.Errorf("agent %s is enrolled with another credential (on a replaced host, an admin runs `hyperctl agents forget %s` first): %w", c.Name, c.Name, ErrExists)
	}
	if _, ok := s.agentByCred[c.CredentialSHA256]; ok {
		return fmt.Errorf("%w: that credential is enrolled under another name", ErrExists)
	}
	if len(s.agentIDs) >= MaxAgentIdentities {
		return fmt.Errorf("%w: at most %d agents may be enrolled; forget unused ones", proto.ErrInvalid, MaxAgentIdentities)
	}
	id := &AgentIdentity{Name: c.Name, CredentialSHA256: c.CredentialSHA256, EnrolledAt: c.At}
	s.agentIDs[c.Name] = id
	s.agentByCred[c.CredentialSHA256] = c.Name
	return *id
}

func (s *State) applyAgentRotate(c AgentRotate) any {
	if !validCredentialHash(c.New) {
		return fmt.Errorf("%w: agent_rotate needs a lower-case hex SHA-256", ErrBadCommand)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.agentIDs[c.Name]
	if !ok {
		return fmt.Errorf("agent %s: %w", c.Name, ErrNotFound)
	}
	if id.CredentialSHA256 == c.New {
		return *id // a retry of an applied rotation
	}
	if id.CredentialSHA256 != c.Old {
		return fmt.Errorf("agent %s: the credential was rotated meanwhile: %w", c.Name, ErrStaleLease)
	}
	if _, taken := s.agentByCred[c.New]; taken {
		return fmt.Errorf("%w: that credential is enrolled under another name", ErrExists)
	}
	n := *id
	delete(s.agentByCred, n.CredentialSHA256)
	n.CredentialSHA256, n.RotatedAt, n.RotateRequested = c.New, c.At, false
	s.agentIDs[c.Name] = &n
	s.agentByCred[c.New] = c.Name
	return n
}

func (s *State) applyAgentForget(c AgentForget) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.agentIDs[c.Name]
	if !ok {
		return fmt.Errorf("agent %s is not enrolled: %w", c.Name, ErrNotFound)
	}
	delete(s.agentByCred, id.CredentialSHA256)
	delete(s.agentIDs, c.Name)
	return nil
}

func (s *State) applyAgentRotateRequest(c AgentRotateRequest) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.agentIDs[c.Name]
	if !ok {
		return fmt.Errorf("agent %s is not enrolled: %w", c.Name, ErrNotFound)
	}
	n := *id
	n.RotateRequested = true
	s.agentIDs[c.Name] = &n
	return n
}

// AgentByCredential returns the identity a credential hash (hex SHA-256) belongs to.
func (s *State) AgentByCredential(sum string) (AgentIdentity, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	name, ok := s.agentByCred[sum]
	if !ok {
		return AgentIdentity{}, false
	}
	return *s.agentIDs[name], true
}

// AgentIdentities returns every enrolled agent by name.
func (s *State) AgentIdentities() []AgentIdentity {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]AgentIdentity, 0, len(s.agentIDs))
	for _, id := range s.agentIDs {
		out = append(out, *id)
	}
	slices.SortFunc(out, func(a, b AgentIdentity) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// restoreAgentsLocked replaces the identities with a snapshot's. Caller holds the lock.
func (s *State) restoreAgentsLocked(ids []AgentIdentity) {
	for _, id := range ids {
		id := id
		s.agentIDs[id.Name] = &id
		s.agentByCred[id.CredentialSHA256] = id.Name
	}
}
