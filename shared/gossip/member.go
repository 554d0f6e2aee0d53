package gossip

import (
	"net"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/hypersdk/hypersdk/proto"
)

// State of a member as this node sees it.
type State string

const (
	StateAlive   State = "alive"
	StateSuspect State = "suspect"
	StateDead    State = "dead"
	StateLeft    State = "left"
)

// EventType says what happened to a member.
type EventType int

const (
	// EventJoin: a member appeared (or came back after dead/left).
	EventJoin EventType = iota
	// EventUpdate: a member's metadata changed.
	EventUpdate
	// EventSuspect: it stopped answering this node's pings; it is still a member.
	EventSuspect
	// EventAlive: a suspect member answered again.
	EventAlive
	// EventLeave: it left gracefully (announced Leaving, then left).
	EventLeave
	// EventDead: the pool declared it failed.
	EventDead
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventSuspect:
		return "suspect"
	case EventAlive:
		return "alive"
	case EventLeave:
		return "leave"
	case EventDead:
		return "dead"
	}
	return "unknown"
}

// Member is one node of the pool as this node last saw it.
type Member struct {
	// Name is the memberlist name, "<role>:<name>", so a controller and an agent on one
	// host (both defaulting to the hostname) do not collide.
	Name string
	// Addr is the member's gossip address, ip:port.
	Addr  string
	State State
	// Node is the member's decoded metadata (zero Role when it could not be decoded).
	Node proto.NodeMeta
	// LastSeen is the last evidence it was alive: join, metadata update, answered ping.
	LastSeen time.Time
	// Since is when State last changed.
	Since time.Time

	// leaving: the member told this node directly that it is about to leave.
	leaving bool
}

// Event is one change of a member, delivered in order to Watch callbacks.
type Event struct {
	Type EventType
	Member
	At time.Time
}

// MemberName is the memberlist name of a node with this role and name.
func MemberName(role proto.NodeRole, name string) string { return string(role) + ":" + name }

// members is the node's own view of the pool, fed by memberlist's callbacks and by its
// pings. memberlist keeps dead/left/suspect to itself (Node.State is never set on the
// nodes handed to EventDelegate or returned by Members in v0.5.4; hashicorp/memberlist
// PR #321), so this view is the only place those states exist.
//
// Lock order: memberlist calls the delegates with its nodeLock held, and they take mu.
// Nothing here calls into memberlist with mu held, or the two would deadlock.
type members struct {
	self string
	log  logger

	mu      sync.Mutex
	byName  map[string]*Member
	subs    map[*subscriber]struct{}
	closed  bool
	metaErr map[string]bool // names whose undecodable meta was already logged at warn
}

type logger interface {
	Warn(msg string, args ...any)
	Info(msg string, args ...any)
	Debug(msg string, args ...any)
}

func newMembers(self string, log logger) *members {
	return &members{self: self, log: log, byName: map[string]*Member{}, subs: map[*subscriber]struct{}{},
		metaErr: map[string]bool{}}
}

// publish hands e to every subscriber; mu is held so the order of events is the order of
// changes, and Watch's replay cannot interleave with a live event.
func (ms *members) publish(t EventType, m *Member, now time.Time) {
	e := Event{Type: t, Member: *m, At: now}
	for s := range ms.subs {
		s.push(e)
	}
}

// fromMemberlist records a join, update or leave reported by memberlist.
func (ms *members) fromMemberlist(t EventType, n *memberlist.Node) {
	meta, err := proto.DecodeNodeMeta(n.Meta)
	now := time.Now()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if err != nil {
		// A member of a newer incompatible format or a stranger: keep it visible, without
		// metadata, and say so once.
		if !ms.metaErr[n.Name] {
			ms.log.Warn("member metadata undecodable", "member", n.Name, "err", err)
			ms.metaErr[n.Name] = true
		}
	} else {
		delete(ms.metaErr, n.Name)
	}
	m := ms.byName[n.Name]
	if m == nil {
		m = &Member{Name: n.Name, Since: now}
		ms.byName[n.Name] = m
	}
	m.Addr = n.Address()
	if err == nil || t == EventJoin {
		m.Node = meta
	}
	switch t {
	case EventJoin, EventUpdate:
		if m.State != StateAlive {
			m.State, m.Since = StateAlive, now
		}
		if t == EventJoin {
			m.leaving = false // a new life: an old leaving notice no longer applies
		}
		m.LastSeen = now
	case EventDead:
		// NotifyLeave fires for both a crash and a leave. A leaving node says so first, by
		// a direct message (markLeaving) and in its metadata; either tells them apart. A
		// receiver that got neither reports dead: the safe side, since dead only hastens
		// the expiry of leases the agent gave up anyway.
		if m.leaving || m.Node.Leaving {
			t = EventLeave
			m.State = StateLeft
		} else {
			m.State = StateDead
		}
		m.Since = now
	}
	ms.log.Debug("member "+t.String(), "member", n.Name, "addr", m.Addr)
	ms.publish(t, m, now)
}

