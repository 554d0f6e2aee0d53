package controller_test

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

const (
	adminTok  = "admin-token-0123456789"
	viewerTok = "viewer-token-0123456789"
)

func authConfig(t *testing.T, id, dir string, join ...string) controller.Config {
	cfg := controller.TestConfig(t, id, dir, join...)
	sum := sha256.Sum256([]byte(viewerTok))
	cfg.Auth.Tokens = []api.Token{
		{Name: "ops", Token: adminTok, Role: api.RoleAdmin},
		{Name: "dash", TokenSHA256: hex.EncodeToString(sum[:]), Role: api.RoleViewer},
	}
	return cfg
}

func req(t *testing.T, client *http.Client, method, url, token, body string) int {
	t.Helper()
	r, _ := http.NewRequest(method, url, strings.NewReader(body))
	if method != http.MethodGet {
		// No-token mode refuses writes that do not say JSON (a browser's cross-site form).
		r.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestTokensAndRoles(t *testing.T) {
	// Two nodes: writes through the follower are forwarded with the caller's token, and the
	// joining node authenticates with its own admin token.
	a, err := controller.New(authConfig(t, "a", t.TempDir()), controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	controller.WaitFor(t, 5*time.Second, "leader", a.Node.IsLeader)
	b, err := controller.New(authConfig(t, "b", t.TempDir(), a.APIAddr()), controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	controller.WaitFor(t, 10*time.Second, "b joined with its token", func() bool { return len(b.State.Nodes()) == 2 })

	job := string(jobBody("DC0/vm/auth"))
	c := http.DefaultClient
	cases := []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"health open", "GET", "/health", "", "", 200},
		{"status needs token", "GET", "/status", "", "", 401},
		{"wrong token", "GET", "/status", "nope-nope-nope-nope", "", 401},
		{"viewer reads", "GET", "/status", viewerTok, "", 200},
		{"viewer queries", "POST", "/jobs/query", viewerTok, `{}`, 200},
		{"viewer metrics", "GET", "/metrics", viewerTok, "", 200},
		{"viewer validates (400: the test's vCenter is not there)", "POST", "/jobs/validate", viewerTok, job, 400},
		{"viewer cannot submit", "POST", "/jobs/submit", viewerTok, job, 403},
		{"viewer cannot cancel", "POST", "/jobs/cancel", viewerTok, `{"status":"pending"}`, 403},
		{"viewer cannot remove nodes", "DELETE", "/cluster/nodes/b", viewerTok, "", 403},
		// Issue 18: /vms/* log in to a vCenter the caller names, from the controller's
		// network position: not a viewer's read.
		{"viewer cannot list VMs", "GET", "/vms/list?vcenter_url=vc.example&username=u&password=p", viewerTok, "", 403},
		{"viewer cannot read a VM", "GET", "/vms/info?vcenter_url=vc.example&username=u&password=p&vm_path=x", viewerTok, "", 403},
		{"admin lists VMs", "GET", "/vms/list?username=u&password=p", adminTok, "", 400},
		{"admin submits via follower", "POST", "/jobs/submit", adminTok, job, 201},
		{"no token submit", "POST", "/jobs/submit", "", job, 401},
		{"agent api without join token or admin", "POST", "/agent/v1/heartbeat", viewerTok, `{"agent":"x","leases":[]}`, 401},
		// Issue 18: an admin token used to pass the agent API (and receive clear passwords).
		{"agent api with admin token", "POST", "/agent/v1/heartbeat", adminTok, `{"agent":"x","leases":[]}`, 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := req(t, c, tc.method, b.URL()+tc.path, tc.token, tc.body); got != tc.want {
				t.Fatalf("got %d, want %d", got, tc.want)
			}
		})
	}
}

func TestRefusesNonLoopbackWithoutAuth(t *testing.T) {
	ip := nonLoopbackIP(t)
	cfg := controller.TestConfig(t, "open", t.TempDir())
	cfg.API.Addr = net.JoinHostPort(ip, "0")
	_, err := controller.New(cfg, controller.TestLogger(t))
	if err == nil || !strings.Contains(err.Error(), "without authentication") {
		t.Fatalf("want a refusal, got %v", err)
	}
	cfg.Auth.InsecureNoAuth = true
	cfg.API.Advertise = "127.0.0.1:1" // not dialled in this test
	c, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatalf("--insecure-no-auth: %v", err)
	}
	c.Close()
}

// nonLoopbackIP finds an address of this host that is not loopback (we only bind it; the
// test sends no traffic to it).
func nonLoopbackIP(t *testing.T) string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address on this host")
	return ""
}

func TestRateLimit(t *testing.T) {
	cfg := controller.TestConfig(t, "rl", t.TempDir())
	cfg.API.RateLimit = api.RateLimit{RequestsPerSecond: 5, Burst: 5}
	c, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// /health answers 200 once the node serves its state (a new node leads first).
	controller.WaitFor(t, 10*time.Second, "the node leads", func() bool { return c.Node.Sync().CaughtUp })
	var got429 bool
	for i := 0; i < 20 && !got429; i++ {
		resp, err := http.Get(c.URL() + "/status")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			got429 = resp.Header.Get("Retry-After") != ""
		}
	}
	if !got429 {
		t.Fatal("20 requests at once with a limit of 5/s never got 429 with Retry-After")
	}
	if code := req(t, http.DefaultClient, "GET", c.URL()+"/health", "", ""); code != 200 {
		t.Fatalf("/health must not be rate limited: %d", code)
	}
}

// TestTLSCluster: two nodes serving TLS with a test CA; writes through the follower are
// forwarded over TLS; a client without the CA is refused.
func TestTLSCluster(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile := fleettest.WriteTestCA(t, dir)
	mk := func(id string, join ...string) *controller.Controller {
		cfg := controller.TestConfig(t, id, t.TempDir(), join...)
		cfg.API.TLS = controller.TLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile}
		c, err := controller.New(cfg, controller.TestLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a := mk("a")
	controller.WaitFor(t, 5*time.Second, "leader", a.Node.IsLeader)
	b := mk("b", a.APIAddr())
	controller.WaitFor(t, 10*time.Second, "b joined over TLS", func() bool { return len(b.State.Nodes()) == 2 && len(a.State.Nodes()) == 2 })
	if !strings.HasPrefix(b.URL(), "https://") {
		t.Fatalf("URL %s", b.URL())
	}
	pem, _ := os.ReadFile(caFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	good := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if code := req(t, good, "POST", b.URL()+"/jobs/submit", "", string(jobBody("DC0/vm/tls"))); code != 201 {
		t.Fatalf("submit over TLS via follower: %d", code)
	}
	if _, err := http.Get(b.URL() + "/health"); err == nil {
		t.Fatal("a client without the CA must not trust the controller")
	}
}

var _ = fmt.Sprint
