package web_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/hypersdk/hypersdk/agent/capacity"
	"github.com/hypersdk/hypersdk/agent/membership"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/controller/web"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/client"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

// TestFiles: the page, its script and style are embedded and served with a policy that
// forbids anything from another origin.
func TestFiles(t *testing.T) {
	nodes := controller.StartTestCluster(t, 1)
	cases := []struct {
		path, contentType string
		status            int
	}{
		{"/ui/", "text/html", 200},
		{"/ui/app.js", "javascript", 200},
		{"/ui/style.css", "text/css", 200},
		{"/ui/favicon.svg", "image/svg+xml", 200},
		{"/ui/nope.js", "", 404},
		{"/ui", "", 200}, // redirected to /ui/
		{"/", "", 200},   // redirected to /ui/
	}
	for _, tc := range cases {
		resp, err := http.Get(nodes[0].URL() + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(resp.Header.Get("Content-Type"), tc.contentType) {
			t.Fatalf("%s: %d %q", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if tc.status == 200 && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
			t.Fatalf("%s: no CSP", tc.path)
		}
	}
	// Nothing in the page may come from another origin: no CDN, no fonts.
	for _, name := range []string{"index.html", "app.js", "style.css"} {
		b, err := os.ReadFile(filepath.Join("static", name))
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"http://", "https://", "//cdn", "innerHTML"} {
			if strings.Contains(string(b), bad) && !(bad == "http://" && strings.Contains(string(b), "http://www.w3.org/2000/svg")) {
				t.Fatalf("%s contains %q", name, bad)
			}
		}
	}
	if web.Prefix != "/ui/" {
		t.Fatal(web.Prefix)
	}
}

func chromiumPath(t *testing.T) string {
	if p := os.Getenv("HYPERSDK_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not installed (apt-get install chromium, or make setup): skipping the browser test")
	return ""
}

// newBrowser starts headless Chromium with a fresh profile, offline apart from loopback.
func newBrowser(t *testing.T) (context.Context, func() []string) {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1100),
	}
	var mu sync.Mutex
	var jsErrors []string
	// Runs on the tab's reader goroutine: record and return, nothing more.
	listen := func(ev any) {
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			mu.Lock()
			jsErrors = append(jsErrors, fmt.Sprintf("%s %s:%d", e.ExceptionDetails.Text, e.ExceptionDetails.URL, e.ExceptionDetails.LineNumber))
			mu.Unlock()
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				var parts []string
				for _, a := range e.Args {
					parts = append(parts, string(a.Value))
				}
				mu.Lock()
				jsErrors = append(jsErrors, "console.error "+strings.Join(parts, " "))
				mu.Unlock()
			}
		}
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithListener(listen))
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	// Start the browser now, so its start-up is not charged to the first wait.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), jsErrors...)
	}
}

// waitJS polls a JavaScript expression until it is true.
func waitJS(t *testing.T, ctx context.Context, timeout time.Duration, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("after %s the page does not show %s (last error %v)\n--- page text ---\n%s", timeout, what, err, body)
		}
		<-tick.C
	}
}

func jsString(s string) string { return fmt.Sprintf("%q", s) }

