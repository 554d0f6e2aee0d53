package vddk

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/fakevddk"
)

// The test binary is also the reader process: the tests start it with Subcommand, as the
// agent starts its own binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case Subcommand:
			os.Exit(Main(os.Args[2:]))
		case "noinit":
			os.Exit(callWithoutInit(os.Args[2]))
		}
	}
	os.Exit(m.Run())
}

// callWithoutInit loads the library and calls ConnectEx without InitEx: the fake must
// refuse, as the real library is unusable before InitEx.
func callWithoutInit(libdir string) int {
	lib, err := loadLibrary(libdir)
	if err != nil {
		fmt.Println("load:", err)
		return 1
	}
	_, err = lib.connect(connParams{Server: "h", User: "u", Password: "p", VMXSpec: "moref=vm-1"}, "[ds] x.vmdk")
	fmt.Println("connect:", err)
	return 0
}

const (
	testPassword   = "Fake-VDDK-pw-42"
	testThumbprint = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD"
	mib            = 1 << 20
)

// testDisk is a datastore with one disk: a text descriptor and a flat extent of size
// bytes whose data lies at the given ranges (the rest are holes).
type testDisk struct {
	ds   vcsim.Datastore
	file string // "[ds1] vm/vm.vmdk"
	flat string
	data []byte // the whole disk's content
}

func newTestDisk(t *testing.T, size int64, data ...fakevddk.Range) *testDisk {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "vm"), 0o755); err != nil {
		t.Fatal(err)
	}
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\nRW %d VMFS \"vm-flat.vmdk\"\n", size/512)
	if err := os.WriteFile(filepath.Join(dir, "vm", "vm.vmdk"), []byte(desc), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &testDisk{ds: vcsim.Datastore{Name: "ds1", Path: dir}, file: "[ds1] vm/vm.vmdk", flat: filepath.Join(dir, "vm", "vm-flat.vmdk"),
		data: make([]byte, size)}
	f, err := os.Create(d.flat)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range data {
		b := d.data[r.Off : r.Off+r.Len]
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, r.Off); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

type reader struct {
	cmd    *exec.Cmd
	conn   *os.File
	stderr *bytes.Buffer
	done   chan struct{}
	err    error
	logs   []LogLine
	mu     sync.Mutex
}

// startReader runs the test binary as a reader of libdir with extra environment.
func startReader(t *testing.T, libdir string, env ...string) *reader {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	parent, child := os.NewFile(uintptr(fds[0]), "agent"), os.NewFile(uintptr(fds[1]), "reader")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r := &reader{conn: parent, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(exe, Subcommand, "serve")
	r.cmd.ExtraFiles = []*os.File{child}
	r.cmd.Env = append(os.Environ(), append([]string{"LD_LIBRARY_PATH=" + LibraryDir(libdir)}, env...)...)
	r.cmd.Stderr = r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child.Close()
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		parent.Close()
		_ = r.cmd.Process.Kill()
		<-r.done
	})
	return r
}

func (r *reader) onLog(l LogLine) {
	r.mu.Lock()
	r.logs = append(r.logs, l)
	r.mu.Unlock()
}

func (r *reader) logText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, l := range r.logs {
		b.WriteString(l.Msg + "\n")
	}
	return b.String()
}

func (d *testDisk) request(libdir string, conns int) OpenRequest {
	return OpenRequest{Libdir: libdir, Server: "vcenter.example", Port: 443, User: "admin", Password: testPassword,
		Thumbprint: testThumbprint, VMXSpec: "moref=vm-7", Snapshot: "snapshot-3", File: d.file, Transports: "nbdssl:nbd",
		Connections: conns, MaxRead: 2 * mib}
}

func (d *testDisk) config(stats string) fakevddk.Config {
	return fakevddk.Config{Datastores: []vcsim.Datastore{d.ds}, Thumbprint: testThumbprint, User: "admin", Password: testPassword, Stats: stats}
}

