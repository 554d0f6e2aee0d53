package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/controller"
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
