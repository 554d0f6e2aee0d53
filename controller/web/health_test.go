package web_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hypersdk/hypersdk/agent/capacity"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/shared/client"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

// TestDashboardShowsTrouble: in Chromium, a host whose libvirt does not answer is marked
// unhealthy with the advice, a cordoned host is marked cordoned, and a stopped controller
// is shown unreachable with its last contact (issue 17: the card of a broken host looked
// healthy and a killed controller stayed "follower").
func TestDashboardShowsTrouble(t *testing.T) {
	ctx, jsErrors := newBrowser(t)
	nodes := controller.StartTestCluster(t, 3)
	var gossip []string
	for _, n := range nodes {
		gossip = append(gossip, n.GossipAddr())
	}
	noLibvirt := capacity.Config{LibvirtPing: func(context.Context) error { return errors.New("failed to connect socket: No such file or directory") }}
	fleettest.StartMemberProbing(t, "kvm-sick", 2, noLibvirt, gossip...)
	fleettest.StartMemberProbing(t, "kvm-ok", 2, capacity.Config{LibvirtPing: func(context.Context) error { return nil }}, gossip...)
	leader := controller.Leader(nodes)
	cl, err := client.New(client.Config{Servers: []string{leader.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	controller.WaitFor(t, 15*time.Second, "both agents in the fleet", func() bool {
		res, err := cl.Agents(context.Background())
		return err == nil && res.Total == 2
	})
	if _, err := cl.AgentControl(context.Background(), "kvm-ok", "cordon", ""); err != nil {
		t.Fatal(err)
	}
	var stopped *controller.Controller
	for _, n := range nodes {
		if n != leader {
			stopped = n
		}
	}
	stopped.Close()

	if err := chromedp.Do(ctx, chromedp.Navigate(leader.URL()+"/ui/")); err != nil {
		t.Fatal(err)
	}
	card := func(name string) string { return `document.querySelector('.agent-card[data-agent="` + name + `"]')` }
	waitJS(t, ctx, 30*time.Second, "kvm-sick unhealthy with the advice",
		`(c => c && c.classList.contains('unhealthy') && c.querySelector('.agent-health').textContent === 'unhealthy' && `+
			`c.querySelector('.problems').textContent.includes('systemctl start libvirtd') && !c.querySelector('.problems').hidden)(`+card("kvm-sick")+`)`)
	waitJS(t, ctx, 30*time.Second, "kvm-ok healthy and cordoned",
		`(c => c && c.querySelector('.agent-health').textContent === 'healthy' && c.querySelector('.agent-cordon').textContent === 'cordoned' && `+
			`!c.querySelector('.agent-cordon').hidden && c.querySelector('.problems').hidden)(`+card("kvm-ok")+`)`)
	row := `document.querySelector('#cluster-table tr[data-node=` + jsString(stopped.Node.ID()) + `]')`
	waitJS(t, ctx, 30*time.Second, "the stopped controller unreachable with its last contact",
		`(r => r && !!r.querySelector('.role-unreachable') && r.querySelector('.ag-dead')?.textContent === 'no' && `+
			`r.querySelector('.contact').textContent.endsWith('ago'))(`+row+`)`)

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	out := os.Getenv("HYPERSDK_SCREENSHOT_TROUBLE")
	if out == "" {
		out = filepath.Join(t.TempDir(), "dashboard-trouble.png")
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", out)
	if errs := jsErrors(); len(errs) > 0 {
		t.Fatalf("JavaScript errors: %v", errs)
	}
}
