package controller_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
)

// fakeClock is the scheduler's clock in tests: moving it across a minute boundary fires a
// "* * * * *" schedule through the real firing path without waiting a real minute.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// postRetry is post, retried while the cluster answers 503 (an election in progress), as
// Retry-After tells a client to. A 503 may hide a write that did commit: a 409 on a retry
// (the id exists) then means the first attempt succeeded, and counts as want.
func postRetry(t *testing.T, url string, body []byte, want int) (int, map[string]any) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 0; ; attempt++ {
		code, out := postOnce(t, url, body)
		if code == http.StatusConflict && attempt > 0 {
			return want, out
		}
		if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return code, out
		}
		<-time.After(100 * time.Millisecond)
	}
}

// postOnce is one POST, no retry: postRetry must see every 503 to read a later 409 right.
func postOnce(t *testing.T, url string, body []byte) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// jobBodyID is jobBody with a client-chosen id, so a retried submit cannot create two jobs.
func jobBodyID(id, vm string) []byte {
	var m map[string]any
	_ = json.Unmarshal(jobBody(vm), &m)
	m["id"] = id
	b, _ := json.Marshal(m)
	return b
}

func others(nodes []*controller.Controller, not *controller.Controller) []*controller.Controller {
	var out []*controller.Controller
	for _, c := range nodes {
		if c != not {
			out = append(out, c)
		}
	}
	return out
}

func scheduledJobs(c *controller.Controller, id string) int {
	n := 0
	for _, st := range proto.AllStatuses {
		c.State.Jobs(st, func(j *proto.Job) bool {
			if j.Definition.ScheduleID == id {
				n++
			}
			return true
		})
	}
	return n
}

// settle waits until the leader's scheduler has completed a full pass that started after
// now: anything it was going to fire at the current fake time has been committed.
func settle(t *testing.T, leader *controller.Controller) {
	t.Helper()
	p := leader.Scheduler.Passes()
	leader.Scheduler.Kick()
	controller.WaitFor(t, 5*time.Second, "a scheduler pass", func() bool {
		if leader.Scheduler.Passes() >= p+2 {
			return true
		}
		leader.Scheduler.Kick()
		return false
	})
}

func TestScheduleFiresOncePerMinuteAcrossFailover(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	clk := &fakeClock{now: time.Now().UTC()}
	for _, c := range nodes {
		c.Scheduler.SetClock(clk)
	}
	leader := controller.Leader(nodes)
	via := others(nodes, leader)[0]
	code, out := postRetry(t, via.URL()+"/schedules", []byte(`{"id":"every-minute","schedule":"* * * * *","job_template":`+string(jobBody("DC0/vm/web-1"))+`}`), http.StatusCreated)
	if code != http.StatusCreated {
		t.Fatalf("create through a follower: %d %v", code, out)
	}
	sc, _ := leader.State.Schedule("every-minute")
	m1 := *sc.NextRun
	runCount := func(c *controller.Controller) int { s, _ := c.State.Schedule("every-minute"); return s.RunCount }
	waitRuns := func(nodes []*controller.Controller, n int) {
		t.Helper()
		for _, c := range nodes {
			controller.WaitFor(t, 10*time.Second, fmt.Sprintf("run %d on %s", n, c.Node.ID()), func() bool { return runCount(c) >= n })
		}
	}

	// Minute 1 fires once on the first leader.
	settle(t, leader)
	if runCount(leader) != 0 {
		t.Fatal("fired before its time")
	}
	clk.Set(m1.Add(500 * time.Millisecond))
	leader.Scheduler.Kick()
	waitRuns(nodes, 1)
	settle(t, leader)
	if n := runCount(leader); n != 1 {
		t.Fatalf("minute 1 fired %d times", n)
	}

	// The leader dies; the new one must not fire minute 1 again.
	leader.Close()
	survivors := others(nodes, leader)
	controller.WaitFor(t, 10*time.Second, "new leader", func() bool { return controller.Leader(survivors) != nil })
	leader = controller.Leader(survivors)
	settle(t, leader)
	if n := runCount(leader); n != 1 {
		t.Fatalf("after failover run_count %d, want 1", n)
	}

	// Minute 2 fires once on the new leader.
	clk.Set(m1.Add(time.Minute + 500*time.Millisecond))
	leader.Scheduler.Kick()
	waitRuns(survivors, 2)
	settle(t, leader)
	if n := runCount(leader); n != 2 {
		t.Fatalf("minute 2 fired %d times", n)
	}

	// Five minutes without a leader's attention: one catch-up run, then the next minute.
	clk.Set(m1.Add(6*time.Minute + 500*time.Millisecond))
	leader.Scheduler.Kick()
	waitRuns(survivors, 3)
	settle(t, leader)
	s, _ := leader.State.Schedule("every-minute")
	if s.RunCount != 3 || !s.NextRun.Equal(m1.Add(7*time.Minute)) {
		t.Fatalf("catch-up: run_count %d next %v, want 3 and %v", s.RunCount, s.NextRun, m1.Add(7*time.Minute))
	}
	for _, c := range survivors {
		if n := scheduledJobs(c, "every-minute"); n != 3 {
			t.Fatalf("%s holds %d scheduled jobs, want 3 (one per run)", c.Node.ID(), n)
		}
	}
}

