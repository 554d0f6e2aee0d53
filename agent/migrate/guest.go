package migrate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hypersdk/hypersdk/agent/libvirt"
	"github.com/hypersdk/hypersdk/proto"
)

// Guest conversion, as Forklift does it: virt-v2v-in-place reads a libvirt XML of the VM as
// it was on VMware (libvirt.SourceXML), with every disk at its converted path, and rewrites
// the guest in place: VMware Tools out, virtio drivers into the initramfs (Linux) or the
// driver store (Windows, from virtio-win), /etc/fstab and the boot loader's device names
// fixed. It runs before the domain is defined, so a guest it cannot convert leaves nothing
// behind.

// ErrGuestConversion: the guest could not be converted (virt-v2v missing when the job asks
// for it, or virt-v2v failed on this guest). The job's mistake or the guest's: another
// attempt fails the same way.
var ErrGuestConversion = errors.New("guest conversion failed")

// conversion modes of one job
type conversionMode int

const (
	conversionAuto     conversionMode = iota // convert when virt-v2v is installed
	conversionRequired                       // options.guest_conversion: true
	conversionOff                            // options.guest_conversion: false, or the agent's default
)

func modeOf(job *bool, agentDefault string) conversionMode {
	switch {
	case job != nil && *job:
		return conversionRequired
	case job != nil:
		return conversionOff
	case agentDefault == GuestConversionOff:
		return conversionOff
	}
	return conversionAuto
}

// conversionReason is why the guest is not converted, for the device choice's warning.
func conversionReason(c *proto.ConversionResult) string {
	if c == nil {
		return "guest conversion did not run"
	}
	return c.Reason
}

// v2vStep is a virt-v2v progress line: "[  12.3] Inspecting the source".
var v2vStep = regexp.MustCompile(`^\[\s*[0-9.]+\]\s+(.+)$`)

// convertGuest runs virt-v2v-in-place over all the VM's disks, or says why it does not.
func (j *job) convertGuest(ctx context.Context) error {
	mode := modeOf(j.def.Options.GuestConversion, j.p.cfg.GuestConversion)
	windows := isWindows(j.info.GuestID)
	tool, lookErr := exec.LookPath(j.p.cfg.V2VInPlace)
	skip := func(reason string) error {
		j.conversion = &proto.ConversionResult{Reason: reason}
		j.log.Info("guest not converted", "reason", reason)
		return nil
	}
	switch {
	case mode == conversionOff:
		who := "the job"
		if j.def.Options.GuestConversion == nil {
			who = "this agent's default (guest_conversion: off)"
		}
		if j.def.Options.GuestConversion != nil {
			j.rep.Warn("guest_conversion is false: the guest is not converted and gets compatibility devices (sata disks, e1000e NIC)")
		}
		return skip("guest_conversion is off for " + who)
	case lookErr != nil && mode == conversionRequired:
		return fmt.Errorf("%w: options.guest_conversion is true but virt-v2v-in-place is not installed on this agent (%v); "+
			"install it (apt install virt-v2v libguestfs-tools linux-image-amd64) or set guest_conversion: false to migrate without converting",
			ErrGuestConversion, lookErr)
	case lookErr != nil:
		w := "virt-v2v-in-place is not installed on this agent: the guest is not converted (install virt-v2v to convert guests)"
		j.rep.Warn(w)
		return skip("virt-v2v-in-place is not installed on this agent")
	case windows && !dirExists(j.p.cfg.VirtioWin):
		reason := "no virtio-win drivers on this agent (" + j.p.cfg.VirtioWin + ")"
		if mode == conversionRequired {
			return fmt.Errorf("%w: a Windows guest needs the virtio-win drivers, and %s does not exist on this agent; install virtio-win there, or set guest_conversion: false",
				ErrGuestConversion, j.p.cfg.VirtioWin)
		}
		return skip(reason)
	}

	accel := "kvm"
	var virtReason string
	if j.p.virt != nil {
		v, err := j.p.virt.Wait(ctx)
		if err != nil {
			return err
		}
		if !v.LibguestfsKVM {
			accel, virtReason = "tcg", v.Reason
		}
	}
	j.stage(proto.StageGuestConversion, fmt.Sprintf("converting the guest with virt-v2v-in-place (libguestfs under %s)", strings.ToUpper(accel)))
	if accel == "tcg" {
		j.rep.Warn("virt-v2v runs under TCG on this agent (libguestfs cannot use KVM here: " + virtReason + "): a guest conversion takes many minutes")
	}

	xml, err := libvirt.SourceXML(j.spec())
	if err != nil {
		return err
	}
	j.warmImagesConverting()
	xmlPath := filepath.Join(j.dir, "v2v-source.xml")
	if err := os.WriteFile(xmlPath, []byte(xml), 0o600); err != nil {
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	logPath := filepath.Join(j.dir, "virt-v2v.log")
	start := time.Now()
	steps, tail, err := j.runV2V(ctx, tool, xmlPath, logPath, accel, windows)
	secs := time.Since(start).Seconds()
	if err != nil {
		if cerr := errCancelled(ctx, "guest conversion"); cerr != nil {
			return cerr
		}
		return fmt.Errorf("%w: virt-v2v-in-place %v after %.0f s; its last lines:\n%s", ErrGuestConversion, err, secs, strings.Join(tail, "\n"))
	}
	j.conversion = &proto.ConversionResult{Converted: true, Tool: j.p.v2vVersion(ctx, tool), Accel: accel,
		Seconds: secs, Steps: steps}
	j.log.Info("guest converted", "tool", j.conversion.Tool, "accel", accel, "seconds", fmt.Sprintf("%.0f", secs), "log", logPath)
	return nil
}

// runV2V runs virt-v2v-in-place in its own process group (it starts qemu for libguestfs's
// appliance, which a cancel must stop too), logs everything to logPath, reports its progress
// lines as the job's message, and returns them with the output's last lines.
func (j *job) runV2V(ctx context.Context, tool, xmlPath, logPath, accel string, windows bool) (steps, tail []string, err error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrStorage, err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, tool, "-i", "libvirtxml", xmlPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LIBGUESTFS_BACKEND=direct")
	if accel == "tcg" {
		cmd.Env = append(cmd.Env, "LIBGUESTFS_BACKEND_SETTINGS=force_tcg")
	}
	if windows {
		cmd.Env = append(cmd.Env, "VIRTIO_WIN="+j.p.cfg.VirtioWin)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	j.log.Info("running virt-v2v-in-place", "argv", strings.Join(cmd.Args, " "), "accel", accel, "log", logPath)
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, nil, fmt.Errorf("%w: starting %s: %v", ErrGuestConversion, tool, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), " \r")
			fmt.Fprintln(logf, line)
			if strings.TrimSpace(line) == "" {
				continue
			}
			tail = append(tail, line)
			if len(tail) > 12 {
				tail = tail[len(tail)-12:]
			}
			if m := v2vStep.FindStringSubmatch(line); m != nil {
				steps = append(steps, m[1])
				j.report(proto.Progress{Stage: proto.StageGuestConversion, Message: "virt-v2v: " + m[1]})
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err = cmd.Wait()
	pw.Close()
	wg.Wait()
	return steps, tail, err
}

// v2vVersion is "virt-v2v-in-place 2.2.0", asked once per agent.
func (p *Pipeline) v2vVersion(ctx context.Context, tool string) string {
	p.v2vOnce.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, tool, "--version").Output()
		p.v2vVer = strings.TrimSpace(string(out))
		if err != nil || p.v2vVer == "" {
			p.v2vVer = filepath.Base(tool)
		}
	})
	return p.v2vVer
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