// lateLeaveWindow: a leaving notice arriving this soon after the member was declared dead
// turns the death into a leave. The notice goes over TCP and the leave over UDP; under
// load the receiver can process them in either order.
const lateLeaveWindow = 10 * time.Second

// markLeaving records a member's notice that it is about to leave.
func (ms *members) markLeaving(name string) {
	now := time.Now()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m := ms.byName[name]
	if m == nil {
		return
	}
	m.leaving = true
	if m.State == StateDead && now.Sub(m.Since) < lateLeaveWindow {
		m.State, m.Since = StateLeft, now
		ms.log.Debug("member leave (notice after death)", "member", name)
		ms.publish(EventLeave, m, now)
	}
}

// pinged records the outcome of a ping (ours or memberlist's probe) of name.
func (ms *members) pinged(name string, ok bool) {
	now := time.Now()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m := ms.byName[name]
	if m == nil || ms.closed {
		return
	}
	switch {
	// Only memberlist declares a member dead or brings it back (EventJoin): a late ping
	// answer must not resurrect a member the pool already buried.
	case m.State == StateDead || m.State == StateLeft:
	case ok:
		m.LastSeen = now
		if m.State == StateSuspect {
			m.State, m.Since = StateAlive, now
			ms.log.Info("member answers again", "member", name)
			ms.publish(EventAlive, m, now)
		}
	case m.State == StateAlive:
		m.State, m.Since = StateSuspect, now
		ms.log.Info("member suspect: no answer to ping", "member", name)
		ms.publish(EventSuspect, m, now)
	}
}

// stale lists the live members other than self not heard from since cutoff.
func (ms *members) stale(cutoff time.Time) []Member {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var out []Member
	for _, m := range ms.byName {
		if m.Name != ms.self && (m.State == StateAlive || m.State == StateSuspect) && m.LastSeen.Before(cutoff) {
			out = append(out, *m)
		}
	}
	return out
}

// forget drops members dead or left since before cutoff.
func (ms *members) forget(cutoff time.Time) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for name, m := range ms.byName {
		if (m.State == StateDead || m.State == StateLeft) && m.Since.Before(cutoff) {
			delete(ms.byName, name)
			delete(ms.metaErr, name)
		}
	}
}

func (ms *members) list() []Member {
	ms.mu.Lock()
	out := make([]Member, 0, len(ms.byName))
	for _, m := range ms.byName {
		out = append(out, *m)
	}
	ms.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (ms *members) get(name string) (Member, bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m, ok := ms.byName[name]
	if !ok {
		return Member{}, false
	}
	return *m, true
}

// delegate adapts memberlist's callbacks. Every method is called by memberlist's own
// goroutines and must not block: events go to per-subscriber queues.
type delegate struct {
	n *Node
}

// memberlist.Delegate

func (d *delegate) NodeMeta(limit int) []byte {
	b := d.n.metaBytes.Load()
	if b == nil || len(*b) > limit {
		return nil // cannot happen: Encode stays within proto.NodeMetaMaxSize
	}
	return *b
}
func (d *delegate) NotifyMsg(b []byte) {
	if name, ok := parseLeavingMsg(b); ok {
		d.n.members.markLeaving(name)
	}
}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// memberlist.EventDelegate

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.n.members.fromMemberlist(EventJoin, n) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.n.members.fromMemberlist(EventUpdate, n) }
func (d *delegate) NotifyLeave(n *memberlist.Node)  { d.n.members.fromMemberlist(EventDead, n) }

// memberlist.PingDelegate: memberlist's own probe answers are free evidence of life.

func (d *delegate) AckPayload() []byte { return nil }
func (d *delegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	d.n.members.pinged(other.Name, true)
}

func udpAddr(hostPort string) (net.Addr, error) { return net.ResolveUDPAddr("udp", hostPort) }

// User messages between gossip nodes: a type byte then the payload.
const msgLeaving byte = 1

func leavingMsg(name string) []byte { return append([]byte{msgLeaving}, name...) }

func parseLeavingMsg(b []byte) (string, bool) {
	if len(b) < 2 || b[0] != msgLeaving {
		return "", false
	}
	return string(b[1:]), true
}
