package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Net is a private network for partition tests, made of network namespaces this test
// creates: a hub namespace holding a bridge (10.201.0.1/24), and one namespace per member
// joined to the bridge by a veth pair. Nothing is attached to the host's own namespace:
// no traffic of a test leaves the namespaces it made, and everything is deleted when the
// test ends. The test process reaches members through the hub (Forward, Expose), which is
// never cut, so it observes both sides of a partition.
//
// A partition (Cut) gives each side a permanent neighbour entry for the other with a MAC
// address no member has: packets are sent and silently lost on the bridge, as in a real
// network split (senders time out; nothing answers "unreachable").
type Net struct {
	t      testing.TB
	prefix string
	Hub    string // the hub namespace
	HubIP  string

	mu      sync.Mutex
	members []*Member
	cuts    map[[2]*Member]bool
}

// Member is one namespace on the test network.
type Member struct {
	net  *Net
	Name string
	NS   string
	IP   string
}

const (
	netPrefix = "10.201.0."
	deadMAC   = "02:00:00:de:ad:01" // no member has it: frames to it are lost
)

// RequireNetns skips the test unless it runs as root with a working `ip netns`.
func RequireNetns(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("partition tests need root (network namespaces); run as root, e.g. in CI")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("partition tests need iproute2's ip")
	}
	probe := "hsdk-probe-" + randHex(3)
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("ip netns does not work here: %v: %s", err, bytes.TrimSpace(out))
	}
	_ = exec.Command("ip", "netns", "del", probe).Run()
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ip runs ip(8) and fails the test on error.
func (n *Net) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// NewNet creates the hub namespace and its bridge. Everything is removed at cleanup
// (register it before the processes that live in it, so they are killed first).
func NewNet(t testing.TB) *Net {
	t.Helper()
	RequireNetns(t)
	n := &Net{t: t, prefix: "hsdk-" + randHex(3), HubIP: netPrefix + "1", cuts: map[[2]*Member]bool{}}
	n.Hub = n.prefix + "-hub"
	t.Cleanup(n.destroy)
	n.ip("netns", "add", n.Hub)
	n.ip("-n", n.Hub, "link", "set", "lo", "up")
	n.ip("-n", n.Hub, "link", "add", "br0", "type", "bridge")
	n.ip("-n", n.Hub, "addr", "add", n.HubIP+"/24", "dev", "br0")
	n.ip("-n", n.Hub, "link", "set", "br0", "up")
	return n
}

func (n *Net) destroy() {
	n.mu.Lock()
	members := n.members
	n.mu.Unlock()
	for _, m := range members {
		if out, err := exec.Command("ip", "netns", "del", m.NS).CombinedOutput(); err != nil {
			n.t.Logf("cleanup: ip netns del %s: %v: %s", m.NS, err, bytes.TrimSpace(out))
		}
	}
	if out, err := exec.Command("ip", "netns", "del", n.Hub).CombinedOutput(); err != nil {
		n.t.Logf("cleanup: ip netns del %s: %v: %s", n.Hub, err, bytes.TrimSpace(out))
	}
}

// Add creates a member namespace with address 10.201.0.<host> on the bridge.
func (n *Net) Add(name string, host int) *Member {
	n.t.Helper()
	m := &Member{net: n, Name: name, NS: n.prefix + "-" + name, IP: fmt.Sprintf("%s%d", netPrefix, host)}
	n.mu.Lock()
	n.members = append(n.members, m)
	n.mu.Unlock()
	veth := "v-" + name
	n.ip("netns", "add", m.NS)
	n.ip("-n", m.NS, "link", "set", "lo", "up")
	// Both ends are created inside test namespaces: the host's namespace never sees them.
	n.ip("-n", n.Hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", m.NS)
	n.ip("-n", n.Hub, "link", "set", veth, "master", "br0", "up")
	n.ip("-n", m.NS, "addr", "add", m.IP+"/24", "dev", "eth0")
	n.ip("-n", m.NS, "link", "set", "eth0", "up")
	return m
}

// Cut partitions a from b (both directions). The hub still reaches both.
func (n *Net) Cut(a, b *Member) {
	n.t.Helper()
	n.ip("-n", a.NS, "neigh", "replace", b.IP, "lladdr", deadMAC, "dev", "eth0", "nud", "permanent")
	n.ip("-n", b.NS, "neigh", "replace", a.IP, "lladdr", deadMAC, "dev", "eth0", "nud", "permanent")
	n.mu.Lock()
	n.cuts[[2]*Member{a, b}] = true
	n.mu.Unlock()
}

// Isolate cuts m from every other member (not from the hub).
func (n *Net) Isolate(m *Member) {
	n.t.Helper()
	n.mu.Lock()
	others := append([]*Member(nil), n.members...)
	n.mu.Unlock()
	for _, o := range others {
		if o != m {
			n.Cut(m, o)
		}
	}
}

// HealAll removes every cut: members resolve each other again.
func (n *Net) HealAll() {
	n.t.Helper()
	n.mu.Lock()
	cuts := n.cuts
	n.cuts = map[[2]*Member]bool{}
	n.mu.Unlock()
	for c := range cuts {
		a, b := c[0], c[1]
		n.ip("-n", a.NS, "neigh", "del", b.IP, "dev", "eth0")
		n.ip("-n", b.NS, "neigh", "del", a.IP, "dev", "eth0")
	}
}

// inHub runs fn on a thread that has joined the hub namespace; sockets fn creates live
// there. The thread is never handed back to the scheduler (the goroutine exits locked, so
// the runtime ends the thread): no other goroutine ever runs in the hub by accident.
func (n *Net) inHub(fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(filepath.Join("/run/netns", n.Hub), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	return <-errc
}

// DialHub connects to addr from the hub namespace.
func (n *Net) DialHub(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	var derr error
	if err := n.inHub(func() {
		var d net.Dialer
		c, derr = d.DialContext(ctx, "tcp", addr)
	}); err != nil {
		return nil, err
	}
	return c, derr
}

// Forward returns a loopback address of the test's own namespace that reaches target
// (a member's host:port) through the hub: how the test talks to members.
func (n *Net) Forward(target string) *FaultProxy {
	n.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		n.t.Fatal(err)
	}
	return StartFaultProxy(n.t, ln, func(ctx context.Context) (net.Conn, error) { return n.DialHub(ctx, target) })
}

// Expose makes target (a host:port of the test's own namespace, e.g. the simulator) reachable
// from members at HubIP:<port>; the returned proxy can inject faults on that path.
func (n *Net) Expose(target string) *FaultProxy {
	n.t.Helper()
	var ln net.Listener
	var lerr error
	if err := n.inHub(func() { ln, lerr = net.Listen("tcp", n.HubIP+":0") }); err != nil || lerr != nil {
		n.t.Fatalf("listen in the hub: %v %v", err, lerr)
	}
	return StartFaultProxy(n.t, ln, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", target)
	})
}