func TestProbe(t *testing.T) {
	t.Parallel()
	std := fakevddk.Build(t, fakevddk.Standard)
	old := fakevddk.Build(t, fakevddk.NoQueryAllocated)
	broken := t.TempDir()
	if err := os.MkdirAll(filepath.Join(broken, "lib64"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The library without its sibling: what an incomplete unpack of VDDK looks like.
	if err := fakevddk.CopyFile(filepath.Join(broken, "lib64", "libvixDiskLib.so.8"), filepath.Join(std, "lib64", "libvixDiskLib.so.8")); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	cases := []struct {
		name   string
		libdir string
		ldPath bool
		want   ProbeResult
		errHas string
	}{
		{"VDDK 8 shape", std, true, ProbeResult{Loaded: true, Version: 8, QueryAllocated: true}, ""},
		{"no QueryAllocatedBlocks", old, true, ProbeResult{Loaded: true, Version: 8}, ""},
		{"not installed", t.TempDir(), true, ProbeResult{NotInstalled: true}, "has no lib64/libvixDiskLib.so.8"},
		{"sibling library missing", broken, true, ProbeResult{}, "libfakevddkcore.so"},
		{"without LD_LIBRARY_PATH", std, false, ProbeResult{}, "libfakevddkcore.so"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(exe, Subcommand, "probe", tc.libdir)
			cmd.Env = os.Environ()
			if tc.ldPath {
				cmd.Env = append(cmd.Env, "LD_LIBRARY_PATH="+LibraryDir(tc.libdir))
			}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("probe: %v", err)
			}
			got, err := ParseProbe(out)
			if err != nil {
				t.Fatal(err)
			}
			if got.Loaded != tc.want.Loaded || got.Version != tc.want.Version || got.QueryAllocated != tc.want.QueryAllocated ||
				got.NotInstalled != tc.want.NotInstalled || !strings.Contains(got.Error, tc.errHas) {
				t.Fatalf("probe = %+v, want %+v with error containing %q", got, tc.want, tc.errHas)
			}
			if got.Loaded && !strings.HasSuffix(got.Path, "lib64/libvixDiskLib.so.8") {
				t.Errorf("path %q", got.Path)
			}
		})
	}
}

func TestFakeRefusesCallsBeforeInitEx(t *testing.T) {
	t.Parallel()
	libdir := fakevddk.Build(t, fakevddk.Standard)
	dir := t.TempDir()
	stats := filepath.Join(dir, "stats")
	env := fakevddk.Setup(t, dir, fakevddk.Config{Stats: stats})
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "noinit", libdir)
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+LibraryDir(libdir), env)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), "called before VixDiskLib_InitEx") || !strings.Contains(string(out), "VixDiskLib_ConnectEx") {
		t.Fatalf("the fake did not refuse ConnectEx before InitEx: %s", out)
	}
	st, err := fakevddk.ReadStats(stats)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Where("refused", "before-InitEx")) != 1 {
		t.Fatalf("stats %v", st.Lines)
	}
}

