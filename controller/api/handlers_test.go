package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/metrics"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Handler tests without raft: the API over a real state applied locally, and a raft node
// stand-in that is (or is not) the leader.

type fakeRaft struct {
	*state.LocalApplier
	mu      sync.Mutex
	id      string
	leader  string // "" when none is known
	servers []cluster.Server
	behind  string // why the node is not caught up ("" when it is)
}

func (f *fakeRaft) ID() string { return f.id }
func (f *fakeRaft) setLeader(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leader = id
}
func (f *fakeRaft) IsLeader() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leader == f.id
}
func (f *fakeRaft) Leader() (string, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leader, ""
}
func (f *fakeRaft) State() string {
	if f.IsLeader() {
		return "Leader"
	}
	return "Follower"
}
func (f *fakeRaft) Indexes() (uint64, uint64) { return 7, 7 }
func (f *fakeRaft) LastIndex() uint64         { return 7 }

// Sync: the stand-in is caught up unless a test says otherwise.
func (f *fakeRaft) Sync() cluster.SyncStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.behind != "" {
		return cluster.SyncStatus{Reason: f.behind, Lag: 42}
	}
	return cluster.SyncStatus{CaughtUp: true}
}
func (f *fakeRaft) Peers() ([]cluster.PeerStatus, bool) { return nil, false }
func (f *fakeRaft) Apply(cmd []byte) (any, error) {
	if !f.IsLeader() {
		return nil, cluster.ErrNotLeader
	}
	return f.LocalApplier.Apply(cmd)
}
func (f *fakeRaft) Servers() ([]cluster.Server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.servers), nil
}
func (f *fakeRaft) Join(id, addr string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.servers = append(f.servers, cluster.Server{ID: id, RaftAddr: addr, Voter: true})
	return nil
}
func (f *fakeRaft) Remove(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.servers = slices.DeleteFunc(f.servers, func(s cluster.Server) bool { return s.ID == id })
	return nil
}

// fakeLeases explains every pending job the same way.
type fakeLeases struct{ api.Leases }

func (fakeLeases) PendingReasons() func(*proto.Job) string {
	return func(j *proto.Job) string { return "explained " + j.Definition.ID }
}

func newServer(t *testing.T, leader string) (*httptest.Server, *state.State, *fakeRaft) {
	t.Helper()
	st := state.New()
	node := &fakeRaft{LocalApplier: state.NewLocalApplier(st), id: "n1", leader: leader,
		servers: []cluster.Server{{ID: "n1", RaftAddr: "127.0.0.1:8081", Voter: true}}}
	srv, err := api.New(api.Config{NodeID: "n1", LeaderWait: 200 * time.Millisecond}, st, node, metrics.New(nil))
	if err != nil {
		t.Fatal(err)
	}
	srv.SetAgents(api.AgentsConfig{Leases: fakeLeases{}})
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs, st, node
}