// receiver is a webhook endpoint that checks signatures, fails on demand and dedupes by
// delivery id.
type receiver struct {
	t      *testing.T
	secret string
	mu     sync.Mutex
	down   bool
	failN  map[string]int // event → answer 500 this many more times
	tries  map[string]int // delivery id → attempts seen
	events map[string]string
	bodies map[string][]byte
}

func newReceiver(t *testing.T, secret string) (*receiver, *httptest.Server) {
	r := &receiver{t: t, secret: secret, failN: map[string]int{}, tries: map[string]int{}, events: map[string]string{}, bodies: map[string][]byte{}}
	srv := httptest.NewServer(r) // 127.0.0.1
	t.Cleanup(srv.Close)
	return r, srv
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	m := hmac.New(sha256.New, []byte(r.secret))
	m.Write(body)
	if req.Header.Get(proto.HeaderWebhookSignature) != "sha256="+hex.EncodeToString(m.Sum(nil)) {
		r.t.Errorf("bad signature %q", req.Header.Get(proto.HeaderWebhookSignature))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if req.Header.Get("Authorization") != "Bearer hook-token" {
		r.t.Errorf("configured header missing")
	}
	var p proto.WebhookPayload
	if err := json.Unmarshal(body, &p); err != nil || p.Event == "" || p.Timestamp.IsZero() || len(p.Data) == 0 {
		r.t.Errorf("payload %s", body)
	}
	id := req.Header.Get(proto.HeaderWebhookDelivery)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries[id]++
	if r.down {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var job struct {
		Definition proto.JobDefinition `json:"definition"`
	}
	_ = json.Unmarshal(p.Data, &job)
	key := p.Event + " " + job.Definition.VMPath
	if r.failN[key] > 0 {
		r.failN[key]--
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	if prev, dup := r.events[id]; dup && prev != key {
		r.t.Errorf("delivery id %s reused for %s and %s", id, prev, key)
	}
	r.events[id] = key
	r.bodies[id] = body
}

func (r *receiver) delivered() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]string, len(r.events))
	for k, v := range r.events {
		out[k] = v
	}
	return out
}

