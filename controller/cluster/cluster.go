// Package cluster owns the raft node of a controller: storage, transport, bootstrap, join,
// leader tracking and the start/stop of leader-only work. Nothing else touches raft.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/hypersdk/hypersdk/controller/state"
)

// Sentinel errors.
var (
	ErrNotLeader = errors.New("not the raft leader")
	// ErrLeadershipLost: leadership was lost while the entry was in flight; it may or may
	// not have been committed. Retrying is safe only for idempotent commands.
	ErrLeadershipLost = errors.New("raft leadership lost while committing")
	ErrNoLeader       = errors.New("no raft leader")
	ErrShutdown       = errors.New("raft is shut down")
	ErrTimeout        = errors.New("raft apply timed out")
	ErrUnknownNode    = errors.New("unknown node")
)

// Config configures a raft node. Zero values mean the defaults of DefaultConfig.
type Config struct {
	NodeID   string
	DataDir  string
	RaftAddr string // bind address host:port; port 0 picks one (tests)
	// RaftAdvertise is the address other nodes dial; defaults to the bound address.
	RaftAdvertise string
	// Bootstrap makes this node form a new single-node cluster when it has no state.
	Bootstrap bool
	// TLS, when set, runs the raft transport over mutual TLS (transport.go); nil: plain TCP.
	TLS *TransportTLS

	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotThreshold  uint64
	SnapshotInterval   time.Duration
	TrailingLogs       uint64
	ApplyTimeout       time.Duration
	// MaxStaleness: a follower that has not heard from a leader for longer answers reads
	// 503 (sync.go). MaxLag: a follower more entries than this behind the leader is
	// catching up again. PeerTimeout: the leader shows a member unreachable when it has not
	// answered for longer.
	MaxStaleness time.Duration
	MaxLag       uint64
	PeerTimeout  time.Duration
	// NoSync skips fsync of the log (tests only: faster, loses durability on power loss).
	NoSync bool

	Logger *slog.Logger

	// barrier replaces raft's Barrier in tests that make establishing leadership fail.
	barrier func(r *raft.Raft, timeout time.Duration) error
}

// DefaultConfig is tuned for a LAN: a failed leader is replaced in about 1-3 s.
func DefaultConfig() Config {
	return Config{
		HeartbeatTimeout:   1000 * time.Millisecond,
		ElectionTimeout:    1000 * time.Millisecond,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		SnapshotThreshold:  8192,
		SnapshotInterval:   30 * time.Second,
		TrailingLogs:       10240,
		ApplyTimeout:       10 * time.Second,
		MaxStaleness:       5 * time.Second,
		MaxLag:             4096,
		PeerTimeout:        2 * time.Second,
	}
}

// FastConfig shortens every timer for tests and one-machine demos. Not shorter than this:
// on a loaded 2-core CI machine, 200 ms timeouts made leaders step down spuriously.
func FastConfig() Config {
	c := DefaultConfig()
	c.HeartbeatTimeout = 500 * time.Millisecond
	c.ElectionTimeout = 500 * time.Millisecond
	c.LeaderLeaseTimeout = 250 * time.Millisecond
	c.SnapshotInterval = 2 * time.Second
	return c
}

func (c *Config) fill() {
	d := DefaultConfig()
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = d.ElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = d.LeaderLeaseTimeout
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = d.CommitTimeout
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = d.SnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = d.ApplyTimeout
	}
	if c.MaxStaleness == 0 {
		c.MaxStaleness = d.MaxStaleness
	}
	if c.MaxLag == 0 {
		c.MaxLag = d.MaxLag
	}
	if c.PeerTimeout == 0 {
		// Two heartbeat timeouts: the leader heartbeats every tenth of one, so a live
		// member misses twenty in a row before it is shown unreachable.
		c.PeerTimeout = 2 * c.HeartbeatTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.barrier == nil {
		c.barrier = func(r *raft.Raft, timeout time.Duration) error { return r.Barrier(timeout).Error() }
	}
}

