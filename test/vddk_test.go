package test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/fakevddk"
	"github.com/hypersdk/hypersdk/test/harness"
)

// The vddk method end to end: bin/hypersdk-agent loads the fake VDDK (test/fakevddk, not
// VMware's library) in its reader processes, from --vddk-libdir, and the fake serves the
// simulator's datastores. The fake's stats file shows what was read.

// vddkEnv is a migrationEnv whose agent has a fake VDDK.
type vddkEnv struct {
	*migrationEnv
	libdir string
	fake   *fakevddk.Fake
}

func newVDDKEnv(t *testing.T, simCfg vcsim.Config, leaseTTL time.Duration, maxJobs int, v fakevddk.Variant) *vddkEnv {
	t.Helper()
	ve := &vddkEnv{libdir: fakevddk.Build(t, v)}
	dir := t.TempDir()
	conf := filepath.Join(dir, "fakevddk.conf")
	ve.migrationEnv = newMigrationEnv(t, simCfg, leaseTTL, maxJobs, agentSetup{
		// Debug: VDDK's own log lines (one carries the password, to be scrubbed) show.
		env: []string{fakevddk.EnvVar + "=" + conf}, args: []string{"--vddk-libdir", ve.libdir, "--log-level", "debug"},
	})
	cfg := fakevddk.ForSim(ve.sim, "")
	cfg.Password = e2ePassword
	ve.fake = fakevddk.New(t, dir, cfg)
	return ve
}

// readers lists live reader processes of this test's fake (whoever their parent is now).
func (e *vddkEnv) readers() []string { return e.fake.Processes("vddk-reader") }

func (e *vddkEnv) waitNoReaders() {
	e.t.Helper()
	harness.WaitFor(e.t, 15*time.Second, "no VDDK reader process left", func() bool { return len(e.readers()) == 0 })
}

