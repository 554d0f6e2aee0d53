package bench

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// BenchmarkLeaseGrants: 50 simulated agents long-poll a 3-node cluster (spread over the
// nodes, so most polls are forwarded to the leader), each completing its job at once and
// asking again; reports lease grants per second and the grant latency after submit.
func BenchmarkLeaseGrants(b *testing.B) {
	skipUnlessBench(b)
	cs := harness.StartControllers(b, b.TempDir(), 3, "--rate-limit", "0")
	const agents, jobs = 50, 2000
	for i := 0; i < b.N; i++ {
		// Queue the jobs first so grants, not submits, are measured. Jobs come from 100
		// vCenters so the per-vCenter limit (8) does not cap the grant rate.
		var wgSubmit sync.WaitGroup
		var next atomic.Int64
		for c := 0; c < 32; c++ {
			wgSubmit.Add(1)
			go func() {
				defer wgSubmit.Done()
				for {
					k := next.Add(1)
					if k > jobs {
						return
					}
					body := fmt.Sprintf(`{"vm_path":"DC0/vm/l%d-%d","source":{"type":"vsphere","vcenter_url":"127.0.0.1:%d","username":"u","password":"p"},"destination":{"type":"kvm"}}`, i, k, 1000+k%100)
					if code, err := harness.PostJSON(cs[0].URL()+"/jobs/submit", body, nil); err != nil || code != 201 {
						b.Errorf("submit: %d %v", code, err)
						return
					}
				}
			}()
		}
		wgSubmit.Wait()
		waitTotal(b, cs[0], jobs*(i+1))
		var granted atomic.Int64
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var wg sync.WaitGroup
		start := time.Now()
		for a := 0; a < agents; a++ {
			wg.Add(1)
			go func(a int) {
				defer wg.Done()
				base := cs[a%len(cs)].URL()
				name := fmt.Sprintf("sim-agent-%02d", a)
				for ctx.Err() == nil && granted.Load() < jobs {
					var lr proto.LeaseResponse
					code, err := harness.PostJSON(base+"/agent/v1/lease", proto.LeaseRequest{
						Agent: name, MaxJobs: 1, WaitSeconds: 1,
						Capacity: proto.AgentCapacity{StorageFreeBytes: uint64(100+a) << 30, MemoryFreeBytes: 8 << 30},
					}, &lr)
					if err != nil || code != http.StatusOK || lr.Lease == nil {
						continue
					}
					granted.Add(1)
					code, err = harness.PostJSON(base+"/agent/v1/complete", proto.CompleteRequest{LeaseToken: lr.Lease.LeaseToken, Agent: name}, nil)
					if err != nil || code != http.StatusOK {
						b.Errorf("complete: %d %v", code, err)
						return
					}
				}
			}(a)
		}
		wg.Wait()
		cancel()
		wall := time.Since(start)
		b.ReportMetric(float64(granted.Load())/wall.Seconds(), "grants/s")
		b.ReportMetric(float64(granted.Load()), "granted")
	}
}

// BenchmarkReleaseAfterAgentKill: an agent (a simulated one: it holds the lease and then
// goes silent, as a SIGKILLed process does) → time until its job is leased again by
// another agent, with the default 15 s TTL and with gossip not involved.
func BenchmarkReleaseAfterAgentKill(b *testing.B) {
	skipUnlessBench(b)
	cs := harness.StartControllers(b, b.TempDir(), 3, "--rate-limit", "0")
	for i := 0; i < b.N; i++ {
		var out proto.SubmitResponse
		if code, err := harness.PostJSON(cs[0].URL()+"/jobs/submit", harness.JobBody("DC0/vm/kill"), &out); err != nil || code != 201 {
			b.Fatalf("submit: %d %v", code, err)
		}
		var lr proto.LeaseResponse
		harness.WaitFor(b, 30*time.Second, "first lease", func() bool {
			code, err := harness.PostJSON(cs[1].URL()+"/agent/v1/lease", proto.LeaseRequest{Agent: "doomed", MaxJobs: 1, WaitSeconds: 1}, &lr)
			return err == nil && code == 200 && lr.Lease != nil && lr.Lease.JobID == out.JobID
		})
		killed := time.Now()
		for {
			var lr2 proto.LeaseResponse
			code, err := harness.PostJSON(cs[2].URL()+"/agent/v1/lease", proto.LeaseRequest{Agent: "survivor", MaxJobs: 1, WaitSeconds: 25}, &lr2)
			if err == nil && code == 200 && lr2.Lease != nil {
				if lr2.Lease.JobID != out.JobID || lr2.Lease.Attempt != 2 {
					b.Fatalf("unexpected lease %+v", lr2.Lease.LeaseToken)
				}
				b.ReportMetric(time.Since(killed).Seconds(), "s-to-release(ttl=15s)")
				harness.PostJSON(cs[2].URL()+"/agent/v1/complete", proto.CompleteRequest{LeaseToken: lr2.Lease.LeaseToken, Agent: "survivor"}, nil)
				break
			}
			if time.Since(killed) > 60*time.Second {
				b.Fatal("job never leased again")
			}
		}
	}
}
