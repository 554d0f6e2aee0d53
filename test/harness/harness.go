// Package harness starts the real binaries (bin/hypersdk-controller, ...) as processes on
// loopback for tests and benchmarks: free ports, start, SIGKILL, restart, HTTP helpers.
package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/testutil"
)

// BinDir finds the built binaries: $HYPERSDK_BIN, else <repo>/bin.
func BinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("HYPERSDK_BIN"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "bin")
}

// Bin returns the path of a built binary, skipping the test with the fix when missing.
func Bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(BinDir(t), name)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s not built: run `make build` (or `make test`, which builds first)", p)
	}
	return p
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Proc is a started binary whose output goes to a log file.
type Proc struct {
	Name    string
	Args    []string
	Env     []string // added to this process's environment
	bin     string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	mu      sync.Mutex
}

// Start runs bin with args, logging to dir/name.log (appended across restarts).
func Start(t testing.TB, bin, name, dir string, args ...string) *Proc {
	t.Helper()
	return StartWithEnv(t, bin, name, dir, nil, args...)
}

// StartWithEnv is Start with env (KEY=value) added to the process's environment.
func StartWithEnv(t testing.TB, bin, name, dir string, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Name: name, Args: args, Env: env, bin: bin, LogPath: filepath.Join(dir, name+".log")}
	if err := p.start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			if b, err := os.ReadFile(p.LogPath); err == nil {
				t.Logf("---- %s log (last 4 KiB) ----\n%s", name, tail(b, 4096))
			}
		}
	})
	return p
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (p *Proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.Args...)
	cmd.Stdout, cmd.Stderr = f, f
	if len(p.Env) > 0 {
		cmd.Env = append(os.Environ(), p.Env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// Pid is the process id of the current run.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

// Kill SIGKILLs the process (group) and waits for it to be gone.
func (p *Proc) Kill() {
	p.Signal(syscall.SIGKILL)
	p.Wait(10 * time.Second)
}

// Stop sends SIGTERM and waits up to timeout, then SIGKILL.
func (p *Proc) Stop(timeout time.Duration) {
	p.Signal(syscall.SIGTERM)
	if !p.Wait(timeout) {
		p.Kill()
	}
}

// Wait waits for the process to exit; false on timeout.
func (p *Proc) Wait(timeout time.Duration) bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Exited reports whether the current run has ended.
func (p *Proc) Exited() bool { return p.Wait(0) }

// Restart starts the process again with the same arguments (after Kill or exit).
func (p *Proc) Restart(t testing.TB) {
	t.Helper()
	p.Wait(10 * time.Second)
	if err := p.start(); err != nil {
		t.Fatalf("restart %s: %v", p.Name, err)
	}
}

// Controller is a hypersdk-controller process.
type Controller struct {
	*Proc
	ID       string
	APIAddr  string
	RaftAddr string
	DataDir  string
	// CAFile is the CA of an https controller (StartTLSController), "" for http.
	CAFile string
}

// URL is the controller's API base URL.
func (c *Controller) URL() string {
	if c.CAFile != "" {
		return "https://" + c.APIAddr
	}
	return "http://" + c.APIAddr
}

// StartController starts bin/hypersdk-controller with fresh loopback ports.
func StartController(t testing.TB, dir, id string, join []string, extra ...string) *Controller {
	t.Helper()
	return startController(t, dir, id, join, TLSFiles{}, extra...)
}

// StartTLSController is StartController for a controller whose config (a --config in
// extra, see WriteTLSConfig and TLSFiles.APIConfig) serves https with the files' CA.
func StartTLSController(t testing.TB, dir, id string, join []string, files TLSFiles, extra ...string) *Controller {
	t.Helper()
	return startController(t, dir, id, join, files, extra...)
}

func startController(t testing.TB, dir, id string, join []string, files TLSFiles, extra ...string) *Controller {
	t.Helper()
	c := &Controller{
		ID:       id,
		APIAddr:  fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		RaftAddr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		DataDir:  filepath.Join(dir, id),
		CAFile:   files.CAFile,
	}
	args := []string{"--node-id", id, "--data-dir", c.DataDir, "--api-addr", c.APIAddr, "--raft-addr", c.RaftAddr,
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", FreePort(t)), "--log-level", "info",
		// The simulator and the webhook receivers of the tests listen on loopback.
		"--allow-private-targets", "--allow-http-targets",
		// Most tests submit jobs that would not pass pre-flight validation (made-up vCenters,
		// VMs that must fail at the agent); the tests of validation pass --validate-on-submit=true.
		"--validate-on-submit=false"}
	if len(join) > 0 {
		args = append(args, "--join", strings.Join(join, ","))
	}
	args = append(args, extra...)
	c.Proc = Start(t, Bin(t, "hypersdk-controller"), id, dir, args...)
	return c
}

// StartControllers starts n controllers: the first bootstraps, the rest join it. It
// returns when every node reports n voters and a leader.
func StartControllers(t testing.TB, dir string, n int, extra ...string) []*Controller {
	t.Helper()
	return startControllers(t, dir, n, TLSFiles{}, extra...)
}

// StartTLSControllers is StartControllers for controllers whose config (a --config in
// extra) serves https with the files: raft, forwarding and joins then run over mutual TLS.
func StartTLSControllers(t testing.TB, dir string, n int, files TLSFiles, extra ...string) []*Controller {
	t.Helper()
	return startControllers(t, dir, n, files, extra...)
}

func startControllers(t testing.TB, dir string, n int, files TLSFiles, extra ...string) []*Controller {
	t.Helper()
	var cs []*Controller
	for i := 0; i < n; i++ {
		var join []string
		if i > 0 {
			join = []string{cs[0].APIAddr}
		}
		cs = append(cs, startController(t, dir, fmt.Sprintf("c%d", i+1), join, files, extra...))
		if i == 0 {
			WaitFor(t, 20*time.Second, "first controller leads", func() bool {
				var cl ClusterView
				return GetJSON(cs[0].URL()+"/cluster", &cl) == 200 && cl.Leader.ID == cs[0].ID
			})
		}
	}
	WaitFor(t, 30*time.Second, "cluster formed", func() bool {
		for _, c := range cs {
			var cl ClusterView
			if GetJSON(c.URL()+"/cluster", &cl) != 200 || len(cl.Nodes) != n || cl.Leader.APIAddr == "" {
				return false
			}
		}
		return true
	})
	return cs
}

// ClusterView is GET /cluster (the wire type itself: tests read what clients read).
type ClusterView = proto.ClusterStatus

// LeaderOf asks the controllers who leads and returns that one (nil if unknown).
func LeaderOf(cs []*Controller) *Controller {
	for _, c := range cs {
		if c.Exited() {
			continue
		}
		var cl ClusterView
		if GetJSON(c.URL()+"/cluster", &cl) != 200 || cl.Leader.ID == "" {
			continue
		}
		for _, d := range cs {
			if d.ID == cl.Leader.ID && !d.Exited() {
				return d
			}
		}
	}
	return nil
}

// Client is the HTTP client of the harness (short timeouts: a dead node must not stall a test).
// It trusts the harness CA (tls.go).
var Client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128, TLSClientConfig: clientTLS()}}

