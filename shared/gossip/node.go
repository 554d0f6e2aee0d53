// Package gossip is the memberlist pool that controllers and agents share: liveness,
// node metadata (role, addresses, capacity, capabilities) and membership events. It adds
// to memberlist what the fleet needs and memberlist does not expose: suspect detection,
// graceful-leave vs failure, ordered non-blocking event delivery, retrying joins, and
// metadata pushes only when the encoded bytes change.
package gossip

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/hypersdk/hypersdk/proto"
)

// Node is this process's member of the pool.
type Node struct {
	cfg     Config
	log     *slog.Logger
	name    string
	addr    string
	ml      *memberlist.Memberlist
	members *members

	// metaMu serialises read-modify-write of the metadata; metaBytes is what memberlist
	// reads (from its own goroutines) through Delegate.NodeMeta.
	metaMu    sync.Mutex
	meta      proto.NodeMeta
	metaBytes atomic.Pointer[[]byte]

	// pushMu serialises UpdateNode calls: the background pusher and Leave's final push.
	pushMu sync.Mutex
	pushCh chan struct{}

	seedsMu sync.Mutex
	seeds   []string // the addresses of the last Join, for rejoinLoop

	// lifeMu orders Leave against Shutdown: memberlist panics on Leave after Shutdown.
	lifeMu   sync.Mutex
	done     chan struct{}
	wg       sync.WaitGroup
	shutOnce sync.Once
	left     atomic.Bool
}

// New starts listening (memberlist.Create) and the node's background work. It does not
// join anyone: call Join.
func New(cfg Config) (*Node, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	metaBytes, err := cfg.Meta.Encode()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	name := MemberName(cfg.Meta.Role, cfg.Meta.Name)
	n := &Node{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "gossip", "node", name),
		name:   name,
		meta:   cfg.Meta,
		pushCh: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	n.metaBytes.Store(&metaBytes)
	n.members = newMembers(name, n.log)
	mc, err := cfg.memberlistConfig(name, &delegate{n: n})
	if err != nil {
		return nil, err
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: start memberlist on %s: %w", cfg.BindAddr, err)
	}
	n.ml = ml
	// Read once, before any peer exists: memberlist rewrites its local node's fields under
	// its own lock later, and the pointer LocalNode returns is read without it.
	n.addr = ml.LocalNode().Address()
	n.wg.Add(3)
	go n.pushLoop()
	go n.checkLoop()
	go n.rejoinLoop()
	n.log.Info("gossip listening", "addr", n.addr, "encrypted", len(cfg.SecretKey) > 0, "label", cfg.Label)
	return n, nil
}

// Name is this node's memberlist name (MemberName of its role and name).
func (n *Node) Name() string { return n.name }

// Addr is the ip:port other members reach this node at (the real port when bound to 0).
func (n *Node) Addr() string { return n.addr }

// Members returns every member this node knows, itself included, dead and left ones until
// ForgetAfter, sorted by name.
func (n *Node) Members() []Member { return n.members.list() }

// Member returns one member by memberlist name.
func (n *Node) Member(name string) (Member, bool) { return n.members.get(name) }

// Join contacts the given members (any one suffices) and retries with jittered
// exponential backoff until one answers or ctx ends. This node's own address is skipped,
// so every node can be given the same list. No address means a first node: nothing to do.
func (n *Node) Join(ctx context.Context, addrs []string) (int, error) {
	_, port, _ := net.SplitHostPort(n.addr)
	var seeds []string
	for _, a := range addrs {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		// memberlist joins a bare host on its own bind port; say so explicitly so the seed
		// can be recognised among members and skipped when it is this node.
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(strings.Trim(a, "[]"), port)
		}
		if a != n.addr {
			seeds = append(seeds, a)
		}
	}
	addrs = seeds
	if len(addrs) == 0 {
		return 0, nil
	}
	n.seedsMu.Lock()
	n.seeds = addrs
	n.seedsMu.Unlock()
	backoff := n.cfg.JoinBackoffMin
	for attempt := 1; ; attempt++ {
		joined, err := n.joinOnce(ctx, addrs)
		if joined > 0 {
			n.log.Info("joined gossip pool", "contacted", joined, "attempt", attempt)
			return joined, nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%w via %v: %v (last error: %s)", ErrJoin, addrs, ctx.Err(), oneLine(err))
		}
		level := slog.LevelInfo
		if attempt > 3 {
			level = slog.LevelWarn
		}
		n.log.Log(ctx, level, "gossip join failed, retrying", "addrs", addrs, "attempt", attempt, "retry_in", backoff, "err", oneLine(err))
		// ±20% jitter so agents restarted together do not hammer the seeds in lockstep.
		wait := time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w via %v: %v (last error: %s)", ErrJoin, addrs, ctx.Err(), oneLine(err))
		case <-n.done:
			return 0, ErrShutdown
		case <-time.After(wait):
		}
		backoff = min(2*backoff, n.cfg.JoinBackoffMax)
	}
}