// checkOnlyAllocatedRead: for every disk of vm, the fake served exactly the allocated
// 64 KiB chunks of its flat extent and never a hole.
func (e *vddkEnv) checkOnlyAllocatedRead(t *testing.T, vm vcsim.VMInfo) {
	t.Helper()
	st := e.fake.ReadStats()
	for _, d := range vm.Disks {
		data, err := fakevddk.DataRanges(d.FlatPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.CheckReadsInData(d.FlatPath, data, 64<<10); err != nil {
			t.Error(err)
		}
		read, want := st.BytesRead(d.FlatPath), fakevddk.AllocatedBytes(data, 64<<10, d.Capacity)
		if read != want {
			t.Errorf("%s: read %d bytes, its allocated chunks hold %d", filepath.Base(d.FlatPath), read, want)
		}
		t.Logf("%s: capacity %d, allocated %d, read %d", filepath.Base(d.FlatPath), d.Capacity, want, read)
	}
}

// TestE2EVDDK: through the real controller and agent, one VM with one disk and one with
// two disks of a size that is not a multiple of the 2 MiB read, half sparse, copied with
// the vddk method (asked for, and picked by auto): byte-identical, only allocated blocks
// read, the agent advertises vddk in GET /agents.
func TestE2EVDDK(t *testing.T) {
	t.Parallel()
	e := newVDDKEnv(t, vcsim.Config{VMs: 2, DisksPerVM: 2, DiskSize: 33 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		15*time.Second, 2, fakevddk.Standard)
	harness.WaitFor(t, 30*time.Second, "agent advertises vddk", func() bool {
		var ag proto.AgentInfo
		return harness.GetJSON(e.ctl.URL()+"/agents/agent-1", &ag) == 200 && ag.Capabilities.VDDK && ag.Capabilities.HasMethod("vddk")
	})
	cases := []struct {
		opts   proto.Options
		format string
	}{
		{proto.Options{ConversionMethod: "vddk"}, "qcow2"},
		{proto.Options{ConversionMethod: "auto", OutputFormat: "raw"}, "raw"},
	}
	ids := make([]string, len(cases))
	for i, tc := range cases {
		ids[i] = harness.Submit(t, e.ctl, e.job(i, "", tc.opts))
	}
	for i, tc := range cases {
		j := harness.WaitTerminal(t, e.ctl, ids[i], 2*time.Minute)
		if j.Status != proto.StatusCompleted || j.Attempt != 1 {
			t.Fatalf("job %d: %s at attempt %d: %q", i, j.Status, j.Attempt, errText(j))
		}
		if !strings.Contains(j.Progress.Message, "with vddk") && !strings.Contains(j.Progress.Message, "defined") {
			t.Logf("final message %q", j.Progress.Message)
		}
		for k, p := range j.Result.Disks {
			compareImage(t, e.sim.VMs[i].Disks[k].FlatPath, p, tc.format)
		}
		e.checkOnlyAllocatedRead(t, e.sim.VMs[i])
	}
	st := e.fake.ReadStats()
	if st.Calls["InitEx"] != 4 || st.Calls["Exit"] != 4 {
		t.Errorf("InitEx %d, Exit %d: want one of each per disk", st.Calls["InitEx"], st.Calls["Exit"])
	}
	for _, c := range st.Where("call", "ConnectEx") {
		if !strings.HasPrefix(c["snapshot"], "snapshot-") || c["read_only"] != "1" {
			t.Errorf("ConnectEx %v: want a snapshot, read-only", c)
		}
	}
	if kids := e.toolChildren(); len(kids) > 0 {
		t.Errorf("processes left: %v", kids)
	}
	// The fake logs its login with the password; the agent shows the line scrubbed (and
	// newMigrationEnv's cleanup checks that the password itself never appears).
	if b, err := os.ReadFile(e.agent.LogPath); err != nil || !bytes.Contains(b, []byte("password=********")) {
		t.Errorf("the agent's log lacks VDDK's scrubbed login line (%v)", err)
	}
}

// TestE2EVDDKErrors: a thumbprint or a password the "server" (the fake) refuses ends the
// job at attempt 1 with a message that names the fix and leaves nothing behind; a VDDK
// without QueryAllocatedBlocks completes with a warning that names the fix.
func TestE2EVDDKErrors(t *testing.T) {
	t.Parallel()
	e := newVDDKEnv(t, vcsim.Config{VMs: 3, DisksPerVM: 1, DiskSize: 8 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		15*time.Second, 2, fakevddk.Standard)
	old := fakevddk.Build(t, fakevddk.NoQueryAllocated)
	a := harness.StartAgentEnv(t, []string{e.fake.Env()}, e.dir, "agent-old", []*harness.Controller{e.ctl}, "--vddk-libdir", old)
	t.Cleanup(func() { a.Stop(10 * time.Second) })
	waitMethods(t, e.ctl, map[string]bool{"agent-1": true, "agent-old": true})
	cases := []struct {
		name   string
		agent  string
		edit   func(*fakevddk.Config) // the fake's view of the "server"
		status proto.JobStatus
		want   []string
	}{
		{"wrong thumbprint", "agent-1", func(c *fakevddk.Config) { c.Thumbprint = "99:88:77:66" }, proto.StatusFailed,
			[]string{"conversion", "source.thumbprint", "actual thumbprint=99:88:77:66"}},
		{"wrong password", "agent-1", func(c *fakevddk.Config) { c.Password = "the-server-has-another" }, proto.StatusFailed,
			[]string{"conversion", "refused the credentials", "source.password"}},
		{"VDDK without QueryAllocatedBlocks", "agent-old", nil, proto.StatusCompleted, nil},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The fake's configuration is shared by the agents' readers: one job at a time.
			if tc.edit != nil {
				saved := e.fake.Cfg
				tc.edit(&e.fake.Cfg)
				e.fake.Write()
				defer func() { e.fake.Cfg = saved; e.fake.Write() }()
			}
			id := harness.Submit(t, e.ctl, e.job(i, "", proto.Options{ConversionMethod: "vddk", TargetAgent: tc.agent}))
			j := harness.WaitTerminal(t, e.ctl, id, 2*time.Minute)
			checkJobEnd(t, e.migrationEnv, j, i, tc.agent, tc.status, tc.want)
			if tc.status == proto.StatusCompleted {
				if !strings.Contains(strings.Join(j.Warnings, "\n"), "install VDDK 6.7 or later") {
					t.Errorf("warnings %q do not name the fix", j.Warnings)
				}
				compareImage(t, e.sim.VMs[i].Disks[0].FlatPath, j.Result.Disks[0], "qcow2")
				if read := e.fake.ReadStats().BytesRead(e.sim.VMs[i].Disks[0].FlatPath); read != 8*mib {
					t.Errorf("read %d bytes: without QueryAllocatedBlocks the whole disk is read", read)
				}
			}
		})
	}
	e.waitNoReaders()
}

// TestE2EVDDKMissing: agents whose VDDK is missing or does not load do not advertise vddk;
// a job that demands it fails at attempt 1 saying what to install or fix, leaving nothing.
func TestE2EVDDKMissing(t *testing.T) {
	t.Parallel()
	broken := fakevddk.Build(t, fakevddk.Standard)
	if err := os.Remove(filepath.Join(broken, "lib64", "libfakevddkcore.so")); err != nil {
		t.Fatal(err)
	}
	e := newMigrationEnv(t, vcsim.Config{VMs: 2, DisksPerVM: 1, DiskSize: 8 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		15*time.Second, 1, agentSetup{args: []string{"--vddk-libdir", filepath.Join(t.TempDir(), "vddk")}})
	a := harness.StartAgent(t, e.dir, "agent-broken", []*harness.Controller{e.ctl}, "--vddk-libdir", broken)
	t.Cleanup(func() { a.Stop(10 * time.Second) })
	waitMethods(t, e.ctl, map[string]bool{"agent-1": false, "agent-broken": false})
	cases := []struct {
		name, agent string
		want        []string
	}{
		{"VDDK missing", "agent-1", []string{"preparing", "VDDK not found", "lib64/libvixDiskLib.so.8", "--vddk-libdir"}},
		{"VDDK does not load", "agent-broken", []string{"preparing", "does not load", "libfakevddkcore.so", "whole VDDK tarball"}},
	}
	ids := make([]string, len(cases))
	for i, tc := range cases {
		ids[i] = harness.Submit(t, e.ctl, e.job(i, "", proto.Options{ConversionMethod: "vddk", TargetAgent: tc.agent}))
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkJobEnd(t, e, harness.WaitTerminal(t, e.ctl, ids[i], 2*time.Minute), i, tc.agent, proto.StatusFailed, tc.want)
		})
	}
}