func TestWebhookDeliveryAcrossFailover(t *testing.T) {
	rcv, srv := newReceiver(t, "hush")
	retries := 10
	nodes := controller.StartTestClusterWith(t, 3, func(_ int, cfg *controller.Config) {
		// Every node has the webhook in its config: it must still be added only once.
		cfg.Webhooks = []controller.WebhookConfig{{
			URL: srv.URL + "/hook", Events: []string{proto.EventJobSubmitted, proto.EventJobCancelled},
			Timeout: 2, RetryCount: &retries, Secret: "hush", Headers: map[string]string{"Authorization": "Bearer hook-token"},
		}}
		cfg.WebhookDelivery.Backoff = 20 * time.Millisecond
		cfg.WebhookDelivery.MaxBackoff = 200 * time.Millisecond
	})
	for _, c := range nodes {
		controller.WaitFor(t, 5*time.Second, "seeded webhook", func() bool { return len(c.State.Webhooks()) == 1 })
	}
	leader := controller.Leader(nodes)

	// 1. Retries: the receiver answers 500 twice, the third attempt lands.
	rcv.mu.Lock()
	rcv.failN["job.submitted DC0/vm/retry"] = 2
	rcv.mu.Unlock()
	if code, _ := postRetry(t, others(nodes, leader)[0].URL()+"/jobs/submit", jobBodyID("retry", "DC0/vm/retry"), http.StatusCreated); code != http.StatusCreated {
		t.Fatal("submit")
	}
	var retryID string
	controller.WaitFor(t, 10*time.Second, "retried delivery", func() bool {
		for id, ev := range rcv.delivered() {
			if ev == "job.submitted DC0/vm/retry" {
				retryID = id
				return true
			}
		}
		return false
	})
	rcv.mu.Lock()
	tries, body := rcv.tries[retryID], rcv.bodies[retryID]
	rcv.mu.Unlock()
	if tries != 3 {
		t.Fatalf("delivery %s took %d attempts, want 3 (two 500s then success)", retryID, tries)
	}
	if bytes.Contains(body, []byte("s3cret!")) || !bytes.Contains(body, []byte(`"password":"********"`)) {
		t.Fatalf("payload must mask the password: %s", body)
	}

	// 2. Failover with a full outbox: the receiver is down while jobs are submitted and
	// the leader dies; the new leader delivers every event.
	rcv.mu.Lock()
	rcv.down = true
	rcv.mu.Unlock()
	const n = 8
	for i := 0; i < n; i++ {
		if code, out := postRetry(t, nodes[i%3].URL()+"/jobs/submit", jobBodyID(fmt.Sprintf("f%d", i), fmt.Sprintf("DC0/vm/f%d", i)), http.StatusCreated); code != http.StatusCreated {
			t.Fatalf("submit %d: %d %v", i, code, out)
		}
	}
	controller.WaitFor(t, 5*time.Second, "deliveries attempted while down", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return len(rcv.tries) > 1 && leader.State.OutboxLen() == n
	})
	leader.Close()
	survivors := others(nodes, leader)
	controller.WaitFor(t, 10*time.Second, "new leader", func() bool { return controller.Leader(survivors) != nil })
	rcv.mu.Lock()
	rcv.down = false
	rcv.mu.Unlock()
	want := map[string]bool{"job.submitted DC0/vm/retry": true}
	for i := 0; i < n; i++ {
		want[fmt.Sprintf("job.submitted DC0/vm/f%d", i)] = true
	}
	controller.WaitFor(t, 20*time.Second, "every event delivered after failover", func() bool {
		seen := map[string]bool{}
		for _, ev := range rcv.delivered() {
			seen[ev] = true
		}
		for ev := range want {
			if !seen[ev] {
				return false
			}
		}
		return true
	})
	// Each event went out under one delivery id (repeats reuse it), and the outbox drains
	// everywhere.
	byEvent := map[string]int{}
	for _, ev := range rcv.delivered() {
		byEvent[ev]++
	}
	for ev, k := range byEvent {
		if k != 1 {
			t.Fatalf("event %q delivered under %d ids", ev, k)
		}
	}
	for _, c := range survivors {
		controller.WaitFor(t, 10*time.Second, "outbox drained on "+c.Node.ID(), func() bool { return c.State.OutboxLen() == 0 })
		if ok, failed, dropped := c.State.WebhookDeliveryCounters(); ok != n+1 || failed != 0 || dropped != 0 {
			t.Fatalf("%s counters: %d ok %d failed %d dropped", c.Node.ID(), ok, failed, dropped)
		}
	}
	// job.cancelled (beyond the document's events) is delivered too.
	jobs, _ := survivors[0].State.Query(proto.QueryRequest{VMPath: "DC0/vm/f0"})
	if code, _ := postRetry(t, survivors[0].URL()+"/jobs/cancel", []byte(`{"job_ids":["`+jobs.Jobs[0].Definition.ID+`"]}`), http.StatusOK); code != http.StatusOK {
		t.Fatal("cancel")
	}
	controller.WaitFor(t, 10*time.Second, "job.cancelled delivered", func() bool {
		for _, ev := range rcv.delivered() {
			if ev == "job.cancelled DC0/vm/f0" {
				return true
			}
		}
		return false
	})
}

