package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
)

// TestJobsValidate: `hyperctl jobs validate FILE` against a controller and the vCenter
// simulator: a table of concerns, exit 1 on a critical one, 0 otherwise; JSON with -o json.
func TestJobsValidate(t *testing.T) {
	nodes := controller.StartTestCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sim, err := vcsim.Start(ctx, vcsim.Config{VMs: 0, DiskSize: 64 << 20, Logger: slog.New(slog.DiscardHandler),
		Shapes: []vcsim.Shape{{Name: "plain"}, {Name: "rdm", RDM: true}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	job := func(vm string) string {
		return fmt.Sprintf("vm_path: DC0/vm/%s\nsource: {type: vsphere, vcenter_url: %q, username: %s, password: %s, thumbprint: %q}\ndestination: {type: kvm}\n",
			vm, sim.URL.String(), sim.Username, sim.Password, sim.Thumbprint)
	}
	env := map[string]string{"HYPERSDK_SERVER": nodes[0].URL()}
	both := writeFile(t, "both.yaml", job("plain")+"---\n"+job("rdm"))
	plain := writeFile(t, "plain.yaml", job("plain"))

	r := hyperctl(t, env, "", "jobs", "validate", both)
	if r.code != 1 || !strings.Contains(r.stdout, "DC0/vm/rdm") || !strings.Contains(r.stdout, "critical") ||
		!strings.Contains(r.stdout, "disk.rdm") || !strings.Contains(r.stdout, "fix: convert the RDM") ||
		!strings.Contains(r.stderr, "1 of 2 jobs have critical concerns") {
		t.Fatalf("validate both: %s", r)
	}
	// No agent in this fleet: the job would wait, which is a warning, not a refusal.
	r = hyperctl(t, env, "", "jobs", "validate", "-f", plain)
	if r.code != 0 || !strings.Contains(r.stdout, "fleet.no_agents") || !strings.Contains(r.stdout, "0 critical") {
		t.Fatalf("validate plain: %s", r)
	}
	r = hyperctl(t, env, "", "jobs", "validate", both, "-o", "json")
	var res []proto.ValidationResult
	mustJSON(t, r.stdout, &res)
	if r.code != 1 || len(res) != 2 || res[0].Critical() || !res[1].Critical() {
		t.Fatalf("validate json: %s", r)
	}
	if r = hyperctl(t, env, "", "jobs", "validate"); r.code != 2 {
		t.Fatalf("validate without a file: %s", r)
	}
	if strings.Contains(r.stdout+r.stderr, sim.Password) && sim.Password != "" {
		t.Fatalf("password shown: %s", r)
	}
}
