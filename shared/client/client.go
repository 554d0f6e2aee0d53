// Package client is a typed Go client of the HyperSDK REST API, used by hyperctl, the
// tests and tools. It knows every controller of a cluster: a request goes to the last
// controller that answered and moves on to the next one when that one is unreachable.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/version"
)

// DefaultServer is where a client goes with no configuration (a one-machine setup).
const DefaultServer = "http://127.0.0.1:8080"

// Config configures a Client. Zero values mean defaults.
type Config struct {
	// Servers are controller base URLs ("http://10.0.0.1:8080"); a bare "host:port" means
	// http. Empty means DefaultServer.
	Servers []string
	// Token is sent as "Authorization: Bearer <token>" on every request.
	Token string
	// Timeout bounds one request to one controller (default 30 s). Long-polls and the
	// WebSocket are bounded by their context instead.
	Timeout time.Duration
	// DialTimeout bounds connecting to one controller (default 3 s): a dead controller
	// must not cost the whole Timeout before the next one is tried.
	DialTimeout time.Duration
	// CAFile is a PEM bundle trusted for https controllers (in addition to the system's).
	CAFile string
	// Insecure skips TLS certificate verification (tests, first setup).
	Insecure bool
	// UserAgent defaults to "hyperctl/<version>".
	UserAgent string
}

// Client talks to a cluster of controllers. It is safe for concurrent use.
type Client struct {
	cfg     Config
	servers []*url.URL
	hc      *http.Client
	tls     *tls.Config

	mu        sync.Mutex
	preferred int // index of the last server that answered
}

// New checks the configuration and builds a client. It does not contact anything.
func New(cfg Config) (*Client, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 3 * time.Second
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "hyperctl/" + version.Version
	}
	if len(cfg.Servers) == 0 {
		cfg.Servers = []string{DefaultServer}
	}
	c := &Client{cfg: cfg}
	for _, s := range cfg.Servers {
		u, err := ParseServer(s)
		if err != nil {
			return nil, err
		}
		c.servers = append(c.servers, u)
	}
	if strings.ContainsAny(cfg.Token, "\r\n") {
		return nil, errors.New("token contains a line break")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.Insecure} //nolint:gosec // operator's explicit choice
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca file %s: no PEM certificate found", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	c.tls = tc
	c.hc = &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:       tc,
			TLSHandshakeTimeout:   cfg.DialTimeout,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       60 * time.Second,
			ResponseHeaderTimeout: 0, // bounded by the request context
		},
		// A redirect would resend a body to somewhere the operator did not name.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// ParseServer turns "host:port" or "http(s)://host:port[/prefix]" into a base URL.
func ParseServer(s string) (*url.URL, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty server address")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("server %q is not a URL", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("server %q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("server %q has no host", s)
	}
	if u.User != nil {
		return nil, fmt.Errorf("server %q must not carry credentials: use --token", u.Redacted())
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawQuery, u.Fragment = "", ""
	return u, nil
}

// Servers returns the configured controller base URLs.
func (c *Client) Servers() []string {
	out := make([]string, len(c.servers))
	for i, u := range c.servers {
		out[i] = u.String()
	}
	return out
}

// APIError is an answer of a controller with a status of 400 or more: the {"error"} body
// and the status code.
type APIError struct {
	StatusCode int
	Message    string
	// Server is the controller that answered.
	Server string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.StatusCode)
}

// ServerSide reports whether the failure is the server's (5xx), not the request's.
func (e *APIError) ServerSide() bool { return e.StatusCode >= 500 }

// StatusCode returns the HTTP status of an *APIError in err's chain, 0 if there is none.
func StatusCode(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.StatusCode
	}
	return 0
}

// IsNotFound reports a 404 answer.
func IsNotFound(err error) bool { return StatusCode(err) == http.StatusNotFound }

// UnreachableError means no configured controller could be reached. Its message is one
// line: "cannot reach http://127.0.0.1:8080 (connection refused)".
type UnreachableError struct {
	// Servers are the controllers tried, in order.
	Servers []string
	// Reason is the last short cause ("connection refused", "timed out", ...).
	Reason string
	Err    error
}

