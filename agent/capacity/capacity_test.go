package capacity

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

func TestReadMeminfo(t *testing.T) {
	for _, tc := range []struct {
		name       string
		in         string
		total, av  uint64
		wantErrSub string
	}{
		{"kernel format", "MemTotal:       24683620 kB\nMemFree:        23888076 kB\nMemAvailable:   24303256 kB\n", 24683620 * 1024, 24303256 * 1024, ""},
		{"order does not matter", "MemAvailable: 1 kB\nMemTotal: 2 kB\n", 2048, 1024, ""},
		{"old kernel without MemAvailable", "MemTotal: 2 kB\nMemFree: 1 kB\n", 0, 0, "missing"},
		{"garbage number", "MemTotal: x kB\nMemAvailable: 1 kB\n", 0, 0, "MemTotal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			total, av, err := ReadMeminfo(strings.NewReader(tc.in))
			if tc.wantErrSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrSub) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErrSub)
				}
				return
			}
			if err != nil || total != tc.total || av != tc.av {
				t.Fatalf("got %d %d %v, want %d %d", total, av, err, tc.total, tc.av)
			}
		})
	}
}

// dfBytes asks coreutils df, an independent reader of the same statfs numbers.
func dfBytes(t *testing.T, dir string) (avail, size uint64) {
	t.Helper()
	out, err := exec.Command("df", "-B1", "--output=avail,size", dir).Output()
	if err != nil {
		t.Skipf("df: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f := strings.Fields(lines[len(lines)-1])
	avail, _ = strconv.ParseUint(f[0], 10, 64)
	size, _ = strconv.ParseUint(f[1], 10, 64)
	return avail, size
}

func TestCapacityOnThisHost(t *testing.T) {
	dir := t.TempDir()
	p := New(Config{StorageDir: dir, LibvirtURI: "test:///default"})
	c, err := p.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	if c.CPUs != runtime.NumCPU() {
		t.Errorf("CPUs = %d, want %d", c.CPUs, runtime.NumCPU())
	}
	if c.MemoryTotalBytes < 64<<20 || c.MemoryFreeBytes == 0 || c.MemoryFreeBytes > c.MemoryTotalBytes {
		t.Errorf("memory total %d free %d", c.MemoryTotalBytes, c.MemoryFreeBytes)
	}
	avail, size := dfBytes(t, dir)
	if c.StorageTotalBytes != size {
		t.Errorf("storage total %d, df says %d", c.StorageTotalBytes, size)
	}
	// Other tests write to the same filesystem meanwhile: allow some drift.
	if d := int64(c.StorageFreeBytes) - int64(avail); d > 256<<20 || d < -256<<20 {
		t.Errorf("storage free %d, df says %d", c.StorageFreeBytes, avail)
	}
}

func TestCapacityStorageDirErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, dir string }{
		{"missing", filepath.Join(t.TempDir(), "nope")},
		{"a file", file},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{StorageDir: tc.dir}).Capacity()
			if !errors.Is(err, ErrStorageDir) {
				t.Fatalf("err = %v, want ErrStorageDir", err)
			}
			// The rest is still measured: a full disk must not hide the host's CPUs.
			if c.CPUs == 0 || c.MemoryTotalBytes == 0 {
				t.Fatalf("capacity lost with the storage error: %+v", c)
			}
		})
	}
}

func TestVDDKProbe(t *testing.T) {
	for _, tc := range []struct {
		name  string
		probe func(context.Context, string) (bool, string)
		want  bool
	}{
		{"loads", func(_ context.Context, dir string) (bool, string) { return dir == "/opt/vddk", "" }, true},
		{"does not load", func(context.Context, string) (bool, string) { return false, "no lib64/libvixDiskLib.so.8" }, false},
		{"no probe", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(Config{StorageDir: t.TempDir(), LibvirtURI: "test:///default", VDDKLibDir: "/opt/vddk", VDDKProbe: tc.probe})
			c := p.Capabilities(context.Background())
			if c.VDDK != tc.want {
				t.Fatalf("VDDK = %v, want %v", c.VDDK, tc.want)
			}
			if c.QemuImg && hasMethod(c.Methods, "vddk") != tc.want {
				t.Errorf("methods %v", c.Methods)
			}
		})
	}
}

func hasMethod(ms []string, m string) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

