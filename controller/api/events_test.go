package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
)

const validTemplate = `{"vm_path":"DC0/vm/web-1","source":{"type":"vsphere","vcenter_url":"vcenter.example.com","username":"admin","password":"hunter2"},"destination":{"type":"kvm"}}`

func schedBody(id, expr string) string {
	return `{"id":"` + id + `","name":"Daily VM Backup","description":"nightly","schedule":"` + expr + `","enabled":true,"job_template":` + validTemplate + `}`
}

// bigMapping is n network_mapping entries of about 350 bytes each.
func bigMapping(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"net-%03d-%s":"br-%s"`, i, strings.Repeat("a", 170), strings.Repeat("b", 170))
	}
	return b.String()
}

func TestSchedulesContract(t *testing.T) {
	c := controller.StartTestCluster(t, 1)[0]
	base := c.URL()
	if code, _, b := do(t, "POST", base+"/schedules", schedBody("daily-backup", "0 2 * * *")); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, b)
	}
	// A glob against a vCenter that is not there: the run fails with the reason.
	globTpl := strings.NewReplacer("DC0/vm/web-1", "DC0/vm/*", "vcenter.example.com", "127.0.0.1:1").Replace(validTemplate)
	if code, _, b := do(t, "POST", base+"/schedules", `{"id":"glob","schedule":"0 3 * * *","job_template":`+globTpl+`}`); code != http.StatusCreated {
		t.Fatalf("create glob: %d %s", code, b)
	}
	cases := []struct {
		name, method, path, body string
		code                     int
		errContains              string
	}{
		{"list", "GET", "/schedules", "", 200, ""},
		{"stats", "GET", "/schedules/stats", "", 200, ""},
		{"get", "GET", "/schedules/daily-backup", "", 200, ""},
		{"get unknown", "GET", "/schedules/nope", "", 404, "not found"},
		{"duplicate id", "POST", "/schedules", schedBody("daily-backup", "0 2 * * *"), 409, "exists"},
		{"invalid cron", "POST", "/schedules", schedBody("x", "61 2 * * *"), 400, "cron"},
		{"six fields", "POST", "/schedules", schedBody("x", "0 0 2 * * *"), 400, "cron"},
		{"empty cron", "POST", "/schedules", schedBody("x", ""), 400, "schedule is required"},
		{"@every 1s", "POST", "/schedules", schedBody("x", "@every 1s"), 400, "more often than every 1m0s"},
		{"@every 59s", "POST", "/schedules", schedBody("x", "@every 59s"), 400, "more often than every 1m0s"},
		{"@every 1m", "POST", "/schedules", schedBody("every-minute", "@every 1m"), 201, ""},
		{"update to @every 1s", "PUT", "/schedules/every-minute", `{"schedule":"@every 1s"}`, 400, "more often"},
		{"delete @every 1m", "DELETE", "/schedules/every-minute", "", 200, ""},
		{"template over 64 KiB", "POST", "/schedules", strings.Replace(schedBody("x", "0 2 * * *"), `"DC0/vm/web-1"`, `"DC0/vm/web-1","name":"`+strings.Repeat("n", 200)+`","options":{"network_mapping":{`+bigMapping(300)+`}}`, 1), 400, "network_mapping has 300 entries"},
		{"template of 70 KiB", "POST", "/schedules", strings.Replace(schedBody("x", "0 2 * * *"), `"DC0/vm/web-1"`, `"DC0/vm/web-1","options":{"network_mapping":{`+bigMapping(200)+`}}`, 1), 413, "at most 65536"},
		{"never fires", "POST", "/schedules", schedBody("x", "0 0 30 2 *"), 400, "never fires"},
		{"bad id", "POST", "/schedules", schedBody("../x", "0 2 * * *"), 400, "id must"},
		{"id stats", "POST", "/schedules", schedBody("stats", "0 2 * * *"), 400, "id must"},
		{"no template", "POST", "/schedules", `{"id":"x","schedule":"0 2 * * *"}`, 400, "job_template is required"},
		{"template without password", "POST", "/schedules", strings.Replace(schedBody("x", "0 2 * * *"), `,"password":"hunter2"`, ``, 1), 400, "password"},
		{"template with id", "POST", "/schedules", strings.Replace(schedBody("x", "0 2 * * *"), `{"vm_path"`, `{"id":"j","vm_path"`, 1), 400, "must not set id"},
		{"template masked password", "POST", "/schedules", strings.Replace(schedBody("x", "0 2 * * *"), `hunter2`, `********`, 1), 400, "mask"},
		{"unknown field", "POST", "/schedules", strings.Replace(schedBody("x", "0 2 * * *"), `"name"`, `"colour":1,"name"`, 1), 400, "colour"},
		{"malformed", "POST", "/schedules", `{"id":`, 400, "malformed JSON"},
		{"empty body", "POST", "/schedules", ``, 400, "empty"},
		{"wrong type", "POST", "/schedules", `{"id":"x","schedule":5}`, 400, "schedule"},
		{"update", "PUT", "/schedules/daily-backup", `{"name":"Updated Name","schedule":"0 3 * * *","enabled":true}`, 200, ""},
		{"update masked template keeps password", "PUT", "/schedules/daily-backup", `{"job_template":` + strings.Replace(validTemplate, "hunter2", "********", 1) + `}`, 200, ""},
		{"update masked template to another vCenter", "PUT", "/schedules/daily-backup", `{"job_template":` + strings.NewReplacer("hunter2", "********", "vcenter.example.com", "capture.example.net").Replace(validTemplate) + `}`, 400, "send the password for the new vCenter"},
		{"update masked template to another user", "PUT", "/schedules/daily-backup", `{"job_template":` + strings.NewReplacer("hunter2", "********", `"admin"`, `"root"`).Replace(validTemplate) + `}`, 400, "send the password"},
		{"update unknown", "PUT", "/schedules/nope", `{"name":"x"}`, 404, "not found"},
		{"update nothing", "PUT", "/schedules/daily-backup", `{}`, 400, "nothing to update"},
		{"update bad cron", "PUT", "/schedules/daily-backup", `{"schedule":"every day"}`, 400, "cron"},
		{"update other id", "PUT", "/schedules/daily-backup", `{"id":"other","name":"x"}`, 400, "differs"},
		{"update read-only field", "PUT", "/schedules/daily-backup", `{"run_count":3}`, 400, "run_count"},
		{"disable", "POST", "/schedules/daily-backup/disable", "", 200, ""},
		{"enable", "POST", "/schedules/daily-backup/enable", "", 200, ""},
		{"enable unknown", "POST", "/schedules/nope/enable", "", 404, "not found"},
		{"trigger", "POST", "/schedules/daily-backup/trigger", "", 200, ""},
		{"trigger unknown", "POST", "/schedules/nope/trigger", "", 404, "not found"},
		{"trigger glob, vCenter unreachable", "POST", "/schedules/glob/trigger", "", 502, "expand vm_path DC0/vm/*"},
		{"delete unknown", "DELETE", "/schedules/nope", "", 404, "not found"},
		{"wrong method", "PATCH", "/schedules/daily-backup", "", 405, "not allowed"},
		{"wrong method on stats", "POST", "/schedules/stats", "", 405, "not allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, b := do(t, tc.method, base+tc.path, tc.body)
			checkResponse(t, tc.method+" "+tc.path, code, tc.code, hdr, b, tc.errContains)
		})
	}

	// Field for field: the document's keys and messages.
	_, _, b := do(t, "GET", base+"/schedules", "")
	var list map[string]any
	_ = json.Unmarshal(b, &list)
	mustHave(t, "list", list, "schedules", "total", "timestamp")
	s0 := list["schedules"].([]any)[0].(map[string]any)
	mustHave(t, "schedule", s0, "id", "name", "schedule", "enabled", "job_template", "last_run", "next_run", "run_count")
	if s0["name"] != "Updated Name" || s0["schedule"] != "0 3 * * *" || s0["run_count"].(float64) != 1 {
		t.Fatalf("schedule after update and trigger: %v", s0)
	}
	if pw := s0["job_template"].(map[string]any)["source"].(map[string]any)["password"]; pw != proto.RedactedPassword {
		t.Fatalf("template password shown as %v", pw)
	}
	if sc, ok := c.State.Schedule("daily-backup"); !ok || sc.JobTemplate.Source.Password != "hunter2" {
		t.Fatal("a masked template in PUT replaced the stored password")
	}
	_, _, b = do(t, "GET", base+"/schedules/stats", "")
	var stats map[string]any
	_ = json.Unmarshal(b, &stats)
	mustHave(t, "stats", stats, "total_schedules", "enabled_schedules", "disabled_schedules", "total_runs", "successful_runs", "failed_runs")
	if stats["total_schedules"].(float64) != 2 || stats["total_runs"].(float64) != 2 || stats["failed_runs"].(float64) != 1 {
		t.Fatalf("stats %s", b)
	}
	messages := []struct{ method, path, body, msg string }{
		{"POST", "/schedules", schedBody("m", "*/15 * * * *"), "schedule created successfully"},
		{"PUT", "/schedules/m", `{"schedule":"0 0 * * 0"}`, "schedule updated successfully"},
		{"POST", "/schedules/m/disable", "", "schedule disabled successfully"},
		{"POST", "/schedules/m/enable", "", "schedule enabled successfully"},
		{"POST", "/schedules/m/trigger", "", "schedule triggered successfully"},
		{"DELETE", "/schedules/m", "", "schedule deleted successfully"},
	}
	for _, m := range messages {
		_, _, b := do(t, m.method, base+m.path, m.body)
		var out map[string]any
		_ = json.Unmarshal(b, &out)
		if out["message"] != m.msg {
			t.Fatalf("%s %s: %s, want message %q", m.method, m.path, b, m.msg)
		}
	}
	// The triggered run created a job carrying the schedule id.
	_, _, b = do(t, "POST", base+"/jobs/query", `{"all":true}`)
	if !bytes.Contains(b, []byte(`"schedule_id":"daily-backup"`)) || bytes.Contains(b, []byte("hunter2")) {
		t.Fatalf("jobs after trigger: %s", b)
	}
}

func TestSchedulerDisabled(t *testing.T) {
	off := false
	c := controller.StartTestClusterWith(t, 1, func(_ int, cfg *controller.Config) { cfg.Scheduler.Enabled = &off })[0]
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/schedules", ""}, {"POST", "/schedules", schedBody("x", "0 2 * * *")}, {"GET", "/schedules/stats", ""},
		{"POST", "/schedules/x/trigger", ""},
	} {
		code, hdr, b := do(t, tc.method, c.URL()+tc.path, tc.body)
		checkResponse(t, tc.method+" "+tc.path, code, http.StatusServiceUnavailable, hdr, b, "scheduler is not enabled")
	}
}

func TestWebhooksContract(t *testing.T) {
	var mu sync.Mutex
	var got []*http.Request
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/fail") {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(recv.Close)
	c := controller.StartTestCluster(t, 1)[0]
	base := c.URL()
	add := `{"url":"https://hooks.example.com/notify","events":["job.completed","job.failed"],"enabled":true,"timeout":30,"retry_count":3,"headers":{"Authorization":"Bearer token123"},"secret":"sh!"}`
	code, _, b := do(t, "POST", base+"/webhooks", add)
	if code != http.StatusCreated {
		t.Fatalf("add: %d %s", code, b)
	}
	var added map[string]any
	_ = json.Unmarshal(b, &added)
	if added["message"] != "webhook added successfully" {
		t.Fatalf("add response %s", b)
	}
	mustHave(t, "added webhook", added["webhook"].(map[string]any), "url", "events", "enabled", "timeout", "retry_count")
	if bytes.Contains(b, []byte("token123")) || bytes.Contains(b, []byte("sh!")) {
		t.Fatalf("secret header or secret shown: %s", b)
	}
	cases := []struct {
		name, method, path, body string
		code                     int
		errContains              string
	}{
		{"list", "GET", "/webhooks", "", 200, ""},
		{"defaults", "POST", "/webhooks", `{"url":"http://127.0.0.1:9/x","events":["job.progress","schedule.triggered","schedule.completed","job.cancelled","schedule.failed"]}`, 201, ""},
		{"ftp url", "POST", "/webhooks", `{"url":"ftp://h/x","events":["job.failed"]}`, 400, "http or https"},
		{"relative url", "POST", "/webhooks", `{"url":"/hook","events":["job.failed"]}`, 400, "url"},
		{"credentials in url", "POST", "/webhooks", `{"url":"https://u:p@h/x","events":["job.failed"]}`, 400, "credentials"},
		{"no url", "POST", "/webhooks", `{"events":["job.failed"]}`, 400, "url is required"},
		{"unknown event", "POST", "/webhooks", `{"url":"https://h/x","events":["job.exploded"]}`, 400, "job.exploded"},
		{"no events", "POST", "/webhooks", `{"url":"https://h/x","events":[]}`, 400, "events is required"},
		{"timeout too big", "POST", "/webhooks", `{"url":"https://h/x","events":["job.failed"],"timeout":3600}`, 400, "timeout"},
		{"negative retries", "POST", "/webhooks", `{"url":"https://h/x","events":["job.failed"],"retry_count":-1}`, 400, "retry_count"},
		{"reserved header", "POST", "/webhooks", `{"url":"https://h/x","events":["job.failed"],"headers":{"X-HyperSDK-Delivery":"1"}}`, 400, "set by the delivery"},
		{"bad header name", "POST", "/webhooks", `{"url":"https://h/x","events":["job.failed"],"headers":{"a b":"1"}}`, 400, "header name"},
		{"unknown field", "POST", "/webhooks", `{"url":"https://h/x","events":["job.failed"],"colour":1}`, 400, "colour"},
		{"malformed", "POST", "/webhooks", `{"url"`, 400, "malformed"},
		{"delete bad index", "DELETE", "/webhooks/abc", "", 400, "non-negative integer"},
		{"delete negative index", "DELETE", "/webhooks/-1", "", 400, "non-negative integer"},
		{"delete out of range", "DELETE", "/webhooks/7", "", 404, "there are 2 webhooks"},
		{"test ok", "POST", "/webhooks/test", `{"url":"` + recv.URL + `/ok","event":"test"}`, 200, ""},
		{"test receiver fails", "POST", "/webhooks/test", `{"url":"` + recv.URL + `/fail"}`, 502, "500"},
		{"test unreachable", "POST", "/webhooks/test", `{"url":"http://127.0.0.1:1/x"}`, 502, "test webhook failed"},
		{"test bad url", "POST", "/webhooks/test", `{"url":"gopher://x"}`, 400, "http or https"},
		{"test bad event", "POST", "/webhooks/test", `{"url":"http://127.0.0.1:1/x","event":"boom"}`, 400, "boom"},
		{"test wrong method", "GET", "/webhooks/test", "", 405, "not allowed"},
		{"delete", "DELETE", "/webhooks/1", "", 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, b := do(t, tc.method, base+tc.path, tc.body)
			checkResponse(t, tc.method+" "+tc.path, code, tc.code, hdr, b, tc.errContains)
		})
	}
	_, _, b = do(t, "GET", base+"/webhooks", "")
	var list map[string]any
	_ = json.Unmarshal(b, &list)
	mustHave(t, "list", list, "webhooks", "total", "timestamp")
	if list["total"].(float64) != 1 || bytes.Contains(b, []byte("token123")) {
		t.Fatalf("list %s", b)
	}
	w0 := list["webhooks"].([]any)[0].(map[string]any)
	mustHave(t, "webhook", w0, "url", "events", "enabled", "timeout", "retry_count")
	if code, _, b := do(t, "DELETE", base+"/webhooks/0", ""); code != 200 || !bytes.Contains(b, []byte(`"webhook deleted successfully"`)) {
		t.Fatalf("delete: %d %s", code, b)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) == 0 || got[0].Header.Get(proto.HeaderWebhookEvent) != "test" || got[0].Header.Get(proto.HeaderWebhookDelivery) == "" {
		t.Fatalf("test delivery headers: %v", got)
	}
}

func TestWebSocketRoute(t *testing.T) {
	c := controller.StartTestCluster(t, 1)[0]
	// A plain GET is not an upgrade: 400 with the JSON error body.
	code, hdr, b := do(t, "GET", c.URL()+"/ws", "")
	checkResponse(t, "GET /ws", code, http.StatusBadRequest, hdr, b, "websocket")
	code, hdr, b = do(t, "POST", c.URL()+"/ws", "")
	checkResponse(t, "POST /ws", code, http.StatusMethodNotAllowed, hdr, b, "not allowed")
}

func TestEventsMetrics(t *testing.T) {
	c := controller.StartTestCluster(t, 1)[0]
	_, _, _ = do(t, "POST", c.URL()+"/schedules", schedBody("m", "0 2 * * *"))
	_, _, _ = do(t, "POST", c.URL()+"/schedules/m/trigger", "")
	_, _, b := do(t, "GET", c.URL()+"/metrics", "")
	for _, want := range []string{
		`hypersdk_schedule_runs_total{result="triggered"} 1`,
		`hypersdk_schedule_runs_total{result="successful"} 0`,
		`hypersdk_webhook_deliveries_total{result="dropped"} 0`,
		`hypersdk_ws_clients 0`,
		`hypersdk_api_requests_total{code="200",method="POST",path="/schedules/{id}/trigger",status="OK"} 1`,
	} {
		if !bytes.Contains(b, []byte(want)) {
			t.Fatalf("metrics lack %s", want)
		}
	}
	if _, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = bytes.NewReader(b)
		if out, err := cmd.CombinedOutput(); err != nil {
			// promtool exits non-zero for lint warnings too; only our metrics matter here.
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, "hypersdk_schedule") || strings.Contains(line, "hypersdk_webhook") || strings.Contains(line, "hypersdk_ws") {
					t.Fatalf("promtool: %s", line)
				}
			}
		}
	}
}

func checkResponse(t *testing.T, what string, code, want int, hdr http.Header, b []byte, errContains string) {
	t.Helper()
	if code != want {
		t.Fatalf("%s: status %d, want %d: %s", what, code, want, b)
	}
	if code >= 400 {
		var e proto.ErrorResponse
		if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
			t.Fatalf("%s: error body %q is not {\"error\": ...}", what, b)
		}
		if !strings.Contains(e.Error, errContains) {
			t.Fatalf("%s: error %q does not mention %q", what, e.Error, errContains)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s: content type %q", what, ct)
		}
	}
	for _, secret := range []string{"hunter2", "token123", "sh!"} {
		if bytes.Contains(b, []byte(secret)) {
			t.Fatalf("%s: secret %q leaked: %s", what, secret, b)
		}
	}
}

func mustHave(t *testing.T, what string, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Fatalf("%s lacks %q: %v", what, k, m)
		}
	}
}
