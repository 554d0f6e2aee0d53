// Package fakevddk builds and configures the fake VMware VDDK the tests run against
// (csrc/fakevddk.c, csrc/fakecore.c): a libvixDiskLib.so.8 that serves the simulator's disks from
// its datastore directories, checks the thumbprint and the password, refuses what the real
// library refuses, answers QueryAllocatedBlocks from the extents' real holes, and records
// every call in a stats file. It is not VMware's library: it stands in for it where the
// tests need one.
package fakevddk

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/shared/vcsim"
)

// EnvVar names the fake's configuration file (Config.Write) in the environment of the
// process that loads it: the agent passes its environment on to the reader.
const EnvVar = "HYPERSDK_FAKE_VDDK"

// Variant selects how the fake is built.
type Variant int

const (
	// Standard is a VDDK 8-shaped library with QueryAllocatedBlocks.
	Standard Variant = iota
	// NoQueryAllocated lacks QueryAllocatedBlocks and FreeBlockList, like VDDK 6.5.
	NoQueryAllocated
)

func pkgDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// srcDir holds the fake's C sources (a directory of their own: go build refuses C files
// beside Go files that do not use cgo).
func srcDir() string { return filepath.Join(pkgDir(), "csrc") }

// HeaderDir holds vixdisklib.h, shared by the agent's binding and the fake.
func HeaderDir() string { return filepath.Join(pkgDir(), "..", "..", "agent", "transfer", "vddk") }

