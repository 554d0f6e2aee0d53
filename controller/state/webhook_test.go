package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

func hook(url string, events ...string) proto.Webhook {
	r := proto.WebhookRequest{URL: url, Events: events, Headers: map[string]string{"Authorization": "Bearer tok"}, Secret: "s3"}
	return r.Webhook()
}

func outboxEvents(s *State) []string {
	var out []string
	for _, e := range s.Outbox(0, 0) {
		out = append(out, e.WebhookID+":"+e.Event)
	}
	return out
}

func TestWebhookOutbox(t *testing.T) {
	a := newApplier(t)
	w1 := a.ok(CmdWebhookAdd, WebhookAdd{Webhook: hook("http://127.0.0.1:1/a", proto.EventJobSubmitted, proto.EventJobCompleted, proto.EventJobProgress), At: t0}).(WebhookAdded)
	off := hook("http://127.0.0.1:1/off", proto.EventJobSubmitted)
	off.Enabled = false
	a.ok(CmdWebhookAdd, WebhookAdd{Webhook: off, At: t0})
	w3 := a.ok(CmdWebhookAdd, WebhookAdd{Webhook: hook("http://127.0.0.1:1/c", proto.EventJobSubmitted, proto.EventScheduleTriggered), At: t0}).(WebhookAdded)
	if w1.Webhook.ID != "wh-1" || w3.Webhook.ID != "wh-3" || w3.Index != 2 {
		t.Fatalf("ids %s %s index %d", w1.Webhook.ID, w3.Webhook.ID, w3.Index)
	}

	a.ok(CmdSubmitJob, SubmitJob{Definition: def("a")})
	if got := outboxEvents(a.s); fmt.Sprint(got) != "[wh-1:job.submitted wh-3:job.submitted]" {
		t.Fatalf("outbox %v (a disabled webhook must get nothing)", got)
	}
	e := a.s.Outbox(0, 1)[0]
	var p struct {
		Event     string    `json:"event"`
		Timestamp time.Time `json:"timestamp"`
		Data      proto.Job `json:"data"`
	}
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		t.Fatal(err)
	}
	if p.Event != "job.submitted" || !p.Timestamp.Equal(t0) || p.Data.Definition.ID != "a" || p.Data.Definition.Source.Password != proto.RedactedPassword {
		t.Fatalf("payload %s", e.Payload)
	}
	if bytes.Contains(e.Payload, []byte("secret")) {
		t.Fatalf("password in payload: %s", e.Payload)
	}

	// job.progress: at most one per job per 5 s of replicated time.
	a.ok(CmdLeaseGrant, LeaseGrant{tok("a", 1), "ag", t0})
	for i, sec := range []int{1, 2, 5, 6, 7, 12} {
		a.ok(CmdProgress, ProgressReport{LeaseToken: tok("a", 1), Progress: proto.Progress{Stage: "conversion", PercentComplete: float64(i * 10)}, At: t0.Add(time.Duration(sec) * time.Second)})
	}
	progress := 0
	for _, ev := range outboxEvents(a.s) {
		if strings.HasSuffix(ev, "job.progress") {
			progress++
		}
	}
	if progress != 3 { // at 1 s, 6 s (≥ 1+5) and 12 s (≥ 6+5)
		t.Fatalf("progress entries %d, want 3", progress)
	}

	// Delivered entries leave the outbox and count once, however often they are acked.
	ids := a.s.Outbox(0, 2)
	n := a.ok(CmdWebhookDelivered, WebhookDelivered{Deliveries: []Delivery{{ID: ids[0].ID, Result: DeliverySuccess}, {ID: ids[1].ID, Result: DeliveryFailure}}})
	if n != 2 || a.s.InOutbox(ids[0].ID) {
		t.Fatalf("delivered: %v", n)
	}
	a.ok(CmdWebhookDelivered, WebhookDelivered{Deliveries: []Delivery{{ID: ids[0].ID, Result: DeliverySuccess}}})
	if ok, fail, drop := a.s.WebhookDeliveryCounters(); ok != 1 || fail != 1 || drop != 0 {
		t.Fatalf("counters %d %d %d", ok, fail, drop)
	}

	// Deleting a webhook drops its undelivered entries.
	before := a.s.OutboxLen()
	a.ok(CmdWebhookDelete, WebhookDelete{ID: "wh-1"})
	if a.s.OutboxLen() != before-3 { // its three progress entries
		t.Fatalf("outbox %d after delete, was %d", a.s.OutboxLen(), before)
	}
	if _, _, drop := a.s.WebhookDeliveryCounters(); drop != 3 {
		t.Fatalf("dropped %d", drop)
	}
	if r := a.do(CmdWebhookDelete, WebhookDelete{ID: "wh-1"}); !errors.Is(r.(error), ErrNotFound) {
		t.Fatalf("second delete %v", r)
	}
	if hooks := a.s.Webhooks(); len(hooks) != 2 || hooks[0].ID != "wh-2" {
		t.Fatalf("webhooks %+v", hooks)
	}
}

