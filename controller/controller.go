// Package controller wires one controller: the replicated state, its raft node, the API
// server and the leader-only work. The packages below it own the rules; this file only
// connects them.
package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/fleet"
	"github.com/hypersdk/hypersdk/controller/lease"
	"github.com/hypersdk/hypersdk/controller/metrics"
	"github.com/hypersdk/hypersdk/controller/schedule"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/controller/validate"
	"github.com/hypersdk/hypersdk/controller/web"
	"github.com/hypersdk/hypersdk/controller/webhook"
	"github.com/hypersdk/hypersdk/controller/ws"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip"
	"github.com/hypersdk/hypersdk/shared/secrets"
	"github.com/hypersdk/hypersdk/shared/version"
)

// Controller is a running controller node.
type Controller struct {
	cfg     Config
	log     *slog.Logger
	State   *state.State
	Node    *cluster.Node
	API     *api.Server
	Metrics *metrics.Metrics
	Leases  *lease.Manager
	Gossip  *gossip.Node
	Fleet   *fleet.Fleet

	ln      net.Listener
	apiAddr string
	http    *http.Server

	savedControllers []byte
	gossipJoining    atomic.Bool // a join of the other controllers' gossip runs (gossipjoin.go)

	secrets    *secrets.Box // seals passwords in the raft log (nil: no key configured)
	validator  *validate.Validator
	scheme     string      // http or https
	peerTLS    *tls.Config // verifies peer controllers
	peerClient *http.Client
	peerToken  string // admin token used on calls to peer controllers (join)
	// clusterTLS is raft's and the peer calls' mutual TLS (nil: off; cluster_tls.go).
	clusterTLS *cluster.TransportTLS

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	// Schedules, webhooks and WebSocket (events.go).
	Scheduler *schedule.Scheduler
	Webhooks  *webhook.Deliverer
	WS        *ws.Hub
}

