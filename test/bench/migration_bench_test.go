package bench

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// startBenchController starts a single-node controller that leads. A long lease TTL: the
// agent fences a job whose lease it cannot prove renewed within 0.8 TTL of sending its
// long-poll, and a job submitted late into a 20 s long-poll (as after the curl rounds) would
// otherwise be fenced at once with the default 15 s (reported as a worker issue).
func startBenchController(b *testing.B, dir string) *harness.Controller {
	conf := filepath.Join(dir, "controller.yaml")
	if err := os.WriteFile(conf, []byte("agents:\n  lease_ttl: 60s\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	ctl := harness.StartController(b, dir, "c1", nil, "--config", conf, "--fast-raft")
	harness.WaitFor(b, 20*time.Second, "controller leads", func() bool {
		var cl harness.ClusterView
		return harness.GetJSON(ctl.URL()+"/cluster", &cl) == 200 && cl.Leader.ID == "c1"
	})
	return ctl
}

// BenchmarkMigration1GiB: one 1 GiB disk (512 MiB random, 512 MiB hole) served by the
// simulator, measured side by side in one run, each three times (median reported):
//   - the migration job's wall time, submit → completed, through a controller and an agent
//     process (https method, qcow2), with the certificate pinned (the secure default, which
//     reads through the agent's in-process TLS proxy) and with source.insecure (nbdkit's
//     curl plugin talks to the server directly);
//   - `curl -k` of the same flat extent to /dev/null: the single-stream network floor;
//   - `curl` download to a file, then `qemu-img convert` to qcow2: what people do by hand.
//
// Reported: the times, the ratios job/download (target ≤ 1.3) and
// job/(download+convert) (target ≤ 0.8), the agent's peak RSS (VmHWM, target ≤ 150 MB)
// and the peak RSS of its tool processes (qemu-img, nbdkit) during the transfer.
func BenchmarkMigration1GiB(b *testing.B) {
	skipUnlessBench(b)
	harness.RequireLibvirt(b)
	for _, tool := range []string{"curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed", tool)
		}
	}
	dir := b.TempDir()
	sim := harness.StartSim(b, vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: 1 << 30, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5},
		Username: "admin", Password: "bench-pw", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	vm := sim.VMs[0]
	flatURL := fmt.Sprintf("https://%s/folder/%s/%s?dcPath=DC0&dsName=LocalDS_0", sim.URL.Host, vm.Name, filepath.Base(vm.Disks[0].FlatPath))

	ctl := startBenchController(b, dir)
	agent := harness.StartAgent(b, dir, "bench-agent", []*harness.Controller{ctl}, "--max-jobs", "1", "--log-level", "warn")
	harness.CleanupDomain(b, vm.Name)

	run := func(name string, args ...string) time.Duration {
		b.Helper()
		t0 := time.Now()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			b.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return time.Since(t0)
	}
	curlNull := func() time.Duration {
		return run("curl", "-k", "-sS", "-f", "-o", "/dev/null", flatURL)
	}
	downloadConvert := func() time.Duration {
		raw, qcow := filepath.Join(dir, "flat.raw"), filepath.Join(dir, "by-hand.qcow2")
		defer os.Remove(raw)
		defer os.Remove(qcow)
		return run("curl", "-k", "-sS", "-f", "-o", raw, flatURL) + run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
	}
	var agentPeak, toolsPeak int64
	job := func(insecure bool) time.Duration {
		b.Helper()
		def := proto.JobDefinition{
			VMPath: vm.Path,
			Source: proto.Source{Type: "vsphere", VCenterURL: sim.URL.String(), Username: "admin", Password: "bench-pw",
				Thumbprint: sim.Thumbprint, Insecure: insecure},
			Destination: proto.Destination{Type: "kvm"},
			Options:     proto.Options{ConversionMethod: "https"},
		}
		if insecure {
			def.Source.Thumbprint = ""
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				if rss := toolsRSS(agent.Pid()); rss > toolsPeak {
					toolsPeak = rss
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
		t0 := time.Now()
		id := harness.Submit(b, ctl, def)
		j := harness.WaitJob(b, ctl, id, 5*time.Minute, "terminal", func(j proto.Job) bool { return j.Status.Terminal() })
		wall := time.Since(t0)
		close(stop)
		wg.Wait()
		if j.Status != proto.StatusCompleted {
			b.Fatalf("job %s: %s", j.Status, derefErr(j.Error))
		}
		if hwm, err := harness.PeakRSS(agent.Pid()); err == nil && hwm > agentPeak {
			agentPeak = hwm
		}
		// Next round: the same VM again, so the domain and the disks of this one go first.
		if _, err := harness.Virsh("undefine", "--nvram", vm.Name); err != nil {
			b.Fatal(err)
		}
		_ = os.RemoveAll(filepath.Join(agent.StorageDir, id))
		return wall
	}

	for i := 0; i < b.N; i++ {
		var tNull, tDC, tJob, tJobInsecure []time.Duration
		for round := 0; round < 3; round++ {
			tNull = append(tNull, curlNull())
			tDC = append(tDC, downloadConvert())
			tJob = append(tJob, job(false))
			tJobInsecure = append(tJobInsecure, job(true))
		}
		med := func(d []time.Duration) float64 {
			sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
			return d[len(d)/2].Seconds()
		}
		null, dc, jb, jbi := med(tNull), med(tDC), med(tJob), med(tJobInsecure)
		b.ReportMetric(null, "curl-devnull-s")
		b.ReportMetric(dc, "curl+convert-s")
		b.ReportMetric(jb, "job-s")
		b.ReportMetric(jbi, "job-insecure-s")
		b.ReportMetric(jb/null, "job/curl")
		b.ReportMetric(jb/dc, "job/curl+convert")
		b.ReportMetric(jbi/null, "job-insecure/curl")
		b.ReportMetric(jbi/dc, "job-insecure/curl+convert")
		b.ReportMetric(float64(agentPeak)/1e6, "agent-peak-rss-MB")
		b.ReportMetric(float64(toolsPeak)/1e6, "tools-peak-rss-MB")
		b.Logf("rounds: curl %v, curl+convert %v, job %v, job insecure %v", tNull, tDC, tJob, tJobInsecure)
	}
}

func derefErr(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// toolsRSS is the summed resident size of the agent's child processes (qemu-img, nbdkit).
func toolsRSS(parent int) int64 {
	ents, _ := os.ReadDir("/proc")
	var sum int64
	p := strconv.Itoa(parent)
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		c := strings.LastIndexByte(s, ')')
		if c < 0 {
			continue
		}
		f := strings.Fields(s[c+1:])
		if len(f) < 2 || f[1] != p {
			continue
		}
		pid, _ := strconv.Atoi(e.Name())
		if rss, err := harness.RSS(pid); err == nil {
			sum += rss
		}
	}
	return sum
}
