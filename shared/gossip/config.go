package gossip

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/hypersdk/hypersdk/proto"
)

// Sentinel errors, checked with errors.Is.
var (
	ErrConfig   = errors.New("invalid gossip config")
	ErrJoin     = errors.New("could not join the gossip pool")
	ErrShutdown = errors.New("gossip node is shut down")
)

// Profile picks memberlist's timings.
type Profile int

const (
	// ProfileLAN is memberlist's LAN defaults: a killed node is declared dead in about 5-10 s.
	ProfileLAN Profile = iota
	// ProfileFast is for tests on loopback: dead within a couple of seconds.
	ProfileFast
)

// Config of a gossip node. Zero values mean the defaults of DefaultConfig.
type Config struct {
	// Meta is the node's initial metadata; its Role and Name are the node's identity.
	Meta proto.NodeMeta
	// BindAddr is the ip:port memberlist listens on (TCP and UDP); port 0 picks a free
	// port, reported by Node.Addr.
	BindAddr string
	// AdvertiseAddr is the ip[:port] other members use to reach this node (NAT, 0.0.0.0
	// binds). Empty: the bound address, or a private IP when bound to 0.0.0.0.
	AdvertiseAddr string
	// SecretKey encrypts and authenticates gossip (AES, 16/24/32 bytes; ParseSecretKey
	// reads the base64 config form). A member without the key cannot join or read.
	SecretKey []byte
	// Label is stamped on every packet; members with another label ignore them (keeps two
	// pools on one network apart even without a key).
	Label   string
	Profile Profile
	// CheckInterval is how often this node pings members it has not heard from, to tell
	// "suspect" apart from "alive" (memberlist keeps that state to itself). 0: the profile's.
	CheckInterval time.Duration
	// RejoinInterval is how often the node checks that one of the addresses it was told to
	// join is still an alive member, and joins them again if not. Without it a restarted
	// single controller, which remembers nobody, would never hear from agents that already
	// buried it (they still have each other, so none of them is alone). 0: the profile's.
	RejoinInterval time.Duration
	// UpdateTimeout bounds the wait for a metadata broadcast to go out.
	UpdateTimeout time.Duration
	// JoinBackoffMin and JoinBackoffMax bound the wait between join attempts.
	JoinBackoffMin time.Duration
	JoinBackoffMax time.Duration
	// ForgetAfter is how long dead and left members stay in Members().
	ForgetAfter time.Duration
	// Tune, if set, edits memberlist's config last, for knobs this package does not name
	// (CIDRsAllowed, DeadNodeReclaimTime, suspicion timings). It must leave the name,
	// addresses, delegates and logger alone.
	Tune   func(*memberlist.Config)
	Logger *slog.Logger
}

// DefaultConfig listens on every interface on memberlist's usual port.
func DefaultConfig() Config {
	return Config{BindAddr: "0.0.0.0:7946", UpdateTimeout: time.Second, ForgetAfter: time.Hour}
}

// ParseSecretKey decodes the base64 key of the config file and checks its length.
func ParseSecretKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: secret key is not base64: %v", ErrConfig, err)
	}
	if err := memberlist.ValidateKey(k); err != nil {
		return nil, fmt.Errorf("%w: secret key: %v", ErrConfig, err)
	}
	return k, nil
}

// profile holds everything a Profile sets beyond memberlist's own knobs.
type profile struct {
	ml             func() *memberlist.Config
	checkInterval  time.Duration
	rejoinInterval time.Duration
	backoffMin     time.Duration
	backoffMax     time.Duration
}

var profiles = map[Profile]profile{
	ProfileLAN: {ml: memberlist.DefaultLANConfig, checkInterval: 5 * time.Second, rejoinInterval: 30 * time.Second,
		backoffMin: time.Second, backoffMax: 30 * time.Second},
	ProfileFast: {ml: fastConfig, checkInterval: 500 * time.Millisecond, rejoinInterval: 500 * time.Millisecond,
		backoffMin: 50 * time.Millisecond, backoffMax: 500 * time.Millisecond},
}