// New starts a controller: it listens, opens raft (bootstrapping or joining as the
// configuration says) and serves the API. Close stops it.
//
// Everything that can refuse a start (the configuration, the files it names, the ports)
// is checked before the data dir is touched: a refused start leaves the data dir as it
// was, never with a node id or a bootstrapped raft log of a node that did not start.
func New(cfg Config, log *slog.Logger) (_ *Controller, err error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	clusterTLS, err := loadClusterTLS(&cfg)
	if err != nil {
		return nil, err
	}
	warnInsecureCluster(&cfg, log)
	dataDir := cfg.DataDir()
	nodeID, err := readNodeID(dataDir, cfg.Cluster.NodeID)
	if err != nil {
		return nil, err
	}
	log = log.With("node", nodeID)
	c := &Controller{cfg: cfg, log: log, State: state.New(), scheme: "http", clusterTLS: clusterTLS}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	// undo releases what a failed start took, in reverse.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if c.secrets, err = secrets.LoadKeyFile(cfg.Secrets.KeyFile); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", cfg.API.Addr)
	if err != nil {
		return nil, fmt.Errorf("api listen on %s: %w", cfg.API.Addr, err)
	}
	undo = append(undo, func() { ln.Close() })
	c.ln, c.apiAddr = ln, cfg.API.Advertise
	if c.apiAddr == "" {
		c.apiAddr = ln.Addr().String()
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
			return nil, fmt.Errorf("api.addr %s listens on every interface: set api.advertise to the address other controllers reach", cfg.API.Addr)
		}
	}
	if err := c.setupSecurity(ln); err != nil {
		return nil, err
	}
	if err := c.startGossip(nodeID); err != nil {
		return nil, err
	}
	undo = append(undo, func() { c.cancel(); c.wg.Wait(); c.Fleet.Close(); _ = c.Gossip.Shutdown() })

	ccfg := cluster.DefaultConfig()
	if cfg.Cluster.Fast {
		ccfg = cluster.FastConfig()
	}
	ccfg.NodeID = nodeID
	ccfg.DataDir = dataDir
	ccfg.RaftAddr = cfg.Cluster.RaftAddr
	ccfg.RaftAdvertise = cfg.Cluster.RaftAdvertise
	ccfg.TLS = c.clusterTLS
	// No --join and no stored state: this node forms a new cluster of one.
	ccfg.Bootstrap = cfg.Cluster.Bootstrap || len(cfg.Cluster.Join) == 0
	ccfg.Logger = log
	if cfg.Cluster.SnapshotThreshold > 0 {
		ccfg.SnapshotThreshold = cfg.Cluster.SnapshotThreshold
	}
	if cfg.Cluster.SnapshotInterval > 0 {
		ccfg.SnapshotInterval = cfg.Cluster.SnapshotInterval
	}
	if cfg.Cluster.TrailingLogs > 0 {
		ccfg.TrailingLogs = cfg.Cluster.TrailingLogs
	}
	// Open binds the raft port first, then creates the data dir: from here on it is written.
	c.Node, err = cluster.Open(ccfg, c.State)
	if err != nil {
		return nil, fmt.Errorf("%w (data dir %s)", err, dataDir)
	}
	undo = append(undo, func() { c.Node.Close() })
	if err := writeNodeID(dataDir, nodeID); err != nil {
		return nil, err
	}

	if cfg.MetricsEnabled() {
		c.Metrics = metrics.New(metricsSource{c})
	} else {
		c.Metrics = metrics.New(nil)
	}
	c.API, err = api.New(api.Config{
		NodeID: nodeID, MaxBodyBytes: cfg.API.MaxBodyBytes, LeaderWait: cfg.Cluster.LeaderWait,
		MaxAttempts: cfg.Cluster.MaxAttempts, DisableMetrics: !cfg.MetricsEnabled(), Logger: log,
		Tokens: cfg.Auth.Tokens, RateLimit: cfg.API.RateLimit, Secrets: c.secrets,
		ForwardScheme: c.scheme, ForwardTLS: c.peerTLS, Outbound: cfg.OutboundPolicy(),
		Advertise: c.apiAddr, AllowedHosts: cfg.API.AllowedHosts, SavedNodes: c.savedNodes,
	}, c.State, c.Node, c.Metrics)
	if err != nil {
		return nil, err
	}

	c.Leases = lease.New(lease.Config{TTL: cfg.Agents.LeaseTTL, CommitGrace: cfg.Agents.CommitGrace, PerVCenterLimit: cfg.Agents.PerVCenterLimit,
		PerHostDiskLimit: cfg.Agents.MaxDisksPerSourceHost, Secrets: c.secrets, Logger: log}, c.State, c.Node, c.Fleet)
	c.Node.OnLeadership(c.Leases.Run)
	c.Fleet.OnDead(func(name string) {
		c.Leases.ExpireAgent(name, fmt.Sprintf("agent %s was declared dead by gossip", name))
	})
	c.API.SetAgents(api.AgentsConfig{Leases: c.Leases, Fleet: c.Fleet, JoinToken: cfg.Agents.JoinToken, Identities: c.State})
	c.API.SetVMs()
	c.setupValidation()
	if cfg.MetricsEnabled() {
		c.Metrics.Registry.MustRegister(c.Fleet)
	}

	c.wireEvents(log)
	c.API.SetUI(web.Handler())
	c.Metrics.Registry.MustRegister(transferCollector{c.State})

	c.http = api.NewHTTPServer(c.API, cfg.API.Limits, slog.NewLogLogger(log.Handler(), slog.LevelWarn))
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.http.Serve(c.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("api server stopped", "err", err)
		}
	}()

	if len(cfg.Cluster.Join) > 0 && !c.Node.HasExistingState() {
		c.goLoop(c.joinLoop)
	}
	c.goLoop(c.registrationLoop)
	log.Info("controller started", "api_addr", c.apiAddr, "raft_addr", c.Node.RaftAddr(), "data_dir", dataDir)
	return c, nil
}

func (c *Controller) goLoop(fn func(context.Context)) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn(c.ctx)
	}()
}

// APIAddr is the advertised API address (host:port).
func (c *Controller) APIAddr() string { return c.apiAddr }

// URL is the API base URL.
func (c *Controller) URL() string { return c.scheme + "://" + c.apiAddr }

// startGossip joins the memberlist pool shared with agents (controllers are members so
// agents can join through any of them) and builds the fleet view from it.
func (c *Controller) startGossip(nodeID string) error {
	gc := gossip.DefaultConfig()
	gc.BindAddr = c.cfg.Gossip.Addr
	gc.AdvertiseAddr = c.cfg.Gossip.Advertise
	gc.Label = c.cfg.Gossip.Label
	if c.cfg.Cluster.Fast {
		gc.Profile = gossip.ProfileFast
	}
	if c.cfg.Gossip.Key != "" {
		key, err := gossip.ParseSecretKey(c.cfg.Gossip.Key)
		if err != nil {
			return err
		}
		gc.SecretKey = key
	}
	gc.Meta = proto.NodeMeta{Role: proto.RoleController, Name: nodeID, APIAddr: c.apiAddr, Version: version.Version}
	gc.Logger = c.log
	node, err := gossip.New(gc)
	if err != nil {
		return fmt.Errorf("gossip on %s: %w (each controller on one machine needs its own: --gossip-addr, config gossip.addr)", c.cfg.Gossip.Addr, err)
	}
	c.Gossip = node
	c.Fleet = fleet.New(node, fleet.Config{Logger: c.log})
	if len(c.cfg.Gossip.Join) > 0 {
		c.goLoop(func(ctx context.Context) {
			if _, err := node.Join(ctx, c.cfg.Gossip.Join); err != nil && ctx.Err() == nil {
				c.log.Warn("gossip join gave up", "err", err)
			}
		})
	}
	return nil
}

