package controller_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
)

func jobBody(vm string) []byte {
	b, _ := json.Marshal(proto.JobDefinition{
		VMPath:      vm,
		Source:      proto.Source{Type: "vsphere", VCenterURL: "127.0.0.1:8989", Username: "admin", Password: "s3cret!"},
		Destination: proto.Destination{Type: "kvm"},
	})
	return b
}

// post sends a request as a well-behaved client does: a 503 (an election on a loaded
// machine) is retried after its Retry-After, a few times.
func post(t *testing.T, url string, body []byte) (int, map[string]any) {
	t.Helper()
	return call(t, http.DefaultClient, http.MethodPost, url, "", body, nil)
}

func getJob(t *testing.T, base, id string) (int, proto.Job) {
	t.Helper()
	resp, err := http.Get(base + "/jobs/" + id)
	if err != nil {
		t.Fatalf("GET job: %v", err)
	}
	defer resp.Body.Close()
	var j proto.Job
	_ = json.NewDecoder(resp.Body).Decode(&j)
	return resp.StatusCode, j
}

func TestSubmitThroughFollowerReadEverywhere(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	leader := controller.Leader(nodes)
	var ids []string
	for _, c := range nodes {
		if c == leader {
			continue
		}
		code, out := post(t, c.URL()+"/jobs/submit", jobBody("DC0/vm/via-"+c.Node.ID()))
		if code != http.StatusCreated {
			t.Fatalf("submit through follower %s: %d %v", c.Node.ID(), code, out)
		}
		ids = append(ids, out["job_id"].(string))
	}
	for _, c := range nodes {
		for _, id := range ids {
			controller.WaitFor(t, 5*time.Second, "job on "+c.Node.ID(), func() bool {
				code, _ := getJob(t, c.URL(), id)
				return code == http.StatusOK
			})
			_, j := getJob(t, c.URL(), id)
			if j.Definition.Source.Password != proto.RedactedPassword || j.Status != proto.StatusPending {
				t.Fatalf("node %s job %+v", c.Node.ID(), j)
			}
		}
	}
	// A cancel through a follower is forwarded and visible everywhere.
	follower := nodes[0]
	if follower == leader {
		follower = nodes[1]
	}
	code, out := post(t, follower.URL()+"/jobs/cancel", []byte(fmt.Sprintf(`{"job_ids":[%q]}`, ids[0])))
	if code != http.StatusOK || out["count"].(float64) != 1 {
		t.Fatalf("cancel via follower: %d %v", code, out)
	}
	for _, c := range nodes {
		controller.WaitFor(t, 5*time.Second, "cancel replicated", func() bool {
			_, j := getJob(t, c.URL(), ids[0])
			return j.Status == proto.StatusCancelled
		})
	}
}

func TestLeaderLossKeepsAcknowledgedJobs(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	leader := controller.Leader(nodes)
	var ids []string
	for i := 0; i < 20; i++ {
		code, out := post(t, nodes[i%3].URL()+"/jobs/submit", jobBody(fmt.Sprintf("DC0/vm/vm-%d", i)))
		if code != http.StatusCreated {
			t.Fatalf("submit %d: %d %v", i, code, out)
		}
		ids = append(ids, out["job_id"].(string))
	}
	leader.Close()
	var survivors []*controller.Controller
	for _, c := range nodes {
		if c != leader {
			survivors = append(survivors, c)
		}
	}
	controller.WaitFor(t, 10*time.Second, "new leader", func() bool { return controller.Leader(survivors) != nil })
	// A write through either survivor succeeds.
	for _, c := range survivors {
		code, out := post(t, c.URL()+"/jobs/submit", jobBody("DC0/vm/after-failover-"+c.Node.ID()))
		if code != http.StatusCreated {
			t.Fatalf("submit after failover via %s: %d %v", c.Node.ID(), code, out)
		}
		ids = append(ids, out["job_id"].(string))
	}
	for _, c := range survivors {
		controller.WaitFor(t, 5*time.Second, "all jobs on "+c.Node.ID(), func() bool {
			for _, id := range ids {
				if _, ok := c.State.Job(id); !ok {
					return false
				}
			}
			return c.State.TotalJobs() == len(ids)
		})
	}
}

