package bench

import (
	"cmp"
	"context"
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
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
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

const gib = 1 << 30

// BenchmarkMigration1GiB: VMs with one 1 GiB disk each (512 MiB random, 512 MiB hole)
// served by the simulator in this process, measured side by side in one run, each step
// three times (medians reported):
//
//   - the migration job's wall time, submit → completed, through a controller and an agent
//     process: https into qcow2 (the default) with the certificate pinned, https into raw,
//     and nfc into qcow2;
//   - `curl` of the same flat extent to /dev/null: the single-stream network floor;
//   - `nbdkit curl` → `qemu-img convert -W -m 8`: the pipeline the agent used before its
//     parallel copier (Debian's nbdkit 1.32 serves one request at a time);
//   - `curl` download to a file, then `qemu-img convert` to qcow2: what people do by hand;
//   - `curl` of the export lease's disk URL to /dev/null: the floor of the nfc method (the
//     method reads the stream once, in order, on one connection), and the same two by hand
//     for the lease's stream-optimized VMDK: `nbdkit curl` → `qemu-img convert -f vmdk`
//     (possible here because the simulator serves the lease's file with ranges), and
//     download, then `qemu-img convert`.
//
// Reported besides the times and their ratios: the agent's CPU seconds per GiB (its own and
// its tools', qemu-nbd), the source's (this process: the simulator's TLS), the agent's peak
// RSS (VmHWM) over the single-VM jobs, and the aggregate throughput of three VMs migrated
// at once against one.
//
// All of that runs over loopback, where the simulator serves any one connection as fast as
// the CPU goes. Then the same ratios again through an ESXi-like link (benchLink): each TCP
// connection to the source carries at most HYPERSDK_BENCH_LINK_MBPS (default 100 MB/s), as
// a real host's NFC or datastore HTTP streams do.
func BenchmarkMigration1GiB(b *testing.B) {
	skipUnlessBench(b)
	harness.RequireLibvirt(b)
	for _, tool := range []string{"curl", "nbdkit"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed", tool)
		}
	}
	logMachine(b)
	dir := b.TempDir()
	const vms = 3
	linkBps := benchLinkRate(b)
	// The export lease reports its device URLs with the host "*", as a standalone ESXi does,
	// so that they name the host a client connected to: the link's address in the link
	// regime. Over loopback that is the simulator's own address, as without it.
	sim := harness.StartSim(b, vcsim.Config{VMs: vms, DisksPerVM: 1, DiskSize: gib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5},
		Username: "admin", Password: "bench-pw", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), LeaseHostStar: true})
	vm := sim.VMs[0]
	flatURL := fmt.Sprintf("https://%s/folder/%s/%s?dcPath=DC0&dsName=LocalDS_0", sim.URL.Host, vm.Name, filepath.Base(vm.Disks[0].FlatPath))

	ctl := startBenchController(b, dir)
	agent := harness.StartAgent(b, dir, "bench-agent", []*harness.Controller{ctl}, "--max-jobs", strconv.Itoa(vms), "--log-level", "warn")
	for _, v := range sim.VMs {
		harness.CleanupDomain(b, v.Name)
	}

	run := func(name string, args ...string) time.Duration { return runTool(b, name, args...) }
	byHand := filepath.Join(dir, "by-hand.qcow2")
	steps := map[string]func() time.Duration{
		"curl": func() time.Duration { return run("curl", "-k", "-sS", "-f", "-o", "/dev/null", flatURL) },
		"nbdkit-qemu-img": func() time.Duration {
			defer os.Remove(byHand)
			return run("nbdkit", "-r", "-U", "-", "curl", "url="+flatURL, "sslverify=false",
				"--run", "qemu-img convert -W -m 8 -f raw -O qcow2 $nbd "+byHand)
		},
		"download+convert": func() time.Duration {
			raw := filepath.Join(dir, "flat.raw")
			defer os.Remove(raw)
			defer os.Remove(byHand)
			return run("curl", "-k", "-sS", "-f", "-o", raw, flatURL) + run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, byHand)
		},
		// The same three against the export lease's disk URL (the simulator serves its
		// stream-optimized VMDK with ranges, so qemu-img can read it through nbdkit).
		"curl-nfc": func() time.Duration {
			return withExport(b, sim, sim.URL.String(), vm.Path, func(url, cookie string) time.Duration {
				return run("curl", "-k", "-sS", "-f", "-H", cookie, "-o", "/dev/null", url)
			})
		},
		"nbdkit-qemu-img-nfc": func() time.Duration {
			defer os.Remove(byHand)
			return withExport(b, sim, sim.URL.String(), vm.Path, func(url, cookie string) time.Duration {
				return run("nbdkit", "-r", "-U", "-", "curl", "url="+url, "sslverify=false", "header="+cookie,
					"--run", "qemu-img convert -W -m 8 -f vmdk -O qcow2 $nbd "+byHand)
			})
		},
		"download+convert-nfc": func() time.Duration {
			stream := filepath.Join(dir, "stream.vmdk")
			defer os.Remove(stream)
			defer os.Remove(byHand)
			return withExport(b, sim, sim.URL.String(), vm.Path, func(url, cookie string) time.Duration {
				return run("curl", "-k", "-sS", "-f", "-H", cookie, "-o", stream, url)
			}) + run("qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", stream, byHand)
		},
	}
	steps["curl-nfc"]() // the first export converts the disk: not a measurement

	jb := &jobBench{b: b, ctl: ctl, agent: agent, sim: sim}
	jobs := []struct {
		name string
		opts proto.Options
	}{
		{"job-https", proto.Options{ConversionMethod: "https"}},
		{"job-https-raw", proto.Options{ConversionMethod: "https", OutputFormat: "raw"}},
		{"job-nfc", proto.Options{ConversionMethod: "nfc"}},
	}
	times := map[string][]time.Duration{}
	cpu := map[string][]float64{} // agent CPU seconds (own and tools') per job
	var srcCPU []float64          // this process's CPU seconds (the simulator) per https job
	order := []string{"curl", "nbdkit-qemu-img", "download+convert", "job-https", "job-https-raw",
		"curl-nfc", "nbdkit-qemu-img-nfc", "download+convert-nfc", "job-nfc"}
	for round := 0; round < 3; round++ {
		for _, name := range order {
			if f, ok := steps[name]; ok {
				times[name] = append(times[name], f())
				continue
			}
			for _, j := range jobs {
				if j.name != name {
					continue
				}
				r := jb.run(j.opts, 0)
				times[name] = append(times[name], r.wall)
				cpu[name] = append(cpu[name], r.agentCPU)
				if name == "job-https" {
					srcCPU = append(srcCPU, r.selfCPU)
				}
			}
		}
	}
	peakRSS, err := harness.PeakRSS(agent.Pid())
	if err != nil {
		b.Fatal(err)
	}

	sc := jb.scaling(vms)
	peakRSS3, _ := harness.PeakRSS(agent.Pid())

	med := func(name string) float64 { return median(times[name]).Seconds() }
	for _, name := range order {
		b.ReportMetric(med(name), name+"-s")
	}
	b.ReportMetric(med("job-https")/med("curl"), "https/curl")
	b.ReportMetric(med("job-https")/med("download+convert"), "https/download+convert")
	b.ReportMetric(med("job-https")/med("nbdkit-qemu-img"), "https/nbdkit-qemu-img")
	b.ReportMetric(med("job-https-raw")/med("curl"), "https-raw/curl")
	b.ReportMetric(med("job-nfc")/med("curl-nfc"), "nfc/curl-nfc")
	b.ReportMetric(med("job-nfc")/med("download+convert-nfc"), "nfc/download+convert-nfc")
	b.ReportMetric(med("job-nfc")/med("nbdkit-qemu-img-nfc"), "nfc/nbdkit-qemu-img-nfc")
	b.ReportMetric(medianF(cpu["job-https"]), "agent-cpu-s/GiB-https")
	b.ReportMetric(medianF(cpu["job-https-raw"]), "agent-cpu-s/GiB-https-raw")
	b.ReportMetric(medianF(cpu["job-nfc"]), "agent-cpu-s/GiB-nfc")
	b.ReportMetric(medianF(srcCPU), "source-cpu-s/GiB-https")
	b.ReportMetric(float64(peakRSS)/1e6, "agent-peak-rss-MB")
	b.ReportMetric(float64(peakRSS3)/1e6, "agent-peak-rss-3vms-MB")
	b.ReportMetric(float64(jb.toolsPeak)/1e6, "tools-peak-rss-MB")
	sc.report(b, "", vms)
	// Printed rather than logged: the benchmark's log is cut short in the output.
	fmt.Printf("BenchmarkMigration1GiB rounds: %v\n", times)
	fmt.Printf("BenchmarkMigration1GiB agent CPU s per 1 GiB job: %v; source CPU s per https job: %v\n", cpu, srcCPU)
	sc.print("", vms)

	if linkBps > 0 {
		benchLink(b, jb, linkBps)
	}
}

