package test

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// The fleet tests of the agents issue, with real processes: controllers, two
// hypersdk-agent processes running the real pipeline, the simulator as vCenter behind a
// throttle (so transfers last long enough to break things in the middle).

type fleetEnv struct {
	t      *testing.T
	dir    string
	sim    *vcsim.Sim
	ctls   []*harness.Controller
	agents []*harness.Agent
	th     *harness.Throttle
}

func newFleetEnv(t *testing.T, controllers, vms int, ttl time.Duration) *fleetEnv {
	t.Helper()
	harness.RequireLibvirt(t)
	harness.Bin(t, "hypersdk-agent")
	e := &fleetEnv{t: t, dir: t.TempDir()}
	e.sim = harness.StartSim(t, vcsim.Config{VMs: vms, DisksPerVM: 1, DiskSize: 32 * mib,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}, Username: "admin", Password: e2ePassword,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	conf := filepath.Join(e.dir, "controller.yaml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("agents:\n  lease_ttl: %s\n", ttl)), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ctls = harness.StartControllers(t, e.dir, controllers, "--config", conf, "--fast-raft")
	// 1.5 MB/s per connection: a 16 MB transfer lasts ~10 s.
	e.th = harness.StartThrottle(t, e.sim.URL.Host, 1536<<10)
	return e
}

func (e *fleetEnv) addAgent(name string, maxJobs int) *harness.Agent {
	a := harness.StartAgent(e.t, e.dir, name, e.ctls, "--max-jobs", fmt.Sprint(maxJobs),
		"--attempt-log", filepath.Join(e.dir, name+".attempts.jsonl"))
	e.agents = append(e.agents, a)
	e.t.Cleanup(func() { a.Stop(10 * time.Second) })
	return a
}

func (e *fleetEnv) job(i int) proto.JobDefinition {
	harness.CleanupDomain(e.t, e.sim.VMs[i].Name)
	return proto.JobDefinition{VMPath: e.sim.VMs[i].Path,
		Source: proto.Source{Type: "vsphere", VCenterURL: "https://" + e.th.Addr + "/sdk", Username: "admin",
			Password: e2ePassword, Thumbprint: e.sim.Thumbprint},
		Destination: proto.Destination{Type: "kvm"}, Options: proto.Options{ConversionMethod: "https"}}
}

func (e *fleetEnv) agentInfo(c *harness.Controller, name string) proto.AgentInfo {
	var a proto.AgentInfo
	harness.GetJSON(c.URL()+"/agents/"+name, &a)
	return a
}

// TestFleetPlacementAndAgentDeath: two agents with one slot each take one job each (the
// third waits, saying why); SIGKILL of an agent holding a lease: GET /agents shows it dead
// within 10 s and its job is leased again (attempt 2) and completes on the other agent.
func TestFleetPlacementAndAgentDeath(t *testing.T) {
	e := newFleetEnv(t, 1, 3, 3*time.Second)
	a1, a2 := e.addAgent("kvm-a", 1), e.addAgent("kvm-b", 1)
	c := e.ctls[0]
	harness.WaitFor(t, 20*time.Second, "both agents alive in GET /agents", func() bool {
		var r proto.AgentsResponse
		return harness.GetJSON(c.URL()+"/agents", &r) == 200 && r.Total == 2 &&
			r.Agents[0].State == proto.AgentAlive && r.Agents[1].State == proto.AgentAlive &&
			r.Agents[0].Capacity.CPUs > 0 && r.Agents[0].Capabilities.QemuImg
	})
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, harness.Submit(t, c, e.job(i)))
	}
	harness.WaitFor(t, 30*time.Second, "one job on each agent", func() bool {
		on := map[string]int{}
		for _, id := range ids {
			if j, ok := harness.Job(c, id); ok && j.Status == proto.StatusRunning {
				on[j.Agent]++
			}
		}
		return on["kvm-a"] == 1 && on["kvm-b"] == 1
	})
	harness.WaitFor(t, 10*time.Second, "the waiting job says the agents are busy", func() bool {
		for _, id := range ids {
			if j, _ := harness.Job(c, id); j.Status == proto.StatusPending {
				return strings.Contains(j.PendingReason, "busy")
			}
		}
		return false
	})
	var victim proto.Job
	for _, id := range ids {
		if j, _ := harness.Job(c, id); j.Agent == "kvm-a" && j.Status == proto.StatusRunning {
			victim = j
		}
	}
	killed := time.Now()
	a1.Signal(syscall.SIGKILL)
	harness.WaitFor(t, 10*time.Second, "GET /agents shows kvm-a dead", func() bool {
		return e.agentInfo(c, "kvm-a").State == proto.AgentDead
	})
	t.Logf("kvm-a seen dead %s after SIGKILL", time.Since(killed).Round(100*time.Millisecond))
	e.th.SetRate(0)
	for _, id := range ids {
		j := harness.WaitTerminal(t, c, id, 2*time.Minute)
		if j.Status != proto.StatusCompleted {
			t.Fatalf("job %s: %s on %s (%q)", id, j.Status, j.Agent, errText(j))
		}
		if id == victim.Definition.ID && (j.Attempt != 2 || j.Agent != "kvm-b") {
			t.Fatalf("the killed agent's job ended at attempt %d on %s, want attempt 2 on kvm-b", j.Attempt, j.Agent)
		}
	}
	_ = a2
}

