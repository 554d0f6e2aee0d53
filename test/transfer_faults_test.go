package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// agentTransferConfig writes an agent config with short transfer retries and timeouts, so
// a broken source shows within seconds. The request timeout bounds one attempt at a 4 MiB
// range: it must leave room for the slowed-down copies below (1 MiB/s per connection).
func agentTransferConfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.yaml")
	conf := "transfer:\n  retries: 2\n  retry_delay: 1s\n  request_timeout: 8s\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestBrokenTransfers: disks are copied through a proxy that breaks a source connection in
// the middle of a range (reset, clean truncation), stalls it (shorter and longer than the
// per-request timeout), cuts the source off for good, or (long run) slows it to a trickle
// for good. The agent reads each disk over several connections, so a fault's offset counts
// the bytes of one connection (a 32 MiB disk gives each of 4 connections about 8 MiB): the
// broken range is read again on its own. Every job ends byte-identical to its source, or
// failed with an error that names the stage and the source; none completes with a wrong disk.
func TestBrokenTransfers(t *testing.T) {
	const diskSize = 32 << 20
	const midRange = 3 << 20 // into a connection's bytes: inside one of its 8 MiB ranges
	type breakMode int
	const (
		none    breakMode = iota
		sever             // once the copy runs, every connection to the source is reset
		trickle           // once the copy runs, the source sends 1 KB/s
	)
	cases := []struct {
		name   string
		faults []harness.Fault
		then   breakMode
		want   proto.JobStatus
	}{
		{name: "reset mid-range", faults: []harness.Fault{{Kind: harness.FaultReset, After: midRange}}, want: proto.StatusCompleted},
		{name: "truncated mid-range", faults: []harness.Fault{{Kind: harness.FaultTruncate, After: midRange}}, want: proto.StatusCompleted},
		{name: "reset three times", faults: []harness.Fault{{Kind: harness.FaultReset, After: 4 << 20},
			{Kind: harness.FaultReset, After: 4 << 20}, {Kind: harness.FaultReset, After: 4 << 20}}, want: proto.StatusCompleted},
		{name: "stall 2s", faults: []harness.Fault{{Kind: harness.FaultStall, After: midRange, Stall: 2 * time.Second}}, want: proto.StatusCompleted},
		{name: "stall past the request timeout", faults: []harness.Fault{{Kind: harness.FaultStallThenReset, After: midRange, Stall: 15 * time.Second}}, want: proto.StatusCompleted},
		{name: "source gone for good", then: sever, want: proto.StatusFailed},
	}
	if longRun() {
		cases = append(cases, struct {
			name   string
			faults []harness.Fault
			then   breakMode
			want   proto.JobStatus
		}{name: "trickle for good", then: trickle, want: proto.StatusFailed})
	}
	f := startFleet(t, fleetConfig{Controllers: 1, Agents: 1, MaxJobs: len(cases), LeaseTTL: 5 * time.Second,
		AgentArgs: []string{"--config", agentTransferConfig(t)},
		Sim:       vcsim.Config{VMs: len(cases), DisksPerVM: 1, DiskSize: diskSize, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}})
	ctl := f.cs[0]
	proxies := make([]*harness.FaultProxy, len(cases))
	ids := make([]string, len(cases))
	started := time.Now()
	for i, tc := range cases {
		proxies[i] = harness.StartLoopbackFaultProxy(t, f.sim.URL.Host)
		proxies[i].Inject(tc.faults...)
		maxAttempts := 2
		if tc.then != none {
			// Slow enough that the copy is still running when the source breaks for good
			// (per connection: the disk is read over 4).
			proxies[i].SetRate(1 << 20)
			maxAttempts = 1
		}
		ids[i] = harness.Submit(t, ctl, f.jobDef(fmt.Sprintf("broken-%d-%x", i, time.Now().UnixNano()&0xffffff), i, proxies[i].Addr, maxAttempts))
	}
	for i, tc := range cases {
		if tc.then == none {
			continue
		}
		harness.WaitJob(t, ctl, ids[i], time.Minute, "copying", func(j proto.Job) bool {
			return j.Progress.Stage == proto.StageConversion && j.Progress.CurrentBytes > 0 || j.Status.Terminal()
		})
		if tc.then == sever {
			proxies[i].Sever()
		} else {
			proxies[i].SetRate(1 << 10)
		}
	}
	var rows [][2]string
	for i, tc := range cases {
		j := harness.WaitTerminal(t, ctl, ids[i], 3*time.Minute)
		took := j.UpdatedAt.Sub(j.SubmittedAt).Round(100 * time.Millisecond)
		result := fmt.Sprintf("%s at attempt %d after %s, faults fired %v", j.Status, j.Attempt, took, proxies[i].Fired())
		if j.Status != tc.want {
			t.Errorf("%s: %s (error %q), want %s", tc.name, j.Status, errText(j), tc.want)
		}
		switch {
		case j.Status == proto.StatusCompleted:
			// The whole point: a completed job holds the source's exact bytes.
			if err := sameDisk(f.sim.VMs[i].Disks[0].FlatPath, j.Result.Disks[0], "qcow2"); err != nil {
				t.Errorf("%s: completed with a wrong disk: %v", tc.name, err)
				result += ", DISK DIFFERS"
			} else {
				result += ", byte-identical"
			}
		case j.Status == proto.StatusFailed:
			msg := errText(j)
			for _, w := range []string{"conversion", "source"} {
				if !strings.Contains(strings.ToLower(msg), w) {
					t.Errorf("%s: error %q does not mention %q", tc.name, msg, w)
				}
			}
			if got := entries(t, filepath.Join(f.agents[0].StorageDir, ids[i])); len(got) != 0 {
				t.Errorf("%s: the failed job left files: %v", tc.name, got)
			}
			result += fmt.Sprintf(": %q", msg)
		}
		if len(tc.faults) > 0 && proxies[i].Pending() == len(tc.faults) {
			t.Errorf("%s: no fault fired: the copy never reached the fault's offset", tc.name)
		}
		rows = append(rows, [2]string{tc.name, result})
	}
	t.Log(table(fmt.Sprintf("broken transfers (%d MiB disks, https through a fault proxy, %s in all)", diskSize>>20,
		time.Since(started).Round(100*time.Millisecond)), rows))
	noPanics(t, f)
}