// scaling is three VMs on one agent at once against one VM alone (https, qcow2), side by
// side twice: the ratio of each pair, since the machine's load changes between pairs. Also
// how many cores the copies kept busy (the agent's CPU and this process's, the simulator's,
// over the wall time): at 2 of 2 the host, not the agent, is what bounds them.
type scaling struct {
	ratios, oneWall, aggWall, cores1, cores3 []float64
}

func (jb *jobBench) scaling(vms int) scaling {
	var sc scaling
	for range 2 {
		one := jb.runMany(proto.Options{ConversionMethod: "https"}, 1)
		three := jb.runMany(proto.Options{ConversionMethod: "https"}, vms)
		sc.ratios = append(sc.ratios, float64(vms)/three.wall.Seconds()/(1/one.wall.Seconds()))
		sc.oneWall, sc.aggWall = append(sc.oneWall, one.wall.Seconds()), append(sc.aggWall, three.wall.Seconds())
		sc.cores1, sc.cores3 = append(sc.cores1, one.cores()), append(sc.cores3, three.cores())
	}
	return sc
}

// report names the metrics with prefix ("" over loopback, "link-" through the link).
func (sc scaling) report(b *testing.B, prefix string, vms int) {
	b.ReportMetric(1/medianF(sc.oneWall), prefix+"GiB/s-1vm")
	b.ReportMetric(float64(vms)/medianF(sc.aggWall), prefix+"GiB/s-3vms")
	b.ReportMetric(medianF(sc.ratios), prefix+"3vms/1vm")
	b.ReportMetric(medianF(sc.cores1), prefix+"cores-busy-1vm")
	b.ReportMetric(medianF(sc.cores3), prefix+"cores-busy-3vms")
}