// GossipAddr is where agents join the pool through this controller.
func (c *Controller) GossipAddr() string { return c.Gossip.Addr() }

// Close stops serving and leaves raft running no more. It does not leave the cluster.
func (c *Controller) Close() error {
	var err error
	c.once.Do(func() {
		c.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.http.Shutdown(ctx)
		err = c.Node.Close()
		c.wg.Wait()
		c.Fleet.Close()
		_ = c.Gossip.Leave(time.Second)
		_ = c.Gossip.Shutdown()
	})
	return err
}

// readNodeID keeps a data dir bound to one node id: the id stored on first start wins, and
// a different --node-id later is refused (it would corrupt the raft membership). It only
// reads: writeNodeID stores a new id once the start can no longer be refused.
func readNodeID(dataDir, want string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "node-id"))
	if err == nil {
		stored := strings.TrimSpace(string(b))
		if want != "" && want != stored {
			return "", fmt.Errorf("data dir %s belongs to node %q, not %q: use another --data-dir or the same --node-id", dataDir, stored, want)
		}
		return stored, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if want == "" {
		if want, err = os.Hostname(); err != nil || want == "" {
			want = "controller-1"
		}
	}
	return want, nil
}

// writeNodeID stores the node id in a data dir that has none.
func writeNodeID(dataDir, id string) error {
	path := filepath.Join(dataDir, "node-id")
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o640); err != nil {
		return fmt.Errorf("write node id: %w", err)
	}
	return nil
}

// joinLoop asks the controllers named by --join to add this node until it is part of
// the cluster (it then hears from a leader).
func (c *Controller) joinLoop(ctx context.Context) {
	req := proto.JoinRequest{ID: c.Node.ID(), RaftAddr: c.Node.RaftAddr(), APIAddr: c.apiAddr, GossipAddr: c.gossipAddr()}
	backoff := 200 * time.Millisecond
	for attempt := 0; ; attempt++ {
		for _, addr := range c.cfg.Cluster.Join {
			if err := c.postJSON(ctx, addr, "/cluster/join", req); err != nil {
				if attempt%10 == 0 {
					c.log.Warn("join attempt failed; retrying", "via", addr, "err", err)
				}
				continue
			}
			c.log.Info("joined the cluster", "via", addr)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// registrationLoop keeps this node's API address registered in the replicated state, so
// followers can forward writes to whichever node leads. The leader applies its own
// registration; a follower asks the leader (idempotent join).
func (c *Controller) registrationLoop(ctx context.Context) {
	mine := state.NodeInfo{ID: c.Node.ID(), APIAddr: c.apiAddr, RaftAddr: c.Node.RaftAddr(), GossipAddr: c.gossipAddr()}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.saveKnownControllers()
		c.joinControllersGossip(ctx)
		if cur, ok := c.State.Node(mine.ID); ok && cur == mine {
			continue
		}
		if c.Node.IsLeader() {
			if _, err := c.Node.Apply(state.MustEncode(state.CmdRegisterNode, mine)); err != nil {
				c.log.Debug("register self", "err", err)
			}
			continue
		}
		// Ask the leader if known; otherwise (a restart on a new raft address: the leader
		// still dials the old one, so this node never hears from it) ask every controller
		// we know of, which forward to their leader.
		var targets []string
		if leaderID, _ := c.Node.Leader(); leaderID != "" {
			if ln, ok := c.State.Node(leaderID); ok {
				targets = append(targets, ln.APIAddr)
			}
		}
		if len(targets) == 0 {
			for _, n := range c.knownControllers() {
				if n.ID != mine.ID {
					targets = append(targets, n.APIAddr)
				}
			}
			targets = append(targets, c.cfg.Cluster.Join...)
		}
		for _, addr := range targets {
			err := c.postJSON(ctx, addr, "/cluster/join", proto.JoinRequest{ID: mine.ID, RaftAddr: mine.RaftAddr, APIAddr: mine.APIAddr, GossipAddr: mine.GossipAddr})
			if err == nil {
				break
			}
			c.log.Debug("registration", "via", addr, "err", err)
		}
	}
}

// postJSON calls a peer controller with this node's scheme, trust and peer token.
func (c *Controller) postJSON(ctx context.Context, addr, path string, v any) error {
	b, _ := json.Marshal(v)
	base := addr
	if !strings.Contains(base, "://") {
		base = c.scheme + "://" + base
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.peerToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.peerToken)
	}
	resp, err := c.peerClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e proto.ErrorResponse
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("%s: %d %s", path, resp.StatusCode, e.Error)
	}
	return nil
}

