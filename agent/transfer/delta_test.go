package transfer

import (
	"slices"
	"testing"
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
		{4, 656, 8},   // twice the default for a delta of many reads
		{2, 656, 4},   // twice what is configured
		{6, 656, 8},   // bounded
		{12, 656, 12}, // more configured: kept
		{4, 3, 3},     // never more than the reads
		{4, 0, 1},
	} {
		if got := deltaConnections(tc.configured, tc.pieces); got != tc.want {
			t.Errorf("deltaConnections(%d, %d) = %d, want %d", tc.configured, tc.pieces, got, tc.want)
		}
	}
}
