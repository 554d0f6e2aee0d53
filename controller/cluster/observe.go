package cluster

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// observedTransport is raft's network transport with two things raft keeps to itself made
// visible:
//   - on a follower, the leader's commit index: every AppendEntries carries it, so the node
//     knows how far its own state trails the leader's (a node restarted on its data dir has
//     a commit index of 0 until the leader says more, and an applied index that reads as
//     "caught up" with that 0);
//   - on the leader, when each peer last answered and how long its log is: raft tracks
//     both per replication goroutine and exposes neither, and an operator's "is ctl-3
//     alive, how far behind is it" needs both.
//
// Everything else passes straight through to the embedded transport (pre-vote, close).
type observedTransport struct {
	*raft.NetworkTransport
	now func() time.Time

	consumer chan raft.RPC
	done     chan struct{}
	once     sync.Once

	mu           sync.Mutex
	leaderCommit uint64                       // the highest commit index a leader has sent
	peers        map[raft.ServerID]peerRecord // what the peers' answers told this node
}

// peerRecord is what a peer's last successful AppendEntries answer told the leader.
type peerRecord struct {
	lastContact time.Time
	lastLog     uint64
}

func newObservedTransport(t *raft.NetworkTransport) *observedTransport {
	o := &observedTransport{NetworkTransport: t, now: time.Now,
		consumer: make(chan raft.RPC), done: make(chan struct{}), peers: map[raft.ServerID]peerRecord{}}
	go o.relay()
	return o
}

// relay hands raft every inbound RPC after noting the leader's commit index. The channel
// is unbuffered like the transport's own, so raft's back-pressure is unchanged.
func (o *observedTransport) relay() {
	in := o.NetworkTransport.Consumer()
	for {
		select {
		case rpc := <-in:
			if ae, ok := rpc.Command.(*raft.AppendEntriesRequest); ok {
				o.mu.Lock()
				o.leaderCommit = max(o.leaderCommit, ae.LeaderCommitIndex)
				// Hearing from a leader is contact too: should this node lead next, it
				// knows when it last heard from the member that led before it.
				if id := raft.ServerID(ae.ID); id != "" {
					r := o.peers[id]
					r.lastContact = o.now()
					o.peers[id] = r
				}
				o.mu.Unlock()
			}
			select {
			case o.consumer <- rpc:
			case <-o.done:
				return
			}
		case <-o.done:
			return
		}
	}
}

// Consumer implements raft.Transport.
func (o *observedTransport) Consumer() <-chan raft.RPC { return o.consumer }

// Close implements raft.WithClose.
func (o *observedTransport) Close() error {
	o.once.Do(func() { close(o.done) })
	return o.NetworkTransport.Close()
}

// AppendEntries implements raft.Transport: the leader's heartbeats and catch-up appends.
func (o *observedTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := o.NetworkTransport.AppendEntries(id, target, args, resp)
	if err == nil {
		o.answered(id, resp)
	}
	return err
}

// AppendEntriesPipeline implements raft.Transport: the leader's steady-state replication.
func (o *observedTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := o.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	op := &observedPipeline{AppendPipeline: p, o: o, id: id, out: make(chan raft.AppendFuture), done: make(chan struct{})}
	go op.relay()
	return op, nil
}

func (o *observedTransport) answered(id raft.ServerID, resp *raft.AppendEntriesResponse) {
	o.mu.Lock()
	o.peers[id] = peerRecord{lastContact: o.now(), lastLog: resp.LastLog}
	o.mu.Unlock()
}

// LeaderCommit is the highest commit index any leader has sent this node (0: none yet).
func (o *observedTransport) LeaderCommit() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.leaderCommit
}

func (o *observedTransport) peer(id raft.ServerID) (peerRecord, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.peers[id]
	return r, ok
}

// observedPipeline notes each completed pipelined append, then hands it to raft.
type observedPipeline struct {
	raft.AppendPipeline
	o    *observedTransport
	id   raft.ServerID
	out  chan raft.AppendFuture
	done chan struct{}
	once sync.Once
}

func (p *observedPipeline) relay() {
	in := p.AppendPipeline.Consumer()
	for {
		select {
		case f := <-in:
			if f.Error() == nil {
				p.o.answered(p.id, f.Response())
			}
			select {
			case p.out <- f:
			case <-p.done:
				return
			}
		case <-p.done:
			return
		}
	}
}

// Consumer implements raft.AppendPipeline.
func (p *observedPipeline) Consumer() <-chan raft.AppendFuture { return p.out }

// Close implements raft.AppendPipeline.
func (p *observedPipeline) Close() error {
	p.once.Do(func() { close(p.done) })
	return p.AppendPipeline.Close()
}
