package test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// TestRestartSafety: controllers SIGKILLed while raft writes a snapshot (snapshots are
// forced every few hundred entries, and the test watches the data dir for the snapshot
// being written), then all three SIGKILLed at once and started again: every acknowledged
// job, schedule and webhook is back on every node, and the cluster takes writes again.
func TestRestartSafety(t *testing.T) {
	rounds, preload := 3, 2000
	if longRun() {
		rounds, preload = 12, 20000
	}
	f := startFleet(t, fleetConfig{Controllers: 3, LeaseTTL: 5 * time.Second, SnapshotThreshold: 200, TrailingLogs: 100})
	sub := newSubmitter(urlsOf(f.cs))
	run := fmt.Sprintf("restart-%x", time.Now().UnixNano()&0xffffff)
	var seq atomic.Int64
	submitN := func(n, clients int) {
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq.Load() < int64(n) {
					k := seq.Add(1)
					sub.submit(idJob(run, k), 30*time.Second)
				}
			}()
		}
		wg.Wait()
	}
	submitN(preload, 16)

	hooks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(hooks.Close)
	var scheduleIDs, webhookIDs []string
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("%s-schedule-%d", run, i)
		tmpl := idJob(run, 0)
		tmpl.ID = ""
		code, err := harness.PostJSON(f.cs[i%3].URL()+"/schedules", proto.ScheduleRequest{ID: id, Name: "restart " + id,
			Schedule: "0 3 1 1 *", JobTemplate: &tmpl}, nil)
		if err != nil || code != http.StatusCreated {
			t.Fatalf("create schedule: %d %v", code, err)
		}
		scheduleIDs = append(scheduleIDs, id)
	}
	for i := 0; i < 3; i++ {
		var out proto.WebhookAddResponse
		code, err := harness.PostJSON(f.cs[i%3].URL()+"/webhooks", proto.WebhookRequest{URL: fmt.Sprintf("%s/hook/%d", hooks.URL, i),
			Events: []string{proto.EventScheduleFailed}}, &out)
		if err != nil || code != http.StatusCreated {
			t.Fatalf("add webhook: %d %v", code, err)
		}
		webhookIDs = append(webhookIDs, out.Webhook.ID)
	}
	sort.Strings(webhookIDs)

	// Rounds: a writer keeps committing (so snapshots keep coming) while the victim's
	// snapshot dir is watched; the victim dies the moment a snapshot is being written.
	caught := 0
	for r := 0; r < rounds; r++ {
		victim := harness.LeaderOf(f.cs)
		if victim == nil {
			t.Fatal("no leader")
		}
		if r%2 == 1 {
			victim = f.cs[(slices.Index(f.cs, victim)+1)%len(f.cs)]
		}
		stop := make(chan struct{})
		writerDone := make(chan struct{})
		go func() {
			defer close(writerDone)
			for {
				select {
				case <-stop:
					return
				default:
				}
				sub.submit(idJob(run, seq.Add(1)), 30*time.Second)
			}
		}()
		if killMidSnapshot(victim, 20*time.Second) {
			caught++
		}
		close(stop)
		<-writerDone
		victim.Restart(t)
		acked := sub.ackedIDs()
		harness.WaitFor(t, 60*time.Second, fmt.Sprintf("round %d: %s restarted with every acknowledged job", r, victim.ID), func() bool {
			c := checkConverged([]*harness.Controller{victim}, acked)
			return c.byID != nil && len(c.lost) == 0
		})
	}

	// Everything at once: no node survives to hand the others what they missed.
	for _, c := range f.cs {
		c.Signal(syscall.SIGKILL)
	}
	for _, c := range f.cs {
		if !c.Wait(10 * time.Second) {
			t.Fatalf("%s survived SIGKILL", c.ID)
		}
	}
	fullKill := time.Now()
	for _, c := range f.cs {
		c.Restart(t)
	}
	acked := sub.ackedIDs()
	conv := waitConverged(t, f.cs, acked, 2*time.Minute, false)
	back := time.Since(fullKill)
	var missingSchedules, missingWebhooks []string
	for _, c := range f.cs {
		var sl proto.ScheduleListResponse
		var wl proto.WebhookListResponse
		if harness.GetJSON(c.URL()+"/schedules", &sl) != http.StatusOK || harness.GetJSON(c.URL()+"/webhooks", &wl) != http.StatusOK {
			t.Fatalf("%s does not list schedules and webhooks after the restart", c.ID)
		}
		have := map[string]bool{}
		for _, s := range sl.Schedules {
			have[s.ID] = s.Schedule == "0 3 1 1 *" && s.JobTemplate.VMPath != ""
		}
		for _, id := range scheduleIDs {
			if !have[id] {
				missingSchedules = append(missingSchedules, c.ID+": "+id)
			}
		}
		var got []string
		for _, w := range wl.Webhooks {
			got = append(got, w.ID)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(webhookIDs, ",") {
			missingWebhooks = append(missingWebhooks, fmt.Sprintf("%s has %v, want %v", c.ID, got, webhookIDs))
		}
	}
	after := newSubmitter(urlsOf(f.cs))
	writes := after.submit(idJob(run, seq.Add(1)), 30*time.Second)
	snaps := 0
	for _, c := range f.cs {
		snaps += len(completeSnapshots(c))
	}

	t.Log(table(fmt.Sprintf("restart safety (%d jobs preloaded, %d kill rounds, snapshot every 200 entries)", preload, rounds), [][2]string{
		{"acknowledged jobs", fmt.Sprint(len(acked))},
		{"lost", fmt.Sprint(len(conv.lost))},
		{"duplicated", fmt.Sprint(len(conv.duplicated))},
		{"nodes disagreeing", fmt.Sprint(len(conv.disagree))},
		{"kills while a snapshot was being written", fmt.Sprintf("%d of %d", caught, rounds)},
		{"schedules missing", fmt.Sprint(len(missingSchedules))},
		{"webhooks missing", fmt.Sprint(len(missingWebhooks))},
		{"full-cluster SIGKILL → all jobs back on 3 nodes", back.Round(100 * time.Millisecond).String()},
		{"write accepted after the full restart", fmt.Sprint(writes)},
		{"snapshots on disk (3 nodes)", fmt.Sprint(snaps)},
	}))
	if len(conv.lost)+len(conv.duplicated)+len(conv.disagree) > 0 {
		t.Errorf("after the restarts: lost %v, duplicated %v, disagreeing %v", conv.lost, conv.duplicated, listSome(conv.disagree, 10))
	}
	if len(missingSchedules) > 0 || len(missingWebhooks) > 0 {
		t.Errorf("schedules missing: %v; webhooks: %v", missingSchedules, missingWebhooks)
	}
	if !writes {
		t.Error("no write accepted after the full restart")
	}
	if caught == 0 {
		t.Error("no kill landed while a snapshot was being written: the test did not test what it claims")
	}
	if len(sub.unexpected) > 0 {
		t.Errorf("clients saw answers other than 201, 503 and 409-on-retry:\n  %s", listSome(sub.unexpected, 10))
	}
}

// killMidSnapshot watches c's snapshot dir and SIGKILLs c as soon as raft is writing a
// snapshot there (a ".tmp" directory), or after timeout. It reports whether the kill left
// the snapshot unfinished (the ".tmp" directory is still there after c died).
func killMidSnapshot(c *harness.Controller, timeout time.Duration) bool {
	dir := filepath.Join(c.DataDir, "snapshots")
	var tmp string
	deadline := time.Now().Add(timeout)
	for tmp == "" && time.Now().Before(deadline) {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".tmp") {
				tmp = filepath.Join(dir, e.Name())
			}
		}
		if tmp == "" {
			time.Sleep(500 * time.Microsecond) // polling pacing: a snapshot lasts milliseconds
		}
	}
	c.Signal(syscall.SIGKILL)
	c.Wait(10 * time.Second)
	if tmp == "" {
		return false
	}
	_, err := os.Stat(tmp)
	return err == nil
}

// completeSnapshots lists the finished snapshots in c's data dir.
func completeSnapshots(c *harness.Controller) []string {
	ents, _ := os.ReadDir(filepath.Join(c.DataDir, "snapshots"))
	var out []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			out = append(out, e.Name())
		}
	}
	return out
}
