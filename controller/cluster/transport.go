package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// TransportTLS makes the raft transport mutual TLS: every connection, in and out, is
// authenticated by a certificate signed by the cluster CA. Without it, anyone who reaches
// the raft port can pose as a leader with a higher term and append entries to every node
// (raft's own protocol has no authentication), which is why a controller only runs a plain
// raft port on loopback.
type TransportTLS struct {
	// Certificate is this node's certificate (with its chain): presented to the peers that
	// dial this node, and to the peers this node dials.
	Certificate tls.Certificate
	// CAs verify the peers' certificates, both ways.
	CAs *x509.CertPool
	// HandshakeTimeout bounds an inbound handshake, so a client that connects and sends
	// nothing holds its goroutine and socket only this long (default 10 s).
	HandshakeTimeout time.Duration
}

// ServerConfig is the TLS configuration of the raft listener: a client certificate of the
// cluster CA is required.
func (t *TransportTLS) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{t.Certificate},
		ClientCAs:    t.CAs,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ClientConfig is the TLS configuration for dialling a peer at host: the peer's certificate
// must be signed by the cluster CA and name host.
func (t *TransportTLS) ClientConfig(host string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{t.Certificate},
		RootCAs:      t.CAs,
		ServerName:   host,
	}
}

// newTransport builds the raft network transport: plain TCP, or mutual TLS when cfg.TLS
// is set. Both bind cfg.RaftAddr and advertise advertise (nil: the bound address).
func newTransport(cfg Config, advertise net.Addr, hlog hclog.Logger) (*raft.NetworkTransport, error) {
	const maxPool = 5
	const timeout = 10 * time.Second
	if cfg.TLS == nil {
		return raft.NewTCPTransportWithLogger(cfg.RaftAddr, advertise, maxPool, timeout, hlog)
	}
	layer, err := newTLSStreamLayer(cfg.RaftAddr, advertise, cfg.TLS, cfg.Logger.With("component", "raft-tls"))
	if err != nil {
		return nil, err
	}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: layer, MaxPool: maxPool, Timeout: timeout, Logger: hlog,
	}), nil
}

// tlsStreamLayer is a raft.StreamLayer over mutual TLS. Accept hands raft only
// connections whose handshake succeeded: an unauthenticated client never reaches raft's
// decoder, so it can neither read a term nor send an RPC.
type tlsStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	tls       *TransportTLS
	server    *tls.Config
	log       *slog.Logger

	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func newTLSStreamLayer(bind string, advertise net.Addr, t *TransportTLS, log *slog.Logger) (*tlsStreamLayer, error) {
	if t.CAs == nil || len(t.Certificate.Certificate) == 0 {
		return nil, errors.New("cluster: raft TLS needs a certificate and the cluster CA")
	}
	if t.HandshakeTimeout <= 0 {
		t.HandshakeTimeout = 10 * time.Second
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	l := &tlsStreamLayer{ln: ln, advertise: advertise, tls: t, server: t.ServerConfig(), log: log,
		conns: make(chan net.Conn), done: make(chan struct{})}
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok || addr.IP == nil || addr.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("cluster: raft address %s is not advertisable", l.Addr())
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// acceptLoop accepts TCP connections and handshakes each in its own goroutine, so a slow
// or silent client cannot hold up the peers behind it. Accept errors other than a close
// (too many open files) are retried with a backoff, as raft's own TCP listener does.
func (l *tlsStreamLayer) acceptLoop() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Error("raft accept failed; retrying", "err", err, "retry_in", delay)
			select {
			case <-l.done:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

func (l *tlsStreamLayer) handshake(raw net.Conn) {
	defer l.wg.Done()
	conn := tls.Server(raw, l.server)
	ctx, cancel := context.WithTimeout(context.Background(), l.tls.HandshakeTimeout)
	defer cancel()
	go func() {
		// A Close of the layer ends pending handshakes at once.
		select {
		case <-l.done:
			raw.Close()
		case <-ctx.Done():
		}
	}()
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		// Warn, not Error: anyone can cause this line; it names who tried.
		l.log.Warn("raft connection refused: TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	select {
	case l.conns <- conn:
	case <-l.done:
		conn.Close()
	}
}

// Accept implements net.Listener: the next authenticated connection.
func (l *tlsStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *tlsStreamLayer) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.ln.Close()
		l.wg.Wait() // no handshake outlives the layer
	})
	return err
}

// Addr implements net.Listener: the advertised address when set.
func (l *tlsStreamLayer) Addr() net.Addr {
	if l.advertise != nil {
		return l.advertise
	}
	return l.ln.Addr()
}

// Dial implements raft.StreamLayer: a TCP connection to a peer, handshaken (both sides
// verified) within timeout.
func (l *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, err
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: l.tls.ClientConfig(host)}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	return c, nil
}
