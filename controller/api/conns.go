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

// NewHTTPServer is the API's http.Server with l's timeouts.
func NewHTTPServer(h http.Handler, l Limits, errLog *log.Logger) *http.Server {
	l = l.WithDefaults()
	return &http.Server{Handler: h, ReadHeaderTimeout: min(10*time.Second, l.ReadTimeout), ReadTimeout: l.ReadTimeout,
		WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: 64 << 10, ErrorLog: errLog}
}

// LimitPerClient caps the listener's open connections per client address: one past the cap
// is closed as soon as it is accepted.
func LimitPerClient(ln net.Listener, max int) net.Listener {
	if max <= 0 {
		max = DefaultMaxConnsPerClient
	}
	return &perClientListener{Listener: ln, max: max, open: map[string]int{}}
}

type perClientListener struct {
	net.Listener
	max  int
	mu   sync.Mutex
	open map[string]int
}

func (l *perClientListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := c.RemoteAddr().String()
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		l.mu.Lock()
		if l.open[host] >= l.max {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open[host]++
		l.mu.Unlock()
		return &countedConn{Conn: c, release: func() { l.release(host) }}, nil
	}
}

func (l *perClientListener) release(host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[host]--; l.open[host] <= 0 {
		delete(l.open, host)
	}
}

// countedConn gives its slot back once, on the first Close.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
