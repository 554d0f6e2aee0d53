package test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// diskUsage is the size of one controller's raft files: the log store and the snapshots.
type diskUsage struct {
	raftDB, snapshots int64
}

func raftDiskUsage(c *harness.Controller) diskUsage {
	var u diskUsage
	if st, err := os.Stat(filepath.Join(c.DataDir, "raft.db")); err == nil {
		u.raftDB = st.Size()
	}
	_ = filepath.Walk(filepath.Join(c.DataDir, "snapshots"), func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			u.snapshots += info.Size()
		}
		return nil
	})
	return u
}

// sample is one measurement of the cluster during the load.
type sample struct {
	at        time.Duration
	jobs      int
	completed int
	rssMB     [3]float64
	disk      [3]diskUsage
}

// TestLoad (make chaos): 20,000 jobs submitted while 50 simulated agents (speaking the
// agent API as agent/worker does) lease them, report progress and complete them, on a
// three-node cluster with the production raft snapshot settings. The raft log on disk must
// stop growing once snapshots compact it, memory must stay bounded, and every job must
// end completed on every node.
func TestLoad(t *testing.T) {
	if !longRun() {
		t.Skip("the load run is part of make chaos (HYPERSDK_CHAOS=long)")
	}
	const (
		jobs     = 20000
		agents   = 50
		vcenters = 100 // the per-vCenter limit (8) must not be what bounds the grant rate
	)
	dir := t.TempDir()
	conf := controllerConfig(t, dir, fleetConfig{LeaseTTL: 15 * time.Second})
	cs := harness.StartControllers(t, dir, 3, "--config", conf, "--fast-raft")
	run := fmt.Sprintf("load-%x", time.Now().UnixNano()&0xffffff)
	sub := newSubmitter(urlsOf(cs))
	start := time.Now()

	var completed, progressWrites, grants atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for a := 0; a < agents; a++ {
		for s := 0; s < loadSlots; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				simAgent(ctx, cs[(a+s)%len(cs)].URL(), fmt.Sprintf("sim-agent-%02d", a), a, &grants, &progressWrites, &completed)
			}()
		}
	}

	var samples []sample
	var mu sync.Mutex
	measure := func() {
		s := sample{at: time.Since(start)}
		var st proto.StatusResponse
		if harness.GetJSON(cs[0].URL()+"/status", &st) == http.StatusOK {
			s.jobs, s.completed = st.TotalJobs, st.CompletedJobs
		}
		for i, c := range cs {
			if rss, err := harness.RSS(c.Pid()); err == nil {
				s.rssMB[i] = float64(rss) / (1 << 20)
			}
			s.disk[i] = raftDiskUsage(c)
		}
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
	}
	sampling := make(chan struct{})
	go func() {
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-sampling:
				return
			case <-tick.C:
				measure()
			}
		}
	}()

	var next atomic.Int64
	var clients sync.WaitGroup
	for c := 0; c < 16; c++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for {
				k := next.Add(1)
				if k > jobs {
					return
				}
				def := idJob(run, k)
				def.Source.VCenterURL = fmt.Sprintf("https://127.0.0.%d:443/sdk", 1+k%vcenters)
				sub.submit(def, time.Minute)
			}
		}()
	}
	clients.Wait()
	submitted := time.Since(start)
	harness.WaitFor(t, 10*time.Minute, "every job completed", func() bool {
		var st proto.StatusResponse
		return harness.GetJSON(cs[0].URL()+"/status", &st) == http.StatusOK && st.CompletedJobs >= jobs
	})
	drained := time.Since(start)
	stop()
	wg.Wait()
	measure()
	close(sampling)

	conv := waitConverged(t, cs, sub.ackedIDs(), 2*time.Minute, true)
	var cl harness.ClusterView
	harness.GetJSON(cs[0].URL()+"/cluster", &cl)
	notCompleted := 0
	for _, j := range conv.byID {
		if j.Status != proto.StatusCompleted {
			notCompleted++
		}
	}

	mu.Lock()
	defer mu.Unlock()
	var rows [][2]string
	var peakRSS float64
	var peakDB, lastDB, midDB int64
	for i, s := range samples {
		for n := range cs {
			peakRSS = max(peakRSS, s.rssMB[n])
			peakDB = max(peakDB, s.disk[n].raftDB)
		}
		if i == len(samples)/2 {
			midDB = s.disk[0].raftDB
		}
		lastDB = s.disk[0].raftDB
		rows = append(rows, [2]string{fmt.Sprintf("t=%3.0fs", s.at.Seconds()), fmt.Sprintf(
			"jobs %5d completed %5d  rss %3.0f/%3.0f/%3.0f MB  raft.db %4.1f/%4.1f/%4.1f MB  snapshots %4.1f MB",
			s.jobs, s.completed, s.rssMB[0], s.rssMB[1], s.rssMB[2],
			mb(s.disk[0].raftDB), mb(s.disk[1].raftDB), mb(s.disk[2].raftDB), mb(s.disk[0].snapshots))})
	}
	rows = append(rows,
		[2]string{"submitted", fmt.Sprintf("%d acknowledged in %s (%.0f/s)", len(sub.ackedIDs()), submitted.Round(time.Second), float64(jobs)/submitted.Seconds())},
		[2]string{"completed", fmt.Sprintf("%d reports accepted after %s (%.0f/s), %d grants, %d progress writes", completed.Load(), drained.Round(time.Second),
			float64(jobs)/drained.Seconds(), grants.Load(), progressWrites.Load())},
		[2]string{"peak controller RSS", fmt.Sprintf("%.0f MB", peakRSS)},
		[2]string{"raft.db (c1) mid-run → end, peak of 3", fmt.Sprintf("%.1f → %.1f MB, %.1f MB", mb(midDB), mb(lastDB), mb(peakDB))},
		[2]string{"raft log entries committed", fmt.Sprint(cl.CommitIndex)},
		[2]string{"lost / not completed / disagreeing", fmt.Sprintf("%d / %d / %d", len(conv.lost), notCompleted, len(conv.disagree))},
	)
	t.Log(table(fmt.Sprintf("load (%d jobs, %d simulated agents × %d slots, 3 controllers, snapshot every 8192 entries)", jobs, agents, loadSlots), rows))

	if len(conv.lost)+len(conv.disagree) > 0 || notCompleted > 0 {
		t.Errorf("lost %d, disagreeing %d, not completed %d", len(conv.lost), len(conv.disagree), notCompleted)
	}
	// Every job costs about five log entries (submit, grant, progress, complete): ~100k
	// entries, ~100 MB of log if nothing were ever compacted.
	if peakDB > 64<<20 {
		t.Errorf("raft.db reached %.1f MB: the log is not compacted", mb(peakDB))
	}
	if peakRSS > 300 {
		t.Errorf("a controller reached %.0f MB RSS (budget 300 MB)", peakRSS)
	}
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// simAgent leases jobs from base as agent name until ctx ends: each granted job gets
// three progress reports (the leader writes at most one per second per job) and a complete.
func simAgent(ctx context.Context, base, name string, n int, grants, progressWrites, completed *atomic.Int64) {
	post := func(path string, in, out any) int {
		code, err := harness.PostJSON(base+path, in, out)
		if err != nil {
			return 0
		}
		return code
	}
	for ctx.Err() == nil {
		var lr proto.LeaseResponse
		if post("/agent/v1/lease", proto.LeaseRequest{Agent: name, MaxJobs: loadSlots, WaitSeconds: 1,
			Capacity: proto.AgentCapacity{StorageFreeBytes: uint64(100+n) << 30, MemoryFreeBytes: 8 << 30}}, &lr) != http.StatusOK || lr.Lease == nil {
			time.Sleep(50 * time.Millisecond) // the real agent's back-off
			continue
		}
		grants.Add(1)
		tok := lr.Lease.LeaseToken
		for p := 1; p <= 3; p++ {
			var rr proto.ReportResponse
			if post("/agent/v1/progress", proto.ProgressRequest{LeaseToken: tok, Agent: name,
				Progress: proto.Progress{Stage: proto.StageConversion, PercentComplete: float64(p * 30), CurrentBytes: int64(p) << 20, TotalBytes: 4 << 20}}, &rr) == http.StatusOK && !rr.Throttled {
				progressWrites.Add(1)
			}
			time.Sleep(100 * time.Millisecond) // the copy takes a while
		}
		for try := 0; try < 20 && ctx.Err() == nil; try++ {
			code := post("/agent/v1/complete", proto.CompleteRequest{LeaseToken: tok, Agent: name,
				Result: &proto.JobResult{DomainName: tok.JobID}}, nil)
			if code == http.StatusOK {
				completed.Add(1)
				break
			}
			if code == http.StatusConflict {
				break // the lease moved on: the job will be run again
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// loadSlots is the job slots of each simulated agent (one goroutine per slot).
const loadSlots = 2
