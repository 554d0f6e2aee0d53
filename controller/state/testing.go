package state

import "sync"

// LocalApplier applies commands straight to a State, as a single-node raft would, with
// increasing indexes: tests of the leader-only work (leases, schedules, webhooks) run
// without raft. Apply's error answers come back as the error, as from cluster.Node.Apply.
type LocalApplier struct {
	mu  sync.Mutex
	st  *State
	idx uint64
}

// NewLocalApplier returns an applier over st.
func NewLocalApplier(st *State) *LocalApplier { return &LocalApplier{st: st} }

// Apply applies one encoded command.
func (a *LocalApplier) Apply(cmd []byte) (any, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.idx++
	r := a.st.Apply(a.idx, cmd)
	if err, ok := r.(error); ok {
		return nil, err
	}
	return r, nil
}
