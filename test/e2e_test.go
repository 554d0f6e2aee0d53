package test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// The end-to-end migration tests: the real hypersdk-controller and hypersdk-agent
// processes, the simulator (in this process) as vCenter, the host's qemu-img and nbdkit,
// and the real libvirtd at qemu:///system. A job goes in through the API and a domain comes
// out on libvirtd.

// e2ePassword is every job's vCenter password: the API, the agent's log and errors must
// never show it.
const e2ePassword = "e2e-Canary-pw-7"

const mib = 1 << 20

type migrationEnv struct {
	t     *testing.T
	dir   string
	sim   *vcsim.Sim
	ctl   *harness.Controller
	agent *harness.Agent
}

// agentSetup is extra environment and flags for the agent of a migrationEnv.
// agentSetup changes the agent's environment and flags; joinToken, when set, is the
// controller's agents.join_token and reaches the agent as HYPERSDK_JOIN_TOKEN.
type agentSetup struct {
	env, args []string
	joinToken string
}

// newMigrationEnv starts a simulator, a single-node controller (with the given lease TTL)
// and one agent with maxJobs slots.
func newMigrationEnv(t *testing.T, simCfg vcsim.Config, leaseTTL time.Duration, maxJobs int, setup ...agentSetup) *migrationEnv {
	t.Helper()
	harness.RequireLibvirt(t)
	harness.Bin(t, "hypersdk-agent")
	e := &migrationEnv{t: t, dir: t.TempDir()}
	simCfg.Username, simCfg.Password = "admin", e2ePassword
	simCfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	e.sim = harness.StartSim(t, simCfg)
	conf := filepath.Join(e.dir, "controller.yaml")
	ctlConf := fmt.Sprintf("agents:\n  lease_ttl: %s\n", leaseTTL)
	for _, st := range setup {
		if st.joinToken != "" {
			ctlConf += fmt.Sprintf("  join_token: %q\n", st.joinToken)
		}
	}
	if err := os.WriteFile(conf, []byte(ctlConf), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ctl = harness.StartController(t, e.dir, "c1", nil, "--config", conf, "--fast-raft")
	harness.WaitFor(t, 20*time.Second, "controller leads", func() bool {
		var cl harness.ClusterView
		return harness.GetJSON(e.ctl.URL()+"/cluster", &cl) == 200 && cl.Leader.ID == "c1"
	})
	var env []string
	args := []string{"--max-jobs", strconv.Itoa(maxJobs)}
	for _, s := range setup {
		env, args = append(env, s.env...), append(args, s.args...)
		if s.joinToken != "" {
			env = append(env, "HYPERSDK_JOIN_TOKEN="+s.joinToken)
		}
	}
	e.agent = harness.StartAgentEnv(t, env, e.dir, "agent-1", []*harness.Controller{e.ctl}, args...)
	t.Cleanup(func() {
		e.agent.Stop(10 * time.Second)
		if b, err := os.ReadFile(e.agent.LogPath); err == nil && bytes.Contains(b, []byte(e2ePassword)) {
			t.Errorf("the vCenter password appears in the agent's log")
		}
	})
	return e
}

// job is a job definition for VM i of the simulator, through vcenter (host:port; empty:
// the simulator itself). Its domain is undefined when the test ends.
func (e *migrationEnv) job(i int, vcenter string, opts proto.Options) proto.JobDefinition {
	if vcenter == "" {
		vcenter = e.sim.URL.Host
	}
	harness.CleanupDomain(e.t, e.sim.VMs[i].Name)
	return proto.JobDefinition{
		Name: "e2e " + e.sim.VMs[i].Name, VMPath: e.sim.VMs[i].Path,
		Source: proto.Source{Type: "vsphere", VCenterURL: "https://" + vcenter + "/sdk", Username: "admin",
			Password: e2ePassword, Thumbprint: e.sim.Thumbprint},
		Destination: proto.Destination{Type: "kvm"},
		Options:     opts,
	}
}

func (e *migrationEnv) jobDir(id string) string { return filepath.Join(e.agent.StorageDir, id) }

// toolChildren lists nbdkit/qemu-img/qemu-nbd and VDDK reader processes whose parent is
// the agent.
func (e *migrationEnv) toolChildren() []string {
	pid := strconv.Itoa(e.agent.Pid())
	ents, _ := os.ReadDir("/proc")
	var found []string
	for _, ent := range ents {
		b, err := os.ReadFile("/proc/" + ent.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		o, c := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if o < 0 || c < 0 {
			continue
		}
		f := strings.Fields(s[c+1:])
		comm := s[o+1 : c]
		if len(f) < 2 || f[0] == "Z" || f[1] != pid {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + ent.Name() + "/cmdline")
		if comm == "nbdkit" || comm == "qemu-img" || comm == "qemu-nbd" || bytes.Contains(cmdline, []byte("vddk-reader")) {
			found = append(found, comm+"/"+ent.Name())
		}
	}
	return found
}

func errText(j proto.Job) string {
	if j.Error == nil {
		return ""
	}
	return *j.Error
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range es {
		n = append(n, e.Name())
	}
	return n
}

func compareImage(t *testing.T, flat, image, format string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", format, flat, image).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare %s %s: %v: %s", flat, image, err, bytes.TrimSpace(out))
	}
}