// Node is one controller's raft member.
type Node struct {
	cfg       Config
	log       *slog.Logger
	raft      *raft.Raft
	state     *state.State
	store     *raftboltdb.BoltStore
	transport *raft.NetworkTransport
	obs       *observedTransport
	logs      raft.LogStore
	notifyCh  chan bool

	// established is set while this node leads with its leadership established;
	// leaderSince is when it last became leader (unix nanoseconds).
	established atomic.Bool
	leaderSince atomic.Int64
	syncMu      sync.Mutex
	sync        syncTracker

	mu          sync.Mutex
	leaderFns   []func(ctx context.Context)
	leaderStop  context.CancelFunc
	leaderCtx   context.Context
	leaderWG    sync.WaitGroup
	closed      bool
	done        chan struct{}
	monitorDone chan struct{}
}

// Open starts the raft node over the given state. A node with no stored state and
// Bootstrap set forms a single-node cluster; otherwise it waits to be added by a leader.
func Open(cfg Config, st *state.State) (*Node, error) {
	cfg.fill()
	if cfg.NodeID == "" {
		return nil, errors.New("cluster: node id is required")
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("component", "raft"), state: st,
		notifyCh: make(chan bool, 16), done: make(chan struct{}), monitorDone: make(chan struct{})}

	hlog := hclog.New(&hclog.LoggerOptions{
		Name:   "raft",
		Level:  hclog.Info,
		Output: &slogWriter{log: n.log},
	})

	bindAddr, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster: raft address %q: %w", cfg.RaftAddr, err)
	}
	var advertise net.Addr
	if cfg.RaftAdvertise != "" {
		if advertise, err = net.ResolveTCPAddr("tcp", cfg.RaftAdvertise); err != nil {
			return nil, fmt.Errorf("cluster: raft advertise address %q: %w", cfg.RaftAdvertise, err)
		}
	} else if bindAddr.IP.IsUnspecified() {
		return nil, fmt.Errorf("cluster: raft address %q binds every interface: set an advertise address", cfg.RaftAddr)
	}
	n.transport, err = newTransport(cfg, advertise, hlog)
	if err != nil {
		return nil, fmt.Errorf("cluster: raft transport on %s: %w", cfg.RaftAddr, err)
	}

	// The data dir is touched only once the transport is bound: a busy raft port refuses
	// the start with the data dir as it was.
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		n.transport.Close()
		return nil, fmt.Errorf("cluster: data dir: %w", err)
	}
	n.store, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"), NoSync: cfg.NoSync})
	if err != nil {
		n.transport.Close()
		return nil, fmt.Errorf("cluster: raft log store: %w", err)
	}
	logs, err := raft.NewLogCache(512, n.store)
	if err != nil {
		n.closeStores()
		return nil, err
	}
	n.logs = logs
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("cluster: snapshot store: %w", err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.NotifyCh = n.notifyCh
	// Let concurrent writers queue their entries without blocking on the leader loop, and
	// let one disk write and one replication round carry up to 256 of them: the log's fsync
	// is the cost of a write, so batching is what makes concurrent submits fast.
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256

	hasState, err := raft.HasExistingState(logs, n.store, snaps)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("cluster: read raft state: %w", err)
	}
	n.obs = newObservedTransport(n.transport)
	n.raft, err = raft.NewRaft(rc, state.FSM{State: st}, logs, n.store, snaps, n.obs)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	if !hasState && cfg.Bootstrap {
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: n.transport.LocalAddr(), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.Close()
			return nil, fmt.Errorf("cluster: bootstrap: %w", err)
		}
		n.log.Info("bootstrapped a new single-node cluster", "raft_addr", n.transport.LocalAddr())
	} else if hasState {
		n.log.Info("restarting from stored raft state", "data_dir", cfg.DataDir)
	}
	go n.monitorLeadership()
	return n, nil
}

func (n *Node) closeStores() {
	if n.store != nil {
		n.store.Close()
	}
	if n.obs != nil {
		n.obs.Close()
	} else if n.transport != nil {
		n.transport.Close()
	}
}

// ID is this node's raft id.
func (n *Node) ID() string { return n.cfg.NodeID }

// RaftAddr is the address other nodes reach this node's raft transport at.
func (n *Node) RaftAddr() string { return string(n.transport.LocalAddr()) }

// HasExistingState reports whether this node has ever been part of a cluster.
func (n *Node) HasExistingState() bool {
	return n.raft.LastIndex() > 0
}