func TestOutboxIsBounded(t *testing.T) {
	a := newApplier(t)
	a.ok(CmdWebhookAdd, WebhookAdd{Webhook: hook("http://127.0.0.1:1/a", proto.EventJobSubmitted)})
	defs := make([]proto.JobDefinition, OutboxLimit+25)
	for i := range defs {
		defs[i] = def(fmt.Sprintf("j%05d", i))
	}
	a.ok(CmdSubmitBatch, SubmitBatch{Definitions: defs})
	if a.s.OutboxLen() != OutboxLimit {
		t.Fatalf("outbox %d, want %d", a.s.OutboxLen(), OutboxLimit)
	}
	if first := a.s.Outbox(0, 1)[0]; first.ID != 26 {
		t.Fatalf("oldest kept %d, want 26 (the 25 oldest dropped)", first.ID)
	}
	if _, _, drop := a.s.WebhookDeliveryCounters(); drop != 25 {
		t.Fatalf("dropped %d", drop)
	}
}

func TestWebhookSeedOnce(t *testing.T) {
	a := newApplier(t)
	if a.s.WebhooksSeeded() {
		t.Fatal("seeded before seeding")
	}
	if r := a.ok(CmdWebhookSeed, WebhookSeed{Webhooks: []proto.Webhook{hook("http://127.0.0.1:1/x", proto.EventJobFailed)}}); r != true {
		t.Fatalf("first seed %v", r)
	}
	if r := a.ok(CmdWebhookSeed, WebhookSeed{Webhooks: []proto.Webhook{hook("http://127.0.0.1:1/y", proto.EventJobFailed)}}); r != false {
		t.Fatalf("second seed %v", r)
	}
	if hooks := a.s.Webhooks(); len(hooks) != 1 || hooks[0].URL != "http://127.0.0.1:1/x" || !a.s.WebhooksSeeded() {
		t.Fatalf("webhooks %+v", hooks)
	}
}

// scenario applies a mix of every new command; split runs the first n, the rest after.
func scenario() []func(a *applier) {
	at := time.Date(2026, 1, 17, 10, 0, 0, 0, time.UTC)
	return []func(a *applier){
		func(a *applier) {
			a.ok(CmdWebhookSeed, WebhookSeed{Webhooks: []proto.Webhook{hook("http://127.0.0.1:1/a", proto.WebhookEvents...)}, At: at})
		},
		func(a *applier) { a.ok(CmdScheduleUpsert, createSched("s", "*/5 * * * *", at)) },
		func(a *applier) {
			a.ok(CmdScheduleFired, fired("s", at.Add(5*time.Minute), at.Add(5*time.Minute), "f1", "f2"))
		},
		func(a *applier) { a.ok(CmdLeaseGrant, LeaseGrant{tok("f1", 1), "ag", at}) },
		func(a *applier) {
			a.ok(CmdProgress, ProgressReport{LeaseToken: tok("f1", 1), Progress: proto.Progress{PercentComplete: 10}, At: at.Add(6 * time.Minute)})
		},
		func(a *applier) {
			a.ok(CmdComplete, CompleteReport{LeaseToken: tok("f1", 1), At: at.Add(7 * time.Minute)})
		},
		func(a *applier) {
			a.ok(CmdWebhookDelivered, WebhookDelivered{Deliveries: []Delivery{{ID: 1, Result: DeliverySuccess}, {ID: 2, Result: DeliveryFailure}}})
		},
		func(a *applier) {
			a.ok(CmdWebhookAdd, WebhookAdd{Webhook: hook("http://127.0.0.1:1/b", proto.EventScheduleCompleted), At: at})
		},
		// Ends the run that was open when the snapshot was taken.
		func(a *applier) { a.ok(CmdLeaseGrant, LeaseGrant{tok("f2", 1), "ag", at}) },
		func(a *applier) {
			a.ok(CmdProgress, ProgressReport{LeaseToken: tok("f2", 1), Progress: proto.Progress{PercentComplete: 10}, At: at.Add(8 * time.Minute)})
		},
		func(a *applier) {
			a.ok(CmdComplete, CompleteReport{LeaseToken: tok("f2", 1), At: at.Add(9 * time.Minute)})
		},
		func(a *applier) {
			a.ok(CmdScheduleFired, fired("s", at.Add(10*time.Minute), at.Add(10*time.Minute), "f3"))
		},
	}
}

