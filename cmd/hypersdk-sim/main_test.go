package main

import (
	"bufio"
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// binary builds hypersdk-sim once per test run: the tests exercise the real program.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hypersdk-sim-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "hypersdk-sim")
		buildOut, buildErr = exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// output is what the program printed on stdout, parsed.
type output struct {
	url        *url.URL
	datastores map[string]string // name → dir
	vms        []string
	disks      map[string]int64 // flat path → capacity
}

// startProgram runs the binary and reads its stdout until "ready=true".
func startProgram(t *testing.T, env []string, args ...string) (*exec.Cmd, output) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	out := output{datastores: map[string]string{}, disks: map[string]int64{}}
	deadline := time.After(30 * time.Second)
	for first := true; ; first = false {
		var line string
		var ok bool
		select {
		case line, ok = <-lines:
		case <-deadline:
			t.Fatalf("no ready line within 30 s; stderr:\n%s", stderr.String())
		}
		if !ok {
			_ = cmd.Wait()
			t.Fatalf("program exited before ready: %v; stderr:\n%s", cmd.ProcessState, stderr.String())
		}
		kv := parseLine(line)
		if first && kv["url"] == "" {
			t.Fatalf("first line %q is not url=…", line)
		}
		switch {
		case kv["url"] != "":
			if out.url, err = url.Parse(kv["url"]); err != nil {
				t.Fatal(err)
			}
			if out.url.User != nil {
				t.Errorf("url %s carries credentials", out.url)
			}
		case kv["datastore"] != "":
			out.datastores[kv["datastore"]] = kv["path"]
		case kv["vm"] != "" && kv["moref"] != "":
			out.vms = append(out.vms, kv["vm"])
		case kv["disk"] != "":
			n, err := strconv.ParseInt(kv["capacity"], 10, 64)
			if err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			out.disks[kv["disk"]] = n
		case kv["ready"] == "true":
			return cmd, out
		}
	}
}

func parseLine(line string) map[string]string {
	kv := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

func TestProgram(t *testing.T) {
	t.Parallel()
	cmd, out := startProgram(t, []string{"HYPERSDK_SIM_PASSWORD=s3cret"},
		"--listen", "127.0.0.1:0", "--vms", "2", "--disks-per-vm", "2", "--disk-size", "4M",
		"--fill", "random:0.5", "--username", "admin", "--seed", "3")

	if len(out.vms) != 2 || out.vms[0] != "/DC0/vm/vm-1" || out.vms[1] != "/DC0/vm/vm-2" {
		t.Errorf("vms %v, want /DC0/vm/vm-1 and vm-2", out.vms)
	}
	dsDir, ok := out.datastores["LocalDS_0"]
	if !ok {
		t.Fatalf("no datastore=LocalDS_0 line: %v", out.datastores)
	}
	if len(out.disks) != 4 {
		t.Errorf("%d disk lines, want 4", len(out.disks))
	}
	for flat, capacity := range out.disks {
		fi, err := os.Stat(flat)
		if err != nil || fi.Size() != 4<<20 || capacity != 4<<20 || !strings.HasPrefix(flat, dsDir) {
			t.Errorf("disk %s: %v, size %d, capacity %d", flat, err, fi.Size(), capacity)
		}
	}

	// The SDK takes exactly the configured credentials.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u := *out.url
	u.User = url.UserPassword("admin", "wrong")
	if _, err := govmomi.NewClient(ctx, &u, true); err == nil {
		t.Error("a wrong password logged in")
	}
	u.User = url.UserPassword("admin", "s3cret")
	c, err := govmomi.NewClient(ctx, &u, true)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	vm, err := find.NewFinder(c.Client).VirtualMachine(ctx, "/DC0/vm/vm-2")
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := vm.PowerState(ctx); st != "poweredOff" {
		t.Errorf("vm-2 is %s without --power-on", st)
	}
	_ = c.Logout(ctx)

	// SIGTERM stops it cleanly and removes the datastores.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit within 15 s of SIGTERM")
	}
	if _, err := os.Stat(dsDir); !os.IsNotExist(err) {
		t.Errorf("datastore dir %s left behind: %v", dsDir, err)
	}
}

func TestProgramRejectsBadFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--disk-size", "1.5G"}, "size"},
		{[]string{"--disk-size", "1000K"}, "multiple of 1 MiB"},
		{[]string{"--fill", "random:2"}, "fraction"},
		{[]string{"--username", "admin"}, "username and password"},
		{[]string{"--firmware", "coreboot"}, "firmware"},
		{[]string{"--write-rate", "-1"}, "write rate"},
		{[]string{"--bogus"}, "flag provided but not defined"},
		{[]string{"extra"}, "unexpected argument"},
	}
	for _, tc := range tests {
		cmd := exec.Command(binary(t), append([]string{"--listen", "127.0.0.1:0"}, tc.args...)...)
		cmd.Env = append(os.Environ(), "HYPERSDK_SIM_PASSWORD=")
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2", tc.args, err)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: output %q does not say %q", tc.args, out, tc.want)
		}
	}
}

// TestProgramShapes: --shapes FILE adds the VMs it describes, after the numbered ones, and
// vSphere reports what they were given.
func TestProgramShapes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	shapes := filepath.Join(dir, "shapes.yaml")
	if err := os.WriteFile(shapes, []byte("vms:\n  - {name: db-rdm, rdm: true}\n  - {name: web-snap, snapshots: 1, power_on: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, out := startProgram(t, nil, "--listen", "127.0.0.1:0", "--vms", "1", "--disk-size", "4M", "--shapes", shapes)
	if len(out.vms) != 3 || out.vms[1] != "/DC0/vm/db-rdm" || out.vms[2] != "/DC0/vm/web-snap" {
		t.Fatalf("vms %v", out.vms)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u := *out.url
	u.User = url.UserPassword("user", "pass")
	c, err := govmomi.NewClient(ctx, &u, true)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer c.Logout(ctx)
	f := find.NewFinder(c.Client)
	web, err := f.VirtualMachine(ctx, "/DC0/vm/web-snap")
	if err != nil {
		t.Fatal(err)
	}
	var mweb mo.VirtualMachine
	if err := web.Properties(ctx, web.Reference(), []string{"snapshot", "runtime.powerState"}, &mweb); err != nil {
		t.Fatal(err)
	}
	if mweb.Snapshot == nil || len(mweb.Snapshot.RootSnapshotList) != 1 || mweb.Runtime.PowerState != "poweredOn" {
		t.Errorf("web-snap: snapshot %+v, power %s", mweb.Snapshot, mweb.Runtime.PowerState)
	}
	db, err := f.VirtualMachine(ctx, "/DC0/vm/db-rdm")
	if err != nil {
		t.Fatal(err)
	}
	devs, err := db.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	disks := devs.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 1 {
		t.Fatalf("db-rdm has %d disks", len(disks))
	}
	if _, ok := disks[0].(*types.VirtualDisk).Backing.(*types.VirtualDiskRawDiskMappingVer1BackingInfo); !ok {
		t.Errorf("db-rdm disk backing %T, want an RDM", disks[0].(*types.VirtualDisk).Backing)
	}

	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("vms:\n  - {name: x, bogus: true}\n"), 0o600)
	cmd := exec.Command(binary(t), "--listen", "127.0.0.1:0", "--shapes", bad)
	o, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(o), "bogus") {
		t.Errorf("bad shapes file: %v %s", err, o)
	}
}
