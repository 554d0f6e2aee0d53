package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// The fault-injection tests (chaos, partitions, broken transfers, restarts) share this
// kit: a fleet of real controller and agent processes, clients that submit with ids they
// choose, and the checks every one of them ends with.

// longRun reports whether the long versions run (make chaos sets HYPERSDK_CHAOS=long).
func longRun() bool { return os.Getenv("HYPERSDK_CHAOS") == "long" }

// faultPassword is the vCenter password of every fault-test job.
const faultPassword = "fault-Canary-pw-3"

// fleetConfig describes a fleet for a fault test.
type fleetConfig struct {
	Controllers int
	Agents      int
	MaxJobs     int // per agent
	LeaseTTL    time.Duration
	// SnapshotThreshold and TrailingLogs tune raft snapshots (0: the controller's defaults).
	SnapshotThreshold, TrailingLogs int
	Sim                             vcsim.Config
	// ExtraConfig is appended to the controllers' YAML (whole top-level sections).
	ExtraConfig string
	// AgentArgs are extra flags of every agent.
	AgentArgs []string
	// TLS serves the controllers' API over https with a harness certificate, which makes
	// raft, forwarding and joins mutual TLS too.
	TLS bool
}

// fleet is a running set of controllers, agents and the simulator.
type fleet struct {
	t      *testing.T
	dir    string
	sim    *vcsim.Sim
	cs     []*harness.Controller
	agents []*harness.Agent
	// attemptLogs are the agents' --attempt-log files, by agent name.
	attemptLogs map[string]string
}

