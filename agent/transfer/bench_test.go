package transfer

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Benchmarks compare, in one run on the same machine, the transfers with the floors an
// operator would measure by hand (ENVIRONMENT.md): curl of the flat extent to /dev/null (the
// single-stream network floor) and curl download then qemu-img convert (the two-step way).
// The disk is 256 MiB (HYPERSDK_BENCH_SIZE_MB overrides), half random, half hole. Run:
//
//	go test ./agent/transfer -run '^$' -bench . -benchtime 3x
var benchSize = func() int64 {
	if mb, err := strconv.Atoi(os.Getenv("HYPERSDK_BENCH_SIZE_MB")); err == nil && mb > 0 {
		return int64(mb) << 20
	}
	return 256 << 20
}()

func BenchmarkHTTPSTransfer(b *testing.B) {
	requireTools(b, "qemu-img", "nbdkit", "curl")
	srv, _ := setupFlat(b, benchSize)
	tmp := b.TempDir()
	hdr := filepath.Join(tmp, "cookie.hdr") // curl -H @file: the cookie stays off argv
	if err := os.WriteFile(hdr, []byte("Cookie: "+testCookie+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	extent := srv.url("disk1-flat.vmdk")
	thumb := sha1.Sum(srv.Certificate().Raw)
	tr := New(Config{Logger: discardLogger(), TempDir: tmp})
	run := func(b *testing.B, name string, f func(out string) error) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(benchSize)
			out := filepath.Join(tmp, "out")
			for b.Loop() {
				if err := f(out); err != nil {
					b.Fatal(err)
				}
				os.Remove(out)
			}
		})
	}
	run(b, "curl-devnull", func(string) error {
		return exec.Command("curl", "-sfk", "-H", "@"+hdr, "-o", "/dev/null", extent).Run()
	})
	run(b, "curl-then-convert-qcow2", func(out string) error {
		dl := out + ".raw"
		defer os.Remove(dl)
		if err := exec.Command("curl", "-sfk", "-H", "@"+hdr, "-o", dl, extent).Run(); err != nil {
			return err
		}
		return exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", dl, out).Run()
	})
	for _, tc := range []struct {
		name   string
		format string
		trust  Trust
	}{
		{"https-qcow2", FormatQcow2, Trust{Insecure: true}},
		{"https-raw", FormatRaw, Trust{Insecure: true}},
		{"https-qcow2-thumbprint-proxy", FormatQcow2, Trust{Thumbprint: hex.EncodeToString(thumb[:])}},
	} {
		run(b, tc.name, func(out string) error {
			_, err := tr.HTTPS(context.Background(), HTTPSSource{DescriptorURL: srv.url("disk1.vmdk"), Header: cookieHeader(), Trust: tc.trust},
				Output{Path: out, Format: tc.format})
			return err
		})
	}
}

func BenchmarkNFCTransfer(b *testing.B) {
	requireTools(b, "qemu-img", "qemu-nbd", "curl")
	srv, _ := setupNFC(b, benchSize, false)
	tmp := b.TempDir()
	hdr := filepath.Join(tmp, "cookie.hdr")
	if err := os.WriteFile(hdr, []byte("Cookie: "+testCookie+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	tr := New(Config{Logger: discardLogger(), TempDir: tmp})
	b.Run("curl-stream-devnull", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			if err := exec.Command("curl", "-sfk", "-H", "@"+hdr, "-o", "/dev/null", srv.URL+"/nfc/disk.vmdk").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, format := range []string{FormatQcow2, FormatRaw} {
		b.Run("nfc-"+format, func(b *testing.B) {
			b.SetBytes(benchSize)
			out := filepath.Join(tmp, "out")
			for b.Loop() {
				if _, err := tr.NFC(context.Background(), NFCSource{URL: srv.URL + "/nfc/disk.vmdk", Header: cookieHeader(), Trust: Trust{Insecure: true}},
					Output{Path: out, Format: format}); err != nil {
					b.Fatal(err)
				}
				os.Remove(out)
			}
		})
	}
}

// BenchmarkHTTPSRatio interleaves, in every iteration, curl to /dev/null, curl download then
// qemu-img convert, and the https transfer (qcow2), and reports the transfer's time as a
// ratio of each: on a shared, noisy machine ratios of interleaved runs are what can be
// compared (targets: ≤ 1.3 × the download, ≤ 0.8 × download-then-convert).
func BenchmarkHTTPSRatio(b *testing.B) {
	requireTools(b, "qemu-img", "nbdkit", "curl")
	srv, _ := setupFlat(b, benchSize)
	tmp := b.TempDir()
	hdr := filepath.Join(tmp, "cookie.hdr")
	if err := os.WriteFile(hdr, []byte("Cookie: "+testCookie+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	extent := srv.url("disk1-flat.vmdk")
	tr := New(Config{Logger: discardLogger(), TempDir: tmp})
	out := filepath.Join(tmp, "out")
	var curl, twoStep, job time.Duration
	timed := func(acc *time.Duration, f func() error) {
		start := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		*acc += time.Since(start)
		os.Remove(out)
		os.Remove(out + ".raw")
	}
	b.SetBytes(benchSize)
	for b.Loop() {
		timed(&curl, func() error {
			return exec.Command("curl", "-sfk", "-H", "@"+hdr, "-o", "/dev/null", extent).Run()
		})
		timed(&twoStep, func() error {
			if err := exec.Command("curl", "-sfk", "-H", "@"+hdr, "-o", out+".raw", extent).Run(); err != nil {
				return err
			}
			return exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", out+".raw", out).Run()
		})
		timed(&job, func() error {
			_, err := tr.HTTPS(context.Background(), HTTPSSource{DescriptorURL: srv.url("disk1.vmdk"), Header: cookieHeader(), Trust: Trust{Insecure: true}},
				Output{Path: out})
			return err
		})
	}
	b.ReportMetric(job.Seconds()/curl.Seconds(), "x_curl")
	b.ReportMetric(job.Seconds()/twoStep.Seconds(), "x_download+convert")
	b.ReportMetric(float64(benchSize)*float64(b.N)/job.Seconds()/1e6, "job_MB/s")
}
