package migrate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// connect logs in to the vCenter and reads the VM.
func (j *job) connect(ctx context.Context) error {
	src := j.def.Source
	j.stage(proto.StageConnecting, "connecting to "+hostOf(src.VCenterURL))
	c, err := vsphere.Connect(ctx, vsphere.Config{
		URL: src.VCenterURL, Username: src.Username, Password: src.Password,
		Insecure: src.Insecure, Thumbprint: src.Thumbprint, Datacenter: src.Datacenter,
		Logger: j.log,
	})
	if err != nil {
		if cerr := errCancelled(ctx, "connect"); cerr != nil {
			return cerr
		}
		return err
	}
	j.client = c
	j.vm, err = c.FindVM(ctx, j.def.VMPath)
	if err != nil {
		return err
	}
	j.info, err = c.VMInfo(ctx, j.vm)
	if err != nil {
		return err
	}
	if len(j.info.Disks) == 0 {
		return fmt.Errorf("%w: %s has no virtual disks", ErrUnsupportedVM, j.vm.Path)
	}
	j.log.Info("source VM found", "moref", j.info.Moref, "power", j.info.PowerState, "cpus", j.info.NumCPU,
		"memory_mb", j.info.MemoryMB, "firmware", j.info.Firmware, "disks", len(j.info.Disks), "nics", len(j.info.NICs))
	return nil
}

// prepare brings the VM into the state the copy needs: powered off (only as the job's
// options allow), CD-ROMs removed if asked, and a snapshot for methods that read one. It
// also picks the transfer method and checks the domain name is free for this job, so a
// collision fails in seconds instead of after the copy.
func (j *job) prepare(ctx context.Context) error {
	opts := j.def.Options
	j.stage(proto.StagePreparing, "preparing "+j.info.Name)

	if err := j.powerOff(ctx); err != nil {
		return err
	}
	if opts.RemoveCDROM {
		n, err := j.client.RemoveCDROMs(ctx, j.vm)
		if err != nil {
			return err
		}
		if n > 0 {
			j.log.Info("CD-ROMs removed from the source VM", "count", n)
		}
	}

	allFlat := true
	for _, d := range j.info.Disks {
		if d.Backing != "flat" || d.HasParent {
			allFlat = false
		}
	}
	method, err := transfer.Pick(opts.ConversionMethod, j.p.capabilities(ctx), transfer.DiskFacts{PoweredOff: true, AllFlat: allFlat})
	if err != nil {
		return err
	}
	if method == transfer.MethodHTTPS && !allFlat {
		return fmt.Errorf("%w: the https method reads flat disks only and %s has %s; use conversion_method nfc (or auto)",
			ErrUnsupportedVM, j.info.Name, describeDisks(j.info.Disks))
	}
	j.method = method
	j.log.Info("transfer method chosen", "method", method, "asked", orUnknown(opts.ConversionMethod), "all_flat", allFlat)

	if err := j.p.domains.checkFree(ctx, j.info.Name, j.lease.JobID); err != nil {
		return err
	}

	if method == transfer.MethodVDDK {
		// VDDK reads the disks at a snapshot so that what it copies is one point in time;
		// cleanup removes it whatever happens next.
		snap, err := j.client.CreateSnapshot(ctx, j.vm, "hypersdk-"+j.lease.JobID,
			fmt.Sprintf("HyperSDK migration job %s attempt %d; removed when the copy ends", j.lease.JobID, j.lease.Attempt))
		if err != nil {
			return err
		}
		j.snapshot = snap
	}
	return ctx.Err()
}

// powerOff applies options.shutdown / power_off to a running VM.
func (j *job) powerOff(ctx context.Context) error {
	opts := j.def.Options
	st, err := j.client.PowerState(ctx, j.vm)
	if err != nil {
		return err
	}
	if st == types.VirtualMachinePowerStatePoweredOff {
		return nil
	}
	if !opts.Shutdown && !opts.PowerOff {
		return fmt.Errorf("%w: %s is %s; set options.shutdown: true to shut the guest down (with shutdown_timeout_seconds), "+
			"options.power_off: true to power it off, or both (power off after the shutdown timeout), or power it off yourself",
			ErrPoweredOn, j.info.Name, st)
	}
	if opts.Shutdown && st == types.VirtualMachinePowerStatePoweredOn {
		timeout := j.p.cfg.ShutdownTimeout
		if opts.ShutdownTimeoutSeconds > 0 {
			timeout = time.Duration(opts.ShutdownTimeoutSeconds) * time.Second
		}
		j.report(proto.Progress{Stage: proto.StagePreparing, Message: fmt.Sprintf("shutting down the guest of %s (up to %s)", j.info.Name, timeout)})
		err := j.client.Shutdown(ctx, j.vm, timeout)
		switch {
		case err == nil:
			j.log.Info("guest shut down")
			return nil
		case errors.Is(err, vsphere.ErrShutdownTimeout) && opts.PowerOff:
			j.log.Warn("guest did not shut down in time: powering off", "timeout", timeout)
			j.rep.Warn(fmt.Sprintf("the guest of %s did not shut down within %s; it was powered off", j.info.Name, timeout))
		case errors.Is(err, vsphere.ErrShutdownTimeout):
			return fmt.Errorf("%w; set options.power_off: true to power it off after the timeout, or raise shutdown_timeout_seconds", err)
		case !opts.PowerOff:
			return err
		default:
			// No VMware Tools, or a suspended VM: the guest cannot shut itself down; the
			// job allows a hard power off.
			j.log.Warn("guest shutdown failed: powering off", "err", err)
			j.rep.Warn(fmt.Sprintf("guest shutdown of %s failed (%v); it was powered off", j.info.Name, err))
		}
	}
	j.report(proto.Progress{Stage: proto.StagePreparing, Message: "powering off " + j.info.Name})
	return j.client.PowerOff(ctx, j.vm)
}

func describeDisks(ds []vsphere.Disk) string {
	var parts []string
	for _, d := range ds {
		s := d.Backing
		if d.HasParent {
			s += " with snapshot deltas"
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", d.Label, s))
	}
	return strings.Join(parts, ", ")
}

// hostOf shows the vCenter host of a URL for messages (never credentials: the job's URL
// cannot carry any, proto rejects them).
func hostOf(raw string) string {
	if u, err := proto.ParseVCenterURL(raw); err == nil {
		return u.Host
	}
	return raw
}
