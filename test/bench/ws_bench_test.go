package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// BenchmarkWebSocketFanout: 1,000 WebSocket clients on one controller of a 3-node cluster;
// a job is submitted through another node and the time until the LAST client has its
// job_update is measured, per job change (p50/p99; target p99 ≤ 250 ms). Clients find the
// job by its id in the raw frame, so client-side JSON decoding does not inflate the result
// on this shared 2-core machine.
func BenchmarkWebSocketFanout(b *testing.B) {
	skipUnlessBench(b)
	const clients, rounds = 1000, 40
	dir := b.TempDir()
	cfgPath := filepath.Join(dir, "controller.yaml")
	if err := os.WriteFile(cfgPath, []byte("websocket:\n  max_clients: 1100\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	cs := harness.StartControllers(b, dir, 3, "--config", cfgPath)
	hub, via := cs[1], cs[2]

	type waiter struct {
		marker []byte
		left   atomic.Int64
		done   chan time.Time
	}
	var cur atomic.Pointer[waiter]
	var conns []*websocket.Conn
	var wg sync.WaitGroup
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	})
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	for i := 0; i < clients; i++ {
		conn, _, err := d.Dial("ws://"+hub.APIAddr+"/ws", nil)
		if err != nil {
			b.Fatalf("client %d: %v", i, err)
		}
		conns = append(conns, conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, msg, err := conn.ReadMessage()
				if err != nil {
					return
				}
				w := cur.Load()
				if w != nil && bytes.Contains(msg, w.marker) && bytes.Contains(msg, []byte(`"type":"job_update"`)) {
					if w.left.Add(-1) == 0 {
						w.done <- time.Now()
					}
				}
			}
		}()
	}
	var status proto.StatusResponse
	harness.WaitFor(b, 30*time.Second, "clients connected", func() bool {
		return harness.GetJSON(hub.URL()+"/status", &status) == 200
	})

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var lat []time.Duration
		for r := 0; r < rounds; r++ {
			id := fmt.Sprintf("ws-%d-%d", i, r)
			w := &waiter{marker: []byte(`"id":"` + id + `"`), done: make(chan time.Time, 1)}
			// Each client sees a submit once (one job_update per change).
			w.left.Store(clients)
			cur.Store(w)
			body := fmt.Sprintf(`{"id":%q,"vm_path":"DC0/vm/%s","source":{"type":"vsphere","vcenter_url":"127.0.0.1:1","username":"u","password":"p"},"destination":{"type":"kvm"}}`, id, id)
			start := time.Now()
			if code, err := harness.PostJSON(via.URL()+"/jobs/submit", body, nil); err != nil || code != 201 {
				b.Fatalf("submit: %d %v", code, err)
			}
			select {
			case end := <-w.done:
				lat = append(lat, end.Sub(start))
			case <-time.After(30 * time.Second):
				b.Fatalf("round %d: %d of %d clients never got the job_update", r, w.left.Load(), clients)
			}
		}
		b.ReportMetric(ms(percentile(lat, 0.5)), "p50-ms-last-client")
		b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms-last-client")
	}
	b.ReportMetric(clients, "clients")
}
