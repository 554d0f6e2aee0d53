package state

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/hypersdk/hypersdk/proto"
)

// FSM adapts State to raft.FSM.
type FSM struct{ *State }

var _ raft.FSM = FSM{}

// Apply implements raft.FSM. Non-command entries never reach it (raft filters them).
func (f FSM) Apply(l *raft.Log) any { return f.State.Apply(l.Index, l.Data) }

// snapshotHeader is the first JSON value of a snapshot stream; jobs follow one per value in
// submission order so Restore rebuilds the same sequence numbers.
type snapshotHeader struct {
	Version int        `json:"version"`
	Jobs    int        `json:"jobs"`
	NextSeq uint64     `json:"next_seq"`
	Nodes   []NodeInfo `json:"nodes"`
	Applied uint64     `json:"applied"`
	// SW: schedules, webhooks, outbox (absent in snapshots written before them).
	SW *swSnapshot `json:"sw,omitempty"`
	// Agents: enrolled agent identities (absent in snapshots written before them).
	Agents []AgentIdentity `json:"agents,omitempty"`
	// AgentControls: cordoned and draining agents (absent in older snapshots).
	AgentControls []AgentControl `json:"agent_controls,omitempty"`
	// Counters: lease expiries and requeues so far (absent in older snapshots: zero).
	Counters *LeaseCounters `json:"counters,omitempty"`
}

type snapshotJob struct {
	Seq uint64     `json:"seq"`
	Job *proto.Job `json:"job"`
}

// fsmSnapshot is a point-in-time copy of pointers: jobs are immutable, so Persist can
// stream them while apply goes on.
type fsmSnapshot struct {
	header snapshotHeader
	jobs   []snapshotJob
}

// Snapshot implements raft.FSM: O(n) pointer copies under the read lock, no encoding.
func (f FSM) Snapshot() (raft.FSMSnapshot, error) {
	s := f.State
	s.mu.RLock()
	defer s.mu.RUnlock()
	snap := &fsmSnapshot{
		header: snapshotHeader{Version: 1, Jobs: s.all.Len(), NextSeq: s.nextSeq, Applied: s.AppliedIndex()},
		jobs:   make([]snapshotJob, 0, s.all.Len()),
	}
	for _, n := range s.nodes {
		snap.header.Nodes = append(snap.header.Nodes, n)
	}
	snap.header.SW = s.sw.snapshotLocked()
	for _, id := range s.agentIDs {
		snap.header.Agents = append(snap.header.Agents, *id)
	}
	// Sorted: snapshots of equal states are equal bytes (the round-trip tests compare them).
	slices.SortFunc(snap.header.Agents, func(a, b AgentIdentity) int { return strings.Compare(a.Name, b.Name) })
	snap.header.AgentControls = s.agentControlsLocked()
	counters := s.counters
	snap.header.Counters = &counters
	s.all.Ascend(func(e *entry) bool {
		snap.jobs = append(snap.jobs, snapshotJob{Seq: e.seq, Job: e.job})
		return true
	})
	return snap, nil
}

// Persist implements raft.FSMSnapshot.
func (p *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 1<<20)
	enc := json.NewEncoder(w)
	err := enc.Encode(p.header)
	for i := 0; err == nil && i < len(p.jobs); i++ {
		err = enc.Encode(&p.jobs[i])
	}
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (p *fsmSnapshot) Release() {}

// Restore implements raft.FSM: replaces all state with the snapshot's.
func (f FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s := f.State
	dec := json.NewDecoder(bufio.NewReaderSize(rc, 1<<20))
	var h snapshotHeader
	if err := dec.Decode(&h); err != nil {
		return fmt.Errorf("restore snapshot header: %w", err)
	}
	if h.Version != 1 {
		return fmt.Errorf("restore snapshot: unknown version %d", h.Version)
	}
	jobs := make([]snapshotJob, 0, h.Jobs)
	for i := 0; i < h.Jobs; i++ {
		var sj snapshotJob
		if err := dec.Decode(&sj); err != nil {
			return fmt.Errorf("restore snapshot job %d: %w", i, err)
		}
		if sj.Job == nil {
			return fmt.Errorf("restore snapshot job %d: empty", i)
		}
		jobs = append(jobs, sj)
	}
	s.mu.Lock()
	s.reset()
	for _, sj := range jobs {
		s.nextSeq = sj.Seq - 1
		s.insert(sj.Job)
	}
	s.nextSeq = max(s.nextSeq, h.NextSeq)
	for _, n := range h.Nodes {
		s.nodes[n.ID] = n
	}
	s.restoreAgentsLocked(h.Agents)
	for _, c := range h.AgentControls {
		s.agentCtl[c.Agent] = c
	}
	if h.Counters != nil {
		s.counters = *h.Counters
	}
	s.sw.restoreLocked(h.SW, func(id string) bool {
		e, ok := s.jobs[id]
		return !ok || e.job.Status.Terminal()
	})
	s.mu.Unlock()
	s.appliedIndex.Store(h.Applied)
	s.events.publish(Event{Kind: EventRestored})
	return nil
}
