// Package fleet is a controller's live view of the agents, built from gossip events: who
// is alive, suspect, dead or left, what each can hold and do, and how busy it is. It
// serves GET /agents, the /status slot counts, the per-agent Prometheus gauges, and tells
// the lease manager when an agent is gone so its leases can expire early.
package fleet

import (
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip"
)

// Source is the gossip node the view is built from (*gossip.Node).
type Source interface {
	// Watch delivers member events in order, starting with the current members.
	Watch(fn func(gossip.Event)) (stop func())
	// Member returns a member's latest record (for a last_seen fresher than the last event).
	Member(name string) (gossip.Member, bool)
}

// Config of the view. Zero values mean the defaults.
type Config struct {
	// DeadRetention is how long a dead or left agent stays listed (with its last_seen)
	// before it vanishes. Default 24h: long enough for an operator to notice a dead host
	// the next morning.
	DeadRetention time.Duration
	Logger        *slog.Logger
}

// DefaultDeadRetention is the default of Config.DeadRetention.
const DefaultDeadRetention = 24 * time.Hour

// Fleet is the view. Safe for concurrent use.
type Fleet struct {
	src       Source
	retention time.Duration
	log       *slog.Logger
	stop      func()

	mu     sync.Mutex
	agents map[string]*agent // by agent name
	onDead map[int]func(string)
	nextID int
}

type agent struct {
	info   proto.AgentInfo
	member string    // gossip member name, for Source.Member
	goneAt time.Time // when it became dead or left; zero while a member
}

// New builds the view and starts following src.
func New(src Source, cfg Config) *Fleet {
	if cfg.DeadRetention <= 0 {
		cfg.DeadRetention = DefaultDeadRetention
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	f := &Fleet{src: src, retention: cfg.DeadRetention, log: cfg.Logger.With("component", "fleet"),
		agents: map[string]*agent{}, onDead: map[int]func(string){}}
	f.stop = src.Watch(f.apply)
	return f
}

// Close stops following the gossip node.
func (f *Fleet) Close() { f.stop() }

// OnDead registers fn to be called with an agent's name when it is declared dead or leaves
// (either way its leases will never be renewed). Each call runs on its own goroutine, so a
// slow fn (a raft apply) never holds up the view; calls for different agents may arrive
// in any order. cancel unregisters fn.
func (f *Fleet) OnDead(fn func(name string)) (cancel func()) {
	f.mu.Lock()
	id := f.nextID
	f.nextID++
	f.onDead[id] = fn
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		delete(f.onDead, id)
		f.mu.Unlock()
	}
}

func (f *Fleet) apply(e gossip.Event) {
	if e.Node.Role != proto.RoleAgent {
		return // controllers, and members whose metadata could not be read
	}
	name := e.Node.Name
	f.mu.Lock()
	a := f.agents[name]
	if a == nil {
		a = &agent{}
		f.agents[name] = a
	}
	wasMember := a.info.State.Member()
	a.member = e.Name
	a.info = proto.AgentInfo{
		Name:         name,
		State:        proto.AgentState(e.State),
		Address:      e.Addr,
		APIAddr:      e.Node.APIAddr,
		Capacity:     e.Node.Capacity,
		RunningJobs:  e.Node.RunningJobs,
		MaxJobs:      e.Node.MaxJobs,
		Capabilities: e.Node.Capabilities,
		LastSeen:     e.LastSeen,
		Version:      e.Node.Version,
	}
	gone := !a.info.State.Member()
	a.goneAt = time.Time{}
	if gone {
		a.goneAt = e.At
	}
	var notify []func(string)
	// Only the transition fires: a replayed or repeated dead event must not expire the
	// leases of an agent a second time.
	if gone && wasMember {
		for _, fn := range f.onDead {
			notify = append(notify, fn)
		}
	}
	f.mu.Unlock()

	switch e.Type {
	case gossip.EventDead:
		f.log.Warn("agent dead", "agent", name, "addr", e.Addr, "last_seen", e.LastSeen)
	case gossip.EventLeave:
		f.log.Info("agent left", "agent", name)
	case gossip.EventJoin:
		f.log.Info("agent joined", "agent", name, "addr", e.Addr, "max_jobs", e.Node.MaxJobs)
	case gossip.EventSuspect:
		f.log.Warn("agent suspect", "agent", name)
	}
	for _, fn := range notify {
		go fn(name)
	}
}

// snapshot copies the agents (all, or the one named), dropping those gone for longer than
// the retention.
func (f *Fleet) snapshot(only string) []agent {
	now := time.Now()
	f.mu.Lock()
	out := make([]agent, 0, len(f.agents))
	for name, a := range f.agents {
		if !a.goneAt.IsZero() && now.Sub(a.goneAt) > f.retention {
			delete(f.agents, name)
			continue
		}
		if only != "" && name != only {
			continue
		}
		c := *a
		c.info.Capabilities.NbdkitPlugins = slices.Clone(a.info.Capabilities.NbdkitPlugins)
		c.info.Capabilities.Methods = slices.Clone(a.info.Capabilities.Methods)
		out = append(out, c)
	}
	f.mu.Unlock()
	// Outside f.mu: last_seen moves with every answered ping, which produces no event.
	for i := range out {
		if out[i].info.State.Member() {
			if m, ok := f.src.Member(out[i].member); ok && m.LastSeen.After(out[i].info.LastSeen) {
				out[i].info.LastSeen = m.LastSeen
			}
		}
	}
	return out
}

// List returns every agent, sorted by name: members and, for DeadRetention, dead or left ones.
func (f *Fleet) List() []proto.AgentInfo {
	snap := f.snapshot("")
	out := make([]proto.AgentInfo, len(snap))
	for i, a := range snap {
		out[i] = a.info
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns one agent.
func (f *Fleet) Get(name string) (proto.AgentInfo, bool) {
	if name == "" {
		return proto.AgentInfo{}, false
	}
	snap := f.snapshot(name)
	if len(snap) == 0 {
		return proto.AgentInfo{}, false
	}
	return snap[0].info, true
}

// Slots returns the job slots of the agents still in the pool and how many are busy (the
// /status worker_count and active_workers). Suspect agents count: they are most likely
// still running their jobs, and dropping them on every missed ping would make the
// numbers flap.
func (f *Fleet) Slots() (total, busy int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.agents {
		if a.info.State.Member() {
			total += a.info.MaxJobs
			busy += a.info.RunningJobs
		}
	}
	return total, busy
}