// IsLeader reports whether this node is the leader right now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the current leader's id and raft address ("" when unknown).
func (n *Node) Leader() (id, raftAddr string) {
	addr, lid := n.raft.LeaderWithID()
	return string(lid), string(addr)
}

// State returns the raft role of this node: Leader, Follower, Candidate, Shutdown.
func (n *Node) State() string { return n.raft.State().String() }

// Apply proposes a command on the leader and returns apply's response. Apply's error
// values (state sentinels) come back as the error.
func (n *Node) Apply(cmd []byte) (any, error) {
	if n.raft.State() != raft.Leader {
		return nil, ErrNotLeader
	}
	f := n.raft.Apply(cmd, n.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		return nil, mapRaftErr(err)
	}
	resp := f.Response()
	if err, ok := resp.(error); ok {
		return nil, err
	}
	return resp, nil
}

func mapRaftErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrAbortedByRestore):
		return fmt.Errorf("%w: %v", ErrLeadershipLost, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return ErrTimeout
	}
	return err
}

// Join adds a voter (leader only). Idempotent: the same id and address is a no-op; a
// known id with a new address, or a known address under a new id, is replaced.
func (n *Node) Join(id, raftAddr string) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	if id == "" || raftAddr == "" {
		return errors.New("join: id and raft address are required")
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return mapRaftErr(err)
	}
	for _, srv := range cf.Configuration().Servers {
		sameID, sameAddr := srv.ID == raft.ServerID(id), srv.Address == raft.ServerAddress(raftAddr)
		if sameID && sameAddr {
			if srv.Suffrage == raft.Voter {
				return nil
			}
			break
		}
		if sameID || sameAddr {
			n.log.Info("replacing cluster member", "old_id", srv.ID, "old_addr", srv.Address, "id", id, "addr", raftAddr)
			if err := n.raft.RemoveServer(srv.ID, 0, n.cfg.ApplyTimeout).Error(); err != nil {
				return mapRaftErr(err)
			}
		}
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, n.cfg.ApplyTimeout).Error(); err != nil {
		return mapRaftErr(err)
	}
	n.log.Info("added voter", "id", id, "raft_addr", raftAddr)
	return nil
}

// Remove takes a member out of the configuration (leader only).
func (n *Node) Remove(id string) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return mapRaftErr(err)
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.ID == raft.ServerID(id) {
			return mapRaftErr(n.raft.RemoveServer(srv.ID, 0, n.cfg.ApplyTimeout).Error())
		}
	}
	return fmt.Errorf("%w: %s", ErrUnknownNode, id)
}

// Server is one member of the raft configuration.
type Server struct {
	ID       string
	RaftAddr string
	Voter    bool
}