func (sc scaling) print(prefix string, vms int) {
	fmt.Printf("BenchmarkMigration1GiB %s1 VM: %v s, %v cores busy; %d VMs at once: %v s, %v cores busy; throughput ratios %v\n",
		prefix, sc.oneWall, sc.cores1, vms, sc.aggWall, sc.cores3, sc.ratios)
}

// runTool runs a command and returns how long it took.
func runTool(b *testing.B, name string, args ...string) time.Duration {
	b.Helper()
	t0 := time.Now()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return time.Since(t0)
}

// jobBench submits migration jobs and measures them.
type jobBench struct {
	b         *testing.B
	ctl       *harness.Controller
	agent     *harness.Agent
	sim       *vcsim.Sim
	vcURL     string // the source's vCenter URL: the simulator's, or a link's in front of it
	toolsPeak int64
}

type jobResult struct {
	wall              time.Duration
	agentCPU, selfCPU float64
}

func (jb *jobBench) def(opts proto.Options, i int) proto.JobDefinition {
	return proto.JobDefinition{
		VMPath: jb.sim.VMs[i].Path,
		Source: proto.Source{Type: "vsphere", VCenterURL: cmp.Or(jb.vcURL, jb.sim.URL.String()), Username: "admin", Password: "bench-pw",
			Thumbprint: jb.sim.Thumbprint},
		Destination: proto.Destination{Type: "kvm"},
		Options:     opts,
	}
}

// run migrates VM i and then removes what the job made, for the next round.
func (jb *jobBench) run(opts proto.Options, i int) jobResult {
	b := jb.b
	b.Helper()
	stop := jb.sampleTools()
	agent0, self0 := procCPU(jb.agent.Pid()), selfCPU()
	t0 := time.Now()
	id := harness.Submit(b, jb.ctl, jb.def(opts, i))
	jb.wait(id)
	r := jobResult{wall: time.Since(t0)}
	// qemu-nbd has been reaped when the job completes: its CPU is in the agent's children.
	r.agentCPU, r.selfCPU = procCPU(jb.agent.Pid())-agent0, selfCPU()-self0
	stop()
	jb.clean(id, i)
	return r
}

