package worker_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
)

const joinToken = "join-token-0123456789abcdef"

// startJoinCluster is startCluster with a join token: agent identities are checked.
func startJoinCluster(t *testing.T, n int, token string) []*controller.Controller {
	return startClusterWith(t, n, func(cfg *controller.Config) {
		cfg.Agents.LeaseTTL = 6 * time.Second
		cfg.Agents.JoinToken = token
	})
}

func startTokenWorker(t *testing.T, name string, ctrl []string, credFile string, exec worker.Executor) {
	t.Helper()
	startWorkerWith(t, worker.Config{Name: name, Controllers: ctrl, Token: joinToken, CredentialFile: credFile, MaxJobs: 2}, exec)
}

func followers(cs []*controller.Controller) []*controller.Controller {
	var out []*controller.Controller
	for _, c := range cs {
		if !c.Node.IsLeader() {
			out = append(out, c)
		}
	}
	return out
}

func waitCompleted(t *testing.T, c *controller.Controller, id string) {
	t.Helper()
	controller.WaitFor(t, 30*time.Second, "job "+id+" completed", func() bool {
		j := job(c, id)
		return j != nil && j.Status == proto.StatusCompleted
	})
}

// Issue 18: followers dropped X-Hypersdk-Agent-Token when forwarding to the leader, so an
// agent whose controller was (or became) a follower got 401 every 5 s and took no work.
// Here the agent knows only followers, with a join token configured; then the leader dies
// and the agent's first controller is still a follower of the new leader.
func TestAgentWorksThroughFollowersAcrossLeaderChange(t *testing.T) {
	cs := startJoinCluster(t, 3, joinToken)
	leader := controller.Leader(cs)
	fs := followers(cs)
	exec := newExec(true)
	credFile := filepath.Join(t.TempDir(), "cred")
	startTokenWorker(t, "w-follow", urls(fs), credFile, exec)

	id := submit(t, fs[0].URL(), "DC0/vm/follow-1")
	waitCompleted(t, fs[0], id)
	if j := job(fs[0], id); j.Agent != "w-follow" {
		t.Fatalf("job ran on %q", j.Agent)
	}
	if fi, err := os.Stat(credFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file: %v %v", fi, err)
	}

	leader.Close()
	controller.WaitFor(t, 15*time.Second, "new leader", func() bool { return controller.Leader(fs) != nil })
	id2 := submit(t, controller.Leader(fs).URL(), "DC0/vm/follow-2")
	waitCompleted(t, fs[0], id2)
}

// Issue 18: on 401 the agent stayed with the controller that refused it. Its first
// controller here is one of another cluster (another join token): it must go on to the
// next one and work there.
func TestAgentMovesOnAfter401(t *testing.T) {
	other := startJoinCluster(t, 1, "another-join-token-0123456789")
	cs := startJoinCluster(t, 1, joinToken)
	exec := newExec(true)
	startTokenWorker(t, "w-401", []string{other[0].URL(), cs[0].URL()}, "", exec)
	id := submit(t, cs[0].URL(), "DC0/vm/moves-on")
	waitCompleted(t, cs[0], id)
}

// hyperctl agents rotate: the agent replaces its credential on its next call; the old one
// stops working, the new one is on disk, work goes on.
func TestAgentRotatesItsCredentialWhenAsked(t *testing.T) {
	cs := startJoinCluster(t, 1, joinToken)
	credFile := filepath.Join(t.TempDir(), "cred")
	exec := newExec(true)
	startTokenWorker(t, "w-rot", urls(cs), credFile, exec)
	waitCompleted(t, cs[0], submit(t, cs[0].URL(), "DC0/vm/rot-1"))
	old, err := os.ReadFile(credFile)
	if err != nil {
		t.Fatal(err)
	}
	var resp proto.ReportResponse
	if code, err := postJSONHeaders(cs[0].URL()+"/agents/w-rot/rotate", "", nil, &resp); err != nil || code != 200 {
		t.Fatalf("rotate: %d %v", code, err)
	}
	controller.WaitFor(t, 30*time.Second, "credential rotated", func() bool {
		b, err := os.ReadFile(credFile)
		return err == nil && string(b) != string(old)
	})
	code, _ := postJSONHeaders(cs[0].URL()+"/agent/v1/heartbeat", `{"agent":"w-rot","leases":[]}`,
		map[string]string{proto.AgentCredentialHeader: string(old[:len(old)-1])}, nil)
	if code != 401 {
		t.Fatalf("the old credential after rotation: %d, want 401", code)
	}
	waitCompleted(t, cs[0], submit(t, cs[0].URL(), "DC0/vm/rot-2"))
}

func postJSONHeaders(url, body string, hdr map[string]string, out any) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode, nil
}
