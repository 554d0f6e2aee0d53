package gossip

import (
	"sync"
	"time"
)

// subscriber delivers events to one callback on its own goroutine through an unbounded
// queue: memberlist calls the event delegate with its node lock held, so a slow callback
// (a raft apply in the lease manager) must never be on that path, and a bounded channel
// would have to either block memberlist or drop a dead event. Gossip events are few (one
// per member change), so the queue stays short.
type subscriber struct {
	fn func(Event)

	mu    sync.Mutex
	queue []Event
	// drain: deliver what is queued, then stop (node shutdown); otherwise stop at once.
	drain bool

	wake     chan struct{}
	quit     chan struct{}
	exited   chan struct{}
	quitOnce sync.Once
}

func newSubscriber(fn func(Event)) *subscriber {
	return &subscriber{fn: fn, wake: make(chan struct{}, 1), quit: make(chan struct{}), exited: make(chan struct{})}
}

func (s *subscriber) push(e Event) {
	s.mu.Lock()
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) stop(drain bool) {
	s.quitOnce.Do(func() {
		s.mu.Lock()
		s.drain = drain
		s.mu.Unlock()
		close(s.quit)
	})
}

func (s *subscriber) run() {
	defer close(s.exited)
	for {
		select {
		case <-s.quit:
			s.mu.Lock()
			drain := s.drain
			s.mu.Unlock()
			if drain {
				s.deliver(false)
			}
			return
		default:
		}
		if s.deliver(true) {
			continue
		}
		select {
		case <-s.wake:
		case <-s.quit:
		}
	}
}

// deliver calls fn for the queued events; when stoppable it checks quit between events
// so stop() returns promptly. It reports whether it delivered anything.
func (s *subscriber) deliver(stoppable bool) bool {
	s.mu.Lock()
	batch := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, e := range batch {
		if stoppable {
			select {
			case <-s.quit:
				return true
			default:
			}
		}
		s.fn(e)
	}
	return len(batch) > 0
}

// Watch calls fn for every member change, in order, on a goroutine of its own. It starts
// with the current live members as EventJoin (and EventSuspect for suspect ones), so a
// watcher started after the pool formed misses nothing and sees nothing twice. Dead and
// left members are not replayed: their deaths happened before the watcher existed.
//
// stop ends the deliveries and waits for a running fn to return; do not call it from
// inside fn.
func (n *Node) Watch(fn func(Event)) (stop func()) {
	s := newSubscriber(fn)
	ms := n.members
	now := time.Now()
	ms.mu.Lock()
	for _, m := range sortedMembers(ms.byName) {
		switch m.State {
		case StateAlive:
			ms.publishTo(s, EventJoin, m, now)
		case StateSuspect:
			ms.publishTo(s, EventJoin, m, now)
			ms.publishTo(s, EventSuspect, m, now)
		}
	}
	if ms.closed {
		s.stop(true)
	} else {
		ms.subs[s] = struct{}{}
	}
	ms.mu.Unlock()
	go s.run()
	return func() {
		ms.mu.Lock()
		delete(ms.subs, s)
		ms.mu.Unlock()
		s.stop(false)
		<-s.exited
	}
}

func (ms *members) publishTo(s *subscriber, t EventType, m *Member, now time.Time) {
	s.push(Event{Type: t, Member: *m, At: now})
}

// closeSubscribers lets every watcher drain its queue and stop (node shutdown).
func (ms *members) closeSubscribers() {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ms.closed = true
	for s := range ms.subs {
		s.stop(true)
		delete(ms.subs, s)
	}
}
