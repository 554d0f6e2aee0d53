package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/btree"

	"github.com/hypersdk/hypersdk/proto"
)

// OutboxLimit bounds the replicated webhook outbox. When a receiver is down for long,
// the oldest undelivered events are dropped (and counted) rather than letting the state,
// and every snapshot, grow without bound. A constant, not a setting: every node must drop
// the same entries.
const OutboxLimit = 10000

// ProgressWebhookInterval: job.progress webhooks are rate-limited to one per job per
// interval (measured on the jobs' replicated update times, so every node agrees).
const ProgressWebhookInterval = 5 * time.Second

// Delivery results.
const (
	DeliverySuccess = "success"
	DeliveryFailure = "failure"
	DeliveryDropped = "dropped"
)

// WebhookAdd appends a webhook; apply assigns its id.
type WebhookAdd struct {
	Webhook proto.Webhook `json:"webhook"`
	At      time.Time     `json:"at"`
}

// WebhookDelete removes a webhook by id (the API resolves the index on the leader first, so
// two concurrent deletes of "index 0" cannot remove two webhooks). Its undelivered outbox
// entries are dropped.
type WebhookDelete struct {
	ID string `json:"id"`
}

// WebhookSeed adds the config file's webhooks once in the cluster's life. A second seed
// (a later leader, another node's config) is a no-op.
type WebhookSeed struct {
	Webhooks []proto.Webhook `json:"webhooks"`
	At       time.Time       `json:"at"`
}

// WebhookDelivered removes delivered (or given up) entries from the outbox.
type WebhookDelivered struct {
	Deliveries []Delivery `json:"deliveries"`
	At         time.Time  `json:"at"`
}

// Delivery is the outcome of one outbox entry.
type Delivery struct {
	ID       uint64 `json:"id"`
	Result   string `json:"result"` // success|failure
	Attempts int    `json:"attempts,omitempty"`
}

// OutboxEntry is one event waiting for one webhook. Entries are immutable. Payload is the
// exact body ({event, timestamp, data}, passwords masked) so a new leader resends the same
// bytes.
type OutboxEntry struct {
	ID        uint64          `json:"id"`
	WebhookID string          `json:"webhook_id"`
	Event     string          `json:"event"`
	Payload   json.RawMessage `json:"payload"`
}

func outboxLess(a, b *OutboxEntry) bool { return a.ID < b.ID }

func (s *State) applyWebhookAdd(c WebhookAdd) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sw.webhooks) >= maxWebhooks {
		return fmt.Errorf("%w: at most %d webhooks", proto.ErrInvalid, maxWebhooks)
	}
	w := s.sw.addWebhookLocked(c.Webhook, c.At)
	return WebhookAdded{Webhook: w, Index: len(s.sw.webhooks) - 1}
}

// maxWebhooks bounds fan-out: every event is copied into the outbox once per webhook.
const maxWebhooks = 100

// WebhookAdded is the response of an applied WebhookAdd.
type WebhookAdded struct {
	Webhook proto.Webhook
	Index   int
}

func (sw *swState) addWebhookLocked(w proto.Webhook, at time.Time) proto.Webhook {
	sw.webhookSeq++
	w.ID = "wh-" + strconv.FormatUint(sw.webhookSeq, 10)
	w.CreatedAt = at
	w.Events = slices.Clone(w.Events)
	sw.webhooks = append(sw.webhooks, &w)
	return w
}

func (s *State) applyWebhookDelete(c WebhookDelete) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := s.sw
	i := slices.IndexFunc(sw.webhooks, func(w *proto.Webhook) bool { return w.ID == c.ID })
	if i < 0 {
		return fmt.Errorf("webhook %s: %w", c.ID, ErrNotFound)
	}
	sw.webhooks = slices.Delete(sw.webhooks, i, i+1)
	var drop []*OutboxEntry
	sw.outbox.Ascend(func(e *OutboxEntry) bool {
		if e.WebhookID == c.ID {
			drop = append(drop, e)
		}
		return true
	})
	for _, e := range drop {
		sw.outbox.Delete(e)
		sw.deliveriesDropped++
	}
	return nil
}

func (s *State) applyWebhookSeed(c WebhookSeed) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sw.seeded {
		return false
	}
	s.sw.seeded = true
	for _, w := range c.Webhooks {
		if len(s.sw.webhooks) >= maxWebhooks {
			break
		}
		s.sw.addWebhookLocked(w, c.At)
	}
	return true
}

func (s *State) applyWebhookDelivered(c WebhookDelivered) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := s.sw
	removed := 0
	for _, d := range c.Deliveries {
		// An entry already gone (acked by an earlier leader, dropped by the cap or a
		// webhook delete) is not counted twice.
		if _, ok := sw.outbox.Delete(&OutboxEntry{ID: d.ID}); !ok {
			continue
		}
		removed++
		if d.Result == DeliverySuccess {
			sw.deliveriesOK++
		} else {
			sw.deliveriesFailed++
		}
	}
	return removed
}

