package test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// chaosParams size a chaos run: the short one runs in make test, the long one in make chaos.
type chaosParams struct {
	jobs      int           // migrations of real disks; one VM per job, so no two compete for a domain name
	quickJobs int           // jobs whose source is unreachable: each is leased, fails at once, and ends "failed"
	clients   int           // concurrent submitting clients
	duration  time.Duration // how long jobs are submitted and controllers killed
	killEvery time.Duration // mean time between controller kills
	downFor   time.Duration // how long a killed controller stays down
	// agentKillEvery, when set, also SIGKILLs and restarts a random agent this often.
	agentKillEvery time.Duration
}

func chaosParamsFor() chaosParams {
	if longRun() {
		return chaosParams{jobs: 150, quickJobs: 3000, clients: 6, duration: 3 * time.Minute, killEvery: 4 * time.Second,
			downFor: 1500 * time.Millisecond, agentKillEvery: 20 * time.Second}
	}
	return chaosParams{jobs: 40, quickJobs: 200, clients: 4, duration: 30 * time.Second, killEvery: 3 * time.Second, downFor: time.Second}
}

// TestChaos: three controllers, two real agents migrating real (small) disks from the
// simulator, several clients submitting through random controllers (migrations, and many
// more jobs whose source is unreachable, which agents lease and fail at once: they keep
// the lease path busy), while a random controller (the leader every other time) is
// SIGKILLed and restarted every few seconds (and, in the long run, a random agent too). Afterwards: every acknowledged job is stored exactly once on every node,
// the nodes agree on every job, every job ended (completed with a byte-identical disk, or
// failed with a reason), no attempt of a job ran while another attempt of it ran, and no
// client ever saw a 5xx other than 503.
func TestChaos(t *testing.T) { runChaos(t, false) }

// TestChaosTLS is TestChaos over TLS, as the HA guide configures a cluster: https API, and
// raft, forwarding and joins over mutual TLS with the cluster CA; agents reach the
// controllers over https.
func TestChaosTLS(t *testing.T) { runChaos(t, true) }

