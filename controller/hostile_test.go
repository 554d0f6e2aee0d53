package controller_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/proto"
)

// TestHostileInput sends hundreds of malformed, oversized and mutated requests to every
// endpoint: none may get a 5xx (or kill the node), every 4xx carries {"error"}, and what
// the state holds afterwards is exactly what was acknowledged (nothing half-applied).
func TestHostileInput(t *testing.T) {
	// Rate limits would answer most of this flood with 429 (tested in TestRateLimit); here
	// every request must reach its handler.
	c := controller.StartTestClusterWith(t, 1, func(_ int, cfg *controller.Config) { cfg.API.RateLimit = api.RateLimit{} })[0]
	base := c.URL()
	client := &http.Client{Timeout: 10 * time.Second}

	valid := string(jobBody("DC0/vm/hostile"))
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	bodies := []string{
		"", " ", "null", "true", "0", "-1", "1e999", `""`, "[]", "{}", `{"":""}`, "{", "}", `{"a":}`,
		"\x00\x01\x02", "\xff\xfe\xfd", `{"vm_path":"\ud800"}`, deep, strings.Repeat("A", 2<<20),
		`{"vm_path":` + strings.Repeat(`"x"`, 1) + strings.Repeat(",", 1000) + `}`,
		`{"job_ids":[` + strings.Repeat(`"a",`, 20000) + `"a"]}`,
		`{"limit":99999999999999999999}`, `{"offset":-5}`, `{"status":{"$ne":1}}`,
		`{"id":"../../../etc/passwd","schedule":"* * * * *","job_template":{}}`,
		`{"id":"s","schedule":"61 25 * * *","job_template":{}}`,
		`{"url":"javascript:alert(1)","events":["job.completed"]}`,
		`{"url":"http://user:pass@127.0.0.1/","events":["job.completed"]}`,
		`{"url":"http://127.0.0.1:1/","events":["no.such.event"]}`,
		`{"agent":"` + strings.Repeat("x", 500) + `"}`,
		`{"agent":"a","job_id":"j","attempt":-1}`,
		`{"agent":"a","credential_sha256":"` + strings.Repeat("A", 64) + `"}`, `{"agent":"a","credential_sha256":""}`,
		`{"id":"x","raft_addr":"nope","api_addr":"nope"}`,
		valid + valid, strings.Replace(valid, `"kvm"`, `"kvm","extra":1`, 1),
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 150; i++ { // byte-level mutations of a valid submit
		b := []byte(valid)
		for k := 0; k < 1+rng.Intn(4); k++ {
			b[rng.Intn(len(b))] = byte(rng.Intn(256))
		}
		bodies = append(bodies, string(b))
	}
	endpoints := []struct{ method, path string }{
		{"POST", "/jobs/submit"}, {"POST", "/jobs/query"}, {"POST", "/jobs/cancel"},
		{"GET", "/jobs/%00"}, {"GET", "/jobs/" + strings.Repeat("z", 5000)},
		{"POST", "/schedules"}, {"PUT", "/schedules/nope"}, {"POST", "/schedules/nope/trigger"},
		{"POST", "/webhooks"}, {"DELETE", "/webhooks/-1"}, {"DELETE", "/webhooks/99999999999999999999"},
		{"POST", "/webhooks/test"}, {"POST", "/cluster/join"}, {"DELETE", "/cluster/nodes/%2e%2e"},
		{"POST", "/agent/v1/heartbeat"}, {"POST", "/agent/v1/progress"}, {"POST", "/agent/v1/complete"},
		{"POST", "/agent/v1/fail"}, {"POST", "/agent/v1/commit"}, {"POST", "/agent/v1/warm"}, {"POST", "/jobs/nope/cutover"},
		{"PATCH", "/jobs/submit"}, {"GET", "/ws"},
		{"POST", "/agent/v1/enroll"}, {"POST", "/agent/v1/rotate"}, {"POST", "/agents/%2e%2e/forget"},
		{"POST", "/agents/" + strings.Repeat("n", 300) + "/rotate"},
	}
	acceptedJobs := 0
	sent := 0
	for _, ep := range endpoints {
		for _, body := range bodies {
			if ep.path == "/agent/v1/lease" {
				continue // a valid lease long-polls; covered by the agent tests
			}
			r, err := http.NewRequest(ep.method, base+ep.path, strings.NewReader(body))
			if err != nil {
				continue // the client refuses some paths itself
			}
			r.Header.Set("Content-Type", "application/json")
			var resp *http.Response
			var b []byte
			for attempt := 0; ; attempt++ {
				r.Body = io.NopCloser(strings.NewReader(body))
				resp, err = client.Do(r)
				if err != nil {
					t.Fatalf("%s %s: transport error (node down?): %v", ep.method, ep.path, err)
				}
				b, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
				// A 503 with Retry-After is the one 5xx allowed: no leader for a moment (an
				// election on a loaded machine); a client retries it.
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || attempt == 5 {
					break
				}
				time.Sleep(time.Second)
			}
			sent++
			if resp.StatusCode >= 500 {
				t.Fatalf("%s %s with %.80q: %d %s", ep.method, ep.path, body, resp.StatusCode, b)
			}
			if resp.StatusCode >= 400 {
				var e proto.ErrorResponse
				if json.Unmarshal(b, &e) != nil || e.Error == "" {
					t.Fatalf("%s %s: %d without an error body: %.200q", ep.method, ep.path, resp.StatusCode, b)
				}
			}
			if ep.path == "/jobs/submit" && ep.method == "POST" && resp.StatusCode == http.StatusCreated {
				acceptedJobs++
			}
			if bytes.Contains(b, []byte("s3cret!")) {
				t.Fatalf("password leaked by %s %s", ep.method, ep.path)
			}
		}
	}
	if got := c.State.TotalJobs(); got != acceptedJobs {
		t.Fatalf("state holds %d jobs, %d were acknowledged", got, acceptedJobs)
	}
	if code, _ := post(t, base+"/jobs/submit", jobBody("DC0/vm/still-alive")); code != http.StatusCreated {
		t.Fatalf("node unhealthy after %d hostile requests: %d", sent, code)
	}
	t.Logf("%d hostile requests, %d accepted submits, no 5xx", sent, acceptedJobs)
	_ = fmt.Sprint
}
