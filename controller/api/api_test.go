package api_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
)

const validJob = `{"vm_path":"DC0/vm/web-1","source":{"type":"vsphere","vcenter_url":"vcenter.example.com","username":"admin@vsphere.local","password":"hunter2","datacenter":"DC0"},"destination":{"type":"kvm","libvirt_uri":"qemu:///system"},"options":{"conversion_method":"https","network_mapping":{"VM Network":"br0"}}}`

func do(t *testing.T, method, url, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" || method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func TestContract(t *testing.T) {
	c := controller.StartTestCluster(t, 1)[0]
	base := c.URL()
	code, _, b := do(t, "POST", base+"/jobs/submit", validJob)
	if code != http.StatusCreated {
		t.Fatalf("valid submit: %d %s", code, b)
	}
	var sub proto.SubmitResponse
	_ = json.Unmarshal(b, &sub)

	huge := `{"vm_path":"` + strings.Repeat("a", 2<<20) + `"}`
	cases := []struct {
		name, method, path, body string
		code                     int
		errContains              string
	}{
		{"health", "GET", "/health", "", 200, ""},
		{"status", "GET", "/status", "", 200, ""},
		{"get job", "GET", "/jobs/" + sub.JobID, "", 200, ""},
		{"unknown job", "GET", "/jobs/does-not-exist", "", 404, "not found"},
		{"query empty body", "POST", "/jobs/query", "", 200, ""},
		{"query all", "POST", "/jobs/query", `{"all":true,"status":"running","limit":10}`, 200, ""},
		{"query status list", "POST", "/jobs/query", `{"status":["pending","running"]}`, 200, ""},
		{"query bad status", "POST", "/jobs/query", `{"status":"exploded"}`, 400, "status"},
		{"query limit too big", "POST", "/jobs/query", `{"limit":100000}`, 400, "limit"},
		{"query negative offset", "POST", "/jobs/query", `{"offset":-1}`, 400, "offset"},
		{"query bad cursor", "POST", "/jobs/query", `{"cursor":"zz"}`, 400, "cursor"},
		{"query wrong type", "POST", "/jobs/query", `{"limit":"ten"}`, 400, "limit"},
		{"query unknown field", "POST", "/jobs/query", `{"colour":"red"}`, 400, "colour"},
		{"submit malformed", "POST", "/jobs/submit", `{"vm_path":`, 400, "malformed JSON"},
		{"submit not an object", "POST", "/jobs/submit", `[1,2]`, 400, ""},
		{"submit empty", "POST", "/jobs/submit", ``, 400, "empty"},
		{"submit trailing data", "POST", "/jobs/submit", validJob + `{}`, 400, "after the JSON"},
		{"submit unknown field", "POST", "/jobs/submit", strings.Replace(validJob, `"vm_path"`, `"vmpath":1,"vm_path"`, 1), 400, "vmpath"},
		{"submit unknown option", "POST", "/jobs/submit", strings.Replace(validJob, `"conversion_method"`, `"turbo":true,"conversion_method"`, 1), 400, "turbo"},
		{"submit wrong type", "POST", "/jobs/submit", strings.Replace(validJob, `"vm_path":"DC0/vm/web-1"`, `"vm_path":42`, 1), 400, "vm_path"},
		{"submit no vm_path", "POST", "/jobs/submit", strings.Replace(validJob, `"vm_path":"DC0/vm/web-1",`, ``, 1), 400, "vm_path is required"},
		{"submit no source type", "POST", "/jobs/submit", strings.Replace(validJob, `"type":"vsphere",`, ``, 1), 400, "source.type"},
		{"submit bad source type", "POST", "/jobs/submit", strings.Replace(validJob, `"vsphere"`, `"hyperv"`, 1), 400, "source.type"},
		{"submit no password", "POST", "/jobs/submit", strings.Replace(validJob, `"password":"hunter2",`, ``, 1), 400, "password"},
		{"submit masked password", "POST", "/jobs/submit", strings.Replace(validJob, `"hunter2"`, `"********"`, 1), 400, "mask"},
		{"submit creds in url", "POST", "/jobs/submit", strings.Replace(validJob, `"vcenter.example.com"`, `"https://u:p@vc"`, 1), 400, "credentials"},
		{"submit bad dest", "POST", "/jobs/submit", strings.Replace(validJob, `"kvm"`, `"xen"`, 1), 400, "destination.type"},
		{"submit bad method", "POST", "/jobs/submit", strings.Replace(validJob, `"https"`, `"ftp"`, 1), 400, "conversion_method"},
		{"submit bad format", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{`, `"options":{"output_format":"vhd",`, 1), 400, "output_format"},
		{"submit bad bus", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{`, `"options":{"disk_bus":"floppy",`, 1), 400, "disk_bus"},
		{"submit negative cap", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{`, `"options":{"max_mbps":-5,`, 1), 400, "max_mbps"},
		{"submit warm with https", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{`, `"options":{"warm":true,`, 1), 400, "needs conversion_method vddk"},
		{"submit warm with nfc", "POST", "/jobs/submit", strings.Replace(strings.Replace(validJob, `"https"`, `"nfc"`, 1), `"options":{`, `"options":{"warm":true,`, 1), 400, "vddk"},
		{"submit interval without warm", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{`, `"options":{"precopy_interval_seconds":60,`, 1), 400, "set options.warm"},
		{"submit cutover_at without warm", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{`, `"options":{"cutover_at":"2030-01-02T03:04:05Z",`, 1), 400, "set options.warm"},
		{"submit bad cutover_at", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{"conversion_method":"https",`, `"options":{"warm":true,"cutover_at":"tomorrow",`, 1), 400, "options.cutover_at) must be RFC 3339"},
		{"submit negative interval", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{"conversion_method":"https",`, `"options":{"warm":true,"precopy_interval_seconds":-5,`, 1), 400, "precopy_interval_seconds"},
		{"submit interval over a week", "POST", "/jobs/submit", strings.Replace(validJob, `"options":{"conversion_method":"https",`, `"options":{"warm":true,"precopy_interval_seconds":604801,`, 1), 400, "precopy_interval_seconds"},
		{"cutover unknown job", "POST", "/jobs/nope/cutover", "", 404, "not found"},
		{"cutover cold job", "POST", "/jobs/" + sub.JobID + "/cutover", "", 409, "not a warm migration"},
		{"cutover with a body", "POST", "/jobs/" + sub.JobID + "/cutover", `{"now":true}`, 400, "now"},
		{"submit bad id", "POST", "/jobs/submit", strings.Replace(validJob, `{"vm_path"`, `{"id":"../../etc","vm_path"`, 1), 400, "id must"},
		{"submit duplicate id", "POST", "/jobs/submit", strings.Replace(validJob, `{"vm_path"`, `{"id":"`+sub.JobID+`","vm_path"`, 1), 409, "exists"},
		{"submit huge", "POST", "/jobs/submit", huge, 413, "larger than"},
		// Issue 18: jobs of ~0.9 MB (network_mapping) were stored, and every query and
		// WebSocket snapshot then carried them: a definition is capped at 64 KiB.
		{"submit 70 KiB", "POST", "/jobs/submit", strings.Replace(validJob, `{"VM Network":"br0"}`, `{`+bigMapping(200)+`}`, 1), 413, "at most 65536"},
		{"submit 1 MiB", "POST", "/jobs/submit", strings.Replace(validJob, `"vm_path"`, `"name":"`+strings.Repeat("n", 1<<20-1024)+`","vm_path"`, 1), 400, "name is longer than 256"},
		{"submit 0.9 MiB network_mapping", "POST", "/jobs/submit", strings.Replace(validJob, `{"VM Network":"br0"}`, `{`+bigMapping(2600)+`}`, 1), 400, "network_mapping has 2600 entries, at most 256"},
		{"submit long network name", "POST", "/jobs/submit", strings.Replace(validJob, `"br0"`, `"`+strings.Repeat("b", 300)+`"`, 1), 400, "at most 256 characters"},
		{"submit vm_path with ..", "POST", "/jobs/submit", strings.Replace(validJob, `DC0/vm/web-1`, `DC0/vm/..`, 1), 400, `".." segment`},
		{"cancel nothing", "POST", "/jobs/cancel", `{}`, 400, "job_ids or status"},
		{"cancel bad status", "POST", "/jobs/cancel", `{"status":"completed"}`, 400, "cannot be cancelled"},
		{"cancel unknown", "POST", "/jobs/cancel", `{"job_ids":["nope"]}`, 404, "not found"},
		{"cancel wrong type", "POST", "/jobs/cancel", `{"job_ids":"abc"}`, 400, "job_ids"},
		{"wrong method", "GET", "/jobs/submit", "", 405, "not allowed"},
		{"wrong method 2", "DELETE", "/status", "", 405, "not allowed"},
		{"no route", "GET", "/nope", "", 404, "no route"},
		{"cluster", "GET", "/cluster", "", 200, ""},
		{"join bad", "POST", "/cluster/join", `{"id":"x"}`, 400, "raft_addr"},
		{"remove unknown", "DELETE", "/cluster/nodes/ghost", "", 404, "unknown node"},
		{"metrics", "GET", "/metrics", "", 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, b := do(t, tc.method, base+tc.path, tc.body)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, b)
			}
			if code >= 400 {
				var e proto.ErrorResponse
				if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
					t.Fatalf("error body %q is not {\"error\": ...}", b)
				}
				if !strings.Contains(e.Error, tc.errContains) {
					t.Fatalf("error %q does not mention %q", e.Error, tc.errContains)
				}
				if ct := hdr.Get("Content-Type"); ct != "application/json" {
					t.Fatalf("content type %q", ct)
				}
			}
			if bytes.Contains(b, []byte("hunter2")) {
				t.Fatalf("password leaked in %s %s: %s", tc.method, tc.path, b)
			}
		})
	}
}

