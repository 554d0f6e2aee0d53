package vsphere_test

import (
	"errors"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// TestExportBusyHost: an ESXi host that refuses exports with "Failed to allocate" (its NFC
// service busy) is asked again; one that stays busy is ErrHostBusy, which the agent retries.
func TestExportBusyHost(t *testing.T) {
	t.Parallel()
	requireQemuImg(t)
	s := startSim(t, vcsim.Config{})
	fast := func(c *vsphere.Config) { c.BusyRetryDelay = 10 * time.Millisecond }
	c := connect(t, s, fast)

	// Busy twice, then free: the export opens.
	if err := s.SetExportBusy("vm-1", 2); err != nil {
		t.Fatal(err)
	}
	e, err := c.ExportVM(testCtx(t), findVM(t, c, "DC0/vm/vm-1"))
	if err != nil {
		t.Fatalf("export after a busy host freed up: %v", err)
	}
	if err := e.Abort(testCtx(t), nil); err != nil {
		t.Fatal(err)
	}

	// Busy beyond the retries: ErrHostBusy, not any other sentinel.
	if err := s.SetExportBusy("vm-1", 100); err != nil {
		t.Fatal(err)
	}
	_, err = c.ExportVM(testCtx(t), findVM(t, c, "DC0/vm/vm-1"))
	if !errors.Is(err, vsphere.ErrHostBusy) || errors.Is(err, vsphere.ErrVMNotFound) {
		t.Fatalf("export of a host busy for good: %v", err)
	}
}
