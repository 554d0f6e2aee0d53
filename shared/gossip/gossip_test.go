package gossip_test

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip"
	"github.com/hypersdk/hypersdk/shared/gossip/gossiptest"
)

const deadline = 10 * time.Second

// recorder collects a watcher's events.
type recorder struct {
	mu     sync.Mutex
	events []gossip.Event
}

func (r *recorder) add(e gossip.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// types returns the event types seen for a member, in order.
func (r *recorder) types(name string) []gossip.EventType {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []gossip.EventType
	for _, e := range r.events {
		if e.Name == name {
			out = append(out, e.Type)
		}
	}
	return out
}

func (r *recorder) has(name string, t gossip.EventType) bool {
	for _, got := range r.types(name) {
		if got == t {
			return true
		}
	}
	return false
}

func watch(t *testing.T, n *gossip.Node) *recorder {
	r := &recorder{}
	stop := n.Watch(r.add)
	t.Cleanup(stop)
	return r
}

func mustJoin(t *testing.T, n *gossip.Node, addrs ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if _, err := n.Join(ctx, addrs); err != nil {
		t.Fatalf("%s join %v: %v", n.Name(), addrs, err)
	}
}

func state(n *gossip.Node, name string) gossip.State {
	m, ok := n.Member(name)
	if !ok {
		return ""
	}
	return m.State
}

func TestConfigErrors(t *testing.T) {
	good := gossiptest.Config(proto.RoleAgent, "a")
	for _, tc := range []struct {
		name string
		edit func(*gossip.Config)
	}{
		{"hostname bind", func(c *gossip.Config) { c.BindAddr = "localhost:0" }},
		{"bind without port", func(c *gossip.Config) { c.BindAddr = "127.0.0.1" }},
		{"bad advertise", func(c *gossip.Config) { c.AdvertiseAddr = "kvm01.example.com:7946" }},
		{"key of 10 bytes", func(c *gossip.Config) { c.SecretKey = make([]byte, 10) }},
		{"no name", func(c *gossip.Config) { c.Meta.Name = "" }},
		{"no role", func(c *gossip.Config) { c.Meta.Role = "" }},
		{"label too long", func(c *gossip.Config) { c.Label = strings.Repeat("l", 300) }},
		{"unknown profile", func(c *gossip.Config) { c.Profile = 42 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			n, err := gossip.New(c)
			if err == nil {
				n.Shutdown()
			}
			if !errors.Is(err, gossip.ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
		})
	}
}

func TestParseSecretKey(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		wantLen int
		wantErr bool
	}{
		{"empty means no encryption", "", 0, false},
		{"16 bytes", base64.StdEncoding.EncodeToString(make([]byte, 16)), 16, false},
		{"32 bytes with newline", base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n", 32, false},
		{"20 bytes", base64.StdEncoding.EncodeToString(make([]byte, 20)), 0, true},
		{"not base64", "!!!", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := gossip.ParseSecretKey(tc.in)
			if (err != nil) != tc.wantErr || len(k) != tc.wantLen {
				t.Fatalf("got %d bytes, err %v", len(k), err)
			}
			if err != nil && !errors.Is(err, gossip.ErrConfig) {
				t.Fatalf("err %v is not ErrConfig", err)
			}
		})
	}
}

// Three nodes join through different members; metadata and its updates reach everyone;
// a crash is reported dead and a graceful leave left.
func TestMembershipLifecycle(t *testing.T) {
	t.Parallel()
	a := gossiptest.Start(t, gossiptest.Config(proto.RoleController, "c1"))
	rec := watch(t, a)
	bCfg := gossiptest.Config(proto.RoleAgent, "kvm01")
	bCfg.Meta.MaxJobs = 4
	b := gossiptest.Start(t, bCfg)
	c := gossiptest.Start(t, gossiptest.Config(proto.RoleAgent, "kvm02"))
	mustJoin(t, b, a.Addr())
	mustJoin(t, c, b.Addr()) // through an agent, not the controller

	gossiptest.Eventually(t, deadline, func() bool {
		return state(a, b.Name()) == gossip.StateAlive && state(a, c.Name()) == gossip.StateAlive
	}, "controller does not see both agents alive: %+v", a.Members())
	if m, _ := a.Member(b.Name()); m.Node.MaxJobs != 4 || m.Node.Role != proto.RoleAgent || m.Addr != b.Addr() {
		t.Fatalf("agent metadata or address not carried: %+v", m)
	}
	// Events reach watchers on their own goroutine, a moment after the state changed.
	gossiptest.Eventually(t, deadline, func() bool { return rec.has(b.Name(), gossip.EventJoin) && rec.has(c.Name(), gossip.EventJoin) },
		"no join events: %v %v", rec.types(b.Name()), rec.types(c.Name()))

	// Metadata update: pushed once when it changes, not at all when it does not.
	if changed, err := c.UpdateMeta(func(m *proto.NodeMeta) { m.RunningJobs = 3 }); !changed || err != nil {
		t.Fatalf("UpdateMeta = %v, %v", changed, err)
	}
	if changed, _ := c.UpdateMeta(func(m *proto.NodeMeta) { m.RunningJobs = 3 }); changed {
		t.Fatal("unchanged metadata reported as changed (would re-broadcast)")
	}
	gossiptest.Eventually(t, deadline, func() bool {
		m, _ := a.Member(c.Name())
		return m.Node.RunningJobs == 3
	}, "running jobs update not seen")
	gossiptest.Eventually(t, deadline, func() bool { return rec.has(c.Name(), gossip.EventUpdate) }, "no update event")
	if _, err := c.UpdateMeta(func(m *proto.NodeMeta) { m.Name = "other" }); !errors.Is(err, gossip.ErrConfig) {
		t.Fatalf("renaming through metadata: err = %v", err)
	}

	// Crash: no leave message.
	b.Shutdown()
	gossiptest.Eventually(t, deadline, func() bool { return rec.has(b.Name(), gossip.EventDead) },
		"crashed node not reported dead; events %v", rec.types(b.Name()))
	if got := state(a, b.Name()); got != gossip.StateDead {
		t.Fatalf("crashed node state %q, want dead", got)
	}
	if rec.has(b.Name(), gossip.EventLeave) {
		t.Fatal("a crash was reported as a graceful leave")
	}

	// Graceful leave.
	if err := c.Leave(time.Second); err != nil {
		t.Fatalf("leave: %v", err)
	}
	gossiptest.Eventually(t, deadline, func() bool { return rec.has(c.Name(), gossip.EventLeave) },
		"graceful leave not reported; events %v", rec.types(c.Name()))
	if got := state(a, c.Name()); got != gossip.StateLeft {
		t.Fatalf("left node state %q", got)
	}
	if ts := rec.types(c.Name()); ts[len(ts)-1] != gossip.EventLeave {
		t.Fatalf("a graceful leave ended as %v", ts)
	}
	if err := c.Leave(time.Second); !errors.Is(err, gossip.ErrShutdown) {
		t.Fatalf("second leave: %v", err)
	}
}

// A watcher started after the pool formed gets the current members replayed.
func TestWatchReplaysMembers(t *testing.T) {
	t.Parallel()
	a := gossiptest.Start(t, gossiptest.Config(proto.RoleController, "c1"))
	b := gossiptest.Start(t, gossiptest.Config(proto.RoleAgent, "kvm01"))
	mustJoin(t, b, a.Addr())
	gossiptest.Eventually(t, deadline, func() bool { return state(a, b.Name()) == gossip.StateAlive }, "join")

	rec := watch(t, a)
	gossiptest.Eventually(t, deadline, func() bool {
		return rec.has(a.Name(), gossip.EventJoin) && rec.has(b.Name(), gossip.EventJoin)
	}, "no replay: %v %v", rec.types(a.Name()), rec.types(b.Name()))
}

// memberlist does not expose "suspect"; this node's pings do. Suspicion is made long so
// memberlist does not declare the stopped node dead during the test, then the node comes
// back on the same address and is alive again.
func TestSuspectAndRecovery(t *testing.T) {
	t.Parallel()
	slowDeath := func(c *memberlist.Config) { c.SuspicionMult = 100; c.SuspicionMaxTimeoutMult = 1 }
	aCfg := gossiptest.Config(proto.RoleController, "c1")
	aCfg.Tune = slowDeath
	a := gossiptest.Start(t, aCfg)
	rec := watch(t, a)
	bCfg := gossiptest.Config(proto.RoleAgent, "kvm01")
	bCfg.Tune = slowDeath
	b := gossiptest.Start(t, bCfg)
	mustJoin(t, b, a.Addr())
	gossiptest.Eventually(t, deadline, func() bool { return state(a, b.Name()) == gossip.StateAlive }, "join")

	addr := b.Addr()
	b.Shutdown()
	gossiptest.Eventually(t, deadline, func() bool { return state(a, b.Name()) == gossip.StateSuspect },
		"stopped node not suspect: %q", state(a, b.Name()))
	gossiptest.Eventually(t, deadline, func() bool { return rec.has(b.Name(), gossip.EventSuspect) }, "no suspect event")
	seen, _ := a.Member(b.Name())

	// The same node restarts on the same address before the pool gives up on it.
	bCfg.BindAddr = addr
	b2 := gossiptest.Start(t, bCfg)
	mustJoin(t, b2, a.Addr())
	gossiptest.Eventually(t, deadline, func() bool { return state(a, b.Name()) == gossip.StateAlive },
		"restarted node not alive again: %q", state(a, b.Name()))
	if m, _ := a.Member(b.Name()); !m.LastSeen.After(seen.LastSeen) {
		t.Fatalf("last seen not advanced: %v then %v", seen.LastSeen, m.LastSeen)
	}
}

// With a key, members without it (or with another) cannot join, and nobody learns of them.
func TestEncryptedPool(t *testing.T) {
	t.Parallel()
	key := make([]byte, 32)
	copy(key, "hypersdk-test-key-0123456789abcd")
	wrong := make([]byte, 32)
	copy(wrong, "not-the-key-0123456789abcdefghij")

	cfg := func(name string, key []byte, label string) gossip.Config {
		c := gossiptest.Config(proto.RoleAgent, name)
		c.SecretKey, c.Label = key, label
		c.JoinBackoffMin, c.JoinBackoffMax = 50*time.Millisecond, 100*time.Millisecond
		return c
	}
	ctlCfg := cfg("c1", key, "hypersdk")
	ctlCfg.Meta.Role = proto.RoleController
	ctl := gossiptest.Start(t, ctlCfg)

	for _, tc := range []struct {
		name  string
		key   []byte
		label string
	}{
		{"wrong key", wrong, "hypersdk"},
		{"no key", nil, "hypersdk"},
		{"right key, other label", key, "other-pool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := gossiptest.Start(t, cfg("intruder", tc.key, tc.label))
			ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
			defer cancel()
			if _, err := n.Join(ctx, []string{ctl.Addr()}); !errors.Is(err, gossip.ErrJoin) {
				t.Fatalf("join err = %v, want ErrJoin", err)
			}
			n.Shutdown()
		})
	}
	good := gossiptest.Start(t, cfg("kvm01", key, "hypersdk"))
	mustJoin(t, good, ctl.Addr())
	gossiptest.Eventually(t, deadline, func() bool { return state(ctl, good.Name()) == gossip.StateAlive }, "keyed member")
	// The keyed member joined after every intruder gave up: had an intruder got in, the
	// controller would have learned of it by now.
	if _, ok := ctl.Member(gossip.MemberName(proto.RoleAgent, "intruder")); ok {
		t.Fatalf("intruder is a member: %+v", ctl.Members())
	}
}