func TestHandlersWithoutRaft(t *testing.T) {
	hs, st, node := newServer(t, "n1")
	code, _, b := do(t, "POST", hs.URL+"/jobs/submit", `{"id":"j1",`+validJob[1:])
	if code != http.StatusCreated {
		t.Fatalf("submit: %d %s", code, b)
	}
	if j, ok := st.Job("j1"); !ok || j.Definition.Source.Password != "hunter2" || j.Definition.Options.MaxAttempts != 3 {
		t.Fatalf("stored job %+v", j)
	}
	var j proto.Job
	code, _, b = do(t, "GET", hs.URL+"/jobs/j1", "")
	if json.Unmarshal(b, &j); code != 200 || j.PendingReason != "explained j1" || j.Definition.Source.Password != proto.RedactedPassword {
		t.Fatalf("get: %d %s", code, b)
	}
	var q proto.QueryResponse
	code, _, b = do(t, "POST", hs.URL+"/jobs/query", `{"status":"pending"}`)
	if json.Unmarshal(b, &q); code != 200 || q.Total != 1 || q.Jobs[0].PendingReason != "explained j1" {
		t.Fatalf("query: %d %s", code, b)
	}
	if code, _, b = do(t, "POST", hs.URL+"/jobs/submit", `{"id":"j1",`+validJob[1:]); code != http.StatusConflict {
		t.Fatalf("duplicate id: %d %s", code, b)
	}
	if code, _, b = do(t, "POST", hs.URL+"/jobs/cancel", `{"job_ids":["j1"]}`); code != 200 {
		t.Fatalf("cancel: %d %s", code, b)
	}
	if j, _ := st.Job("j1"); j.Status != proto.StatusCancelled {
		t.Fatalf("after cancel: %s", j.Status)
	}

	// Membership.
	body := `{"id":"n2","raft_addr":"127.0.0.1:9081","api_addr":"127.0.0.1:9080"}`
	if code, _, b = do(t, "POST", hs.URL+"/cluster/join", body); code != 200 {
		t.Fatalf("join: %d %s", code, b)
	}
	if n, ok := st.Node("n2"); !ok || n.APIAddr != "127.0.0.1:9080" {
		t.Fatalf("join did not register n2: %+v", n)
	}
	var cl proto.ClusterStatus
	code, _, b = do(t, "GET", hs.URL+"/cluster", "")
	if json.Unmarshal(b, &cl); code != 200 || cl.Leader.ID != "n1" || len(cl.Nodes) != 2 || cl.Nodes[0].State != "leader" ||
		cl.Nodes[1].ID != "n2" || cl.Nodes[1].APIAddr != "127.0.0.1:9080" || cl.CommitIndex != 7 {
		t.Fatalf("cluster: %d %s", code, b)
	}
	if code, _, b = do(t, "POST", hs.URL+"/cluster/join", `{"id":"n3","raft_addr":"nope"}`); code != 400 {
		t.Fatalf("bad join: %d %s", code, b)
	}
	if code, _, b = do(t, "DELETE", hs.URL+"/cluster/nodes/n9", ""); code != 404 {
		t.Fatalf("remove unknown: %d %s", code, b)
	}
	if code, _, b = do(t, "DELETE", hs.URL+"/cluster/nodes/n2", ""); code != 200 {
		t.Fatalf("remove: %d %s", code, b)
	}
	if srv, _ := node.Servers(); len(srv) != 1 {
		t.Fatalf("servers after remove: %+v", srv)
	}
	if _, ok := st.Node("n2"); ok {
		t.Fatal("n2 still a member")
	}
}

// A follower forwards writes to the leader's API (registered in the state) and hands its
// answer back unchanged; with no leader it answers 503 with Retry-After.
func TestHandlersForwardWithoutRaft(t *testing.T) {
	var got []string
	var mu sync.Mutex
	leaderAPI := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+" from "+r.Header.Get("X-Hypersdk-Forwarded-By"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `{"job_id":"from-leader","message":"ok"}`)
	}))
	t.Cleanup(leaderAPI.Close)
	hs, st, node := newServer(t, "n2")
	// The leader's registration arrives through the log.
	node.setLeader("n1")
	if _, err := node.Apply(state.MustEncode(state.CmdRegisterNode, state.NodeInfo{ID: "n2", APIAddr: strings.TrimPrefix(leaderAPI.URL, "http://")})); err != nil {
		t.Fatal(err)
	}
	node.setLeader("n2")
	code, h, b := do(t, "POST", hs.URL+"/jobs/submit", validJob)
	if code != http.StatusCreated || !strings.Contains(string(b), "from-leader") || h.Get("X-Hypersdk-Leader") != "n2" {
		t.Fatalf("forwarded submit: %d %v %s", code, h, b)
	}
	if len(got) != 1 || got[0] != "POST /jobs/submit from n1" || st.TotalJobs() != 0 {
		t.Fatalf("leader saw %v; follower stored %d jobs", got, st.TotalJobs())
	}
	node.setLeader("")
	code, h, b = do(t, "POST", hs.URL+"/jobs/submit", validJob)
	if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || !strings.Contains(string(b), "no raft leader") {
		t.Fatalf("without a leader: %d %v %s", code, h, b)
	}
}
