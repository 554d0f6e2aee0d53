package controller_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// testKey is a secrets key file's content (32 bytes, hex).
const testKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

// sealedConfig is a test node's config, with a secrets key file when withKey.
func sealedConfig(t *testing.T, withKey bool) controller.Config {
	dir := t.TempDir()
	cfg := controller.TestConfig(t, "sealed", filepath.Join(dir, "data"))
	if withKey {
		cfg.Secrets.KeyFile = filepath.Join(dir, "key")
		if err := os.WriteFile(cfg.Secrets.KeyFile, []byte(testKey), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// With secrets.key_file the raft log and snapshots never hold a password in clear; the
// agent still receives it in its lease.
func TestPasswordsSealedAtRest(t *testing.T) {
	for _, withKey := range []bool{true, false} {
		t.Run(fmt.Sprint("key=", withKey), func(t *testing.T) {
			cfg := sealedConfig(t, withKey)
			c, err := controller.New(cfg, controller.TestLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			controller.WaitFor(t, 5*time.Second, "leader", c.Node.IsLeader)
			const canary = "canary-at-rest-7f3a"
			body := fmt.Sprintf(`{"vm_path":"DC0/vm/x","source":{"type":"vsphere","vcenter_url":"127.0.0.1:1","username":"u","password":%q},"destination":{"type":"kvm"}}`, canary)
			var sub proto.SubmitResponse
			if code, err := harness.PostJSON(c.URL()+"/jobs/submit", body, &sub); err != nil || code != 201 {
				t.Fatalf("submit: %d %v", code, err)
			}
			if err := c.Node.Snapshot(); err != nil {
				t.Fatal(err)
			}
			found := false
			filepath.WalkDir(cfg.DataDir(), func(p string, d fs.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(canary)) {
						found = true
					}
				}
				return nil
			})
			if found == withKey {
				t.Fatalf("password in clear on disk: %v (key configured: %v)", found, withKey)
			}
			var lr proto.LeaseResponse
			code, err := harness.PostJSON(c.URL()+"/agent/v1/lease", proto.LeaseRequest{Agent: "a", MaxJobs: 1, WaitSeconds: 2}, &lr)
			if err != nil || code != http.StatusOK || lr.Lease == nil || lr.Lease.Definition.Source.Password != canary {
				t.Fatalf("the agent must get the clear password: %d %v %+v", code, err, lr.Lease)
			}
		})
	}
}

// Fault 5 of issue 11: webhook header values and secrets (bearer tokens, HMAC keys) were
// stored in clear in the raft log and snapshots even with secrets.key_file. They are now
// sealed like vCenter passwords, from the API and from the config file, and opened only
// by the leader to deliver.
func TestWebhookSecretsSealedAtRest(t *testing.T) {
	const (
		cfgHeader = "canary-cfg-header-1b7e"
		cfgSecret = "canary-cfg-secret-52ac"
		apiHeader = "canary-api-header-9d01"
		apiSecret = "canary-api-secret-e6f4"
	)
	canaries := []string{cfgHeader, cfgSecret, apiHeader, apiSecret}
	for _, withKey := range []bool{true, false} {
		t.Run(fmt.Sprint("key=", withKey), func(t *testing.T) {
			type got struct{ header, sig string }
			var mu sync.Mutex
			recv := map[string]got{} // path → what arrived
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				secret := map[string]string{"/cfg": cfgSecret, "/api": apiSecret}[r.URL.Path]
				m := hmac.New(sha256.New, []byte(secret))
				m.Write(body)
				sig := "bad"
				if r.Header.Get(proto.HeaderWebhookSignature) == "sha256="+hex.EncodeToString(m.Sum(nil)) {
					sig = "ok"
				}
				mu.Lock()
				recv[r.URL.Path] = got{header: r.Header.Get("X-Token"), sig: sig}
				mu.Unlock()
			}))
			t.Cleanup(srv.Close)

			cfg := sealedConfig(t, withKey)
			cfg.Webhooks = []controller.WebhookConfig{{URL: srv.URL + "/cfg", Events: []string{proto.EventJobSubmitted},
				Headers: map[string]string{"X-Token": cfgHeader}, Secret: cfgSecret}}
			c, err := controller.New(cfg, controller.TestLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			controller.WaitFor(t, 5*time.Second, "config webhook seeded", func() bool { return len(c.State.Webhooks()) == 1 })
			add := fmt.Sprintf(`{"url":%q,"events":["job.submitted"],"headers":{"X-Token":%q},"secret":%q}`, srv.URL+"/api", apiHeader, apiSecret)
			if code, err := harness.PostJSON(c.URL()+"/webhooks", add, nil); err != nil || code != http.StatusCreated {
				t.Fatalf("add webhook: %d %v", code, err)
			}
			var sub proto.SubmitResponse
			if code, err := harness.PostJSON(c.URL()+"/jobs/submit", harness.JobBody("DC0/vm/hooked"), &sub); err != nil || code != http.StatusCreated {
				t.Fatalf("submit: %d %v", code, err)
			}
			controller.WaitFor(t, 10*time.Second, "both webhooks delivered", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(recv) == 2
			})
			mu.Lock()
			if recv["/cfg"] != (got{cfgHeader, "ok"}) || recv["/api"] != (got{apiHeader, "ok"}) {
				t.Errorf("deliveries must carry the clear header and a valid signature: %+v", recv)
			}
			mu.Unlock()
			if err := c.Node.Snapshot(); err != nil {
				t.Fatal(err)
			}
			onDisk := map[string]bool{}
			filepath.WalkDir(cfg.DataDir(), func(p string, d fs.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					b, _ := os.ReadFile(p)
					for _, cn := range canaries {
						if bytes.Contains(b, []byte(cn)) {
							onDisk[cn] = true
						}
					}
				}
				return nil
			})
			for _, cn := range canaries {
				if onDisk[cn] == withKey {
					t.Errorf("%s in clear on disk: %v (key configured: %v)", cn, onDisk[cn], withKey)
				}
			}
			// The API still shows them masked, never sealed or clear.
			var list proto.WebhookListResponse
			if code := harness.GetJSON(c.URL()+"/webhooks", &list); code != http.StatusOK {
				t.Fatalf("list: %d", code)
			}
			for _, w := range list.Webhooks {
				if w.Headers["X-Token"] != proto.RedactedPassword || w.Secret != proto.RedactedPassword {
					t.Errorf("GET /webhooks shows %+v", w)
				}
			}
		})
	}
}

