package transfer

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/test/fakevddk"
)

func TestCoalesceAreas(t *testing.T) {
	const (
		K     = int64(1 << 10)
		M     = int64(1 << 20)
		piece = 2 * M
		gap   = coalesceGap
		disk  = 16 * M
	)
	r := func(off, n int64) DiskRange { return DiskRange{off, n} }
	for _, tc := range []struct {
		name  string
		in    []DiskRange
		want  []DiskRange
		reads int64 // pieces the copier reads of want
	}{
		{"none", nil, nil, 0},
		{"one", []DiskRange{r(64*K, 64*K)}, []DiskRange{r(64*K, 64*K)}, 1},
		{"adjacent", []DiskRange{r(0, 64*K), r(64*K, 64*K)}, []DiskRange{r(0, 128*K)}, 1},
		{"small gaps in one piece", []DiskRange{r(0, 64*K), r(192*K, 64*K), r(512*K, 64*K)},
			[]DiskRange{r(0, 576*K)}, 1},
		{"gap exactly the limit", []DiskRange{r(0, 64*K), r(64*K+gap, 64*K)}, []DiskRange{r(0, 128*K+gap)}, 1},
		{"gap over the limit", []DiskRange{r(0, 64*K), r(64*K+gap+512, 64*K)},
			[]DiskRange{r(0, 64*K), r(64*K+gap+512, 64*K)}, 2},
		// A merge across a piece boundary would not save a read: kept apart.
		{"near but across the 2 MiB cap", []DiskRange{r(piece-128*K, 64*K), r(piece+64*K, 64*K)},
			[]DiskRange{r(piece-128*K, 64*K), r(piece+64*K, 64*K)}, 2},
		// Overlapping and adjacent areas merge whatever the pieces; the copier splits them.
		{"overlapping across the cap", []DiskRange{r(piece-128*K, 256*K), r(piece, 512*K)},
			[]DiskRange{r(piece-128*K, 640*K)}, 2},
		{"adjacent across the cap", []DiskRange{r(piece-64*K, 64*K), r(piece, 64*K)},
			[]DiskRange{r(piece-64*K, 128*K)}, 2},
		// A long area's last piece takes the next area in.
		{"long area then a near one", []DiskRange{r(M, 4*M), r(5*M+256*K, 64*K)},
			[]DiskRange{r(M, 4*M+320*K)}, 3},
		{"contained", []DiskRange{r(0, M), r(128*K, 64*K)}, []DiskRange{r(0, M)}, 1},
		{"unsorted", []DiskRange{r(256*K, 64*K), r(0, 64*K)}, []DiskRange{r(0, 320*K)}, 1},
		{"at the disk's end", []DiskRange{r(disk-256*K, 64*K), r(disk-64*K, 64*K)}, []DiskRange{r(disk-256*K, 256*K)}, 1},
		{"last sector", []DiskRange{r(disk-128*K, 512), r(disk-512, 512)}, []DiskRange{r(disk-128*K, 128*K)}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			got := coalesceAreas(tc.in, gap, piece)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("coalesceAreas(%v) = %v, want %v", tc.in, got, tc.want)
			}
			if !slices.Equal(in, tc.in) {
				t.Errorf("the input was modified: %v, was %v", tc.in, in)
			}
			if n := pieceCount(got, piece); n != tc.reads {
				t.Errorf("%d reads, want %d", n, tc.reads)
			}
			if n, before := pieceCount(got, piece), pieceCount(sortedDisjoint(tc.in), piece); n > before {
				t.Errorf("%d reads after coalescing, %d before", n, before)
			}
			// Every changed byte is still copied, and nothing past the last area.
			for _, a := range tc.in {
				if !covered(got, a) {
					t.Errorf("area %v not covered by %v", a, got)
				}
			}
			for i, g := range got {
				if g.Offset+g.Length > disk {
					t.Errorf("%v ends past the disk", g)
				}
				if i > 0 && got[i-1].Offset+got[i-1].Length >= g.Offset {
					t.Errorf("%v and %v not disjoint and apart", got[i-1], g)
				}
			}
		})
	}
}

