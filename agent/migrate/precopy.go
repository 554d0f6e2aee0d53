package migrate

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// precopy copies while the VM runs: the full copy (unless this attempt resumes), then a
// round of changes every precopy interval, until the cutover is due.
func (j *job) precopy(ctx context.Context) error {
	w := j.warm
	if w.status.Rounds == 0 {
		if err := j.precopyRound(ctx); err != nil {
			return err
		}
	} else if !j.cutoverDue() {
		// The earlier attempt's last round is a while ago (its agent was lost): catch up now.
		if err := j.precopyRound(ctx); err != nil {
			return err
		}
	}
	for {
		if j.cutoverDue() {
			return nil
		}
		next := w.lastRound.Add(w.interval)
		if !w.cutoverAt.IsZero() && !w.cutoverAt.After(next) {
			w.status.NextRoundAt = nil
		} else {
			t := next
			w.status.NextRoundAt = &t
		}
		j.report(proto.Progress{Stage: proto.StagePrecopy, Message: j.betweenRounds()})
		if err := j.record(ctx); err != nil {
			return err
		}
		if !j.waitRound(ctx, next) {
			if err := ctx.Err(); err != nil {
				return err
			}
			return nil // the cutover is due
		}
		if err := j.precopyRound(ctx); err != nil {
			return err
		}
	}
}

func (j *job) betweenRounds() string {
	w := j.warm
	msg := fmt.Sprintf("round %d done: %s copied", w.status.Rounds, humanBytes(w.status.ChangedBytes))
	switch {
	case w.status.NextRoundAt != nil:
		msg += "; next round at " + w.status.NextRoundAt.UTC().Format(time.RFC3339)
	case !w.cutoverAt.IsZero():
		msg += "; cutover at " + w.cutoverAt.UTC().Format(time.RFC3339)
	}
	if w.cutoverAt.IsZero() {
		msg += "; cutover on request (POST /jobs/{id}/cutover)"
	}
	return msg
}

// cutoverDue says whether the cutover should start now.
func (j *job) cutoverDue() bool {
	w := j.warm
	if !w.cutoverAt.IsZero() && !time.Now().Before(w.cutoverAt) {
		return true
	}
	select {
	case <-w.requested:
		w.status.CutoverRequested = true
		return true
	default:
		return false
	}
}

// waitRound waits until next; false when the cutover became due (or ctx ended) first.
func (j *job) waitRound(ctx context.Context, next time.Time) bool {
	w := j.warm
	for {
		if j.cutoverDue() {
			return false
		}
		wake := next
		if !w.cutoverAt.IsZero() && w.cutoverAt.Before(wake) {
			wake = w.cutoverAt
		}
		d := time.Until(wake)
		if d <= 0 {
			return !j.cutoverDue()
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-w.requested:
			t.Stop()
		case <-t.C:
		}
	}
}

// precopyRound is one round while the VM runs: snapshot, copy, record, remove the snapshot.
func (j *job) precopyRound(ctx context.Context) error {
	w := j.warm
	n := w.status.Rounds + 1
	if _, err := j.copyRound(ctx, proto.StagePrecopy, n); err != nil {
		return err
	}
	w.status.Rounds = n
	now := time.Now()
	w.lastRound, w.status.LastRoundAt = now, &now
	// Forklift's order: the change ids are recorded before the snapshot they came from goes,
	// and the next snapshot is taken only after that.
	if err := j.record(ctx); err != nil {
		return err
	}
	return j.removeRoundSnapshot(ctx)
}

// copyRound takes round n's snapshot and copies into the images what changed since their
// change ids (everything, in the first round), then moves the change ids to the
// snapshot's. The snapshot stays in j.snapshot. It returns the bytes copied.
func (j *job) copyRound(ctx context.Context, stage string, n int) (int64, error) {
	w := j.warm
	disks, err := j.snapshotRound(ctx, n)
	if err != nil {
		return 0, err
	}
	copied, err := j.copyChanges(ctx, stage, n, j.snapshot, disks)
	if err != nil {
		return 0, err
	}
	for i, d := range disks {
		w.disks[i].changeID = d.ChangeID
	}
	return copied, nil
}

