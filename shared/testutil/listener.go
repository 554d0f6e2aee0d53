package testutil

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// CountingListener is a loopback TCP listener that counts the connections it accepts: the
// way to show that something refused a target before connecting to it. With httpAnswer
// each connection gets "405 Method Not Allowed" (a web server that is not what the client
// wanted); without, it is closed at once (the client sees EOF).
func CountingListener(t testing.TB, httpAnswer bool) (addr string, accepted *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			if !httpAnswer {
				c.Close()
				continue
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Read(make([]byte, 4096))
				_, _ = io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			}()
		}
	}()
	return ln.Addr().String(), accepted
}