// cores is how many CPUs the copies kept busy on average: the agent's (with its tools') and
// this process's (the simulator) CPU seconds over the wall time.
func (r jobResult) cores() float64 { return (r.agentCPU + r.selfCPU) / r.wall.Seconds() }

// runMany migrates VMs 0..n-1 at once and returns the time until the last completed.
func (jb *jobBench) runMany(opts proto.Options, n int) jobResult {
	stop := jb.sampleTools()
	defer stop()
	agent0, self0 := procCPU(jb.agent.Pid()), selfCPU()
	t0 := time.Now()
	ids := make([]string, n)
	for i := range n {
		ids[i] = harness.Submit(jb.b, jb.ctl, jb.def(opts, i))
	}
	var spans []string
	for _, id := range ids {
		j := jb.wait(id)
		if j.StartedAt != nil && j.CompletedAt != nil {
			spans = append(spans, fmt.Sprintf("%.1f–%.1f s", j.StartedAt.Sub(t0).Seconds(), j.CompletedAt.Sub(t0).Seconds()))
		}
	}
	r := jobResult{wall: time.Since(t0)}
	r.agentCPU, r.selfCPU = procCPU(jb.agent.Pid())-agent0, selfCPU()-self0
	// When each job ran: they overlap, or the leasing held them back.
	fmt.Printf("BenchmarkMigration1GiB %d VM(s) at once: %s, ran %v\n", n, r.wall.Round(10*time.Millisecond), spans)
	for i, id := range ids {
		jb.clean(id, i)
	}
	return r
}

func (jb *jobBench) wait(id string) proto.Job {
	j := harness.WaitJob(jb.b, jb.ctl, id, 5*time.Minute, "terminal", func(j proto.Job) bool { return j.Status.Terminal() })
	if j.Status != proto.StatusCompleted {
		jb.b.Fatalf("job %s: %s", j.Status, derefErr(j.Error))
	}
	return j
}

func (jb *jobBench) clean(id string, i int) {
	if _, err := harness.Virsh("undefine", "--nvram", jb.sim.VMs[i].Name); err != nil {
		jb.b.Fatal(err)
	}
	_ = os.RemoveAll(filepath.Join(jb.agent.StorageDir, id))
}

// sampleTools records the peak summed RSS of the agent's tool processes until stopped.
func (jb *jobBench) sampleTools() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond) // sampling period
		defer tick.Stop()
		for {
			if rss := toolsRSS(jb.agent.Pid()); rss > jb.toolsPeak {
				jb.toolsPeak = rss
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// withExport opens an export lease on the VM through vcURL (as the nfc method does), runs step on each
// disk URL with the lease's cookie as a header line, and completes the lease; it returns
// the steps' summed time.
func withExport(b *testing.B, sim *vcsim.Sim, vcURL, vmPath string, step func(url, cookie string) time.Duration) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: vcURL, Username: "admin", Password: "bench-pw", Thumbprint: sim.Thumbprint,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	v, err := c.FindVM(ctx, vmPath)
	if err != nil {
		b.Fatal(err)
	}
	exp, err := c.ExportVM(ctx, v)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := exp.Complete(context.WithoutCancel(ctx)); err != nil {
			b.Logf("export lease complete: %v", err)
		}
	}()
	cookie := "Cookie: " + exp.Header.Get("Cookie")
	var d time.Duration
	for _, dev := range exp.Devices {
		if dev.Disk {
			d += step(dev.URL, cookie)
		}
	}
	return d
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// procCPU is a process's CPU seconds, its own and those of its reaped children (utime,
// stime, cutime, cstime of /proc/PID/stat, in clock ticks of 1/100 s on Linux).
func procCPU(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	var sum float64
	for _, i := range []int{11, 12, 13, 14} { // fields 14-17, counted from field 3
		v, _ := strconv.ParseFloat(f[i], 64)
		sum += v
	}
	return sum / 100
}

// selfCPU is this process's CPU seconds: here, mostly the simulator serving the disk.
func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// logMachine names the machine the numbers come from.
func logMachine(b *testing.B) {
	out, _ := exec.Command("sh", "-c", "lscpu | head -20").Output()
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("machine (lscpu | head -20):\n%sload average: %s", out, load)
}

func derefErr(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// toolsRSS is the summed resident size of the agent's child processes (qemu-nbd, qemu-img).
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
