package transfer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/transfer/vddk"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/fakevddk"
)

// The test binary is also the VDDK reader process that transfers start (os.Executable),
// as the agent's binary is.
func TestMain(m *testing.M) {
	vddk.RunIfReader()
	os.Exit(m.Run())
}

const (
	vddkTestPassword   = "vddk-Canary-pw-9"
	vddkTestThumbprint = "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67"
)

// vddkFixture is one test's fake VDDK: a library directory, a datastore with one disk, and the
// fake's configuration (in the environment of the readers this test starts).
type vddkFixture struct {
	t      testing.TB
	libdir string
	dir    string
	flat   string
	size   int64
	fake   *fakevddk.Fake
	logs   *lockedBuffer
	xfer   *Transferer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newVDDKFixture makes a disk of size bytes: data at the start (dataFrac of it), a hole,
// one 64 KiB island near the end (see makeFlatDisk).
func newVDDKFixture(t testing.TB, v fakevddk.Variant, size int64, dataFrac float64) *vddkFixture {
	t.Helper()
	requireTools(t, "qemu-img", "qemu-nbd")
	f := &vddkFixture{t: t, libdir: fakevddk.Build(t, v), dir: t.TempDir(), size: size, logs: &lockedBuffer{}}
	ds := filepath.Join(f.dir, "ds")
	if err := os.MkdirAll(filepath.Join(ds, "vm-1"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.flat = filepath.Join(ds, "vm-1", "vm-1-flat.vmdk")
	makeFlatDisk(t, f.flat, size, dataFrac)
	if err := os.WriteFile(filepath.Join(ds, "vm-1", "vm-1.vmdk"), []byte(descriptorText("vm-1-flat.vmdk", size/512)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.fake = fakevddk.New(t, f.dir, fakevddk.Config{Datastores: []vcsim.Datastore{{Name: "LocalDS_0", Path: ds}},
		Thumbprint: vddkTestThumbprint, User: "administrator@vsphere.local", Password: vddkTestPassword})
	// Tests run in parallel in one process, each with its own fake configuration: the
	// reader command sets it (env VAR=… reader), where the agent's readers inherit it.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f.xfer = New(Config{Logger: newTeeLogger(t, f.logs), Retries: 2, RetryDelay: 100 * time.Millisecond, TempDir: f.dir,
		VDDKReader: []string{"env", f.fake.Env(), exe, vddk.Subcommand}})
	return f
}

func (f *vddkFixture) source() VDDKSource {
	return VDDKSource{Server: "vcenter.example", Port: 443, User: "administrator@vsphere.local", Password: vddkTestPassword,
		Thumbprint: vddkTestThumbprint, VMMoref: "vm-42", File: "[LocalDS_0] vm-1/vm-1.vmdk", Snapshot: "snapshot-7", Libdir: f.libdir}
}

// readersLeft lists reader processes of this test (their environment names its fake).
func (f *vddkFixture) readersLeft() []string { return f.fake.Processes(vddk.Subcommand) }

func (f *vddkFixture) checkClean(out string) {
	f.t.Helper()
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		f.t.Errorf("output left behind (stat: %v)", err)
	}
	waitNoProcesses(f.t, f.dir)
	deadline := time.Now().Add(10 * time.Second)
	for len(f.readersLeft()) > 0 {
		if time.Now().After(deadline) {
			f.t.Fatalf("reader processes left: %v", f.readersLeft())
		}
		time.Sleep(20 * time.Millisecond) // poll interval, bounded by the deadline
	}
	if strings.Contains(f.logs.String(), vddkTestPassword) {
		f.t.Error("the password is in the agent's log")
	}
}

func TestProbeVDDK(t *testing.T) {
	t.Parallel()
	std := fakevddk.Build(t, fakevddk.Standard)
	old := fakevddk.Build(t, fakevddk.NoQueryAllocated)
	broken := fakevddk.Build(t, fakevddk.Standard)
	if err := os.Remove(filepath.Join(broken, "lib64", "libfakevddkcore.so")); err != nil {
		t.Fatal(err)
	}
	garbage := t.TempDir()
	_ = os.MkdirAll(filepath.Join(garbage, "lib64"), 0o755)
	if err := os.WriteFile(filepath.Join(garbage, "lib64", "libvixDiskLib.so.7"), []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	x := New(Config{Logger: testLogger(t)})
	cases := []struct {
		name, libdir string
		ok, qab      bool
		want         []string
	}{
		{"loads", std, true, true, nil},
		{"VDDK before 6.7", old, true, false, nil},
		{"nothing configured", "", false, false, []string{"--vddk-libdir", "transfer.vddk_libdir"}},
		{"directory without VDDK", t.TempDir(), false, false, []string{"VDDK not found", "lib64/libvixDiskLib.so.8", "--vddk-libdir"}},
		{"sibling library missing", broken, false, false, []string{"does not load", "libfakevddkcore.so", "whole VDDK tarball"}},
		{"not a library", garbage, false, false, []string{"does not load", "libvixDiskLib.so.7"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := x.ProbeVDDK(context.Background(), tc.libdir)
			if p.Available != tc.ok || p.QueryAllocated != tc.qab {
				t.Fatalf("probe = %+v, want available %v, query_allocated %v", p, tc.ok, tc.qab)
			}
			for _, w := range tc.want {
				if !strings.Contains(p.Reason, w) {
					t.Errorf("reason %q lacks %q", p.Reason, w)
				}
			}
			if tc.ok && (p.Version != 8 || !strings.HasSuffix(p.Path, "libvixDiskLib.so.8")) {
				t.Errorf("probe = %+v", p)
			}
		})
	}
	// Capabilities list vddk only where it loads (and qcow2 can be written).
	requireTools(t, "qemu-img", "qemu-nbd")
	if c := x.Probe(context.Background(), std); !c.VDDK || c.Methods()[0] != MethodVDDK || !c.VDDKQueryAllocated {
		t.Errorf("with VDDK: %+v methods %v", c, c.Methods())
	}
	if c := x.Probe(context.Background(), broken); c.VDDK || strings.Contains(strings.Join(c.Methods(), ","), MethodVDDK) {
		t.Errorf("with a broken VDDK: methods %v", c.Methods())
	}
}

// TestVDDKTransfer copies disks through the fake: byte-identical in both formats, sizes
// that are not multiples of the 2 MiB read, only allocated chunks read where the library
// can tell, everything read (with a warning) where it cannot.
func TestVDDKTransfer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		variant fakevddk.Variant
		size    int64
		frac    float64
		format  string
	}{
		{"half sparse qcow2", fakevddk.Standard, 64 << 20, 0.5, FormatQcow2},
		{"odd size raw", fakevddk.Standard, 33<<20 + 192<<10, 0.3, FormatRaw},
		{"all data qcow2", fakevddk.Standard, 10<<20 + 512, 1, FormatQcow2},
		{"no QueryAllocatedBlocks", fakevddk.NoQueryAllocated, 24 << 20, 0.5, FormatQcow2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newVDDKFixture(t, tc.variant, tc.size, tc.frac)
			out := filepath.Join(f.dir, "out."+tc.format)
			var pl progressLog
			res, err := f.xfer.VDDK(withTimeout(t, 2*time.Minute), f.source(), Output{Path: out, Format: tc.format, Progress: pl.fn, Label: "disk0"})
			if err != nil {
				t.Fatalf("VDDK: %v", err)
			}
			imagesIdentical(t, f.flat, out, tc.format)
			if got := imageFormat(t, out); got != tc.format {
				t.Errorf("format %s, want %s", got, tc.format)
			}
			pl.check(t, tc.size)
			st := f.fake.ReadStats()
			data, err := fakevddk.DataRanges(f.flat)
			if err != nil {
				t.Fatal(err)
			}
			if res.VirtualSize != tc.size || res.SourceBytes != st.BytesRead(f.flat) {
				t.Errorf("result %+v; the fake served %d bytes", res, st.BytesRead(f.flat))
			}
			if tc.variant == fakevddk.Standard {
				if err := st.CheckReadsInData(f.flat, data, 64<<10); err != nil {
					t.Error(err)
				}
				if want := fakevddk.AllocatedBytes(data, 64<<10, tc.size); res.SourceBytes != want {
					t.Errorf("read %d bytes, allocated chunks hold %d", res.SourceBytes, want)
				}
				if len(res.Warnings) != 0 {
					t.Errorf("warnings %q", res.Warnings)
				}
			} else {
				if res.SourceBytes != tc.size {
					t.Errorf("read %d bytes of %d: without QueryAllocatedBlocks every block is read", res.SourceBytes, tc.size)
				}
				if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "VDDK 6.7 or later") {
					t.Errorf("warnings %q do not name the fix", res.Warnings)
				}
			}
			if tc.frac < 1 && res.AllocatedBytes > tc.size*3/4 {
				t.Errorf("image not sparse: %d bytes allocated of %d", res.AllocatedBytes, tc.size)
			}
			for _, l := range st.Lines {
				if l["refused"] != "" || (l["call"] == "Exit" && l["open_connections"] != "0") {
					t.Errorf("the fake refused or complained: %v", l)
				}
			}
			if st.Calls["InitEx"] != 1 || st.Calls["Exit"] != 1 || st.Calls["ConnectEx"] != 4 || st.Calls["Close"] != 4 {
				t.Errorf("calls %v: want one InitEx and Exit, 4 connections opened and closed", st.Calls)
			}
			f.checkClean(filepath.Join(f.dir, "none"))
			if !strings.Contains(f.logs.String(), "password=********") {
				t.Errorf("VDDK's log line with the password did not reach the log scrubbed")
			}
		})
	}
}

