// Package membership is the agent's seat in the gossip pool: it advertises the host's
// capacity, capabilities and job load as node metadata, keeps them current, and joins the
// controllers (retrying until one answers).
package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip"
)

// ErrNotJoined is returned by WaitJoined when the pool could not be reached in time.
var ErrNotJoined = errors.New("agent has not joined the gossip pool")

// Prober measures the host (agent/capacity.Prober).
type Prober interface {
	Probe(ctx context.Context) (proto.AgentCapacity, proto.AgentCapabilities, error)
}

// Config of the agent's membership. Zero values mean the defaults of DefaultConfig.
type Config struct {
	// Gossip is the pool configuration; its Meta is built here from the fields below.
	Gossip  gossip.Config
	Name    string
	APIAddr string
	Version string
	MaxJobs int
	// Join lists members to join (controllers, or any agent); empty means none.
	Join   []string
	Prober Prober
	// RefreshInterval is how often the host is re-measured and the metadata re-sent if it
	// changed.
	RefreshInterval time.Duration
	// Quantum rounds free memory and free storage down to a multiple of itself before
	// advertising them. Free memory moves by a few KiB every second; advertising it exactly
	// would re-broadcast every agent's metadata on every refresh for no placement gain.
	// Rounding down keeps placement conservative.
	Quantum uint64
	Logger  *slog.Logger
}

// DefaultConfig refreshes every 10 s with 64 MiB granularity.
func DefaultConfig() Config {
	return Config{RefreshInterval: 10 * time.Second, Quantum: 64 << 20, MaxJobs: 2}
}

// Membership is a running agent membership.
type Membership struct {
	cfg  Config
	log  *slog.Logger
	node *gossip.Node

	joined   chan struct{}
	joinErr  error // set before joined is closed
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// Start measures the host, starts the gossip node with that metadata, and joins cfg.Join in
// the background (the agent serves /health while the controllers are still down).
func Start(ctx context.Context, cfg Config) (*Membership, error) {
	d := DefaultConfig()
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = d.RefreshInterval
	}
	if cfg.Quantum == 0 {
		cfg.Quantum = d.Quantum
	}
	if cfg.MaxJobs <= 0 {
		cfg.MaxJobs = d.MaxJobs
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Prober == nil {
		return nil, fmt.Errorf("%w: membership needs a prober", gossip.ErrConfig)
	}
	m := &Membership{cfg: cfg, log: cfg.Logger.With("component", "membership"),
		joined: make(chan struct{}), stop: make(chan struct{})}

	gc := cfg.Gossip
	gc.Meta = proto.NodeMeta{Role: proto.RoleAgent, Name: cfg.Name, APIAddr: cfg.APIAddr,
		Version: cfg.Version, MaxJobs: cfg.MaxJobs}
	m.measure(ctx, &gc.Meta)
	if gc.Logger == nil {
		gc.Logger = cfg.Logger
	}
	node, err := gossip.New(gc)
	if err != nil {
		return nil, err
	}
	m.node = node

	m.wg.Add(2)
	go m.joinLoop()
	go m.refreshLoop()
	return m, nil
}

// measure probes the host into meta. A probe error (storage dir gone) is logged and the
// measured parts are still advertised: a zero free disk keeps placement away from the
// host, which is what an operator wants until the dir is back.
func (m *Membership) measure(ctx context.Context, meta *proto.NodeMeta) {
	c, caps, err := m.cfg.Prober.Probe(ctx)
	if err != nil {
		m.log.Warn("host probe incomplete", "err", err)
	}
	q := m.cfg.Quantum
	c.MemoryFreeBytes -= c.MemoryFreeBytes % q
	c.StorageFreeBytes -= c.StorageFreeBytes % q
	meta.Capacity, meta.Capabilities = c, caps
}

func (m *Membership) joinLoop() {
	defer m.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-m.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := m.node.Join(ctx, m.cfg.Join)
	m.joinErr = err
	close(m.joined)
}

func (m *Membership) refreshLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.RefreshInterval)
		m.Refresh(ctx)
		cancel()
	}
}

// Refresh measures the host now and re-advertises if anything changed.
func (m *Membership) Refresh(ctx context.Context) error {
	var meta proto.NodeMeta
	m.measure(ctx, &meta)
	_, err := m.node.UpdateMeta(func(cur *proto.NodeMeta) {
		cur.Capacity, cur.Capabilities = meta.Capacity, meta.Capabilities
	})
	return err
}

// SetRunningJobs advertises the number of jobs running here (the worker calls it on every
// start and end of a job). It does not block on the network.
func (m *Membership) SetRunningJobs(n int) {
	if _, err := m.node.UpdateMeta(func(cur *proto.NodeMeta) { cur.RunningJobs = n }); err != nil {
		m.log.Error("advertise running jobs", "err", err)
	}
}

// SetMaxJobs changes the advertised job slots (config reload).
func (m *Membership) SetMaxJobs(n int) {
	if _, err := m.node.UpdateMeta(func(cur *proto.NodeMeta) { cur.MaxJobs = n }); err != nil {
		m.log.Error("advertise max jobs", "err", err)
	}
}

// Meta is what the agent currently advertises.
func (m *Membership) Meta() proto.NodeMeta { return m.node.Meta() }

// Node is the underlying gossip node (members, events, address).
func (m *Membership) Node() *gossip.Node { return m.node }

// WaitJoined blocks until the background join succeeded, failed for good (Leave or
// Shutdown), or ctx ends. With no Join addresses it returns at once.
func (m *Membership) WaitJoined(ctx context.Context) error {
	select {
	case <-m.joined:
		if m.joinErr != nil {
			return fmt.Errorf("%w: %v", ErrNotJoined, m.joinErr)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrNotJoined, ctx.Err())
	}
}

func (m *Membership) halt() {
	m.stopOnce.Do(func() { close(m.stop) })
	m.wg.Wait()
}

// Leave stops advertising and leaves gracefully: controllers show the agent "left".
// Call it after the worker has handed back its jobs.
func (m *Membership) Leave(timeout time.Duration) error {
	m.halt()
	return m.node.Leave(timeout)
}

// Shutdown stops without a goodbye; controllers will see the agent dead.
func (m *Membership) Shutdown() error {
	m.halt()
	return m.node.Shutdown()
}