// webhookEventName maps a state event to the webhook event it triggers ("" for none).
func webhookEventName(ev Event) string {
	switch ev.Kind {
	case EventJobSubmitted, EventJobStarted, EventJobCompleted, EventJobFailed, EventJobCancelled, EventJobProgress,
		EventJobPrecopyRound, EventJobCutover:
		return string(ev.Kind)
	case EventScheduleTriggered:
		return proto.EventScheduleTriggered
	case EventScheduleCompleted:
		return proto.EventScheduleCompleted
	case EventScheduleFailed:
		return proto.EventScheduleFailed
	}
	return ""
}

// enqueueLocked appends one outbox entry per enabled webhook subscribed to the event.
// The payload is marshalled once (only when someone wants it) and shared by the entries.
// Caller holds the write lock.
func (s *State) enqueueLocked(ev Event) {
	sw := s.sw
	name := webhookEventName(ev)
	if name == "" || len(sw.webhooks) == 0 {
		return
	}
	var targets []*proto.Webhook
	for _, w := range sw.webhooks {
		if w.Wants(name) {
			targets = append(targets, w)
		}
	}
	if len(targets) == 0 {
		return
	}
	var data any
	var at time.Time
	switch {
	case ev.Job != nil:
		if ev.Kind == EventJobProgress {
			last, seen := sw.progressSent[ev.Job.Definition.ID]
			if seen && ev.Job.UpdatedAt.Before(last.Add(ProgressWebhookInterval)) {
				return
			}
			sw.progressSent[ev.Job.Definition.ID] = ev.Job.UpdatedAt
		}
		data, at = ev.Job.Redacted(), ev.Job.UpdatedAt
	case ev.Schedule != nil:
		data, at = ev.Schedule, ev.Schedule.Time
	default:
		return
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return // our own types always marshal
	}
	payload, _ := json.Marshal(proto.WebhookPayload{Event: name, Timestamp: at.UTC(), Data: raw})
	for _, w := range targets {
		if sw.outbox.Len() >= OutboxLimit {
			sw.outbox.DeleteMin()
			sw.deliveriesDropped++
		}
		sw.outboxSeq++
		sw.outbox.ReplaceOrInsert(&OutboxEntry{ID: sw.outboxSeq, WebhookID: w.ID, Event: name, Payload: payload})
	}
	sw.signal(sw.outboxCh)
}

// derive runs on the apply goroutine for every published event, before it fans out, and
// keeps the state derived from job changes: run outcomes of schedules and the webhook
// outbox. It is deterministic (it reads only the event and the state). It returns the
// events it caused (a run finishing) to be published after this one. Called without s.mu.
func (s *State) derive(ev Event) []Event {
	if ev.Kind == EventRestored {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var follow []Event
	if j := ev.Job; j != nil && j.Status.Terminal() {
		delete(s.sw.progressSent, j.Definition.ID)
		if e := s.jobEndedLocked(ev.Index, j); e != nil {
			follow = append(follow, *e)
		}
	}
	s.enqueueLocked(ev)
	return follow
}

// Webhooks returns the webhooks in index order (copies; secrets NOT masked).
func (s *State) Webhooks() []proto.Webhook {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]proto.Webhook, len(s.sw.webhooks))
	for i, w := range s.sw.webhooks {
		out[i] = *w
	}
	return out
}

// Webhook returns one webhook by id.
func (s *State) Webhook(id string) (proto.Webhook, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, w := range s.sw.webhooks {
		if w.ID == id {
			return *w, true
		}
	}
	return proto.Webhook{}, false
}

// WebhooksSeeded reports whether the config file's webhooks were loaded already.
func (s *State) WebhooksSeeded() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sw.seeded
}

// Outbox returns up to limit outbox entries with an id greater than after, oldest first.
func (s *State) Outbox(after uint64, limit int) []*OutboxEntry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*OutboxEntry
	s.sw.outbox.AscendGreaterOrEqual(&OutboxEntry{ID: after + 1}, func(e *OutboxEntry) bool {
		out = append(out, e)
		return limit <= 0 || len(out) < limit
	})
	return out
}

// OutboxLen is the number of undelivered entries.
func (s *State) OutboxLen() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sw.outbox.Len()
}

// InOutbox reports whether an entry is still undelivered.
func (s *State) InOutbox(id uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sw.outbox.Has(&OutboxEntry{ID: id})
}

// WebhookDeliveryCounters are cluster-wide delivery outcomes since the cluster began.
func (s *State) WebhookDeliveryCounters() (success, failure, dropped uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sw.deliveriesOK, s.sw.deliveriesFailed, s.sw.deliveriesDropped
}

// OutboxSignal is signalled (without blocking apply) when entries are appended.
func (s *State) OutboxSignal() <-chan struct{} { return s.sw.outboxCh }

func newOutbox() *btree.BTreeG[*OutboxEntry] { return btree.NewG(16, outboxLess) }
