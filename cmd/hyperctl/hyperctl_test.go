package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// hyperctl runs the command in-process with env as its whole environment.
func hyperctl(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb, func(k string) string { return env[k] })
	r := result{stdout: out.String(), stderr: errb.String(), code: code}
	// Nothing a user sees may carry the vCenter password.
	if strings.Contains(r.stdout+r.stderr, fleettest.CanaryPassword) {
		t.Fatalf("hyperctl %s printed the password:\n%s", strings.Join(args, " "), r)
	}
	return r
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

const jobYAML = `
vm_path: DC0/vm/web-1
source:
  type: vsphere
  vcenter_url: https://127.0.0.1:1/sdk
  username: admin
  password: canary-Pa55w0rd
destination:
  type: kvm
options:
  conversion_method: https
  network_mapping:
    VM Network: br0
`

func jobJSON(vm string) string {
	b, _ := json.Marshal(fleettest.JobBody(vm))
	return string(b)
}

// TestCommands runs every command against a real 3-controller cluster with an agent in
// its gossip pool, in table and JSON output.
func TestCommands(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	// The test cluster's controllers do not gossip with each other: the agent joins all.
	fleettest.StartMember(t, "kvm-cli-1", 3, nodes[0].GossipAddr(), nodes[1].GossipAddr(), nodes[2].GossipAddr())
	// A dead address first: every command below also proves the failover. The leader
	// next, so a read right after a write sees it (a follower may trail by milliseconds).
	servers := []string{"http://" + freeAddr(t), controller.Leader(nodes).URL()}
	for _, n := range nodes {
		if !n.Node.IsLeader() {
			servers = append(servers, n.URL())
		}
	}
	env := map[string]string{"HYPERSDK_SERVER": strings.Join(servers, ",")}

	jobFile := writeFile(t, "job.yaml", jobYAML)
	twoJobs := writeFile(t, "jobs.yaml", strings.Replace(jobYAML, "web-1", "web-3", 1)+"---\n"+strings.Replace(jobYAML, "web-1", "web-2", 1))
	badJob := writeFile(t, "bad.json", `{"vm_path": "x", "source": {"type": "vsphere"}, "destination": {"type": "kvm"}, "bogus": 1}`)
	idPattern := regexp.MustCompile(`job (\S+) submitted`)
	badList := writeFile(t, "list.yaml", strings.Replace(jobYAML, "web-1", "web-8", 1)+"---\n"+
		strings.Replace(strings.Replace(jobYAML, "web-1", "web-9", 1), "conversion_method", "shutdwn", 1))
	allowDup := writeFile(t, "again.yaml", jobYAML+"  allow_duplicate: true\n")
	unknownAgent := writeFile(t, "nowhere.yaml", strings.Replace(jobYAML, "web-1", "web-7", 1)+"  target_agent: kvm-nowhere\n")

	var firstID string
	submit := hyperctl(t, env, "", "jobs", "submit", "-f", jobFile)
	if submit.code != 0 || !idPattern.MatchString(submit.stdout) {
		t.Fatalf("submit: %s", submit)
	}
	firstID = idPattern.FindStringSubmatch(submit.stdout)[1]

	tests := []struct {
		name   string
		args   []string
		stdin  string
		code   int
		want   []string // substrings of stdout
		errHas string   // substring of stderr
		check  func(t *testing.T, r result)
	}{
		{name: "version", args: []string{"version"}, want: []string{"hyperctl ", "server: hypersdk-controller", "on node node"}},
		{name: "version json", args: []string{"version", "-o", "json"}, check: func(t *testing.T, r result) {
			var v versionInfo
			mustJSON(t, r.stdout, &v)
			if v.Client.Version == "" || v.Server == nil || v.Server.NodeID == "" {
				t.Fatalf("version json: %s", r.stdout)
			}
		}},
		{name: "submit json from stdin", args: []string{"jobs", "submit", "-f", "-", "-o", "json"}, stdin: jobJSON("DC0/vm/stdin"),
			check: func(t *testing.T, r result) {
				var s proto.SubmitResponse
				mustJSON(t, r.stdout, &s)
				if s.JobID == "" || s.Message == "" {
					t.Fatalf("submit json: %s", r.stdout)
				}
			}},
		{name: "submit two yaml documents", args: []string{"jobs", "submit", "-f", twoJobs}, check: func(t *testing.T, r result) {
			if n := len(idPattern.FindAllString(r.stdout, -1)); n != 2 {
				t.Fatalf("want 2 jobs submitted: %s", r)
			}
		}},
		{name: "submit with an unknown field", args: []string{"jobs", "submit", "-f", badJob}, code: exitUsage, errHas: `bad.json: unknown field "bogus"`},
		{name: "a list with one bad document submits nothing", args: []string{"jobs", "submit", "-f", badList}, code: exitUsage,
			errHas: `document 2: unknown field "options.shutdwn"`},
		{name: "the same VM again is a conflict", args: []string{"jobs", "submit", "-f", jobFile}, code: exitRejected,
			errHas: "options.allow_duplicate"},
		{name: "the same VM again, allowed", args: []string{"jobs", "submit", "-f", allowDup}, want: []string{"submitted"}},
		{name: "an agent the fleet never had", args: []string{"jobs", "submit", "-f", unknownAgent}, code: exitUsage,
			errHas: `no agent "kvm-nowhere" has ever been in the fleet (known agents: kvm-cli-1)`},
		// The dry run asks the controller's /jobs/validate, which reaches for the jobs' vCenter
		// (none listens at 127.0.0.1:1): bad input, and nothing submitted ("list json" counts).
		{name: "dry run submits nothing", args: []string{"jobs", "submit", "--dry-run", "-f", twoJobs}, code: exitUsage, errHas: "vCenter unreachable"},
		{name: "submit unreadable file", args: []string{"jobs", "submit", "-f", "/nonexistent/job.yaml"}, code: exitUsage, errHas: "no such file"},
		{name: "submit bad yaml", args: []string{"jobs", "submit", "-f", "-"}, stdin: "vm_path: [unclosed", code: exitUsage, errHas: "invalid YAML"},
		{name: "list table", args: []string{"jobs", "list"}, want: []string{"ID", "STATUS", firstID, "DC0/vm/web-1", "DC0/vm/web-2", "pending"}},
		{name: "list json", args: []string{"jobs", "list", "-o", "json"}, check: func(t *testing.T, r result) {
			var q proto.QueryResponse
			mustJSON(t, r.stdout, &q)
			if q.Total != 5 || len(q.Jobs) != 5 {
				t.Fatalf("want 5 jobs (the bad list added none): %s", r.stdout)
			}
			for _, j := range q.Jobs {
				if j.Definition.Source.Password != proto.RedactedPassword {
					t.Fatalf("password not masked in %+v", j.Definition.Source)
				}
			}
		}},
		{name: "list limit", args: []string{"jobs", "list", "--limit", "1"}, want: []string{"1 of 5 jobs shown"}},
		{name: "list status filter", args: []string{"jobs", "list", "--status", "completed"}, want: []string{"No jobs."}},
		{name: "list bad status", args: []string{"jobs", "list", "--status", "done"}, code: exitUsage, errHas: "not one of"},
		{name: "get table", args: []string{"jobs", "get", firstID}, want: []string{"ID:", firstID, "VM:", "DC0/vm/web-1", "Status:", "pending", "method=https", `net "VM Network"→br0`}},
		{name: "get json", args: []string{"jobs", "get", firstID, "-o", "json"}, check: func(t *testing.T, r result) {
			var j proto.Job
			mustJSON(t, r.stdout, &j)
			if j.Definition.ID != firstID || j.Status != proto.StatusPending {
				t.Fatalf("get json: %s", r.stdout)
			}
		}},
		{name: "get unknown", args: []string{"jobs", "get", "no-such-job"}, code: exitRejected, errHas: "job no-such-job not found (HTTP 404)"},
		{name: "get needs an id", args: []string{"jobs", "get"}, code: exitUsage, errHas: "expected one job ID"},
		{name: "cancel", args: []string{"jobs", "cancel", firstID, "no-such-job"}, want: []string{"1 job(s) cancelled", "not found: no-such-job"}},
		{name: "cancel again json", args: []string{"jobs", "cancel", firstID, "-o", "json"}, check: func(t *testing.T, r result) {
			var c proto.CancelResponse
			mustJSON(t, r.stdout, &c)
			if c.Count != 0 || len(c.Skipped) != 1 {
				t.Fatalf("second cancel: %s", r.stdout)
			}
		}},
		{name: "cancel unknown only", args: []string{"jobs", "cancel", "no-such-job"}, code: exitRejected, errHas: "not found"},
		{name: "cluster status", args: []string{"cluster", "status"}, want: []string{"Leader:", "node1", "node2", "node3", "Commit index:", "STATE", "leader", "follower"}},
		{name: "cluster status json", args: []string{"cluster", "status", "-o", "json"}, check: func(t *testing.T, r result) {
			var cl struct {
				Leader struct{ ID string } `json:"leader"`
				Nodes  []struct{ ID string }
			}
			mustJSON(t, r.stdout, &cl)
			if cl.Leader.ID == "" || len(cl.Nodes) != 3 {
				t.Fatalf("cluster json: %s", r.stdout)
			}
		}},
		{name: "cluster remove unknown", args: []string{"cluster", "remove", "node9"}, code: exitRejected, errHas: "node9"},
		{name: "agents list", args: []string{"agents", "list"}, want: []string{"NAME", "kvm-cli-1", "alive", "0/3", "MEMORY USED"}},
		{name: "agents list json", args: []string{"agents", "list", "-o", "json"}, check: func(t *testing.T, r result) {
			var a proto.AgentsResponse
			mustJSON(t, r.stdout, &a)
			if a.Total != 1 || a.Agents[0].Name != "kvm-cli-1" || a.Agents[0].Capacity.CPUs == 0 {
				t.Fatalf("agents json: %s", r.stdout)
			}
		}},
		{name: "agents get", args: []string{"agents", "get", "kvm-cli-1"}, want: []string{"Name:", "kvm-cli-1", "CPUs:", "Storage:", "free of", "Jobs:", "0 running of 3"}},
		{name: "agents get unknown", args: []string{"agents", "get", "nobody"}, code: exitRejected, errHas: "agent nobody not found"},
		{name: "agents cordon", args: []string{"agents", "cordon", "kvm-cli-1"}, want: []string{"agent kvm-cli-1 cordoned: it takes no new jobs"}},
		{name: "agents list shows the cordon", args: []string{"agents", "list"}, want: []string{"HEALTH", "ok (cordoned)"}},
		{name: "agents drain", args: []string{"agents", "drain", "kvm-cli-1"}, want: []string{"agent kvm-cli-1 draining"}},
		{name: "agents uncordon", args: []string{"agents", "uncordon", "kvm-cli-1"}, want: []string{"agent kvm-cli-1 uncordoned"}},
		{name: "agents get after uncordon", args: []string{"agents", "get", "kvm-cli-1"}, want: []string{"Health:", "ok"}},
		{name: "agents cordon unknown", args: []string{"agents", "cordon", "nobody"}, code: exitRejected, errHas: "known agents: kvm-cli-1"},
		{name: "unknown command", args: []string{"frobnicate"}, code: exitUsage, errHas: "unknown command"},
		{name: "unknown subcommand", args: []string{"jobs", "frob"}, code: exitUsage, errHas: "unknown subcommand"},
		{name: "bad output", args: []string{"jobs", "list", "-o", "yaml"}, code: exitUsage, errHas: "-o must be table or json"},
		{name: "bad flag", args: []string{"jobs", "list", "--nope"}, code: exitUsage, errHas: "flag provided but not defined"},
		{name: "help", args: []string{"--help"}, want: []string{"Exit codes:", "jobs", "schedules", "webhooks"}},
		{name: "command help", args: []string{"schedules", "--help"}, want: []string{"hyperctl schedules trigger ID"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := hyperctl(t, env, tc.stdin, tc.args...)
			if r.code != tc.code {
				t.Fatalf("want exit %d: %s", tc.code, r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Fatalf("stdout lacks %q: %s", w, r)
				}
			}
			if tc.errHas != "" {
				if !strings.Contains(r.stderr, tc.errHas) {
					t.Fatalf("stderr lacks %q: %s", tc.errHas, r)
				}
				if strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 && tc.code != exitUsage {
					t.Fatalf("error is not one line: %s", r)
				}
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}

	t.Run("submit --verify-boot", func(t *testing.T) {
		sub := hyperctl(t, env, jobJSON("DC0/vm/boot"), "jobs", "submit", "-f", "-", "-o", "json", "--verify-boot", "--boot-timeout", "90s")
		var s proto.SubmitResponse
		mustJSON(t, sub.stdout, &s)
		var j proto.Job
		mustJSON(t, hyperctl(t, env, "", "jobs", "get", s.JobID, "-o", "json").stdout, &j)
		if o := j.Definition.Options; !o.VerifyBoot || o.BootTimeoutSeconds != 90 {
			t.Errorf("options after --verify-boot: %+v", o)
		}
		if g := hyperctl(t, env, "", "jobs", "get", s.JobID); !strings.Contains(g.stdout, "verify_boot") || !strings.Contains(g.stdout, "boot_timeout=90s") {
			t.Errorf("jobs get does not show the boot check: %s", g)
		}
		if r := hyperctl(t, env, jobJSON("DC0/vm/boot"), "jobs", "submit", "-f", "-", "--boot-timeout", "90s"); r.code != exitUsage || !strings.Contains(r.stderr, "--verify-boot") {
			t.Errorf("--boot-timeout alone: %s", r)
		}
	})
	t.Run("schedules", func(t *testing.T) { testSchedules(t, env) })
	t.Run("webhooks", func(t *testing.T) { testWebhooks(t, env) })
	t.Run("vms", func(t *testing.T) { testVMs(t, env) })
	t.Run("watch", func(t *testing.T) { testWatch(t, env, nodes[0].URL()) })

	t.Run("cluster remove", func(t *testing.T) {
		leader := controller.Leader(nodes)
		var victim *controller.Controller
		for _, n := range nodes {
			if n != leader {
				victim = n
			}
		}
		id := victim.Node.ID()
		victim.Close()
		env := map[string]string{"HYPERSDK_SERVER": leader.URL()}
		if r := hyperctl(t, env, "", "cluster", "remove", id); r.code != 0 || !strings.Contains(r.stdout, id+" removed") {
			t.Fatalf("remove: %s", r)
		}
		r := hyperctl(t, env, "", "cluster", "status")
		if r.code != 0 || strings.Contains(r.stdout, id) {
			t.Fatalf("%s still listed: %s", id, r)
		}
	})
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("not JSON (%v): %s", err, s)
	}
}

func testSchedules(t *testing.T, env map[string]string) {
	create := writeFile(t, "schedule.yaml", `
id: nightly-web
name: Nightly web tier
schedule: "0 2 * * *"
job_template:
  vm_path: DC0/vm/web-9
  source: {type: vsphere, vcenter_url: "https://127.0.0.1:1/sdk", username: admin, password: canary-Pa55w0rd}
  destination: {type: kvm}
`)
	update := writeFile(t, "update.json", `{"name": "Renamed", "schedule": "30 3 * * *"}`)
	steps := []struct {
		args   []string
		code   int
		want   string
		errHas string
	}{
		{args: []string{"schedules", "create", "-f", create}, want: "schedule nightly-web created (0 2 * * *, next run"},
		{args: []string{"schedules", "create", "-f", create}, code: exitRejected, errHas: "HTTP 409"},
		{args: []string{"schedules", "list"}, want: "nightly-web"},
		{args: []string{"schedules", "get", "nightly-web"}, want: "Nightly web tier"},
		{args: []string{"schedules", "update", "nightly-web", "-f", update}, want: "schedule nightly-web updated"},
		{args: []string{"schedules", "get", "nightly-web"}, want: "30 3 * * *"},
		{args: []string{"schedules", "disable", "nightly-web"}, want: "schedule nightly-web disabled"},
		{args: []string{"schedules", "get", "nightly-web", "-o", "json"}, want: `"enabled": false`},
		{args: []string{"schedules", "enable", "nightly-web"}, want: "schedule nightly-web enabled"},
		{args: []string{"schedules", "trigger", "nightly-web"}, want: "triggered (run 1): 1 job(s)"},
		{args: []string{"schedules", "stats"}, want: "1 (1 enabled, 0 disabled)"},
		{args: []string{"schedules", "stats", "-o", "json"}, want: `"total_runs": 1`},
		{args: []string{"schedules", "list", "-o", "json"}, want: `"password": "********"`},
		{args: []string{"schedules", "delete", "nightly-web"}, want: "schedule nightly-web deleted"},
		{args: []string{"schedules", "get", "nightly-web"}, code: exitRejected, errHas: "not found (HTTP 404)"},
		{args: []string{"schedules", "create", "-f", "-"}, code: exitUsage, errHas: "stdin is empty"},
	}
	for _, s := range steps {
		step(t, env, s.args, s.code, s.want, s.errHas)
	}
}

// step runs one command of a sequence. A read is retried for a few seconds: after a
// leader change under load it may be served by a follower that trails the write before it.
func step(t *testing.T, env map[string]string, args []string, code int, want, errHas string) result {
	t.Helper()
	read := map[string]bool{"list": true, "get": true, "stats": true, "status": true}[args[1]]
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := hyperctl(t, env, "", args...)
		if r.code == code && strings.Contains(r.stdout, want) && strings.Contains(r.stderr, errHas) {
			return r
		}
		if !read || time.Now().After(deadline) {
			t.Fatalf("hyperctl %s: want exit %d, %q, %q: %s", strings.Join(args, " "), code, want, errHas, r)
		}
		time.Sleep(50 * time.Millisecond) // poll interval of the retry, bounded by the deadline
	}
}

func testWebhooks(t *testing.T, env map[string]string) {
	var mu sync.Mutex
	var got []proto.WebhookPayload
	var gotHeader string
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p proto.WebhookPayload
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &p)
		mu.Lock()
		got = append(got, p)
		gotHeader = r.Header.Get("X-Team")
		mu.Unlock()
	}))
	t.Cleanup(recv.Close)
	hookFile := writeFile(t, "hook.yaml", "url: "+recv.URL+"/file\nevents: [job.failed]\nheaders: {Authorization: Bearer s3cret-hook}\n")

	steps := []struct {
		args   []string
		code   int
		want   string
		errHas string
	}{
		{args: []string{"webhooks", "list"}, want: "No webhooks."},
		{args: []string{"webhooks", "add", "--url", recv.URL + "/flags", "--events", "job.completed,job.failed", "--header", "X-Team=ops"}, want: "webhook 0 added"},
		{args: []string{"webhooks", "add", "-f", hookFile, "-o", "json"}, want: `"index": 1`},
		{args: []string{"webhooks", "list"}, want: "job.completed,job.failed"},
		{args: []string{"webhooks", "list", "-o", "json"}, want: `"Authorization": "********"`},
		{args: []string{"webhooks", "add", "--url", recv.URL, "--events", "job.exploded"}, code: exitRejected, errHas: "job.exploded"},
		{args: []string{"webhooks", "add"}, code: exitUsage, errHas: "-f FILE or --url"},
		{args: []string{"webhooks", "test", recv.URL + "/test", "--header", "X-Team=qa"}, want: "test delivery to"},
		{args: []string{"webhooks", "delete", "1"}, want: "webhook 1 deleted"},
		{args: []string{"webhooks", "delete", "7"}, code: exitRejected, errHas: "HTTP 404"},
		{args: []string{"webhooks", "delete", "x"}, code: exitUsage, errHas: "must be a number"},
	}
	for _, s := range steps {
		r := step(t, env, s.args, s.code, s.want, s.errHas)
		if strings.Contains(r.stdout, "s3cret-hook") {
			t.Fatalf("webhook header value shown: %s", r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) == 0 || got[0].Event != proto.EventTest || gotHeader != "qa" {
		t.Fatalf("test delivery not received as sent: %+v header %q", got, gotHeader)
	}
}

func testVMs(t *testing.T, env map[string]string) {
	cfg := vcsim.DefaultConfig()
	cfg.VMs, cfg.DisksPerVM, cfg.DiskSize, cfg.PowerOn = 2, 1, 4<<20, true
	cfg.Username, cfg.Password = "admin", fleettest.CanaryPassword
	sim, err := vcsim.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	vm := strings.TrimPrefix(sim.VMs[0].Path, "/")
	other := strings.TrimPrefix(sim.VMs[1].Path, "/")
	pwFile := writeFile(t, "pw", fleettest.CanaryPassword+"\n")
	badPw := writeFile(t, "bad", "wrong-password\n")
	vc := []string{"--vcenter", sim.URL.Host, "--username", "admin", "--vcenter-insecure"}
	withPw := func(args ...string) []string { return append(append(args, vc...), "--password-file", pwFile) }
	envPw := map[string]string{"HYPERSDK_SERVER": env["HYPERSDK_SERVER"], "HYPERSDK_VCENTER_PASSWORD": fleettest.CanaryPassword}

	cases := []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		want   []string
		errHas string
	}{
		{name: "no password", env: env, args: append([]string{"vms", "list"}, vc...), code: exitUsage, errHas: "password is required"},
		{name: "no vcenter", env: env, args: []string{"vms", "list", "--username", "a", "--password-file", pwFile}, code: exitUsage, errHas: "--vcenter"},
		{name: "list", env: env, args: withPw("vms", "list"), want: []string{"NAME", "POWER", vm, other, "poweredOn"}},
		{name: "list pattern json", env: env, args: withPw("vms", "list", "--pattern", vm, "-o", "json"), want: []string{`"total": 1`, vm}},
		{name: "list wrong password", env: env, args: append(append([]string{"vms", "list"}, vc...), "--password-file", badPw), code: exitRejected, errHas: "HTTP 400"},
		{name: "info from env password", env: envPw, args: append([]string{"vms", "info", vm}, vc...), want: []string{"Path:", vm, "CPUs:", "DISK", "CAPACITY", "NIC"}},
		{name: "info unknown", env: envPw, args: append([]string{"vms", "info", "DC0/vm/nope"}, vc...), code: exitRejected, errHas: "HTTP 404"},
		{name: "remove cdrom", env: envPw, args: append([]string{"vms", "remove-cdrom", vm}, vc...), want: []string{vm + ": CD-ROM devices removed"}},
		{name: "shutdown", env: envPw, args: append([]string{"vms", "shutdown", vm}, vc...), want: []string{vm + ":"}},
		{name: "poweroff", env: envPw, args: append([]string{"vms", "poweroff", other, "-o", "json"}, vc...), want: []string{`"message"`}},
		{name: "info after poweroff", env: envPw, args: append([]string{"vms", "info", other, "-o", "json"}, vc...), want: []string{`"power_state": "poweredOff"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := hyperctl(t, tc.env, "", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.errHas) {
				t.Fatalf("want exit %d and %q: %s", tc.code, tc.errHas, r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Fatalf("stdout lacks %q: %s", w, r)
				}
			}
		})
	}
}

func testWatch(t *testing.T, env map[string]string, leaderURL string) {
	// The jobs submitted earlier would be leased first.
	if r := hyperctl(t, env, "", "jobs", "cancel", "--status", "pending"); r.code != 0 {
		t.Fatalf("cancel pending: %s", r)
	}
	agent := fleettest.NewAgent("kvm-cli-1", leaderURL)
	cases := []struct {
		name  string
		vm    string
		drive func(l *proto.Lease)
		code  int
		want  []string
	}{
		{name: "completed", vm: "DC0/vm/watch-ok", code: 0, want: []string{"conversion", "[###", "completed in", "on kvm-cli-1", "(domain watch-ok)"},
			drive: func(l *proto.Lease) {
				agent.Progress(t, l, proto.Progress{Stage: proto.StageConversion, PercentComplete: 30, CurrentBytes: 3 << 30, TotalBytes: 10 << 30, BytesPerSecond: 200 << 20})
				agent.Progress(t, l, proto.Progress{Stage: proto.StageConversion, PercentComplete: 70, CurrentBytes: 7 << 30, TotalBytes: 10 << 30, BytesPerSecond: 210 << 20})
				agent.Complete(t, l, &proto.JobResult{DomainName: "watch-ok"})
			}},
		{name: "failed", vm: "DC0/vm/watch-fail", code: exitJobFailed, want: []string{"job "},
			drive: func(l *proto.Lease) {
				agent.Progress(t, l, proto.Progress{Stage: proto.StageConnecting, PercentComplete: 1})
				agent.Fail(t, l, "vCenter refused the login")
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			def := fleettest.JobBody(tc.vm)
			def.Options.MaxAttempts = 1
			b, _ := json.Marshal(def)
			sub := hyperctl(t, env, string(b), "jobs", "submit", "-f", "-", "-o", "json")
			var s proto.SubmitResponse
			mustJSON(t, sub.stdout, &s)
			done := make(chan result, 1)
			go func() { done <- hyperctl(t, env, "", "jobs", "watch", s.JobID) }()
			l := agent.Lease(t, 10*time.Second)
			if l.JobID != s.JobID {
				t.Fatalf("leased %s, want %s", l.JobID, s.JobID)
			}
			tc.drive(l)
			var r result
			select {
			case r = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("watch did not end")
			}
			if r.code != tc.code {
				t.Fatalf("want exit %d: %s", tc.code, r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Fatalf("watch output lacks %q: %s", w, r)
				}
			}
			if tc.code != 0 && !strings.Contains(r.stderr, "vCenter refused the login") {
				t.Fatalf("failure reason not shown: %s", r)
			}
		})
	}
}

// TestWatchFallsBackToPolling fills the only WebSocket slot of a controller, so hyperctl
// is refused /ws (503) and must follow the job by polling.
func TestWatchFallsBackToPolling(t *testing.T) {
	cfg := controller.TestConfig(t, "solo", t.TempDir())
	cfg.WebSocket.MaxClients = 1
	c, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	controller.WaitFor(t, 10*time.Second, "leader", c.Node.IsLeader)
	// /ws answers once the new leader serves its state (before: 503, catching up).
	controller.WaitFor(t, 10*time.Second, "caught up", func() bool { return c.Node.Sync().CaughtUp })
	hog, _, err := websocket.DefaultDialer.Dial("ws://"+c.APIAddr()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hog.Close() })

	env := map[string]string{"HYPERSDK_SERVER": c.URL()}
	sub := hyperctl(t, env, jobJSON("DC0/vm/poll"), "jobs", "submit", "-f", "-", "-o", "json")
	var s proto.SubmitResponse
	mustJSON(t, sub.stdout, &s)
	done := make(chan result, 1)
	go func() { done <- hyperctl(t, env, "", "jobs", "watch", s.JobID, "--poll", "100ms", "-o", "json") }()
	agent := fleettest.NewAgent("kvm-poll", c.URL())
	l := agent.Lease(t, 10*time.Second)
	agent.Progress(t, l, proto.Progress{Stage: proto.StageConversion, PercentComplete: 50})
	agent.Complete(t, l, nil)
	r := <-done
	if r.code != 0 || !strings.Contains(r.stderr, "polling every 100ms") {
		t.Fatalf("polling watch: %s", r)
	}
	var j proto.Job
	mustJSON(t, r.stdout, &j)
	if j.Status != proto.StatusCompleted {
		t.Fatalf("final state: %s", r.stdout)
	}
}

// TestUnreachable: no controller answers, the error is one line and exit 3.
func TestUnreachable(t *testing.T) {
	a, b := freeAddr(t), freeAddr(t)
	cases := []struct {
		server string
		want   string
	}{
		{server: "http://" + a, want: "hyperctl: cannot reach http://" + a + " (connection refused)\n"},
		{server: a + "," + b, want: "hyperctl: cannot reach any of http://" + a + ", http://" + b + " (connection refused)\n"},
	}
	for _, tc := range cases {
		for _, args := range [][]string{{"jobs", "list"}, {"jobs", "cancel", "x"}, {"cluster", "status"}, {"version"}} {
			r := hyperctl(t, map[string]string{"HYPERSDK_SERVER": tc.server}, "", args...)
			if r.code != exitUnavailable || r.stderr != tc.want {
				t.Fatalf("%v via %s: want exit 3 and %q: %s", args, tc.server, tc.want, r)
			}
		}
	}
	// --server beats the environment.
	r := hyperctl(t, map[string]string{"HYPERSDK_SERVER": "http://" + b}, "", "--server", "http://"+a, "agents", "list")
	if !strings.Contains(r.stderr, a) || strings.Contains(r.stderr, b) {
		t.Fatalf("--server ignored: %s", r)
	}
}

// TestTokenNotShown: the token from the environment never appears in help output.
func TestTokenNotShown(t *testing.T) {
	r := hyperctl(t, map[string]string{"HYPERSDK_TOKEN": "tok-secret-123"}, "", "jobs", "list", "--help")
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, "tok-secret-123") {
		t.Fatalf("help shows the token: %s", r)
	}
}

// TestTLSAndToken: a controller serving TLS and wanting a token; hyperctl trusts it through
// --ca-file (or --insecure), sends the token, and says clearly what is wrong otherwise.
func TestTLSAndToken(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile := fleettest.WriteTestCA(t, dir)
	const token = "admin-token-0123456789abcdef"
	cfg := controller.TestConfig(t, "tls1", t.TempDir())
	cfg.API.TLS = controller.TLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile}
	cfg.Auth.Tokens = []api.Token{{Name: "ops", Role: api.RoleAdmin, Token: token}}
	c, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	controller.WaitFor(t, 10*time.Second, "leader", c.Node.IsLeader)
	url := c.URL()
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("controller URL %s", url)
	}
	tokenFile := writeFile(t, "token", token+"\n")
	withToken := map[string]string{"HYPERSDK_SERVER": url, "HYPERSDK_TOKEN": token}
	noToken := map[string]string{"HYPERSDK_SERVER": url}

	cases := []struct {
		name   string
		env    map[string]string
		args   []string
		stdin  string
		code   int
		want   string
		errHas string
	}{
		{name: "untrusted certificate", env: withToken, args: []string{"jobs", "list"}, code: exitUnavailable,
			errHas: "cannot reach " + url + " (TLS certificate not trusted: use --ca-file, or --insecure for a test setup)"},
		{name: "no token", env: noToken, args: []string{"jobs", "list", "--ca-file", caFile}, code: exitRejected, errHas: "(HTTP 401) (give a token: --token, --token-file or HYPERSDK_TOKEN)"},
		{name: "wrong token", env: noToken, args: []string{"jobs", "list", "--ca-file", caFile, "--token", "wrong-token-0123456789"}, code: exitRejected, errHas: "(HTTP 401)"},
		{name: "token from env", env: withToken, args: []string{"jobs", "list", "--ca-file", caFile}, want: "No jobs."},
		{name: "token file", env: noToken, args: []string{"cluster", "status", "--ca-file", caFile, "--token-file", tokenFile}, want: "tls1"},
		{name: "insecure", env: withToken, args: []string{"--insecure", "agents", "list"}, want: "No agents."},
		{name: "submit", env: withToken, args: []string{"jobs", "submit", "-f", "-", "--ca-file", caFile}, stdin: jobJSON("DC0/vm/tls"), want: "submitted"},
		{name: "plain http to https", env: withToken, args: []string{"--server", strings.Replace(url, "https", "http", 1), "jobs", "list"}, code: exitRejected, errHas: "HTTPS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := hyperctl(t, tc.env, tc.stdin, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout, tc.want) || !strings.Contains(r.stderr, tc.errHas) {
				t.Fatalf("want exit %d, %q, %q: %s", tc.code, tc.want, tc.errHas, r)
			}
			if strings.Contains(r.stdout+r.stderr, token) {
				t.Fatalf("token printed: %s", r)
			}
		})
	}
	// The WebSocket over TLS with the token: a finished job is watched without falling
	// back to polling.
	sub := hyperctl(t, withToken, jobJSON("DC0/vm/tls-watch"), "jobs", "submit", "-f", "-", "-o", "json", "--ca-file", caFile)
	var s proto.SubmitResponse
	mustJSON(t, sub.stdout, &s)
	if r := hyperctl(t, withToken, "", "jobs", "cancel", s.JobID, "--ca-file", caFile); r.code != 0 {
		t.Fatalf("cancel: %s", r)
	}
	r := hyperctl(t, withToken, "", "jobs", "watch", s.JobID, "--ca-file", caFile)
	if r.code != exitJobFailed || !strings.Contains(r.stdout, "cancelled") || strings.Contains(r.stderr, "polling") {
		t.Fatalf("watch over wss: %s", r)
	}
}

// hyperctl agents enrolled|rotate|forget (issue 18): an admin manages agent identities; a
// forgotten agent's credential stops working.
func TestAgentIdentityCommands(t *testing.T) {
	const token = "admin-token-0123456789abcdef"
	cfg := controller.TestConfig(t, "ids1", t.TempDir())
	cfg.Auth.Tokens = []api.Token{{Name: "ops", Role: api.RoleAdmin, Token: token}}
	cfg.Agents.JoinToken = "join-token-0123456789abcdef"
	c, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	controller.WaitFor(t, 10*time.Second, "leader", c.Node.IsLeader)
	agent := fleettest.NewAgent("kvm-id-1", c.URL())
	agent.Token = cfg.Agents.JoinToken
	if code, err := agent.Enroll(); err != nil {
		t.Fatalf("enrol: %d %v", code, err)
	}
	env := map[string]string{"HYPERSDK_SERVER": c.URL(), "HYPERSDK_TOKEN": token}
	cases := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"agents", "enrolled"}, 0, "kvm-id-1"},
		{[]string{"agents", "rotate", "kvm-id-1"}, 0, "will rotate its credential"},
		{[]string{"agents", "enrolled", "-o", "json"}, 0, `"rotate_requested": true`},
		{[]string{"agents", "forget", "nobody"}, exitRejected, ""},
		{[]string{"agents", "forget", "kvm-id-1"}, 0, "forgotten"},
		{[]string{"agents", "enrolled"}, 0, ""},
	}
	for _, tc := range cases {
		r := hyperctl(t, env, "", tc.args...)
		if r.code != tc.code || !strings.Contains(r.stdout, tc.out) {
			t.Fatalf("hyperctl %s: %s, want exit %d and %q", strings.Join(tc.args, " "), r, tc.code, tc.out)
		}
	}
	if r := hyperctl(t, env, "", "agents", "enrolled"); strings.Contains(r.stdout, "kvm-id-1") {
		t.Fatalf("forgotten agent still listed:\n%s", r)
	}
	if code, err := agent.Heartbeat(); code != http.StatusUnauthorized {
		t.Fatalf("forgotten agent's heartbeat: %d %v, want 401", code, err)
	}
}

// TestSubmitWatchThroughFollower: `jobs submit -f job.yaml --watch` with a follower as the
// only server follows the job to its end, 6 times of 6 (issue 17: 6 of 6 printed
// "job … submitted", then "job … not found (HTTP 404)" and exit 1, so a script resubmitted
// and the VM was migrated twice). An agent on the leader completes each job.
func TestSubmitWatchThroughFollower(t *testing.T) {
	nodes := controller.StartTestCluster(t, 3)
	leader := controller.Leader(nodes)
	follower := controller.Follower(nodes, leader)
	// A follower that just joined reads 503 until it has caught up once (tested in
	// controller/freshness_test.go); read-your-writes is about a node that serves reads.
	controller.WaitFor(t, 10*time.Second, "the follower caught up", func() bool { return follower.Node.Sync().CaughtUp })
	env := map[string]string{"HYPERSDK_SERVER": follower.URL()}
	agent := fleettest.NewAgent("kvm-watch", leader.URL())
	for i := 0; i < 6; i++ {
		file := writeFile(t, "job.yaml", strings.Replace(jobYAML, "web-1", fmt.Sprintf("watch-%d", i), 1))
		done := make(chan result, 1)
		go func() { done <- hyperctl(t, env, "", "jobs", "submit", "-f", file, "--watch") }()
		l := agent.Lease(t, 20*time.Second)
		agent.Complete(t, l, &proto.JobResult{DomainName: fmt.Sprintf("watch-%d", i)})
		var r result
		select {
		case r = <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("try %d: watch did not end", i+1)
		}
		if r.code != 0 || !strings.Contains(r.stdout, "completed") {
			t.Fatalf("try %d of 6 through follower %s: %s", i+1, follower.Node.ID(), r)
		}
	}
}
