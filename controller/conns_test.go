package controller_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/ws"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// openHealth opens a connection and does one keep-alive GET /health on it.
func openHealth(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("health on a fresh connection: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return c, br
}

// closedByServer waits (up to within) for the server to close c.
func closedByServer(c net.Conn, br *bufio.Reader, within time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := br.ReadByte()
	if err == nil {
		// Say what came: a flake here is otherwise impossible to tell apart.
		_ = br.UnreadByte()
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		got, _ := br.Peek(min(br.Buffered()+1, 300))
		return fmt.Errorf("the server sent bytes on an idle connection: %q", got)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return errors.New("still open")
	}
	return nil // EOF or reset: closed
}

// Issue 18 (medium): no ReadTimeout/IdleTimeout, so 3,000 idle keep-alive connections
// stayed open. Here idle connections, a request whose body never comes and a flood of
// connections from one address are all bounded, while the lease long-poll and the
// WebSocket (their own deadlines) outlive the write timeout.
func TestConnectionBounds(t *testing.T) {
	c := controller.StartTestClusterWith(t, 1, func(i int, cfg *controller.Config) {
		cfg.API.Limits.IdleTimeout = 500 * time.Millisecond
		cfg.API.Limits.ReadTimeout = time.Second
		cfg.API.Limits.WriteTimeout = time.Second
		cfg.API.Limits.MaxConnsPerClient = 150
	})[0]
	addr := c.APIAddr()

	t.Run("idle keep-alive connections are closed", func(t *testing.T) {
		const n = 120
		conns := make([]net.Conn, n)
		brs := make([]*bufio.Reader, n)
		for i := range conns {
			conns[i], brs[i] = openHealth(t, addr)
		}
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range conns {
			wg.Add(1)
			go func() { defer wg.Done(); errs <- closedByServer(conns[i], brs[i], 20*time.Second) }()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("idle connection: %v", err)
			}
		}
	})

	t.Run("a body that never comes", func(t *testing.T) {
		cn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer cn.Close()
		io.WriteString(cn, "POST /jobs/query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
		br := bufio.NewReader(cn)
		_ = cn.SetReadDeadline(time.Now().Add(20 * time.Second))
		// The server answers the broken request or just closes; either way it lets go.
		answer := "none"
		if resp, err := http.ReadResponse(br, nil); err == nil {
			answer = resp.Status
			// Read the answer to its end: one delimited by the connection's close is not
			// drained by Close, and its bytes, still buffered, would look like more
			// sent on an idle connection (what made this flaky under load).
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		} else {
			answer = err.Error()
		}
		if err := closedByServer(cn, br, 20*time.Second); err != nil {
			t.Fatalf("slow body (first answer: %s): %v", answer, err)
		}
	})

	t.Run("connections per client capped", func(t *testing.T) {
		var held []net.Conn
		for i := 0; i < 150; i++ {
			cn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cn.Close() })
			held = append(held, cn)
		}
		// The cap is reached once the server accepted them all: the next one is closed
		// at once (dial succeeds in the kernel; the first read sees the close).
		controller.WaitFor(t, 20*time.Second, "a connection over the cap is closed", func() bool {
			cn, err := net.Dial("tcp", addr)
			if err != nil {
				return false
			}
			defer cn.Close()
			return closedByServer(cn, bufio.NewReader(cn), 2*time.Second) == nil
		})
		for _, cn := range held {
			cn.Close()
		}
		controller.WaitFor(t, 20*time.Second, "slots given back", func() bool {
			resp, err := http.Get(c.URL() + "/health")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	})

	t.Run("the lease long-poll outlives the write timeout", func(t *testing.T) {
		// 3 s of waiting against a 1 s write timeout: without its own deadline the answer
		// would be cut (the client sees EOF).
		var out proto.LeaseResponse
		code, err := postRaw(c.URL()+"/agent/v1/lease", `{"agent":"kvm-longpoll","max_jobs":1,"wait_seconds":3}`, &out)
		if err != nil || code != 200 || out.Lease != nil {
			t.Fatalf("long-poll: %d %v %+v", code, err, out)
		}
	})

	t.Run("a WebSocket outlives the write timeout", func(t *testing.T) {
		ws := reading(t, dialWS(t, c, 0))
		// Let the write timeout pass (drain the snapshot meanwhile), then an event must
		// still arrive.
		for past := time.After(2 * time.Second); ; {
			select {
			case <-ws.msgs:
				continue
			case <-past:
			}
			break
		}
		if code, err := postRaw(c.URL()+"/jobs/submit", string(harness.JobBody("DC0/vm/ws-late")), nil); err != nil || code != 201 {
			t.Fatalf("submit: %d %v", code, err)
		}
		for m := range ws.msgs {
			if strings.Contains(string(m.Data), "DC0/vm/ws-late") {
				return
			}
		}
		t.Fatal("the WebSocket closed before the job's event came")
	})
}

func postRaw(url, body string, out any) (int, error) {
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil {
		return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode, nil
}

// Issue 18 (low): the WebSocket cap was per node, so one viewer took every slot. A token
// (or, without tokens, an address) now has at most MaxPerClient connections; others still
// get theirs.
func TestWebSocketSlotsPerClient(t *testing.T) {
	c := controller.StartTestClusterWith(t, 1, func(i int, cfg *controller.Config) {
		cfg.Auth.Tokens = authConfig(t, "x", t.TempDir()).Auth.Tokens
	})[0]
	dial := func(tok string) (int, error) {
		conn, resp, err := (&websocket.Dialer{HandshakeTimeout: 5 * time.Second}).Dial("ws://"+c.APIAddr()+"/ws?token="+tok, nil)
		if err == nil {
			t.Cleanup(func() { conn.Close() })
			return resp.StatusCode, nil
		}
		if resp != nil {
			return resp.StatusCode, err
		}
		return 0, err
	}
	for i := 0; i < ws.DefaultConfig().MaxPerClient; i++ {
		if code, err := dial(viewerTok); code != http.StatusSwitchingProtocols {
			t.Fatalf("viewer's connection %d: %d %v", i+1, code, err)
		}
	}
	if code, _ := dial(viewerTok); code != http.StatusTooManyRequests {
		t.Fatalf("the viewer's connection over its share: %d, want 429", code)
	}
	if code, err := dial(adminTok); code != http.StatusSwitchingProtocols {
		t.Fatalf("another client while the viewer is at its cap: %d %v", code, err)
	}
}
