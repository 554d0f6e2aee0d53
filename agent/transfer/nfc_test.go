package transfer

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// setupNFC serves, under /nfc/disk.vmdk, a stream-optimized VMDK of a flat disk of size
// bytes (half random, half hole). vmware selects the ESXi layout (metadata markers, footer,
// EOS) made by the test encoder instead of qemu-img's.
func setupNFC(t testing.TB, size int64, vmware bool) (*diskServer, string) {
	t.Helper()
	dir := t.TempDir()
	flat := filepath.Join(dir, "disk-flat.raw")
	makeFlatDisk(t, flat, size, 0.5)
	vmdk := filepath.Join(dir, "disk.vmdk")
	if vmware {
		disk, err := os.ReadFile(flat)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vmdk, encodeStreamOptimized(t, disk, 128), 0o644); err != nil {
			t.Fatal(err)
		}
	} else if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", flat, vmdk).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return newDiskServer(t, dir), flat
}

func TestNFCTransfer(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 32 << 20
	qemuSrv, qemuFlat := setupNFC(t, size, false)
	vmwSrv, vmwFlat := setupNFC(t, size, true)
	tests := []struct {
		name   string
		srv    *diskServer
		flat   string
		format string
	}{
		{"qemu-img stream to qcow2", qemuSrv, qemuFlat, FormatQcow2},
		{"qemu-img stream to raw", qemuSrv, qemuFlat, FormatRaw},
		{"ESXi layout to qcow2", vmwSrv, vmwFlat, FormatQcow2},
		{"ESXi layout to raw", vmwSrv, vmwFlat, FormatRaw},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			out := filepath.Join(tmp, "out.img")
			var pl progressLog
			res, err := testTransferer(t, tmp).NFC(withTimeout(t, time.Minute), NFCSource{
				URL: tc.srv.URL + "/nfc/disk.vmdk", Header: cookieHeader(), Trust: Trust{Insecure: true},
			}, Output{Path: out, Format: tc.format, Progress: pl.fn})
			if err != nil {
				t.Fatal(err)
			}
			if got := imageFormat(t, out); got != tc.format {
				t.Fatalf("format %s, want %s", got, tc.format)
			}
			imagesIdentical(t, tc.flat, out, tc.format)
			if res.VirtualSize != size || res.AllocatedBytes > size*3/4 {
				t.Errorf("virtual %d, allocated %d: want %d, sparse", res.VirtualSize, res.AllocatedBytes, size)
			}
			pl.check(t, size)
			waitNoProcesses(t, tmp)
		})
	}
}

func TestNFCTransferProgressPacing(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 16 << 20
	srv, flat := setupNFC(t, size, false)
	srv.bytesPerSec = 3 << 20 // ~8 MiB of stream: about 3 s, several progress updates
	tmp := t.TempDir()
	out := filepath.Join(tmp, "out.qcow2")
	var pl progressLog
	if _, err := testTransferer(t, tmp).NFC(withTimeout(t, time.Minute), NFCSource{
		URL: srv.URL + "/nfc/disk.vmdk", Header: cookieHeader(), Trust: Trust{Insecure: true},
	}, Output{Path: out, Progress: pl.fn, Label: "disk1"}); err != nil {
		t.Fatal(err)
	}
	imagesIdentical(t, flat, out, FormatQcow2)
	pl.check(t, size)
	ups, _ := pl.snapshot()
	if len(ups) < 3 {
		t.Fatalf("only %d updates over a multi-second transfer", len(ups))
	}
	mid := ups[len(ups)/2]
	if mid.BytesPerSecond <= 0 || mid.ETASeconds <= 0 || mid.Message != "disk1" {
		t.Errorf("mid-transfer update lacks rate/eta/label: %+v", mid)
	}
}

func TestNFCTransferFailures(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 8 << 20
	tests := []struct {
		name    string
		path    string
		prepare func(dir string)
		drop    int64
		want    error
		wantMsg string
	}{
		{
			name: "connection drops mid-stream", path: "/nfc/disk.vmdk", drop: 1 << 20,
			want: ErrSource, wantMsg: "broke after",
		},
		{
			name: "stream ends inside a grain",
			path: "/nfc/disk.vmdk",
			prepare: func(dir string) {
				p := filepath.Join(dir, "disk.vmdk")
				st, _ := os.Stat(p)
				_ = os.Truncate(p, st.Size()/3+5)
			},
			want: ErrBadStream, wantMsg: "truncated",
		},
		{
			name:    "not a stream-optimized vmdk",
			path:    "/nfc/disk-flat.raw",
			want:    ErrBadStream,
			wantMsg: "KDMV",
		},
		{
			name: "no such device URL", path: "/nfc/missing.vmdk",
			want: ErrSource, wantMsg: "404",
		},
	}
	for _, tc := range tests {
		for _, format := range []string{FormatQcow2, FormatRaw} {
			t.Run(tc.name+" "+format, func(t *testing.T) {
				t.Parallel()
				srv, _ := setupNFC(t, size, false)
				if tc.prepare != nil {
					tc.prepare(srv.dir)
				}
				if tc.drop > 0 {
					srv.nfcDropAfter = tc.drop
				}
				tmp := t.TempDir()
				out := filepath.Join(tmp, "out.img")
				_, err := testTransferer(t, tmp).NFC(withTimeout(t, time.Minute), NFCSource{
					URL: srv.URL + tc.path, Header: cookieHeader(), Trust: Trust{Insecure: true},
				}, Output{Path: out, Format: format})
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.wantMsg)
				}
				if _, serr := os.Stat(out); !errors.Is(serr, os.ErrNotExist) {
					t.Errorf("output left behind (stat: %v)", serr)
				}
				waitNoProcesses(t, tmp)
			})
		}
	}
}

func TestNFCTransferCancel(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 32 << 20
	srv, _ := setupNFC(t, size, false)
	srv.bytesPerSec = 2 << 20
	tmp := t.TempDir()
	out := filepath.Join(tmp, "out.qcow2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := testTransferer(t, tmp).NFC(ctx, NFCSource{
			URL: srv.URL + "/nfc/disk.vmdk", Header: cookieHeader(), Trust: Trust{Insecure: true},
		}, Output{Path: out})
		errc <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for srv.served.Load() < 1<<20 || len(childrenMentioning(tmp)) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("transfer never got going (served %d)", srv.served.Load())
		}
		time.Sleep(10 * time.Millisecond) // poll interval, bounded by the deadline
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("transfer did not return after cancel")
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial output left (stat: %v)", err)
	}
	waitNoProcesses(t, tmp)
}
