package harness

import "testing"

// Throttle is a FaultProxy with a rate on each connection and no faults. Tests put it
// between an agent and the simulator to make a transfer last long enough to cancel it or
// kill the agent in the middle (SetRate(0) lets it finish); TLS passes through untouched,
// so the client sees the simulator's own certificate.
type Throttle = FaultProxy

// StartThrottle proxies a loopback port to target at bytesPerSecond per connection (0:
// unlimited) until the test ends: StartLink under the name these tests know it by.
func StartThrottle(t testing.TB, target string, bytesPerSecond int64) *Throttle {
	t.Helper()
	return StartLink(t, target, bytesPerSecond)
}
