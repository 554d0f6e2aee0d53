package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// benchLinkRate is the link regime's rate per connection in bytes per second, from
// HYPERSDK_BENCH_LINK_MBPS in MB/s (10^6 bytes; default 100, 0 leaves the regime out).
func benchLinkRate(b *testing.B) int64 {
	v := os.Getenv("HYPERSDK_BENCH_LINK_MBPS")
	if v == "" {
		return 100e6
	}
	mbps, err := strconv.ParseFloat(v, 64)
	if err != nil || mbps < 0 {
		b.Fatalf("HYPERSDK_BENCH_LINK_MBPS=%q: want MB/s per connection, 0 to leave the link regime out", v)
	}
	return int64(mbps * 1e6)
}

// benchLink is BenchmarkMigration1GiB's second regime: the ratios through an
// ESXi-like link (harness.StartLink) on which each TCP connection to the source carries at
// most bps, as a real host's NFC and datastore HTTP streams do, while over loopback one
// stream is bounded by the CPU. Everything that reads the source goes through the link,
// both sides of each ratio: the job's vCenter URL is the link's address, the agent builds
// the datastore /folder URLs from it (https) and the export lease's "*" host becomes it
// (nfc); curl reads the same URLs through it. Three rounds of curl, the https job, curl of
// the lease URL and the nfc job, medians reported (and download-then-convert by hand); then
// one VM against three at once, twice. At 100 MB/s this adds about two minutes (2 cores,
// 2026-11-30): 3 × (10.8 s curl + 12 s download+convert + 3.2 s https job + 5.4 s curl-nfc +
// 5.6 s nfc job) + 2 × (3.2 s one VM + 5.8 s three). The
// stream-optimized VMDK the nfc steps read was converted by the loopback regime's first
// export, as the simulator caches it: no step here pays for it.
//
// Each step's bytes through the link are checked against curl's of the same bytes: a job
// that carried less has read part of the disk around the link, and its time would mean
// nothing.
func benchLink(b *testing.B, jb *jobBench, bps int64) {
	sim := jb.sim
	vm := sim.VMs[0]
	link := harness.StartLink(b, sim.URL.Host, bps)
	u := *sim.URL
	u.Host = link.Addr
	lj := &jobBench{b: b, ctl: jb.ctl, agent: jb.agent, sim: sim, vcURL: u.String()}
	flatURL := fmt.Sprintf("https://%s/folder/%s/%s?dcPath=DC0&dsName=LocalDS_0", link.Addr, vm.Name, filepath.Base(vm.Disks[0].FlatPath))

	cores := map[string][]float64{} // per job: the agent's and this process's (simulator, link) CPU over wall time
	job := func(name string, opts proto.Options) time.Duration {
		r := lj.run(opts, 0)
		cores[name] = append(cores[name], r.cores())
		return r.wall
	}
	steps := map[string]func() time.Duration{
		"link-curl": func() time.Duration { return runTool(b, "curl", "-k", "-sS", "-f", "-o", "/dev/null", flatURL) },
		"link-job-https": func() time.Duration {
			return job("link-job-https", proto.Options{ConversionMethod: "https"})
		},
		// What people do by hand, through the same link: download, then convert.
		"link-download+convert": func() time.Duration {
			tmp := b.TempDir()
			raw, qcow := filepath.Join(tmp, "flat.raw"), filepath.Join(tmp, "by-hand.qcow2")
			defer os.Remove(raw)
			defer os.Remove(qcow)
			return runTool(b, "curl", "-k", "-sS", "-f", "-o", raw, flatURL) + runTool(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
		},
		"link-curl-nfc": func() time.Duration {
			return withExport(b, sim, lj.vcURL, vm.Path, func(url, cookie string) time.Duration {
				return runTool(b, "curl", "-k", "-sS", "-f", "-H", cookie, "-o", "/dev/null", url)
			})
		},
		"link-job-nfc": func() time.Duration { return job("link-job-nfc", proto.Options{ConversionMethod: "nfc"}) },
	}
	// Each job and the curl it is held against: the job must carry at least curl's bytes.
	floors := map[string]string{"link-job-https": "link-curl", "link-job-nfc": "link-curl-nfc"}
	order := []string{"link-curl", "link-download+convert", "link-job-https", "link-curl-nfc", "link-job-nfc"}
	times := map[string][]time.Duration{}
	sent := map[string]int64{} // bytes through the link, last round
	for range 3 {
		for _, name := range order {
			s0 := link.Sent()
			times[name] = append(times[name], steps[name]())
			sent[name] = link.Sent() - s0
			if f, ok := floors[name]; ok && float64(sent[name]) < 0.99*float64(sent[f]) {
				b.Fatalf("%s carried %d bytes through the link, %s %d: part of the source was read around the link", name, sent[name], f, sent[f])
			}
		}
	}
	sc := lj.scaling(len(sim.VMs))

	med := func(name string) float64 { return median(times[name]).Seconds() }
	for _, name := range order {
		b.ReportMetric(med(name), name+"-s")
	}
	b.ReportMetric(float64(bps)/1e6, "link-MB/s-per-connection")
	b.ReportMetric(med("link-job-https")/med("link-curl"), "link-https/curl")
	b.ReportMetric(med("link-job-https")/med("link-download+convert"), "link-https/download+convert")
	b.ReportMetric(med("link-job-nfc")/med("link-curl-nfc"), "link-nfc/curl-nfc")
	b.ReportMetric(medianF(cores["link-job-https"]), "link-cores-busy-https")
	b.ReportMetric(medianF(cores["link-job-nfc"]), "link-cores-busy-nfc")
	sc.report(b, "link-", len(sim.VMs))
	fmt.Printf("BenchmarkMigration1GiB link (%g MB/s per connection) rounds: %v\n", float64(bps)/1e6, times)
	fmt.Printf("BenchmarkMigration1GiB link bytes per step (last round): %v; cores busy per job: %v\n", sent, cores)
	sc.print("link ", len(sim.VMs))
}