// setupSecurity applies the auth and TLS configuration: it refuses to serve a
// non-loopback address without tokens (unless told to), wraps the listener in TLS, and
// prepares the client used to reach peer controllers.
func (c *Controller) setupSecurity(ln net.Listener) error {
	cfg := c.cfg
	if len(cfg.Auth.Tokens) == 0 && !cfg.Auth.InsecureNoAuth {
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
			return fmt.Errorf("refusing to serve the API on %s without authentication: configure auth.tokens, "+
				"or listen on a loopback address, or pass --insecure-no-auth", ln.Addr())
		}
	}
	for _, t := range cfg.Auth.Tokens {
		if t.Role == api.RoleAdmin && t.Token != "" {
			c.peerToken = t.Token
			break
		}
	}
	c.peerTLS = &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.API.TLS.CAFile != "" {
		pem, err := os.ReadFile(cfg.API.TLS.CAFile)
		if err != nil {
			return fmt.Errorf("api.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("api.tls.ca_file %s holds no PEM certificate", cfg.API.TLS.CAFile)
		}
		c.peerTLS.RootCAs = pool
	}
	if cfg.API.TLS.Enabled() {
		cert, err := tls.LoadX509KeyPair(cfg.API.TLS.CertFile, cfg.API.TLS.KeyFile)
		if err != nil {
			return fmt.Errorf("api.tls: %w", err)
		}
		srv := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
		peerServerTLS(srv, c.clusterTLS)
		c.ln = tls.NewListener(ln, srv)
		c.scheme = "https"
	}
	peerClientTLS(c.peerTLS, c.clusterTLS)
	c.peerClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: c.peerTLS}}
	return nil
}

// metricsSource adapts the controller to the metrics collectors.
type metricsSource struct{ c *Controller }

func (m metricsSource) Counts() map[proto.JobStatus]int { return m.c.State.Counts() }
func (m metricsSource) ActiveWorkers() int              { return m.c.API.ActiveWorkers() }
func (m metricsSource) Raft() (bool, uint64, uint64, uint64) {
	commit, applied := m.c.Node.Indexes()
	return m.c.Node.IsLeader(), commit, applied, m.c.Node.LastIndex()
}

func (m metricsSource) OldestPendingSeconds() (float64, bool) {
	at, ok := m.c.State.OldestPending()
	if !ok {
		return 0, false
	}
	return max(0, time.Since(at).Seconds()), true
}

func (m metricsSource) RaftHealth() metrics.RaftHealth {
	n := m.c.Node
	sync := n.Sync()
	h := metrics.RaftHealth{CatchingUp: !sync.CaughtUp, Lag: sync.Lag, LeaderContactSeconds: -1}
	now := time.Now()
	if peers, ok := n.Peers(); ok {
		h.LeaderContactSeconds = 0
		h.Peers = make([]metrics.RaftPeer, 0, len(peers))
		for _, p := range peers {
			rp := metrics.RaftPeer{ID: p.ID, Reachable: p.Reachable, LastContactSeconds: -1}
			if !p.LastContact.IsZero() {
				rp.LastContactSeconds = max(0, now.Sub(p.LastContact).Seconds())
			}
			h.Peers = append(h.Peers, rp)
		}
	} else if !sync.LastContact.IsZero() {
		h.LeaderContactSeconds = now.Sub(sync.LastContact).Seconds()
	}
	return h
}

// Config returns the configuration the controller runs with.
func (c *Controller) Config() Config { return c.cfg }

// knownControllersFile remembers the other controllers' API addresses across restarts:
// after a restart the raft log is not applied until a leader is heard from, so the
// replicated registrations are not readable yet when this node needs them most.
const knownControllersFile = "controllers.json"

func (c *Controller) knownControllers() []state.NodeInfo {
	if nodes := c.State.Nodes(); len(nodes) > 0 {
		return nodes
	}
	return c.savedNodes()
}

// savedNodes are the controllers as this node last saved them.
func (c *Controller) savedNodes() []state.NodeInfo {
	b, err := os.ReadFile(filepath.Join(c.cfg.DataDir(), knownControllersFile))
	if err != nil {
		return nil
	}
	var nodes []state.NodeInfo
	_ = json.Unmarshal(b, &nodes)
	return nodes
}

func (c *Controller) saveKnownControllers() {
	nodes := c.State.Nodes()
	if len(nodes) == 0 {
		return
	}
	b, _ := json.Marshal(nodes)
	if bytes.Equal(b, c.savedControllers) {
		return
	}
	path := filepath.Join(c.cfg.DataDir(), knownControllersFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o640); err == nil && os.Rename(tmp, path) == nil {
		c.savedControllers = b
	}
}