func persist(t *testing.T, s *State) []byte {
	t.Helper()
	snap, err := FSM{s}.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

// A node restored from a snapshot taken mid-way must end in exactly the state of a node
// that applied the whole log: schedules, open runs, outbox, rate limits and counters.
func TestSnapshotRoundTripSchedulesWebhooks(t *testing.T) {
	steps := scenario()
	for split := 1; split < len(steps); split++ {
		t.Run(fmt.Sprint("split ", split), func(t *testing.T) {
			full := newApplier(t)
			for _, st := range steps {
				st(full)
			}
			half := newApplier(t)
			for _, st := range steps[:split] {
				st(half)
			}
			restored := newApplier(t)
			if err := (FSM{restored.s}).Restore(io.NopCloser(bytes.NewReader(persist(t, half.s)))); err != nil {
				t.Fatal(err)
			}
			restored.idx = half.idx
			for _, st := range steps[split:] {
				st(restored)
			}
			a, b := persist(t, full.s), persist(t, restored.s)
			if !bytes.Equal(a, b) {
				t.Fatalf("restored node diverged:\nfull:     %.2000s\nrestored: %.2000s", a, b)
			}
		})
	}
	// The end state is the expected one, too.
	a := newApplier(t)
	for _, st := range steps {
		st(a)
	}
	s, _ := a.s.Schedule("s")
	if s.RunCount != 2 || s.SuccessfulRuns != 1 || !a.s.WebhooksSeeded() || len(a.s.Webhooks()) != 2 {
		t.Fatalf("end state %+v", s)
	}
	if bytes.Contains(persist(t, a.s), []byte(`"password":"********"`)) == false {
		t.Fatal("outbox payloads should carry masked passwords")
	}
}

// A snapshot written before schedules and webhooks existed restores with none of them.
func TestRestoreOldFormatSnapshot(t *testing.T) {
	j := proto.Job{Definition: def("old"), Status: proto.StatusPending, SubmittedAt: t0, UpdatedAt: t0}
	jb, _ := json.Marshal(snapshotJob{Seq: 1, Job: &j})
	old := `{"version":1,"jobs":1,"next_seq":1,"nodes":[{"id":"n1","api_addr":"127.0.0.1:1","raft_addr":"127.0.0.1:2"}],"applied":7}` + "\n" + string(jb) + "\n"

	a := newApplier(t)
	a.ok(CmdScheduleUpsert, createSched("s", "* * * * *", t0))
	a.ok(CmdWebhookSeed, WebhookSeed{Webhooks: []proto.Webhook{hook("http://127.0.0.1:1/a", proto.EventJobSubmitted)}})
	if err := (FSM{a.s}).Restore(io.NopCloser(strings.NewReader(old))); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.s.Job("old"); !ok || a.s.AppliedIndex() != 7 {
		t.Fatal("jobs not restored")
	}
	if len(a.s.Schedules()) != 0 || len(a.s.Webhooks()) != 0 || a.s.WebhooksSeeded() || a.s.OutboxLen() != 0 {
		t.Fatal("state from before the restore survived it")
	}
	// And it keeps working: the first seed after such a restore applies.
	if r := a.ok(CmdWebhookSeed, WebhookSeed{Webhooks: []proto.Webhook{hook("http://127.0.0.1:1/a", proto.EventJobSubmitted)}}); r != true {
		t.Fatalf("seed after old restore: %v", r)
	}
	a.ok(CmdScheduleUpsert, createSched("s", "* * * * *", t0))
	if !reflect.DeepEqual(len(a.s.Schedules()), 1) {
		t.Fatal("schedule after old restore")
	}
}

func TestNewCommandsRejectGarbage(t *testing.T) {
	s := New()
	for i, ct := range []CommandType{CmdScheduleUpsert, CmdScheduleDelete, CmdScheduleFired, CmdWebhookAdd, CmdWebhookDelete, CmdWebhookDelivered, CmdWebhookSeed} {
		if _, ok := s.Apply(uint64(i+1), append([]byte{byte(ct)}, "{nope"...)).(error); !ok {
			t.Fatalf("%s: malformed entry accepted", ct)
		}
		if ct.String() == fmt.Sprintf("command(%d)", uint8(ct)) {
			t.Fatalf("command %d has no name", ct)
		}
	}
	if r, _ := s.Apply(9, MustEncode(CmdScheduleUpsert, ScheduleUpsert{})).(error); !errors.Is(r, ErrBadCommand) {
		t.Fatalf("upsert without id: %v", r)
	}
}
