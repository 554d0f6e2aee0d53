package transfer

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"time"
)

// Tool is one host program the transfers drive.
type Tool struct {
	Name    string `json:"name"`
	Path    string `json:"path,omitempty"`
	Version string `json:"version,omitempty"`
	Found   bool   `json:"found"`
}

// Capabilities is what this host can do, as probed by Probe. Agents advertise Methods().
type Capabilities struct {
	QemuImg Tool `json:"qemu_img"`
	QemuNBD Tool `json:"qemu_nbd"`
	Nbdkit  Tool `json:"nbdkit"`
	Nbdcopy Tool `json:"nbdcopy"`
	// NbdkitCurl and NbdkitRetry: the curl plugin and retry filter load.
	NbdkitCurl  bool `json:"nbdkit_curl"`
	NbdkitRetry bool `json:"nbdkit_retry"`
	// VDDK: VMware's VDDK loads from the configured directory (in a reader process, as a
	// transfer would load it); VDDKReason says why not and how to fix it.
	VDDK       bool   `json:"vddk"`
	VDDKReason string `json:"vddk_reason,omitempty"`
	// VDDKLibrary is the library found, VDDKQueryAllocated whether it can skip holes.
	VDDKLibrary        string `json:"vddk_library,omitempty"`
	VDDKQueryAllocated bool   `json:"vddk_query_allocated,omitempty"`
}

var versionRE = regexp.MustCompile(`\d+\.\d+(?:\.\d+)?`)

// Probe inspects the host: which tools exist, their versions, which nbdkit plugins and
// filters load, and whether VDDK (under vddkLibdir) loads.
func (t *Transferer) Probe(ctx context.Context, vddkLibdir string) Capabilities {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var c Capabilities
	c.QemuImg = probeTool(ctx, "qemu-img", t.cfg.QemuImg, "--version")
	c.QemuNBD = probeTool(ctx, "qemu-nbd", t.cfg.QemuNBD, "--version")
	c.Nbdkit = probeTool(ctx, "nbdkit", t.cfg.Nbdkit, "--version")
	c.Nbdcopy = probeTool(ctx, "nbdcopy", "nbdcopy", "--version")
	if c.Nbdkit.Found {
		c.NbdkitCurl = exec.CommandContext(ctx, c.Nbdkit.Path, "curl", "--dump-plugin").Run() == nil
		c.NbdkitRetry = exec.CommandContext(ctx, c.Nbdkit.Path, "--filter=retry", "null", "--dump-plugin").Run() == nil
	}
	v := t.ProbeVDDK(ctx, vddkLibdir)
	c.VDDK, c.VDDKReason, c.VDDKLibrary, c.VDDKQueryAllocated = v.Available, v.Reason, v.Path, v.QueryAllocated
	return c
}

func probeTool(ctx context.Context, name, bin, versionFlag string) Tool {
	tl := Tool{Name: name}
	p, err := exec.LookPath(bin)
	if err != nil {
		return tl
	}
	tl.Path = p
	out, err := exec.CommandContext(ctx, p, versionFlag).Output()
	if err != nil {
		return tl
	}
	tl.Found = true
	tl.Version = versionRE.FindString(string(out))
	return tl
}

// Supports reports whether method can run here, and if not, what is missing.
func (c Capabilities) Supports(method string) (bool, string) {
	switch method {
	case MethodVDDK:
		// The agent reads through VDDK itself and writes like nfc: qcow2 through qemu-nbd.
		switch {
		case !c.VDDK:
			return false, c.VDDKReason
		case !c.QemuImg.Found:
			return false, "qemu-img is not installed (package qemu-utils)"
		case !c.QemuNBD.Found:
			return false, "qemu-nbd is not installed (package qemu-utils)"
		}
		return true, ""
	case MethodHTTPS, MethodNFC:
		// The agent reads both itself; raw output needs nothing more, qcow2 (the default)
		// needs qemu-img create and qemu-nbd.
		switch {
		case !c.QemuImg.Found:
			return false, "qemu-img is not installed (package qemu-utils)"
		case !c.QemuNBD.Found:
			return false, "qemu-nbd is not installed (package qemu-utils)"
		}
		return true, ""
	default:
		return false, fmt.Sprintf("unknown transfer method %q (want auto, vddk, https or nfc)", method)
	}
}

// Methods lists the methods this host supports, best first.
func (c Capabilities) Methods() []string {
	var m []string
	for _, name := range []string{MethodVDDK, MethodHTTPS, MethodNFC} {
		if ok, _ := c.Supports(name); ok {
			m = append(m, name)
		}
	}
	return m
}

// DiskFacts is what the pipeline knows about the source when it picks a method. Zero
// values are the cautious answer (not known to be off, not known to be flat).
type DiskFacts struct {
	// PoweredOff: the VM is off for the whole copy, so its flat files do not change.
	PoweredOff bool
	// AllFlat: every disk is a flat (VMFS/FLAT) extent without a parent, i.e. no
	// snapshot deltas and no sparse/SE-sparse disks.
	AllFlat bool
}

// Pick resolves the method for a job. An explicit method is used if this host supports it,
// otherwise it is an error saying what is missing (ErrVDDKUnavailable for vddk). "auto"
// (or "") picks, in order:
//  1. vddk when VMware's VDDK loads here: it reads a snapshot (consistent even for a
//     running VM) and only the allocated blocks;
//  2. https when the VM is powered off and all its disks are flat: ranged reads of the
//     extents with retries, no server-side export work;
//  3. nfc otherwise: ExportVm works against any vCenter/ESXi and any disk type (the server
//     converts to stream-optimized), at the cost of server-side compression.
func Pick(method string, caps Capabilities, facts DiskFacts) (string, error) {
	switch method {
	case "", MethodAuto:
		if ok, _ := caps.Supports(MethodVDDK); ok {
			return MethodVDDK, nil
		}
		if ok, _ := caps.Supports(MethodHTTPS); ok && facts.PoweredOff && facts.AllFlat {
			return MethodHTTPS, nil
		}
		if ok, reason := caps.Supports(MethodNFC); ok {
			return MethodNFC, nil
		} else {
			return "", fmt.Errorf("%w: no transfer method works here: %s", ErrMethodUnavailable, reason)
		}
	case MethodVDDK:
		if ok, reason := caps.Supports(MethodVDDK); !ok {
			return "", fmt.Errorf("%w: %s", ErrVDDKUnavailable, reason)
		}
		return MethodVDDK, nil
	case MethodHTTPS, MethodNFC:
		if ok, reason := caps.Supports(method); !ok {
			return "", fmt.Errorf("%w: %s: %s", ErrMethodUnavailable, method, reason)
		}
		return method, nil
	default:
		return "", fmt.Errorf("%w: unknown transfer method %q (want auto, vddk, https or nfc)", ErrMethodUnavailable, method)
	}
}
