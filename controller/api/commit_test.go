package api_test

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/lease"
	"github.com/hypersdk/hypersdk/controller/metrics"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// POST /agent/v1/commit over the real lease manager and state: 200 committed for the
// lease's agent, 409 once the lease moved on or for another agent, 404 for an unknown
// job, 200 with cancel for a cancelled job, 400 with an error body for bad input; no
// refused request changes the job.
func TestCommitEndpoint(t *testing.T) {
	st := state.New()
	node := &fakeRaft{LocalApplier: state.NewLocalApplier(st), id: "n1", leader: "n1",
		servers: []cluster.Server{{ID: "n1", RaftAddr: "127.0.0.1:8081", Voter: true}}}
	srv, err := api.New(api.Config{NodeID: "n1", LeaderWait: 200 * time.Millisecond}, st, node, metrics.New(nil))
	if err != nil {
		t.Fatal(err)
	}
	srv.SetAgents(api.AgentsConfig{Leases: lease.New(lease.Config{TTL: time.Hour}, st, node, nil)})
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)

	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	apply := func(ct state.CommandType, payload any) {
		t.Helper()
		if _, err := node.Apply(state.MustEncode(ct, payload)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"moved", "cancelled", "fresh"} {
		d := proto.JobDefinition{ID: id, VMPath: "DC0/vm/" + id, CreatedAt: at,
			Source: proto.Source{Type: "vsphere", VCenterURL: "https://vc/sdk", Username: "u", Password: "p"}, Destination: proto.Destination{Type: "kvm"}}
		apply(state.CmdSubmitJob, state.SubmitJob{Definition: d})
		apply(state.CmdLeaseGrant, state.LeaseGrant{LeaseToken: state.LeaseToken{JobID: id, Attempt: 1}, Agent: "ag1", At: at})
	}
	// "moved": attempt 1 expired, attempt 2 runs on ag2. "cancelled": cancel requested.
	apply(state.CmdLeaseExpire, state.LeaseExpire{LeaseToken: state.LeaseToken{JobID: "moved", Attempt: 1}, Reason: "silent", At: at})
	apply(state.CmdLeaseGrant, state.LeaseGrant{LeaseToken: state.LeaseToken{JobID: "moved", Attempt: 2}, Agent: "ag2", At: at})
	apply(state.CmdCancelJobs, state.CancelJobs{JobIDs: []string{"cancelled"}, At: at})

	cases := []struct {
		name, body string
		code       int
		// want is in the answer's body (the error for 4xx).
		want string
	}{
		{"the old attempt after the lease moved on", `{"job_id":"moved","attempt":1,"agent":"ag1","domain":"vm"}`, 409, "stale lease"},
		{"another agent's lease", `{"job_id":"moved","attempt":2,"agent":"ag1"}`, 409, "not leased to ag1"},
		{"unknown job", `{"job_id":"nope","attempt":1,"agent":"ag1"}`, 404, "not found"},
		{"a cancelled job", `{"job_id":"cancelled","attempt":1,"agent":"ag1"}`, 200, `"cancel":true`},
		{"no agent", `{"job_id":"fresh","attempt":1}`, 400, "agent is required"},
		{"attempt 0", `{"job_id":"fresh","attempt":0,"agent":"ag1"}`, 400, "job_id and attempt"},
		{"negative attempt", `{"job_id":"fresh","attempt":-3,"agent":"ag1"}`, 400, "job_id and attempt"},
		{"no job id", `{"attempt":1,"agent":"ag1"}`, 400, "job_id"},
		{"a domain name too long", `{"job_id":"fresh","attempt":1,"agent":"ag1","domain":"` + strings.Repeat("d", 300) + `"}`, 400, "too long"},
		{"an unknown field", `{"job_id":"fresh","attempt":1,"agent":"ag1","force":true}`, 400, "force"},
		{"attempt as a string", `{"job_id":"fresh","attempt":"1","agent":"ag1"}`, 400, "attempt"},
		{"not JSON", `{job_id:fresh}`, 400, ""},
		{"empty body", ``, 400, ""},
		{"the lease's agent", `{"job_id":"moved","attempt":2,"agent":"ag2","domain":"vm-moved","libvirt_uri":"qemu:///system"}`, 200, `"committed":true`},
		{"the same commit again (its answer was lost)", `{"job_id":"moved","attempt":2,"agent":"ag2","domain":"vm-moved"}`, 200, `"committed":true`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := map[string]proto.Job{}
			for _, id := range []string{"moved", "cancelled", "fresh"} {
				j, _ := st.Job(id)
				before[id] = *j
			}
			code, _, b := do(t, "POST", hs.URL+"/agent/v1/commit", tc.body)
			if code != tc.code || !strings.Contains(string(b), tc.want) {
				t.Fatalf("%d %s, want %d with %q", code, b, tc.code, tc.want)
			}
			if code >= 400 {
				var e proto.ErrorResponse
				if json.Unmarshal(b, &e) != nil || e.Error == "" {
					t.Fatalf("%d without an error body: %s", code, b)
				}
				for id, old := range before {
					if j, _ := st.Job(id); j.Commit != old.Commit || j.Status != old.Status || j.UpdatedAt != old.UpdatedAt {
						t.Fatalf("a refused commit changed job %s: %+v", id, j)
					}
				}
			}
		})
	}
	j, _ := st.Job("moved")
	if j.Commit == nil || j.Commit.Attempt != 2 || j.Commit.Agent != "ag2" || j.Commit.Domain != "vm-moved" || j.Commit.LibvirtURI != "qemu:///system" {
		t.Fatalf("job's commit %+v", j.Commit)
	}
	// The commit is what GET /jobs/{id} shows an operator.
	code, _, b := do(t, "GET", hs.URL+"/jobs/moved", "")
	if code != 200 || !strings.Contains(string(b), `"commit":{"attempt":2,"agent":"ag2","domain":"vm-moved"`) {
		t.Fatalf("GET /jobs/moved: %d %s", code, b)
	}
	if j, _ := st.Job("cancelled"); j.Commit != nil {
		t.Fatalf("the cancelled job was committed: %+v", j.Commit)
	}
}