// TestFrozenAgentIsFenced: an agent frozen with SIGSTOP past its lease TTL loses the job
// to the other agent; resumed, it stops that work (fencing/409) and the job completes
// exactly once, by the other agent.
func TestFrozenAgentIsFenced(t *testing.T) {
	e := newFleetEnv(t, 1, 1, 2*time.Second)
	a1 := e.addAgent("frozen", 1)
	c := e.ctls[0]
	id := harness.Submit(t, c, e.job(0))
	harness.WaitJob(t, c, id, 30*time.Second, "running on frozen", func(j proto.Job) bool {
		return j.Status == proto.StatusRunning && j.Agent == "frozen" && j.Progress.Stage == proto.StageConversion
	})
	a1.Signal(syscall.SIGSTOP)
	e.addAgent("thawed-other", 1)
	harness.WaitJob(t, c, id, 30*time.Second, "attempt 2 on the other agent", func(j proto.Job) bool {
		return j.Attempt == 2 && j.Agent == "thawed-other"
	})
	a1.Signal(syscall.SIGCONT)
	e.th.SetRate(0)
	j := harness.WaitTerminal(t, c, id, 2*time.Minute)
	if j.Status != proto.StatusCompleted || j.Attempt != 2 || j.Agent != "thawed-other" {
		t.Fatalf("job ended %s attempt %d on %s (%q)", j.Status, j.Attempt, j.Agent, errText(j))
	}
	// The resumed agent recorded the end of attempt 1 without completing it.
	harness.WaitFor(t, 20*time.Second, "frozen agent ended attempt 1", func() bool {
		b, _ := os.ReadFile(filepath.Join(e.dir, "frozen.attempts.jsonl"))
		return strings.Contains(string(b), `"event":"end"`)
	})
	b, _ := os.ReadFile(filepath.Join(e.dir, "frozen.attempts.jsonl"))
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.Contains(line, `"event":"end"`) && strings.Contains(line, `"outcome":"completed"`) {
			t.Fatalf("the fenced agent completed its attempt: %s", line)
		}
	}
	out, _ := harness.Virsh("list", "--all", "--name")
	if n := strings.Count(out, e.sim.VMs[0].Name+"\n"); n != 1 {
		t.Fatalf("%d domains for the VM, want 1", n)
	}
}

// TestLeaderFailoverWhileMigrating: three controllers, two agents, jobs running; the
// leader is SIGKILLed mid-transfer: every job still ends exactly once, completed.
func TestLeaderFailoverWhileMigrating(t *testing.T) {
	e := newFleetEnv(t, 3, 2, 5*time.Second)
	e.addAgent("fa", 1)
	e.addAgent("fb", 1)
	var ids []string
	for i := 0; i < 2; i++ {
		ids = append(ids, harness.Submit(t, e.ctls[i], e.job(i)))
	}
	for _, id := range ids {
		harness.WaitJob(t, e.ctls[0], id, 30*time.Second, "copying", func(j proto.Job) bool {
			return j.Status == proto.StatusRunning && j.Progress.Stage == proto.StageConversion
		})
	}
	leader := harness.LeaderOf(e.ctls)
	leader.Signal(syscall.SIGKILL)
	var alive *harness.Controller
	for _, c := range e.ctls {
		if c != leader {
			alive = c
		}
	}
	e.th.SetRate(0)
	for _, id := range ids {
		j := harness.WaitTerminal(t, alive, id, 2*time.Minute)
		if j.Status != proto.StatusCompleted {
			t.Fatalf("job %s %s (%q)", id, j.Status, errText(j))
		}
	}
	// Exactly once: each agent's attempt log shows one completed attempt per job in total.
	completed := map[string]int{}
	for _, a := range e.agents {
		b, _ := os.ReadFile(filepath.Join(e.dir, a.Name+".attempts.jsonl"))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"outcome":"completed"`) {
				for _, id := range ids {
					if strings.Contains(line, id) {
						completed[id]++
					}
				}
			}
		}
	}
	for _, id := range ids {
		if completed[id] != 1 {
			t.Fatalf("job %s completed %d times across agents", id, completed[id])
		}
	}
}
