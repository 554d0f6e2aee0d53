package controller

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/shared/config"
	"github.com/hypersdk/hypersdk/shared/gossip"
	"github.com/hypersdk/hypersdk/shared/netpolicy"
)

// Config is the controller's configuration: the API document's YAML shape (database,
// metrics, webhooks) plus api, cluster and gossip sections. Flags override it.
type Config struct {
	Database DatabaseConfig  `yaml:"database"`
	Metrics  MetricsConfig   `yaml:"metrics"`
	API      APIConfig       `yaml:"api"`
	Auth     AuthConfig      `yaml:"auth"`
	Secrets  SecretsConfig   `yaml:"secrets"`
	Cluster  ClusterConfig   `yaml:"cluster"`
	Gossip   GossipConfig    `yaml:"gossip"`
	Agents   AgentsConfig    `yaml:"agents"`
	Security SecurityConfig  `yaml:"security"`
	Webhooks []WebhookConfig `yaml:"webhooks"`
	Log      LogConfig       `yaml:"log"`
	// Validation: pre-flight checks (config_validate.go).
	Validation ValidationConfig `yaml:"validation"`

	// Schedules, webhook delivery and WebSocket (config_events.go).
	Scheduler       SchedulerConfig       `yaml:"scheduler"`
	WebSocket       WebSocketConfig       `yaml:"websocket"`
	WebhookDelivery WebhookDeliveryConfig `yaml:"webhook_delivery"`
}

// DatabaseConfig: path is the data dir (raft log, snapshots, node id). A path ending in
// ".db" (the API document's example) means its directory.
type DatabaseConfig struct {
	Path string `yaml:"path"`
}

// MetricsConfig: /metrics is served on the API port when enabled (default true). Port is
// accepted for compatibility with the API document and must equal the API port if set.
type MetricsConfig struct {
	Enabled *bool `yaml:"enabled"`
	Port    int   `yaml:"port"`
}

// APIConfig is the HTTP API listener.
type APIConfig struct {
	Addr         string        `yaml:"addr"`
	Advertise    string        `yaml:"advertise"`
	MaxBodyBytes int64         `yaml:"max_body_bytes"`
	TLS          TLSConfig     `yaml:"tls"`
	RateLimit    api.RateLimit `yaml:"rate_limit"`
	// AllowedHosts are names (besides address literals, localhost and the advertised
	// name) a Host header may carry when no token is configured: the guard against DNS
	// rebinding from a browser on this host.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// Limits: read_timeout, write_timeout, idle_timeout, max_conns_per_client.
	Limits api.Limits `yaml:",inline"`
}

// TLSConfig serves the API over TLS when CertFile and KeyFile are set; CAFile verifies
// peer controllers (forwarding, joins) and defaults to the system roots. With all three
// set it also serves as the cluster TLS unless cluster.tls says otherwise (cluster_tls.go).
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
}

// Enabled reports whether the API is served over TLS.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// SecretsConfig: KeyFile (32 bytes, hex or base64, mode 0600, the same on every
// controller) seals vCenter passwords in the raft log and snapshots.
type SecretsConfig struct {
	KeyFile string `yaml:"key_file"`
}

// AuthConfig lists the API tokens. With none, the controller refuses to listen on a
// non-loopback address unless InsecureNoAuth is set.
type AuthConfig struct {
	Tokens         []api.Token `yaml:"tokens"`
	InsecureNoAuth bool        `yaml:"insecure_no_auth"`
}

// ClusterConfig is raft membership.
type ClusterConfig struct {
	NodeID        string        `yaml:"node_id"`
	RaftAddr      string        `yaml:"raft_addr"`
	RaftAdvertise string        `yaml:"raft_advertise"`
	Join          []string      `yaml:"join"`
	Bootstrap     bool          `yaml:"bootstrap"`
	MaxAttempts   int           `yaml:"max_attempts"`
	LeaderWait    time.Duration `yaml:"leader_wait"`
	// TLS is raft's mutual TLS (and the peer certificate on forwarding and joins); each
	// field defaults to the api.tls one (cluster_tls.go).
	TLS TLSConfig `yaml:"tls"`
	// Fast shortens raft timers (tests and demos on one machine).
	Fast bool `yaml:"fast"`
	// SnapshotThreshold is how many log entries since the last snapshot trigger the next
	// one, checked every SnapshotInterval; TrailingLogs is how many entries a snapshot
	// leaves in the log for slow followers. They bound the raft log on disk. Zero: the
	// defaults (8192, 30 s (2 s with fast), 10240).
	SnapshotThreshold uint64        `yaml:"snapshot_threshold"`
	SnapshotInterval  time.Duration `yaml:"snapshot_interval"`
	TrailingLogs      uint64        `yaml:"trailing_logs"`
}

// GossipConfig is the memberlist pool shared with agents.
type GossipConfig = config.Gossip

// AgentsConfig is how controllers deal with agents.
type AgentsConfig struct {
	// JoinToken must be presented by agents on every agent API call (empty: not checked).
	JoinToken string `yaml:"join_token"`
	// LeaseTTL is how long a lease lives without a heartbeat (default 15s).
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// CommitGrace is how long an agent whose attempt passed the commit point may stay
	// silent before its job fails for the operator instead of running again (default 2m,
	// at least lease_ttl; controller/lease/commit.go says why).
	CommitGrace time.Duration `yaml:"commit_grace"`
	// PerVCenterLimit bounds concurrent migrations from one vCenter (default 8).
	PerVCenterLimit int `yaml:"per_vcenter_limit"`
	// MaxDisksPerSourceHost bounds the disks copied at once from one source ESXi host
	// (default 10), for jobs whose host pre-flight validation found.
	MaxDisksPerSourceHost int `yaml:"max_disks_per_source_host"`
}

