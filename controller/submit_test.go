package controller_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

func postBody(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func jobDoc(t *testing.T, vm string, edit func(m map[string]any)) string {
	b, _ := json.Marshal(fleettest.JobBody(vm))
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(m)
	}
	b, _ = json.Marshal(m)
	return string(b)
}

// TestSubmitYouCanTrust: through a follower, a list of jobs is all or nothing (every bad
// document named, with the JSON path of an unknown field), a good list is one answer with
// every job readable at once, a second active job of one source VM is a 409 unless
// options.allow_duplicate, and a target_agent the fleet never had is a 400 naming the
// known agents.
func TestSubmitYouCanTrust(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	var follower *controller.Controller
	for _, n := range nodes {
		if !n.Node.IsLeader() {
			follower = n
		}
	}
	url := follower.URL() + "/jobs/submit"
	opt := func(k string, v any) func(m map[string]any) {
		return func(m map[string]any) {
			o, _ := m["options"].(map[string]any)
			if o == nil {
				o = map[string]any{}
			}
			o[k] = v
			m["options"] = o
		}
	}
	total := func() int {
		var st proto.StatusResponse
		getJSON(t, follower.URL()+"/status", &st)
		return st.TotalJobs
	}

	bad := "[" + jobDoc(t, "DC0/vm/b-1", nil) + "," + jobDoc(t, "DC0/vm/b-2", opt("shutdwn", true)) + "," +
		jobDoc(t, "DC0/vm/b-3", func(m map[string]any) { delete(m, "vm_path") }) + "]"
	code, body := postBody(t, url, bad)
	if code != http.StatusBadRequest || !strings.Contains(body, "2 of 3 jobs are invalid, none was submitted") ||
		!strings.Contains(body, `document 2: unknown field \"options.shutdwn\"`) || !strings.Contains(body, "document 3: ") {
		t.Fatalf("list with bad documents: %d %s", code, body)
	}
	if n := total(); n != 0 {
		t.Fatalf("a rejected list stored %d jobs", n)
	}

	good := "[" + jobDoc(t, "DC0/vm/g-1", nil) + "," + jobDoc(t, "DC0/vm/g-2", nil) + "]"
	code, body = postBody(t, url, good)
	var res proto.SubmitBatchResponse
	if code != http.StatusCreated || json.Unmarshal([]byte(body), &res) != nil || len(res.Jobs) != 2 {
		t.Fatalf("good list: %d %s", code, body)
	}
	for _, j := range res.Jobs {
		if c, _ := getJSON(t, follower.URL()+"/jobs/"+j.JobID, nil); c != http.StatusOK {
			t.Fatalf("job %s of the list: GET %d on the node that answered 201", j.JobID, c)
		}
	}

	for _, tc := range []struct {
		name, body string
		code       int
		has        string
	}{
		{"same VM again", jobDoc(t, "DC0/vm/g-1", nil), http.StatusConflict, "source VM DC0/vm/g-1 already has job " + res.Jobs[0].JobID},
		{"same VM twice in a list", "[" + jobDoc(t, "DC0/vm/d-1", nil) + "," + jobDoc(t, "DC0/vm/d-1", nil) + "]", http.StatusConflict, "document 2: source VM DC0/vm/d-1 is also document 1"},
		{"same VM again, allowed", jobDoc(t, "DC0/vm/g-1", opt("allow_duplicate", true)), http.StatusCreated, "job_id"},
		{"unknown target agent", jobDoc(t, "DC0/vm/t-1", opt("target_agent", "kvm-nowhere")), http.StatusBadRequest, `options.target_agent: no agent \"kvm-nowhere\" has ever been in the fleet (known agents: none)`},
		{"empty list", "[]", http.StatusBadRequest, "1 to 1000 jobs"},
	} {
		code, body := postBody(t, url, tc.body)
		if code != tc.code || !strings.Contains(body, tc.has) {
			t.Errorf("%s: %d %s, want %d with %q", tc.name, code, body, tc.code, tc.has)
		}
	}
	if n := total(); n != 3 {
		t.Fatalf("%d jobs stored, want 3 (the list of two, the allowed duplicate)", n)
	}
}
