package harness

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
)

// LibvirtURI is the hypervisor the migration tests define domains on.
const LibvirtURI = "qemu:///system"

// RequireLibvirt skips the test unless virsh reaches a running libvirtd at LibvirtURI and
// qemu-img and nbdkit are installed: the migration tests use the real ones.
func RequireLibvirt(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"virsh", "qemu-img", "qemu-nbd", "nbdkit"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: run `make setup` (scripts/host-setup.sh)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "virsh", "-c", LibvirtURI, "version").CombinedOutput(); err != nil {
		t.Skipf("libvirtd does not answer at %s (start it with `make setup`): %v: %s", LibvirtURI, err, bytes.TrimSpace(out))
	}
}

// Virsh runs virsh against LibvirtURI and returns its stdout.
func Virsh(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-c", LibvirtURI}, args...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// DomainExists reports whether a domain of that name is defined.
func DomainExists(name string) bool {
	_, err := Virsh("domuuid", name)
	return err == nil
}

// CleanupDomain undefines the domain (and its nvram) when the test ends, if it exists.
func CleanupDomain(t testing.TB, name string) {
	t.Cleanup(func() {
		if DomainExists(name) {
			_, _ = Virsh("destroy", name)
			if _, err := Virsh("undefine", "--nvram", name); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
	})
}

// StartSim starts an in-process simulator for a test with VM names unique to the test
// (so domains never collide with other tests or an earlier crashed run) and stops it at
// cleanup.
func StartSim(t testing.TB, cfg vcsim.Config) *vcsim.Sim {
	t.Helper()
	if cfg.NamePrefix == "" {
		cfg.NamePrefix = UniqueName(t) + "-"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := vcsim.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("vcsim.Start: %v", err)
	}
	t.Cleanup(s.Close)
	FixSimDescriptors(t, s)
	return s
}

// UniqueName is a short lowercase name from the test name and the time.
func UniqueName(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, strings.TrimPrefix(t.Name(), "Test"))
	if len(name) > 20 {
		name = name[len(name)-20:]
	}
	return fmt.Sprintf("%s-%x", strings.Trim(name, "-"), time.Now().UnixNano()&0xffffff)
}

// FixSimDescriptors works around the govmomi simulator writing parentCID=00000000 into
// base disk descriptors where ESXi writes ffffffff ("no parent"): as written, a strict
// parser (agent/transfer) takes every simulated disk for a snapshot delta and the https
// method refuses it. A no-op once the simulator writes ESXi's value.
func FixSimDescriptors(t testing.TB, s *vcsim.Sim) {
	t.Helper()
	for _, vm := range s.VMs {
		for _, d := range vm.Disks {
			b, err := os.ReadFile(d.Descriptor)
			if err != nil {
				t.Fatal(err)
			}
			fixed := bytes.Replace(b, []byte("\nparentCID=00000000\n"), []byte("\nparentCID=ffffffff\n"), 1)
			if !bytes.Equal(fixed, b) {
				if err := os.WriteFile(d.Descriptor, fixed, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// Agent is a hypersdk-agent process.
type Agent struct {
	*Proc
	Name       string
	APIAddr    string
	StorageDir string
}

// ArgValue returns the value of --flag in args ("" if absent).
func ArgValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

// StartAgent starts bin/hypersdk-agent against the controllers with fresh loopback
// ports, a storage dir under dir, qemu:///system, fast gossip and guest conversion off by
// default. It returns when the agent serves /health.
func StartAgent(t testing.TB, dir, name string, cs []*Controller, extra ...string) *Agent {
	t.Helper()
	return StartAgentEnv(t, nil, dir, name, cs, extra...)
}

// StartAgentEnv is StartAgent with extra environment entries for the agent (and the
// processes it starts).
func StartAgentEnv(t testing.TB, env []string, dir, name string, cs []*Controller, extra ...string) *Agent {
	t.Helper()
	return startAgent(t, env, dir, name, cs, http.StatusOK, extra...)
}

// StartUnhealthyAgent is StartAgent for an agent a test breaks on purpose (extra flags win
// over the harness's): it waits for /health to answer 503 instead of 200.
func StartUnhealthyAgent(t testing.TB, dir, name string, cs []*Controller, extra ...string) *Agent {
	t.Helper()
	return startAgent(t, nil, dir, name, cs, http.StatusServiceUnavailable, extra...)
}

func startAgent(t testing.TB, env []string, dir, name string, cs []*Controller, health int, extra ...string) *Agent {
	t.Helper()
	var urls, gossip []string
	for _, c := range cs {
		urls = append(urls, c.URL())
		if g := ArgValue(c.Args, "--gossip-addr"); g != "" {
			gossip = append(gossip, g)
		}
	}
	a := &Agent{Name: name, APIAddr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), StorageDir: filepath.Join(dir, name+"-storage")}
	args := []string{"--name", name, "--controllers", strings.Join(urls, ","), "--api-addr", a.APIAddr,
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", FreePort(t)), "--gossip-join", strings.Join(gossip, ","),
		"--fast-gossip", "--libvirt-uri", LibvirtURI, "--storage-dir", a.StorageDir, "--log-level", "info"}
	args = append(append(args, guestArgs()...), extra...)
	// Agents trust the controllers' CA through the system store (the HA guide); for https
	// controllers the harness points Go's store at their CA.
	if len(cs) > 0 && cs[0].CAFile != "" {
		env = append(env[:len(env):len(env)], "SSL_CERT_FILE="+cs[0].CAFile)
	}
	a.Proc = StartWithEnv(t, Bin(t, "hypersdk-agent"), name, dir, env, args...)
	WaitFor(t, 30*time.Second, fmt.Sprintf("agent %s answers /health %d", name, health), func() bool {
		return GetJSON("http://"+a.APIAddr+"/health", nil) == health
	})
	return a
}

// Submit posts a job and returns its id.
func Submit(t testing.TB, c *Controller, def proto.JobDefinition) string {
	t.Helper()
	var out proto.SubmitResponse
	code, err := PostJSON(c.URL()+"/jobs/submit", def, &out)
	if err != nil || code != 201 {
		t.Fatalf("submit: %d %v %+v", code, err, out)
	}
	return out.JobID
}

// Job reads a job (zero Job and false on any error).
func Job(c *Controller, id string) (proto.Job, bool) {
	var j proto.Job
	return j, GetJSON(c.URL()+"/jobs/"+id, &j) == 200
}

// WaitJob polls the job until cond holds and returns it; it fails the test on timeout,
// showing the job's last state.
func WaitJob(t testing.TB, c *Controller, id string, timeout time.Duration, what string, cond func(proto.Job) bool) proto.Job {
	t.Helper()
	var last proto.Job
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if j, ok := Job(c, id); ok {
			last = j
			if cond(j) {
				return j
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	errText := ""
	if last.Error != nil {
		errText = *last.Error
	}
	t.Fatalf("timed out after %s waiting for job %s: %s; last: status=%s attempt=%d agent=%s progress=%+v error=%q",
		timeout, id, what, last.Status, last.Attempt, last.Agent, last.Progress, errText)
	return last
}

// WaitTerminal waits until the job is completed, failed or cancelled.
func WaitTerminal(t testing.TB, c *Controller, id string, timeout time.Duration) proto.Job {
	t.Helper()
	return WaitJob(t, c, id, timeout, "a terminal status", func(j proto.Job) bool { return j.Status.Terminal() })
}

// PeakRSS is the peak resident set size of a process (VmHWM) in bytes.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			_, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM for pid %d", pid)
}
