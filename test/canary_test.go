package test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// TestCanaryPasswordNeverLeaks: a job that completes, a job that fails, a schedule and a
// webhook all carry one canary password (the simulator's real one, so the agent must use
// it). Through submit, run, failure, WebSocket, webhook delivery, metrics and logs, the
// canary must appear nowhere but in the agent's memory: not in any API response,
// WebSocket message, webhook payload or header, log file, metric, process argument list,
// or (with secrets.key_file) the raft data on disk.
func TestCanaryPasswordNeverLeaks(t *testing.T) {
	harness.RequireLibvirt(t)
	harness.Bin(t, "hypersdk-agent")
	const canary = "Canary-Pw-4c1d9e"
	dir := t.TempDir()
	sim := harness.StartSim(t, vcsim.Config{VMs: 2, DisksPerVM: 1, DiskSize: 32 * mib,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}, Username: "admin", Password: canary,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	key := filepath.Join(dir, "secrets.key")
	if err := os.WriteFile(key, []byte("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "controller.yaml")
	os.WriteFile(conf, []byte("agents:\n  lease_ttl: 5s\nsecrets:\n  key_file: "+key+"\nlog:\n  level: debug\n"), 0o644)
	ctl := harness.StartController(t, dir, "c1", nil, "--config", conf, "--fast-raft")
	harness.WaitFor(t, 20*time.Second, "leader", func() bool {
		var cl harness.ClusterView
		return harness.GetJSON(ctl.URL()+"/cluster", &cl) == 200 && cl.Leader.ID == "c1"
	})

	// Everything that leaves the controllers is collected here.
	var mu sync.Mutex
	var seen bytes.Buffer
	collect := func(where string, b []byte) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&seen, "\n--- %s ---\n%s", where, b)
	}
	// The webhook carries the canary in the job events it delivers; its own header token and
	// signing secret are secrets too: masked in GET /webhooks, sealed on disk, and in clear
	// only in the delivery itself (the header, and the signature's key).
	const hookToken, hookSecret = "hook-token-5e7a", "hook-secret-a91f"
	var delivered, signedOK int
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		m := hmac.New(sha256.New, []byte(hookSecret))
		m.Write(b)
		mu.Lock()
		delivered++
		if r.Header.Get("Authorization") == "Bearer "+hookToken && r.Header.Get(proto.HeaderWebhookSignature) == "sha256="+hex.EncodeToString(m.Sum(nil)) {
			signedOK++
		}
		mu.Unlock()
		var hdr bytes.Buffer
		for k, v := range r.Header {
			if k != "Authorization" { // the configured header is ours to carry; everything else is checked
				fmt.Fprintf(&hdr, "%s: %s\n", k, v)
			}
		}
		collect("webhook "+r.Header.Get("X-Hypersdk-Event"), append(hdr.Bytes(), b...))
	}))
	t.Cleanup(hook.Close)
	wh := fmt.Sprintf(`{"url":%q,"events":["job.submitted","job.started","job.completed","job.failed","job.progress","job.cancelled","schedule.triggered","schedule.completed"],"enabled":true,"timeout":5,"retry_count":1,"headers":{"Authorization":"Bearer %s"},"secret":%q}`, hook.URL, hookToken, hookSecret)
	if code, err := harness.PostJSON(ctl.URL()+"/webhooks", wh, nil); err != nil || code != 201 {
		t.Fatalf("add webhook: %d %v", code, err)
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+ctl.APIAddr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	go func() {
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				return
			}
			collect("websocket", msg)
		}
	}()

	agent := harness.StartAgent(t, dir, "canary-agent", []*harness.Controller{ctl}, "--max-jobs", "2")
	t.Cleanup(func() { agent.Stop(10 * time.Second) })
	th := harness.StartThrottle(t, sim.URL.Host, 2<<20)
	src := proto.Source{Type: "vsphere", VCenterURL: "https://" + th.Addr + "/sdk", Username: "admin", Password: canary, Thumbprint: sim.Thumbprint}
	harness.CleanupDomain(t, sim.VMs[0].Name)
	good := harness.Submit(t, ctl, proto.JobDefinition{VMPath: sim.VMs[0].Path, Source: src, Destination: proto.Destination{Type: "kvm"},
		Options: proto.Options{ConversionMethod: "https"}})
	bad := harness.Submit(t, ctl, proto.JobDefinition{VMPath: "DC0/vm/no-such-vm", Source: src, Destination: proto.Destination{Type: "kvm"}})
	sched := fmt.Sprintf(`{"id":"canary-sched","name":"canary","schedule":"0 3 * * *","enabled":true,"job_template":{"vm_path":"DC0/vm/also-missing","source":{"type":"vsphere","vcenter_url":%q,"username":"admin","password":%q},"destination":{"type":"kvm"}}}`, src.VCenterURL, canary)
	if code, err := harness.PostJSON(ctl.URL()+"/schedules", sched, nil); err != nil || code != 201 {
		t.Fatalf("create schedule: %d %v", code, err)
	}
	if code, err := harness.PostJSON(ctl.URL()+"/schedules/canary-sched/trigger", "", nil); err != nil || code != 200 {
		t.Fatalf("trigger: %d %v", code, err)
	}

	// While the good job copies, no process may carry the canary in its arguments.
	harness.WaitJob(t, ctl, good, 60*time.Second, "copying", func(j proto.Job) bool { return j.Progress.Stage == proto.StageConversion })
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && bytes.Contains(b, []byte(canary)) {
			t.Errorf("process %s has the canary in its arguments: %q", e.Name(), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	th.SetRate(0)
	if j := harness.WaitTerminal(t, ctl, good, 2*time.Minute); j.Status != proto.StatusCompleted {
		t.Fatalf("good job: %s %q", j.Status, errText(j))
	}
	if j := harness.WaitTerminal(t, ctl, bad, time.Minute); j.Status != proto.StatusFailed {
		t.Fatalf("bad job: %s", j.Status)
	}
	harness.WaitFor(t, 30*time.Second, "webhook saw job.completed and job.failed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		s := seen.String()
		return strings.Contains(s, "webhook job.completed") && strings.Contains(s, "webhook job.failed")
	})

	// Every read endpoint.
	for _, p := range []string{"/jobs/" + good, "/jobs/" + bad, "/status", "/schedules", "/schedules/canary-sched", "/schedules/stats",
		"/webhooks", "/agents", "/cluster", "/metrics"} {
		resp, err := harness.Client.Get(ctl.URL() + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		collect("GET "+p, b)
	}
	var q bytes.Buffer
	resp, err := harness.Client.Post(ctl.URL()+"/jobs/query", "application/json", strings.NewReader(`{"all":true}`))
	if err == nil {
		io.Copy(&q, resp.Body)
		resp.Body.Close()
		collect("POST /jobs/query", q.Bytes())
	}
	if b, err := http.Get("http://" + agent.APIAddr + "/metrics"); err == nil {
		mb, _ := io.ReadAll(b.Body)
		b.Body.Close()
		collect("agent /metrics", mb)
	}
	for _, f := range []string{ctl.LogPath, agent.LogPath} {
		b, _ := os.ReadFile(f)
		collect(f, b)
	}
	// The raft log and snapshots on disk hold the password and the webhook's secrets sealed.
	secretsOnDisk := 0
	filepath.WalkDir(ctl.DataDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			for _, s := range []string{canary, hookToken, hookSecret} {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("%s in clear in %s", s, p)
				}
			}
			secretsOnDisk += bytes.Count(b, []byte("sealed:v1:"))
		}
		return nil
	})
	if secretsOnDisk == 0 {
		t.Error("no sealed value found in the data dir: the disk check looked at nothing")
	}
	mu.Lock()
	all := seen.String()
	if delivered == 0 || signedOK != delivered {
		t.Errorf("%d of %d deliveries carried the clear header token and a signature made with the clear secret", signedOK, delivered)
	}
	mu.Unlock()
	for _, s := range []string{canary, hookToken, hookSecret} {
		if i := strings.Index(all, s); i >= 0 {
			start := max(0, i-300)
			t.Fatalf("%s leaked:\n%s", s, all[start:min(len(all), i+100)])
		}
	}
	for _, must := range []string{"websocket", "webhook job.started", "GET /metrics", "\"********\""} {
		if !strings.Contains(all, must) {
			t.Errorf("the test saw no %q: it checked less than it claims", must)
		}
	}
	t.Logf("checked %d bytes of responses, messages, payloads and logs", len(all))
}
