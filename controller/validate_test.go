package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent"
	"github.com/hypersdk/hypersdk/agent/migrate"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/config"
	"github.com/hypersdk/hypersdk/shared/vcsim"
)

const validateJoinToken = "validate-join-token-0123456789abcdef"

// validationFleet is a controller that validates at submit, a real agent (the migration
// pipeline on libvirt's test:///default driver: network "default", domain "test") in its
// gossip pool and serving its facts, and a simulated vCenter with VMs of every shape.
type validationFleet struct {
	ctl   *controller.Controller
	agent *agent.Agent
	sim   *vcsim.Sim
}

func startValidationFleet(t testing.TB, vms int, shapes []vcsim.Shape) *validationFleet {
	t.Helper()
	on := true
	nodes := controller.StartTestClusterWith(t, 1, func(i int, cfg *controller.Config) {
		cfg.Validation.OnSubmit = &on
		cfg.Agents.JoinToken = validateJoinToken
	})
	ctl := nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sim, err := vcsim.Start(ctx, vcsim.Config{VMs: vms, DiskSize: 64 << 20, Shapes: shapes,
		Username: "validator", Password: "pw-validate", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("vcsim: %v", err)
	}
	t.Cleanup(sim.Close)

	dir := t.TempDir()
	acfg := agent.DefaultConfig()
	acfg.Name, acfg.Controllers, acfg.JoinToken = "kvm-v1", []string{ctl.URL()}, validateJoinToken
	acfg.APIAddr, acfg.LibvirtURI, acfg.StorageDir = "127.0.0.1:0", "test:///default", dir
	acfg.Gossip = agent.GossipConfig{Gossip: config.Gossip{Addr: "127.0.0.1:0", Join: []string{ctl.GossipAddr()}}, Fast: true}
	pipe, err := migrate.New(migrate.Config{StorageDir: dir, LibvirtURI: "test:///default", DefaultNetwork: "default",
		GuestConversion: migrate.GuestConversionAuto, Logger: controller.TestLogger(t)})
	if err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	actx, acancel := context.WithCancel(context.Background())
	a, err := agent.New(actx, acfg, pipe, nil, controller.TestLogger(t))
	if err != nil {
		acancel()
		t.Fatalf("agent: %v", err)
	}
	// The agent is not Run: it serves its facts and sits in the pool, and leases nothing.
	t.Cleanup(func() { acancel(); _ = a.Member.Shutdown() })
	controller.WaitFor(t, 15*time.Second, "agent in the fleet", func() bool {
		in, ok := ctl.Fleet.Get("kvm-v1")
		return ok && in.State == proto.AgentAlive && in.APIAddr != ""
	})
	return &validationFleet{ctl: ctl, agent: a, sim: sim}
}

func (f *validationFleet) job(vm string) proto.JobDefinition {
	return proto.JobDefinition{VMPath: "DC0/vm/" + vm, Destination: proto.Destination{Type: "kvm"},
		Source: proto.Source{Type: "vsphere", VCenterURL: f.sim.URL.String(), Username: "validator", Password: "pw-validate", Thumbprint: f.sim.Thumbprint}}
}

func postJSON(t testing.TB, url string, v any) (int, []byte) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return postBytes(t, url, b)
}

