// Package bench holds `make bench`: workloads against real processes on loopback that
// report rates, latencies and ratios with b.ReportMetric. Nothing here asserts a timing.
package bench

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

func skipUnlessBench(b *testing.B) {
	if os.Getenv("HYPERSDK_BENCH") == "" {
		b.Skip("set HYPERSDK_BENCH=1 (make bench) to run the cluster benchmarks")
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	i := int(float64(len(d)-1) * p)
	return d[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// load submits n jobs with `clients` concurrent clients spread over the controllers and
// returns the latencies of the acknowledged ones and the wall time.
func load(b *testing.B, cs []*harness.Controller, n, clients int, prefix string) ([]time.Duration, time.Duration, int64) {
	var next, failed atomic.Int64
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			url := cs[c%len(cs)].URL() + "/jobs/submit"
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				t0 := time.Now()
				code, err := harness.PostJSON(url, harness.JobBody(fmt.Sprintf("DC0/vm/%s-%d", prefix, i)), nil)
				if err != nil || code != http.StatusCreated {
					failed.Add(1)
					continue
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}(c)
	}
	wg.Wait()
	wall := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	return all, wall, failed.Load()
}

// BenchmarkSubmit: job submits/s and p50/p99 latency with 64 concurrent clients spread
// over a 3-node cluster (followers forward to the leader).
func BenchmarkSubmit(b *testing.B) {
	skipUnlessBench(b)
	cs := harness.StartControllers(b, b.TempDir(), 3, "--rate-limit", "0")
	load(b, cs, 500, 64, "warm")
	for i := 0; i < b.N; i++ {
		lat, wall, failed := load(b, cs, 20000, 64, fmt.Sprintf("run%d", i))
		b.ReportMetric(float64(len(lat))/wall.Seconds(), "submits/s")
		b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
		b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
		b.ReportMetric(float64(failed), "failed")
	}
}

// BenchmarkSubmitViaLeaderOnly: the same load sent only to the leader (no forwarding hop),
// for comparison side by side.
func BenchmarkSubmitViaLeaderOnly(b *testing.B) {
	skipUnlessBench(b)
	cs := harness.StartControllers(b, b.TempDir(), 3, "--rate-limit", "0")
	leader := []*harness.Controller{harness.LeaderOf(cs)}
	load(b, leader, 500, 64, "warm")
	for i := 0; i < b.N; i++ {
		lat, wall, failed := load(b, leader, 20000, 64, fmt.Sprintf("run%d", i))
		b.ReportMetric(float64(len(lat))/wall.Seconds(), "submits/s")
		b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
		b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
		b.ReportMetric(float64(failed), "failed")
	}
}

// BenchmarkGetJob: GET /jobs/{id} requests/s on one node with 64 concurrent clients.
func BenchmarkGetJob(b *testing.B) {
	skipUnlessBench(b)
	cs := harness.StartControllers(b, b.TempDir(), 3, "--rate-limit", "0")
	var ids []string
	for i := 0; i < 100; i++ {
		var out proto.SubmitResponse
		if code, err := harness.PostJSON(cs[0].URL()+"/jobs/submit", harness.JobBody(fmt.Sprint("DC0/vm/g", i)), &out); err != nil || code != 201 {
			b.Fatalf("seed submit: %d %v", code, err)
		}
		ids = append(ids, out.JobID)
	}
	node := cs[1]
	harness.WaitFor(b, 10*time.Second, "replicated", func() bool {
		return harness.GetJSON(node.URL()+"/jobs/"+ids[len(ids)-1], nil) == 200
	})
	for i := 0; i < b.N; i++ {
		const total = 50000
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for c := 0; c < 64; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					k := next.Add(1)
					if k > total {
						return
					}
					if harness.GetJSON(node.URL()+"/jobs/"+ids[k%int64(len(ids))], nil) != 200 {
						b.Error("GET failed")
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(total/time.Since(start).Seconds(), "gets/s")
	}
}

// BenchmarkQueryScaling: POST /jobs/query {"status":"pending","limit":10} latency at 10k
// and at 100k stored jobs on the same cluster, and their ratio.
func BenchmarkQueryScaling(b *testing.B) {
	skipUnlessBench(b)
	cs := harness.StartControllers(b, b.TempDir(), 3, "--rate-limit", "0")
	leader := []*harness.Controller{harness.LeaderOf(cs)}
	measure := func() time.Duration {
		var lat []time.Duration
		for i := 0; i < 2000; i++ {
			t0 := time.Now()
			if code, err := harness.PostJSON(cs[1].URL()+"/jobs/query", `{"status":"pending","limit":10}`, nil); err != nil || code != 200 {
				b.Fatalf("query: %d %v", code, err)
			}
			lat = append(lat, time.Since(t0))
		}
		return percentile(lat, 0.5)
	}
	for i := 0; i < b.N; i++ {
		load(b, leader, 10000, 64, "q10k")
		waitTotal(b, cs[1], 10000)
		at10k := measure()
		load(b, leader, 90000, 64, "q100k")
		waitTotal(b, cs[1], 100000)
		at100k := measure()
		b.ReportMetric(float64(at10k.Microseconds()), "p50-us@10k")
		b.ReportMetric(float64(at100k.Microseconds()), "p50-us@100k")
		b.ReportMetric(float64(at100k)/float64(at10k), "ratio-100k/10k")
		if rss, err := harness.RSS(leader[0].Pid()); err == nil {
			b.ReportMetric(float64(rss)/(1<<20), "leader-rss-MB@100k")
		}
		// The followers hold the same state; the raft files show compaction at work (100k
		// entries are ~100 MB of log if none were ever snapshotted away).
		var followerRSS int64
		for _, c := range cs {
			if rss, err := harness.RSS(c.Pid()); err == nil && c != leader[0] {
				followerRSS = max(followerRSS, rss)
			}
		}
		b.ReportMetric(float64(followerRSS)/(1<<20), "max-follower-rss-MB@100k")
		if st, err := os.Stat(filepath.Join(leader[0].DataDir, "raft.db")); err == nil {
			b.ReportMetric(float64(st.Size())/(1<<20), "leader-raft.db-MB@100k")
		}
	}
}

func waitTotal(b *testing.B, c *harness.Controller, n int) {
	harness.WaitFor(b, 60*time.Second, fmt.Sprint(n, " jobs replicated"), func() bool {
		var st proto.StatusResponse
		return harness.GetJSON(c.URL()+"/status", &st) == 200 && st.TotalJobs >= n
	})
}

// BenchmarkFailover: leader SIGKILL → first 201 through a survivor, median of 5, with the
// default (LAN) raft timers operators run.
func BenchmarkFailover(b *testing.B) {
	skipUnlessBench(b)
	cs := harness.StartControllers(b, b.TempDir(), 3, "--rate-limit", "0")
	for i := 0; i < b.N; i++ {
		var times []time.Duration
		for round := 0; round < 5; round++ {
			leader := harness.LeaderOf(cs)
			if leader == nil {
				b.Fatal("no leader")
			}
			var survivor *harness.Controller
			for _, c := range cs {
				if c != leader {
					survivor = c
					break
				}
			}
			t0 := time.Now()
			leader.Signal(syscall.SIGKILL)
			for {
				code, _ := harness.PostJSON(survivor.URL()+"/jobs/submit", harness.JobBody("DC0/vm/failover"), nil)
				if code == http.StatusCreated {
					break
				}
				if time.Since(t0) > 30*time.Second {
					b.Fatal("no write accepted 30 s after the leader died")
				}
				time.Sleep(10 * time.Millisecond) // a client's retry interval, not a wait for a condition
			}
			times = append(times, time.Since(t0))
			leader.Restart(b)
			harness.WaitFor(b, 30*time.Second, "restarted node back", func() bool {
				var cl harness.ClusterView
				return harness.GetJSON(leader.URL()+"/cluster", &cl) == 200 && cl.Leader.ID != "" && cl.AppliedIndex >= cl.CommitIndex
			})
		}
		b.ReportMetric(ms(percentile(times, 0.5)), "failover-median-ms")
		b.ReportMetric(ms(percentile(times, 1)), "failover-max-ms")
	}
}