func TestRestartFromDataDirAndLateJoin(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	first, err := controller.New(controller.TestConfig(t, "a", dirs[0]), controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	controller.WaitFor(t, 5*time.Second, "bootstrap leader", first.Node.IsLeader)
	for i := 0; i < 5; i++ {
		if code, out := post(t, first.URL()+"/jobs/submit", jobBody(fmt.Sprintf("DC0/vm/%d", i))); code != http.StatusCreated {
			t.Fatalf("submit: %d %v", code, out)
		}
	}
	// A node joining a running cluster receives the existing jobs.
	second, err := controller.New(controller.TestConfig(t, "b", dirs[1], first.APIAddr()), controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	controller.WaitFor(t, 10*time.Second, "late joiner has the jobs", func() bool { return second.State.TotalJobs() == 5 })

	// Restart the joiner with the same data dir and no flags: it rejoins and catches up.
	second.Close()
	// One of two down: no quorum, so the write answers 503 after the leader wait.
	resp, err := http.Post(first.URL()+"/jobs/submit", "application/json", bytes.NewReader(jobBody("DC0/vm/while-down")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusCreated {
		t.Fatalf("submit with one of two down: %d", resp.StatusCode)
	}
	cfg := controller.TestConfig(t, "", dirs[1])
	cfg.API.Addr, cfg.Cluster.RaftAddr = second.APIAddr(), second.Node.RaftAddr()
	second, err = controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	if second.Node.ID() != "b" {
		t.Fatalf("restarted node id %q, want b (stored in the data dir)", second.Node.ID())
	}
	controller.WaitFor(t, 10*time.Second, "restarted node catches up", func() bool {
		return second.State.TotalJobs() == first.State.TotalJobs() && first.State.TotalJobs() >= 5
	})
	// The same data dir under another id is refused.
	cfg = controller.TestConfig(t, "other", dirs[1])
	if _, err := controller.New(cfg, controller.TestLogger(t)); err == nil {
		t.Fatal("a data dir was reused under another node id")
	}
}

func TestJoinIsIdempotentAndRemove(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	leader := controller.Leader(nodes)
	var follower *controller.Controller
	for _, c := range nodes {
		if c != leader {
			follower = c
		}
	}
	reg, _ := leader.State.Node(follower.Node.ID())
	body, _ := json.Marshal(map[string]string{"id": reg.ID, "raft_addr": reg.RaftAddr, "api_addr": reg.APIAddr})
	for i := 0; i < 2; i++ {
		if code, out := post(t, follower.URL()+"/cluster/join", body); code != http.StatusOK {
			t.Fatalf("repeat join: %d %v", code, out)
		}
	}
	srv, _ := leader.Node.Servers()
	if len(srv) != 3 {
		t.Fatalf("servers after repeated join: %d", len(srv))
	}
	req, _ := http.NewRequest(http.MethodDelete, leader.URL()+"/cluster/nodes/"+follower.Node.ID(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("remove: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	var cr struct {
		Nodes []map[string]any `json:"nodes"`
	}
	r2, _ := http.Get(leader.URL() + "/cluster")
	_ = json.NewDecoder(r2.Body).Decode(&cr)
	r2.Body.Close()
	if len(cr.Nodes) != 2 {
		t.Fatalf("cluster after remove: %v", cr.Nodes)
	}
	req, _ = http.NewRequest(http.MethodDelete, leader.URL()+"/cluster/nodes/nope", nil)
	resp, _ = http.DefaultClient.Do(req)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("remove unknown: %s", resp.Status)
	}
	resp.Body.Close()
}

// A follower restarted on a new raft address is re-registered under its id: the changed
// address replaces the old entry and the cluster keeps three voters.
func TestRestartOnNewAddressReplacesEntry(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	leader := controller.Leader(nodes)
	var f *controller.Controller
	for _, c := range nodes {
		if c != leader {
			f = c
		}
	}
	fc := f.Config()
	dir := fc.DataDir()
	oldRaft := f.Node.RaftAddr()
	// A node can only find its peers after a restart once it has remembered them.
	controller.WaitFor(t, 5*time.Second, "peers remembered", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "controllers.json"))
		return err == nil && bytes.Count(b, []byte(`"api_addr"`)) == 3
	})
	f.Close()
	cfg := controller.TestConfig(t, "", dir) // new ephemeral ports, same data dir
	g, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	controller.WaitFor(t, 15*time.Second, "new address in the raft configuration", func() bool {
		srv, err := leader.Node.Servers()
		if err != nil || len(srv) != 3 {
			return false
		}
		for _, s := range srv {
			if s.ID == g.Node.ID() {
				return s.RaftAddr == g.Node.RaftAddr() && s.RaftAddr != oldRaft
			}
		}
		return false
	})
	code, out := post(t, g.URL()+"/jobs/submit", jobBody("DC0/vm/after-move"))
	if code != http.StatusCreated {
		t.Fatalf("submit through moved node: %d %v", code, out)
	}
	id := out["job_id"].(string)
	controller.WaitFor(t, 5*time.Second, "moved node replicates", func() bool { _, ok := g.State.Job(id); return ok })
}
