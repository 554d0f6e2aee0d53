package controller_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/hypersdk/hypersdk/controller"
)

// BenchmarkSubmitInProcess profiles the submit path (HTTP, forwarding, raft, apply) of a
// 3-node in-process cluster; the process-level numbers live in test/bench.
func BenchmarkSubmitInProcess(b *testing.B) {
	// LAN raft timers: the fast test timers elect a new leader under this load.
	nodes := controller.StartTestClusterWith(b, 3, func(_ int, c *controller.Config) { c.Cluster.Fast = false })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	var n atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			url := nodes[i%3].URL() + "/jobs/submit"
			resp, err := client.Post(url, "application/json", bytes.NewReader(jobBody(fmt.Sprint("DC0/vm/b", i))))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 201 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}