// TestVDDKFailures: every way it can go wrong ends with an error naming the fix, no
// output file, no reader process, and no password anywhere.
func TestVDDKFailures(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		setup func(f *vddkFixture, src *VDDKSource)
		is    error
		want  []string
	}{
		{"wrong password", func(f *vddkFixture, s *VDDKSource) { s.Password = "not-the-password" },
			ErrSourceAccess, []string{"refused the credentials", "administrator@vsphere.local", "source.password"}},
		{"wrong thumbprint", func(f *vddkFixture, s *VDDKSource) { s.Thumbprint = "DE:AD:BE:EF" },
			ErrSourceAccess, []string{"source.thumbprint", "DE:AD:BE:EF", "actual thumbprint=" + vddkTestThumbprint}},
		{"no thumbprint", func(f *vddkFixture, s *VDDKSource) { s.Thumbprint = "" },
			ErrSourceAccess, []string{"source.thumbprint", "source.insecure"}},
		{"library missing", func(f *vddkFixture, s *VDDKSource) { s.Libdir = f.t.TempDir() },
			ErrVDDKUnavailable, []string{"does not load", "--vddk-libdir"}},
		{"library does not load", func(f *vddkFixture, s *VDDKSource) {
			if err := os.Remove(filepath.Join(s.Libdir, "lib64", "libfakevddkcore.so")); err != nil {
				f.t.Fatal(err)
			}
		}, ErrVDDKUnavailable, []string{"does not load", "libfakevddkcore.so", "whole VDDK tarball"}},
		{"no usable transport", func(f *vddkFixture, s *VDDKSource) { s.Transports = "hotadd:san" },
			ErrVDDKUnavailable, []string{"hotadd:san", "transfer.vddk_transports"}},
		{"disk not found", func(f *vddkFixture, s *VDDKSource) { s.File = "[LocalDS_0] vm-1/gone.vmdk" },
			ErrSource, []string{"gone.vmdk", "snapshot-7"}},
		{"VDDK crashes mid-copy", func(f *vddkFixture, s *VDDKSource) { f.fake.Cfg.CrashAfterBytes = 6 << 20; f.fake.Write() },
			ErrSource, []string{"reader process", "died", "signal: aborted", "configured crash", "agent and its other work carry on"}},
		{"reads keep failing", func(f *vddkFixture, s *VDDKSource) { f.fake.Cfg.FailReads = 1000; f.fake.Write() },
			ErrSource, []string{"failed 3 times, giving up", "connection to the host lost"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newVDDKFixture(t, fakevddk.Standard, 16<<20, 0.75)
			src := f.source()
			tc.setup(f, &src)
			out := filepath.Join(f.dir, "out.qcow2")
			_, err := f.xfer.VDDK(withTimeout(t, 2*time.Minute), src, Output{Path: out})
			if !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want %v", err, tc.is)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), vddkTestPassword) || strings.Contains(err.Error(), src.Password) {
				t.Errorf("the password is in the error")
			}
			f.checkClean(out)
		})
	}
}

