package transfer

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// rangeProxy serves the source extents as plain HTTP on a private Unix socket and forwards
// GET/HEAD (with Range) to the real source with Go's TLS configuration and the session
// header. It exists for trust settings nbdkit's curl plugin cannot express (a pinned
// thumbprint, a caller's tls.Config); it costs one extra in-memory copy of each byte.
type rangeProxy struct {
	socket   string
	client   *http.Client
	header   http.Header
	upstream []string
	srv      *http.Server
	log      *slog.Logger

	mu      sync.Mutex
	lastErr error
}

func startRangeProxy(client *http.Client, header http.Header, upstream []string, socket string, log *slog.Logger) (*rangeProxy, error) {
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("%w: proxy socket: %v", ErrTool, err)
	}
	p := &rangeProxy{socket: socket, client: client, header: header, upstream: upstream, log: log}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *rangeProxy) Close() { _ = p.srv.Close() }

func (p *rangeProxy) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

func (p *rangeProxy) fail(err error) {
	p.mu.Lock()
	p.lastErr = err
	p.mu.Unlock()
}

var forwardedResponseHeaders = []string{"Content-Length", "Content-Range", "Accept-Ranges", "Content-Type", "Last-Modified", "Etag"}

func (p *rangeProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
	if err != nil || i < 0 || i >= len(p.upstream) || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream[i], nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	addHeader(req, p.header)
	for _, h := range []string{"Range", "If-Range"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	resp, err := p.client.Do(req)
	if err != nil {
		p.fail(err)
		// The message can name the URL but never the session header.
		http.Error(w, tlsHint(err).Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for _, h := range forwardedResponseHeaders {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(w, resp.Body, buf); err != nil {
		p.fail(err)
		if !errors.Is(err, net.ErrClosed) {
			p.log.Debug("proxy: upstream body failed", "err", err)
		}
		// Abort the connection so curl sees a short body (and the retry filter retries)
		// instead of a response that looks complete.
		panic(http.ErrAbortHandler)
	}
}
