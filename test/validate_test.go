package test

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// TestE2EValidation: the real controller (validating at submit) and a real agent on the
// host's libvirtd. Mapped to a bridge the test creates, a VM passes and its migration runs;
// an unmapped NIC is judged against the agent's default network ("default"), critical
// where the host's libvirt has none. An RDM VM is refused with 400 and no job.
func TestE2EValidation(t *testing.T) {
	harness.RequireLibvirt(t)
	harness.Bin(t, "hypersdk-agent")
	dir := t.TempDir()
	name := harness.UniqueName(t)
	okVM, rdmVM := name+"-ok", name+"-rdm"
	sim := harness.StartSim(t, vcsim.Config{VMs: 0, DiskSize: 8 << 20, Username: "admin", Password: e2ePassword,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Shapes: []vcsim.Shape{{Name: okVM}, {Name: rdmVM, RDM: true}}})
	harness.CleanupDomain(t, okVM)
	harness.CleanupDomain(t, rdmVM)

	// A bridge with no address and no uplink (libvirt's own networks need iptables, which
	// this host may lack): a target the domain can start on.
	br := harness.Bridge(t)

	ctl := harness.StartController(t, dir, "c1", nil, "--fast-raft", "--validate-on-submit=true")
	harness.WaitFor(t, 20*time.Second, "controller leads", func() bool {
		var cl harness.ClusterView
		return harness.GetJSON(ctl.URL()+"/cluster", &cl) == 200 && cl.Leader.ID == "c1"
	})
	agent := harness.StartAgent(t, dir, "agent-val", []*harness.Controller{ctl})
	t.Cleanup(func() { agent.Stop(10 * time.Second) })
	harness.WaitFor(t, 20*time.Second, "agent in the fleet", func() bool {
		var a proto.AgentInfo
		return harness.GetJSON(ctl.URL()+"/agents/agent-val", &a) == 200 && a.State == proto.AgentAlive
	})
	job := func(vm string, mapping map[string]string) proto.JobDefinition {
		return proto.JobDefinition{VMPath: "DC0/vm/" + vm, Destination: proto.Destination{Type: "kvm"},
			Source:  proto.Source{Type: "vsphere", VCenterURL: sim.URL.String(), Username: "admin", Password: e2ePassword, Thumbprint: sim.Thumbprint},
			Options: proto.Options{ConversionMethod: "https", GuestConversion: new(bool), NetworkMapping: mapping}}
	}
	ids := func(r proto.ValidationResult) string {
		var s []string
		for _, c := range r.Concerns {
			s = append(s, string(c.Category)+" "+c.ID)
		}
		return strings.Join(s, ", ")
	}

	var res []proto.ValidationResult
	mapped := map[string]string{"VM Network": "bridge:" + br}
	booted := job(okVM, nil)
	booted.Options.VerifyBoot = true
	code, err := harness.PostJSON(ctl.URL()+"/jobs/validate", []proto.JobDefinition{job(okVM, nil), job(okVM, mapped), job(rdmVM, mapped), booted}, &res)
	if err != nil || code != http.StatusOK || len(res) != 4 {
		t.Fatalf("validate: %d %v %+v", code, err, res)
	}
	// The unmapped NIC goes to the agent's default network. When the host's libvirt has no
	// "default" network, the agent defines the NIC there anyway and warns (a warning), and
	// a job that starts the domain would fail (critical).
	_, defErr := harness.Virsh("net-info", "default")
	if (defErr != nil) != strings.Contains(ids(res[0]), "warning network.missing") {
		t.Errorf("unmapped NIC (default network present: %v): %s", defErr == nil, ids(res[0]))
	}
	if (defErr != nil) != strings.Contains(ids(res[3]), "critical network.missing") {
		t.Errorf("unmapped NIC, boot check (default network present: %v): %s", defErr == nil, ids(res[3]))
	}
	if res[1].Critical() || res[1].Agent != "agent-val" {
		t.Errorf("mapped to the test's network: agent %q, %s", res[1].Agent, ids(res[1]))
	}
	if !strings.Contains(ids(res[2]), "critical disk.rdm") {
		t.Errorf("rdm: %s", ids(res[2]))
	}

	var refused proto.ValidationFailed
	if code, _ := harness.PostJSON(ctl.URL()+"/jobs/submit", job(rdmVM, mapped), &refused); code != http.StatusBadRequest || len(refused.Results) != 1 {
		t.Fatalf("submit of the RDM VM: %d %+v", code, refused)
	}
	id := harness.Submit(t, ctl, job(okVM, mapped))
	j := harness.WaitTerminal(t, ctl, id, 3*time.Minute)
	if j.Status != proto.StatusCompleted || j.Definition.SourceHost == nil || j.Definition.SourceHost.Disks != 1 {
		t.Fatalf("the validated job: %s %v, source host %+v", j.Status, j.Error, j.Definition.SourceHost)
	}
	var all proto.QueryResponse
	if code, _ := harness.PostJSON(ctl.URL()+"/jobs/query", proto.QueryRequest{All: true}, &all); code != 200 || all.Total != 1 {
		t.Fatalf("jobs stored: %d (want only the validated one)", all.Total)
	}
}
