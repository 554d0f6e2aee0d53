package transfer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseDescriptor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		in       string
		capacity int64
		flat     bool
		extents  []Extent
		adapter  string
		geometry Geometry
	}{
		{
			name: "vmfs (ESXi, vcsim)", in: descriptorText("disk1-flat.vmdk", 20971520),
			capacity: 20971520 * 512, flat: true, adapter: "lsilogic",
			extents:  []Extent{{Access: "RW", Sectors: 20971520, Type: "VMFS", File: "disk1-flat.vmdk"}},
			geometry: Geometry{Cylinders: 1305, Heads: 255, Sectors: 63},
		},
		{
			name:     "two gb split flat with offsets, CRLF, no final newline, tabs",
			in:       "# Disk DescriptorFile\r\nversion=1\r\ncreateType=\"twoGbMaxExtentFlat\"\r\nRW 4192256 FLAT \"a-f001.vmdk\" 0\r\nRW\t2048\tFLAT\t\"a f002.vmdk\"\t16\r\nddb.adapterType = \"pvscsi\"",
			capacity: (4192256 + 2048) * 512, flat: true, adapter: "pvscsi",
			extents: []Extent{
				{Access: "RW", Sectors: 4192256, Type: "FLAT", File: "a-f001.vmdk"},
				{Access: "RW", Sectors: 2048, Type: "FLAT", File: "a f002.vmdk", Offset: 16},
			},
		},
		{
			name: "delta disk", in: "version=1\nparentCID=1a2b3c4d\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"vmfsSparse\"\nRW 100 VMFSSPARSE \"x-delta.vmdk\"\n",
			capacity: 51200, flat: false,
			extents: []Extent{{Access: "RW", Sectors: 100, Type: "VMFSSPARSE", File: "x-delta.vmdk"}},
		},
		{
			name:     "embedded descriptor with NUL padding and a zero extent",
			in:       "# Disk DescriptorFile\nversion=1\ncreateType=\"streamOptimized\"\nRW 128 SPARSE \"s.vmdk\"\nRDONLY 64 ZERO\n" + strings.Repeat("\x00", 300),
			capacity: 192 * 512, flat: false,
			extents: []Extent{{Access: "RW", Sectors: 128, Type: "SPARSE", File: "s.vmdk"}, {Access: "RDONLY", Sectors: 64, Type: "ZERO"}},
		},
		{
			name: "garbled geometry is ignored", in: "RW 8 FLAT \"f\"\nddb.geometry.heads = \"lots\"\n",
			capacity: 4096, flat: true,
			extents: []Extent{{Access: "RW", Sectors: 8, Type: "FLAT", File: "f"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDescriptor([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if d.Capacity() != tc.capacity || d.IsFlat() != tc.flat || d.AdapterType != tc.adapter || d.Geometry != tc.geometry {
				t.Errorf("capacity %d flat %v adapter %q geometry %+v", d.Capacity(), d.IsFlat(), d.AdapterType, d.Geometry)
			}
			if len(d.Extents) != len(tc.extents) {
				t.Fatalf("extents = %+v", d.Extents)
			}
			for i := range d.Extents {
				if d.Extents[i] != tc.extents[i] {
					t.Errorf("extent %d = %+v, want %+v", i, d.Extents[i], tc.extents[i])
				}
			}
		})
	}
}

func TestParseDescriptorErrors(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]string{
		"empty":                "",
		"only comments":        "# Disk DescriptorFile\n# nothing\n",
		"no extents":           "version=1\ncreateType=\"vmfs\"\n",
		"binary sparse":        "KDMV\x01\x00\x00\x00",
		"binary in the middle": "version=1\n\x00garbage",
		"bad size":             "RW -5 FLAT \"f\"\n",
		"size overflow":        "RW 99999999999999999999 FLAT \"f\"\n",
		"unknown extent type":  "RW 8 WEIRD \"f\"\n",
		"unquoted name":        "RW 8 FLAT f\n",
		"unterminated name":    "RW 8 FLAT \"f\n",
		"bad offset":           "RW 8 FLAT \"f\" x\n",
		"junk after offset":    "RW 8 FLAT \"f\" 0 1\n",
		"not key value":        "RW 8 FLAT \"f\"\nhello world\n",
		"too many sectors":     strings.Repeat("RW 140737488355328 FLAT \"f\"\n", 2),
		"too large":            strings.Repeat("#", MaxDescriptorSize+1),
	} {
		t.Run(name, func(t *testing.T) {
			if d, err := ParseDescriptor([]byte(in)); !errors.Is(err, ErrBadDescriptor) {
				t.Fatalf("got %+v, %v; want ErrBadDescriptor", d, err)
			}
		})
	}
}

func TestExtentURL(t *testing.T) {
	t.Parallel()
	base := "https://vc.example/folder/vm%201/vm%201.vmdk?dcPath=DC0&dsName=ds%201"
	for _, tc := range []struct{ file, want string }{
		{"vm 1-flat.vmdk", "https://vc.example/folder/vm%201/vm%201-flat.vmdk?dcPath=DC0&dsName=ds%201"},
		{"sub/x#1.vmdk", "https://vc.example/folder/vm%201/sub/x%231.vmdk?dcPath=DC0&dsName=ds%201"},
	} {
		got, err := ExtentURL(base, tc.file)
		if err != nil || got != tc.want {
			t.Errorf("ExtentURL(%q) = %q, %v; want %q", tc.file, got, err, tc.want)
		}
	}
	for _, bad := range []string{"../other/x.vmdk", "/vmfs/volumes/ds/x.vmdk", "a/../../b", "", "a\\b"} {
		if _, err := ExtentURL(base, bad); !errors.Is(err, ErrUnsupportedDisk) {
			t.Errorf("ExtentURL(%q) err = %v, want ErrUnsupportedDisk", bad, err)
		}
	}
}

func FuzzParseDescriptor(f *testing.F) {
	f.Add([]byte(descriptorText("disk1-flat.vmdk", 2048)))
	f.Add([]byte("RW 8 FLAT \"a b\" 4\r\nRDONLY 2 ZERO\n"))
	seeds, _ := filepath.Glob("testdata/*.vmdk")
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil && len(b) < MaxDescriptorSize {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDescriptor(b)
		if err != nil {
			if !errors.Is(err, ErrBadDescriptor) {
				t.Fatalf("error without ErrBadDescriptor: %v", err)
			}
			return
		}
		if len(d.Extents) == 0 {
			t.Fatal("accepted a descriptor without extents")
		}
		var sum int64
		for _, e := range d.Extents {
			if e.Sectors < 0 || e.Offset < 0 || (e.Type != ExtentZero && e.File == "") {
				t.Fatalf("bad extent accepted: %+v", e)
			}
			sum += e.Sectors
		}
		if d.Capacity() != sum*SectorSize || d.Capacity() < 0 {
			t.Fatalf("capacity %d for %d sectors", d.Capacity(), sum)
		}
		// Whatever an extent says, its URL stays in the descriptor's folder or is refused.
		for _, e := range d.Extents {
			if u, err := ExtentURL("https://h/folder/vm/d.vmdk?dsName=x", e.File); err == nil && !strings.HasPrefix(u, "https://h/folder/vm/") {
				t.Fatalf("extent %q escapes the folder: %s", e.File, u)
			}
		}
	})
}
