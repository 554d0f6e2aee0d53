package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/shared/netpolicy"
	"github.com/hypersdk/hypersdk/shared/testutil"
	"github.com/hypersdk/hypersdk/shared/vcsim"
)

func TestVMDiscovery(t *testing.T) {
	cfg := vcsim.DefaultConfig()
	cfg.VMs, cfg.DisksPerVM, cfg.DiskSize, cfg.PowerOn = 2, 2, 8<<20, true
	cfg.Username, cfg.Password = "admin", "vc-pass-1"
	sim, err := vcsim.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	c := controller.StartTestCluster(t, 1)[0]
	base := c.URL()
	host := sim.URL.Host
	q := func(extra string, pw string) string {
		return fmt.Sprintf("vcenter_url=%s&username=admin&password=%s&insecure=true%s", url.QueryEscape(host), url.QueryEscape(pw), extra)
	}
	vmPath := strings.TrimPrefix(sim.VMs[0].Path, "/")
	action := func(pw, extra string) string {
		return fmt.Sprintf(`{"vcenter_url":%q,"username":"admin","password":%q,"insecure":true,"vm_path":%q%s}`, host, pw, vmPath, extra)
	}
	cases := []struct {
		name, method, path, body string
		code                     int
		contains                 string
	}{
		{"list", "GET", "/vms/list?" + q("", "vc-pass-1"), "", 200, `"total":2`},
		{"list pattern", "GET", "/vms/list?" + q("&pattern="+url.QueryEscape(vmPath), "vc-pass-1"), "", 200, `"total":1`},
		{"list bad password", "GET", "/vms/list?" + q("", "wrong"), "", 400, "credentials"},
		{"list untrusted", "GET", "/vms/list?vcenter_url=" + url.QueryEscape(host) + "&username=admin&password=vc-pass-1", "", 400, "thumbprint"},
		{"list missing url", "GET", "/vms/list?username=a&password=b", "", 400, "vcenter_url"},
		{"info", "GET", "/vms/info?" + q("&vm_path="+url.QueryEscape(vmPath), "vc-pass-1"), "", 200, `"num_virtual_disks":2`},
		{"info not found", "GET", "/vms/info?" + q("&vm_path=DC0/vm/nope", "vc-pass-1"), "", 404, "not found"},
		{"info no path", "GET", "/vms/info?" + q("", "vc-pass-1"), "", 400, "vm_path"},
		{"remove cdrom", "POST", "/vms/remove-cdrom", action("vc-pass-1", ""), 200, "CD-ROM devices removed"},
		{"shutdown", "POST", "/vms/shutdown", action("vc-pass-1", ""), 200, "VM shutdown initiated"},
		{"poweroff", "POST", "/vms/poweroff", action("vc-pass-1", ""), 200, "VM powered off"},
		{"poweroff bad creds", "POST", "/vms/poweroff", action("nope", ""), 400, "credentials"},
		{"action unknown field", "POST", "/vms/poweroff", action("vc-pass-1", `,"force":true`), 400, "force"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, b := do(t, tc.method, base+tc.path, tc.body)
			if code != tc.code || !strings.Contains(string(b), tc.contains) {
				t.Fatalf("%d %s; want %d containing %q", code, b, tc.code, tc.contains)
			}
			if strings.Contains(string(b), "vc-pass-1") {
				t.Fatalf("password echoed: %s", b)
			}
		})
	}
	// The document's info shape.
	_, _, b := do(t, "GET", base+"/vms/info?"+q("&vm_path="+url.QueryEscape(vmPath), "vc-pass-1"), "")
	var info map[string]any
	_ = json.Unmarshal(b, &info)
	for _, k := range []string{"name", "path", "uuid", "power_state", "hardware", "disks"} {
		if _, ok := info[k]; !ok {
			t.Fatalf("info lacks %q: %s", k, b)
		}
	}
	if info["power_state"] != "poweredOff" {
		t.Fatalf("VM should be off after poweroff: %v", info["power_state"])
	}
}