// waitMethods waits until GET /agents shows each agent with (true) or without vddk.
func waitMethods(t *testing.T, ctl *harness.Controller, want map[string]bool) {
	t.Helper()
	for name, vddk := range want {
		harness.WaitFor(t, 30*time.Second, fmt.Sprintf("%s in GET /agents with vddk=%v", name, vddk), func() bool {
			var ag proto.AgentInfo
			return harness.GetJSON(ctl.URL()+"/agents/"+name, &ag) == 200 && ag.Capabilities.VDDK == vddk &&
				ag.Capabilities.HasMethod("vddk") == vddk && ag.Capabilities.HasMethod("nfc")
		})
	}
}

// checkJobEnd checks a job of VM i ended as wanted at attempt 1 with an error naming
// want, without the password, and (failed) with no files or domain left.
func checkJobEnd(t *testing.T, e *migrationEnv, j proto.Job, i int, agent string, status proto.JobStatus, want []string) {
	t.Helper()
	msg := errText(j)
	if j.Status != status || j.Attempt != 1 || j.Agent != agent {
		t.Fatalf("%s at attempt %d on %q (%q), want %s at attempt 1 on %s", j.Status, j.Attempt, j.Agent, msg, status, agent)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q lacks %q", msg, w)
		}
	}
	if strings.Contains(msg, e2ePassword) {
		t.Error("the error shows the password")
	}
	if status == proto.StatusFailed {
		if harness.DomainExists(e.sim.VMs[i].Name) || len(entries(t, filepath.Join(e.dir, agent+"-storage", j.Definition.ID))) != 0 {
			t.Errorf("the failed job left a domain or files")
		}
	}
}

