package cluster

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Whether this node's state may be served as the cluster's, and how each peer is doing as
// the leader sees it.
//
// A follower's state is the leader's as of some index. Right after a restart that index is
// whatever the node had applied before it stopped (or 0), and raft reports a commit index
// of 0 until a leader speaks: served as it is, the state reads as "No jobs." for as long
// as the node takes to hear from a leader and replay its log (issue 17 saw 11 s). So a
// follower counts as caught up only once it has applied everything the leader had
// committed when this node first heard from it (the target), and stays so while it hears
// from a leader and does not fall more than MaxLag entries behind. The leader is caught up
// once its leadership is established (its barrier applied every earlier entry).

// SyncStatus says whether this node's state is fit to answer reads.
type SyncStatus struct {
	CaughtUp bool
	// Reason says why not ("" when caught up).
	Reason string
	// LeaderCommit is the highest commit index a leader has sent this node (its own
	// commit index on the leader); Lag how many of those entries it has not applied yet.
	LeaderCommit uint64
	Lag          uint64
	// LastContact is when this node last heard from a leader (zero: never, or it leads).
	LastContact time.Time
}

// PeerStatus is one member as the leader sees it.
type PeerStatus struct {
	ID string
	// Reachable: the member answered the leader within Config.PeerTimeout (the leader
	// itself always is; a member not heard from yet counts from the start of the term, so
	// an election does not show every member unreachable for a moment).
	Reachable bool
	// LastContact is when it last answered an AppendEntries (zero: never, this term or
	// before).
	LastContact time.Time
	// LastLogIndex is its log's last index as of that answer; Lag is how many entries the
	// leader's log has beyond it.
	LastLogIndex uint64
	Lag          uint64
}

// syncTracker is the follower's catch-up state (guarded by Node.syncMu).
type syncTracker struct {
	synced bool
	// target is the index to apply before serving reads again, once chosen (resolved).
	target   uint64
	resolved bool
	since    time.Time // when the node started (or fell behind and) catching up
	lastLogs string    // the last reason logged, so transitions are logged once
}

// maxCommandWalk bounds the walk from a commit index down to the last command entry: only
// raft's own entries (no-op, barrier, configuration) are skipped, a few per election.
const maxCommandWalk = 64

// Sync reports whether this node's replicated state may answer reads now.
func (n *Node) Sync() SyncStatus {
	st := SyncStatus{LeaderCommit: n.obs.LeaderCommit()}
	if n.raft.State() == raft.Leader {
		st.LeaderCommit = n.raft.CommitIndex()
		if n.established.Load() {
			st.CaughtUp = true
		} else {
			st.Reason = "elected leader, still applying the entries of earlier terms"
		}
		n.noteSync(st)
		return st
	}
	applied := n.raft.AppliedIndex()
	if st.LeaderCommit > applied {
		st.Lag = st.LeaderCommit - applied
	}
	st.LastContact = n.raft.LastContact()
	now := time.Now()

	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	t := &n.sync
	fallBehind := func(reason string) {
		if t.synced || t.since.IsZero() {
			t.since = now
		}
		t.synced, t.target, t.resolved = false, 0, false
		st.Reason = reason
	}
	switch {
	case st.LastContact.IsZero():
		fallBehind("has not heard from a leader since it started")
	case now.Sub(st.LastContact) > n.cfg.MaxStaleness:
		fallBehind(fmt.Sprintf("no contact with a leader for %s", now.Sub(st.LastContact).Round(100*time.Millisecond)))
	case st.LeaderCommit == 0:
		fallBehind("waiting for the leader's commit index")
	case t.synced && st.Lag > n.cfg.MaxLag:
		fallBehind(fmt.Sprintf("%d entries behind the leader", st.Lag))
	case t.synced:
		st.CaughtUp = true
	default:
		if !t.resolved && st.LeaderCommit <= n.raft.LastIndex() {
			// Every entry the leader had committed is in the local log: the target is the
			// last command among them (raft's own entries never reach the state).
			t.target, t.resolved = n.lastCommandAtOrBelow(st.LeaderCommit)
		}
		switch {
		case !t.resolved:
			st.Reason = fmt.Sprintf("receiving the leader's log: %d entries behind", st.Lag)
		case n.state.AppliedIndex() >= t.target:
			t.synced, t.target, t.resolved = true, 0, false
			st.CaughtUp = true
		default:
			st.Reason = fmt.Sprintf("applying the log: %d entries behind the leader", max(st.Lag, t.target-min(t.target, n.state.AppliedIndex())))
		}
	}
	n.noteSyncLocked(st, now)
	return st
}

// lastCommandAtOrBelow is the index of the last command entry at or below idx (0: none
// to wait for: the entries below were compacted into the snapshot the state was restored
// from). ok is false when it cannot tell yet.
func (n *Node) lastCommandAtOrBelow(idx uint64) (_ uint64, ok bool) {
	var l raft.Log
	for i := idx; i > 0 && idx-i < maxCommandWalk; i-- {
		if err := n.logs.GetLog(i, &l); err != nil {
			return 0, errors.Is(err, raft.ErrLogNotFound)
		}
		if l.Type == raft.LogCommand {
			return i, true
		}
	}
	// Only raft's own entries this far down: done once raft has handed them all over.
	return 0, n.raft.AppliedIndex() >= idx
}

func (n *Node) noteSync(st SyncStatus) {
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	if st.CaughtUp {
		n.sync.synced, n.sync.target, n.sync.resolved = true, 0, false
	}
	n.noteSyncLocked(st, time.Now())
}

// noteSyncLocked logs the transitions between caught up and catching up.
func (n *Node) noteSyncLocked(st SyncStatus, now time.Time) {
	t := &n.sync
	switch {
	case st.CaughtUp && t.lastLogs != "":
		n.log.Info("caught up with the leader: serving reads", "after", now.Sub(t.since).Round(time.Millisecond), "leader_commit", st.LeaderCommit)
		t.lastLogs = ""
	case !st.CaughtUp && t.lastLogs == "":
		n.log.Info("not caught up with the leader: reads answer 503 until it is", "reason", st.Reason)
		t.lastLogs = st.Reason
	}
}

// Peers returns every member as this node sees it when it leads (ok false on a follower:
// only the leader hears from every member).
func (n *Node) Peers() (peers []PeerStatus, ok bool) {
	if n.raft.State() != raft.Leader {
		return nil, false
	}
	servers, err := n.Servers()
	if err != nil {
		return nil, false
	}
	last := n.raft.LastIndex()
	now := time.Now()
	since := time.Unix(0, n.leaderSince.Load())
	for _, s := range servers {
		p := PeerStatus{ID: s.ID}
		if s.ID == n.cfg.NodeID {
			p.Reachable, p.LastContact, p.LastLogIndex = true, now, last
			peers = append(peers, p)
			continue
		}
		r, _ := n.obs.peer(raft.ServerID(s.ID))
		p.LastContact, p.LastLogIndex = r.lastContact, r.lastLog
		heard := r.lastContact
		if since.After(heard) {
			heard = since
		}
		p.Reachable = now.Sub(heard) <= n.cfg.PeerTimeout
		if last > r.lastLog && r.lastLog > 0 {
			p.Lag = last - r.lastLog
		} else if r.lastLog == 0 {
			p.Lag = last
		}
		peers = append(peers, p)
	}
	return peers, true
}
