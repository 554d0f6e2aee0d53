package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// TestUnhealthyAgentGetsNoWork: real agent processes with a host fault. One has libvirt
// unreachable (a socket no daemon listens on), one points at a wrong controller URL.
// Each says so on its own /health (503, the failed check, advice that exists on a
// packaged host) and metrics, every controller's GET /agents and `hyperctl agents get`
// show it unhealthy, and a job for the broken host stays pending saying why instead of
// being leased (issue 17: the host leased the job, copied every disk and failed at
// define, three attempts in a row; the misconfigured agent was shown alive forever).
func TestUnhealthyAgentGetsNoWork(t *testing.T) {
	dir := t.TempDir()
	cs := harness.StartControllers(t, dir, 1)
	c := cs[0]
	noDaemon := "qemu+unix:///system?socket=" + filepath.Join(dir, "no-libvirtd.sock")
	broken := harness.StartUnhealthyAgent(t, dir, "kvm-nolibvirt", cs, "--libvirt-uri", noDaemon)
	lost := harness.StartAgent(t, dir, "kvm-lost", cs, "--controllers", fmt.Sprintf("http://127.0.0.1:%d", harness.FreePort(t)))

	var h agent.AgentHealth
	if code := harness.GetJSON("http://"+broken.APIAddr+"/health", &h); code != http.StatusServiceUnavailable ||
		h.Status != "unhealthy" || !slices.Equal(h.FailedChecks, []string{proto.HealthCheckLibvirt}) ||
		!strings.Contains(h.Reasons[0], "systemctl start libvirtd") || !strings.Contains(h.Reasons[0], noDaemon) {
		t.Fatalf("broken agent /health: %d %+v", code, h)
	}
	if strings.Contains(strings.Join(h.Reasons, " "), "host-setup.sh") {
		t.Fatalf("advice names a repository script: %q", h.Reasons)
	}
	resp, err := harness.Client.Get("http://" + broken.APIAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), `hypersdk_agent_health_check{check="libvirt"} 0`) ||
		!strings.Contains(string(m), `hypersdk_agent_health_check{check="storage_writable"} 1`) {
		t.Fatalf("agent metrics lack the failed libvirt check")
	}

	// The controller's view (gossip metadata) of both.
	for _, tc := range []struct{ name, check string }{{"kvm-nolibvirt", proto.HealthCheckLibvirt}, {"kvm-lost", proto.HealthCheckControllers}} {
		harness.WaitFor(t, 40*time.Second, tc.name+" shown unhealthy by the controller", func() bool {
			var ag proto.AgentInfo
			return harness.GetJSON(c.URL()+"/agents/"+tc.name, &ag) == http.StatusOK && !ag.Capacity.Healthy &&
				slices.Contains(ag.Capacity.FailedChecks, tc.check) && ag.State == proto.AgentAlive
		})
	}
	out, code := runHyperctl(t, c.URL(), "agents", "get", "kvm-nolibvirt")
	if code != 0 || !strings.Contains(out, "UNHEALTHY: libvirt") || !strings.Contains(out, "systemctl start libvirtd") {
		t.Fatalf("hyperctl agents get: exit %d\n%s", code, out)
	}
	if h := harness.GetJSON("http://"+lost.APIAddr+"/health", nil); h != http.StatusServiceUnavailable {
		t.Fatalf("agent with no controller answering: /health %d", h)
	}

	// A job for the broken host waits, saying why; it is never leased there.
	var def proto.JobDefinition
	if err := json.Unmarshal(harness.JobBody("DC0/vm/health-1"), &def); err != nil {
		t.Fatal(err)
	}
	def.Options.TargetAgent = "kvm-nolibvirt"
	id := harness.Submit(t, c, def)
	harness.WaitFor(t, 10*time.Second, "the job's pending reason names the unhealthy host", func() bool {
		var j proto.Job
		harness.GetJSON(c.URL()+"/jobs/"+id, &j)
		return j.Status == proto.StatusPending && strings.Contains(j.PendingReason, "unhealthy") && strings.Contains(j.PendingReason, "libvirt")
	})
	// The broken agent's lease loop runs every 2 s; give it several rounds to (not) lease.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var j proto.Job
		harness.GetJSON(c.URL()+"/jobs/"+id, &j)
		if j.Attempt != 0 || j.Status != proto.StatusPending {
			t.Fatalf("job leased to the broken host: %s attempt %d (%v)", j.Status, j.Attempt, j.Error)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
