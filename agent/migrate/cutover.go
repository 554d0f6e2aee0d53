package migrate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// cutover stops the source VM and copies its last changes; the domain is defined next
// (Run), and the downtime counted from the power-off to the domain defined. The last
// snapshot is removed after the definition, by cleanup: nothing the domain needs waits
// for it.
func (j *job) cutover(ctx context.Context) error {
	w := j.warm
	now := time.Now()
	w.status.Phase, w.status.CutoverStartedAt, w.status.NextRoundAt = proto.WarmPhaseCutover, &now, nil
	j.stage(proto.StageCutover, fmt.Sprintf("cutover after %d precopy round(s): stopping %s", w.status.Rounds, j.info.Name))
	if err := j.record(ctx); err != nil {
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
	copied, err := j.copyRound(ctx, proto.StageCutover, w.status.Rounds+1)
	if err != nil {
		return err
	}
	j.log.Info("cutover: last changes copied", "bytes", copied, "since_power_off", time.Since(w.offAt).Round(time.Millisecond))
	// The images now hold the VM as it was at power-off: a later attempt only defines.
	return j.record(ctx)
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
