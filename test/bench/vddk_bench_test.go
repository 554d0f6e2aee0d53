package bench

import (
	"cmp"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/fakevddk"
	"github.com/hypersdk/hypersdk/test/harness"
)

// BenchmarkVDDKvsHTTPS1GiB: one 1 GiB disk (512 MiB random, 512 MiB hole) migrated by the
// same agent process with the vddk method (the FAKE VDDK of test/fakevddk, which reads the
// simulator's flat file locally: no network between the library and the disk) and with the
// https method (nbdkit curl → qemu-img over loopback TLS to the simulator), three
// interleaved rounds each, medians reported. Also reported: what each method read from
// the source: VixDiskLib_Read bytes (the fake's stats) for vddk, bytes the server sent
// (TLS, counted by a TCP proxy, harness.FaultProxy) for https, against the disk's allocated bytes.
func BenchmarkVDDKvsHTTPS1GiB(b *testing.B) {
	skipUnlessBench(b)
	harness.RequireLibvirt(b)
	dir := b.TempDir()
	const password = "bench-pw"
	sim := harness.StartSim(b, vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: 1 << 30, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5},
		Username: "admin", Password: password, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	vm := sim.VMs[0]
	ctl, agent, fake := startVDDKFleet(b, dir, sim, password)
	data, err := fakevddk.DataRanges(vm.Disks[0].FlatPath)
	if err != nil {
		b.Fatal(err)
	}
	allocated := fakevddk.AllocatedBytes(data, 64<<10, vm.Disks[0].Capacity)
	harness.CleanupDomain(b, vm.Name)
	proxy := harness.StartLoopbackFaultProxy(b, sim.URL.Host)

	job := func(method string) (time.Duration, int64) {
		b.Helper()
		host := sim.URL.Host
		if method == "https" {
			host = proxy.Addr
		}
		readBefore := fake.ReadStats().BytesRead("")
		sentBefore := proxy.Sent()
		def := proto.JobDefinition{
			VMPath: vm.Path,
			Source: proto.Source{Type: "vsphere", VCenterURL: "https://" + host + "/sdk", Username: "admin", Password: password,
				Thumbprint: sim.Thumbprint},
			Destination: proto.Destination{Type: "kvm"},
			Options:     proto.Options{ConversionMethod: method},
		}
		t0 := time.Now()
		id := harness.Submit(b, ctl, def)
		j := harness.WaitJob(b, ctl, id, 5*time.Minute, "terminal", func(j proto.Job) bool { return j.Status.Terminal() })
		wall := time.Since(t0)
		if j.Status != proto.StatusCompleted {
			b.Fatalf("%s job %s: %s", method, j.Status, derefErr(j.Error))
		}
		if _, err := harness.Virsh("undefine", "--nvram", vm.Name); err != nil {
			b.Fatal(err)
		}
		_ = os.RemoveAll(filepath.Join(agent.StorageDir, id))
		if method == "https" {
			return wall, proxy.Sent() - sentBefore
		}
		return wall, fake.ReadStats().BytesRead("") - readBefore
	}

	for i := 0; i < b.N; i++ {
		var tV, tH []time.Duration
		var readV, readH int64
		for round := 0; round < 3; round++ {
			d, n := job("vddk")
			tV, readV = append(tV, d), n
			d, n = job("https")
			tH, readH = append(tH, d), n
		}
		med := func(d []time.Duration) float64 {
			sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
			return d[len(d)/2].Seconds()
		}
		v, h := med(tV), med(tH)
		b.ReportMetric(v, "vddk-fake-s")
		b.ReportMetric(h, "https-s")
		b.ReportMetric(h/v, "https/vddk")
		b.ReportMetric(float64(allocated)/(1<<20), "allocated-MiB")
		b.ReportMetric(float64(readV)/(1<<20), "vddk-read-MiB")
		b.ReportMetric(float64(readH)/(1<<20), "https-server-sent-MiB")
		b.Logf("rounds: vddk (fake) %v, https %v; read: vddk %d, https %d, allocated %d bytes", tV, tH, readV, readH, allocated)
	}
}

// startVDDKFleet starts a controller (60 s leases) and one agent (one job at a time)
// whose VDDK is the fake, serving sim's disks.
func startVDDKFleet(b *testing.B, dir string, sim *vcsim.Sim, password string) (*harness.Controller, *harness.Agent, *fakevddk.Fake) {
	b.Helper()
	libdir := fakevddk.Build(b, fakevddk.Standard)
	cfg := fakevddk.ForSim(sim, "")
	cfg.Password = password
	fake := fakevddk.New(b, dir, cfg)
	ctlConf := filepath.Join(dir, "controller.yaml")
	if err := os.WriteFile(ctlConf, []byte("agents:\n  lease_ttl: 60s\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	ctl := harness.StartController(b, dir, "c1", nil, "--config", ctlConf, "--fast-raft")
	harness.WaitFor(b, 20*time.Second, "controller leads", func() bool {
		var cl harness.ClusterView
		return harness.GetJSON(ctl.URL()+"/cluster", &cl) == 200 && cl.Leader.ID == "c1"
	})
	agent := harness.StartAgentEnv(b, []string{fake.Env()}, dir, "bench-agent", []*harness.Controller{ctl},
		"--max-jobs", "1", "--log-level", cmp.Or(os.Getenv("HYPERSDK_BENCH_AGENT_LOG"), "warn"), "--vddk-libdir", libdir)
	return ctl, agent, fake
}
