package migrate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// cutover stops the source VM and copies its last changes, from the powered-off disks
// themselves (cutoverCopy); the domain is defined next (Run), and the downtime counted
// from the power-off to the domain defined.
func (j *job) cutover(ctx context.Context) error {
	w := j.warm
	now := time.Now()
	w.status.Phase, w.status.CutoverStartedAt, w.status.NextRoundAt = proto.WarmPhaseCutover, &now, nil
	j.stage(proto.StageCutover, fmt.Sprintf("cutover after %d precopy round(s): stopping %s", w.status.Rounds, j.info.Name))
	// The VDDK readers of the last copy start first, and go on starting while the cutover
	// is recorded and the guest shuts down: a process's start would otherwise be
	// downtime. They wait for their disks until the copy, and the images for their writes.
	j.readers = j.p.xfer.StartVDDKReaders(ctx, j.p.cfg.VDDKLibDir, len(w.disks))
	// The images too: qemu-nbd's start on them is the longer of the two.
	j.images = j.p.xfer.OpenImages(ctx, j.disks, j.format)
	defer func() {
		j.readers.Close()
		j.images.Close()
		j.readers, j.images = nil, nil
	}()
	if err := j.record(ctx); err != nil {
		return err
	}
	// The disks are read before the guest stops: a disk added or removed since the
	// precopy fails the cutover while the VM still runs, and the read is not downtime
	// (powering off changes no disk).
	disks, err := j.currentDisks(ctx)
	if err != nil {
		return err
	}
	if err := j.stopSource(ctx); err != nil {
		return err
	}
	if w.offAt.IsZero() { // else an earlier attempt powered it off
		w.offAt = time.Now()
		// Recorded at once, so the downtime counts from here whichever attempt defines.
		if err := j.record(ctx); err != nil {
			return err
		}
	}
	if j.def.Options.RemoveCDROM {
		n, err := j.client.RemoveCDROMs(ctx, j.vm)
		if err != nil {
			return err
		}
		if n > 0 {
			j.log.Info("CD-ROMs removed from the source VM", "count", n)
		}
	}
	copied, err := j.cutoverCopy(ctx, w.status.Rounds+1, disks)
	if err != nil {
		return err
	}
	j.log.Info("cutover: last changes copied", "bytes", copied, "since_power_off", time.Since(w.offAt).Round(time.Millisecond))
	// The images now hold the VM as it was at power-off. The change ids stay the last
	// round's: a later attempt (this agent lost before the domain is defined) copies the
	// same areas again from the powered-off disks, which changes nothing in the images.
	return j.record(ctx)
}

// currentDisks reads the VM's disks as they are (their backing files: what VDDK opens
// without a snapshot) and checks that they are the warm disks.
func (j *job) currentDisks(ctx context.Context) ([]vsphere.SnapshotDisk, error) {
	info, err := j.client.VMInfo(ctx, j.vm)
	if err != nil {
		return nil, err
	}
	disks := make([]vsphere.SnapshotDisk, len(info.Disks))
	for i, d := range info.Disks {
		disks[i] = vsphere.SnapshotDisk{Key: d.Key, CapacityBytes: d.CapacityBytes, File: d.File}
	}
	if err := j.matchWarmDisks(disks); err != nil {
		return nil, err
	}
	return disks, nil
}

// cutoverCopy copies the last changes from the powered-off VM's disks themselves, without
// a snapshot: a VM that is off cannot change, vSphere answers QueryChangedDiskAreas for it
// without one, and VDDK reads its disks as for a cold job. A snapshot would add its
// creation and its removal (seconds each on a real vCenter) to the downtime for nothing.
// The VM must still be off when the copy ends: powered on meanwhile (by someone else),
// its disks may have changed under the copy, and the cutover fails rather than define
// a domain from them.
func (j *job) cutoverCopy(ctx context.Context, n int, disks []vsphere.SnapshotDisk) (int64, error) {
	copied, err := j.copyChanges(ctx, proto.StageCutover, n, nil, disks)
	if err != nil {
		return 0, err
	}
	st, err := j.client.PowerState(ctx, j.vm)
	if err != nil {
		return 0, err
	}
	if st != "poweredOff" {
		return 0, fmt.Errorf("%w: %s was powered on (%s) during the cutover's copy: its disks may have changed under it; "+
			"shut it down and ask for the cutover again", ErrUnsupportedVM, j.info.Name, st)
	}
	return copied, nil
}

// stopSource shuts the guest down and powers the VM off if it does not stop within the
// shutdown timeout (or cannot be asked: no VMware Tools). A warm job asks for this by
// being warm: the cutover is the moment the VM moves.
func (j *job) stopSource(ctx context.Context) error {
	st, err := j.client.PowerState(ctx, j.vm)
	if err != nil {
		return err
	}
	if st == "poweredOff" {
		return nil
	}
	timeout := j.p.cfg.ShutdownTimeout
	if s := j.def.Options.ShutdownTimeoutSeconds; s > 0 {
		timeout = time.Duration(s) * time.Second
	}
	j.report(proto.Progress{Stage: proto.StageCutover, Message: fmt.Sprintf("shutting down the guest of %s (up to %s, then power off)", j.info.Name, timeout)})
	err = j.client.Shutdown(ctx, j.vm, timeout)
	switch {
	case err == nil:
		j.log.Info("guest shut down for the cutover")
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, vsphere.ErrShutdownTimeout):
		j.rep.Warn(fmt.Sprintf("the guest of %s did not shut down within %s; it was powered off for the cutover", j.info.Name, timeout))
	default:
		j.rep.Warn(fmt.Sprintf("guest shutdown of %s failed (%v); it was powered off for the cutover", j.info.Name, err))
	}
	j.report(proto.Progress{Stage: proto.StageCutover, Message: "powering off " + j.info.Name})
	return j.client.PowerOff(ctx, j.vm)
}