func postBytes(t testing.TB, url string, b []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

func concernIDs(r proto.ValidationResult) map[string]proto.ConcernCategory {
	m := map[string]proto.ConcernCategory{}
	for _, c := range r.Concerns {
		m[c.ID] = c.Category
	}
	return m
}

var validationShapes = []vcsim.Shape{
	{Name: "plain"}, {Name: "rdm", RDM: true}, {Name: "test"}, {Name: "running", PowerOn: true},
	{Name: "big", CPUs: 512, MemoryMB: 16 << 20}, {Name: "usb", USBPassthrough: true}, {Name: "vlan10", Network: "Prod-VLAN10"},
}

// TestValidateContract: POST /jobs/validate against a real vCenter simulator and a real
// agent, single and batch, stores nothing; submit refuses criticals with 400 and keeps
// warnings; bad input and bad vCenters are 4xx.
func TestValidateContract(t *testing.T) {
	f := startValidationFleet(t, 0, validationShapes)
	base := f.ctl.URL()

	t.Run("one VM that passes", func(t *testing.T) {
		code, body := postJSON(t, base+"/jobs/validate", f.job("plain"))
		var r proto.ValidationResult
		if code != http.StatusOK || json.Unmarshal(body, &r) != nil {
			t.Fatalf("%d %s", code, body)
		}
		if r.VMPath != "DC0/vm/plain" || r.Agent != "kvm-v1" || r.Critical() || r.Concerns == nil {
			t.Fatalf("%s", body)
		}
		if strings.Contains(string(body), "pw-validate") {
			t.Fatal("the password is in the answer")
		}
	})

	t.Run("batch: each rule on its VM", func(t *testing.T) {
		vlan := f.job("vlan10")
		vlan.Options.NetworkMapping = map[string]string{"Prod-VLAN10": "bridge:br-vlan10-nowhere"}
		batch := []proto.JobDefinition{f.job("plain"), f.job("rdm"), f.job("test"), f.job("running"), f.job("big"), f.job("nope"), vlan, f.job("usb")}
		code, body := postJSON(t, base+"/jobs/validate", batch)
		var rs []proto.ValidationResult
		if code != http.StatusOK || json.Unmarshal(body, &rs) != nil || len(rs) != len(batch) {
			t.Fatalf("%d %s", code, body)
		}
		want := []struct {
			id  string
			cat proto.ConcernCategory
		}{
			{"", ""}, {"disk.rdm", proto.ConcernCritical}, {"domain.exists", proto.ConcernCritical},
			{"vm.powered_on", proto.ConcernCritical}, {"agent.cpu", proto.ConcernCritical}, {"vm.not_found", proto.ConcernCritical},
			{"network.missing", proto.ConcernCritical}, {"device.usb_passthrough", proto.ConcernWarning},
		}
		for i, w := range want {
			if rs[i].VMPath != batch[i].VMPath {
				t.Errorf("result %d is for %s, want %s", i, rs[i].VMPath, batch[i].VMPath)
			}
			if w.id == "" {
				if rs[i].Critical() {
					t.Errorf("%s: %+v", rs[i].VMPath, rs[i].Concerns)
				}
				continue
			}
			if got := concernIDs(rs[i])[w.id]; got != w.cat {
				t.Errorf("%s: want %s %s, got %+v", rs[i].VMPath, w.cat, w.id, rs[i].Concerns)
			}
		}
		if concernIDs(rs[4])["agent.memory"] != proto.ConcernCritical {
			t.Errorf("big: %+v", rs[4].Concerns)
		}
		if n := f.ctl.State.Counts(); n[proto.StatusPending] != 0 {
			t.Fatalf("validate stored jobs: %v", n)
		}
	})

	t.Run("submit: critical is 400 with the concerns, nothing stored", func(t *testing.T) {
		code, body := postJSON(t, base+"/jobs/submit", f.job("rdm"))
		var vf proto.ValidationFailed
		if code != http.StatusBadRequest || json.Unmarshal(body, &vf) != nil || len(vf.Results) != 1 {
			t.Fatalf("%d %s", code, body)
		}
		if concernIDs(vf.Results[0])["disk.rdm"] != proto.ConcernCritical || !strings.Contains(vf.Error, "raw device mapping") {
			t.Fatalf("%s", body)
		}
		if n := f.ctl.State.Counts(); n[proto.StatusPending] != 0 {
			t.Fatalf("a refused submit stored a job: %v", n)
		}
	})

	t.Run("submit: warnings go into the job", func(t *testing.T) {
		code, body := postJSON(t, base+"/jobs/submit", f.job("usb"))
		var sr proto.SubmitResponse
		if code != http.StatusCreated || json.Unmarshal(body, &sr) != nil {
			t.Fatalf("%d %s", code, body)
		}
		_, j := getJob(t, base, sr.JobID)
		if len(j.Concerns) == 0 || concernIDs(proto.ValidationResult{Concerns: j.Concerns})["device.usb_passthrough"] != proto.ConcernWarning {
			t.Fatalf("job concerns: %+v", j.Concerns)
		}
		if len(j.Warnings) == 0 || !strings.HasPrefix(j.Warnings[0], "validation: ") || !strings.Contains(j.Warnings[0], "USB") {
			t.Fatalf("job warnings: %q", j.Warnings)
		}
		// The source ESXi host, for the per-host limit of placement.
		if h := j.Definition.SourceHost; h == nil || h.Moref == "" || h.Name == "" || h.Disks != 1 {
			t.Fatalf("source host: %+v", h)
		}
		forged := f.job("plain")
		forged.SourceHost = &proto.SourceHost{Moref: "host-1", Disks: 0}
		if code, body := postJSON(t, base+"/jobs/submit", forged); code != http.StatusBadRequest || !strings.Contains(string(body), "source_host") {
			t.Fatalf("a client-set source_host: %d %s", code, body)
		}
	})

	t.Run("submit: skip_validation stores what validation refuses", func(t *testing.T) {
		def := f.job("rdm")
		def.Options.SkipValidation = true
		if code, body := postJSON(t, base+"/jobs/submit", def); code != http.StatusCreated {
			t.Fatalf("%d %s", code, body)
		}
	})

	t.Run("bad input and bad vCenters are 4xx naming the cause", func(t *testing.T) {
		badPw := f.job("plain")
		badPw.Source.Password = "wrong"
		unreachable := f.job("plain")
		unreachable.Source.VCenterURL = "https://127.0.0.1:1/sdk"
		noPw := f.job("plain")
		noPw.Source.Password = ""
		for _, tc := range []struct {
			name string
			body []byte
			want string
		}{
			{"bad credentials", mustJSON(badPw), "credentials"},
			{"unreachable", mustJSON(unreachable), "127.0.0.1:1"},
			{"no password", mustJSON(noPw), "source.password is required"},
			{"malformed", []byte(`{"vm_path":`), "malformed JSON"},
			{"unknown field", []byte(`{"vm_path":"x","bogus":1}`), "unknown field"},
			{"empty batch", []byte(`[]`), "no job definition"},
			{"bad batch item", []byte(`[{"vm_path":"x"}]`), "job 1"},
		} {
			for _, path := range []string{"/jobs/validate", "/jobs/submit"} {
				if path == "/jobs/submit" && bytes.HasPrefix(tc.body, []byte("[")) {
					continue
				}
				code, body := postBytes(t, base+path, tc.body)
				var e proto.ErrorResponse
				_ = json.Unmarshal(body, &e)
				if code < 400 || code >= 500 || !strings.Contains(e.Error, tc.want) {
					t.Errorf("%s %s: %d %s", tc.name, path, code, body)
				}
				if strings.Contains(string(body), "wrong") && tc.name == "bad credentials" {
					t.Errorf("the password is in the answer: %s", body)
				}
			}
		}
	})

	t.Run("agent facts need the join token", func(t *testing.T) {
		resp, err := http.Get("http://" + f.agent.APIAddr() + proto.AgentFactsPath)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("facts without the token: %d", resp.StatusCode)
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+f.agent.APIAddr()+proto.AgentFactsPath, nil)
		req.Header.Set(proto.AgentTokenHeader, validateJoinToken)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var facts proto.AgentFacts
		if err := json.NewDecoder(resp.Body).Decode(&facts); err != nil || facts.Name != "kvm-v1" {
			t.Fatalf("facts: %v %+v", err, facts)
		}
		if len(facts.Networks) == 0 || facts.Networks[0].Name != "default" || len(facts.Domains) == 0 || facts.Domains[0].Name != "test" {
			t.Fatalf("test:///default should have network default and domain test: %+v", facts)
		}
	})
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// BenchmarkValidateBatch100: one POST /jobs/validate of 100 VMs (one vCenter session, the
// agent's facts asked once), the "under a second against the simulator".
func BenchmarkValidateBatch100(b *testing.B) {
	f := startValidationFleet(b, 100, nil)
	batch := make([]proto.JobDefinition, 100)
	for i := range batch {
		batch[i] = f.job("vm-" + strconv.Itoa(i+1))
	}
	body := mustJSON(batch)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		code, out := postBytes(b, f.ctl.URL()+"/jobs/validate", body)
		if code != http.StatusOK {
			b.Fatalf("%d %s", code, out)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/batch")
}

// TestScheduleRunValidation: a schedule's run validates the VMs its glob expands to; the
// ones with a critical concern get no job and are named in the run's outcome, the others
// run with their concerns.
func TestScheduleRunValidation(t *testing.T) {
	f := startValidationFleet(t, 0, validationShapes)
	base := f.ctl.URL()
	tmpl := f.job("*")
	code, body := postJSON(t, base+"/schedules", proto.ScheduleRequest{ID: "wave-1", Schedule: "0 3 * * *", JobTemplate: &tmpl})
	if code != http.StatusCreated {
		t.Fatalf("create schedule: %d %s", code, body)
	}
	code, body = postBytes(t, base+"/schedules/wave-1/trigger", nil)
	var tr proto.ScheduleTriggerResponse
	if code != http.StatusOK || json.Unmarshal(body, &tr) != nil {
		t.Fatalf("trigger: %d %s", code, body)
	}
	// vm-1 (the simulator always makes one numbered VM), plain, usb and vlan10 pass; rdm,
	// test (a domain of that name on the agent), running and big do not.
	if len(tr.JobIDs) != 4 {
		var paths []string
		for _, id := range tr.JobIDs {
			_, j := getJob(t, base, id)
			paths = append(paths, j.Definition.VMPath)
		}
		t.Fatalf("run created %d jobs, want 4: %v", len(tr.JobIDs), paths)
	}
	withConcerns := 0
	for _, id := range tr.JobIDs {
		_, j := getJob(t, base, id)
		if j.Definition.ScheduleID != "wave-1" {
			t.Errorf("job %s not of the schedule", id)
		}
		for _, bad := range []string{"rdm", "test", "running", "big"} {
			if j.Definition.VMPath == "DC0/vm/"+bad {
				t.Errorf("a job was created for %s", bad)
			}
		}
		if len(j.Concerns) > 0 {
			withConcerns++
		}
	}
	if withConcerns == 0 {
		t.Error("no job kept its concerns (usb has a warning)")
	}
	resp, err := http.Get(base + "/schedules/wave-1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sc proto.Schedule
	if err := json.NewDecoder(resp.Body).Decode(&sc); err != nil {
		t.Fatal(err)
	}
	refused := map[string]bool{}
	for _, r := range sc.LastRunRefused {
		if !r.Critical() {
			t.Errorf("refused without a critical concern: %+v", r)
		}
		refused[r.VMPath] = true
	}
	for _, vm := range []string{"DC0/vm/rdm", "DC0/vm/test", "DC0/vm/running", "DC0/vm/big"} {
		if !refused[vm] {
			t.Errorf("%s not in last_run_refused: %+v", vm, sc.LastRunRefused)
		}
	}
}
