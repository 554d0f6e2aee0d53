package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// The partition tests run controllers and agents in network namespaces the test creates
// (harness.Net): a bridge in a hub namespace, 10.201.0.0/24, nothing attached to the host.
// The test reaches every member through the hub, so it sees both sides of a split.

func plain(cs []*harness.NetController) []*harness.Controller {
	out := make([]*harness.Controller, len(cs))
	for i, c := range cs {
		out[i] = c.Controller
	}
	return out
}

func netOf(cs []*harness.NetController, c *harness.Controller) *harness.NetController {
	for _, n := range cs {
		if n.Controller == c {
			return n
		}
	}
	return nil
}

// clusterView reads GET /cluster of one controller (ok false when it does not answer).
func clusterView(c *harness.Controller) (harness.ClusterView, bool) {
	var cl harness.ClusterView
	return cl, harness.GetJSON(c.URL()+"/cluster", &cl) == http.StatusOK
}

// TestPartitionLeader: the leader is cut off from the other two controllers. Writes sent
// to it never answer 201 (and none of them is stored after the split heals); the majority
// elects a leader and keeps accepting writes; after healing, the old leader follows the
// new one and holds every acknowledged job.
func TestPartitionLeader(t *testing.T) {
	n := harness.NewNet(t)
	dir := t.TempDir()
	ms := []*harness.Member{n.Add("c1", 11), n.Add("c2", 12), n.Add("c3", 13)}
	conf := controllerConfig(t, dir, fleetConfig{LeaseTTL: 5 * time.Second})
	ncs := harness.StartNetControllers(t, dir, ms, "--config", conf, "--fast-raft")
	cs := plain(ncs)
	run := fmt.Sprintf("split-%x", time.Now().UnixNano()&0xffffff)
	sub := newSubmitter(urlsOf(cs))
	for k := 0; k < 20; k++ {
		if !sub.submit(idJob(run+"-before", int64(k)), 20*time.Second) {
			t.Fatal("submit on the healthy cluster failed")
		}
	}
	old := harness.LeaderOf(cs)
	if old == nil {
		t.Fatal("no leader")
	}
	var majority []*harness.Controller
	for _, c := range cs {
		if c != old {
			majority = append(majority, c)
		}
	}
	window := 10 * time.Second
	if longRun() {
		window = 45 * time.Second
	}

	n.Isolate(netOf(ncs, old).Member)
	cut := time.Now()

	// The minority side: the old leader, asked directly, for the whole window.
	var (
		mu            sync.Mutex
		minorityCodes = map[int]int{}
		minorityIDs   []string
		stepDown      time.Duration
		wg            sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := int64(0); time.Since(cut) < window; k++ {
			def := idJob(run+"-minority", k)
			code, _ := sub.post(old.URL()+"/jobs/submit", mustJSON(def))
			mu.Lock()
			minorityCodes[code]++
			minorityIDs = append(minorityIDs, def.ID)
			mu.Unlock()
			time.Sleep(100 * time.Millisecond) // client pacing
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Since(cut) < window {
			if cl, ok := clusterView(old); ok && cl.Leader.ID != old.ID {
				mu.Lock()
				stepDown = time.Since(cut)
				mu.Unlock()
				return
			}
			time.Sleep(20 * time.Millisecond) // polling pacing
		}
	}()

	// The majority side elects a leader and takes writes.
	var newLeader string
	harness.WaitFor(t, 20*time.Second, "the majority elects a leader", func() bool {
		for _, c := range majority {
			if cl, ok := clusterView(c); ok && cl.Leader.ID != "" && cl.Leader.ID != old.ID {
				newLeader = cl.Leader.ID
				return true
			}
		}
		return false
	})
	elected := time.Since(cut)
	majoritySub := newSubmitter(urlsOf(majority))
	majorityAcked := 0
	for k := int64(0); time.Since(cut) < window; k++ {
		if majoritySub.submit(idJob(run+"-majority", k), 10*time.Second) {
			majorityAcked++
		}
	}
	wg.Wait()

	n.HealAll()
	healed := time.Now()
	acked := append(sub.ackedIDs(), majoritySub.ackedIDs()...)
	conv := waitConverged(t, cs, acked, time.Minute, false)
	converged := time.Since(healed)
	var leaders []string
	for _, c := range cs {
		cl, _ := clusterView(c)
		leaders = append(leaders, c.ID+"→"+cl.Leader.ID)
	}
	var stored []string
	for _, id := range minorityIDs {
		if _, ok := conv.byID[id]; ok {
			stored = append(stored, id)
		}
	}

	codes := []string{}
	for code, k := range minorityCodes {
		codes = append(codes, fmt.Sprintf("%d×%d", k, code))
	}
	t.Log(table(fmt.Sprintf("leader partition (%s window, 3 controllers in network namespaces)", window), [][2]string{
		{"isolated", old.ID},
		{"minority answers (count×status, 0 = timeout)", strings.Join(codes, " ")},
		{"minority writes stored after healing", fmt.Sprint(len(stored))},
		{"old leader saw it was no longer leader after", stepDown.Round(10 * time.Millisecond).String()},
		{"majority elected " + newLeader + " after", elected.Round(10 * time.Millisecond).String()},
		{"majority writes acknowledged", fmt.Sprint(majorityAcked)},
		{"converged after healing", converged.Round(10 * time.Millisecond).String()},
		{"leaders after healing", strings.Join(leaders, " ")},
		{"lost / duplicated / disagreeing", fmt.Sprintf("%d / %d / %d", len(conv.lost), len(conv.duplicated), len(conv.disagree))},
	}))
	if minorityCodes[http.StatusCreated] > 0 {
		t.Errorf("the isolated old leader answered 201 to %d writes", minorityCodes[http.StatusCreated])
	}
	if len(stored) > 0 {
		t.Errorf("writes refused by the minority are stored after healing: %v", stored)
	}
	if majorityAcked == 0 {
		t.Error("the majority accepted no write")
	}
	if len(conv.lost)+len(conv.duplicated)+len(conv.disagree) > 0 {
		t.Errorf("after healing: lost %v, duplicated %v, disagreeing %v", conv.lost, conv.duplicated, listSome(conv.disagree, 10))
	}
	for _, l := range leaders {
		if !strings.HasSuffix(l, "→"+newLeader) {
			t.Errorf("after healing the nodes name different leaders: %v (want %s)", leaders, newLeader)
			break
		}
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// TestPartitionAgent: the agent copying a disk is cut off from the controllers and the
// other agent late in its copy (it still reaches the source, which then speeds up), so its
// copy finishes while it is cut off. Its attempt reaches the commit point and cannot
// commit (no controller answers); its fence stops it before its lease can expire; it
// deletes its disks and never defines the domain. The job is leased again and completes on
// the other agent, byte-identical, committed once, by that attempt; the two attempts never
// overlap; after healing, a commit and reports with the old lease are refused (409) and
// the cut-off agent serves new jobs.
func TestPartitionAgent(t *testing.T) {
	harness.RequireLibvirt(t)
	n := harness.NewNet(t)
	dir := t.TempDir()
	ms := []*harness.Member{n.Add("c1", 11), n.Add("c2", 12), n.Add("c3", 13)}
	am := []*harness.Member{n.Add("a1", 21), n.Add("a2", 22)}
	sim := startSim(t, vcsim.Config{VMs: 2, DisksPerVM: 1, DiskSize: 64 << 20, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}})
	src := n.Expose(sim.URL.Host)
	src.SetRate(3 << 20) // 64 MiB take ~21 s: the agent is cut, and fenced, mid-copy
	const ttl = 10 * time.Second
	conf := controllerConfig(t, dir, fleetConfig{LeaseTTL: ttl})
	ncs := harness.StartNetControllers(t, dir, ms, "--config", conf, "--fast-raft")
	cs := plain(ncs)
	logs := map[string]string{}
	agents := map[string]*harness.Member{}
	procs := map[string]*harness.Agent{}
	for i, m := range am {
		name := fmt.Sprintf("agent-%d", i+1)
		logs[name] = filepath.Join(dir, name+".attempts.jsonl")
		agents[name] = m
		procs[name] = harness.StartNetAgent(t, dir, name, m, ncs, "--max-jobs", "1", "--attempt-log", logs[name])
	}
	cleanupSimDomains(t, sim)

	id := fmt.Sprintf("cutoff-%x", time.Now().UnixNano()&0xffffff)
	harness.Submit(t, cs[0], simJob(sim, id, 0, src.Addr, 3))
	// Late in the copy: what is left takes well under a second once the source speeds up,
	// far less than the 80% of the TTL the agent has before its fence.
	first := harness.WaitJob(t, cs[0], id, time.Minute, "copying, half done", func(j proto.Job) bool {
		return j.Status == proto.StatusRunning && j.Progress.Stage == proto.StageConversion && j.Progress.PercentComplete >= 50
	})
	victim := first.Agent
	n.Isolate(agents[victim])
	cut := time.Now()
	src.SetRate(0)

	second := harness.WaitJob(t, cs[0], id, 2*ttl+30*time.Second, "leased again", func(j proto.Job) bool {
		return j.Attempt >= 2 && j.Status == proto.StatusRunning
	})
	releasedAfter := time.Since(cut)
	final := harness.WaitTerminal(t, cs[0], id, 2*time.Minute)

	// The cut-off agent records the end of its attempt (it stopped by itself).
	var fenced attempt
	harness.WaitFor(t, 2*ttl, victim+" stopped its attempt", func() bool {
		for _, a := range readAttempts(t, map[string]string{victim: logs[victim]}) {
			if a.job == id && a.attempt == first.Attempt && !a.end.IsZero() {
				fenced = a
				return true
			}
		}
		return false
	})
	ov := overlaps(readAttempts(t, logs), func(string, time.Time) time.Time { return time.Time{} })
	victimDefined, victimCommitted := logLines(t, procs[victim].LogPath, id, "domain defined"), logLines(t, procs[victim].LogPath, id, "attempt committed")

	n.HealAll()
	// Reports with the old lease, as the cut-off agent would send them late.
	oldTok := proto.LeaseToken{JobID: id, Attempt: first.Attempt}
	progressCode, _ := harness.PostJSON(cs[0].URL()+"/agent/v1/progress", proto.ProgressRequest{LeaseToken: oldTok, Agent: victim,
		Progress: proto.Progress{Stage: proto.StageConversion, PercentComplete: 99}}, nil)
	completeCode, _ := harness.PostJSON(cs[1].URL()+"/agent/v1/complete", proto.CompleteRequest{LeaseToken: oldTok, Agent: victim,
		Result: &proto.JobResult{DomainName: "forged"}}, nil)
	commitCode, _ := harness.PostJSON(cs[2].URL()+"/agent/v1/commit", proto.CommitRequest{LeaseToken: oldTok, Agent: victim,
		Domain: sim.VMs[0].Name}, nil)
	after, _ := harness.Job(cs[0], id)

	// The cut-off agent takes new work once healed.
	next := simJob(sim, id+"-next", 1, src.Addr, 1)
	next.Options.TargetAgent = victim
	harness.Submit(t, cs[0], next)
	nextJob := harness.WaitTerminal(t, cs[0], next.ID, 2*time.Minute)

	t.Log(table(fmt.Sprintf("agent cut off mid-copy (lease TTL %s, 2 agents and 3 controllers in network namespaces)", ttl), [][2]string{
		{"cut off", fmt.Sprintf("%s during attempt %d", victim, first.Attempt)},
		{"its attempt ended", fmt.Sprintf("%s after the cut (%s)", fenced.end.Sub(cut).Round(10*time.Millisecond), fenced.outcome)},
		{"its commit point", orNone(fenced.commit)},
		{"its log: domain defined / attempt committed", fmt.Sprintf("%d / %d", victimDefined, victimCommitted)},
		{"the job's commit", commitText(final.Commit)},
		{"job leased again after", fmt.Sprintf("%s (attempt %d on %s)", releasedAfter.Round(10*time.Millisecond), second.Attempt, second.Agent)},
		{"overlapping attempts", fmt.Sprint(len(ov))},
		{"final", fmt.Sprintf("%s at attempt %d on %s", final.Status, final.Attempt, final.Agent)},
		{"late progress / complete / commit with the old lease", fmt.Sprintf("%d / %d / %d", progressCode, completeCode, commitCode)},
		{"next job on the healed agent", fmt.Sprintf("%s on %s", nextJob.Status, nextJob.Agent)},
	}))
	if second.Agent == victim {
		t.Errorf("attempt %d went to the cut-off agent %s", second.Attempt, victim)
	}
	if fenced.outcome != "fenced" && fenced.outcome != "lease_lost" {
		t.Errorf("the cut-off agent's attempt ended %q, want fenced", fenced.outcome)
	}
	if len(ov) > 0 {
		t.Errorf("attempts overlapped:\n  %s", strings.Join(ov, "\n  "))
	}
	if final.Status != proto.StatusCompleted || final.Agent == victim {
		t.Errorf("job ended %s on %s (%q), want completed on the other agent", final.Status, final.Agent, errText(final))
	} else if err := sameDisk(sim.VMs[0].Disks[0].FlatPath, final.Result.Disks[0], "qcow2"); err != nil {
		t.Error(err)
	}
	if progressCode != http.StatusConflict || completeCode != http.StatusConflict || commitCode != http.StatusConflict {
		t.Errorf("late reports with the old lease answered %d, %d and %d (commit), want 409", progressCode, completeCode, commitCode)
	}
	// The commit point: the cut-off attempt got there (its copy finished), could not
	// commit, and defined nothing; the job was committed once, by the attempt that finished.
	if fenced.commit != "abandoned" {
		t.Errorf("the cut-off attempt's commit point: %q, want abandoned (reached after its copy, no controller answered)", orNone(fenced.commit))
	}
	if victimDefined+victimCommitted > 0 {
		t.Errorf("the cut-off agent's log shows %d domain definitions and %d commits for job %s", victimDefined, victimCommitted, id)
	}
	if c := final.Commit; c == nil || c.Attempt != final.Attempt || c.Agent != final.Agent || c.Agent == victim {
		t.Errorf("the job's commit is %s, want attempt %d on %s", commitText(c), final.Attempt, final.Agent)
	}
	if after.Status != final.Status || after.Agent != final.Agent || (after.Result != nil && after.Result.DomainName == "forged") {
		t.Errorf("a late report changed the job: %+v", after)
	}
	if nextJob.Status != proto.StatusCompleted || nextJob.Agent != victim {
		t.Errorf("next job on the healed agent: %s on %s (%q)", nextJob.Status, nextJob.Agent, errText(nextJob))
	}
	if left := entries(t, filepath.Join(dir, victim+"-storage", id)); len(left) > 0 {
		t.Errorf("the cut-off agent left the files of its stopped attempt: %v", left)
	}
}

// logLines counts the lines of a process log that mention job and msg.
func logLines(t *testing.T, path, job, msg string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, msg) && strings.Contains(l, "job="+job+" ") {
			n++
		}
	}
	return n
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func commitText(c *proto.JobCommit) string {
	if c == nil {
		return "(none)"
	}
	return fmt.Sprintf("attempt %d on %s (domain %s)", c.Attempt, c.Agent, c.Domain)
}
