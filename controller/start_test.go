package controller_test

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/api"
)

// dirState lists every path below dir with its size and modification time ("absent" when
// dir does not exist).
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		out["."] = "absent"
		return out
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := d.Info()
		rel, _ := filepath.Rel(dir, p)
		out[rel] = fi.Mode().String() + " " + fi.ModTime().Format(time.RFC3339Nano) + " " + strings.Repeat("#", int(min(fi.Size(), 64)))
		return nil
	})
	return out
}

// busyAddr holds a loopback port for the test's lifetime.
func busyAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// Fault 4 of issue 11: a controller given a bad configuration (here: every kind of bad
// setting it can check) used to create its data dir, write its node id and bootstrap raft
// there before refusing to start. A refused start now leaves the data dir as it was, absent
// or holding an earlier node's state.
func TestRefusedStartLeavesDataDirAlone(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(t *testing.T, cfg *controller.Config)
		want   string
	}{
		{"token shorter than 16 characters", func(t *testing.T, cfg *controller.Config) {
			cfg.Auth.Tokens = []api.Token{{Name: "ops", Token: "short", Role: api.RoleAdmin}}
		}, "shorter than 16"},
		{"token with an unknown role", func(t *testing.T, cfg *controller.Config) {
			cfg.Auth.Tokens = []api.Token{{Name: "ops", Token: "0123456789abcdef0", Role: "root"}}
		}, "role"},
		{"secrets key file missing", func(t *testing.T, cfg *controller.Config) {
			cfg.Secrets.KeyFile = filepath.Join(t.TempDir(), "nope")
		}, "secrets key"},
		{"secrets key readable by others", func(t *testing.T, cfg *controller.Config) {
			p := filepath.Join(t.TempDir(), "key")
			os.WriteFile(p, []byte("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"), 0o644)
			cfg.Secrets.KeyFile = p
		}, "readable"},
		{"tls certificate missing", func(t *testing.T, cfg *controller.Config) {
			cfg.API.TLS.CertFile, cfg.API.TLS.KeyFile = filepath.Join(t.TempDir(), "c.pem"), filepath.Join(t.TempDir(), "k.pem")
		}, "api.tls"},
		{"tls ca file missing", func(t *testing.T, cfg *controller.Config) {
			cfg.API.TLS.CAFile = filepath.Join(t.TempDir(), "ca.pem")
		}, "ca_file"},
		{"gossip key not base64", func(t *testing.T, cfg *controller.Config) {
			cfg.Gossip.Key = "not a key!"
		}, "gossip"},
		{"webhook without url", func(t *testing.T, cfg *controller.Config) {
			cfg.Webhooks = []controller.WebhookConfig{{Events: []string{"job.completed"}}}
		}, "webhooks[0]"},
		{"raft address in use", func(t *testing.T, cfg *controller.Config) {
			cfg.Cluster.RaftAddr = busyAddr(t)
		}, "raft"},
		{"api address in use", func(t *testing.T, cfg *controller.Config) {
			cfg.API.Addr = busyAddr(t)
		}, "api listen"},
		{"gossip address in use", func(t *testing.T, cfg *controller.Config) {
			cfg.Gossip.Addr = busyAddr(t)
		}, "gossip"},
	}
	for _, tc := range cases {
		for _, existing := range []bool{false, true} {
			name := tc.name + "/new data dir"
			if existing {
				name = tc.name + "/earlier node's data dir"
			}
			t.Run(name, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "data")
				if existing {
					// A data dir of an earlier start of this node.
					cfg := controller.TestConfig(t, "n1", dir)
					c, err := controller.New(cfg, controller.TestLogger(t))
					if err != nil {
						t.Fatal(err)
					}
					controller.WaitFor(t, 10*time.Second, "leader", c.Node.IsLeader)
					c.Close()
				}
				before := dirState(t, dir)
				cfg := controller.TestConfig(t, "n1", dir)
				tc.mutate(t, &cfg)
				c, err := controller.New(cfg, controller.TestLogger(t))
				if err == nil {
					c.Close()
					t.Fatal("started with a bad configuration")
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q does not say %q", err, tc.want)
				}
				if after := dirState(t, dir); !reflect.DeepEqual(before, after) {
					t.Fatalf("refused start changed the data dir:\nbefore %v\nafter  %v", before, after)
				}
			})
		}
	}
}