// Fault 7 of issue 11 (sealed passwords): a job whose password this cluster's key cannot
// open (the key file was replaced) is never granted, and its pending_reason says why
// instead of nothing.
func TestUnopenablePasswordIsThePendingReason(t *testing.T) {
	dir := t.TempDir()
	keyA, keyB := filepath.Join(dir, "a.key"), filepath.Join(dir, "b.key")
	os.WriteFile(keyA, []byte(testKey), 0o600)
	os.WriteFile(keyB, []byte("1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100"), 0o600)
	cfg := controller.TestConfig(t, "rekeyed", filepath.Join(dir, "data"))
	cfg.Secrets.KeyFile = keyA
	c, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	controller.WaitFor(t, 5*time.Second, "leader", c.Node.IsLeader)
	var sub proto.SubmitResponse
	if code, err := harness.PostJSON(c.URL()+"/jobs/submit", harness.JobBody("DC0/vm/rekeyed"), &sub); err != nil || code != http.StatusCreated {
		t.Fatalf("submit: %d %v", code, err)
	}
	c.Close()

	cfg.Secrets.KeyFile = keyB
	cfg.API.Addr, cfg.Cluster.RaftAddr = "127.0.0.1:0", c.Node.RaftAddr()
	c, err = controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	controller.WaitFor(t, 10*time.Second, "leader with the job", func() bool {
		_, ok := c.State.Job(sub.JobID)
		return c.Node.IsLeader() && ok
	})
	var lr proto.LeaseResponse
	if code, err := harness.PostJSON(c.URL()+"/agent/v1/lease", proto.LeaseRequest{Agent: "a", MaxJobs: 1, WaitSeconds: 1}, &lr); err != nil || code != http.StatusOK || lr.Lease != nil {
		t.Fatalf("lease: %d %v %+v: the job must not be granted", code, err, lr.Lease)
	}
	var j proto.Job
	if code := harness.GetJSON(c.URL()+"/jobs/"+sub.JobID, &j); code != http.StatusOK {
		t.Fatalf("get job: %d", code)
	}
	if j.Status != proto.StatusPending || !strings.Contains(j.PendingReason, "secrets") {
		t.Fatalf("job %s, pending_reason %q: want it to say the password does not open with this secrets key", j.Status, j.PendingReason)
	}
}
