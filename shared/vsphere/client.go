package vsphere

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/session/keepalive"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/hypersdk/hypersdk/proto"
)

// Config says where and how to connect. Zero values mean the defaults of DefaultConfig.
type Config struct {
	// URL of the vCenter or ESXi: "host", "host:port" or "https://host[:port][/sdk]".
	URL      string
	Username string
	Password string
	// Insecure skips certificate verification.
	Insecure bool
	// Thumbprint pins the server certificate (SHA-1 or SHA-256, any usual spelling).
	Thumbprint string
	// Datacenter scopes relative lookups and datastore URLs; empty means the only one, or
	// whichever holds the object when there are several.
	Datacenter string
	// KeepAlive is the interval of session keep-alive calls, so a long transfer that makes no
	// SOAP call does not lose the session (and with it the cookie of its datastore reads).
	KeepAlive time.Duration
	// Dialer makes every connection to the server (nil: a plain dialer). The controller
	// passes one whose Control hook enforces its outbound policy (shared/netpolicy).
	Dialer *net.Dialer
	// BusyRetryDelay is the first wait before asking a busy ESXi host again for an export
	// (doubled each time, busyRetries times; default 5 s).
	BusyRetryDelay time.Duration
	Logger         *slog.Logger
}

// DefaultConfig has a keep-alive well inside vCenter's 30-minute idle session timeout.
func DefaultConfig() Config {
	return Config{KeepAlive: 5 * time.Minute, Logger: slog.Default()}
}

// Client is a logged-in session. Its methods are safe for concurrent use.
type Client struct {
	vim    *vim25.Client
	soap   *soap.Client
	sm     *session.Manager
	finder *find.Finder
	dc     *object.Datacenter // nil when Config.Datacenter is empty
	u      *url.URL           // SDK URL without credentials
	host   string             // host name without port, for certificate checks
	log    *slog.Logger

	trust      trustMode
	thumbprint string // normalized configured pin
	serverTP   string // SHA-1 of the certificate seen at connect

	mu      sync.Mutex
	dcPaths map[string]string // datastore name → datacenter inventory path (dcPath)

	busyDelay time.Duration
}

// Connect checks the server's certificate against the configuration, then logs in.
// Errors: ErrUntrustedCertificate (with the fix and the thumbprint), ErrBadCredentials,
// ErrUnreachable, ErrNotFound (Config.Datacenter).
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	d := DefaultConfig()
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = d.KeepAlive
	}
	if cfg.Logger == nil {
		cfg.Logger = d.Logger
	}
	u, err := proto.ParseVCenterURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("vsphere: vcenter url: %w", err)
	}
	if cfg.Username == "" || cfg.Password == "" {
		return nil, fmt.Errorf("%w: user name and password are required", ErrBadCredentials)
	}
	c := &Client{u: u, host: u.Hostname(), log: cfg.Logger.With("vcenter", u.Host), dcPaths: map[string]string{}, busyDelay: cfg.BusyRetryDelay}

	hostport := u.Host
	if u.Port() == "" {
		port := "443"
		if u.Scheme == "http" {
			port = "80"
		}
		hostport = net.JoinHostPort(u.Hostname(), port)
	}
	if cfg.Thumbprint != "" {
		if c.thumbprint, err = NormalizeThumbprint(cfg.Thumbprint); err != nil {
			return nil, fmt.Errorf("vsphere: source.thumbprint: %w", err)
		}
	}
	if u.Scheme == "https" {
		certs, err := fetchCertificates(ctx, cfg.Dialer, hostport, c.host)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, hostport, err)
		}
		c.serverTP = ThumbprintSHA1(certs[0])
		if c.trust, err = decideTrust(certs, c.host, cfg.Insecure, c.thumbprint); err != nil {
			return nil, fmt.Errorf("vsphere: %w", err)
		}
	}

	c.soap = soap.NewClient(u, cfg.Insecure)
	if c.trust == trustPinned {
		// govmomi checks the pin on every new connection, not only this first one.
		c.soap.SetThumbprint(hostport, c.thumbprint)
	}
	if cfg.Dialer != nil {
		// govmomi dials TLS with tls.Dial, past any DialContext: both go through the
		// configured dialer, with the trust decision made above.
		t := c.soap.DefaultTransport()
		t.DialContext = cfg.Dialer.DialContext
		if c.trust != trustPlainHTTP {
			t.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				raw, err := cfg.Dialer.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				tc := tls.Client(raw, c.TLSConfig())
				if err := tc.HandshakeContext(ctx); err != nil {
					raw.Close()
					return nil, err
				}
				return tc, nil
			}
		}
	}
	c.vim, err = vim25.NewClient(ctx, c.soap)
	if err != nil {
		return nil, classifyConnect(err, hostport)
	}
	c.vim.RoundTripper = keepalive.NewHandlerSOAP(c.vim.RoundTripper, cfg.KeepAlive, nil)
	c.sm = session.NewManager(c.vim)
	if err := c.sm.Login(ctx, url.UserPassword(cfg.Username, cfg.Password)); err != nil {
		if fault.Is(err, &types.InvalidLogin{}) || fault.Is(err, &types.NoPermission{}) {
			return nil, fmt.Errorf("%w: %s refused user %q", ErrBadCredentials, u.Host, cfg.Username)
		}
		return nil, fmt.Errorf("vsphere: login to %s as %q: %w", u.Host, cfg.Username, err)
	}

	c.finder = find.NewFinder(c.vim, false)
	if cfg.Datacenter != "" {
		dc, err := c.finder.Datacenter(ctx, cfg.Datacenter)
		if err != nil {
			_ = c.Close(context.WithoutCancel(ctx))
			var nf *find.NotFoundError
			if errors.As(err, &nf) {
				return nil, fmt.Errorf("%w: datacenter %q on %s", ErrNotFound, cfg.Datacenter, u.Host)
			}
			return nil, fmt.Errorf("vsphere: datacenter %q: %w", cfg.Datacenter, err)
		}
		c.dc = dc
		c.finder.SetDatacenter(dc)
	}
	c.log.Debug("connected", "user", cfg.Username, "api", c.vim.ServiceContent.About.ApiType,
		"version", c.vim.ServiceContent.About.Version)
	return c, nil
}