// Start runs bin inside m's namespace as a harness process (logs in dir/name.log).
func (m *Member) Start(t testing.TB, bin, name, dir string, args ...string) *Proc {
	t.Helper()
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("ip not installed")
	}
	// ip netns exec execs bin: the process (group) is bin itself.
	return Start(t, ipBin, name, dir, append([]string{"netns", "exec", m.NS, bin}, args...)...)
}

// NetController is a controller process inside a member namespace.
type NetController struct {
	// Controller's APIAddr is the test's loopback forward to the API: URL(), LeaderOf and
	// the other helpers work unchanged.
	*Controller
	Member *Member
	// NetAPIAddr and GossipAddr are what the other members use.
	NetAPIAddr string
	GossipAddr string
}

// StartNetController starts a controller in m with its API on m.IP:8080, raft on :8081
// and gossip on :7946; with join set, it joins that controller's cluster and gossip pool.
func StartNetController(t testing.TB, dir, id string, m *Member, join *NetController, extra ...string) *NetController {
	t.Helper()
	nc := &NetController{Member: m, NetAPIAddr: m.IP + ":8080", GossipAddr: m.IP + ":7946"}
	fwd := m.net.Forward(nc.NetAPIAddr)
	nc.Controller = &Controller{ID: id, APIAddr: fwd.Addr, RaftAddr: m.IP + ":8081", DataDir: filepath.Join(dir, id)}
	args := []string{"--node-id", id, "--data-dir", nc.DataDir, "--api-addr", nc.NetAPIAddr, "--raft-addr", nc.RaftAddr,
		"--gossip-addr", nc.GossipAddr, "--log-level", "info", "--insecure-no-auth", "--allow-private-targets", "--allow-http-targets",
		"--validate-on-submit=false"} // as StartController: these tests' jobs are not meant to pass it
	if join != nil {
		args = append(args, "--join", join.NetAPIAddr, "--gossip-join", join.GossipAddr)
	}
	args = append(args, extra...)
	nc.Proc = m.Start(t, Bin(t, "hypersdk-controller"), id, dir, args...)
	return nc
}

// StartNetControllers starts one controller per member (the first bootstraps) and waits
// until every node sees all of them and a leader.
func StartNetControllers(t testing.TB, dir string, ms []*Member, extra ...string) []*NetController {
	t.Helper()
	var out []*NetController
	for i, m := range ms {
		var join *NetController
		if i > 0 {
			join = out[0]
		}
		out = append(out, StartNetController(t, dir, fmt.Sprintf("c%d", i+1), m, join, extra...))
		if i == 0 {
			WaitFor(t, 30*time.Second, "first controller leads", func() bool {
				var cl ClusterView
				return GetJSON(out[0].URL()+"/cluster", &cl) == 200 && cl.Leader.ID == "c1"
			})
		}
	}
	WaitFor(t, 60*time.Second, "cluster formed", func() bool {
		for _, c := range out {
			var cl ClusterView
			if GetJSON(c.URL()+"/cluster", &cl) != 200 || len(cl.Nodes) != len(ms) || cl.Leader.APIAddr == "" {
				return false
			}
		}
		return true
	})
	return out
}

// StartNetAgent starts an agent in m (API on m.IP:8082, gossip on :7947) against the
// controllers, and waits until the controllers' fleet lists it alive.
func StartNetAgent(t testing.TB, dir, name string, m *Member, cs []*NetController, extra ...string) *Agent {
	t.Helper()
	var urls, gossip []string
	for _, c := range cs {
		urls = append(urls, "http://"+c.NetAPIAddr)
		gossip = append(gossip, c.GossipAddr)
	}
	a := &Agent{Name: name, APIAddr: m.IP + ":8082", StorageDir: filepath.Join(dir, name+"-storage")}
	args := []string{"--name", name, "--controllers", strings.Join(urls, ","), "--api-addr", a.APIAddr,
		"--gossip-addr", m.IP + ":7947", "--gossip-join", strings.Join(gossip, ","),
		"--fast-gossip", "--libvirt-uri", LibvirtURI, "--storage-dir", a.StorageDir, "--log-level", "info"}
	a.Proc = m.Start(t, Bin(t, "hypersdk-agent"), name, dir, append(append(args, guestArgs()...), extra...)...)
	WaitFor(t, 30*time.Second, "agent "+name+" in the fleet", func() bool {
		var ag struct {
			State string `json:"state"`
		}
		return GetJSON(cs[0].URL()+"/agents/"+name, &ag) == 200 && ag.State == "alive"
	})
	return a
}
