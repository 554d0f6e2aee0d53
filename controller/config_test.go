package controller_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
)

// agents.commit_grace reaches the lease manager; absent, it is the 2-minute default.
func TestCommitGraceConfig(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want time.Duration
	}{
		{"agents:\n  lease_ttl: 5s\n  commit_grace: 45s\n", 45 * time.Second},
		{"agents:\n  lease_ttl: 5s\n", 2 * time.Minute},
	} {
		path := filepath.Join(t.TempDir(), "controller.yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := controller.LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		test := controller.TestConfig(t, "n1", t.TempDir())
		test.Agents = cfg.Agents
		c, err := controller.New(test, controller.TestLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		got := c.Leases.CommitGrace()
		c.Close()
		if got != tc.want {
			t.Errorf("%q: commit grace %s, want %s", tc.yaml, got, tc.want)
		}
	}
}