// TestVDDKTransientReadsRetried: reads that fail a few times (a dropped NFC connection,
// reopened by the reader) are retried and the copy completes intact.
func TestVDDKTransientReadsRetried(t *testing.T) {
	t.Parallel()
	f := newVDDKFixture(t, fakevddk.Standard, 16<<20, 0.5)
	f.fake.Cfg.FailReads = 2
	f.fake.Write()
	out := filepath.Join(f.dir, "out.raw")
	if _, err := f.xfer.VDDK(withTimeout(t, time.Minute), f.source(), Output{Path: out, Format: FormatRaw}); err != nil {
		t.Fatal(err)
	}
	imagesIdentical(t, f.flat, out, FormatRaw)
	if n := len(f.fake.ReadStats().Where("result", "failed")); n != 2 {
		t.Errorf("%d failed reads recorded, want 2", n)
	}
	if !strings.Contains(f.logs.String(), "retrying") {
		t.Error("no retry logged")
	}
}

// TestVDDKCapped: the vddk method goes through the same copier as https, so a job's cap
// and the agent's cap hold for it too: its reads shrink to what one wait of the bucket
// allows, the agent advertises the rate, and the copy cannot finish sooner than the
// bucket lets the bytes through (a lower bound, whatever the machine's load).
func TestVDDKCapped(t *testing.T) {
	t.Parallel()
	const capBps = 3_000_000 // 24 Mbit/s: 12 MiB take about 4 s
	for _, tc := range []struct {
		name  string
		agent bool // the cap is the agent's (Config) rather than the job's (Output.Limiter)
	}{
		{"job cap", false},
		{"agent cap", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newVDDKFixture(t, fakevddk.Standard, 12<<20, 1)
			var lim *Limiter
			if tc.agent {
				f.xfer = New(Config{Logger: newTeeLogger(t, f.logs), TempDir: f.dir, VDDKReader: f.xfer.cfg.VDDKReader, MaxBytesPerSecond: capBps})
			} else {
				lim = NewLimiter(capBps)
			}
			burst := limits{lim, f.xfer.limiter}.active().chunk()
			piece := pieceSize(vddkMaxRead, burst)
			out := filepath.Join(f.dir, "out.raw")
			start := time.Now()
			done := make(chan struct{})
			var sawRate atomic.Bool
			go func() {
				for {
					select {
					case <-done:
						return
					case <-time.After(100 * time.Millisecond): // sampling period
					}
					if r, _ := f.xfer.Rate(); r > 0 {
						sawRate.Store(true)
					}
				}
			}()
			res, err := f.xfer.VDDK(withTimeout(t, 2*time.Minute), f.source(), Output{Path: out, Format: FormatRaw, Limiter: lim})
			elapsed := time.Since(start)
			close(done)
			if err != nil {
				t.Fatal(err)
			}
			imagesIdentical(t, f.flat, out, FormatRaw)
			if floor := time.Duration(float64(res.SourceBytes-int64(burst)) / capBps * float64(time.Second)); elapsed < floor {
				t.Errorf("%d bytes in %s: faster than the cap of %d bytes/s allows (%s)", res.SourceBytes, elapsed, capBps, floor)
			}
			st := f.fake.ReadStats()
			for _, r := range st.Reads {
				if r.Len > int64(piece) {
					t.Fatalf("a read of %d bytes under the cap, want at most %d", r.Len, piece)
				}
			}
			if !sawRate.Load() {
				t.Error("the agent's transfer rate stayed 0 during the copy")
			}
			if _, c := f.xfer.Rate(); tc.agent && c != capBps || !tc.agent && c != 0 {
				t.Errorf("advertised cap %.0f", c)
			}
			t.Logf("%d bytes in %s at a cap of %d bytes/s (%d reads of at most %d bytes)", res.SourceBytes, elapsed.Round(time.Millisecond), capBps, len(st.Reads), piece)
		})
	}
}

