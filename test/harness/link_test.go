package harness

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// startPayloadServer serves, on each connection, the number of pseudo-random bytes the
// client asks for (an 8-byte big-endian count), then closes: the client's request crosses
// the link one way, the payload the other.
func startPayloadServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				var n uint64
				if binary.Read(c, binary.BigEndian, &n) != nil {
					return
				}
				_, _ = c.Write(payload(int(n)))
			}()
		}
	}()
	return ln.Addr().String()
}

// payload is n bytes that do not repeat on any short period, the same for the same n.
func payload(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16)})
	_, _ = r.Read(b)
	return b
}

// fetch asks addr for n bytes and returns what came back and how long it took.
func fetch(t *testing.T, addr string, n int) ([]byte, time.Duration) {
	t0 := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return nil, 0
	}
	defer c.Close()
	if err := binary.Write(c, binary.BigEndian, uint64(n)); err != nil {
		t.Error(err)
		return nil, 0
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Error(err)
	}
	return got, time.Since(t0)
}

// TestLink: what crosses the link arrives unchanged, and a paced connection is never
// faster than its rate (a lower bound only: how much slower depends on the machine).
// Two connections at once each carry the full rate and the proxy counts every byte.
func TestLink(t *testing.T) {
	target := startPayloadServer(t)
	cases := []struct {
		name  string
		rate  int64 // bytes per second per connection, 0 = unlimited
		size  int
		conns int
	}{
		{"unlimited", 0, 3<<20 + 17, 1},
		{"paced", 16 << 20, 8<<20 + 5, 1},
		{"paced, two connections", 16 << 20, 6 << 20, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			link := StartLink(t, target, tc.rate)
			want := payload(tc.size)
			var wg sync.WaitGroup
			for range tc.conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					got, took := fetch(t, link.Addr, tc.size)
					if !bytes.Equal(got, want) {
						t.Errorf("got %d bytes, not the %d sent", len(got), len(want))
					}
					if tc.rate == 0 {
						return
					}
					// The bucket starts full: one burst may pass at once, the rest at the rate.
					burst := max(pacerMinBurst, int(tc.rate/50))
					if floor := time.Duration(float64(tc.size-burst) / float64(tc.rate) * float64(time.Second)); took < floor {
						t.Errorf("%d bytes at %d B/s took %v, less than the %v the rate allows", tc.size, tc.rate, took, floor)
					}
				}()
			}
			wg.Wait()
			if s := link.Sent(); s != int64(tc.conns*tc.size) {
				t.Errorf("Sent() = %d, want %d", s, tc.conns*tc.size)
			}
		})
	}
}
