package state

import (
	"sync"
	"sync/atomic"

	"github.com/hypersdk/hypersdk/proto"
)

// EventKind says what changed.
type EventKind string

const (
	EventJobSubmitted EventKind = "job.submitted"
	EventJobStarted   EventKind = "job.started"
	EventJobProgress  EventKind = "job.progress"
	// EventJobCommitted: the running attempt passed the commit point (commit.go).
	EventJobCommitted EventKind = "job.committed"
	EventJobCompleted EventKind = "job.completed"
	EventJobFailed    EventKind = "job.failed"
	EventJobCancelled EventKind = "job.cancelled"
	// EventJobRequeued: a lease expired or an attempt failed retryably; the job is pending again.
	EventJobRequeued EventKind = "job.requeued"
	// EventJobCancelRequested: a running job was marked; its agent learns it on heartbeat.
	EventJobCancelRequested EventKind = "job.cancel_requested"
	// EventRestored: the whole state was replaced from a snapshot.
	EventRestored EventKind = "state.restored"
)

// Event is a change published by apply to in-process subscribers. Job is the new,
// immutable version (nil for EventRestored).
type Event struct {
	Kind  EventKind
	Job   *proto.Job
	Index uint64
	// Schedule is set for the schedule events (schedule.go).
	Schedule *proto.ScheduleEvent
}

// broker fans events out to subscribers without ever blocking apply: a subscriber that
// does not keep up loses events (counted), and must resynchronise from the state.
type broker struct {
	mu      sync.RWMutex
	subs    map[*Subscription]struct{}
	dropped atomic.Uint64
	derive  func(Event) []Event
}

// Subscription is a channel of events.
type Subscription struct {
	C       <-chan Event
	c       chan Event
	b       *broker
	dropped atomic.Uint64
	once    sync.Once
}

func newBroker() *broker { return &broker{subs: make(map[*Subscription]struct{})} }

func (b *broker) publish(ev Event) {
	// derive keeps the replicated state that follows from events (webhook outbox, schedule
	// runs) on the apply goroutine, before subscribers see the event. It must be called
	// without State.mu held.
	var follow []Event
	if b.derive != nil {
		follow = b.derive(ev)
	}
	b.mu.RLock()
	for s := range b.subs {
		select {
		case s.c <- ev:
		default:
			s.dropped.Add(1)
			b.dropped.Add(1)
		}
	}
	b.mu.RUnlock()
	for _, f := range follow {
		b.publish(f)
	}
}

// Subscribe returns a subscription buffered for buf events.
func (s *State) Subscribe(buf int) *Subscription {
	if buf <= 0 {
		buf = 1024
	}
	c := make(chan Event, buf)
	sub := &Subscription{C: c, c: c, b: s.events}
	s.events.mu.Lock()
	s.events.subs[sub] = struct{}{}
	s.events.mu.Unlock()
	return sub
}

// Dropped is how many events this subscriber missed because its buffer was full.
func (sub *Subscription) Dropped() uint64 { return sub.dropped.Load() }

// Close stops delivery and closes C.
func (sub *Subscription) Close() {
	sub.once.Do(func() {
		sub.b.mu.Lock()
		delete(sub.b.subs, sub)
		sub.b.mu.Unlock()
		close(sub.c)
	})
}
