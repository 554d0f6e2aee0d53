package transfer

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHTTPSTransfer(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 32 << 20
	srv, flat := setupFlat(t, size)
	thumb := sha1.Sum(srv.Certificate().Raw)

	tests := []struct {
		name   string
		format string
		trust  Trust
	}{
		{"qcow2 insecure", FormatQcow2, Trust{Insecure: true}},
		{"raw insecure", FormatRaw, Trust{Insecure: true}},
		{"qcow2 CA file", FormatQcow2, Trust{CAFile: caFile(t, srv.Server)}},
		{"qcow2 thumbprint via proxy", FormatQcow2, Trust{Thumbprint: strings.ToUpper(hex.EncodeToString(thumb[:]))}},
		{"default format is qcow2", "", Trust{Insecure: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			out := filepath.Join(tmp, "out.img")
			var pl progressLog
			res, err := testTransferer(t, tmp).HTTPS(withTimeout(t, time.Minute), HTTPSSource{
				DescriptorURL: srv.url("disk1.vmdk"), Header: cookieHeader(), Trust: tc.trust,
			}, Output{Path: out, Format: tc.format, Progress: pl.fn})
			if err != nil {
				t.Fatal(err)
			}
			want := tc.format
			if want == "" {
				want = FormatQcow2
			}
			if got := imageFormat(t, out); got != want || res.Format != want {
				t.Fatalf("format = %s (result %s), want %s", got, res.Format, want)
			}
			imagesIdentical(t, flat, out, want)
			if res.VirtualSize != size || res.Descriptor.AdapterType != "lsilogic" {
				t.Errorf("result = %+v", res)
			}
			// Half the disk is a hole: a sparse image stays well below the virtual size.
			if res.AllocatedBytes > size*3/4 {
				t.Errorf("image allocates %d of %d bytes: not sparse", res.AllocatedBytes, size)
			}
			pl.check(t, size)
			// No secret or socket left in the private temp dir.
			if ents, _ := filepath.Glob(filepath.Join(tmp, "hsx-*")); len(ents) != 0 {
				t.Errorf("temp dirs left: %v", ents)
			}
		})
	}
}

func TestHTTPSTransferRetriesDroppedConnection(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 16 << 20
	srv, flat := setupFlat(t, size)
	srv.dropOnceAfter = size / 2
	tmp := t.TempDir()
	out := filepath.Join(tmp, "out.qcow2")
	if _, err := testTransferer(t, tmp).HTTPS(withTimeout(t, time.Minute), HTTPSSource{
		DescriptorURL: srv.url("disk1.vmdk"), Header: cookieHeader(), Trust: Trust{Insecure: true},
	}, Output{Path: out}); err != nil {
		t.Fatal(err)
	}
	if !srv.dropped {
		t.Fatal("the server never dropped a connection: the fault was not exercised")
	}
	imagesIdentical(t, flat, out, FormatQcow2)
}

func TestHTTPSTransferFailures(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 8 << 20

	tests := []struct {
		name    string
		setup   func(srv *diskServer, dir string)
		header  http.Header
		trust   Trust
		want    error
		wantMsg string
	}{
		{
			name:    "body always truncated: retries exhausted",
			setup:   func(srv *diskServer, _ string) { srv.truncateAlways = true },
			want:    ErrSource,
			wantMsg: "failed 2 times, giving up",
		},
		{
			name: "extent shorter than descriptor",
			setup: func(_ *diskServer, dir string) {
				if err := os.Truncate(filepath.Join(dir, "disk1-flat.vmdk"), size/2); err != nil {
					panic(err)
				}
			},
			want:    ErrSource,
			wantMsg: "descriptor needs",
		},
		{
			name:    "no session cookie",
			header:  http.Header{},
			want:    ErrSource,
			wantMsg: "session was rejected",
		},
		{
			name:    "untrusted certificate",
			trust:   Trust{},
			want:    ErrSource,
			wantMsg: "source.insecure",
		},
		{
			name:    "wrong thumbprint",
			trust:   Trust{Thumbprint: strings.Repeat("ab", 20)},
			want:    ErrSource,
			wantMsg: "does not match the pinned",
		},
		{
			name:    "missing extent",
			setup:   func(_ *diskServer, dir string) { _ = os.Remove(filepath.Join(dir, "disk1-flat.vmdk")) },
			want:    ErrSource,
			wantMsg: "404",
		},
		{
			name: "delta disk",
			setup: func(_ *diskServer, dir string) {
				d := strings.Replace(descriptorText("disk1-flat.vmdk", size/512), "parentCID=ffffffff", "parentCID=1234abcd\nparentFileNameHint=\"base.vmdk\"", 1)
				_ = os.WriteFile(filepath.Join(dir, "disk1.vmdk"), []byte(d), 0o644)
			},
			want:    ErrUnsupportedDisk,
			wantMsg: "use nfc or vddk",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := setupFlat(t, size)
			if tc.setup != nil {
				tc.setup(srv, srv.dir)
			}
			header := cookieHeader()
			if tc.header != nil {
				header = tc.header
			}
			trust := Trust{Insecure: true}
			if tc.name == "untrusted certificate" || tc.trust.Thumbprint != "" {
				trust = tc.trust
			}
			tmp := t.TempDir()
			out := filepath.Join(tmp, "out.qcow2")
			tr := testTransferer(t, tmp)
			if srv.truncateAlways {
				// Every request fails through all retries: keep the back-off short.
				tr = New(Config{Logger: testLogger(t), Retries: 1, RetryDelay: time.Second, TempDir: tmp})
			}
			_, err := tr.HTTPS(withTimeout(t, time.Minute), HTTPSSource{
				DescriptorURL: srv.url("disk1.vmdk"), Header: header, Trust: trust,
			}, Output{Path: out})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.wantMsg)
			}
			if testing.Verbose() {
				t.Logf("error: %v", err)
			}
			if strings.Contains(err.Error(), "52a01262") {
				t.Errorf("error leaks the session cookie: %v", err)
			}
			if _, serr := os.Stat(out); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("output left behind after failure (stat: %v)", serr)
			}
			waitNoProcesses(t, tmp)
		})
	}
}

