package test

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// memberState is the state GET /cluster on c gives member id ("" when absent or no answer).
func memberState(c *harness.Controller, id string) (state string, h *proto.ClusterNodeHealth) {
	var cl proto.ClusterStatus
	if harness.GetJSON(c.URL()+"/cluster", &cl) != http.StatusOK {
		return "", nil
	}
	for _, n := range cl.Nodes {
		if n.ID == id {
			return n.State, n.Health
		}
	}
	return "", nil
}

func runHyperctl(t *testing.T, server string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(harness.Bin(t, "hyperctl"), append([]string{"--server", server}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("hyperctl: %v", err)
	}
	return string(out), code
}

// TestSIGKILLedControllerShownUnreachable: three controller processes; a SIGKILLed one is
// shown unreachable by `hyperctl cluster status` (through the leader and through the
// surviving follower), with its last contact, within seconds, and the leader's metrics
// count it; the same when the leader is the one killed (the new leader reports the old).
// Restarted on its data dir it reads 503 until caught up, never "No jobs.", and is shown
// reachable again (issue 17: a killed controller was listed as "follower" forever, and a
// restarted one served an empty cluster).
func TestSIGKILLedControllerShownUnreachable(t *testing.T) {
	dir := t.TempDir()
	cs := harness.StartControllers(t, dir, 3, "--fast-raft")
	for i := 0; i < 200; i++ {
		if code, err := harness.PostJSON(cs[i%3].URL()+"/jobs/submit", harness.JobBody(fmt.Sprintf("DC0/vm/h-%d", i)), nil); err != nil || code != http.StatusCreated {
			t.Fatalf("submit %d: %d %v", i, code, err)
		}
	}
	for _, killLeader := range []bool{false, true} {
		leader := harness.LeaderOf(cs)
		if leader == nil {
			t.Fatal("no leader")
		}
		var victim *harness.Controller
		for _, c := range cs {
			if (c == leader) == killLeader && victim == nil {
				victim = c
			}
		}
		victim.Signal(syscall.SIGKILL)
		killed := time.Now()
		victim.Wait(5 * time.Second)
		var survivors []*harness.Controller
		for _, c := range cs {
			if c != victim {
				survivors = append(survivors, c)
			}
		}
		for _, c := range survivors {
			harness.WaitFor(t, 20*time.Second, victim.ID+" shown unreachable on "+c.ID, func() bool {
				st, h := memberState(c, victim.ID)
				return st == proto.ClusterStateUnreachable && h != nil && !h.Reachable && h.LastContact != nil
			})
		}
		t.Logf("killed %s (leader: %v): unreachable on both survivors %.1f s later", victim.ID, killLeader, time.Since(killed).Seconds())
		for _, c := range survivors {
			out, code := runHyperctl(t, c.URL(), "cluster", "status")
			if code != 0 || !strings.Contains(out, "REACHABLE") || !strings.Contains(out, "LAST CONTACT") {
				t.Fatalf("hyperctl cluster status via %s: exit %d\n%s", c.ID, code, out)
			}
			var line string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, victim.ID+" ") {
					line = l
				}
			}
			if !strings.Contains(line, "unreachable") || !strings.Contains(line, " no ") || !strings.Contains(line, " ago") {
				t.Fatalf("hyperctl cluster status via %s does not show %s unreachable with its last contact:\n%s", c.ID, victim.ID, out)
			}
		}
		newLeader := harness.LeaderOf(survivors)
		resp, err := harness.Client.Get(newLeader.URL() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), `hypersdk_raft_peers{state="unreachable"} 1`) {
			t.Fatalf("leader metrics do not count the unreachable member")
		}

		// Restarted on its data dir: reads answer 503 (exit 3) until it is caught up, then
		// every job; never "No jobs.".
		victim.Restart(t)
		harness.WaitFor(t, 30*time.Second, victim.ID+" serves reads again", func() bool {
			out, code := runHyperctl(t, "http://"+victim.APIAddr, "jobs", "list", "--limit", "1", "-o", "json")
			switch code {
			case 0:
				if !strings.Contains(out, `"total": 200`) {
					t.Fatalf("restarted %s listed: %s", victim.ID, out)
				}
				return true
			case 3:
				if !strings.Contains(out, "catching up") && !strings.Contains(out, "cannot reach") {
					t.Fatalf("restarted %s refused a read without saying why: %s", victim.ID, out)
				}
				return false
			}
			t.Fatalf("restarted %s: jobs list exit %d: %s", victim.ID, code, out)
			return false
		})
		harness.WaitFor(t, 20*time.Second, victim.ID+" reachable again", func() bool {
			st, h := memberState(harness.LeaderOf(cs), victim.ID)
			return st != proto.ClusterStateUnreachable && h != nil && h.Reachable
		})
	}
}