func TestVDDKCancel(t *testing.T) {
	t.Parallel()
	f := newVDDKFixture(t, fakevddk.Standard, 48<<20, 1)
	f.fake.Cfg.ReadDelay = 300 * time.Millisecond // 48 MiB in 2 MiB reads on 4 connections: ~2 s
	f.fake.Write()
	out := filepath.Join(f.dir, "out.qcow2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := f.xfer.VDDK(ctx, f.source(), Output{Path: out})
		errc <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for f.fake.ReadStats().BytesRead("") < 4<<20 {
		if time.Now().After(deadline) {
			t.Fatal("the copy never got going")
		}
		time.Sleep(20 * time.Millisecond) // poll interval, bounded by the deadline
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
	f.checkClean(out)
}

// newTeeLogger logs to the test and keeps a copy to search for secrets.
func newTeeLogger(t testing.TB, keep *lockedBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, keep), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// BenchmarkVDDKTransfer: the vddk method's own cost, reader process to image, on a local
// disk (benchSize, half random, half hole) through the fake: what it adds on top of VDDK.
func BenchmarkVDDKTransfer(b *testing.B) {
	for _, format := range []string{FormatQcow2, FormatRaw} {
		b.Run(format, func(b *testing.B) {
			f := newVDDKFixture(b, fakevddk.Standard, benchSize, 0.5)
			f.xfer = New(Config{Logger: discardLogger(), TempDir: f.dir, VDDKReader: f.xfer.cfg.VDDKReader})
			b.SetBytes(benchSize)
			out := filepath.Join(f.dir, "out")
			for b.Loop() {
				if _, err := f.xfer.VDDK(context.Background(), f.source(), Output{Path: out, Format: format}); err != nil {
					b.Fatal(err)
				}
				os.Remove(out)
			}
		})
	}
}

// TestVDDKReaderPool: readers started ahead (a warm cutover starts them while the guest
// shuts down) are the ones a copy uses; one whose process died is replaced by a new one;
// Close stops those nobody took, and nothing is left.
func TestVDDKReaderPool(t *testing.T) {
	t.Parallel()
	f := newVDDKFixture(t, fakevddk.Standard, 8<<20, 0.5)
	ctx := withTimeout(t, 2*time.Minute)
	pool := f.xfer.StartVDDKReaders(ctx, f.libdir, 3)
	started := map[int]bool{}
	for _, r := range pool.procs {
		started[r.srv.cmd.Process.Pid] = true
	}
	if len(started) != 3 {
		t.Fatalf("%d readers started, want 3", len(started))
	}
	// One of them dies before it is used: the copy that takes it starts its own.
	dead := pool.procs[len(pool.procs)-1]
	dead.srv.stop()

	readPids := func(from int) map[int]bool {
		pids := map[int]bool{}
		for _, r := range f.fake.ReadStats().Reads[from:] {
			pids[r.Pid] = true
		}
		return pids
	}
	for i, wantPooled := range []bool{false, true} {
		before := len(f.fake.ReadStats().Reads)
		src := f.source()
		src.Readers = pool
		out := filepath.Join(f.dir, "out"+strconv.Itoa(i)+".qcow2")
		if _, err := f.xfer.VDDK(ctx, src, Output{Path: out, Format: FormatQcow2}); err != nil {
			t.Fatal(err)
		}
		imagesIdentical(t, f.flat, out, FormatQcow2)
		pids := readPids(before)
		if len(pids) != 1 {
			t.Fatalf("copy %d read from %d processes, want one reader", i, len(pids))
		}
		for pid := range pids {
			if started[pid] != wantPooled {
				t.Errorf("copy %d read in pid %d: pooled %v, want %v", i, pid, started[pid], wantPooled)
			}
		}
	}
	if n := len(pool.procs); n != 1 {
		t.Fatalf("%d readers left in the pool, want 1", n)
	}
	// Another libdir does not take a reader of this one.
	if r := pool.take(t.TempDir()); r != nil {
		t.Error("a reader of another VDDK directory was handed out")
	}
	pool.Close()
	var nilPool *ReaderPool
	nilPool.Close() // no readers: nothing to do, no panic
	f.checkClean(filepath.Join(f.dir, "none"))
}