// Issue 18: a viewer could make the controller connect anywhere with /vms/list, and the
// answers told a refused port from an open one (405 / EOF / refused). Now /vms/* need an
// admin, loopback and private targets are refused unless allowed, before any connection,
// and every way of not reaching a vCenter is the same answer.
func TestVMDiscoveryOutboundPolicy(t *testing.T) {
	closed, _ := testutil.CountingListener(t, false)
	web, _ := testutil.CountingListener(t, true)
	refusing, _ := testutil.CountingListener(t, false)
	// A port nothing listens on: take one and give it back.
	if ln, err := net.Listen("tcp", refusing); err == nil {
		ln.Close()
	}
	strict := controller.StartTestClusterWith(t, 1, func(i int, cfg *controller.Config) {
		cfg.Security = controller.SecurityConfig{}
	})[0]
	lenient := controller.StartTestCluster(t, 1)[0]
	list := func(base, target string) (int, string) {
		code, _, b := do(t, "GET", base+"/vms/list?vcenter_url="+url.QueryEscape(target)+"&username=u&password=p&insecure=true", "")
		return code, string(b)
	}

	t.Run("allow-list off: no connection is made", func(t *testing.T) {
		addr, accepted := testutil.CountingListener(t, true)
		_, port, _ := net.SplitHostPort(addr)
		for _, target := range []string{"https://" + addr + "/sdk", "https://localhost:" + port + "/sdk", addr, "https://[::ffff:127.0.0.1]:" + port + "/sdk"} {
			code, b := list(strict.URL(), target)
			if code != 400 || !strings.Contains(b, `"vCenter unreachable"`) {
				t.Fatalf("%s: %d %s", target, code, b)
			}
		}
		if n := accepted.Load(); n != 0 {
			t.Fatalf("the controller connected %d times to a loopback target with allow_private_targets off", n)
		}
		code, b := list(strict.URL(), "http://vcenter.example.com/sdk")
		if code != 400 || !strings.Contains(b, "https") {
			t.Fatalf("http target: %d %s", code, b)
		}
		for _, u := range []string{"https://" + addr + "/hook", "http://hooks.example.com/x", "https://169.254.169.254/latest"} {
			code, _, wb := do(t, "POST", strict.URL()+"/webhooks", `{"url":"`+u+`","events":["job.completed"]}`)
			if code != 400 {
				t.Fatalf("webhook %s added: %d %s", u, code, wb)
			}
		}
		if n := accepted.Load(); n != 0 {
			t.Fatalf("%d connections", n)
		}
	})

	t.Run("one answer for refused, EOF and not-a-vCenter", func(t *testing.T) {
		var answers []string
		for _, target := range []string{refusing, closed, web} {
			code, b := list(lenient.URL(), "https://"+target+"/sdk")
			if code != 400 {
				t.Fatalf("%s: %d %s", target, code, b)
			}
			answers = append(answers, b)
		}
		if answers[0] != answers[1] || answers[1] != answers[2] || !strings.Contains(answers[0], `"vCenter unreachable"`) {
			t.Fatalf("answers differ per target: %q", answers)
		}
	})
}

// Link-local and metadata addresses are refused even with allow_private_targets, before
// any connection attempt: judged by the policy the controller dials with (no test sends
// traffic to them).
func TestMetadataAddressesAlwaysRefused(t *testing.T) {
	cfg := controller.TestConfig(t, "x", t.TempDir())
	pol := cfg.OutboundPolicy()
	if !pol.AllowPrivate {
		t.Fatal("test config should allow private targets")
	}
	for _, a := range []string{"169.254.169.254:443", "[fd00:ec2::254]:443", "[fe80::1]:443", "169.254.0.1:80"} {
		if err := pol.Control("tcp", a, nil); !errors.Is(err, netpolicy.ErrRefused) {
			t.Errorf("%s: %v, want refused before connecting", a, err)
		}
	}
}