// SecurityConfig is the outbound policy (shared/netpolicy): where the controller may
// connect on a caller's behalf (VM discovery, webhooks, schedule glob expansion). Link-
// local and metadata addresses are always refused.
type SecurityConfig struct {
	// AllowPrivateTargets permits loopback and private addresses (the demo and tests,
	// or a vCenter on a private network).
	AllowPrivateTargets bool `yaml:"allow_private_targets"`
	// AllowedTargetNetworks permits these CIDR prefixes even when private: the narrower
	// way to reach vCenters and webhook receivers inside the data centre.
	AllowedTargetNetworks []string `yaml:"allowed_target_networks"`
	// AllowHTTPTargets permits http:// vCenters and webhook receivers.
	AllowHTTPTargets bool `yaml:"allow_http_targets"`
}

// OutboundPolicy is the policy the configuration describes (validated by Validate).
func (c *Config) OutboundPolicy() netpolicy.Policy {
	nets, _ := netpolicy.ParseNetworks(c.Security.AllowedTargetNetworks)
	return netpolicy.Policy{AllowHTTP: c.Security.AllowHTTPTargets, AllowPrivate: c.Security.AllowPrivateTargets, AllowedNetworks: nets}
}

// WebhookConfig is a webhook seeded at first bootstrap.
type WebhookConfig struct {
	URL        string            `yaml:"url"`
	Events     []string          `yaml:"events"`
	Enabled    *bool             `yaml:"enabled"`
	Timeout    int               `yaml:"timeout"`
	RetryCount *int              `yaml:"retry_count"`
	Headers    map[string]string `yaml:"headers"`
	Secret     string            `yaml:"secret"`
}

// LogConfig selects the log level and format.
type LogConfig = config.Log

// DefaultConfig runs a single node on one machine with no flags.
func DefaultConfig() Config {
	return Config{
		Database: DatabaseConfig{Path: defaultDataDir()},
		API: APIConfig{Addr: "127.0.0.1:8080", MaxBodyBytes: 1 << 20,
			RateLimit: api.RateLimit{RequestsPerSecond: 1000, Burst: 2000}},
		Cluster: ClusterConfig{RaftAddr: "127.0.0.1:8081", MaxAttempts: 3, LeaderWait: 3 * time.Second},
		Gossip:  GossipConfig{Addr: "127.0.0.1:7946"},
		Agents:  AgentsConfig{LeaseTTL: 15 * time.Second, PerVCenterLimit: 8, MaxDisksPerSourceHost: 10},
		Log:     LogConfig{Level: "info", Format: "text"},
	}
}

// defaultDataDir is /var/lib/hypersdk/controller when this user may create or write it
// (root, the package's service user), else a per-user directory, so `hypersdk-controller`
// with no flags works for anyone. It only looks: the dir is created once the start can no
// longer be refused.
func defaultDataDir() string {
	sys := "/var/lib/hypersdk/controller"
	for p := sys; p != "/"; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			if syscall.Access(p, 2 /* W_OK */) == nil {
				return sys
			}
			break
		}
	}
	if d, err := os.UserHomeDir(); err == nil {
		return filepath.Join(d, ".local", "share", "hypersdk", "controller")
	}
	return "hypersdk-data"
}

// LoadConfig reads a YAML file over the defaults. Unknown keys are errors: a typo must not
// silently fall back to a default.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	err := config.Load(path, &cfg)
	return cfg, err
}

// DataDir resolves database.path to a directory.
func (c *Config) DataDir() string {
	p := c.Database.Path
	if strings.HasSuffix(p, ".db") {
		return filepath.Dir(p)
	}
	return p
}

// MetricsEnabled is true unless metrics.enabled is false.
func (c *Config) MetricsEnabled() bool { return c.Metrics.Enabled == nil || *c.Metrics.Enabled }

// Validate checks the merged configuration.
func (c *Config) Validate() error {
	if c.API.Addr == "" {
		return errors.New("config: api.addr is required")
	}
	if c.Cluster.RaftAddr == "" {
		return errors.New("config: cluster.raft_addr is required")
	}
	if c.DataDir() == "" {
		return errors.New("config: database.path (the data dir) is required")
	}
	if c.Cluster.MaxAttempts < 0 || c.Cluster.MaxAttempts > 100 {
		return errors.New("config: cluster.max_attempts must be between 1 and 100")
	}
	if _, err := api.NewAuth(c.Auth.Tokens); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if c.Gossip.Key != "" {
		if _, err := gossip.ParseSecretKey(c.Gossip.Key); err != nil {
			return fmt.Errorf("config: gossip.key: %w", err)
		}
	}
	if _, err := netpolicy.ParseNetworks(c.Security.AllowedTargetNetworks); err != nil {
		return fmt.Errorf("config: security.allowed_target_networks: %w", err)
	}
	if err := c.validateEvents(); err != nil {
		return err
	}
	return c.validateClusterSecurity()
}