// sortedDisjoint is areas sorted with overlaps merged (what vSphere answers).
func sortedDisjoint(areas []DiskRange) []DiskRange {
	return coalesceAreas(areas, -1, 1<<62)
}

func covered(rs []DiskRange, a DiskRange) bool {
	for _, r := range rs {
		if r.Offset <= a.Offset && a.Offset+a.Length <= r.Offset+r.Length {
			return true
		}
	}
	return false
}

func TestDeltaConnections(t *testing.T) {
	for _, tc := range []struct {
		configured int
		pieces     int64
		want       int
	}{
		{4, 656, 4}, // as configured
		{12, 656, 12},
		{4, 3, 3}, // never more than the reads
		{4, 0, 1},
	} {
		if got := deltaConnections(tc.configured, tc.pieces); got != tc.want {
			t.Errorf("deltaConnections(%d, %d) = %d, want %d", tc.configured, tc.pieces, got, tc.want)
		}
	}
}

// TestVDDKDelta: a first copy, then changes on the disk (data, data overwritten with
// zeros, near areas that coalesce, a long area, the disk's last sector) copied as a delta
// into the same image: byte-identical, every read within the reader's limit, fewer reads
// than areas, progress in the areas' bytes.
func TestVDDKDelta(t *testing.T) {
	const size = 64 << 20
	for _, format := range []string{FormatQcow2, FormatRaw} {
		t.Run(format, func(t *testing.T) {
			f := newVDDKFixture(t, fakevddk.Standard, size, 0.5)
			out := filepath.Join(f.dir, "out."+format)
			if _, err := f.xfer.VDDK(context.Background(), f.source(), Output{Path: out, Format: format}); err != nil {
				t.Fatal(err)
			}
			const K = 1 << 10
			areas := []DiskRange{
				{1 << 20, 64 * K}, {1<<20 + 192*K, 64 * K}, {1<<20 + 448*K, 128 * K}, // near: one read
				{8 << 20, 64 * K},            // data overwritten with zeros
				{20<<20 + 512, 5<<20 + 1024}, // long, across pieces, sector-aligned only
				{40 << 20, 64 * K},           // in the hole
				{size - 512, 512},            // the last sector
			}
			disk, err := os.OpenFile(f.flat, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			rng := mrand.New(mrand.NewPCG(1, 2))
			for i, a := range areas {
				b := make([]byte, a.Length)
				if i != 3 {
					for j := range b {
						b[j] = byte(rng.Uint32())
					}
				}
				if _, err := disk.WriteAt(b, a.Offset); err != nil {
					t.Fatal(err)
				}
			}
			disk.Close()
			before := len(f.fake.ReadStats().Reads)
			var prog progressLog
			var total int64
			for _, a := range areas {
				total += a.Length
			}
			res, err := f.xfer.VDDKDelta(context.Background(), f.source(), Output{Path: out, Format: format, Progress: prog.fn}, areas)
			if err != nil {
				t.Fatal(err)
			}
			imagesIdentical(t, f.flat, out, format)
			prog.check(t, total)
			reads := f.fake.ReadStats().Reads[before:]
			for _, r := range reads {
				if r.Len > vddkMaxRead {
					t.Errorf("a read of %d bytes", r.Len)
				}
			}
			// 1 for the near three, 1, 3 for the long one (in 3 pieces of 2 MiB), 1, 1.
			if len(reads) != 7 {
				t.Errorf("%d reads for %d areas, want 7: %+v", len(reads), len(areas), reads)
			}
			if res.SourceBytes < total || res.SourceBytes > total+2*coalesceGap {
				t.Errorf("read %d bytes for %d changed", res.SourceBytes, total)
			}
			// The default (4): fewer reads would open fewer.
			if !strings.Contains(f.logs.String(), "delta=true capacity=67108864 transport=nbdssl connections=4") {
				t.Error("the delta did not open the configured connections")
			}
			f.checkClean(filepath.Join(f.dir, "none"))
		})
	}
}

// BenchmarkVDDKDelta: a delta of 656 scattered 64 KiB areas (41 MiB, the warm benchmark's
// cutover) through the fake, through 2, 4 (the default) and 8 connections side by side.
func BenchmarkVDDKDelta(b *testing.B) {
	const size = 1 << 30
	f := newVDDKFixture(b, fakevddk.Standard, size, 0.5)
	f.xfer = New(Config{Logger: discardLogger(), TempDir: f.dir, VDDKReader: f.xfer.cfg.VDDKReader})
	out := filepath.Join(f.dir, "out.qcow2")
	if _, err := f.xfer.VDDK(context.Background(), f.source(), Output{Path: out, Format: FormatQcow2}); err != nil {
		b.Fatal(err)
	}
	rng := mrand.New(mrand.NewPCG(3, 4))
	var areas []DiskRange
	for _, g := range rng.Perm(size / (64 << 10))[:656] {
		areas = append(areas, DiskRange{int64(g) * 64 << 10, 64 << 10})
	}
	b.SetBytes(656 * 64 << 10)
	for _, conns := range []int{2, 4, 8} {
		b.Run(fmt.Sprintf("connections=%d", conns), func(b *testing.B) {
			src := f.source()
			src.Connections = conns
			for b.Loop() {
				if _, err := f.xfer.VDDKDelta(context.Background(), src, Output{Path: out, Format: FormatQcow2}, areas); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestImagePool: images opened ahead (a warm cutover opens them while the guest shuts
// down) are what a delta writes through; a full copy to a path the pool holds closes the
// pooled writer first and makes a fresh image; Close closes the rest cleanly; nothing is
// left running.
func TestImagePool(t *testing.T) {
	const size = 16 << 20
	for _, format := range []string{FormatQcow2, FormatRaw} {
		t.Run(format, func(t *testing.T) {
			f := newVDDKFixture(t, fakevddk.Standard, size, 0.5)
			ctx := withTimeout(t, 2*time.Minute)
			a, b, c := filepath.Join(f.dir, "a."+format), filepath.Join(f.dir, "b."+format), filepath.Join(f.dir, "c."+format)
			for _, p := range []string{a, b, c} {
				if _, err := f.xfer.VDDK(ctx, f.source(), Output{Path: p, Format: format}); err != nil {
					t.Fatal(err)
				}
			}
			// The source changes: 1 MiB of new bytes at 2 MiB.
			change := make([]byte, 1<<20)
			rng := mrand.New(mrand.NewPCG(5, 6))
			for i := range change {
				change[i] = byte(rng.Uint32())
			}
			disk, err := os.OpenFile(f.flat, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := disk.WriteAt(change, 2<<20); err != nil {
				t.Fatal(err)
			}
			disk.Close()

			pool := f.xfer.OpenImages(ctx, []string{a, b, c, filepath.Join(f.dir, "missing."+format)}, format)
			if len(pool.open) != 3 {
				t.Fatalf("%d images open, want 3 (the missing one left out)", len(pool.open))
			}
			// a: the delta through the pooled writer.
			before := strings.Count(f.logs.String(), "image opened ahead of the copy")
			if _, err := f.xfer.VDDKDelta(ctx, f.source(), Output{Path: a, Format: format, Images: pool}, []DiskRange{{2 << 20, 1 << 20}}); err != nil {
				t.Fatal(err)
			}
			if strings.Count(f.logs.String(), "image opened ahead of the copy") != before+1 {
				t.Error("the delta did not write through the image opened ahead")
			}
			imagesIdentical(t, f.flat, a, format)
			// b: a full copy over it releases the pooled writer first.
			if _, err := f.xfer.VDDK(ctx, f.source(), Output{Path: b, Format: format, Images: pool}); err != nil {
				t.Fatal(err)
			}
			imagesIdentical(t, f.flat, b, format)
			if _, _, ok := pool.take(b, format); ok {
				t.Error("the pool still holds an image a full copy replaced")
			}
			// c: never written; Close leaves it as it was (the disk before the change).
			pool.Close()
			var nilPool *ImagePool
			nilPool.Close()
			if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", format, f.flat, c).CombinedOutput(); err == nil {
				t.Errorf("the untouched image equals the changed disk: %s", out)
			}
			if out, err := exec.Command("qemu-img", "check", "-f", format, c).CombinedOutput(); err != nil && format == FormatQcow2 {
				t.Errorf("the untouched image after Close: %v: %s", err, out)
			}
			waitNoProcesses(t, f.dir)
		})
	}
}
