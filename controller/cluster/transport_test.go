package cluster

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hypersdk/hypersdk/test/fleettest"
)

func testLayer(t *testing.T, ca *fleettest.TestCA, timeout time.Duration) *tlsStreamLayer {
	t.Helper()
	l, err := newTLSStreamLayer("127.0.0.1:0", nil, &TransportTLS{Certificate: ca.TLSCertificate(t, "node"), CAs: ca.Pool(),
		HandshakeTimeout: timeout}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

type accepted struct {
	conn net.Conn
	err  error
}

func acceptAsync(l *tlsStreamLayer) chan accepted {
	ch := make(chan accepted, 1)
	go func() {
		c, err := l.Accept()
		ch <- accepted{c, err}
	}()
	return ch
}

// TestTLSStreamLayer: raft's Accept sees only peers that completed mutual TLS with the
// cluster CA; a silent client is dropped after the handshake timeout; a client of another
// CA cannot dial in, and a peer refuses to dial a server of another CA.
func TestTLSStreamLayer(t *testing.T) {
	ca := fleettest.MustCA(t, "cluster CA")
	server := testLayer(t, ca, 300*time.Millisecond)
	ch := acceptAsync(server)

	// A silent TCP client: dropped by the server once the handshake timeout passes.
	silent, err := net.Dial("tcp", server.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err = silent.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("silent client: read %v, want the server to close the connection", err)
	}

	// A peer of another CA: the server refuses its certificate, and it refuses the server's.
	other := testLayer(t, fleettest.MustCA(t, "another CA"), time.Second)
	if c, err := other.Dial(raft.ServerAddress(server.Addr().String()), 5*time.Second); err == nil {
		c.Close()
		t.Fatal("a peer of another CA dialled in")
	}

	// A peer of the cluster CA: handshaken both ways and handed to raft.
	peer := testLayer(t, ca, time.Second)
	c, err := peer.Dial(raft.ServerAddress(server.Addr().String()), 5*time.Second)
	if err != nil {
		t.Fatalf("peer dial: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("accept: %v", a.err)
		}
		if a.conn.RemoteAddr().String() != c.LocalAddr().String() {
			t.Fatalf("raft was handed %s, not the peer %s", a.conn.RemoteAddr(), c.LocalAddr())
		}
		buf := make([]byte, 1)
		if _, err := io.ReadFull(a.conn, buf); err != nil || buf[0] != 'x' {
			t.Fatalf("read from peer: %q %v", buf, err)
		}
		a.conn.Close()
	case <-time.After(20 * time.Second):
		t.Fatal("the peer's connection never reached Accept")
	}

	// Close ends Accept.
	ch = acceptAsync(server)
	server.Close()
	select {
	case a := <-ch:
		if !errors.Is(a.err, net.ErrClosed) {
			t.Fatalf("accept after close: %v", a.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}
