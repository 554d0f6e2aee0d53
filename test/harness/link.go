package harness

import (
	"context"
	"testing"

	"golang.org/x/time/rate"
)

// StartLink puts an ESXi-like link in front of target (host:port): a loopback TCP proxy
// (FaultProxy.Addr) on which each connection carries at most bytesPerSecond from target
// to the client, and the client's bytes go out unpaced. A real ESXi host serves each TCP
// connection (NFC, datastore HTTP, NBD) at a limited rate, often 1 Gbit/s or less, which
// is why the field's tools open several; over loopback the simulator has no such limit
// and a single stream is bounded by the CPU instead. TLS passes through untouched, so the
// simulator's certificate and thumbprint still match. The proxy stops when the test ends.
func StartLink(t testing.TB, target string, bytesPerSecond int64) *FaultProxy {
	t.Helper()
	p := StartLoopbackFaultProxy(t, target)
	p.SetRate(bytesPerSecond)
	return p
}

// pacer is one connection's token bucket. A bucket rather than a sleep per write: a
// sleep overshoots (timers on a loaded or paravirtualized host wake late, and the write
// itself takes time), which would make the link slower than its rate; the bucket lets the
// next writes catch up on what a late wake-up lost, up to its burst.
type pacer struct {
	lim *rate.Limiter
	bps int64
}

// pacerMinBurst is one read of the proxy's buffer, so one wait covers it.
const pacerMinBurst = proxyReadSize

// wait blocks until n more bytes fit in the rate bps (0: unlimited); the rate may change
// between calls (FaultProxy.SetRate applies to open connections).
func (p *pacer) wait(bps int64, n int) error {
	if bps <= 0 {
		return nil
	}
	if bps != p.bps {
		// 20 ms of the rate: enough to absorb a late timer without losing throughput,
		// small enough that the link is paced well below the time of any transfer.
		burst := max(pacerMinBurst, int(bps/50))
		if p.lim == nil {
			p.lim = rate.NewLimiter(rate.Limit(bps), burst)
		} else {
			p.lim.SetLimit(rate.Limit(bps))
			p.lim.SetBurst(burst)
		}
		p.bps = bps
	}
	for n > 0 {
		k := min(n, p.lim.Burst())
		// Never cancelled: a wait is at most one burst at the rate, and Close ends the
		// connection at its next write.
		if err := p.lim.WaitN(context.Background(), k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