func runChaos(t *testing.T, tls bool) {
	p := chaosParamsFor()
	f := startFleet(t, fleetConfig{Controllers: 3, Agents: 2, MaxJobs: 3, LeaseTTL: 5 * time.Second,
		SnapshotThreshold: 64, TrailingLogs: 64, TLS: tls,
		Sim: vcsim.Config{VMs: p.jobs, DisksPerVM: 1, DiskSize: 4 << 20, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}})

	run := fmt.Sprintf("chaos-%x", time.Now().UnixNano()&0xffffff)
	// Migrations are spread evenly among the quick jobs.
	var defs []proto.JobDefinition
	migrations := map[string]bool{}
	for i, k := 0, 0; i < p.jobs || k < p.quickJobs; {
		if i < p.jobs && (k >= p.quickJobs || i*p.quickJobs <= k*p.jobs) {
			d := f.jobDef(fmt.Sprintf("%s-vm-%03d", run, i), i, "", 5)
			migrations[d.ID] = true
			defs = append(defs, d)
			i++
			continue
		}
		d := f.jobDef(fmt.Sprintf("%s-quick-%04d", run, k), 0, "127.0.0.1:1", 1)
		d.VMPath = fmt.Sprintf("/DC0/vm/quick-%04d", k)
		defs = append(defs, d)
		k++
	}
	sub := newSubmitter(urlsOf(f.cs))

	// Clients spread the submits evenly over the chaos period.
	start := time.Now()
	var next atomic.Int64
	var clients sync.WaitGroup
	for c := 0; c < p.clients; c++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(defs) {
					return
				}
				time.Sleep(time.Until(start.Add(p.duration * time.Duration(i) / time.Duration(len(defs))))) // pacing
				sub.submit(defs[i], time.Minute)
			}
		}()
	}
	clientsDone := make(chan struct{})
	go func() { clients.Wait(); close(clientsDone) }()

	// The nemesis runs on the test goroutine (it may fail the test).
	kills, agentKills := 0, 0
	agentDeaths := map[string][]time.Time{}
	nextAgentKill := start.Add(p.agentKillEvery)
	for time.Since(start) < p.duration {
		time.Sleep(p.killEvery/2 + rand.N(p.killEvery)) // nemesis pacing
		if p.agentKillEvery > 0 && time.Now().After(nextAgentKill) {
			a := f.agents[rand.IntN(len(f.agents))]
			a.Kill()
			agentDeaths[a.Name] = append(agentDeaths[a.Name], time.Now())
			agentKills++
			time.Sleep(p.downFor)
			a.Restart(t)
			nextAgentKill = time.Now().Add(p.agentKillEvery)
		}
		victim := f.cs[rand.IntN(len(f.cs))]
		if kills%2 == 0 {
			if l := harness.LeaderOf(f.cs); l != nil {
				victim = l
			}
		}
		victim.Signal(syscall.SIGKILL)
		if !victim.Wait(10 * time.Second) {
			t.Fatalf("%s survived SIGKILL", victim.ID)
		}
		kills++
		time.Sleep(p.downFor) // stays down a while
		victim.Restart(t)
		// The next kill waits for this node to rejoin: the test is about losing one node
		// at a time, which a three-node cluster must survive.
		harness.WaitFor(t, 30*time.Second, victim.ID+" rejoined", func() bool {
			var cl harness.ClusterView
			return harness.GetJSON(victim.URL()+"/cluster", &cl) == 200 && cl.Leader.ID != "" && cl.AppliedIndex > 0
		})
	}
	chaosEnd := time.Now()
	select {
	case <-clientsDone:
	case <-time.After(2 * time.Minute):
		t.Fatal("clients still submitting 2 minutes after the chaos ended")
	}

	acked := sub.ackedIDs()
	conv := waitConverged(t, f.cs, acked, 4*time.Minute, true)
	settled := time.Since(chaosEnd)

	atts := readAttempts(t, f.attemptLogs)
	ov := overlaps(atts, func(agent string, after time.Time) time.Time {
		for _, d := range agentDeaths[agent] {
			if d.After(after) {
				return d
			}
		}
		return time.Time{}
	})
	badDisks := f.checkDisks(conv.byID)
	var completed, failed, quickFailed, retried, lateReports int
	var noReason, notTerminal []string
	final := map[string]proto.Job{}
	for _, id := range acked {
		j := conv.byID[id]
		final[id] = j
		switch {
		case j.Status == proto.StatusCompleted && migrations[id]:
			completed++
		case j.Status == proto.StatusFailed:
			if migrations[id] {
				failed++
			} else {
				quickFailed++
			}
			if j.Error == nil || strings.TrimSpace(*j.Error) == "" {
				noReason = append(noReason, id)
			}
		default:
			notTerminal = append(notTerminal, fmt.Sprintf("%s: %s attempt %d agent %q", id, j.Status, j.Attempt, j.Agent))
		}
		if j.Attempt > 1 {
			retried++
		}
	}
	for _, a := range atts {
		if j, ok := final[a.job]; ok && a.outcome == "completed" && (a.attempt != j.Attempt || a.agent != j.Agent) {
			lateReports++ // the attempt finished, but its report came after the lease had moved on
		}
	}
	transport := "plain"
	if tls {
		transport = "TLS"
	}
	t.Log(table(fmt.Sprintf("chaos (%s, %d migrations + %d unreachable-source jobs, %d clients, 3 controllers, 2 agents, %s)",
		p.duration, p.jobs, p.quickJobs, p.clients, transport), [][2]string{
		{"acknowledged", fmt.Sprint(len(acked))},
		{"lost", fmt.Sprint(len(conv.lost))},
		{"duplicated", fmt.Sprint(len(conv.duplicated))},
		{"nodes disagreeing", fmt.Sprint(len(conv.disagree))},
		{"overlaps", fmt.Sprint(len(ov))},
		{"controller kills", fmt.Sprint(kills)},
		{"agent kills", fmt.Sprint(agentKills)},
		{"migrations completed", fmt.Sprint(completed)},
		{"migrations failed", fmt.Sprint(failed)},
		{"unreachable-source jobs failed", fmt.Sprint(quickFailed)},
		{"failed without a reason", fmt.Sprint(len(noReason))},
		{"not ended", fmt.Sprint(len(notTerminal))},
		{"jobs run more than once", fmt.Sprint(retried)},
		{"attempts recorded", fmt.Sprint(len(atts))},
		{"finished attempts refused", fmt.Sprint(lateReports)},
		{"wrong disks", fmt.Sprint(len(badDisks))},
		{"client retries", fmt.Sprint(sub.retries)},
		{"503 answers", fmt.Sprint(sub.unavailable)},
		{"transport errors", fmt.Sprint(sub.transportErrs)},
		{"409 on retry (stored before)", fmt.Sprint(sub.ackedOnRetry)},
		{"unexpected answers", fmt.Sprint(len(sub.unexpected))},
		{"settled after chaos", settled.Round(100 * time.Millisecond).String()},
	}))

	if len(sub.gaveUp) > 0 {
		t.Errorf("%d jobs were never acknowledged within a minute of retries:\n  %s", len(sub.gaveUp), listSome(sub.gaveUp, 10))
	}
	if len(sub.unexpected) > 0 {
		t.Errorf("clients saw answers other than 201, 503 and 409-on-retry:\n  %s", listSome(sub.unexpected, 10))
	}
	if len(conv.lost) > 0 {
		t.Errorf("acknowledged jobs missing:\n  %s", listSome(conv.lost, 10))
	}
	if len(conv.duplicated) > 0 {
		t.Errorf("jobs stored twice:\n  %s", listSome(conv.duplicated, 10))
	}
	if len(conv.disagree) > 0 {
		t.Errorf("nodes disagree:\n  %s", listSome(conv.disagree, 10))
	}
	if len(notTerminal) > 0 {
		t.Errorf("jobs that never ended:\n  %s", listSome(notTerminal, 10))
	}
	if len(noReason) > 0 {
		t.Errorf("failed jobs without a reason: %v", noReason)
	}
	if len(ov) > 0 {
		t.Errorf("attempts of one job ran at the same time:\n  %s", listSome(ov, 10))
	}
	if lateReports > 0 {
		t.Errorf("%d attempts finished their migration but their lease had moved on: their disks and domain stay behind", lateReports)
	}
	if len(badDisks) > 0 {
		t.Errorf("completed jobs with a wrong disk:\n  %s", listSome(badDisks, 10))
	}
	noPanics(t, f)
}

// noPanics fails the test if any controller or agent log shows a Go panic.
func noPanics(t *testing.T, f *fleet) {
	t.Helper()
	var procs []*harness.Proc
	for _, c := range f.cs {
		procs = append(procs, c.Proc)
	}
	for _, a := range f.agents {
		procs = append(procs, a.Proc)
	}
	for _, p := range procs {
		b, err := os.ReadFile(p.LogPath)
		if err != nil {
			continue
		}
		if i := strings.Index(string(b), "panic:"); i >= 0 {
			t.Errorf("%s panicked: %s", p.Name, string(b[i:min(len(b), i+2000)]))
		}
	}
}
