package transfer

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// smallFS mounts a tmpfs of size bytes (root only; skipped otherwise) and unmounts it at
// cleanup.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill up (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func TestTransferDiskFull(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 16 << 20 // 8 MiB of data into a 3 MiB filesystem
	httpsSrv, _ := setupFlat(t, size)
	nfcSrv, _ := setupNFC(t, size, false)
	for _, tc := range []struct {
		method, format string
	}{
		{MethodHTTPS, FormatQcow2},
		{MethodHTTPS, FormatRaw},
		{MethodNFC, FormatQcow2},
		{MethodNFC, FormatRaw},
	} {
		t.Run(tc.method+" "+tc.format, func(t *testing.T) {
			t.Parallel()
			full := smallFS(t, "3m")
			tmp := t.TempDir()
			out := filepath.Join(full, "out.img")
			tr := testTransferer(t, tmp)
			var err error
			ctx := withTimeout(t, time.Minute)
			if tc.method == MethodHTTPS {
				_, err = tr.HTTPS(ctx, HTTPSSource{DescriptorURL: httpsSrv.url("disk1.vmdk"), Header: cookieHeader(), Trust: Trust{Insecure: true}},
					Output{Path: out, Format: tc.format})
			} else {
				_, err = tr.NFC(ctx, NFCSource{URL: nfcSrv.URL + "/nfc/disk.vmdk", Header: cookieHeader(), Trust: Trust{Insecure: true}},
					Output{Path: out, Format: tc.format})
			}
			if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), out) {
				t.Fatalf("err = %v, want ErrNoSpace naming %s", err, out)
			}
			t.Logf("error: %v", err)
			if _, serr := os.Stat(out); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("partial output left on the full filesystem (stat: %v)", serr)
			}
			waitNoProcesses(t, tmp)
		})
	}
}
