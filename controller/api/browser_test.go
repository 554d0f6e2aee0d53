package api_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/proto"
)

// Issue 18: with no token (the default, on loopback) a page in a browser on the same host
// submitted a job with Content-Type text/plain from Origin http://evil.example (201), and
// read the API through DNS rebinding (Host: rebind.evil.example → 200).
func TestNoTokenModeRefusesBrowsersOfOtherSites(t *testing.T) {
	c := controller.StartTestClusterWith(t, 1, func(i int, cfg *controller.Config) {
		cfg.API.AllowedHosts = []string{"controller.example.internal"}
	})[0]
	base := c.URL()
	port := base[strings.LastIndex(base, ":")+1:]
	send := func(method, path, body string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		for k, v := range hdr {
			if k == "Host" {
				req.Host = v
				continue
			}
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	jsonCT := map[string]string{"Content-Type": "application/json"}
	// The same VM is submitted by several cases: a second active job of a VM is a 409
	// unless the job allows it (issue 17).
	validJob := strings.Replace(validJob, `"options":{`, `"options":{"allow_duplicate":true,`, 1)
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for a, b := range m {
			out[a] = b
		}
		return out
	}
	cases := []struct {
		name, method, path, body string
		hdr                      map[string]string
		code                     int
		errContains              string
	}{
		{"text/plain submit", "POST", "/jobs/submit", validJob, map[string]string{"Content-Type": "text/plain"}, 415, "Content-Type: application/json"},
		{"form submit", "POST", "/jobs/submit", validJob, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"},
		{"no content type", "POST", "/jobs/submit", validJob, nil, 415, "application/json"},
		{"bodyless write without content type", "POST", "/jobs/cancel", "", nil, 415, "application/json"},
		{"evil origin", "POST", "/jobs/submit", validJob, with(jsonCT, "Origin", "http://evil.example"), 403, "cross-origin"},
		{"null origin", "POST", "/jobs/submit", validJob, with(jsonCT, "Origin", "null"), 403, "cross-origin"},
		{"evil origin read", "GET", "/status", "", map[string]string{"Origin": "http://evil.example"}, 403, "cross-origin"},
		{"rebinding host query", "POST", "/jobs/query", "{}", with(jsonCT, "Host", "rebind.evil.example:"+port), 403, "does not name this controller"},
		{"rebinding host status", "GET", "/status", "", map[string]string{"Host": "rebind.evil.example:" + port}, 403, "does not name this controller"},
		{"rebinding host submit", "POST", "/jobs/submit", validJob, with(jsonCT, "Host", "rebind.evil.example"), 403, "does not name this controller"},
		{"rebinding host websocket", "GET", "/ws", "", map[string]string{"Host": "rebind.evil.example"}, 403, "does not name this controller"},
		{"health stays open", "GET", "/health", "", map[string]string{"Host": "lb-probe.example"}, 200, ""},
		{"json submit", "POST", "/jobs/submit", validJob, jsonCT, 201, ""},
		{"json with charset", "POST", "/jobs/submit", validJob, map[string]string{"Content-Type": "application/json; charset=utf-8"}, 201, ""},
		{"same origin (the dashboard)", "POST", "/jobs/submit", validJob, with(jsonCT, "Origin", base), 201, ""},
		{"localhost", "GET", "/status", "", map[string]string{"Host": "localhost:" + port}, 200, ""},
		{"configured name", "GET", "/status", "", map[string]string{"Host": "controller.example.internal:" + port}, 200, ""},
		{"address literal", "GET", "/status", "", map[string]string{"Host": "[::1]:" + port}, 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := c.State.Counts()[proto.StatusPending]
			code, b := send(tc.method, tc.path, tc.body, tc.hdr)
			if code != tc.code || !strings.Contains(b, tc.errContains) {
				t.Fatalf("%d %s, want %d containing %q", code, b, tc.code, tc.errContains)
			}
			if code >= 400 && c.State.Counts()[proto.StatusPending] != before {
				t.Fatal("a refused request stored a job")
			}
		})
	}
}

// With tokens a browser cannot act by itself (it never attaches a bearer token), so the
// guard stays out of the way of tools that send other headers.
func TestBrowserGuardOnlyWithoutTokens(t *testing.T) {
	c := controller.StartTestClusterWith(t, 1, func(i int, cfg *controller.Config) {
		cfg.Auth.Tokens = []api.Token{{Name: "ops", Token: "admin-token-0123456789", Role: api.RoleAdmin}}
	})[0]
	req, _ := http.NewRequest("GET", c.URL()+"/status", nil)
	req.Host = "controller.example.net"
	req.Header.Set("Authorization", "Bearer admin-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("with tokens, a DNS name in Host: %d", resp.StatusCode)
	}
}