// controllerConfig writes the controllers' YAML and returns its path.
func controllerConfig(t *testing.T, dir string, cfg fleetConfig) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "agents:\n  lease_ttl: %s\n", cfg.LeaseTTL)
	if cfg.SnapshotThreshold > 0 || cfg.TrailingLogs > 0 {
		b.WriteString("cluster:\n")
		if cfg.SnapshotThreshold > 0 {
			fmt.Fprintf(&b, "  snapshot_threshold: %d\n  snapshot_interval: 500ms\n", cfg.SnapshotThreshold)
		}
		if cfg.TrailingLogs > 0 {
			fmt.Fprintf(&b, "  trailing_logs: %d\n", cfg.TrailingLogs)
		}
	}
	b.WriteString(cfg.ExtraConfig)
	path := filepath.Join(dir, "controller.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startFleet starts the simulator (when cfg.Sim.VMs > 0), the controllers (fast raft) and
// the agents (each with an attempt log), and returns once the agents serve /health.
func startFleet(t *testing.T, cfg fleetConfig) *fleet {
	t.Helper()
	if cfg.Agents > 0 {
		harness.RequireLibvirt(t)
		harness.Bin(t, "hypersdk-agent")
	}
	f := &fleet{t: t, dir: t.TempDir(), attemptLogs: map[string]string{}}
	if cfg.Sim.VMs > 0 {
		f.sim = startSim(t, cfg.Sim)
	}
	if cfg.TLS {
		files := harness.WriteTLS(t, f.dir)
		cfg.ExtraConfig += files.APIConfig()
		f.cs = harness.StartTLSControllers(t, f.dir, cfg.Controllers, files, "--config", controllerConfig(t, f.dir, cfg), "--fast-raft")
	} else {
		f.cs = harness.StartControllers(t, f.dir, cfg.Controllers, "--config", controllerConfig(t, f.dir, cfg), "--fast-raft")
	}
	for i := 0; i < cfg.Agents; i++ {
		f.startAgent(fmt.Sprintf("agent-%d", i+1), cfg.MaxJobs, cfg.AgentArgs...)
	}
	return f
}

// startAgent starts one more agent with an attempt log.
func (f *fleet) startAgent(name string, maxJobs int, extra ...string) *harness.Agent {
	f.t.Helper()
	f.attemptLogs[name] = filepath.Join(f.dir, name+".attempts.jsonl")
	args := append([]string{"--max-jobs", strconv.Itoa(maxJobs), "--attempt-log", f.attemptLogs[name]}, extra...)
	a := harness.StartAgent(f.t, f.dir, name, f.cs, args...)
	f.agents = append(f.agents, a)
	return a
}

// startSim starts a simulator with the fault tests' credentials; the domains named after
// its VMs are undefined when the test ends.
func startSim(t *testing.T, cfg vcsim.Config) *vcsim.Sim {
	t.Helper()
	cfg.Username, cfg.Password = "admin", faultPassword
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	sim := harness.StartSim(t, cfg)
	cleanupSimDomains(t, sim)
	return sim
}

// jobDef is a job migrating VM i of the fleet's simulator (see simJob).
func (f *fleet) jobDef(id string, i int, vcenter string, maxAttempts int) proto.JobDefinition {
	return simJob(f.sim, id, i, vcenter, maxAttempts)
}

// simJob is a job migrating VM i of sim over https through vcenter (host:port; empty: the
// simulator itself).
func simJob(sim *vcsim.Sim, id string, i int, vcenter string, maxAttempts int) proto.JobDefinition {
	if vcenter == "" {
		vcenter = sim.URL.Host
	}
	vm := sim.VMs[i]
	return proto.JobDefinition{
		ID: id, Name: "fault " + vm.Name, VMPath: vm.Path,
		Source: proto.Source{Type: "vsphere", VCenterURL: "https://" + vcenter + "/sdk", Username: "admin",
			Password: faultPassword, Thumbprint: sim.Thumbprint},
		Destination: proto.Destination{Type: "kvm"},
		Options:     proto.Options{ConversionMethod: "https", MaxAttempts: maxAttempts},
	}
}

// cleanupSimDomains undefines, when the test ends, every libvirt domain named after one of
// the simulator's VMs (one listing instead of a lookup per VM: chaos runs have hundreds).
func cleanupSimDomains(t *testing.T, sim *vcsim.Sim) {
	names := map[string]bool{}
	for _, vm := range sim.VMs {
		names[vm.Name] = true
	}
	t.Cleanup(func() {
		out, err := harness.Virsh("list", "--all", "--name")
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		for _, name := range strings.Fields(out) {
			if !names[name] {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if _, err := harness.Virsh("undefine", "--nvram", name); err != nil {
					t.Logf("cleanup: %v", err)
				}
			}()
		}
		wg.Wait()
	})
}

// idJob is job k of a run, with an id of the client's choosing; its source is unreachable
// (for tests where no agent runs it, or where it must fail at once).
func idJob(run string, k int64) proto.JobDefinition {
	return proto.JobDefinition{ID: fmt.Sprintf("%s-%06d", run, k), VMPath: fmt.Sprintf("/DC0/vm/%s-%06d", run, k),
		Source:      proto.Source{Type: "vsphere", VCenterURL: "https://127.0.0.1:1/sdk", Username: "admin", Password: faultPassword},
		Destination: proto.Destination{Type: "kvm"}}
}

// urlsOf returns a function listing the controllers' API base URLs (for a submitter).
func urlsOf(cs []*harness.Controller) func() []string {
	return func() []string {
		out := make([]string, len(cs))
		for i, c := range cs {
			out[i] = c.URL()
		}
		return out
	}
}

// submitter is a set of clients that submit jobs with ids they chose, through any
// controller, and retry on 503 and transport errors: a 409 on a retry means an earlier try
// was stored, so the job counts as acknowledged.
type submitter struct {
	urls func() []string // controller base URLs to pick from
	// client is the HTTP client (harness.Client unless set).
	client *http.Client

	mu            sync.Mutex
	acked         map[string]bool
	tried         map[string]bool
	ackedOnRetry  int // 409 after an earlier try: the earlier one was stored
	retries       int // tries beyond the first
	unavailable   int // 503 answers
	transportErrs int
	unexpected    []string // any other status (5xx other than 503, 4xx other than 409 on retry)
	gaveUp        []string
}

func newSubmitter(urls func() []string) *submitter {
	return &submitter{urls: urls, client: harness.Client, acked: map[string]bool{}, tried: map[string]bool{}}
}

// submit tries def through random controllers until it is acknowledged or timeout passes.
// It returns whether the job was acknowledged.
func (s *submitter) submit(def proto.JobDefinition, timeout time.Duration) bool {
	body, _ := json.Marshal(def)
	deadline := time.Now().Add(timeout)
	for try := 0; ; try++ {
		urls := s.urls()
		url := urls[rand.IntN(len(urls))]
		code, err := s.post(url+"/jobs/submit", body)
		s.mu.Lock()
		s.tried[def.ID] = true
		if try > 0 {
			s.retries++
		}
		switch {
		case err != nil:
			s.transportErrs++
		case code == http.StatusCreated, code == http.StatusConflict && try > 0:
			if code == http.StatusConflict {
				s.ackedOnRetry++
			}
			s.acked[def.ID] = true
			s.mu.Unlock()
			return true
		case code == http.StatusServiceUnavailable:
			s.unavailable++
		default:
			s.unexpected = append(s.unexpected, fmt.Sprintf("%s try %d via %s: %d", def.ID, try, url, code))
		}
		if time.Now().After(deadline) {
			s.gaveUp = append(s.gaveUp, def.ID)
			s.mu.Unlock()
			return false
		}
		s.mu.Unlock()
		time.Sleep(time.Duration(50+rand.IntN(150)) * time.Millisecond) // a client's retry pacing
	}
}

func (s *submitter) post(url string, body []byte) (int, error) {
	resp, err := s.client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func (s *submitter) ackedIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.acked))
	for id := range s.acked {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// allJobs reads every job a controller stores (paged by cursor). ok is false when the
// controller did not answer.
func allJobs(c *harness.Controller) (jobs []proto.Job, ok bool) {
	q := proto.QueryRequest{Limit: proto.MaxQueryLimit}
	for {
		var page proto.QueryResponse
		code, err := harness.PostJSON(c.URL()+"/jobs/query", q, &page)
		if err != nil || code != http.StatusOK {
			return nil, false
		}
		jobs = append(jobs, page.Jobs...)
		if page.NextCursor == "" {
			return jobs, true
		}
		q.Cursor = page.NextCursor
	}
}

// convergence is what the nodes store once quiet, compared across nodes.
type convergence struct {
	lost, duplicated []string
	// disagree lists jobs whose status differs between nodes (or that a node lacks).
	disagree []string
	// byID is the first node's view.
	byID map[string]proto.Job
}

// waitConverged polls until every node stores every acknowledged job exactly once, no
// job is stored twice (same VM path under two ids), all nodes agree on every job's status,
// attempt and agent, and (if terminal) every job has ended; on timeout it returns what
// differed last (the caller reports it).
func waitConverged(t *testing.T, cs []*harness.Controller, acked []string, timeout time.Duration, terminal bool) convergence {
	t.Helper()
	var last convergence
	deadline := time.Now().Add(timeout)
	for {
		last = checkConverged(cs, acked)
		if last.ok(terminal) || time.Now().After(deadline) {
			return last
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (c convergence) ok(terminal bool) bool {
	if c.byID == nil || len(c.lost)+len(c.duplicated)+len(c.disagree) > 0 {
		return false
	}
	for _, j := range c.byID {
		if !terminal {
			break
		}
		if !j.Status.Terminal() {
			return false
		}
	}
	return true
}

func checkConverged(cs []*harness.Controller, acked []string) convergence {
	var c convergence
	views := make([]map[string]proto.Job, len(cs))
	for i, n := range cs {
		jobs, ok := allJobs(n)
		if !ok {
			c.disagree = append(c.disagree, n.ID+" did not answer")
			return c
		}
		views[i] = map[string]proto.Job{}
		paths := map[string]int{}
		for _, j := range jobs {
			views[i][j.Definition.ID] = j
			paths[j.Definition.VMPath]++
		}
		for p, k := range paths {
			if k > 1 {
				c.duplicated = append(c.duplicated, fmt.Sprintf("%s: %s stored %d times", n.ID, p, k))
			}
		}
		for _, id := range acked {
			if _, ok := views[i][id]; !ok {
				c.lost = append(c.lost, n.ID+": "+id)
			}
		}
	}
	c.byID = views[0]
	for i := 1; i < len(views); i++ {
		for id, j := range views[0] {
			o, ok := views[i][id]
			if !ok || o.Status != j.Status || o.Attempt != j.Attempt || o.Agent != j.Agent {
				c.disagree = append(c.disagree, fmt.Sprintf("%s: %s says %s/%d/%s, %s says %s/%d/%s",
					id, cs[0].ID, j.Status, j.Attempt, j.Agent, cs[i].ID, o.Status, o.Attempt, o.Agent))
			}
		}
		if len(views[i]) != len(views[0]) {
			c.disagree = append(c.disagree, fmt.Sprintf("%s stores %d jobs, %s %d", cs[0].ID, len(views[0]), cs[i].ID, len(views[i])))
		}
	}
	return c
}

// attempt is one (job, attempt) run on an agent, from the agents' attempt logs.
type attempt struct {
	agent      string
	job        string
	attempt    int
	start, end time.Time // end zero: no end recorded
	outcome    string
	// commit is the outcome of the attempt's commit point ("" when it never got there):
	// committed, refused, cancelled or abandoned.
	commit string
}

// readAttempts parses the agents' attempt logs.
func readAttempts(t *testing.T, logs map[string]string) []attempt {
	t.Helper()
	type key struct {
		agent, job string
		attempt    int
	}
	byKey := map[key]*attempt{}
	var order []key
	for _, path := range logs {
		f, err := os.Open(path)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r worker.AttemptRecord
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				// A SIGKILL can cut the last line short.
				continue
			}
			k := key{r.Agent, r.JobID, r.Attempt}
			a, ok := byKey[k]
			if !ok {
				a = &attempt{agent: r.Agent, job: r.JobID, attempt: r.Attempt}
				byKey[k] = a
				order = append(order, k)
			}
			switch r.Event {
			case "start":
				a.start = r.Time
			case "end":
				a.end, a.outcome = r.Time, r.Outcome
			case "commit":
				a.commit = r.Outcome
			}
		}
		f.Close()
	}
	out := make([]attempt, 0, len(order))
	for _, k := range order {
		out = append(out, *byKey[k])
	}
	return out
}

// overlaps returns every pair of attempts of one job whose runs overlap in time. An attempt
// with no end ran until its agent was killed: deathOf gives that time for an agent and a
// start time (zero: still running at the end of the test).
func overlaps(atts []attempt, deathOf func(agent string, after time.Time) time.Time) []string {
	byJob := map[string][]attempt{}
	for _, a := range atts {
		if a.end.IsZero() {
			a.end = deathOf(a.agent, a.start)
			if a.end.IsZero() {
				a.end = time.Now()
			}
		}
		byJob[a.job] = append(byJob[a.job], a)
	}
	var out []string
	for job, as := range byJob {
		for i := range as {
			for k := i + 1; k < len(as); k++ {
				a, b := as[i], as[k]
				if a.start.Before(b.end) && b.start.Before(a.end) {
					out = append(out, fmt.Sprintf("%s: attempt %d on %s [%s, %s] and attempt %d on %s [%s, %s]", job,
						a.attempt, a.agent, a.start.Format("15:04:05.000"), a.end.Format("15:04:05.000"),
						b.attempt, b.agent, b.start.Format("15:04:05.000"), b.end.Format("15:04:05.000")))
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// sameDisk reports whether image (format qcow2 or raw) holds exactly the bytes of the flat
// source extent.
func sameDisk(flat, image, format string) error {
	out, err := exec.Command("qemu-img", "compare", "-q", "-f", "raw", "-F", format, flat, image).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img compare %s %s: %v: %s", flat, image, err, bytes.TrimSpace(out))
	}
	return nil
}

// vmIndex maps the simulator's VM paths to their index.
func (f *fleet) vmIndex() map[string]int {
	m := map[string]int{}
	for i, vm := range f.sim.VMs {
		m[vm.Path] = i
	}
	return m
}

// checkDisks compares every completed job's disks with its source extents: a completed
// job must never hold a wrong disk. It returns the mismatches.
func (f *fleet) checkDisks(jobs map[string]proto.Job) []string {
	idx := f.vmIndex()
	var (
		mu  sync.Mutex
		bad []string
		wg  sync.WaitGroup
		sem = make(chan struct{}, 4)
	)
	report := func(s string) {
		mu.Lock()
		bad = append(bad, s)
		mu.Unlock()
	}
	for id, j := range jobs {
		if j.Status != proto.StatusCompleted {
			continue
		}
		i, ok := idx[j.Definition.VMPath]
		if !ok || j.Result == nil || len(j.Result.Disks) != len(f.sim.VMs[i].Disks) {
			report(fmt.Sprintf("%s: result %+v does not match the VM", id, j.Result))
			continue
		}
		for k, d := range j.Result.Disks {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := sameDisk(f.sim.VMs[i].Disks[k].FlatPath, d, "qcow2"); err != nil {
					report(id + ": " + err.Error())
				}
			}()
		}
	}
	wg.Wait()
	sort.Strings(bad)
	return bad
}

// table renders rows of (name, value) as an aligned two-column table.
func table(title string, rows [][2]string) string {
	w := 0
	for _, r := range rows {
		w = max(w, len(r[0]))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n", title)
	for _, r := range rows {
		fmt.Fprintf(&b, "  %-*s  %s\n", w, r[0], r[1])
	}
	return b.String()
}

// listSome shows at most n items of a list for a failure message.
func listSome(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, "\n  ")
	}
	return strings.Join(items[:n], "\n  ") + fmt.Sprintf("\n  ... and %d more", len(items)-n)
}