type wsClient struct {
	conn *websocket.Conn
	msgs chan proto.WSMessage
}

func dialWS(t *testing.T, c *controller.Controller, readBuf int) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	if readBuf > 0 {
		d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(readBuf)
			}
			return conn, err
		}
	}
	conn, resp, err := d.Dial("ws://"+c.APIAddr()+"/ws", nil)
	if err != nil {
		t.Fatalf("dial /ws on %s: %v (%v)", c.Node.ID(), err, resp)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// reading reads every message into a channel (a normal, fast client).
func reading(t *testing.T, conn *websocket.Conn) *wsClient {
	c := &wsClient{conn: conn, msgs: make(chan proto.WSMessage, 100000)}
	go func() {
		for {
			var m proto.WSMessage
			if err := conn.ReadJSON(&m); err != nil {
				close(c.msgs)
				return
			}
			c.msgs <- m
		}
	}()
	return c
}

// next returns the next message matching fn.
func (c *wsClient) next(t *testing.T, what string, fn func(proto.WSMessage) bool) proto.WSMessage {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-c.msgs:
			if !ok {
				t.Fatalf("connection closed while waiting for %s", what)
			}
			if fn(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func jobUpdateFor(vm string) func(proto.WSMessage) bool {
	return func(m proto.WSMessage) bool {
		if m.Type != proto.WSJobUpdate {
			return false
		}
		var j proto.Job
		_ = json.Unmarshal(m.Data, &j)
		return j.Definition.VMPath == vm
	}
}

func TestWebSocket(t *testing.T) {
	nodes := controller.StartTestClusterWith(t, 3, func(_ int, cfg *controller.Config) {
		cfg.WebSocket.StatusInterval = 200 * time.Millisecond
		cfg.WebSocket.SendBuffer = 64
		cfg.WebSocket.MaxClients = 2
		cfg.WebSocket.SocketBuffer = 8 << 10
	})
	ws := nodes[0]
	code, _ := postRetry(t, nodes[1].URL()+"/jobs/submit", jobBodyID("before", "DC0/vm/before"), http.StatusCreated)
	if code != http.StatusCreated {
		t.Fatal("submit")
	}
	controller.WaitFor(t, 5*time.Second, "replicated", func() bool { return ws.State.TotalJobs() == 1 })

	fast := reading(t, dialWS(t, ws, 0))
	first := fast.next(t, "first message", func(proto.WSMessage) bool { return true })
	var jobs proto.WSJobsData
	if err := json.Unmarshal(first.Data, &jobs); first.Type != proto.WSJobs || err != nil || len(jobs.Jobs) != 1 || first.Timestamp.IsZero() {
		t.Fatalf("first message %s %s, want jobs with the one job", first.Type, first.Data)
	}
	if jobs.Jobs[0].Definition.Source.Password != proto.RedactedPassword {
		t.Fatal("password in the jobs message")
	}
	second := fast.next(t, "second message", func(proto.WSMessage) bool { return true })
	var status map[string]any
	_ = json.Unmarshal(second.Data, &status)
	if second.Type != proto.WSStatus {
		t.Fatalf("second message %s, want status", second.Type)
	}
	for _, k := range []string{"total_jobs", "running_jobs", "completed_jobs", "failed_jobs", "worker_count", "active_workers"} {
		if _, ok := status[k]; !ok {
			t.Fatalf("status lacks %s: %s", k, second.Data)
		}
	}
	fast.next(t, "a periodic status", func(m proto.WSMessage) bool { return m.Type == proto.WSStatus })

	// A job submitted on another node reaches this node's clients.
	if code, _ := postRetry(t, nodes[2].URL()+"/jobs/submit", jobBodyID("elsewhere", "DC0/vm/elsewhere"), http.StatusCreated); code != http.StatusCreated {
		t.Fatal("submit")
	}
	m := fast.next(t, "job_update of the job submitted on node3", jobUpdateFor("DC0/vm/elsewhere"))
	if bytes.Contains(m.Data, []byte("s3cret!")) {
		t.Fatalf("password in job_update: %s", m.Data)
	}

	// schedule_event on a manual run.
	if code, out := postRetry(t, nodes[1].URL()+"/schedules", []byte(`{"id":"nightly","schedule":"0 2 * * *","job_template":`+string(jobBody("DC0/vm/sched"))+`}`), http.StatusCreated); code != http.StatusCreated {
		t.Fatalf("create schedule %d %v", code, out)
	}
	if code, out := postRetry(t, nodes[2].URL()+"/schedules/nightly/trigger", nil, http.StatusOK); code != http.StatusOK {
		t.Fatalf("trigger %d %v", code, out)
	}
	m = fast.next(t, "schedule_event", func(m proto.WSMessage) bool { return m.Type == proto.WSScheduleEvent })
	var se proto.ScheduleEvent
	if err := json.Unmarshal(m.Data, &se); err != nil || se.ScheduleID != "nightly" || se.Event != proto.ScheduleTriggered {
		t.Fatalf("schedule_event %s", m.Data)
	}

	// The connection cap answers 503 before upgrading.
	slow := dialWS(t, ws, 4096) // never reads
	if _, resp, err := (&websocket.Dialer{}).Dial("ws://"+ws.APIAddr()+"/ws", nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third client: %v %v, want 503", err, resp)
	}
	_ = slow

	// A client that never reads is dropped; the fast one keeps receiving everything.
	batch := 0
	controller.WaitFor(t, 30*time.Second, "slow client dropped", func() bool {
		if ws.WS.Dropped() > 0 {
			return true
		}
		batch++
		defs := make([]proto.JobDefinition, 32)
		for i := range defs {
			defs[i] = proto.JobDefinition{
				ID: fmt.Sprintf("b%d-%d", batch, i), VMPath: "DC0/vm/" + strings.Repeat("x", 1500) + fmt.Sprint(batch, "-", i),
				Source:      proto.Source{Type: "vsphere", VCenterURL: "127.0.0.1:1", Username: "u", Password: "s3cret!"},
				Destination: proto.Destination{Type: "kvm"}, CreatedAt: time.Now().UTC(),
			}
		}
		leader := controller.Leader(nodes)
		if leader == nil {
			return false // an election: try again
		}
		if _, err := leader.Node.Apply(state.MustEncode(state.CmdSubmitBatch, state.SubmitBatch{Definitions: defs})); err != nil {
			return false
		}
		// Let the fast client drain the batch before the next one (its buffer is 64).
		fast.next(t, "the batch's last job", jobUpdateFor(defs[len(defs)-1].VMPath))
		return false
	})
	controller.WaitFor(t, 5*time.Second, "one client left", func() bool { return ws.WS.Clients() == 1 })
	if code, _ := postRetry(t, nodes[1].URL()+"/jobs/submit", jobBodyID("after-drop", "DC0/vm/after-drop"), http.StatusCreated); code != http.StatusCreated {
		t.Fatal("submit")
	}
	fast.next(t, "job_update after the slow client was dropped", jobUpdateFor("DC0/vm/after-drop"))
	// The dropped client's connection is closed.
	_ = slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := slow.ReadMessage(); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("slow client still connected")
			}
			break
		}
	}
}

