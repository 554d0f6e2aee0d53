package controller_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
)

func getJSON(t *testing.T, url string, v any) (int, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil {
		_ = json.Unmarshal(b, v)
	}
	return resp.StatusCode, resp.Header
}

// TestReadYourWritesOnEveryNode: a 201 from any node means a GET of that job on the same
// node answers 200 at once (issue 17: a submit through a follower, then "job … not found").
// The follower that forwarded the write waits for its own state to apply it.
func TestReadYourWritesOnEveryNode(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	misses := 0
	for round := 0; round < 60; round++ {
		for _, c := range nodes {
			resp, err := http.Post(c.URL()+"/jobs/submit", "application/json", strings.NewReader(string(jobBody(fmt.Sprintf("DC0/vm/ryw-%d-%s", round, c.Node.ID())))))
			if err != nil {
				t.Fatal(err)
			}
			var out proto.SubmitResponse
			_ = json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("submit via %s: %d", c.Node.ID(), resp.StatusCode)
			}
			if resp.Header.Get("X-Hypersdk-Applied-Index") == "" {
				t.Fatalf("submit via %s: no applied index in the answer", c.Node.ID())
			}
			if code, _ := getJob(t, c.URL(), out.JobID); code != http.StatusOK {
				misses++
				t.Errorf("round %d: job %s submitted via %s, then GET on %s: %d", round, out.JobID, c.Node.ID(), c.Node.ID(), code)
			}
			// The query path too: the job is in the list at once.
			var q proto.QueryResponse
			b, _ := json.Marshal(proto.QueryRequest{JobIDs: []string{out.JobID}})
			qr, err := http.Post(c.URL()+"/jobs/query", "application/json", strings.NewReader(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			_ = json.NewDecoder(qr.Body).Decode(&q)
			qr.Body.Close()
			if qr.StatusCode != http.StatusOK || q.Total != 1 {
				t.Errorf("round %d: query of %s on %s: %d total %d", round, out.JobID, c.Node.ID(), qr.StatusCode, q.Total)
			}
		}
	}
	if misses > 0 {
		t.Fatalf("%d reads after a 201 on the same node missed the job", misses)
	}
}

// TestRestartedNodeNeverServesAnEmptyCluster: a controller restarted on its data dir
// answers reads 503 (with Retry-After) until it has caught up, never "no jobs" (issue 17:
// for about 11 s after a restart, `jobs list` said "No jobs."), says catching_up on
// /health meanwhile, and /cluster shows its log index and every member's API address
// from the first answer.
func TestRestartedNodeNeverServesAnEmptyCluster(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	leader := controller.Leader(nodes)
	victim := controller.Follower(nodes, leader)
	const jobs = 400
	for i := 0; i < jobs; i++ {
		code, out := post(t, nodes[i%3].URL()+"/jobs/submit", jobBody(fmt.Sprintf("DC0/vm/r-%d", i)))
		// A 503 retried (leadership lost mid-commit on this busy machine) whose first try
		// was stored answers 409 naming the job: stored once, which is what counts here.
		if code != http.StatusCreated && (code != http.StatusConflict || !strings.Contains(fmt.Sprint(out), "already has job")) {
			t.Fatalf("submit %d: %d %v", i, code, out)
		}
	}
	controller.WaitFor(t, 10*time.Second, "the victim has every job", func() bool { return victim.State.TotalJobs() == jobs })
	vcfg := victim.Config()
	dataDir, apiAddr, raftAddr := vcfg.DataDir(), victim.APIAddr(), victim.Node.RaftAddr()
	victim.Close()
	// More writes while it is down: it must not serve the older view either.
	for i := 0; i < 50; i++ {
		if code, out := post(t, leader.URL()+"/jobs/submit", jobBody(fmt.Sprintf("DC0/vm/while-down-%d", i))); code != http.StatusCreated {
			t.Fatalf("submit while down %d: %d %v", i, code, out)
		}
	}
	total := jobs + 50

	cfg := controller.TestConfig(t, "", dataDir)
	cfg.API.Addr, cfg.Cluster.RaftAddr = apiAddr, raftAddr
	restarted, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restarted.Close() })
	base := restarted.URL()

	// The first /cluster answer already names every member's API address and the log.
	var cl proto.ClusterStatus
	if code, _ := getJSON(t, base+"/cluster", &cl); code != http.StatusOK {
		t.Fatalf("/cluster right after restart: %d", code)
	}
	if cl.LastLogIndex == 0 {
		t.Errorf("/cluster right after restart: last_log_index 0 (%+v)", cl)
	}
	for _, n := range cl.Nodes {
		if n.APIAddr == "" {
			t.Errorf("/cluster right after restart: member %s without an API address", n.ID)
		}
	}

	var unavailable, healthCatchingUp int
	deadline := time.Now().Add(20 * time.Second)
	for {
		var h proto.HealthResponse
		hc, _ := getJSON(t, base+"/health", &h)
		if hc == http.StatusServiceUnavailable && h.Status == proto.HealthCatchingUp && h.Reason != "" {
			healthCatchingUp++
		}
		b, _ := json.Marshal(proto.QueryRequest{All: true, Limit: 1})
		resp, err := http.Post(base+"/jobs/query", "application/json", strings.NewReader(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		var q proto.QueryResponse
		_ = json.NewDecoder(resp.Body).Decode(&q)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusServiceUnavailable:
			unavailable++
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("503 while catching up without Retry-After")
			}
		case http.StatusOK:
			if q.Total != total {
				t.Fatalf("restarted node answered 200 with %d jobs; the cluster holds %d", q.Total, total)
			}
			var st proto.StatusResponse
			if code, _ := getJSON(t, base+"/status", &st); code != http.StatusOK || st.TotalJobs != total {
				t.Fatalf("/status after catching up: %d total_jobs %d, want %d", code, st.TotalJobs, total)
			}
			if code, _ := getJSON(t, base+"/health", nil); code != http.StatusOK {
				t.Fatalf("/health after catching up: %d", code)
			}
			t.Logf("restarted node: %d answers 503 (catching up, /health said so %d times), then 200 with all %d jobs", unavailable, healthCatchingUp, total)
			return
		default:
			t.Fatalf("query on the restarted node: %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted node still catching up after 20 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestClusterShowsAnUnreachableMember: once a member stops, GET /cluster on the leader and
// on a follower shows it unreachable with its last contact, within seconds; the leader's
// metrics count it (issue 17: a killed controller was still listed as "follower").
func TestClusterShowsAnUnreachableMember(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	leader := controller.Leader(nodes)
	var victim, follower *controller.Controller
	for _, c := range nodes {
		switch {
		case c == leader:
		case victim == nil:
			victim = c
		default:
			follower = c
		}
	}
	controller.WaitFor(t, 10*time.Second, "every member reachable with its health", func() bool {
		var cl proto.ClusterStatus
		getJSON(t, follower.URL()+"/cluster", &cl)
		if cl.HealthFrom != leader.Node.ID() || len(cl.Nodes) != 3 {
			return false
		}
		for _, n := range cl.Nodes {
			if n.Health == nil || !n.Health.Reachable || n.State == proto.ClusterStateUnreachable {
				return false
			}
		}
		return true
	})
	victim.Close()
	stopped := time.Now()
	for _, c := range []*controller.Controller{leader, follower} {
		controller.WaitFor(t, 15*time.Second, "the stopped member shown unreachable on "+c.Node.ID(), func() bool {
			var cl proto.ClusterStatus
			getJSON(t, c.URL()+"/cluster", &cl)
			for _, n := range cl.Nodes {
				if n.ID == victim.Node.ID() {
					return n.State == proto.ClusterStateUnreachable && n.Health != nil && !n.Health.Reachable &&
						n.Health.LastContact != nil && n.Health.LastContactSeconds > 0
				}
			}
			return false
		})
	}
	t.Logf("stopped member shown unreachable %.1f s after it stopped", time.Since(stopped).Seconds())
	_, _ = getJSON(t, leader.URL()+"/metrics", nil)
	resp, err := http.Get(leader.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`hypersdk_raft_peers{state="unreachable"} 1`, `hypersdk_raft_peers{state="reachable"} 2`,
		`hypersdk_raft_peer_last_contact_seconds{peer="` + victim.Node.ID() + `"}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("leader /metrics lacks %s", want)
		}
	}
	resp, err = http.Get(follower.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "hypersdk_raft_leader_last_contact_seconds ") || !strings.Contains(string(b), "hypersdk_raft_catching_up 0") {
		t.Errorf("follower /metrics lacks the leader contact or catching_up gauges")
	}
}