// TestE2EVDDKCancelAndKill: as for https, a job cancelled mid-read ends cancelled with no
// file, domain or process; the agent SIGKILLed mid-read takes its readers with it and the
// job completes at attempt 2; a crash inside VDDK fails one attempt only, the agent lives
// on and the job completes at the next.
func TestE2EVDDKCancelAndKill(t *testing.T) {
	t.Parallel()
	e := newVDDKEnv(t, vcsim.Config{VMs: 3, DisksPerVM: 2, DiskSize: 32 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.75}},
		// A 5 s lease: the killed agent's lease ends soon, and the restarted agent's
		// renewals keep a margin on a loaded 2-core machine (with 2 s, attempt 2 once lost
		// its lease and attempt 3 completed).
		5*time.Second, 1, fakevddk.Standard)
	// 2 disks × 24 MiB of data in 2 MiB reads, 4 connections each, 3 s a read: ~9 s, long
	// enough for a cancel to reach the agent with its next heartbeat (every TTL/3).
	e.fake.Cfg.ReadDelay = 3 * time.Second
	e.fake.Write()
	waitReading := func(id string) proto.Job {
		j := waitCopying(t, e.migrationEnv, id)
		harness.WaitFor(t, 30*time.Second, "VDDK reads", func() bool { return e.fake.ReadStats().BytesRead("") > 0 })
		return j
	}

	t.Run("cancel", func(t *testing.T) {
		id := harness.Submit(t, e.ctl, e.job(0, "", proto.Options{ConversionMethod: "vddk"}))
		waitReading(id)
		readers := e.readers()
		if len(readers) == 0 {
			t.Fatal("no reader process while reading")
		}
		// The password reaches a reader over its socket only: not in its argv or environment.
		for _, r := range readers {
			pid, _, _ := strings.Cut(r, ":")
			for _, f := range []string{"cmdline", "environ"} {
				if b, err := os.ReadFile("/proc/" + pid + "/" + f); err == nil && bytes.Contains(b, []byte(e2ePassword)) {
					t.Errorf("reader %s has the password in its %s", pid, f)
				}
			}
		}
		e.cancelAndCheck(t, id, 0) // toolChildren includes the agent's readers
		e.waitNoReaders()
	})

	t.Run("SIGKILL of the agent", func(t *testing.T) {
		id := harness.Submit(t, e.ctl, e.job(1, "", proto.Options{ConversionMethod: "vddk"}))
		if j := waitReading(id); j.Attempt != 1 {
			t.Fatalf("attempt %d reading, want 1", j.Attempt)
		}
		e.agent.Kill()
		// The readers die with the agent (parent-death signal): nothing reads for a dead job.
		e.waitNoReaders()
		e.fake.Cfg.ReadDelay = 0
		e.fake.Write()
		e.agent.Restart(t)
		e.checkCompletedOnce(t, harness.WaitTerminal(t, e.ctl, id, 2*time.Minute), 1, 2)
	})

	t.Run("VDDK crashes", func(t *testing.T) {
		pid := e.agent.Pid()
		e.fake.Cfg.CrashAfterBytes, e.fake.Cfg.CrashOnce = 6<<20, filepath.Join(t.TempDir(), "crashed")
		e.fake.Write()
		id := harness.Submit(t, e.ctl, e.job(2, "", proto.Options{ConversionMethod: "vddk"}))
		e.checkCompletedOnce(t, harness.WaitTerminal(t, e.ctl, id, 2*time.Minute), 2, 2)
		if _, err := os.Stat(e.fake.Cfg.CrashOnce); err != nil {
			t.Fatalf("the fake never crashed: %v", err)
		}
		if e.agent.Pid() != pid || e.agent.Exited() {
			t.Error("the agent did not survive the crash of its reader")
		}
		b, _ := os.ReadFile(e.agent.LogPath)
		if !bytes.Contains(b, []byte("signal: aborted")) {
			t.Error("the agent's log does not record the reader's crash")
		}
	})
}