// A vm_path glob expands at fire time to one job per VM of the simulator's inventory.
func TestScheduleGlobExpandsAgainstSimulator(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sim, err := vcsim.Start(ctx, vcsim.Config{VMs: 3, DiskSize: 1 << 20, Logger: controller.TestLogger(t)})
	if err != nil {
		t.Fatalf("simulator: %v", err)
	}
	t.Cleanup(sim.Close)
	// With secrets.key_file the template's password is sealed in the state: the expansion
	// must open it, and a PUT of the masked template must keep it.
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := controller.StartTestClusterWith(t, 1, func(_ int, cfg *controller.Config) { cfg.Secrets.KeyFile = key })[0]
	tpl, _ := json.Marshal(proto.JobDefinition{
		VMPath:      "DC0/vm/vm-*",
		Source:      proto.Source{Type: "vsphere", VCenterURL: sim.URL.String(), Username: sim.Username, Password: sim.Password, Thumbprint: sim.Thumbprint},
		Destination: proto.Destination{Type: "kvm"},
	})
	if code, out := postRetry(t, c.URL()+"/schedules", []byte(`{"id":"fleet","schedule":"0 2 * * *","job_template":`+string(tpl)+`}`), http.StatusCreated); code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, out)
	}
	sealed, _ := c.State.Schedule("fleet")
	if !strings.HasPrefix(sealed.JobTemplate.Source.Password, "sealed:") {
		t.Fatal("template password not sealed in the state")
	}
	masked := strings.Replace(string(tpl), `"password":"`+sim.Password+`"`, `"password":"********"`, 1)
	req, _ := http.NewRequest(http.MethodPut, c.URL()+"/schedules/fleet", strings.NewReader(`{"job_template":`+masked+`}`))
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT masked template: %v %v", err, resp)
	}
	if kept, _ := c.State.Schedule("fleet"); kept.JobTemplate.Source.Password != sealed.JobTemplate.Source.Password {
		t.Fatal("PUT of the masked template replaced the stored password")
	}
	code, out := postRetry(t, c.URL()+"/schedules/fleet/trigger", nil, http.StatusOK)
	if code != http.StatusOK || len(out["job_ids"].([]any)) != 3 {
		t.Fatalf("trigger: %d %v", code, out)
	}
	var paths []string
	c.State.Jobs(proto.StatusPending, func(j *proto.Job) bool {
		if j.Definition.ScheduleID == "fleet" {
			paths = append(paths, j.Definition.VMPath)
		}
		return true
	})
	if fmt.Sprint(paths) != "[DC0/vm/vm-1 DC0/vm/vm-2 DC0/vm/vm-3]" {
		t.Fatalf("jobs for %v", paths)
	}
	// A pattern that matches nothing is a failed run with the reason.
	if code, out := postRetry(t, c.URL()+"/schedules", []byte(`{"id":"none","schedule":"0 2 * * *","job_template":`+strings.Replace(string(tpl), "vm-*", "db-*", 1)+`}`), http.StatusCreated); code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, out)
	}
	if code, out := postRetry(t, c.URL()+"/schedules/none/trigger", nil, http.StatusBadGateway); code != http.StatusBadGateway || !strings.Contains(fmt.Sprint(out["error"]), "matched no VM") {
		t.Fatalf("trigger of an empty pattern: %d %v", code, out)
	}
	if st := c.State.ScheduleStats(); st.FailedRuns != 1 || st.TotalRuns != 2 {
		t.Fatalf("stats %+v", st)
	}
}