// TestE2EMigrateHTTPSAndNFC: two VMs with two disks each (random bytes then a hole), one
// migrated with https and one with nfc, at the same time on one agent. Every disk is
// byte-identical to its source extent; each domain has the VM's vCPUs, memory, disks,
// NICs with their MACs on the mapped targets, and the job id.
func TestE2EMigrateHTTPSAndNFC(t *testing.T) {
	t.Parallel()
	e := newMigrationEnv(t, vcsim.Config{VMs: 2, DisksPerVM: 2, DiskSize: 64 * mib, CPUs: 2, MemoryMB: 1024,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}, 15*time.Second, 2)
	cases := []struct {
		method  string
		format  string
		mapping map[string]string
		nic     func(*libvirtxml.DomainInterfaceSource) string
		want    string
	}{
		{method: "https", format: "qcow2", mapping: map[string]string{"VM Network": "bridge:e2e-br0"},
			nic: func(s *libvirtxml.DomainInterfaceSource) string {
				if s == nil || s.Bridge == nil {
					return ""
				}
				return "bridge:" + s.Bridge.Bridge
			}, want: "bridge:e2e-br0"},
		{method: "nfc", format: "raw", mapping: map[string]string{"VM Network": "network:e2e-net0"},
			nic: func(s *libvirtxml.DomainInterfaceSource) string {
				if s == nil || s.Network == nil {
					return ""
				}
				return "network:" + s.Network.Network
			}, want: "network:e2e-net0"},
	}
	ids := make([]string, len(cases))
	for i, tc := range cases {
		ids[i] = harness.Submit(t, e.ctl, e.job(i, "", proto.Options{ConversionMethod: tc.method, OutputFormat: tc.format, NetworkMapping: tc.mapping}))
	}
	for i, tc := range cases {
		t.Run(tc.method, func(t *testing.T) {
			j := harness.WaitTerminal(t, e.ctl, ids[i], 2*time.Minute)
			if j.Status != proto.StatusCompleted || j.Attempt != 1 || j.Agent != "agent-1" {
				t.Fatalf("job %s: status %s attempt %d agent %q error %q", ids[i], j.Status, j.Attempt, j.Agent, errText(j))
			}
			if j.Definition.Source.Password != proto.RedactedPassword {
				t.Errorf("GET /jobs/{id} shows password %q", j.Definition.Source.Password)
			}
			if j.Progress.Stage != proto.StageCompleted || j.Progress.PercentComplete != 100 || j.Progress.TotalBytes != 128*mib {
				t.Errorf("final progress %+v", j.Progress)
			}
			if !strings.Contains(strings.Join(j.Warnings, "\n"), strings.TrimPrefix(strings.TrimPrefix(tc.want, "bridge:"), "network:")) {
				t.Errorf("warnings %q do not mention the missing target %s", j.Warnings, tc.want)
			}
			vm := e.sim.VMs[i]
			r := j.Result
			if r == nil || r.DomainName != vm.Name || r.LibvirtURI != harness.LibvirtURI || len(r.Disks) != 2 {
				t.Fatalf("result %+v", r)
			}
			for k, p := range r.Disks {
				if !strings.HasPrefix(p, e.jobDir(ids[i])+"/") {
					t.Errorf("disk %s is not under the job's dir %s", p, e.jobDir(ids[i]))
				}
				compareImage(t, vm.Disks[k].FlatPath, p, tc.format)
			}
			out, err := harness.Virsh("dumpxml", "--inactive", vm.Name)
			if err != nil {
				t.Fatal(err)
			}
			var d libvirtxml.Domain
			if err := d.Unmarshal(out); err != nil {
				t.Fatal(err)
			}
			if d.VCPU == nil || d.VCPU.Value != 2 {
				t.Errorf("vcpus %+v, want 2", d.VCPU)
			}
			if d.Memory == nil || d.Memory.Value*kibPer(d.Memory.Unit) != 1024*mib {
				t.Errorf("memory %+v, want 1024 MiB", d.Memory)
			}
			if d.UUID != r.DomainUUID {
				t.Errorf("domain uuid %s, result %s", d.UUID, r.DomainUUID)
			}
			if len(d.Devices.Disks) != 2 {
				t.Fatalf("%d disks in the domain", len(d.Devices.Disks))
			}
			for k, dd := range d.Devices.Disks {
				if dd.Source == nil || dd.Source.File == nil || dd.Source.File.File != r.Disks[k] || dd.Driver == nil || dd.Driver.Type != tc.format {
					t.Errorf("domain disk %d: %+v %+v, want %s (%s)", k, dd.Source, dd.Driver, r.Disks[k], tc.format)
				}
			}
			if len(d.Devices.Interfaces) != 1 {
				t.Fatalf("%d interfaces", len(d.Devices.Interfaces))
			}
			nic := d.Devices.Interfaces[0]
			if got := tc.nic(nic.Source); got != tc.want {
				t.Errorf("interface on %q, want %q", got, tc.want)
			}
			if nic.MAC == nil || !strings.HasPrefix(strings.ToLower(nic.MAC.Address), "00:50:56") && !strings.HasPrefix(strings.ToLower(nic.MAC.Address), "00:0c:29") {
				t.Errorf("interface MAC %+v is not the VMware one", nic.MAC)
			}
			if d.Metadata == nil || !strings.Contains(d.Metadata.XML, ids[i]) {
				t.Errorf("domain metadata lacks the job id: %+v", d.Metadata)
			}
		})
	}
	var metrics bytes.Buffer
	resp, err := http.Get("http://" + e.agent.APIAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(&metrics, resp.Body)
	resp.Body.Close()
	for _, m := range []string{`hypersdk_agent_transfer_bytes_total{method="https"}`, `hypersdk_agent_transfer_bytes_total{method="nfc"}`} {
		if !strings.Contains(metrics.String(), m) {
			t.Errorf("agent /metrics lacks %s", m)
		}
	}
}

func kibPer(unit string) uint {
	switch strings.ToLower(unit) {
	case "", "kib", "k":
		return 1024
	case "mib", "m":
		return mib
	case "b", "bytes":
		return 1
	}
	return 0
}

// waitCopying waits until the job is copying bytes (stage conversion, current_bytes > 0).
func waitCopying(t *testing.T, e *migrationEnv, id string) proto.Job {
	t.Helper()
	return harness.WaitJob(t, e.ctl, id, time.Minute, "copying bytes", func(j proto.Job) bool {
		if j.Status.Terminal() {
			t.Fatalf("job ended before it could be interrupted: %s %q", j.Status, errText(j))
		}
		return j.Progress.Stage == proto.StageConversion && j.Progress.CurrentBytes > 0
	})
}

// TestE2ECancelMidTransfer: a job cancelled through the API while its disks are being
// copied ends "cancelled" and leaves no files, no domain and no tool process.
func TestE2ECancelMidTransfer(t *testing.T) {
	t.Parallel()
	e := newMigrationEnv(t, vcsim.Config{VMs: 1, DisksPerVM: 2, DiskSize: 64 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		15*time.Second, 1)
	// 2 MB/s per connection: the copy would take ~30 s.
	th := harness.StartThrottle(t, e.sim.URL.Host, 2<<20)
	id := harness.Submit(t, e.ctl, e.job(0, th.Addr, proto.Options{ConversionMethod: "https"}))
	waitCopying(t, e, id)
	if len(entries(t, e.jobDir(id))) == 0 {
		t.Fatal("no partial files while copying")
	}
	e.cancelAndCheck(t, id, 0)
}

// cancelAndCheck cancels job id (of VM vm) through the API and checks it ends cancelled
// with no file, domain or tool process left.
func (e *migrationEnv) cancelAndCheck(t *testing.T, id string, vm int) {
	t.Helper()
	cancelled := time.Now()
	var cr proto.CancelResponse
	if code, err := harness.PostJSON(e.ctl.URL()+"/jobs/cancel", proto.CancelRequest{JobIDs: []string{id}}, &cr); err != nil || code != 200 {
		t.Fatalf("cancel: %d %v", code, err)
	}
	j := harness.WaitTerminal(t, e.ctl, id, 30*time.Second)
	t.Logf("cancelled after %s", time.Since(cancelled).Round(time.Millisecond))
	if j.Status != proto.StatusCancelled {
		t.Fatalf("status %s (%q), want cancelled", j.Status, errText(j))
	}
	// The agent reports "cancelled" only after its cleanup, so this holds at once.
	if got := entries(t, e.jobDir(id)); len(got) != 0 {
		t.Errorf("files left after cancel: %v", got)
	}
	if harness.DomainExists(e.sim.VMs[vm].Name) {
		t.Errorf("a domain exists after cancel")
	}
	if kids := e.toolChildren(); len(kids) > 0 {
		t.Errorf("tool processes left after cancel: %v", kids)
	}
}

// TestE2ERetryAfterKilledAgent: the agent is SIGKILLed in the middle of the copy; the
// controller expires the lease (TTL 5 s), the restarted agent leases attempt 2, replaces
// the partial files of attempt 1 and ends with exactly one domain.
//
// With a join token (issue 18): the agent enrols its own credential, keeps it in its
// storage dir (0600) and, restarted, goes on with it.
func TestE2ERetryAfterKilledAgent(t *testing.T) {
	t.Parallel()
	const join = "e2e-join-token-0123456789abcdef"
	e := newMigrationEnv(t, vcsim.Config{VMs: 1, DisksPerVM: 2, DiskSize: 64 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		5*time.Second, 1, agentSetup{joinToken: join}) // 2 s fenced the restarted agent on a loaded machine: attempt 3
	th := harness.StartThrottle(t, e.sim.URL.Host, 2<<20)
	id := harness.Submit(t, e.ctl, e.job(0, th.Addr, proto.Options{ConversionMethod: "https"}))
	if j := waitCopying(t, e, id); j.Attempt != 1 {
		t.Fatalf("attempt %d copying, want 1", j.Attempt)
	}
	partial := entries(t, e.jobDir(id))
	if len(partial) == 0 {
		t.Fatal("no partial files while copying")
	}
	credFile := filepath.Join(e.agent.StorageDir, ".agent-credential")
	cred, err := os.ReadFile(credFile)
	if fi, serr := os.Stat(credFile); err != nil || serr != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent credential file: %v %v", err, serr)
	}
	e.agent.Kill()
	th.SetRate(0)
	e.agent.Restart(t)
	e.checkCompletedOnce(t, harness.WaitTerminal(t, e.ctl, id, 2*time.Minute), 0, 2)
	if now, _ := os.ReadFile(credFile); string(now) != string(cred) {
		t.Fatal("the restarted agent made a new credential")
	}
	var ids []proto.AgentIdentity
	if harness.GetJSON(e.ctl.URL()+"/agents/identities", &ids) != 200 || len(ids) != 1 || ids[0].Name != "agent-1" {
		t.Fatalf("enrolled agents: %+v", ids)
	}
	if b, _ := os.ReadFile(e.agent.LogPath); bytes.Contains(b, bytes.TrimSpace(cred)) || bytes.Contains(b, []byte(join)) {
		t.Fatal("the agent logged its credential or the join token")
	}
}

// checkCompletedOnce checks that job j of VM vm completed at the given attempt with one
// domain of the VM's name, only that attempt's disks in its dir, byte-identical (qcow2).
func (e *migrationEnv) checkCompletedOnce(t *testing.T, j proto.Job, vm, attempt int) {
	t.Helper()
	if j.Status != proto.StatusCompleted || j.Attempt != attempt {
		t.Fatalf("status %s attempt %d (%q), want completed at attempt %d", j.Status, j.Attempt, errText(j), attempt)
	}
	out, err := harness.Virsh("list", "--all", "--name")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, e.sim.VMs[vm].Name+"\n"); n != 1 {
		t.Errorf("%d domains named %s, want 1", n, e.sim.VMs[vm].Name)
	}
	if got := entries(t, e.jobDir(j.Definition.ID)); len(got) != len(e.sim.VMs[vm].Disks) {
		t.Errorf("job dir holds %v, want the %d disks of attempt %d only", got, len(e.sim.VMs[vm].Disks), attempt)
	}
	for k, p := range j.Result.Disks {
		compareImage(t, e.sim.VMs[vm].Disks[k].FlatPath, p, "qcow2")
	}
}

// TestE2EJobErrors: bad credentials, an untrusted certificate and a powered-on VM without
// shutdown options fail at once (attempt 1, not retried) with errors that say what to fix.
func TestE2EJobErrors(t *testing.T) {
	t.Parallel()
	e := newMigrationEnv(t, vcsim.Config{VMs: 3, DisksPerVM: 1, DiskSize: 8 * mib, PowerOn: true}, 15*time.Second, 3)
	cases := []struct {
		name string
		edit func(*proto.JobDefinition)
		want []string
	}{
		{name: "bad credentials", edit: func(d *proto.JobDefinition) { d.Source.Password = "not-the-password" },
			want: []string{"connecting", "bad vCenter credentials", `"admin"`}},
		{name: "untrusted certificate", edit: func(d *proto.JobDefinition) { d.Source.Thumbprint = "" },
			want: []string{"connecting", "untrusted vCenter certificate", "source.insecure", "source.thumbprint", e.sim.Thumbprint}},
		{name: "powered on without shutdown options", edit: func(d *proto.JobDefinition) {},
			want: []string{"preparing", "powered on", "options.shutdown", "options.power_off"}},
	}
	ids := make([]string, len(cases))
	for i, tc := range cases {
		d := e.job(i, "", proto.Options{ConversionMethod: "https"})
		tc.edit(&d)
		ids[i] = harness.Submit(t, e.ctl, d)
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j := harness.WaitTerminal(t, e.ctl, ids[i], time.Minute)
			msg := errText(j)
			if j.Status != proto.StatusFailed || j.Attempt != 1 {
				t.Errorf("status %s attempt %d, want failed at attempt 1 (not retried)", j.Status, j.Attempt)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			if strings.Contains(msg, e2ePassword) {
				t.Errorf("error shows the password")
			}
			if harness.DomainExists(e.sim.VMs[i].Name) || len(entries(t, e.jobDir(ids[i]))) != 0 {
				t.Errorf("failed job left a domain or files")
			}
		})
	}
}