// captured records log records, to observe the join retries.
type captured struct {
	mu   sync.Mutex
	msgs []string
}

func (c *captured) Enabled(context.Context, slog.Level) bool { return true }
func (c *captured) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	c.msgs = append(c.msgs, r.Message)
	c.mu.Unlock()
	return nil
}
func (c *captured) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *captured) WithGroup(string) slog.Handler      { return c }
func (c *captured) count(msg string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := 0
	for _, m := range c.msgs {
		if m == msg {
			k++
		}
	}
	return k
}

// An agent started before any controller keeps trying and joins once one is up.
func TestJoinRetriesUntilSeedUp(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seedAddr := l.Addr().String()
	l.Close()

	logs := &captured{}
	bCfg := gossiptest.Config(proto.RoleAgent, "kvm01")
	bCfg.Logger = slog.New(logs)
	b := gossiptest.Start(t, bCfg)
	joined := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		_, err := b.Join(ctx, []string{seedAddr, b.Addr()})
		joined <- err
	}()
	gossiptest.Eventually(t, deadline, func() bool { return logs.count("gossip join failed, retrying") >= 2 },
		"no retries logged")

	seedCfg := gossiptest.Config(proto.RoleController, "c1")
	seedCfg.BindAddr = seedAddr
	seed := gossiptest.Start(t, seedCfg)
	select {
	case err := <-joined:
		if err != nil {
			t.Fatalf("join after retries: %v", err)
		}
	case <-time.After(deadline):
		t.Fatal("join did not finish")
	}
	gossiptest.Eventually(t, deadline, func() bool { return state(seed, b.Name()) == gossip.StateAlive }, "seed sees agent")

	// A cancelled join returns promptly with ErrJoin.
	lone := gossiptest.Start(t, gossiptest.Config(proto.RoleAgent, "kvm02"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := lone.Join(ctx, []string{seedAddr + "0"}); !errors.Is(err, gossip.ErrJoin) {
		t.Fatalf("cancelled join: %v", err)
	}
}

// A lone controller restarts and remembers nobody; agents that already declared it dead
// still have each other, so nobody is alone, yet the pool must form again by itself.
func TestSeedRestartIsRejoined(t *testing.T) {
	t.Parallel()
	seedCfg := gossiptest.Config(proto.RoleController, "c1")
	seed := gossiptest.Start(t, seedCfg)
	agents := make([]*gossip.Node, 2)
	for i := range agents {
		agents[i] = gossiptest.Start(t, gossiptest.Config(proto.RoleAgent, []string{"kvm01", "kvm02"}[i]))
		mustJoin(t, agents[i], seed.Addr())
	}
	gossiptest.Eventually(t, deadline, func() bool {
		return state(agents[0], agents[1].Name()) == gossip.StateAlive && state(agents[1], agents[0].Name()) == gossip.StateAlive
	}, "agents do not see each other")

	seed.Shutdown()
	gossiptest.Eventually(t, deadline, func() bool {
		return state(agents[0], seed.Name()) == gossip.StateDead && state(agents[1], seed.Name()) == gossip.StateDead
	}, "agents did not bury the seed")

	seedCfg.BindAddr = seed.Addr()
	seed2 := gossiptest.Start(t, seedCfg) // nobody calls Join
	gossiptest.Eventually(t, deadline, func() bool {
		return state(seed2, agents[0].Name()) == gossip.StateAlive && state(seed2, agents[1].Name()) == gossip.StateAlive
	}, "restarted seed never heard from the agents: %+v", seed2.Members())
}

// freePort returns a loopback port nobody listens on (for tests that need a fixed port).
func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// Addr is what other members dial: the advertised address when set, else the bound one,
// with the real port when bound to port 0.
func TestAdvertisedAddr(t *testing.T) {
	bindPort, natPort := freePort(t), freePort(t)
	for _, tc := range []struct {
		name      string
		bind      string
		advertise string
		wantPort  string // "" means: whatever port 0 got
		wantErr   bool
	}{
		{"bound port", "127.0.0.1:0", "", "", false},
		{"advertised ip only", "127.0.0.1:0", "127.0.0.1", "", false},
		{"advertised port behind NAT", "127.0.0.1:" + bindPort, "127.0.0.1:" + natPort, natPort, false},
		{"advertised port with bind port 0", "127.0.0.1:0", "127.0.0.1:" + natPort, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := gossiptest.Config(proto.RoleAgent, "kvm01")
			c.BindAddr, c.AdvertiseAddr = tc.bind, tc.advertise
			if tc.wantErr {
				if n, err := gossip.New(c); !errors.Is(err, gossip.ErrConfig) {
					if err == nil {
						n.Shutdown()
					}
					t.Fatalf("err = %v, want ErrConfig", err)
				}
				return
			}
			n := gossiptest.Start(t, c)
			host, port, err := net.SplitHostPort(n.Addr())
			if err != nil || host != "127.0.0.1" || port == "0" {
				t.Fatalf("Addr() = %q", n.Addr())
			}
			if tc.wantPort != "" && port != tc.wantPort {
				t.Fatalf("Addr() = %q, want port %s", n.Addr(), tc.wantPort)
			}
			if self, ok := n.Member(n.Name()); !ok || self.Addr != n.Addr() || self.State != gossip.StateAlive {
				t.Fatalf("self member %+v", self)
			}
		})
	}
}
