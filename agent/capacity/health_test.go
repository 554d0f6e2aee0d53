package capacity

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// TestHealthChecks: each self-check fails on the host fault it is for, with a reason that
// says what to do on a packaged host, and only that check fails. libvirt is asked through
// real virsh (test driver: reachable; a socket with no daemon: not).
func TestHealthChecks(t *testing.T) {
	if _, err := exec.LookPath("virsh"); err != nil {
		t.Skip("virsh not installed")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	noDaemon := "qemu+unix:///system?socket=" + filepath.Join(t.TempDir(), "none.sock")
	aFile := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(aFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		cfg        Config
		emptyPath  bool
		wantFailed []string
		wantReason string
	}{
		{name: "healthy", cfg: Config{LibvirtURI: "test:///default"}},
		{name: "libvirt unreachable", cfg: Config{LibvirtURI: noDaemon},
			wantFailed: []string{proto.HealthCheckLibvirt}, wantReason: "systemctl start libvirtd"},
		{name: "storage dir is a file", cfg: Config{LibvirtURI: "test:///default", StorageDir: aFile},
			wantFailed: []string{proto.HealthCheckStorage}, wantReason: aFile},
		{name: "storage nearly full", cfg: Config{LibvirtURI: "test:///default", MinFreeStorage: 1 << 62},
			wantFailed: []string{proto.HealthCheckStorageRoom}, wantReason: "MiB free"},
		{name: "no controller answers", cfg: Config{LibvirtURI: "test:///default",
			Controllers: func() error { return errors.New("connection refused") }},
			wantFailed: []string{proto.HealthCheckControllers}, wantReason: "connection refused"},
		{name: "no qemu-img", emptyPath: true, cfg: Config{LibvirtURI: "test:///default",
			LibvirtPing: func(context.Context) error { return nil }},
			wantFailed: []string{proto.HealthCheckQemuImg}, wantReason: "install the qemu-utils"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.emptyPath {
				t.Setenv("PATH", t.TempDir())
			}
			cfg := tc.cfg
			if cfg.StorageDir == "" {
				cfg.StorageDir = t.TempDir()
			}
			cfg.CommandTimeout = 10 * time.Second
			c, _, _ := New(cfg).Probe(context.Background())
			if c.Healthy != (len(tc.wantFailed) == 0) || !slices.Equal(c.FailedChecks, tc.wantFailed) {
				t.Fatalf("healthy %v, failed %v (%q); want failed %v", c.Healthy, c.FailedChecks, c.Reasons, tc.wantFailed)
			}
			if len(c.Reasons) != len(c.FailedChecks) || tc.wantReason != "" && !strings.Contains(c.Reasons[0], tc.wantReason) {
				t.Fatalf("reasons %q, want one saying %q", c.Reasons, tc.wantReason)
			}
			if tc.name == "healthy" {
				// The write test leaves nothing behind in the storage dir.
				if left, _ := os.ReadDir(cfg.StorageDir); len(left) != 0 {
					t.Fatalf("write test left %v", left)
				}
			}
		})
	}
}

// TestHealthRecovers: a storage dir that goes away fails the check; once it is back (and
// the cached write test expired) the agent is healthy again.
func TestHealthRecovers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "storage")
	p := New(Config{StorageDir: dir, LibvirtURI: "test:///default", LibvirtTTL: time.Millisecond,
		LibvirtPing: func(context.Context) error { return nil }})
	if c, _, _ := p.Probe(context.Background()); c.Healthy || !slices.Contains(c.FailedChecks, proto.HealthCheckStorage) {
		t.Fatalf("missing storage dir: %+v", c)
	}
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, _, _ := p.Probe(context.Background())
		if c.Healthy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still unhealthy with the dir back: %q", c.Reasons)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
