package migrate_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/migrate"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// TestHooks: options.hooks run commands from the agent's hooks_dir (never a path from the
// API) and HTTP calls, with the job's facts and never the password; a failed pre hook
// fails the job before anything is copied, a failed post hook fails it with the domain kept.
func TestHooks(t *testing.T) {
	hooks := t.TempDir()
	envOut := filepath.Join(t.TempDir(), "env.txt")
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(hooks, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("record-env", "env | grep -E '^HYPERSDK_|PASS' | sort > "+envOut+"\necho recorded\n")
	write("change-freeze", "echo 'refusing: change freeze until Monday' >&2\nexit 3\n")
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(hooks, "escape")); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var posted []proto.HookFacts
	fails := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var f proto.HookFacts
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &f)
		mu.Lock()
		defer mu.Unlock()
		posted = append(posted, f)
		if strings.Contains(string(b), canaryPassword) {
			t.Errorf("the password was posted to the hook")
		}
		if r.URL.Path == "/fail" || (r.URL.Path == "/flaky" && fails == 0) {
			fails++
			http.Error(w, "ticket system down", http.StatusBadGateway)
		}
	}))
	t.Cleanup(srv.Close)

	f := newFixture(t, vcsim.Config{VMs: 4, DiskSize: 16 * mib}, func(c *migrate.Config) { c.HooksDir, c.AgentName = hooks, "kvm-hooks" })

	t.Run("pre command with the job's facts, flaky post HTTP retried", func(t *testing.T) {
		l := f.lease("job-hooks-ok", 0, proto.Options{ConversionMethod: "https", Hooks: &proto.Hooks{
			Pre:  &proto.Hook{Command: "record-env"},
			Post: &proto.Hook{URL: srv.URL + "/flaky", Retries: 1, TimeoutSeconds: 10},
		}})
		res, err := f.run(l, &recorder{}, 2*time.Minute)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		env, err := os.ReadFile(envOut)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"HYPERSDK_HOOK=pre", "HYPERSDK_JOB_ID=job-hooks-ok", "HYPERSDK_VM_PATH=" + f.sim.VMs[0].Path,
			"HYPERSDK_AGENT=kvm-hooks", "HYPERSDK_VCENTER=" + f.sim.URL.Host} {
			if !strings.Contains(string(env), want+"\n") {
				t.Errorf("hook environment lacks %s:\n%s", want, env)
			}
		}
		if strings.Contains(string(env), canaryPassword) || strings.Contains(string(env), "PASS") {
			t.Errorf("the hook saw a password:\n%s", env)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(posted) != 2 || posted[1].Hook != "post" || posted[1].DomainName != res.DomainName || posted[1].DomainName == "" {
			t.Fatalf("post hook calls %+v (domain %s)", posted, res.DomainName)
		}
	})

	t.Run("failed pre hook: nothing copied", func(t *testing.T) {
		l := f.lease("job-hooks-pre", 1, proto.Options{ConversionMethod: "https", Hooks: &proto.Hooks{Pre: &proto.Hook{Command: "change-freeze"}}})
		rec := &recorder{}
		_, err := f.run(l, rec, time.Minute)
		if !errors.Is(err, migrate.ErrHook) || !strings.Contains(err.Error(), "change freeze until Monday") {
			t.Fatalf("Run: %v", err)
		}
		for _, s := range rec.stages() {
			if s == proto.StageConversion {
				t.Fatalf("a disk was copied after a failed pre hook: %v", rec.stages())
			}
		}
		if _, err := os.Stat(f.p.JobDir("job-hooks-pre")); !os.IsNotExist(err) {
			t.Errorf("job dir left: %v", err)
		}
		if _, err := harness.Virsh("dominfo", f.sim.VMs[1].Name); err == nil {
			t.Errorf("a domain was defined")
		}
	})

	t.Run("failed post hook: job failed, domain kept", func(t *testing.T) {
		l := f.lease("job-hooks-post", 2, proto.Options{ConversionMethod: "https", Hooks: &proto.Hooks{Post: &proto.Hook{URL: srv.URL + "/fail?token=s3cr3t"}}})
		_, err := f.run(l, &recorder{}, 2*time.Minute)
		if !errors.Is(err, migrate.ErrHook) || !strings.Contains(err.Error(), "502") || strings.Contains(err.Error(), "s3cr3t") {
			t.Fatalf("Run: %v", err)
		}
		if _, err := harness.Virsh("dominfo", f.sim.VMs[2].Name); err != nil {
			t.Errorf("the domain was not kept: %v", err)
		}
	})

	t.Run("commands outside hooks_dir are refused", func(t *testing.T) {
		for _, name := range []string{"escape", "missing"} {
			l := f.lease("job-hooks-"+name, 3, proto.Options{Hooks: &proto.Hooks{Pre: &proto.Hook{Command: name, Retries: 3}}})
			start := time.Now()
			_, err := f.run(l, &recorder{}, time.Minute)
			if !errors.Is(err, migrate.ErrHook) || !strings.Contains(err.Error(), "not allowed") {
				t.Fatalf("%s: %v", name, err)
			}
			if time.Since(start) > 30*time.Second {
				t.Errorf("%s: a refused command was retried", name)
			}
		}
	})
}
