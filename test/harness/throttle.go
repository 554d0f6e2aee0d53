package harness

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Throttle is a TCP proxy on loopback that forwards to a target at a bounded rate in the
// server → client direction. Tests put it between an agent and the simulator to make a
// transfer last long enough to cancel it or kill the agent in the middle; TLS passes
// through untouched, so the client sees the simulator's own certificate.
type Throttle struct {
	Addr   string // host:port to connect to instead of the target
	target string
	rate   atomic.Int64 // bytes per second; 0 = unlimited
	ln     net.Listener
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartThrottle proxies to target at bytesPerSecond (0: unlimited) until the test ends.
func StartThrottle(t testing.TB, target string, bytesPerSecond int64) *Throttle {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Throttle{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.rate.Store(bytesPerSecond)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// SetRate changes the rate of every connection, open ones included (0: unlimited).
func (p *Throttle) SetRate(bytesPerSecond int64) { p.rate.Store(bytesPerSecond) }

// Close stops accepting and drops every connection.
func (p *Throttle) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Throttle) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *Throttle) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

func (p *Throttle) serve(c net.Conn) {
	defer c.Close()
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	p.track(c, true)
	p.track(up, true)
	defer p.track(c, false)
	defer p.track(up, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, _ = io.Copy(up, c)
		cancel()
		_ = up.Close()
	}()
	buf := make([]byte, 32<<10)
	for ctx.Err() == nil {
		n, err := up.Read(buf)
		if n > 0 {
			if rate := p.rate.Load(); rate > 0 {
				// Sleep for the time these bytes take at the rate: simple, and accurate
				// enough for tests that only need "slow".
				time.Sleep(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