func (e *UnreachableError) Error() string {
	if len(e.Servers) == 1 {
		return fmt.Sprintf("cannot reach %s (%s)", e.Servers[0], e.Reason)
	}
	return fmt.Sprintf("cannot reach any of %s (%s)", strings.Join(e.Servers, ", "), e.Reason)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// reason shortens a transport error to what an operator needs. It never includes the
// request URL: a query string may carry a vCenter password.
func reason(err error) string {
	var ne net.Error
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var uaErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to host"
	case errors.As(err, &dnsErr):
		if dnsErr.IsNotFound {
			return "no such host " + dnsErr.Name
		}
		return "name lookup failed: " + dnsErr.Err
	case errors.As(err, &certErr), errors.As(err, &uaErr), errors.As(err, &hostErr):
		return "TLS certificate not trusted: use --ca-file, or --insecure for a test setup"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the server"
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return "it speaks http, not https"
	case strings.Contains(err.Error(), "first record does not look like a TLS handshake"):
		return "it speaks http, not https"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

// neverSent reports a failure before the request reached the server (nothing applied),
// so another controller may be asked even for a write.
func neverSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	return errors.As(err, &dnsErr) || errors.As(err, &certErr) || errors.Is(err, syscall.ECONNREFUSED)
}

// request is one API call.
type request struct {
	method string
	path   string
	query  url.Values
	header http.Header
	body   []byte
	// idempotent calls may be retried on another controller after any transport error.
	idempotent bool
	// timeout overrides the client's per-request timeout (0: the default).
	timeout time.Duration
}

// order returns the servers to try, the last one that answered first.
func (c *Client) order() []int {
	c.mu.Lock()
	p := c.preferred
	c.mu.Unlock()
	idx := make([]int, 0, len(c.servers))
	for i := range c.servers {
		idx = append(idx, (p+i)%len(c.servers))
	}
	return idx
}

func (c *Client) prefer(i int) {
	c.mu.Lock()
	c.preferred = i
	c.mu.Unlock()
}

// do sends req to the first controller that answers and returns its status and body.
// An answer of 400 or more is an *APIError; when no controller answers it is an
// *UnreachableError.
func (c *Client) do(ctx context.Context, req request) ([]byte, error) {
	var tried []string
	var lastErr error
	var lastAPI *APIError
	for _, i := range c.order() {
		base := c.servers[i]
		tried = append(tried, base.String())
		body, status, err := c.once(ctx, base, req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lastErr = err
			if req.idempotent || neverSent(err) {
				continue
			}
			// The request may have been applied: do not send it twice.
			return nil, &UnreachableError{Servers: tried, Reason: reason(err) + "; the request may have been applied", Err: err}
		}
		if status >= 400 {
			ae := &APIError{StatusCode: status, Message: errorMessage(status, body), Server: base.String()}
			// A controller without quorum (503) or gone wrong may be alone: another may
			// answer a read. Writes are not repeated (the leader may have applied them).
			if status >= 500 && req.idempotent {
				lastAPI = ae
				continue
			}
			c.prefer(i)
			return body, ae
		}
		c.prefer(i)
		return body, nil
	}
	if lastAPI != nil {
		return nil, lastAPI
	}
	return nil, &UnreachableError{Servers: tried, Reason: reason(lastErr), Err: lastErr}
}

func (c *Client) once(ctx context.Context, base *url.URL, req request) ([]byte, int, error) {
	timeout := req.timeout
	if timeout == 0 {
		timeout = c.cfg.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := *base
	u.Path = base.Path + req.path
	if len(req.query) > 0 {
		u.RawQuery = req.query.Encode()
	}
	var rd io.Reader
	if req.body != nil {
		rd = bytes.NewReader(req.body)
	}
	hr, err := http.NewRequestWithContext(ctx, req.method, u.String(), rd)
	if err != nil {
		return nil, 0, err
	}
	if req.body != nil || (req.method != http.MethodGet && req.method != http.MethodHead) {
		// Even a write without a body says JSON: a controller without tokens refuses
		// writes that don't (a cross-site form could send them).
		hr.Header.Set("Content-Type", "application/json")
	}
	for k, v := range req.header {
		hr.Header[k] = v
	}
	hr.Header.Set("Accept", "application/json")
	hr.Header.Set("User-Agent", c.cfg.UserAgent)
	if c.cfg.Token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	resp, err := c.hc.Do(hr)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, 0, err
	}
	return b, resp.StatusCode, nil
}

// errorMessage reads {"error": "..."}; anything else is summarized.
func errorMessage(status int, body []byte) string {
	var e proto.ErrorResponse
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	if text == "" || strings.HasPrefix(text, "<") {
		text = http.StatusText(status)
	}
	if text == "" {
		text = "HTTP " + strconv.Itoa(status)
	}
	return text
}

// call sends a request and decodes the answer into out (nil: ignore the body).
func (c *Client) call(ctx context.Context, req request, in, out any) error {
	if in != nil {
		switch v := in.(type) {
		case json.RawMessage:
			req.body = v
		case []byte:
			req.body = v
		default:
			b, err := json.Marshal(in)
			if err != nil {
				return err
			}
			req.body = b
		}
	}
	body, err := c.do(ctx, req)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], body...)
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("unexpected answer from the controller: %v", err)
	}
	return nil
}

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	return c.call(ctx, request{method: http.MethodGet, path: path, query: q, idempotent: true}, nil, out)
}

func (c *Client) post(ctx context.Context, path string, in, out any) error {
	return c.call(ctx, request{method: http.MethodPost, path: path}, in, out)
}

func (c *Client) put(ctx context.Context, path string, in, out any) error {
	return c.call(ctx, request{method: http.MethodPut, path: path}, in, out)
}

func (c *Client) delete(ctx context.Context, path string, out any) error {
	return c.call(ctx, request{method: http.MethodDelete, path: path}, nil, out)
}

// pathEscape escapes one path segment (ids may contain dots, never slashes).
func pathEscape(s string) string { return url.PathEscape(s) }