// classifyConnect maps a failure of the first SOAP call.
func classifyConnect(err error, hostport string) error {
	if soap.IsCertificateUntrusted(err) {
		return fmt.Errorf("vsphere: %w: %s: %v", ErrUntrustedCertificate, hostport, err)
	}
	var ne net.Error
	if errors.As(err, &ne) || strings.Contains(err.Error(), "connection refused") {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, hostport, err)
	}
	return fmt.Errorf("vsphere: %s is not a vSphere SDK endpoint: %w", hostport, err)
}

// Close logs out (which also stops the keep-alive).
func (c *Client) Close(ctx context.Context) error {
	err := c.sm.Logout(ctx)
	c.soap.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("vsphere: logout: %w", err)
	}
	return nil
}

// Vim is the underlying govmomi client, for calls this package does not wrap.
func (c *Client) Vim() *vim25.Client { return c.vim }

// URL is the SDK URL, without credentials.
func (c *Client) URL() *url.URL {
	u := *c.u
	return &u
}

// IsVCenter reports whether the server is a vCenter (not a standalone ESXi).
func (c *Client) IsVCenter() bool { return c.vim.IsVC() }

// ServerThumbprint is the SHA-1 thumbprint of the certificate the server presented at
// Connect (empty for http://). VDDK's thumbprint= wants this form.
func (c *Client) ServerThumbprint() string { return c.serverTP }

// Insecure reports whether certificate verification is off for this client.
func (c *Client) Insecure() bool { return c.trust == trustInsecure }

// TLSConfig is a fresh TLS configuration making the same trust decision as the session:
// insecure, pinned to the thumbprint, or verified against the system roots. Nil for http://.
func (c *Client) TLSConfig() *tls.Config {
	if c.trust == trustPlainHTTP {
		return nil
	}
	return tlsConfigFor(c.trust, c.host, c.thumbprint)
}

// HTTPTransport is a new transport for datastore and NFC reads from this server with the
// session's trust decision. The caller owns it (CloseIdleConnections when done).
func (c *Client) HTTPTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       c.TLSConfig(),
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
	}
}

// SessionHeader carries the session cookie for HTTP requests outside SOAP (datastore
// /folder reads). It is a secret: never log it or put it on a command line.
func (c *Client) SessionHeader() http.Header {
	h := http.Header{}
	if ck := c.soap.SessionCookie(); ck != nil && ck.Value != "" {
		h.Set("Cookie", soap.SessionCookieName+"="+ck.Value)
	}
	return h
}

// collector is the property collector for this session.
func (c *Client) collector() *property.Collector { return property.DefaultCollector(c.vim) }