// TestDiskFull: the agent's storage dir is a 64 MiB tmpfs and a VM's disk needs more: the
// job fails saying there is no space, the partial image is removed (the tmpfs is empty
// again), and the same agent then migrates a VM that fits.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs as the agent's storage dir")
	}
	harness.RequireLibvirt(t)
	f := startFleet(t, fleetConfig{Controllers: 1, LeaseTTL: 5 * time.Second,
		Sim: vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: 128 << 20, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.75}}})
	small := startSim(t, vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: 8 << 20, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}})

	storage := filepath.Join(f.dir, "agent-1-storage")
	if err := os.MkdirAll(storage, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", storage).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", storage).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", storage, err, out)
		}
	})
	// The 64 MiB tmpfs is far below the 1 GiB a real host needs to take work (issue 17's
	// health check); this test is about a disk that fills during a copy.
	agent := f.startAgent("agent-1", 2, "--min-free-storage-mb", "16")
	if agent.StorageDir != storage {
		t.Fatalf("agent storage %s, mounted %s", agent.StorageDir, storage)
	}

	big := harness.Submit(t, f.cs[0], f.jobDef(fmt.Sprintf("full-%x", time.Now().UnixNano()&0xffffff), 0, "", 1))
	j := harness.WaitTerminal(t, f.cs[0], big, 2*time.Minute)
	if j.Status != proto.StatusFailed || !strings.Contains(errText(j), "no space") {
		t.Fatalf("big job: %s %q, want failed with \"no space\"", j.Status, errText(j))
	}
	// The agent's own state (its enrolled credential) lives in the storage
	// dir too; only what a job wrote counts as garbage here.
	var left []string
	for _, name := range entries(t, storage) {
		if !strings.HasPrefix(name, ".agent-credential") {
			left = append(left, name)
		}
	}
	if len(left) != 0 {
		t.Errorf("the failed job left %v in the storage dir", left)
	}
	used := tmpfsUsed(t, storage)
	if used > 1<<20 {
		t.Errorf("%d bytes still used on the storage tmpfs after the failure", used)
	}

	ok := harness.Submit(t, f.cs[0], simJob(small, fmt.Sprintf("fits-%x", time.Now().UnixNano()&0xffffff), 0, "", 1))
	j2 := harness.WaitTerminal(t, f.cs[0], ok, 2*time.Minute)
	if j2.Status != proto.StatusCompleted {
		t.Fatalf("small job after the full disk: %s %q", j2.Status, errText(j2))
	}
	if err := sameDisk(small.VMs[0].Disks[0].FlatPath, j2.Result.Disks[0], "qcow2"); err != nil {
		t.Error(err)
	}
	t.Log(table("disk full (64 MiB tmpfs storage, 128 MiB disk with 96 MiB of data)", [][2]string{
		{"big job", fmt.Sprintf("%s: %q", j.Status, errText(j))},
		{"storage used after the failure", fmt.Sprintf("%d bytes", used)},
		{"next job on the same agent", fmt.Sprintf("%s at attempt %d", j2.Status, j2.Attempt)},
	}))
}

// tmpfsUsed returns the bytes in use on the filesystem holding dir.
func tmpfsUsed(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}