// fastConfig detects a dead member in 2-4 s on loopback. It is not tighter because tests
// run many nodes in one process, under the race detector, beside other test binaries: with
// a 100 ms probe timeout memberlist then declares healthy nodes dead and our pings flag
// them suspect.
func fastConfig() *memberlist.Config {
	c := memberlist.DefaultLocalConfig()
	c.ProbeInterval = 400 * time.Millisecond
	c.ProbeTimeout = 250 * time.Millisecond
	c.SuspicionMult = 4
	c.SuspicionMaxTimeoutMult = 2
	c.GossipInterval = 50 * time.Millisecond
	c.PushPullInterval = time.Second
	c.GossipToTheDeadTime = 3 * time.Second
	c.TCPTimeout = 2 * time.Second
	return c
}

func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	p, ok := profiles[c.Profile]
	if !ok {
		return c, fmt.Errorf("%w: unknown profile %d", ErrConfig, c.Profile)
	}
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.UpdateTimeout <= 0 {
		c.UpdateTimeout = d.UpdateTimeout
	}
	if c.ForgetAfter <= 0 {
		c.ForgetAfter = d.ForgetAfter
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = p.checkInterval
	}
	if c.RejoinInterval <= 0 {
		c.RejoinInterval = p.rejoinInterval
	}
	if c.JoinBackoffMin <= 0 {
		c.JoinBackoffMin = p.backoffMin
	}
	if c.JoinBackoffMax < c.JoinBackoffMin {
		c.JoinBackoffMax = max(p.backoffMax, c.JoinBackoffMin)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.Meta.Validate(); err != nil {
		return c, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if len(c.SecretKey) > 0 {
		if err := memberlist.ValidateKey(c.SecretKey); err != nil {
			return c, fmt.Errorf("%w: secret key: %v", ErrConfig, err)
		}
	}
	if len(c.Label) > memberlist.LabelMaxSize {
		return c, fmt.Errorf("%w: label longer than %d bytes", ErrConfig, memberlist.LabelMaxSize)
	}
	return c, nil
}

// splitIPPort parses "ip:port" (or "ip" when portOptional). memberlist wants literal IPs.
func splitIPPort(what, s string, portOptional bool) (string, int, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		if !portOptional {
			return "", 0, fmt.Errorf("%w: %s %q: want ip:port", ErrConfig, what, s)
		}
		host, portStr = strings.Trim(s, "[]"), ""
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%w: %s %q: %q is not an IP address", ErrConfig, what, s, host)
	}
	port := 0
	if portStr != "" {
		if port, err = strconv.Atoi(portStr); err != nil || port < 0 || port > 65535 {
			return "", 0, fmt.Errorf("%w: %s %q: bad port", ErrConfig, what, s)
		}
	}
	return host, port, nil
}

// memberlistConfig builds memberlist's config for this node.
func (c Config) memberlistConfig(name string, d *delegate) (*memberlist.Config, error) {
	mc := profiles[c.Profile].ml()
	mc.Name = name
	var err error
	if mc.BindAddr, mc.BindPort, err = splitIPPort("bind address", c.BindAddr, false); err != nil {
		return nil, err
	}
	mc.AdvertiseAddr, mc.AdvertisePort = "", mc.BindPort
	if c.AdvertiseAddr != "" {
		var port int
		if mc.AdvertiseAddr, port, err = splitIPPort("advertise address", c.AdvertiseAddr, true); err != nil {
			return nil, err
		}
		if port != 0 {
			// memberlist overwrites the advertised port with the bound one when binding
			// port 0; refuse rather than silently advertise something else.
			if mc.BindPort == 0 {
				return nil, fmt.Errorf("%w: advertise address %q names a port but the bind port is 0", ErrConfig, c.AdvertiseAddr)
			}
			mc.AdvertisePort = port
		}
	}
	mc.SecretKey = c.SecretKey
	mc.Label = c.Label
	mc.Delegate = d
	mc.Events = d
	mc.Ping = d
	mc.Logger = newLogLogger(c.Logger)
	if c.Tune != nil {
		c.Tune(mc)
	}
	return mc, nil
}
