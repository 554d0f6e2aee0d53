package grafana_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/packaging/grafana"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/client"
	"github.com/hypersdk/hypersdk/test/fleettest"
	"github.com/hypersdk/hypersdk/test/harness"
)

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

func load(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(grafana.Dashboard, &d); err != nil {
		t.Fatalf("hypersdk.json: %v", err)
	}
	return d
}

// exprs returns every PromQL expression of the dashboard, its variables' queries included.
func exprs(d dashboard) []string {
	var out []string
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			out = append(out, t.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			out = append(out, v.Definition)
		}
	}
	return out
}

var (
	reString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	reMatchers = regexp.MustCompile(`\{[^}]*\}`)
	reRange    = regexp.MustCompile(`\[[^\]]*\]`)
	reGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reLabelVal = regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,`)
	reIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	keywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true}
)

// metricNames extracts the metric names a PromQL expression reads: identifiers that are
// not functions, aggregation keywords, label names or durations.
func metricNames(expr string) []string {
	if m := reLabelVal.FindStringSubmatch(expr); m != nil {
		return []string{m[1]}
	}
	s := reString.ReplaceAllString(expr, " ")
	s = reMatchers.ReplaceAllString(s, " ")
	s = reRange.ReplaceAllString(s, " ")
	s = reGrouping.ReplaceAllString(s, " ")
	var out []string
	for _, loc := range reIdent.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		rest := strings.TrimLeft(s[loc[1]:], " ")
		if strings.HasPrefix(rest, "(") || keywords[strings.ToLower(name)] {
			continue // a function or an aggregation
		}
		if loc[0] > 0 && (s[loc[0]-1] == '$' || (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9')) {
			continue // a variable or the unit of a number
		}
		out = append(out, name)
	}
	return out
}

func TestMetricNameExtraction(t *testing.T) {
	cases := []struct {
		expr string
		want []string
	}{
		{`sum(max by (agent) (hypersdk_agent_up{agent=~"$agent"}))`, []string{"hypersdk_agent_up"}},
		{`histogram_quantile(0.95, sum by (le, path) (rate(hypersdk_api_request_duration_seconds_bucket{path!="/x"}[$__rate_interval])))`,
			[]string{"hypersdk_api_request_duration_seconds_bucket"}},
		{`1 - a_free / a_total`, []string{"a_free", "a_total"}},
		{`sum(x) or vector(0)`, []string{"x"}},
		{`label_values(hypersdk_agent_up, agent)`, []string{"hypersdk_agent_up"}},
		{`clamp_min(max(delta(j{status="completed"}[1h])), 0)`, []string{"j"}},
	}
	for _, tc := range cases {
		got := metricNames(tc.expr)
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Fatalf("%s: got %v, want %v", tc.expr, got, tc.want)
		}
	}
}

// perAgent are the controllers' per-host series (label agent), filtered by $agent.
var perAgent = map[string]bool{
	"hypersdk_agent_up": true, "hypersdk_agent_cpus": true, "hypersdk_agent_memory_total_bytes": true,
	"hypersdk_agent_memory_free_bytes": true, "hypersdk_agent_storage_free_bytes": true,
	"hypersdk_agent_running_jobs": true, "hypersdk_agent_max_jobs": true,
	"hypersdk_jobs_transfer_bytes_per_second": true, "hypersdk_jobs_transferred_bytes": true, "hypersdk_jobs_transfer_total_bytes": true,
}

// TestDashboardShape: valid JSON Grafana imports, every panel on the data source
// variable, no overlapping panels, per-host panels filtered by the host variable.
func TestDashboardShape(t *testing.T) {
	d := load(t)
	if d.UID == "" || d.Title == "" || len(d.Panels) < 10 {
		t.Fatalf("uid %q title %q panels %d", d.UID, d.Title, len(d.Panels))
	}
	ids := map[int]bool{}
	type cell struct{ x, y int }
	used := map[cell]string{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Fatalf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
			for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
				if other, ok := used[cell{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap at %d,%d", p.Title, other, x, y)
				}
				used[cell{x, y}] = p.Title
			}
		}
		if p.GridPos.X+p.GridPos.W > 24 {
			t.Fatalf("panel %q is wider than the grid", p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Fatalf("panel %q: data source %+v, %d targets", p.Title, p.Datasource, len(p.Targets))
		}
		for _, tg := range p.Targets {
			for _, m := range metricNames(tg.Expr) {
				if perAgent[m] && !strings.Contains(tg.Expr, m+`{agent=~"$agent"`) {
					t.Fatalf("panel %q ignores the host variable: %s", p.Title, tg.Expr)
				}
			}
		}
	}
}

// scrape returns the metric families in a /metrics answer with the sample names each
// family may produce.
func scrape(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			parts := strings.Fields(f)
			if len(parts) != 2 {
				continue
			}
			switch parts[1] {
			case "histogram":
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[parts[0]+s] = false
				}
			case "summary":
				names[parts[0]+"_sum"], names[parts[0]+"_count"] = false, false
			}
			names[parts[0]] = false
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// A sample: the family has a series (a vector without any would read as absent).
		name := line
		if i := strings.IndexAny(line, "{ "); i > 0 {
			name = line[:i]
		}
		names[name] = true
	}
	return names
}

// liveController starts two controllers with an agent in their gossip pool, a running job
// with progress, and a write forwarded by the follower: every series the dashboard reads.
func liveController(t *testing.T) *controller.Controller {
	nodes := controller.StartTestCluster(t, 2)
	fleettest.StartMember(t, "kvm-graf-1", 2, nodes[0].GossipAddr(), nodes[1].GossipAddr())
	leader := controller.Leader(nodes)
	follower := nodes[0]
	if follower == leader {
		follower = nodes[1]
	}
	cl, _ := client.New(client.Config{Servers: []string{follower.URL()}})
	if _, err := cl.SubmitJob(context.Background(), fleettest.JobBody("DC0/vm/grafana-1")); err != nil {
		t.Fatal(err)
	}
	agent := fleettest.NewAgent("kvm-graf-1", leader.URL())
	l := agent.Lease(t, 10*time.Second)
	agent.Progress(t, l, proto.Progress{Stage: proto.StageConversion, PercentComplete: 40, CurrentBytes: 4 << 30, TotalBytes: 10 << 30, BytesPerSecond: 150 << 20})
	controller.WaitFor(t, 10*time.Second, "the follower sees the agent", func() bool {
		_, err := cl.Agent(context.Background(), "kvm-graf-1")
		return err == nil
	})
	controller.WaitFor(t, 10*time.Second, "the follower applied the progress", func() bool {
		j, err := cl.Job(context.Background(), l.JobID)
		return err == nil && j.Progress.BytesPerSecond > 0
	})
	return follower
}

// TestMetricsExist: every metric the dashboard queries is in a live controller's /metrics,
// with at least one series; and, where Prometheus is installed, every query evaluates on
// a real Prometheus scraping that controller.
func TestMetricsExist(t *testing.T) {
	d := load(t)
	c := liveController(t)
	have := scrape(t, c.URL()+"/metrics")
	agentAddr := startAgent(t, c)
	if agentAddr != "" {
		for m, ok := range scrape(t, "http://"+agentAddr+"/metrics") {
			have[m] = have[m] || ok
		}
	}

	wanted := map[string][]string{} // metric -> panels
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricNames(tg.Expr) {
				wanted[m] = append(wanted[m], p.Title)
			}
		}
	}
	for _, e := range exprs(d) {
		for _, m := range metricNames(e) {
			if _, ok := wanted[m]; !ok {
				wanted[m] = []string{"variables"}
			}
		}
	}
	var missing []string
	for m, panels := range wanted {
		if agentAddr == "" && agentSide[m] {
			t.Logf("%s: no agent binary to check it against (make build)", m)
			continue
		}
		if !have[m] {
			missing = append(missing, fmt.Sprintf("%s (panels %s)", m, strings.Join(panels, ", ")))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("the dashboard queries metrics with no series in /metrics:\n  %s", strings.Join(missing, "\n  "))
	}
	if len(wanted) < 15 {
		t.Fatalf("only %d metrics found in the dashboard: the extraction is broken", len(wanted))
	}

	t.Run("prometheus", func(t *testing.T) { evaluateOnPrometheus(t, d, c, agentAddr) })
}

// agentSide are the series only an agent's own /metrics has.
var agentSide = map[string]bool{
	"hypersdk_agent_jobs_running": true, "hypersdk_agent_jobs_finished_total": true, "hypersdk_agent_heartbeats_total": true,
}

// startAgent runs bin/hypersdk-agent against the controller and returns its /metrics
// address, or "" when the binary is not built. The job of liveController is leased
// already, so this agent stays idle.
func startAgent(t *testing.T, c *controller.Controller) string {
	bin := filepath.Join(harness.BinDir(t), "hypersdk-agent")
	if _, err := os.Stat(bin); err != nil {
		return ""
	}
	dir := t.TempDir()
	api := freePort(t)
	harness.Start(t, bin, "agent", dir, "--name", "kvm-graf-agent", "--controllers", c.URL(), "--api-addr", api,
		"--gossip-addr", freePort(t), "--gossip-join", c.GossipAddr(), "--fast-gossip", "--storage-dir", filepath.Join(dir, "storage"),
		"--libvirt-uri", "test:///default", "--log-level", "warn")
	controller.WaitFor(t, 15*time.Second, "the agent serves /metrics", func() bool {
		resp, err := http.Get("http://" + api + "/metrics")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return api
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type promAnswer struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		Result []json.RawMessage `json:"result"`
	} `json:"data"`
}

func promQuery(base, q string) (promAnswer, error) {
	var a promAnswer
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("%d %s", resp.StatusCode, b)
	}
	return a, nil
}

func evaluateOnPrometheus(t *testing.T, d dashboard, c *controller.Controller, agentAddr string) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (make setup installs it): PromQL not evaluated")
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n  - job_name: hypersdk-controller\n    static_configs: [{targets: ['%s']}]\n", c.APIAddr())
	if agentAddr != "" {
		cfg += fmt.Sprintf("  - job_name: hypersdk-agent\n    static_configs: [{targets: ['%s']}]\n", agentAddr)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	base := "http://" + addr
	controller.WaitFor(t, 30*time.Second, "prometheus scraped the controller twice", func() bool {
		a, err := promQuery(base, `count_over_time(up[1m]) >= 2 and up == 1`)
		want := 1
		if agentAddr != "" {
			want = 2
		}
		return err == nil && a.Status == "success" && len(a.Data.Result) == want
	})
	r := strings.NewReplacer(`$agent`, `.*`, `$__rate_interval`, `1m`, `$__interval`, `15s`, `$__range`, `1h`)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			q := r.Replace(tg.Expr)
			a, err := promQuery(base, q)
			if err != nil || a.Status != "success" {
				t.Fatalf("panel %q: %s: %v %s", p.Title, q, err, a.Error)
			}
			// Plain gauges must give a series now; range functions need history.
			agentOnly := false
			for _, m := range metricNames(q) {
				agentOnly = agentOnly || agentSide[m]
			}
			if !strings.ContainsAny(q, "[") && len(a.Data.Result) == 0 && (agentAddr != "" || !agentOnly) {
				t.Fatalf("panel %q: %s has no series", p.Title, q)
			}
		}
	}
}
