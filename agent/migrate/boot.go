package migrate

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/agent/libvirt"
	"github.com/hypersdk/hypersdk/proto"
)

// The boot check: the migration is done when the VM runs. The agent starts the domain with
// its serial console attached, reads what the guest prints, and waits for the login prompt
// (a getty on the serial console, which Linux guests with console=ttyS0 have: "hsxguest
// login:"). "The domain started" proves nothing: a guest without a driver for its disk bus
// starts and then waits for its root device forever, and on some hosts an ordinary kernel
// starts and hangs in its first instructions.

// ErrBootCheck: the guest did not come up. Another attempt would boot the same disks the
// same way, so it is not retried; the domain is kept for the operator.
var ErrBootCheck = errors.New("boot check failed")

type bootState int

const (
	booting bootState = iota
	bootUp
	bootFailed
)

// loginPrompt is a getty's prompt: "<hostname> login: ".
var loginPrompt = regexp.MustCompile(`^\S+ login:\s*$`)

// bootFailures are console lines after which a guest will not come up by itself.
var bootFailures = []struct{ marker, what string }{
	{"Kernel panic - not syncing", "the kernel panicked"},
	{"Gave up waiting for root file system device", "the initramfs did not find the root disk (no driver for its bus?)"},
	{"ALERT!", "the initramfs did not find the root disk (no driver for its bus?)"},
	{"You are in emergency mode", "systemd entered emergency mode"},
	{"Give root password for maintenance", "systemd entered emergency mode"},
	{"No bootable device", "the firmware found no bootable disk"},
}

// bootVerdict reads a console: up (with the prompt line as evidence), failed (with what
// happened), or still booting.
func bootVerdict(text string) (bootState, string) {
	lines := libvirt.Tail(text, 400)
	// The newest line decides, except that the initramfs shell's prompt sends the search
	// back for the reason it was dropped there.
	shell := false
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if loginPrompt.MatchString(l) {
			if shell {
				break
			}
			return bootUp, l
		}
		for _, f := range bootFailures {
			if strings.Contains(l, f.marker) {
				return bootFailed, f.what
			}
		}
		if strings.HasPrefix(l, "(initramfs)") {
			shell = true
		}
	}
	if shell {
		return bootFailed, "the guest dropped to the initramfs shell"
	}
	return booting, ""
}

// bootCheck starts the defined domain and waits for its login prompt. Afterwards the domain
// is shut down unless the job asked to leave it running. A guest that does not come up fails
// the job with the console's last lines, and its domain and disks are kept.
func (j *job) bootCheck(ctx context.Context) (*proto.BootResult, error) {
	opts := j.def.Options
	timeout := time.Duration(opts.BootTimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = proto.DefaultBootTimeoutSeconds * time.Second
	}
	name := j.domain.name
	j.stage(proto.StageBootCheck, fmt.Sprintf("starting %s and waiting up to %s for its login prompt on the serial console", name, timeout))
	conn, err := libvirt.Connect(ctx, j.p.cfg.LibvirtURI)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	logPath := ""
	if j.p.virt != nil {
		logPath = j.consoleLog()
	}
	// From here on the domain is the operator's evidence: a failure keeps it.
	j.keep = true
	console, err := libvirt.StartWithConsole(ctx, conn, name)
	if err != nil {
		return nil, fmt.Errorf("%w: %v; domain %s is kept with its disks (%s): fix the host and start it with virsh start %s",
			ErrBootCheck, err, name, j.dir, name)
	}
	// Closed before the domain is stopped, and in any case: libvirtd does not finish
	// destroying a domain while a client still holds its console stream open.
	defer console.Close()
	start := time.Now()

	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	state, evidence := booting, ""
	lastReport := time.Time{}
	_ = console.Wait(bctx, func(text string, ended bool) bool {
		state, evidence = bootVerdict(text)
		if state == booting && ended {
			state, evidence = bootFailed, "the domain stopped before the guest was up"
		}
		if state == booting && time.Since(lastReport) > 5*time.Second {
			lastReport = time.Now()
			if t := libvirt.Tail(text, 1); len(t) > 0 {
				j.report(proto.Progress{Stage: proto.StageBootCheck, Message: "console: " + shortLine(t[0])})
			}
		}
		return state != booting
	})
	secs := time.Since(start).Seconds()
	if err := ctx.Err(); err != nil {
		j.keep = false // cancelled: the attempt's domain goes like everything else it made
		return nil, errCancelled(ctx, "boot check")
	}
	if state == bootFailed {
		// The guest is still printing why (the initramfs's advice, the kernel's trace):
		// let it finish so the error shows the whole story.
		settle(ctx, console, 2*time.Second, 15*time.Second)
	}
	text, _ := console.Text()
	console.Close()
	if state != bootUp {
		what := fmt.Sprintf("%s (after %.0f s)", evidence, secs)
		if state == booting {
			what = fmt.Sprintf("no login prompt within %s", timeout)
		}
		kept := "stopped"
		if opts.StartAfter {
			kept = "running (start_after)"
		} else if err := libvirt.Stop(conn, name); err != nil {
			kept = "running (could not stop it: " + err.Error() + ")"
		}
		tail := libvirt.Tail(text, 15)
		if len(tail) == 0 {
			tail = []string{"(nothing: the guest printed no output on its serial console)"}
		}
		where := ""
		if logPath != "" {
			where = ", console log " + logPath
		}
		j.log.Warn("boot check failed", "domain", name, "what", what, "seconds", fmt.Sprintf("%.0f", secs))
		return nil, fmt.Errorf("%w: %s; domain %s is kept (%s) with its disks in %s for you to look at: virsh start %s; virsh console %s%s; last console lines:\n%s",
			ErrBootCheck, what, name, kept, j.dir, name, name, where, strings.Join(tail, "\n"))
	}
	j.keep = false
	res := &proto.BootResult{OK: true, Seconds: roundTenth(secs), Evidence: evidence, ConsoleLog: logPath}
	j.log.Info("guest booted", "domain", name, "seconds", fmt.Sprintf("%.1f", secs), "evidence", evidence)
	if !opts.StartAfter {
		j.report(proto.Progress{Stage: proto.StageBootCheck, Message: fmt.Sprintf("guest up after %.0f s (%q); shutting it down", secs, evidence)})
		graceful, err := libvirt.Shutdown(ctx, conn, name, j.p.cfg.BootShutdownTimeout)
		switch {
		case err != nil:
			j.rep.Warn("the boot check's guest could not be shut down: " + err.Error())
		case !graceful:
			j.rep.Warn(fmt.Sprintf("the guest did not shut down within %s after the boot check; it was powered off", j.p.cfg.BootShutdownTimeout))
		}
	}
	return res, nil
}

// settle waits until the console has been quiet for quiet, or max has passed.
func settle(ctx context.Context, c *libvirt.Console, quiet, max time.Duration) {
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	for {
		idle := time.NewTimer(quiet)
		select {
		case <-c.Changed():
			idle.Stop()
			if _, ended := c.Text(); !ended {
				continue
			}
		case <-idle.C:
		case <-deadline.C:
			idle.Stop()
		case <-ctx.Done():
			idle.Stop()
		}
		return
	}
}

func roundTenth(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

func shortLine(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}