// submitOnce submits def with a client-chosen id and, as the API asks, resubmits it after a
// 503 (an election on a loaded machine): a 409 then means the first try was stored.
func submitOnce(t *testing.T, cl *client.Client, def proto.JobDefinition) proto.SubmitResponse {
	t.Helper()
	def.ID = uuid.NewString()
	deadline := time.Now().Add(30 * time.Second)
	for {
		sub, err := cl.SubmitJob(context.Background(), def)
		switch code := client.StatusCode(err); {
		case err == nil:
			return sub
		case code == http.StatusConflict:
			return proto.SubmitResponse{JobID: def.ID}
		case code != http.StatusServiceUnavailable || time.Now().After(deadline):
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// transferring is a host whose agent reports its copies' rate and cap (agent.rateProber).
type transferring struct {
	membership.Prober
	rate, cap uint64
}

func (p transferring) Probe(ctx context.Context) (proto.AgentCapacity, proto.AgentCapabilities, error) {
	c, caps, err := p.Prober.Probe(ctx)
	c.TransferRateBytesPerSecond, c.TransferCapBytesPerSecond = p.rate, p.cap
	return c, caps, err
}

// TestDashboardLive loads the dashboard of a follower of a 3-controller cluster with two
// agents in the gossip pool, and checks that every agent has a card, and that a job's
// progress bar follows the agent's progress reports without a reload.
func TestDashboardLive(t *testing.T) {
	ctx, jsErrors := newBrowser(t)
	nodes := controller.StartTestCluster(t, 3)
	var gossip []string
	for _, n := range nodes {
		gossip = append(gossip, n.GossipAddr())
	}
	agents := []string{"kvm-ui-1", "kvm-ui-2"}
	var busy interface{ SetRunningJobs(int) }
	for i, name := range agents {
		// kvm-ui-2 has a VDDK that loads: its card lists the vddk method, kvm-ui-1's not.
		probe := capacity.Config{VDDKProbe: func(context.Context, string) (bool, string) { return i == 1, "VMware VDDK not found" }}
		var prober membership.Prober = fleettest.Prober(t, probe)
		if i == 1 {
			// It also copies at 40 MiB/s under its transfer.max_mbps of 800 (100 MB/s).
			prober = transferring{Prober: prober, rate: 40 << 20, cap: 100_000_000}
		}
		m := fleettest.StartMemberWith(t, name, 4, prober, gossip...)
		if busy == nil {
			busy = m
		}
	}
	leader := controller.Leader(nodes)
	var follower *controller.Controller
	for _, n := range nodes {
		if n != leader {
			follower = n
		}
	}

	cl, err := client.New(client.Config{Servers: []string{follower.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	def := fleettest.JobBody("DC0/vm/dashboard-web-1")
	def.Options.TargetAgent = "kvm-ui-1"
	sub := submitOnce(t, cl, def)
	agent := fleettest.NewAgent("kvm-ui-1", follower.URL())
	lease := agent.Lease(t, 10*time.Second)
	if lease.JobID != sub.JobID {
		t.Fatalf("leased %s, want %s", lease.JobID, sub.JobID)
	}
	busy.SetRunningJobs(1) // what the agent's worker advertises when it starts a job
	total := int64(40 << 30)
	agent.Progress(t, lease, proto.Progress{Stage: proto.StageConversion, PercentComplete: 25, CurrentBytes: total / 4, TotalBytes: total, BytesPerSecond: 180 << 20, ETASeconds: 171})
	populate(t, cl, follower.URL())
	// A job stored with what pre-flight validation found (the submit path with the vCenter's
	// answer already in: these test jobs name no real vCenter).
	warned := fleettest.JobBody("DC0/vm/usb-dongle-host")
	warned.ID, warned.CreatedAt, warned.Options.MaxAttempts = "job-with-concerns", time.Now().UTC(), 3
	// Pinned to a host that never asks, so it stays pending and no test agent leases it.
	warned.Options.TargetAgent = "kvm-ui-absent"
	if _, err := leader.Node.Apply(state.MustEncode(state.CmdSubmitJob, state.SubmitJob{Definition: warned, Concerns: []proto.Concern{
		{ID: "device.usb_passthrough", Category: proto.ConcernWarning, Message: "usb-dongle-host has USB devices of its ESXi host", Fix: "attach the device to the KVM host"},
		{ID: "firmware.efi_nvram", Category: proto.ConcernInfo, Message: "usb-dongle-host boots with UEFI"},
	}})); err != nil {
		t.Fatal(err)
	}

	if err := chromedp.Do(ctx, chromedp.Navigate(follower.URL()+"/ui/")); err != nil {
		t.Fatal(err)
	}
	row := `document.querySelector('tr[data-job-id=` + jsString(sub.JobID) + `]')`
	fill := `parseFloat(` + row + `?.querySelector('.bar .fill')?.style.width)`

	waitJS(t, ctx, 15*time.Second, "a card for every agent", fmt.Sprintf(
		`[%s].every(n => document.querySelector('.agent-card[data-agent="' + n + '"] .agent-state')?.textContent === 'alive')`,
		`"`+strings.Join(agents, `","`)+`"`))
	waitJS(t, ctx, 10*time.Second, "the job at 25%", fill+` === 25`)
	waitJS(t, ctx, 10*time.Second, "a job's validation concerns",
		`(e => e && !e.hidden && e.textContent === 'validation: 1 warning, 1 info' && e.title.includes('fix: attach the device'))`+
			`(document.querySelector('tr[data-job-id="job-with-concerns"] .concerns'))`)
	waitJS(t, ctx, 10*time.Second, "no concerns line on a job without any", `!!`+row+` && `+row+`.querySelector('.concerns').hidden`)
	waitJS(t, ctx, 10*time.Second, "vddk on the card of the agent whose VDDK loads, only there",
		`document.querySelector('.agent-card[data-agent="kvm-ui-2"] .methods').textContent.startsWith('vddk · ') && `+
			`!document.querySelector('.agent-card[data-agent="kvm-ui-1"] .methods').textContent.includes('vddk')`)
	waitJS(t, ctx, 10*time.Second, "how the host runs guests, TCG marked",
		`(e => e?.textContent === 'TCG (slow)' && e.classList.contains('warn') && e.title.includes('no /dev/kvm'))(document.querySelector('.agent-card[data-agent="kvm-ui-1"] .virt'))`)
	card2 := `document.querySelector('.agent-card[data-agent="kvm-ui-2"]')`
	waitJS(t, ctx, 10*time.Second, "the advertised rate against the agent's cap",
		card2+`.querySelector('.host-rate').textContent === '40.0 MiB/s' && `+
			card2+`.querySelector('.cap-row .meter-value').textContent === '40.0 MiB/s of 95.4 MiB/s' && `+
			`Math.abs(parseFloat(`+card2+`.querySelector('.cap-row .meter-fill').style.width) - 41.9) < 0.1 && `+
			`document.querySelector('.agent-card[data-agent="kvm-ui-1"] .cap-row .meter-value').textContent === 'no cap'`)
	waitJS(t, ctx, 10*time.Second, "three controllers and a leader",
		`document.querySelectorAll('#cluster-table tbody tr').length === 3 && !!document.querySelector('#cluster-table .role-leader')`)
	waitJS(t, ctx, 10*time.Second, "live updates over the WebSocket", `document.body.dataset.mode === 'websocket'`)
	// A reload would forget this.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.__sameDocument = 42`)); err != nil {
		t.Fatal(err)
	}

	agent.Progress(t, lease, proto.Progress{Stage: proto.StageConversion, PercentComplete: 70, CurrentBytes: total * 7 / 10, TotalBytes: total, BytesPerSecond: 230 << 20, ETASeconds: 53})
	waitJS(t, ctx, 10*time.Second, "the bar moved to 70%", fill+` === 70`)
	waitJS(t, ctx, 10*time.Second, "the host's transfer rate and its history",
		`document.querySelector('.agent-card[data-agent="kvm-ui-1"] .host-rate').textContent === '230 MiB/s' && `+
			`Number(document.querySelector('.agent-card[data-agent="kvm-ui-1"] svg.spark').dataset.samples) >= 2`)
	if same, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.__sameDocument || 0`)); err != nil || same != 42 {
		t.Fatalf("the page was reloaded (marker %d, %v)", same, err)
	}

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	out := os.Getenv("HYPERSDK_SCREENSHOT")
	if out == "" {
		out = filepath.Join(t.TempDir(), "dashboard.png")
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(png))

	// A warm job: its rounds, then its downtime, on its row.
	warm := fleettest.JobBody("DC0/vm/db-warm-1")
	// kvm-ui-2: a warm job needs vddk, which only kvm-ui-2 has.
	warm.Options.TargetAgent, warm.Options.Warm = "kvm-ui-2", true
	wsub := submitOnce(t, cl, warm)
	wagent := fleettest.NewAgent("kvm-ui-2", follower.URL())
	wl := wagent.Lease(t, 10*time.Second)
	if wl.JobID != wsub.JobID {
		t.Fatalf("leased %s, want the warm job %s", wl.JobID, wsub.JobID)
	}
	next := time.Now().Add(50 * time.Minute)
	wagent.Warm(t, wl, proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 3, ChangedBytes: 41 << 20, NextRoundAt: &next})
	wrow := `document.querySelector('tr[data-job-id=` + jsString(wsub.JobID) + `] .warm')`
	waitJS(t, ctx, 10*time.Second, "the warm job's rounds", wrow+`?.textContent.startsWith('warm · 3 rounds · last 41.0 MiB · next in 49m')`)
	wagent.Warm(t, wl, proto.WarmStatus{Phase: proto.WarmPhaseDone, Rounds: 3, ChangedBytes: 2 << 20, DowntimeSeconds: 0.94})
	wagent.Complete(t, wl, &proto.JobResult{DomainName: "db-warm-1"})
	waitJS(t, ctx, 10*time.Second, "the warm job's downtime", wrow+`?.textContent === 'warm · 3 rounds · last 2.0 MiB · downtime 0.9 s'`)
	waitJS(t, ctx, 10*time.Second, "no warm line on a cold job", row+`?.querySelector('.warm')?.hidden === true`)

	agent.Complete(t, lease, &proto.JobResult{DomainName: "dashboard-web-1"})
	waitJS(t, ctx, 10*time.Second, "the job completed", row+`?.querySelector('.status')?.textContent === 'completed'`)
	if errs := jsErrors(); len(errs) > 0 {
		t.Fatalf("JavaScript errors: %v", errs)
	}
}

// populate gives the page the rest of a working fleet: a job running on the second host,
// a completed one, a pending one, a schedule and a webhook.
func populate(t *testing.T, cl *client.Client, url string) {
	ctx := context.Background()
	agent2 := fleettest.NewAgent("kvm-ui-2", url)
	submit := func(vm, target string) string {
		def := fleettest.JobBody(vm)
		def.Options.TargetAgent = target
		return submitOnce(t, cl, def).JobID
	}
	submit("DC0/vm/db-replica-2", "kvm-ui-2")
	l := agent2.Lease(t, 10*time.Second)
	agent2.Progress(t, l, proto.Progress{Stage: proto.StageConversion, PercentComplete: 62, CurrentBytes: 62 << 30, TotalBytes: 100 << 30, BytesPerSecond: 95 << 20, ETASeconds: 400})
	submit("DC0/vm/build-agent-7", "kvm-ui-2")
	done := agent2.Lease(t, 10*time.Second)
	agent2.Complete(t, done, &proto.JobResult{DomainName: "build-agent-7"})
	submit("DC0/vm/legacy-crm", "kvm-ui-1")
	if _, err := cl.CreateSchedule(ctx, proto.ScheduleRequest{ID: "nightly-web", Name: "Nightly web tier", Schedule: "0 2 * * *",
		JobTemplate: &proto.JobDefinition{VMPath: "DC0/vm/web-*", Source: fleettest.JobBody("x").Source, Destination: proto.Destination{Type: "kvm"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.AddWebhook(ctx, proto.WebhookRequest{URL: "http://127.0.0.1:9/hooks/migrations", Events: []string{proto.EventJobFailed}}); err != nil {
		t.Fatal(err)
	}
}

// TestDashboardURL takes a screenshot of the dashboard of a running fleet
// (make screenshot URL=http://controller:8080); skipped unless HYPERSDK_SCREENSHOT_URL is set.
func TestDashboardURL(t *testing.T) {
	base := strings.TrimRight(os.Getenv("HYPERSDK_SCREENSHOT_URL"), "/")
	out := os.Getenv("HYPERSDK_SCREENSHOT")
	if base == "" || out == "" {
		t.Skip("HYPERSDK_SCREENSHOT_URL and HYPERSDK_SCREENSHOT not set")
	}
	ctx, _ := newBrowser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/ui/")); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, 15*time.Second, "data from the controller", `document.querySelectorAll('#cluster-table tbody tr').length > 0`)
	// Let the sparklines gather a few samples.
	waitJS(t, ctx, 30*time.Second, "a few rate samples", `[...document.querySelectorAll('svg.spark')].every(s => Number(s.dataset.samples) >= 5)`)
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(png))
}

// TestDashboardToken: against a controller that wants a token, the page asks for it once,
// keeps it in sessionStorage only, and then shows live data (the WebSocket included).
func TestDashboardToken(t *testing.T) {
	ctx, jsErrors := newBrowser(t)
	const token = "viewer-token-0123456789"
	cfg := controller.TestConfig(t, "auth1", t.TempDir())
	cfg.Auth.Tokens = []api.Token{{Name: "dash", Role: api.RoleViewer, Token: token}}
	c, err := controller.New(cfg, controller.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	controller.WaitFor(t, 10*time.Second, "leader", c.Node.IsLeader)

	var mu sync.Mutex
	prompts := 0
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			mu.Lock()
			prompts++
			mu.Unlock()
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: ev.Type == page.DialogTypePrompt, PromptText: token})
		}
	}()
	if err := chromedp.Do(ctx, chromedp.Navigate(c.URL()+"/ui/")); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, 15*time.Second, "data behind the token", `document.querySelectorAll('#cluster-table tbody tr').length === 1`)
	waitJS(t, ctx, 10*time.Second, "the WebSocket with the token", `document.body.dataset.mode === 'websocket'`)
	// Two more refresh cycles must not ask again.
	seen, err := chromedp.Run(ctx, chromedp.Evaluate[int](`Number(document.body.dataset.refreshes)`))
	if err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, 10*time.Second, "two more refreshes", fmt.Sprintf(`Number(document.body.dataset.refreshes) >= %d`, seen+2))
	mu.Lock()
	n := prompts
	mu.Unlock()
	if n != 1 {
		t.Fatalf("the page asked for the token %d times, want once", n)
	}
	kept, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`sessionStorage.getItem('hypersdk.token') === '`+token+`' && localStorage.length === 0`))
	if err != nil || !kept {
		t.Fatalf("token not kept in sessionStorage only (%v)", err)
	}
	if errs := jsErrors(); len(errs) > 0 {
		t.Fatalf("JavaScript errors: %v", errs)
	}
}
