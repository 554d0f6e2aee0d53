package controller_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// With secrets.key_file the raft log and snapshots never hold a password in clear; the
// agent still receives it in its lease.
func TestPasswordsSealedAtRest(t *testing.T) {
	for _, withKey := range []bool{true, false} {
		t.Run(fmt.Sprint("key=", withKey), func(t *testing.T) {
			dir := t.TempDir()
			cfg := controller.TestConfig(t, "sealed", filepath.Join(dir, "data"))
			if withKey {
				key := filepath.Join(dir, "key")
				os.WriteFile(key, []byte("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"), 0o600)
				cfg.Secrets.KeyFile = key
			}
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