// copyChanges copies into the images what changed since their change ids (everything, when
// they have none yet) as of snap, or, with snap nil, from the powered-off VM's disks as
// they are (the cutover). disks are matched to the warm disks.
func (j *job) copyChanges(ctx context.Context, stage string, n int, snap *vsphere.Snapshot, disks []vsphere.SnapshotDisk) (int64, error) {
	w := j.warm
	first := w.disks[0].changeID == ""
	var copied int64
	var err error
	if first {
		copied, err = j.fullRound(ctx, stage, n, snap, disks)
	} else {
		copied, err = j.deltaRound(ctx, stage, n, snap, disks)
	}
	if err != nil {
		return 0, err
	}
	w.status.ChangedBytes = copied
	j.log.Info("warm round copied", "round", n, "stage", stage, "bytes", copied, "full", first, "snapshot", snap != nil)
	return copied, nil
}

// fullRound copies every allocated block of every disk at snap into new images.
func (j *job) fullRound(ctx context.Context, stage string, n int, snap *vsphere.Snapshot, disks []vsphere.SnapshotDisk) (int64, error) {
	sizes := make([]int64, len(disks))
	var total int64
	for i, d := range disks {
		sizes[i] = d.CapacityBytes
		total += d.CapacityBytes
	}
	msg := fmt.Sprintf("round %d: copying %d disk(s) in full with %s while the VM runs", n, len(disks), j.method)
	j.log.Info(msg, "bytes", total, "format", j.format, "dir", j.dir)
	agg := j.copyProgress(stage, msg, sizes)
	var read atomic.Int64
	err := transfer.Parallel(ctx, j.p.cfg.MaxParallelDisks, disks, func(ctx context.Context, i int, d vsphere.SnapshotDisk) error {
		res, err := j.p.xfer.VDDK(ctx, j.vddkSource(d.File, snap), j.output(i, agg))
		if err != nil {
			return fmt.Errorf("disk %d (%s): %w", i, d.File, err)
		}
		read.Add(res.SourceBytes)
		for _, w := range res.Warnings {
			j.rep.Warn(w)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	agg.Finish()
	return read.Load(), nil
}

// deltaRound copies into the images the areas each disk changed since its change id, up
// to snap (nil: up to now, which vSphere answers only for a powered-off VM).
func (j *job) deltaRound(ctx context.Context, stage string, n int, snap *vsphere.Snapshot, disks []vsphere.SnapshotDisk) (int64, error) {
	w := j.warm
	areas := make([][]transfer.DiskRange, len(disks))
	sizes := make([]int64, len(disks))
	full := make([]bool, len(disks))
	var total int64
	for i, d := range disks {
		got, err := j.client.ChangedAreas(ctx, j.vm, snap, d.Key, d.CapacityBytes, w.disks[i].changeID)
		switch {
		case errors.Is(err, vsphere.ErrChangeTracking):
			// Tracking was reset (disabled and enabled again, a storage move): the change id
			// means nothing any more, so this disk is copied in full again.
			msg := fmt.Sprintf("disk %d (%s): %v; copying it in full again", i, d.File, err)
			j.log.Warn(msg)
			j.rep.Warn(msg)
			full[i], sizes[i] = true, d.CapacityBytes
		case err != nil:
			return 0, err
		default:
			for _, a := range got {
				areas[i] = append(areas[i], transfer.DiskRange{Offset: a.Offset, Length: a.Length})
				sizes[i] += a.Length
			}
		}
		total += sizes[i]
	}
	msg := fmt.Sprintf("round %d: copying %s changed since round %d", n, humanBytes(total), n-1)
	j.log.Info(msg, "bytes", total)
	agg := j.copyProgress(stage, msg, sizes)
	var read atomic.Int64
	err := transfer.Parallel(ctx, j.p.cfg.MaxParallelDisks, disks, func(ctx context.Context, i int, d vsphere.SnapshotDisk) error {
		var res *transfer.Result
		var err error
		if full[i] {
			res, err = j.p.xfer.VDDK(ctx, j.vddkSource(d.File, snap), j.output(i, agg))
		} else {
			res, err = j.p.xfer.VDDKDelta(ctx, j.vddkSource(d.File, snap), j.output(i, agg), areas[i])
		}
		if err != nil {
			return fmt.Errorf("disk %d (%s): %w", i, d.File, err)
		}
		if full[i] {
			read.Add(res.SourceBytes)
		} else {
			// The changed bytes: the copy reads the small gaps between near areas too.
			read.Add(sizes[i])
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	agg.Finish()
	return read.Load(), nil
}

// humanBytes renders a byte count for messages.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