func TestMethods(t *testing.T) {
	for _, tc := range []struct {
		name string
		caps proto.AgentCapabilities
		want []string
	}{
		{"nothing", proto.AgentCapabilities{}, nil},
		{"qemu-img only (no nbdkit: the agent reads https itself)", proto.AgentCapabilities{QemuImg: true}, []string{"https", "nfc"}},
		{"debian host", proto.AgentCapabilities{QemuImg: true, Nbdkit: true, NbdkitPlugins: []string{"curl", "ssh"}}, []string{"https", "nfc"}},
		{"vddk host", proto.AgentCapabilities{QemuImg: true, Nbdkit: true, VDDK: true, NbdkitPlugins: []string{"curl"}}, []string{"vddk", "https", "nfc"}},
		{"vddk without nbdkit", proto.AgentCapabilities{QemuImg: true, VDDK: true}, []string{"vddk", "https", "nfc"}},
		{"nbdkit without qemu-img", proto.AgentCapabilities{Nbdkit: true, NbdkitPlugins: []string{"curl"}, VDDK: true}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Methods(tc.caps); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Methods = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCapabilitiesOnThisHost checks the probe against what the host really has, found
// independently with exec.LookPath and the tools' own output.
func TestCapabilitiesOnThisHost(t *testing.T) {
	p := New(Config{StorageDir: t.TempDir(), LibvirtURI: "test:///default"})
	c := p.Capabilities(context.Background())

	_, errQ := exec.LookPath("qemu-img")
	if c.QemuImg != (errQ == nil) {
		t.Fatalf("QemuImg = %v, LookPath err %v", c.QemuImg, errQ)
	}
	if c.QemuImg {
		out, _ := exec.Command("qemu-img", "--version").Output()
		if c.QemuImgVersion == "" || !strings.Contains(string(out), "version "+c.QemuImgVersion) {
			t.Errorf("QemuImgVersion %q not in %q", c.QemuImgVersion, out)
		}
	}
	_, errN := exec.LookPath("nbdkit")
	if c.Nbdkit != (errN == nil) {
		t.Fatalf("Nbdkit = %v, LookPath err %v", c.Nbdkit, errN)
	}
	if c.Nbdkit {
		// The curl plugin is in Debian's main nbdkit package; check it really loads.
		curlLoads := exec.Command("nbdkit", "curl", "--dump-plugin").Run() == nil
		if hasPlugin(c.NbdkitPlugins, "curl") != curlLoads {
			t.Errorf("plugins %v, curl loads: %v", c.NbdkitPlugins, curlLoads)
		}
	}
	_, errC := exec.LookPath("nbdcopy")
	if c.Nbdcopy != (errC == nil) {
		t.Errorf("Nbdcopy = %v, LookPath err %v", c.Nbdcopy, errC)
	}
	if _, err := exec.LookPath("virsh"); err == nil && !c.LibvirtReachable {
		t.Errorf("test:///default needs no daemon, yet reported unreachable")
	}
	if c.LibvirtURI != "test:///default" || !reflect.DeepEqual(c.Methods, Methods(c)) {
		t.Errorf("uri %q methods %v", c.LibvirtURI, c.Methods)
	}
	if b, err := (proto.NodeMeta{Role: proto.RoleAgent, Name: "h", Capabilities: c}).Encode(); err != nil || len(b) > proto.NodeMetaMaxSize {
		t.Errorf("this host's capabilities do not encode: %v (%d bytes)", err, len(b))
	}
	t.Logf("%+v", c)
}

func TestLibvirtReachability(t *testing.T) {
	if _, err := exec.LookPath("virsh"); err != nil {
		t.Skip("virsh not installed")
	}
	for _, tc := range []struct {
		name string
		uri  string
		want bool
	}{
		{"test driver", "test:///default", true},
		{"no daemon behind the socket", "qemu+unix:///system?socket=" + filepath.Join(t.TempDir(), "none.sock"), false},
		{"unknown driver", "nosuchdriver:///", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := New(Config{StorageDir: t.TempDir(), LibvirtURI: tc.uri, CommandTimeout: 10 * time.Second}).Capabilities(context.Background())
			if c.LibvirtReachable != tc.want {
				t.Fatalf("LibvirtReachable = %v, want %v", c.LibvirtReachable, tc.want)
			}
		})
	}
}

// The caller's pinger (a libvirt connection's IsAlive) replaces virsh, runs with a
// deadline, and is cached for LibvirtTTL.
func TestLibvirtPingCaching(t *testing.T) {
	calls := 0
	var fail error
	p := New(Config{StorageDir: t.TempDir(), LibvirtTTL: time.Hour, CommandTimeout: time.Second,
		LibvirtPing: func(ctx context.Context) error {
			calls++
			if _, ok := ctx.Deadline(); !ok {
				t.Error("pinger called without a deadline")
			}
			return fail
		}})
	ctx := context.Background()
	if !p.Capabilities(ctx).LibvirtReachable || !p.Capabilities(ctx).LibvirtReachable || calls != 1 {
		t.Fatalf("calls = %d, want 1 ping within the TTL", calls)
	}
	fail = errors.New("libvirtd gone")
	p.Invalidate()
	if p.Capabilities(ctx).LibvirtReachable || calls != 2 {
		t.Fatalf("after Invalidate: reachable still true or calls = %d", calls)
	}
}

// Tools are cached: removing them from PATH changes nothing until the TTL passes or
// Invalidate is called. The capacity part is read fresh every time.
func TestToolsCached(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	p := New(Config{StorageDir: t.TempDir(), LibvirtPing: func(context.Context) error { return nil }})
	ctx := context.Background()
	if !p.Capabilities(ctx).QemuImg {
		t.Fatal("qemu-img not found")
	}
	t.Setenv("PATH", t.TempDir())
	if !p.Capabilities(ctx).QemuImg {
		t.Fatal("tools re-probed within the TTL")
	}
	p.Invalidate()
	if c := p.Capabilities(ctx); c.QemuImg || c.Nbdkit || c.Methods != nil {
		t.Fatalf("after Invalidate with an empty PATH: %+v", c)
	}
}
