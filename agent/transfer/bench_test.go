package transfer

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"
)

// Benchmarks of the transfers alone (no controller, no agent process), against the tools an
// operator would use by hand, interleaved in every iteration so that the ratios of one run
// compare like with like on a noisy machine. The disk is 256 MiB (HYPERSDK_BENCH_SIZE_MB
// overrides), half random, half hole, served over TLS by a server in this process (so it
// shares the CPU with the code under test, as a simulator does). The whole pipeline, with a
// separate agent process, is measured by test/bench (make bench runs both). Every step runs
// three times per benchmark iteration and the medians are reported. Run:
//
//	go test ./agent/transfer -run '^$' -bench . -benchtime 1x
var benchSize = func() int64 {
	if mb, err := strconv.Atoi(os.Getenv("HYPERSDK_BENCH_SIZE_MB")); err == nil && mb > 0 {
		return int64(mb) << 20
	}
	return 256 << 20
}()

// rounds times named steps, each once per round, and reports their medians and ratios.
type rounds struct {
	b     *testing.B
	times map[string][]time.Duration
}

func (r *rounds) time(name string, f func() error) {
	r.b.Helper()
	start := time.Now()
	if err := f(); err != nil {
		r.b.Fatalf("%s: %v", name, err)
	}
	r.times[name] = append(r.times[name], time.Since(start))
}

func (r *rounds) median(name string) float64 {
	d := append([]time.Duration(nil), r.times[name]...)
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2].Seconds()
}

func (r *rounds) report(unit string, names ...string) {
	for _, n := range names {
		r.b.ReportMetric(r.median(n), n+"-s")
	}
	r.b.Logf("%s: %v", unit, r.times)
}

func cookieFile(b *testing.B, dir string) string {
	hdr := filepath.Join(dir, "cookie.hdr") // curl -H @file: the cookie stays off argv
	if err := os.WriteFile(hdr, []byte("Cookie: "+testCookie+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	return hdr
}

// BenchmarkHTTPSRatio: curl of the flat extent to /dev/null (the single-stream floor),
// `nbdkit curl` → `qemu-img convert -W -m 8` (the pipeline this package used before the
// copier), curl download then qemu-img convert (two steps), and the https method into qcow2
// (pinned thumbprint) and raw. Targets: https ≤ 1.0 × curl and ≤ 0.5 × download+convert.
func BenchmarkHTTPSRatio(b *testing.B) {
	requireTools(b, "qemu-img", "qemu-nbd", "nbdkit", "curl")
	srv, _ := setupFlat(b, benchSize)
	tmp := b.TempDir()
	hdr := cookieFile(b, tmp)
	extent := srv.url("disk1-flat.vmdk")
	thumb := sha1.Sum(srv.Certificate().Raw)
	tr := New(Config{Logger: discardLogger(), TempDir: tmp})
	out := filepath.Join(tmp, "out")
	r := &rounds{b: b, times: map[string][]time.Duration{}}
	copyTo := func(format string, trust Trust) func() error {
		return func() error {
			defer os.Remove(out)
			_, err := tr.HTTPS(context.Background(), HTTPSSource{DescriptorURL: srv.url("disk1.vmdk"), Header: cookieHeader(), Trust: trust},
				Output{Path: out, Format: format})
			return err
		}
	}
	b.SetBytes(benchSize)
	for b.Loop() {
		for range 3 {
			httpsRound(r, hdr, extent, out, copyTo, thumb[:])
		}
	}
	r.report("rounds", "curl", "nbdkit-qemu-img", "download+convert", "https-qcow2", "https-raw")
	q := r.median("https-qcow2")
	b.ReportMetric(q/r.median("curl"), "qcow2/curl")
	b.ReportMetric(r.median("https-raw")/r.median("curl"), "raw/curl")
	b.ReportMetric(q/r.median("download+convert"), "qcow2/download+convert")
	b.ReportMetric(q/r.median("nbdkit-qemu-img"), "qcow2/nbdkit")
}

func httpsRound(r *rounds, hdr, extent, out string, copyTo func(string, Trust) func() error, thumb []byte) {
	r.time("curl", func() error { return exec.Command("curl", "-sfk", "-H", "@"+hdr, "-o", "/dev/null", extent).Run() })
	r.time("nbdkit-qemu-img", func() error {
		defer os.Remove(out)
		return exec.Command("nbdkit", "-r", "-U", "-", "curl", "url="+extent, "sslverify=false", "cookie="+testCookie,
			"--run", "qemu-img convert -W -m 8 -f raw -O qcow2 $nbd "+out).Run()
	})
	r.time("download+convert", func() error {
		defer os.Remove(out + ".raw")
		defer os.Remove(out)
		if err := exec.Command("curl", "-sfk", "-H", "@"+hdr, "-o", out+".raw", extent).Run(); err != nil {
			return err
		}
		return exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", out+".raw", out).Run()
	})
	r.time("https-qcow2", copyTo(FormatQcow2, Trust{Thumbprint: hex.EncodeToString(thumb)}))
	r.time("https-raw", copyTo(FormatRaw, Trust{Insecure: true}))
}

// BenchmarkNFCRatio: curl of the stream-optimized VMDK to /dev/null (the floor: the stream
// has no ranges, one connection is all there is) and the nfc method into qcow2 and raw.
// Target: nfc ≤ 1.0 × curl.
func BenchmarkNFCRatio(b *testing.B) {
	requireTools(b, "qemu-img", "qemu-nbd", "curl")
	srv, _ := setupNFC(b, benchSize, false)
	tmp := b.TempDir()
	hdr := cookieFile(b, tmp)
	u := srv.URL + "/nfc/disk.vmdk"
	tr := New(Config{Logger: discardLogger(), TempDir: tmp})
	out := filepath.Join(tmp, "out")
	r := &rounds{b: b, times: map[string][]time.Duration{}}
	b.SetBytes(benchSize)
	for b.Loop() {
		for range 3 {
			r.time("curl", func() error { return exec.Command("curl", "-sfk", "-H", "@"+hdr, "-o", "/dev/null", u).Run() })
			for _, format := range []string{FormatQcow2, FormatRaw} {
				r.time("nfc-"+format, func() error {
					defer os.Remove(out)
					_, err := tr.NFC(context.Background(), NFCSource{URL: u, Header: cookieHeader(), Trust: Trust{Insecure: true}},
						Output{Path: out, Format: format})
					return err
				})
			}
		}
	}
	r.report("rounds", "curl", "nfc-qcow2", "nfc-raw")
	b.ReportMetric(r.median("nfc-qcow2")/r.median("curl"), "qcow2/curl")
	b.ReportMetric(r.median("nfc-raw")/r.median("curl"), "raw/curl")
}
