package api

import (
	"log"
	"net"
	"net/http"
	"sync"
	"time"
)

// Connection bounds (issue 18): without read, write and idle timeouts, 3,000 idle
// keep-alive connections stayed open (+72 MB) and, under a lower fd limit, the API's and
// raft's accept failed. The long-poll lease and the WebSocket set their own deadlines
// (handleLease extends the write deadline, the WebSocket hub manages its connection after
// the upgrade).

// Limits bounds the API's connections. Zero values mean the defaults.
type Limits struct {
	// ReadTimeout bounds reading a request, headers and body.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds a request from its headers to the end of its answer.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout closes a keep-alive connection without a request for that long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxConnsPerClient caps open connections per client address; more are closed at once.
	MaxConnsPerClient int `yaml:"max_conns_per_client"`
}

// Default limits: generous for agents' long-polls, hyperctl and dashboards behind one
// address, small enough that one client cannot take the process's descriptors.
const (
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 60 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultMaxConnsPerClient = 256
)

// WithDefaults fills zero values.
func (l Limits) WithDefaults() Limits {
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = DefaultReadTimeout
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxConnsPerClient <= 0 {
		l.MaxConnsPerClient = DefaultMaxConnsPerClient
	}
	return l
}

// NewHTTPServer is the API's http.Server with l's timeouts and per-client connection cap.
// The cap counts in ConnState rather than in a wrapping listener: net/http must see the
// *tls.Conn itself (r.TLS, the peer certificates of fromPeer, the "HTTP request to an HTTPS
// server" answer).
func NewHTTPServer(h http.Handler, l Limits, errLog *log.Logger) *http.Server {
	l = l.WithDefaults()
	pc := &perClient{max: l.MaxConnsPerClient, open: map[string]int{}, seen: map[net.Conn]string{}}
	return &http.Server{Handler: h, ReadHeaderTimeout: min(10*time.Second, l.ReadTimeout), ReadTimeout: l.ReadTimeout,
		WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: 64 << 10, ErrorLog: errLog,
		ConnState: pc.track}
}

// perClient counts open connections per client address; one over the cap is closed as
// soon as it is accepted. A hijacked connection (WebSocket) leaves the count: the hub caps
// those per client itself.
type perClient struct {
	max  int
	mu   sync.Mutex
	open map[string]int
	seen map[net.Conn]string
}

func (p *perClient) track(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		host := c.RemoteAddr().String()
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		p.mu.Lock()
		over := p.open[host] >= p.max
		if !over {
			p.open[host]++
			p.seen[c] = host
		}
		p.mu.Unlock()
		if over {
			c.Close() // the server's read fails and it forgets the connection
		}
	case http.StateClosed, http.StateHijacked:
		p.mu.Lock()
		if host, ok := p.seen[c]; ok {
			delete(p.seen, c)
			if p.open[host]--; p.open[host] <= 0 {
				delete(p.open, host)
			}
		}
		p.mu.Unlock()
	}
}