// Servers returns the current raft configuration.
func (n *Node) Servers() ([]Server, error) {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, mapRaftErr(err)
	}
	var out []Server
	for _, s := range cf.Configuration().Servers {
		out = append(out, Server{ID: string(s.ID), RaftAddr: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return out, nil
}

// Indexes returns the raft commit and applied indexes.
func (n *Node) Indexes() (commit, applied uint64) {
	return n.raft.CommitIndex(), n.raft.AppliedIndex()
}

// LastIndex is the last index in the log or snapshot.
func (n *Node) LastIndex() uint64 { return n.raft.LastIndex() }

// Stats returns raft's own statistics.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// LastContact is when a follower last heard from the leader.
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// WaitForLeader blocks until some node is leader or ctx ends.
func (n *Node) WaitForLeader(ctx context.Context) (string, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if id, _ := n.Leader(); id != "" {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return "", ErrNoLeader
		case <-n.done:
			return "", ErrShutdown
		case <-t.C:
		}
	}
}

// Snapshot forces a snapshot now (tests, operators before maintenance).
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// OnLeadership registers work that runs only while this node leads: fn is called with a
// context that is cancelled when leadership is lost or the node closes. Register before
// the node can become leader (right after Open) or the first term may be missed.
func (n *Node) OnLeadership(fn func(ctx context.Context)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.leaderFns = append(n.leaderFns, fn)
	if n.leaderStop != nil {
		// Already leading (registered late): join the current term.
		n.leaderWG.Add(1)
		go func(ctx context.Context) {
			defer n.leaderWG.Done()
			fn(ctx)
		}(n.leaderCtx)
	}
}

// monitorLeadership turns raft's leadership notifications into terms of leader work, in
// the shape of nomad's monitorLeadership: each "leader" starts a leaderLoop, anything else
// stops it, and seeing "leader" twice restarts it (a new term).
func (n *Node) monitorLeadership() {
	defer close(n.monitorDone)
	var stop, stopped chan struct{}
	endTerm := func() {
		if stop != nil {
			close(stop)
			<-stopped
			stop, stopped = nil, nil
		}
	}
	for {
		select {
		case <-n.done:
			endTerm()
			return
		case isLeader := <-n.notifyCh:
			endTerm()
			if isLeader {
				n.leaderSince.Store(time.Now().UnixNano())
				stop, stopped = make(chan struct{}), make(chan struct{})
				go func(stop <-chan struct{}, stopped chan<- struct{}) {
					defer close(stopped)
					n.leaderLoop(stop)
				}(stop, stopped)
			}
		}
	}
}

// Establishing leadership is retried with a doubling wait up to establishMaxWait; after
// every stepDownAfter failed attempts the node tries to hand leadership to another voter.
const (
	establishFirstWait = 100 * time.Millisecond
	establishMaxWait   = 2 * time.Second
	stepDownAfter      = 3
)

// leaderLoop is one term: establish leadership, run the leader work until stop, stop it.
func (n *Node) leaderLoop(stop <-chan struct{}) {
	if !n.establishLeadership(stop) {
		return
	}
	<-stop
	n.revokeLeadership()
}

// establishLeadership starts the leader work once a Barrier has gone through: every entry
// of earlier terms is then applied, so the work (lease timers, the scheduler, the webhook
// outbox) starts from the whole state. A failed barrier used to leave the node leading
// with no leader work until the next election; it is now retried until it succeeds or the
// term ends, and a node that keeps failing steps down so another voter can lead. It
// reports whether the work started.
func (n *Node) establishLeadership(stop <-chan struct{}) bool {
	wait := establishFirstWait
	for attempt := 1; ; attempt++ {
		err := n.cfg.barrier(n.raft, n.cfg.ApplyTimeout)
		if err == nil {
			break
		}
		if n.raft.State() != raft.Leader {
			n.log.Info("leadership lost before it was established", "err", err)
			return false
		}
		n.log.Warn("barrier after election failed; leader work not started, retrying", "attempt", attempt, "err", err)
		if attempt%stepDownAfter == 0 {
			terr := n.raft.LeadershipTransfer().Error()
			if terr == nil {
				n.log.Warn("stepped down: could not establish leadership", "attempts", attempt)
				return false
			}
			n.log.Warn("could not step down (no other voter to take over?); still retrying", "err", terr)
		}
		select {
		case <-stop:
			return false
		case <-time.After(wait):
		}
		wait = min(2*wait, establishMaxWait)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.mu.Lock()
	defer n.mu.Unlock()
	n.leaderStop, n.leaderCtx = cancel, ctx
	n.established.Store(true)
	n.log.Info("leadership established; starting leader work")
	for _, fn := range n.leaderFns {
		n.leaderWG.Add(1)
		go func() {
			defer n.leaderWG.Done()
			fn(ctx)
		}()
	}
	return true
}

func (n *Node) revokeLeadership() {
	n.mu.Lock()
	stop := n.leaderStop
	n.leaderStop, n.leaderCtx = nil, nil
	n.established.Store(false)
	n.mu.Unlock()
	if stop != nil {
		stop()
		n.leaderWG.Wait()
		n.log.Info("leadership lost; leader work stopped")
	}
}

// Close shuts raft down and releases the stores.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	close(n.done)
	<-n.monitorDone
	err := n.raft.Shutdown().Error()
	n.obs.Close()
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// slogWriter carries hclog's lines into slog so raft logs like everything else.
type slogWriter struct{ log *slog.Logger }

var _ io.Writer = (*slogWriter)(nil)

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	switch {
	case strings.Contains(line, "[ERROR]"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		level = slog.LevelWarn
	case strings.Contains(line, "[DEBUG]"), strings.Contains(line, "[TRACE]"):
		level = slog.LevelDebug
	}
	// Drop hclog's own timestamp and level prefix: slog adds its own.
	if i := strings.Index(line, "] "); i >= 0 && i < 60 {
		line = strings.TrimSpace(line[i+2:])
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}