// TestReadDisk opens a disk with data, holes, data, and a tail that is not a multiple of
// the read size, through 3 connections: the extents are the data (in 64 KiB chunks),
// reading them returns the file's bytes, the library saw InitEx and Exit once and every
// connection opened and closed, and no read touched a hole.
func TestReadDisk(t *testing.T) {
	t.Parallel()
	libdir := fakevddk.Build(t, fakevddk.Standard)
	size := int64(20*mib + 3*64<<10) // not a multiple of 2 MiB reads
	d := newTestDisk(t, size, fakevddk.Range{Off: 0, Len: 3 * mib}, fakevddk.Range{Off: 9*mib + 4096, Len: 100 << 10},
		fakevddk.Range{Off: size - 64<<10, Len: 64 << 10})
	dir := t.TempDir()
	stats := filepath.Join(dir, "stats")
	r := startReader(t, libdir, fakevddk.Setup(t, dir, d.config(stats)))
	c, err := Open(r.conn, d.request(libdir, 3), r.onLog)
	if err != nil {
		t.Fatalf("open: %v (stderr %s)", err, r.stderr)
	}
	if c.Info.Capacity != size || c.Info.Connections != 3 || c.Info.TransportMode != "nbdssl" || !c.Info.QueryAllocated || c.Info.LibraryVersion != 8 {
		t.Fatalf("info %+v", c.Info)
	}
	ext, err := c.Extents(0, size)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{0, 3 * mib}, {9 * mib, 128 << 10}, {size - 64<<10, 64 << 10}}
	if fmt.Sprint(ext) != fmt.Sprint(want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	got := make([]byte, size)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for _, e := range ext {
		for off := e.Offset; off < e.Offset+e.Length; off += 2 * mib {
			n := min(2*mib, e.Offset+e.Length-off)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.ReadAt(got[off:off+n], off); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !bytes.Equal(got, d.data) {
		t.Fatal("bytes read differ from the disk")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-r.done
	if r.err != nil {
		t.Fatalf("reader exit: %v: %s", r.err, r.stderr)
	}
	st, err := fakevddk.ReadStats(stats)
	if err != nil {
		t.Fatal(err)
	}
	for call, n := range map[string]int{"InitEx": 1, "Exit": 1, "ConnectEx": 3, "Open": 3, "Close": 3, "Disconnect": 3, "GetInfo": 3} {
		if st.Calls[call] != n {
			t.Errorf("%s called %d times, want %d (all: %v)", call, st.Calls[call], n, st.Calls)
		}
	}
	for _, l := range st.Lines {
		if l["refused"] != "" || (l["call"] == "Exit" && l["open_connections"] != "0") {
			t.Errorf("the fake refused or complained: %v", l)
		}
		if l["call"] == "ConnectEx" && (l["vmx"] != "moref=vm-7" || l["snapshot"] != "snapshot-3" || l["read_only"] != "1" || l["transports"] != "nbdssl:nbd") {
			t.Errorf("ConnectEx with %v", l)
		}
	}
	data, err := fakevddk.DataRanges(d.flat)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CheckReadsInData(d.flat, data, 64<<10); err != nil {
		t.Error(err)
	}
	if n, want := st.BytesRead(d.flat), fakevddk.AllocatedBytes(data, 64<<10, size); n != want {
		t.Errorf("read %d bytes, the allocated chunks hold %d", n, want)
	}
	// The fake writes the password into its log; the reader must not pass it on.
	if logs := r.logText(); strings.Contains(logs, testPassword) || !strings.Contains(logs, "password=********") {
		t.Errorf("VDDK's log lines were not scrubbed: %s", logs)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	libdir := fakevddk.Build(t, fakevddk.Standard)
	d := newTestDisk(t, 4*mib, fakevddk.Range{Off: 0, Len: mib})
	cases := []struct {
		name string
		edit func(*OpenRequest, *fakevddk.Config)
		kind string
		logs string
	}{
		{"wrong password", func(r *OpenRequest, _ *fakevddk.Config) { r.Password = "not-it" }, KindAuth, "incorrect user name or password"},
		{"wrong thumbprint", func(r *OpenRequest, _ *fakevddk.Config) { r.Thumbprint = "11:22:33" }, KindTrust, "actual thumbprint=" + testThumbprint},
		{"no such disk", func(r *OpenRequest, _ *fakevddk.Config) { r.File = "[ds1] vm/other.vmdk" }, KindNotFound, ""},
		{"no usable transport", func(r *OpenRequest, _ *fakevddk.Config) { r.Transports = "hotadd:san" }, KindTransport, "hotadd:san"},
		{"InitEx fails", func(_ *OpenRequest, c *fakevddk.Config) {}, KindInit, ""},
		{"library missing", func(r *OpenRequest, _ *fakevddk.Config) { r.Libdir = t.TempDir() }, KindLoad, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			req, cfg := d.request(libdir, 2), d.config(filepath.Join(dir, "stats"))
			tc.edit(&req, &cfg)
			env := fakevddk.Setup(t, dir, cfg)
			if tc.kind == KindInit {
				env = fakevddk.EnvVar + "=" // the fake's InitEx fails without its configuration
			}
			r := startReader(t, libdir, env)
			_, err := Open(r.conn, req, r.onLog)
			if KindOf(err) != tc.kind {
				t.Fatalf("error %v (kind %q), want kind %q; logs %s", err, KindOf(err), tc.kind, r.logText())
			}
			if !strings.Contains(r.logText(), tc.logs) {
				t.Errorf("logs lack %q: %s", tc.logs, r.logText())
			}
			<-r.done
			if strings.Contains(err.Error()+r.logText()+r.stderr.String(), req.Password) && len(req.Password) > 6 {
				t.Errorf("the password leaked")
			}
		})
	}
}

// TestReadRefusedAndCrash: the reader refuses reads VixDiskLib cannot do, and a library
// that aborts ends the reader without hanging the client.
func TestReadRefusedAndCrash(t *testing.T) {
	t.Parallel()
	libdir := fakevddk.Build(t, fakevddk.Standard)
	d := newTestDisk(t, 8*mib, fakevddk.Range{Off: 0, Len: 8 * mib})
	dir := t.TempDir()
	cfg := d.config(filepath.Join(dir, "stats"))
	cfg.CrashAfterBytes = 4 * mib
	r := startReader(t, libdir, fakevddk.Setup(t, dir, cfg))
	c, err := Open(r.conn, d.request(libdir, 1), r.onLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		off, n int64
	}{{100, 512}, {0, 1000}, {0, 4 * mib}, {8*mib - 512, 1024}} {
		if err := c.ReadAt(make([]byte, bad.n), bad.off); KindOf(err) != KindInvalid {
			t.Errorf("read of %d at %d: %v, want refused", bad.n, bad.off, err)
		}
	}
	buf := make([]byte, 2*mib)
	if err := c.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	err = c.ReadAt(buf, 2*mib) // reaches 4 MiB: the library aborts
	if !errors.Is(err, ErrReaderGone) {
		t.Fatalf("read during the crash: %v", err)
	}
	<-r.done
	if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGABRT {
		t.Errorf("reader ended with %v, want killed by SIGABRT: %s", r.err, r.stderr)
	}
	if !strings.Contains(r.logText(), "configured crash") {
		t.Errorf("the library's panic message did not reach the client: %s", r.logText())
	}
}