func TestDocumentShapes(t *testing.T) {
	c := controller.StartTestCluster(t, 1)[0]
	base := c.URL()
	_, _, b := do(t, "POST", base+"/jobs/submit", validJob)
	var sub map[string]any
	_ = json.Unmarshal(b, &sub)
	if sub["message"] != "job submitted successfully" || sub["job_id"] == "" {
		t.Fatalf("submit response %s", b)
	}
	keys := func(b []byte) map[string]any {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("not a JSON object: %s", b)
		}
		return m
	}
	mustKeys := func(what string, m map[string]any, ks ...string) {
		t.Helper()
		for _, k := range ks {
			if _, ok := m[k]; !ok {
				t.Fatalf("%s lacks %q: %v", what, k, m)
			}
		}
	}
	_, _, b = do(t, "GET", base+"/health", "")
	if keys(b)["status"] != "ok" {
		t.Fatalf("health %s", b)
	}
	_, _, b = do(t, "GET", base+"/status", "")
	mustKeys("status", keys(b), "total_jobs", "running_jobs", "completed_jobs", "failed_jobs", "worker_count", "active_workers")
	_, _, b = do(t, "GET", base+"/jobs/"+sub["job_id"].(string), "")
	job := keys(b)
	mustKeys("job", job, "definition", "status", "progress", "started_at", "error")
	mustKeys("progress", job["progress"].(map[string]any), "stage", "percent_complete", "current_bytes", "total_bytes")
	def := job["definition"].(map[string]any)
	mustKeys("definition", def, "id", "vm_path", "source", "destination", "options")
	if def["source"].(map[string]any)["password"] != "********" {
		t.Fatalf("password not masked: %v", def["source"])
	}
	_, _, b = do(t, "POST", base+"/jobs/query", `{"all":true}`)
	mustKeys("query", keys(b), "jobs", "total")
	_, _, b = do(t, "POST", base+"/jobs/cancel", `{"job_ids":["`+sub["job_id"].(string)+`"]}`)
	cr := keys(b)
	if cr["message"] != "jobs cancelled successfully" || cr["count"].(float64) != 1 {
		t.Fatalf("cancel %s", b)
	}
	_, _, b = do(t, "GET", base+"/cluster", "")
	cl := keys(b)
	mustKeys("cluster", cl, "leader", "nodes", "commit_index", "applied_index")
	mustKeys("cluster leader", cl["leader"].(map[string]any), "id", "api_addr")
	mustKeys("cluster node", cl["nodes"].([]any)[0].(map[string]any), "id", "api_addr", "raft_addr", "state", "voter")
	_, _, b = do(t, "GET", base+"/metrics", "")
	for _, name := range []string{"hypersdk_api_requests_total", "hypersdk_api_request_duration_seconds", "hypersdk_jobs_total", "hypersdk_workers_active", "hypersdk_build_info", "hypersdk_jobs_submitted_total"} {
		if !bytes.Contains(b, []byte("# TYPE "+name)) {
			t.Fatalf("metrics lack %s", name)
		}
	}
	if !bytes.Contains(b, []byte(`hypersdk_api_requests_total{code="200",method="GET",path="/jobs/{id}",status="OK"}`)) {
		t.Fatalf("request counter is not labelled by route template:\n%s", b)
	}
	if !bytes.Contains(b, []byte(`hypersdk_jobs_total{status="cancelled"} 1`)) {
		t.Fatal("jobs gauge wrong")
	}
}

func TestMetricsCanBeDisabled(t *testing.T) {
	cfg := controller.TestConfig(t, "m", t.TempDir())
	off := false
	cfg.Metrics.Enabled = &off
	c, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if code, _, _ := do(t, "GET", c.URL()+"/metrics", ""); code != http.StatusNotFound {
		t.Fatalf("metrics disabled but /metrics answers %d", code)
	}
}
