package transfer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a host tool run by a transfer. Every child gets its own process group so that
// cancelling kills it together with anything it spawned (nbdkit --run, header scripts), and
// a parent-death signal so an agent killed with SIGKILL does not leave qemu-img or qemu-nbd
// writing into a file nobody will clean up (nbdkit gets --exit-with-parent as well).
type child struct {
	name   string
	cmd    *exec.Cmd
	stderr *tailBuffer
	done   chan struct{}
	err    error // valid after done is closed
}

// startChild starts argv. When ctx ends the whole process group is killed; the caller still
// calls wait (or reads done) to reap it. opts adjust the command before it starts (extra
// files, environment).
func startChild(ctx context.Context, log *slog.Logger, name string, argv []string, stdout io.Writer, opts ...func(*exec.Cmd)) (*child, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		// Negative pid: the whole group. SIGKILL because the output is discarded anyway
		// and a tool stuck in a network read must not delay the cancel.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	// Bound how long Wait waits for output pipes after the process is gone (a grandchild
	// that escaped the group could hold them open).
	cmd.WaitDelay = 5 * time.Second
	c := &child{name: name, cmd: cmd, stderr: &tailBuffer{max: 8 << 10}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	cmd.Stdout = stdout
	if stdout == nil {
		cmd.Stdout = c.stderr
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C") // messages we match on are the C locale's
	for _, o := range opts {
		o(cmd)
	}
	if err := spawn(cmd); err != nil {
		return nil, fmt.Errorf("%w: starting %s: %v", ErrTool, name, err)
	}
	log.Debug("started", "tool", name, "pid", cmd.Process.Pid, "argv", strings.Join(argv, " "))
	go func() {
		c.err = cmd.Wait()
		// The group may still hold children of the tool (none expected); make sure.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		close(c.done)
	}()
	return c, nil
}

// The parent-death signal fires when the *thread* that forked the child exits, not the
// process. Go may end a thread whose goroutine exits while locked to it, which would kill a
// healthy transfer. So every child is forked from one goroutine locked to a thread that
// lives as long as the process.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread must not be reused or end
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnReqs <- spawnReq{cmd, done}
	return <-done
}

// wait reaps the child and returns its exit error.
func (c *child) wait() error {
	<-c.done
	return c.err
}

// stop kills the group and reaps it; used for servers (nbdkit, qemu-nbd) once their client
// is done with them.
func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.done
}

// exited reports whether the child has already ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// tailBuffer keeps the last max bytes written: enough for a tool's final error message
// without letting a chatty tool grow memory. It keeps the first bytes too (Head), where a
// crashing Go process names the signal before pages of registers and stacks.
type tailBuffer struct {
	mu   sync.Mutex
	max  int
	b    []byte
	head []byte
}

// headMax is how much of the start of the output Head keeps.
const headMax = 512

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := headMax - len(t.head); n > 0 {
		t.head = append(t.head, p[:min(n, len(p))]...)
	}
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

// Head is the start of the output.
func (t *tailBuffer) Head() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.head)
}
