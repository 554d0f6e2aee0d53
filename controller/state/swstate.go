package state

import (
	"sort"
	"time"

	"github.com/google/btree"

	"github.com/hypersdk/hypersdk/proto"
)

// Schedule events (Event.Schedule is set).
const (
	EventScheduleTriggered EventKind = "schedule.triggered"
	EventScheduleCompleted EventKind = "schedule.completed"
	EventScheduleFailed    EventKind = "schedule.failed"
)

// swState is the replicated state of schedules, webhooks and the webhook outbox. It is
// guarded by State.mu like the jobs.
type swState struct {
	schedules map[string]*scheduleRecord
	schedSeq  uint64
	runs      map[string]*runRecord
	jobRuns   map[string]string // job id → run key, for jobs of unfinished runs

	runsTriggered, runsSucceeded, runsFailed uint64

	webhooks   []*proto.Webhook
	webhookSeq uint64
	seeded     bool

	outbox       *btree.BTreeG[*OutboxEntry]
	outboxSeq    uint64
	progressSent map[string]time.Time // job id → update time of its last job.progress entry

	deliveriesOK, deliveriesFailed, deliveriesDropped uint64

	// Wake-ups for the leader's scheduler and delivery worker. Not state: never snapshotted.
	scheduleCh chan struct{}
	outboxCh   chan struct{}
}

func newSWState() *swState {
	sw := &swState{scheduleCh: make(chan struct{}, 1), outboxCh: make(chan struct{}, 1)}
	sw.reset()
	return sw
}

func (sw *swState) reset() {
	sw.schedules = make(map[string]*scheduleRecord)
	sw.schedSeq = 0
	sw.runs = make(map[string]*runRecord)
	sw.jobRuns = make(map[string]string)
	sw.runsTriggered, sw.runsSucceeded, sw.runsFailed = 0, 0, 0
	sw.webhooks = nil
	sw.webhookSeq = 0
	sw.seeded = false
	sw.outbox = newOutbox()
	sw.outboxSeq = 0
	sw.progressSent = make(map[string]time.Time)
	sw.deliveriesOK, sw.deliveriesFailed, sw.deliveriesDropped = 0, 0, 0
}

// signal wakes a waiter without ever blocking apply.
func (sw *swState) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// swSnapshot is the schedules-and-webhooks section of a snapshot header. A snapshot
// written before it existed has none: Restore then starts with no schedules or webhooks.
type swSnapshot struct {
	Schedules         []snapshotSchedule   `json:"schedules,omitempty"`
	SchedSeq          uint64               `json:"sched_seq"`
	Runs              []*runRecord         `json:"runs,omitempty"`
	RunsTriggered     uint64               `json:"runs_triggered"`
	RunsSucceeded     uint64               `json:"runs_succeeded"`
	RunsFailed        uint64               `json:"runs_failed"`
	Webhooks          []*proto.Webhook     `json:"webhooks,omitempty"`
	WebhookSeq        uint64               `json:"webhook_seq"`
	WebhooksSeeded    bool                 `json:"webhooks_seeded"`
	Outbox            []*OutboxEntry       `json:"outbox,omitempty"`
	OutboxSeq         uint64               `json:"outbox_seq"`
	ProgressSent      map[string]time.Time `json:"progress_sent,omitempty"`
	DeliveriesOK      uint64               `json:"deliveries_ok"`
	DeliveriesFailed  uint64               `json:"deliveries_failed"`
	DeliveriesDropped uint64               `json:"deliveries_dropped"`
}

type snapshotSchedule struct {
	Seq      uint64          `json:"seq"`
	Schedule *proto.Schedule `json:"schedule"`
	LastFire time.Time       `json:"last_fire"`
}

// snapshotLocked copies pointers (schedules, webhooks and outbox entries are immutable;
// runs are copied). Caller holds at least the read lock.
func (sw *swState) snapshotLocked() *swSnapshot {
	out := &swSnapshot{
		SchedSeq: sw.schedSeq, RunsTriggered: sw.runsTriggered, RunsSucceeded: sw.runsSucceeded, RunsFailed: sw.runsFailed,
		WebhookSeq: sw.webhookSeq, WebhooksSeeded: sw.seeded, OutboxSeq: sw.outboxSeq,
		DeliveriesOK: sw.deliveriesOK, DeliveriesFailed: sw.deliveriesFailed, DeliveriesDropped: sw.deliveriesDropped,
		Webhooks: append([]*proto.Webhook(nil), sw.webhooks...),
	}
	for _, r := range sw.schedules {
		out.Schedules = append(out.Schedules, snapshotSchedule{Seq: r.seq, Schedule: r.s, LastFire: r.lastFire})
	}
	sort.Slice(out.Schedules, func(i, j int) bool { return out.Schedules[i].Seq < out.Schedules[j].Seq })
	keys := make([]string, 0, len(sw.runs))
	for k := range sw.runs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r := *sw.runs[k]
		out.Runs = append(out.Runs, &r)
	}
	out.Outbox = make([]*OutboxEntry, 0, sw.outbox.Len())
	sw.outbox.Ascend(func(e *OutboxEntry) bool { out.Outbox = append(out.Outbox, e); return true })
	if len(sw.progressSent) > 0 {
		out.ProgressSent = make(map[string]time.Time, len(sw.progressSent))
		for k, v := range sw.progressSent {
			out.ProgressSent[k] = v
		}
	}
	return out
}

// restoreLocked replaces the section from a snapshot (nil: a snapshot from before
// schedules and webhooks existed). ended reports whether a job has already ended (the jobs
// are restored first). Caller holds the write lock.
func (sw *swState) restoreLocked(snap *swSnapshot, ended func(jobID string) bool) {
	sw.reset()
	if snap == nil {
		return
	}
	sw.schedSeq = snap.SchedSeq
	for _, s := range snap.Schedules {
		if s.Schedule == nil {
			continue
		}
		sw.schedules[s.Schedule.ID] = &scheduleRecord{seq: s.Seq, s: s.Schedule, lastFire: s.LastFire}
	}
	for _, r := range snap.Runs {
		if r == nil {
			continue
		}
		key := runKey(r.ScheduleID, r.Run)
		sw.runs[key] = r
		// Only the run's unfinished jobs are mapped, as on a node that applied the log.
		for _, id := range r.JobIDs {
			if !ended(id) {
				sw.jobRuns[id] = key
			}
		}
	}
	sw.runsTriggered, sw.runsSucceeded, sw.runsFailed = snap.RunsTriggered, snap.RunsSucceeded, snap.RunsFailed
	for _, w := range snap.Webhooks {
		if w != nil {
			sw.webhooks = append(sw.webhooks, w)
		}
	}
	sw.webhookSeq, sw.seeded = snap.WebhookSeq, snap.WebhooksSeeded
	for _, e := range snap.Outbox {
		if e != nil {
			sw.outbox.ReplaceOrInsert(e)
		}
	}
	sw.outboxSeq = snap.OutboxSeq
	for k, v := range snap.ProgressSent {
		sw.progressSent[k] = v
	}
	sw.deliveriesOK, sw.deliveriesFailed, sw.deliveriesDropped = snap.DeliveriesOK, snap.DeliveriesFailed, snap.DeliveriesDropped
	sw.signal(sw.scheduleCh)
	sw.signal(sw.outboxCh)
}

// Subscribers is the number of open event subscriptions (the WebSocket hub holds one only
// while clients are connected).
func (s *State) Subscribers() int {
	s.events.mu.RLock()
	defer s.events.mu.RUnlock()
	return len(s.events.subs)
}