// joinOnce runs memberlist's Join, which ignores contexts and waits TCPTimeout per
// unreachable address, so that a cancelled ctx returns at once. A join still in flight
// then may complete later; that only adds this node to the pool it asked for.
func (n *Node) joinOnce(ctx context.Context, addrs []string) (int, error) {
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		k, err := n.ml.Join(addrs)
		ch <- result{k, err}
	}()
	select {
	case r := <-ch:
		return r.n, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrShutdown
	}
}

// Meta returns the node's current metadata.
func (n *Node) Meta() proto.NodeMeta {
	n.metaMu.Lock()
	defer n.metaMu.Unlock()
	return cloneMeta(n.meta)
}

// SetMeta replaces the metadata; see UpdateMeta.
func (n *Node) SetMeta(m proto.NodeMeta) (changed bool, err error) {
	return n.UpdateMeta(func(cur *proto.NodeMeta) { *cur = m })
}

// UpdateMeta edits the metadata under a lock (a running-jobs change and a capacity refresh
// racing would otherwise lose one of them) and, when the encoded bytes changed, has it
// broadcast in the background. Role and name are the node's identity and cannot change.
func (n *Node) UpdateMeta(edit func(*proto.NodeMeta)) (changed bool, err error) {
	n.metaMu.Lock()
	m := cloneMeta(n.meta)
	edit(&m)
	if m.Role != n.meta.Role || m.Name != n.meta.Name {
		n.metaMu.Unlock()
		return false, fmt.Errorf("%w: role and name cannot change (%s:%s)", ErrConfig, m.Role, m.Name)
	}
	m.Truncated = false
	if n.left.Load() {
		m.Leaving = true // a capacity refresh racing Leave must not take the flag back
	}
	b, err := m.Encode()
	if err != nil {
		n.metaMu.Unlock()
		return false, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if cur := n.metaBytes.Load(); cur != nil && bytes.Equal(*cur, b) {
		n.meta = m // equal on the wire; keep the caller's exact values (e.g. untruncated lists)
		n.metaMu.Unlock()
		return false, nil
	}
	n.meta = m
	n.metaBytes.Store(&b)
	n.metaMu.Unlock()
	select {
	case n.pushCh <- struct{}{}:
	default: // a push is already pending and will carry these bytes
	}
	return true, nil
}

func cloneMeta(m proto.NodeMeta) proto.NodeMeta {
	m.Capabilities.Methods = slices.Clone(m.Capabilities.Methods)
	m.Capabilities.NbdkitPlugins = slices.Clone(m.Capabilities.NbdkitPlugins)
	return m
}

// pushLoop broadcasts metadata changes. UpdateNode blocks until the broadcast has gone
// out, so it runs here, off the caller's path, and bursts of changes coalesce into one
// push of the latest bytes.
func (n *Node) pushLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case <-n.pushCh:
		}
		n.pushMu.Lock()
		if !n.isDone() && !n.left.Load() {
			if err := n.ml.UpdateNode(n.cfg.UpdateTimeout); err != nil {
				// The broadcast stays queued and goes out with later gossip; only the
				// wait for it timed out.
				n.log.Debug("metadata broadcast not confirmed", "err", err)
			}
		}
		n.pushMu.Unlock()
	}
}

// checkLoop pings members not heard from for a CheckInterval, to notice suspects, and
// forgets long-dead members.
func (n *Node) checkLoop() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-t.C:
		}
		n.checkOnce()
		n.members.forget(time.Now().Add(-n.cfg.ForgetAfter))
	}
}

// maxConcurrentPings bounds the pings in flight: a controller watching hundreds of agents
// must not open hundreds of ack handlers at once after a network blip.
const maxConcurrentPings = 16

func (n *Node) checkOnce() {
	stale := n.members.stale(time.Now().Add(-n.cfg.CheckInterval))
	sem := make(chan struct{}, maxConcurrentPings)
	var wg sync.WaitGroup
	for _, m := range stale {
		addr, err := udpAddr(m.Addr)
		if err != nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			// Two tries: one lost UDP datagram must not flag a healthy member.
			for try := 0; try < 2; try++ {
				if n.isDone() {
					return
				}
				if _, err := n.ml.Ping(m.Name, addr); err == nil {
					n.members.pinged(m.Name, true)
					return
				}
			}
			if !n.isDone() {
				n.members.pinged(m.Name, false)
			}
		}()
	}
	wg.Wait()
}