// Build returns a new VDDK-shaped directory holding the fake:
// DIR/lib64/libvixDiskLib.so.8, linked without an rpath against DIR/lib64/libfakevddkcore.so,
// so that it loads only with LD_LIBRARY_PATH naming DIR/lib64, like VMware's. The fake is
// compiled with cc once per source version (cached beside Go's build cache) and copied.
// Skips the test when cc is missing.
func Build(t testing.TB, v Variant) string {
	t.Helper()
	built, err := cached(v)
	if errors.Is(err, exec.ErrNotFound) {
		t.Skipf("cc is not installed (apt-get install gcc): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "lib64"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"libvixDiskLib.so.8", "libfakevddkcore.so"} {
		if err := CopyFile(filepath.Join(dir, "lib64", name), filepath.Join(built, "lib64", name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var cacheMu sync.Mutex

// cached builds the variant into a cache directory named by a hash of the sources, unless
// it is there already.
func cached(v Variant) (string, error) {
	cacheMu.Lock()
	defer cacheMu.Unlock()
	h := sha256.New()
	fmt.Fprintf(h, "variant %d\n", v)
	for _, f := range []string{filepath.Join(srcDir(), "fakevddk.c"), filepath.Join(srcDir(), "fakecore.c"),
		filepath.Join(srcDir(), "fakecore.h"), filepath.Join(HeaderDir(), "vixdisklib.h")} {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "hypersdk-fakevddk", hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(dir, "lib64", "libvixDiskLib.so.8")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if _, err := BuildDir(tmp, v); err != nil {
		return "", err
	}
	// Another test process may have won the race: either copy is the same.
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, "lib64", "libvixDiskLib.so.8")); serr != nil {
			return "", err
		}
	}
	return dir, nil
}

// BuildDir compiles the fake with cc into root/lib64 (created if needed).
func BuildDir(root string, v Variant) (string, error) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		return "", err
	}
	lib64 := filepath.Join(root, "lib64")
	if err := os.MkdirAll(lib64, 0o755); err != nil {
		return "", err
	}
	flags := []string{"-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-I", HeaderDir()}
	core := append(append([]string{}, flags...), "-Wl,-soname,libfakevddkcore.so", "-o", filepath.Join(lib64, "libfakevddkcore.so"),
		filepath.Join(srcDir(), "fakecore.c"))
	lib := append(append([]string{}, flags...), "-fvisibility=hidden", "-Wl,-soname,libvixDiskLib.so.8", "-Wl,--no-undefined",
		"-Wl,--no-as-needed", "-o", filepath.Join(lib64, "libvixDiskLib.so.8"), filepath.Join(srcDir(), "fakevddk.c"),
		"-L", lib64, "-lfakevddkcore", "-lpthread")
	if v == NoQueryAllocated {
		lib = append([]string{"-DFAKE_NO_QUERY_ALLOCATED"}, lib...)
	}
	for _, args := range [][]string{core, lib} {
		if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("cc %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return root, nil
}

// Config is the fake's configuration: which "server" it pretends to be and how it behaves.
type Config struct {
	// Datastores map datastore names to directories (the simulator's).
	Datastores []vcsim.Datastore
	// Thumbprint is the "server certificate's" SHA-1 thumbprint; User (optional) and
	// Password are the credentials it accepts.
	Thumbprint, User, Password string
	// Stats receives one line per call.
	Stats string
	// MaxRead is the largest Read in bytes (default 2 MiB).
	MaxRead int64
	// ReadDelay is slept in every Read (a slow source).
	ReadDelay time.Duration
	// CrashAfterBytes makes a reader abort() once it has read this much; with CrashOnce,
	// only the first reader that gets there (it creates the file).
	CrashAfterBytes int64
	CrashOnce       string
	// FailReads fails the first N Read calls of each reader process (transient errors).
	FailReads int
	// Transports are the modes the "host" offers (default nbdssl:nbd).
	Transports string
}

// ForSim is a configuration serving sim's datastores with its thumbprint and credentials.
func ForSim(sim *vcsim.Sim, stats string) Config {
	return Config{Datastores: sim.Datastores, Thumbprint: sim.Thumbprint, User: sim.Username, Password: sim.Password, Stats: stats}
}

// Write stores the configuration at path (0600: it holds a password).
func (c Config) Write(path string) error {
	var b strings.Builder
	for _, d := range c.Datastores {
		fmt.Fprintf(&b, "datastore=%s path=%s\n", d.Name, d.Path)
	}
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s=%s\n", k, v)
		}
	}
	num := func(k string, v int64) {
		if v != 0 {
			kv(k, strconv.FormatInt(v, 10))
		}
	}
	kv("thumbprint", c.Thumbprint)
	kv("user", c.User)
	kv("password", c.Password)
	kv("stats", c.Stats)
	num("max_read", c.MaxRead)
	num("read_delay_ms", c.ReadDelay.Milliseconds())
	num("crash_after_bytes", c.CrashAfterBytes)
	kv("crash_once", c.CrashOnce)
	num("fail_reads", int64(c.FailReads))
	kv("transports", c.Transports)
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// Setup writes cfg into dir/fakevddk.conf and returns the environment entry that points
// the fake at it.
func Setup(t testing.TB, dir string, cfg Config) string {
	t.Helper()
	return New(t, dir, cfg).Env()
}

// Fake is one test's fake: its configuration file and stats file.
type Fake struct {
	t   testing.TB
	Cfg Config
	// Conf is the configuration file, Stats the stats file.
	Conf, Stats string
}

// New writes cfg to dir/fakevddk.conf (its stats going to dir/stats unless set).
func New(t testing.TB, dir string, cfg Config) *Fake {
	t.Helper()
	if cfg.Stats == "" {
		cfg.Stats = filepath.Join(dir, "stats")
	}
	f := &Fake{t: t, Cfg: cfg, Conf: filepath.Join(dir, "fakevddk.conf"), Stats: cfg.Stats}
	f.Write()
	return f
}

// Env is the environment entry that points a process's fake at this configuration.
func (f *Fake) Env() string { return EnvVar + "=" + f.Conf }

// Write stores Cfg again (readers started from now on see it).
func (f *Fake) Write() {
	f.t.Helper()
	if err := f.Cfg.Write(f.Conf); err != nil {
		f.t.Fatal(err)
	}
}

// ReadStats parses what the fake recorded so far.
func (f *Fake) ReadStats() Stats {
	f.t.Helper()
	s, err := ReadStats(f.Stats)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// Processes lists live processes that have this fake in their environment and whose
// command line contains cmd (e.g. "vddk-reader"): a test's reader processes, whoever
// their parent is now.
func (f *Fake) Processes(cmd string) []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == strconv.Itoa(os.Getpid()) {
			continue
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		line, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if bytes.Contains(append(env, 0), []byte(f.Env()+"\x00")) && bytes.Contains(line, []byte(cmd)) {
			found = append(found, e.Name()+": "+string(bytes.ReplaceAll(line, []byte{0}, []byte{' '})))
		}
	}
	return found
}

// Read is one VixDiskLib_Read the fake served.
type Read struct {
	Pid      int
	Flat     string
	Off, Len int64
}

// Stats is what the fake recorded.
type Stats struct {
	// Calls counts calls by name (including refused ones).
	Calls map[string]int
	// Lines are every record, as key=value maps.
	Lines []map[string]string
	Reads []Read
}

// ReadStats parses the stats file (an absent file is no calls).
func ReadStats(path string) (Stats, error) {
	s := Stats{Calls: map[string]int{}}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := map[string]string{}
		for _, field := range strings.Fields(sc.Text()) {
			if k, v, ok := strings.Cut(field, "="); ok {
				m[k] = v
			}
		}
		s.Lines = append(s.Lines, m)
		s.Calls[m["call"]]++
		if m["call"] == "Read" && m["off"] != "" && m["result"] == "" && m["refused"] == "" && m["crash"] == "" {
			pid, _ := strconv.Atoi(m["pid"])
			off, _ := strconv.ParseInt(m["off"], 10, 64)
			n, _ := strconv.ParseInt(m["len"], 10, 64)
			s.Reads = append(s.Reads, Read{Pid: pid, Flat: m["flat"], Off: off, Len: n})
		}
	}
	return s, sc.Err()
}

// Where returns the records with key=value.
func (s Stats) Where(key, value string) []map[string]string {
	var out []map[string]string
	for _, l := range s.Lines {
		if l[key] == value {
			out = append(out, l)
		}
	}
	return out
}

// BytesRead sums the reads of flat ("" for all).
func (s Stats) BytesRead(flat string) int64 {
	var n int64
	for _, r := range s.Reads {
		if flat == "" || r.Flat == flat {
			n += r.Len
		}
	}
	return n
}

// Range is a byte range.
type Range struct{ Off, Len int64 }

// lseek whence values of Linux (the syscall package does not name them).
const (
	seekData = 3
	seekHole = 4
)

// DataRanges lists the ranges of path that hold data (SEEK_DATA/SEEK_HOLE), the truth
// QueryAllocatedBlocks is checked against.
func DataRanges(path string) ([]Range, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var out []Range
	for pos := int64(0); pos < st.Size(); {
		data, err := syscall.Seek(int(f.Fd()), pos, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if err != nil {
			return nil, err
		}
		hole, err := syscall.Seek(int(f.Fd()), data, seekHole)
		if err != nil {
			return nil, err
		}
		out = append(out, Range{data, hole - data})
		pos = hole
	}
	return out, nil
}

// CheckReadsInData returns an error naming the first read of flat that touches no data
// at all (a read of a hole), given the file's data ranges widened to whole chunks of
// chunk bytes (QueryAllocatedBlocks' granularity).
func (s Stats) CheckReadsInData(flat string, data []Range, chunk int64) error {
	for _, r := range s.Reads {
		if r.Flat != flat {
			continue
		}
		ok := false
		for _, d := range data {
			lo, hi := d.Off/chunk*chunk, (d.Off+d.Len+chunk-1)/chunk*chunk
			if r.Off >= lo && r.Off+r.Len <= hi {
				ok = true
				break
			}
		}
		if !ok {
			return fmt.Errorf("read of %d bytes at %d of %s lies outside the data %v (a hole was read)", r.Len, r.Off, flat, data)
		}
	}
	return nil
}

// AllocatedBytes sums data ranges widened to whole chunks: what a reader that skips
// holes at QueryAllocatedBlocks' granularity reads, at most.
func AllocatedBytes(data []Range, chunk, size int64) int64 {
	var n, last int64
	for _, d := range data {
		lo, hi := max(d.Off/chunk*chunk, last), min((d.Off+d.Len+chunk-1)/chunk*chunk, size)
		if hi > lo {
			n += hi - lo
			last = hi
		}
	}
	return n
}

// CopyFile copies a file (for tests that make a broken VDDK directory from a good one).
func CopyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