func TestHTTPSTransferCancel(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size = 32 << 20
	srv, _ := setupFlat(t, size)
	srv.bytesPerSec = 4 << 20 // ~8 s for the whole disk: cancel lands mid-transfer
	tmp := t.TempDir()
	out := filepath.Join(tmp, "out.qcow2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := testTransferer(t, tmp).HTTPS(ctx, HTTPSSource{
			DescriptorURL: srv.url("disk1.vmdk"), Header: cookieHeader(), Trust: Trust{Insecure: true},
		}, Output{Path: out})
		errc <- err
	}()
	// Cancel once bytes flow and the output exists: both tools are then running.
	deadline := time.Now().Add(30 * time.Second)
	for srv.served.Load() < 2<<20 || len(childrenMentioning(tmp)) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("transfer never got going (served %d, procs %v)", srv.served.Load(), childrenMentioning(tmp))
		}
		time.Sleep(10 * time.Millisecond) // poll interval, bounded by the deadline
	}
	// The cookie never touches the disk: it stays in the agent's memory.
	if left, _ := filepath.Glob(filepath.Join(tmp, "hsx-*", "*cookie*")); len(left) != 0 {
		t.Errorf("cookie file on disk during the transfer: %v", left)
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
		t.Errorf("partial output left behind (stat: %v)", err)
	}
	waitNoProcesses(t, tmp)
	if srv.served.Load() >= size/2 {
		t.Errorf("served %d bytes: cancel came too late to prove anything", srv.served.Load())
	}
}

func TestHTTPSTransferProgressPacing(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	// qemu-img reports progress as its 8 coroutines start 2 MiB chunks: the disk must be
	// much larger than 16 MiB for the reports to track the copy.
	const size = 64 << 20
	srv, flat := setupFlat(t, size)
	srv.bytesPerSec = 24 << 20 // about 3 s: several progress updates
	tmp := t.TempDir()
	out := filepath.Join(tmp, "out.qcow2")
	var pl progressLog
	if _, err := testTransferer(t, tmp).HTTPS(withTimeout(t, time.Minute), HTTPSSource{
		DescriptorURL: srv.url("disk1.vmdk"), Header: cookieHeader(), Trust: Trust{Insecure: true},
	}, Output{Path: out, Progress: pl.fn, Label: "disk1"}); err != nil {
		t.Fatal(err)
	}
	imagesIdentical(t, flat, out, FormatQcow2)
	pl.check(t, size)
	ups, _ := pl.snapshot()
	if len(ups) < 3 {
		t.Fatalf("only %d updates over a multi-second transfer: %+v", len(ups), ups)
	}
	mid := ups[len(ups)/2]
	if mid.BytesPerSecond <= 0 || mid.ETASeconds <= 0 || mid.PercentComplete <= 0 || mid.PercentComplete >= 100 {
		t.Errorf("mid-transfer update = %+v (all: %+v)", mid, ups)
	}
}

// A split flat disk (twoGbMaxExtentFlat style): two extent files, the second starting 16
// sectors into its file and followed by junk, concatenated by qemu-img in order.
func TestHTTPSTransferMultiExtent(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-nbd")
	t.Parallel()
	const size, half = 8 << 20, 4 << 20
	dir := t.TempDir()
	flat := filepath.Join(dir, "whole.raw")
	makeFlatDisk(t, flat, size, 0.75)
	whole, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte{0xee}, 16*512)
	os.WriteFile(filepath.Join(dir, "d-f001.vmdk"), whole[:half], 0o644)
	os.WriteFile(filepath.Join(dir, "d-f002.vmdk"), append(append(append([]byte(nil), junk...), whole[half:]...), junk...), 0o644)
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\nRW %d FLAT \"d-f001.vmdk\" 0\nRW %d FLAT \"d-f002.vmdk\" 16\n", half/512, (size-half)/512)
	os.WriteFile(filepath.Join(dir, "d.vmdk"), []byte(desc), 0o644)
	srv := newDiskServer(t, dir)
	tmp := t.TempDir()
	out := filepath.Join(tmp, "out.raw")
	res, err := testTransferer(t, tmp).HTTPS(withTimeout(t, time.Minute), HTTPSSource{
		DescriptorURL: srv.url("d.vmdk"), Header: cookieHeader(), Trust: Trust{Insecure: true},
	}, Output{Path: out, Format: FormatRaw})
	if err != nil {
		t.Fatal(err)
	}
	if res.VirtualSize != size {
		t.Errorf("virtual size %d", res.VirtualSize)
	}
	imagesIdentical(t, flat, out, FormatRaw)
}