// rejoinLoop joins the seeds again when none of them is an alive member (see
// Config.RejoinInterval).
func (n *Node) rejoinLoop() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-t.C:
		}
		n.seedsMu.Lock()
		seeds := n.seeds
		n.seedsMu.Unlock()
		if len(seeds) == 0 || n.left.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.RejoinInterval)
		if !n.anySeedAlive(ctx, seeds) {
			if k, err := n.joinOnce(ctx, seeds); k > 0 {
				n.log.Info("rejoined gossip seeds", "seeds", seeds)
			} else {
				n.log.Debug("rejoin failed", "seeds", seeds, "err", oneLine(err))
			}
		}
		cancel()
	}
}

// anySeedAlive reports whether one of the seed addresses (ip:port or host:port) belongs to
// a live member other than this node.
func (n *Node) anySeedAlive(ctx context.Context, seeds []string) bool {
	live := map[string]bool{}
	for _, m := range n.members.list() {
		if m.Name != n.name && (m.State == StateAlive || m.State == StateSuspect) {
			live[m.Addr] = true
		}
	}
	for _, s := range seeds {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			continue
		}
		ips := []string{host}
		if net.ParseIP(host) == nil {
			if ips, err = net.DefaultResolver.LookupHost(ctx, host); err != nil {
				continue
			}
		}
		for _, ip := range ips {
			if parsed := net.ParseIP(ip); parsed != nil && live[net.JoinHostPort(parsed.String(), port)] {
				return true
			}
		}
	}
	return false
}

func (n *Node) isDone() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// Leave departs gracefully: it tells every live member directly (TCP) that it is leaving,
// sets Leaving in its metadata, broadcasts memberlist's leave, then shuts down; members
// report it "left", not "dead". The metadata flag alone is not enough: it travels by UDP
// gossip, and under load the leave itself can overtake it. timeout bounds each step.
func (n *Node) Leave(timeout time.Duration) error {
	n.lifeMu.Lock()
	if n.isDone() {
		n.lifeMu.Unlock()
		return ErrShutdown
	}
	n.pushMu.Lock()
	var err error
	if !n.left.Swap(true) {
		n.noticeLeaving(timeout)
		if _, err = n.UpdateMeta(func(m *proto.NodeMeta) { m.Leaving = true }); err == nil {
			if err := n.ml.UpdateNode(timeout); err != nil {
				n.log.Debug("leaving flag broadcast not confirmed", "err", err)
			}
			err = n.ml.Leave(timeout)
		}
	}
	n.pushMu.Unlock()
	n.lifeMu.Unlock()
	if err != nil {
		n.log.Warn("graceful leave incomplete", "err", err)
	} else {
		n.log.Info("left gossip pool")
	}
	return joinErr(err, n.Shutdown())
}

// noticeLeaving sends the leaving notice to every live member, in parallel, waiting at
// most timeout (a member that does not take it in time will report this node dead).
func (n *Node) noticeLeaving(timeout time.Duration) {
	msg := leavingMsg(n.name)
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxConcurrentPings)
	var failed atomic.Int32
	for _, m := range n.members.list() {
		if m.Name == n.name || (m.State != StateAlive && m.State != StateSuspect) {
			continue
		}
		host, portStr, err := net.SplitHostPort(m.Addr)
		port, perr := strconv.Atoi(portStr)
		if err != nil || perr != nil {
			continue
		}
		to := &memberlist.Node{Name: m.Name, Addr: net.ParseIP(host), Port: uint16(port)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := n.ml.SendReliable(to, msg); err != nil {
				failed.Add(1)
				n.log.Debug("leaving notice not delivered", "member", to.Name, "err", err)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		n.log.Warn("leaving notices still in flight at timeout; some members may report this node dead")
	}
	if k := failed.Load(); k > 0 {
		n.log.Warn("leaving notice not delivered to some members; they may report this node dead", "failed", k)
	}
}

// oneLine flattens memberlist's multi-line multierror text for a log line.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "1 error occurred:", "")), " ")
}

func joinErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Shutdown stops the node without a leave message: the others will detect it as dead
// (what a crash looks like). Safe to call more than once.
func (n *Node) Shutdown() error {
	var err error
	n.shutOnce.Do(func() {
		n.lifeMu.Lock()
		close(n.done)
		n.lifeMu.Unlock()
		err = n.ml.Shutdown()
		n.wg.Wait()
		n.members.closeSubscribers()
	})
	return err
}

func sortedMembers(byName map[string]*Member) []*Member {
	out := make([]*Member, 0, len(byName))
	for _, m := range byName {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
