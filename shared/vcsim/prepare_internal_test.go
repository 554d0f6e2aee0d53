package vcsim

import (
	"context"
	"io"
	"log/slog"
	"os/exec"
	"testing"
	"time"
)

// TestPrepareExports: with PrepareExports the stream cache fills in the background after
// Start, so a later ExportVm finds every disk converted.
func TestPrepareExports(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed: run scripts/host-setup.sh")
	}
	s, err := Start(context.Background(), Config{VMs: 2, DisksPerVM: 2, DiskSize: 1 << 20, PrepareExports: true,
		Fill: Fill{Mode: FillRandom, Fraction: 1}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)

	converted := func() int {
		n := 0
		for _, vm := range s.VMs {
			for _, d := range vm.Disks {
				e := s.streams.entry(d.FlatPath)
				e.mu.Lock()
				if e.valid {
					n++
				}
				e.mu.Unlock()
			}
		}
		return n
	}
	deadline := time.Now().Add(20 * time.Second)
	for converted() < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 4 disks converted after 20 s", converted())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