// GetJSON GETs url into v and returns the status (0 on transport error).
func GetJSON(url string, v any) int {
	resp, err := Client.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if v != nil {
		_ = json.NewDecoder(resp.Body).Decode(v)
	}
	return resp.StatusCode
}

// PostJSON POSTs body (bytes, string or a value to marshal) and decodes the answer into v.
func PostJSON(url string, body any, v any) (int, error) {
	var rd io.Reader
	switch b := body.(type) {
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(j)
	}
	resp, err := Client.Post(url, "application/json", rd)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if v != nil {
		_ = json.NewDecoder(resp.Body).Decode(v)
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	return resp.StatusCode, nil
}

// WaitFor polls cond until it holds or fails the test after timeout (the one
// implementation is testutil.WaitFor; this name saves tests an import).
var WaitFor = testutil.WaitFor

// JobBody is a valid submit body for a VM path.
func JobBody(vmPath string) []byte {
	return []byte(fmt.Sprintf(`{"vm_path":%q,"source":{"type":"vsphere","vcenter_url":"127.0.0.1:1","username":"admin","password":"canary-pw"},"destination":{"type":"kvm"}}`, vmPath))
}

// RSS returns the resident set size of a process in bytes (from /proc).
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb int64
			_, err := fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), "%d kB", &kb)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
