package transfer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// VDDKSource is a disk read through VMware's VDDK (nbdkit's vddk plugin): the fastest and
// the only snapshot-consistent method for running VMs, where the host has VDDK installed.
type VDDKSource struct {
	Server     string // vCenter or ESXi host name or address
	Port       int    // 0: VDDK's default (443)
	User       string
	Password   string // secret: handed to nbdkit in a 0600 file (password=+FILE)
	Thumbprint string // the server's SHA-1 thumbprint (VDDK requires it for TLS)
	VMMoref    string // e.g. "vm-123"
	File       string // the disk's backing file, e.g. "[datastore1] vm1/vm1.vmdk"
	Snapshot   string // snapshot moref, e.g. "snapshot-5" (consistent reads of a running VM)
	Libdir     string // VDDK install dir (the one holding lib64/)
	Transports string // optional VDDK transport order, e.g. "nbdssl:nbd"
	// CapacityBytes is the disk size if known (progress needs it before the copy starts);
	// 0 asks the NBD server.
	CapacityBytes int64
}

// VDDKAvailable reports whether this host can use the vddk method: nbdkit's vddk plugin must
// load and libdir must hold VMware's libvixDiskLib. When not, reason says what is missing
// and how to fix it.
func VDDKAvailable(libdir string) (bool, string) {
	return vddkAvailable(context.Background(), "nbdkit", libdir)
}

func vddkAvailable(ctx context.Context, nbdkit, libdir string) (bool, string) {
	var missing []string
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := exec.LookPath(nbdkit); err != nil {
		missing = append(missing, "nbdkit is not installed")
	} else {
		args := []string{"vddk", "--dump-plugin"}
		if libdir != "" {
			args = []string{"vddk", "libdir=" + libdir, "--dump-plugin"}
		}
		out, err := exec.CommandContext(ctx, nbdkit, args...).CombinedOutput()
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if strings.Contains(msg, "cannot open plugin") {
				msg = "nbdkit's vddk plugin (nbdkit-vddk-plugin.so) is not installed; Debian does not ship it, it comes with nbdkit built with VDDK support (e.g. Fedora/RHEL nbdkit-vddk-plugin)"
			} else {
				// First line: nbdkit's error; later lines are usage hints.
				first, _, _ := strings.Cut(msg, "\n")
				msg = "nbdkit's vddk plugin does not load: " + first
			}
			missing = append(missing, msg)
		}
	}
	if libdir == "" {
		missing = append(missing, "no VDDK libdir configured (the directory where VMware's Virtual Disk Development Kit is unpacked)")
	} else if libs, _ := filepath.Glob(filepath.Join(libdir, "lib64", "libvixDiskLib.so*")); len(libs) == 0 {
		missing = append(missing, fmt.Sprintf("VMware VDDK not found: %s has no lib64/libvixDiskLib.so* (download VDDK from VMware and unpack it there)", libdir))
	}
	if len(missing) > 0 {
		return false, strings.Join(missing, "; ")
	}
	return true, ""
}

// vddkArgs are nbdkit's plugin arguments for src (after nbdkit's own flags). The password is
// never among them: passwordFile holds it.
func vddkArgs(src VDDKSource, passwordFile string) ([]string, error) {
	switch {
	case src.Server == "" || src.User == "" || src.VMMoref == "" || src.File == "":
		return nil, errors.New("vddk source needs server, user, vm moref and file")
	case src.Thumbprint == "":
		return nil, errors.New("vddk source needs the server's thumbprint (VDDK verifies TLS by thumbprint)")
	}
	argv := []string{"--filter=retry", "vddk",
		"server=" + src.Server,
		"user=" + src.User,
		"password=+" + passwordFile,
		"thumbprint=" + src.Thumbprint,
		"vm=moref=" + src.VMMoref,
		"file=" + src.File,
	}
	if src.Port > 0 {
		argv = append(argv, "port="+strconv.Itoa(src.Port))
	}
	if src.Snapshot != "" {
		argv = append(argv, "snapshot="+src.Snapshot)
	}
	if src.Libdir != "" {
		argv = append(argv, "libdir="+src.Libdir)
	}
	if src.Transports != "" {
		argv = append(argv, "transports="+src.Transports)
	}
	return argv, nil
}

// VDDK copies a disk with `nbdkit vddk` (retry filter, read-only, private Unix socket) into
// `qemu-img convert`, like the https method. On a host without the plugin or VDDK it fails
// with ErrVDDKUnavailable saying what is missing.
func (t *Transferer) VDDK(ctx context.Context, src VDDKSource, out Output) (*Result, error) {
	start := time.Now()
	format, err := out.validate()
	if err != nil {
		return nil, err
	}
	if ok, reason := vddkAvailable(ctx, t.cfg.Nbdkit, src.Libdir); !ok {
		return nil, fmt.Errorf("%w: %s", ErrVDDKUnavailable, reason)
	}
	log := t.log.With("method", MethodVDDK, "disk", labelOr(out.Label, src.File), "output", out.Path)
	dir, err := t.privateDir()
	if err != nil {
		return nil, err
	}
	defer removeAll(dir)
	pw, err := writeSecret(dir, "password", src.Password)
	if err != nil {
		return nil, err
	}
	args, err := vddkArgs(src, pw)
	if err != nil {
		return nil, err
	}
	args = append(args, "retries="+strconv.Itoa(t.cfg.Retries),
		"retry-delay="+strconv.Itoa(max(1, int(t.cfg.RetryDelay.Round(time.Second).Seconds()))))
	sock, pid := filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "nbd.pid")
	argv := append([]string{t.cfg.Nbdkit, "-r", "-f", "--exit-with-parent", "-U", sock, "-P", pid}, args...)
	srv, err := startChild(ctx, log, "nbdkit", argv, nil)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	secrets := []string{src.Password}
	if err := waitForFile(ctx, srv, pid, t.cfg.ReadyTimeout); err != nil {
		if cerr := ctxErr(ctx, "transfer"); cerr != nil {
			return nil, cerr
		}
		return nil, fmt.Errorf("%w: nbdkit vddk: %s", ErrSource, redact(err.Error(), secrets))
	}
	_ = os.Remove(pw) // read during configuration; do not leave a password on disk
	size := src.CapacityBytes
	if size <= 0 {
		if size, err = nbdExportSize(ctx, srv, sock, t.cfg.ReadyTimeout); err != nil {
			return nil, fmt.Errorf("%w: nbdkit vddk: %s", ErrSource, redact(err.Error(), secrets))
		}
	}
	tracker := newProgressTracker(out.Progress, size, t.cfg.ProgressInterval, out.Label)
	if err := t.convert(ctx, log, []string{"nbd+unix:///?socket=" + sock}, []*child{srv}, []string{src.File},
		size, format, out.Path, secrets, tracker); err != nil {
		return nil, err
	}
	return &Result{
		Method: MethodVDDK, Path: out.Path, Format: format, VirtualSize: size,
		AllocatedBytes: allocated(out.Path), SourceBytes: size, Duration: time.Since(start),
	}, nil
}
