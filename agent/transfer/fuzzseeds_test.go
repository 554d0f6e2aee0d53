package transfer

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestWriteFuzzSeeds regenerates the committed seed corpus under testdata/fuzz when run with
// -update-sample; otherwise it checks the corpus is there (so `go test` always replays it).
func TestWriteFuzzSeeds(t *testing.T) {
	seeds := map[string]map[string][]byte{
		"FuzzStreamOptimizedReader": {
			"esxi-layout-4k-grains": encodeStreamOptimized(t, sampleRaw()[:32<<10], 8),
			"esxi-layout-all-zero":  encodeStreamOptimized(t, make([]byte, 16<<10), 8),
			"esxi-layout-truncated": encodeStreamOptimized(t, sampleRaw()[:16<<10], 8)[:3000],
		},
		"FuzzParseDescriptor": {
			"vmfs":       []byte(descriptorText("disk1-flat.vmdk", 20971520)),
			"split-flat": []byte("# Disk DescriptorFile\r\nversion=1\r\ncreateType=\"twoGbMaxExtentFlat\"\r\nRW 4192256 FLAT \"a-f001.vmdk\" 0\r\nRW 2048 FLAT \"a f002.vmdk\" 16\r\n"),
			"delta":      []byte("version=1\nparentCID=1a2b3c4d\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"vmfsSparse\"\nRW 100 VMFSSPARSE \"x-delta.vmdk\"\n"),
			"zero-nul":   []byte("RW 128 SPARSE \"s.vmdk\"\nRDONLY 64 ZERO\n\x00\x00\x00"),
		},
	}
	for target, files := range seeds {
		dir := filepath.Join("testdata", "fuzz", target)
		for name, b := range files {
			p := filepath.Join(dir, name)
			if !*updateSample {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("seed %s missing (regenerate with go test -run TestWriteFuzzSeeds -update-sample): %v", p, err)
				}
				continue
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(b)))
			if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
