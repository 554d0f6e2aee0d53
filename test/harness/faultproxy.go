package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FaultKind is what a FaultProxy does to a connection when a fault fires.
type FaultKind int

const (
	// FaultReset aborts both sides with a TCP reset, as a crashed peer or a middlebox does.
	FaultReset FaultKind = iota
	// FaultTruncate stops forwarding and closes the client side cleanly (FIN): the client
	// sees a body shorter than announced, with no error from the network.
	FaultTruncate
	// FaultStall stops forwarding for Fault.Stall, then carries on.
	FaultStall
	// FaultStallThenReset stops forwarding for Fault.Stall, then resets.
	FaultStallThenReset
)

func (k FaultKind) String() string {
	switch k {
	case FaultReset:
		return "reset"
	case FaultTruncate:
		return "truncate"
	case FaultStall:
		return "stall"
	case FaultStallThenReset:
		return "stall+reset"
	}
	return fmt.Sprintf("fault(%d)", int(k))
}

// Fault fires once, on the first connection that has forwarded After bytes from the
// server to the client.
type Fault struct {
	Kind  FaultKind
	After int64
	Stall time.Duration
}

// FaultProxy is a TCP proxy that forwards to a target and injects faults into the server
// → client direction: a rate limit for each connection (StartLink), and queued one-shot
// faults (reset, truncate, stall) that fire at a byte offset. TLS passes through untouched (the
// client sees the server's certificate), so a fault can cut or delay bytes but never
// alter them undetected: what a broken network does to an HTTPS transfer.
//
// The listener and the dialer are the caller's, so the proxy can also join network
// namespaces (Net.Expose, Net.Forward).
type FaultProxy struct {
	Addr string
	ln   net.Listener
	dial func(ctx context.Context) (net.Conn, error)
	rate atomic.Int64
	sent atomic.Int64
	wg   sync.WaitGroup

	mu      sync.Mutex
	faults  []Fault
	fired   []string
	conns   map[net.Conn]struct{}
	severed bool
}

// StartFaultProxy proxies every connection accepted on ln to a connection from dial until
// the test ends.
func StartFaultProxy(t testing.TB, ln net.Listener, dial func(ctx context.Context) (net.Conn, error)) *FaultProxy {
	p := &FaultProxy{Addr: ln.Addr().String(), ln: ln, dial: dial, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.Close)
	return p
}

// StartLoopbackFaultProxy proxies a loopback port to target (host:port).
func StartLoopbackFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return StartFaultProxy(t, ln, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", target)
	})
}

// SetRate limits each connection, open ones included, to bytesPerSecond from the server
// to the client (0: unlimited): n connections together carry up to n times the rate.
func (p *FaultProxy) SetRate(bytesPerSecond int64) { p.rate.Store(bytesPerSecond) }

// Sent is how many bytes the proxy has forwarded from the server to its clients.
func (p *FaultProxy) Sent() int64 { return p.sent.Load() }

// Inject queues faults; each fires once, in order.
func (p *FaultProxy) Inject(f ...Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append(p.faults, f...)
}

// Fired lists the faults that fired ("reset at 8388608", ...).
func (p *FaultProxy) Fired() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.fired...)
}

// Pending is how many queued faults have not fired.
func (p *FaultProxy) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.faults)
}

// Sever resets every open connection and every new one: the source is gone for good.
func (p *FaultProxy) Sever() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.severed = true
	for c := range p.conns {
		reset(c)
	}
}

// Close stops accepting and drops every connection.
func (p *FaultProxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *FaultProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *FaultProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		severed := p.severed
		p.mu.Unlock()
		if severed {
			reset(c)
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

// due returns the next fault if this connection, having forwarded sent bytes and about to
// forward n more, reaches its offset; the fault is taken off the queue.
func (p *FaultProxy) due(sent, n int64) (Fault, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.faults) == 0 || sent+n < p.faults[0].After {
		return Fault{}, false
	}
	f := p.faults[0]
	p.faults = p.faults[1:]
	p.fired = append(p.fired, fmt.Sprintf("%s at %d", f.Kind, f.After))
	return f, true
}

// proxyReadSize is what the proxy reads from the server at once: large, since each system
// call is expensive on a virtual machine and the benchmarks' link carries gigabytes (1 GiB
// through a 32 KiB buffer cost 1.74 CPU s here, with 256 KiB 1.27, server and client included).
const proxyReadSize = 256 << 10

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // close sends RST
	}
	_ = c.Close()
}

func (p *FaultProxy) serve(c net.Conn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := p.dial(ctx)
	cancel()
	if err != nil {
		reset(c)
		return
	}
	defer up.Close()
	p.track(c, true)
	p.track(up, true)
	defer p.track(c, false)
	defer p.track(up, false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	var sent int64
	var pace pacer
	// write forwards b to the client at the connection's rate.
	write := func(b []byte) error {
		if err := pace.wait(p.rate.Load(), len(b)); err != nil {
			return err
		}
		n, err := c.Write(b)
		sent += int64(n)
		p.sent.Add(int64(n))
		return err
	}
	buf := make([]byte, proxyReadSize)
	for {
		n, rerr := up.Read(buf)
		if n > 0 {
			if f, ok := p.due(sent, int64(n)); ok {
				// Forward what comes before the fault's offset, then apply it.
				head := max(0, f.After-sent)
				if err := write(buf[:head]); err != nil {
					return
				}
				switch f.Kind {
				case FaultReset:
					reset(c)
					reset(up)
					return
				case FaultTruncate:
					if tc, ok := c.(*net.TCPConn); ok {
						_ = tc.CloseWrite()
					}
					_ = up.Close()
					select { // the client closes once it has read the short body
					case <-done:
					case <-time.After(30 * time.Second):
					}
					return
				case FaultStall, FaultStallThenReset:
					time.Sleep(f.Stall) // the fault itself: nothing moves meanwhile
					if f.Kind == FaultStallThenReset {
						reset(c)
						reset(up)
						return
					}
				}
				if err := write(buf[head:n]); err != nil {
					return
				}
			} else if err := write(buf[:n]); err != nil {
				return
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				select {
				case <-done:
				case <-time.After(30 * time.Second):
				}
			}
			return
		}
	}
}
