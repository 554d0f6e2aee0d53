package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// A warm migration (options.warm) copies the disks while the source VM runs and stops it
// only for the cutover, the way Forklift does on vSphere:
//
//  1. precopy (precopy.go): changed-block tracking on (it refuses on a VM with snapshots),
//     a snapshot, every allocated block copied from it, each disk's change id recorded,
//     the snapshot removed; then every precopy_interval_seconds a round: a snapshot, the
//     areas changed since the recorded change id (QueryChangedDiskAreas) copied over the
//     same images, the new change ids recorded, the snapshot removed. Forklift's order
//     (its PR #1184, after filesystem corruption): record the change ids, remove the old
//     snapshot, then create the next one; at most one snapshot of ours exists at a time.
//  2. cutover (cutover.go), at cutover_at or when an operator asks: the guest is shut
//     down (powered off after shutdown_timeout_seconds), the last changes are copied from
//     the powered-off disks (no snapshot: nothing can change them now), then the domain is
//     defined as for a cold job. Downtime is power-off → domain defined.
//
// After each round the state that lets a later attempt go on (which agent has the images,
// where, and the change id each holds its disk as of) is replicated with the job, so an
// agent lost between rounds costs the next attempt one round on the same host; on
// another host the next attempt copies in full and the job says so.

// WarmReporter is what a warm migration needs from the worker beside Reporter. Without it
// the job runs all the same, but cuts over only at cutover_at and cannot be resumed.
type WarmReporter interface {
	// CutoverRequested is closed when an operator asks for the cutover
	// (POST /jobs/{id}/cutover).
	CutoverRequested() <-chan struct{}
	// Warm replicates the warm status and resume point with the job (a fenced report) and
	// returns once the controller has committed it.
	Warm(ctx context.Context, status proto.WarmStatus, resume *proto.WarmResume) error
	// AgentName is this agent's name, which the resume point records.
	AgentName() string
}

// warmRun is a warm job's state in this attempt.
type warmRun struct {
	rep       WarmReporter // nil: nothing is replicated
	interval  time.Duration
	cutoverAt time.Time       // zero: only on request
	requested <-chan struct{} // closed on request (nil: never)
	disks     []warmDisk      // in the VM's disk order
	status    proto.WarmStatus
	lastRound time.Time
	offAt     time.Time // the source's power-off (cutover)
	resumed   bool      // this attempt went on from an earlier attempt's images
	// converting: virt-v2v is rewriting the images in place, so they no longer hold the
	// disks as of their change ids and no later attempt may resume from them.
	converting bool
}

// warmDisk is one disk's image and the change id it holds the disk as of ("" before the
// first copy).
type warmDisk struct {
	key      int32
	capacity int64
	path     string
	changeID string
}

// markerFile, in a warm job's directory, is the resume point this agent last had
// committed: it names the directory as a warm job's images.
const markerFile = "warm.json"

// warmCopy runs a warm job's copy: the precopy rounds, then the cutover.
func (j *job) warmCopy(ctx context.Context) error {
	if err := j.warmPrepare(ctx); err != nil {
		return classify(proto.StagePrecopy, err)
	}
	if err := j.precopy(ctx); err != nil {
		return classify(proto.StagePrecopy, err)
	}
	if err := j.cutover(ctx); err != nil {
		return classify(proto.StageCutover, err)
	}
	return nil
}

// warmPrepare checks that the VM can be copied warm (VDDK here, changed-block tracking on
// or possible), removes snapshots an earlier attempt of the job left, and decides whether
// this attempt resumes the earlier one's images.
func (j *job) warmPrepare(ctx context.Context) error {
	opts := j.def.Options
	j.stage(proto.StagePrecopy, "preparing a warm migration of "+j.info.Name)
	w := &warmRun{interval: opts.PrecopyInterval(), status: proto.WarmStatus{Phase: proto.WarmPhasePrecopy}}
	if opts.CutoverAt != nil {
		w.cutoverAt = *opts.CutoverAt
	}
	if wr, ok := j.rep.(WarmReporter); ok {
		w.rep = wr
		w.requested = wr.CutoverRequested()
	}
	j.warm = w

	switch opts.ConversionMethod {
	case "", transfer.MethodAuto, transfer.MethodVDDK:
	default:
		return fmt.Errorf("%w: a warm migration reads changed blocks at snapshots through VDDK; conversion_method %s cannot",
			ErrUnsupportedVM, opts.ConversionMethod)
	}
	method, err := transfer.Pick(transfer.MethodVDDK, j.p.capabilities(ctx), transfer.DiskFacts{})
	if err != nil {
		return fmt.Errorf("a warm migration needs VDDK on the agent: %w", err)
	}
	j.method = method
	// One cap for the whole job (options.max_mbps), every round's disks sharing it.
	j.limiter = transfer.NewLimiter(transfer.BytesPerSecondFromMbps(opts.MaxMbps))
	j.format = opts.OutputFormat
	if j.format == "" {
		j.format = transfer.FormatQcow2
	}
	if err := j.p.domains.checkFree(ctx, j.info.Name, j.lease.JobID); err != nil {
		return err
	}
	if !j.info.ChangeTracking {
		if err := j.client.EnableChangeTracking(ctx, j.vm); err != nil {
			return err
		}
	}
	// A killed attempt may have left its round's snapshot: ours by name, and in the way
	// (the rounds keep one snapshot at a time).
	stale, err := j.client.SnapshotsNamed(ctx, j.vm, j.snapshotPrefix())
	if err != nil {
		return err
	}
	for _, s := range stale {
		j.log.Warn("removing a snapshot an earlier attempt of this job left", "snapshot", s.Name)
		if err := j.client.RemoveSnapshot(ctx, j.vm, s); err != nil {
			return err
		}
	}
	if j.lease.CutoverRequested {
		j.closeRequested()
	}
	return j.resumeOrStart(ctx)
}

func (j *job) snapshotPrefix() string { return "hypersdk-" + j.lease.JobID + "-" }

// closeRequested makes the cutover due at once (asked before this attempt started).
func (j *job) closeRequested() {
	ch := make(chan struct{})
	close(ch)
	j.warm.requested = ch
	j.warm.status.CutoverRequested = true
}

// resumeOrStart picks up the earlier attempt's images when they are on this agent and
// sound, else starts with an empty job directory and says why when there was a copy.
func (j *job) resumeOrStart(ctx context.Context) error {
	w := j.warm
	r := j.lease.Warm
	me := ""
	if w.rep != nil {
		me = w.rep.AgentName()
	}
	why := ""
	switch {
	case r == nil || r.Rounds == 0:
	case me == "" || r.Agent != me:
		why = fmt.Sprintf("the earlier attempt's copy (%d rounds) is on agent %s: this attempt copies the disks in full", r.Rounds, r.Agent)
	default:
		if err := j.checkResume(ctx, r); err != nil {
			why = fmt.Sprintf("the earlier attempt's images on this agent cannot be used (%v): this attempt copies the disks in full", err)
			break
		}
		w.resumed = true
		w.status.Rounds = r.Rounds
		if r.PoweredOffAt != nil {
			w.offAt = *r.PoweredOffAt
		}
		for _, d := range r.Disks {
			w.disks = append(w.disks, warmDisk{key: d.Key, capacity: d.Capacity, path: d.Path, changeID: d.ChangeID})
		}
		j.disks = make([]string, len(w.disks))
		for i, d := range w.disks {
			j.disks[i] = d.path
		}
		j.log.Info("resuming the warm copy of an earlier attempt", "rounds", r.Rounds)
		j.report(proto.Progress{Stage: proto.StagePrecopy, Message: fmt.Sprintf("resuming after round %d of an earlier attempt", r.Rounds)})
		return nil
	}
	if why != "" {
		j.log.Warn(why)
		j.rep.Warn(why)
		w.status.FullCopy = why
	}
	if err := os.RemoveAll(j.dir); err != nil {
		return fmt.Errorf("%w: removing the files of an earlier attempt in %s: %v", ErrStorage, j.dir, err)
	}
	if err := os.MkdirAll(j.dir, 0o750); err != nil {
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	j.disks = make([]string, len(j.info.Disks))
	for i, d := range j.info.Disks {
		j.disks[i] = filepath.Join(j.dir, fmt.Sprintf("%s-disk%d.%s", safeName(j.info.Name), i, j.format))
		w.disks = append(w.disks, warmDisk{key: d.Key, capacity: d.CapacityBytes, path: j.disks[i]})
	}
	return nil
}

// checkResume says whether the earlier attempt's images fit this VM and this agent.
func (j *job) checkResume(ctx context.Context, r *proto.WarmResume) error {
	if r.Format != j.format {
		return fmt.Errorf("they are %s, the job wants %s", r.Format, j.format)
	}
	if len(r.Disks) != len(j.info.Disks) {
		return fmt.Errorf("%d images for %d disks", len(r.Disks), len(j.info.Disks))
	}
	for i, d := range r.Disks {
		vd := j.info.Disks[i]
		if d.Key != vd.Key || d.Capacity != vd.CapacityBytes || d.ChangeID == "" {
			return fmt.Errorf("disk %d changed since (key %d, %d bytes)", i, vd.Key, vd.CapacityBytes)
		}
		if filepath.Dir(d.Path) != j.dir {
			return fmt.Errorf("%s is not in this job's directory %s", d.Path, j.dir)
		}
		if err := j.p.xfer.CheckImage(ctx, d.Path, j.format, d.Capacity); err != nil {
			return err
		}
	}
	return nil
}

// resume is the resume point after the last recorded round.
func (w *warmRun) resume(agent, format string) *proto.WarmResume {
	r := &proto.WarmResume{Agent: agent, Format: format, Rounds: w.status.Rounds}
	if !w.offAt.IsZero() {
		t := w.offAt
		r.PoweredOffAt = &t
	}
	for _, d := range w.disks {
		r.Disks = append(r.Disks, proto.WarmDisk{Key: d.key, Path: d.path, Capacity: d.capacity, ChangeID: d.changeID})
	}
	return r
}

// record replicates the warm status and the resume point, and keeps the resume point in
// the job directory too (the marker of a warm job's images).
func (j *job) record(ctx context.Context) error {
	w := j.warm
	if w.rep == nil {
		return nil
	}
	r := w.resume(w.rep.AgentName(), j.format)
	if err := w.rep.Warm(ctx, w.status, r); err != nil {
		return fmt.Errorf("recording round %d with the controller: %w", w.status.Rounds, err)
	}
	b, _ := json.Marshal(struct {
		JobID string `json:"job_id"`
		*proto.WarmResume
	}{j.lease.JobID, r})
	if err := os.WriteFile(filepath.Join(j.dir, markerFile), b, 0o640); err != nil {
		j.log.Warn("could not write the warm marker", "err", err)
	}
	return nil
}

// keepForResume says whether a warm attempt that did not complete leaves its images for
// the next attempt: when it was stopped from outside (the agent shuts down, or lost its
// lease) or failed in a way another attempt may not (err is retryable) after a round was
// recorded, the next attempt may land here and go on from it; if it does not, the
// controller says so at a later lease request and the copy goes (Discard). A cancel or a
// failure that is the job's own removes them like any other attempt's files.
func (j *job) keepForResume(ctx context.Context, err error) bool {
	if j.warm == nil || j.warm.rep == nil || j.warm.status.Rounds == 0 || j.warm.converting || j.domain != nil {
		return false
	}
	cause := context.Cause(ctx)
	if errors.Is(cause, worker.ErrCancelRequested) {
		return false
	}
	return errors.Is(cause, worker.ErrShuttingDown) || errors.Is(cause, worker.ErrFenced) || errors.Is(cause, worker.ErrLeaseLost) ||
		(ctx.Err() == nil && errors.Is(err, worker.ErrRetryable))
}

// warmDefined records the downtime once the domain is defined.
func (j *job) warmDefined(ctx context.Context) {
	w := j.warm
	if w == nil {
		return
	}
	w.status.Phase = proto.WarmPhaseDone
	if !w.offAt.IsZero() {
		w.status.DowntimeSeconds = time.Since(w.offAt).Seconds()
	}
	j.log.Info("warm migration: domain defined", "downtime_seconds", w.status.DowntimeSeconds, "rounds", w.status.Rounds)
	if err := j.record(ctx); err != nil {
		j.log.Warn("could not record the downtime", "err", err)
	}
	// The images are the domain's disks now, not a copy to resume.
	if err := os.Remove(filepath.Join(j.dir, markerFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		j.log.Warn("could not remove the warm marker", "err", err)
	}
}

// warmImagesConverting is called before guest conversion rewrites a warm job's images:
// from here they are not the source's disks as of any change id, so the marker goes and
// an attempt that stops now leaves nothing to resume (the next copies in full from the
// powered-off VM).
func (j *job) warmImagesConverting() {
	if j.warm == nil {
		return
	}
	j.warm.converting = true
	if err := os.Remove(filepath.Join(j.dir, markerFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		j.log.Warn("could not remove the warm marker", "err", err)
	}
}

// snapshotRound takes the snapshot of round n (kept in j.snapshot until removed) and
// returns its disks matched to the warm disks.
func (j *job) snapshotRound(ctx context.Context, n int) ([]vsphere.SnapshotDisk, error) {
	snap, err := j.client.CreateSnapshot(ctx, j.vm, fmt.Sprintf("%s%d", j.snapshotPrefix(), n),
		fmt.Sprintf("HyperSDK warm migration job %s attempt %d, round %d; removed after the round", j.lease.JobID, j.lease.Attempt, n))
	if err != nil {
		return nil, err
	}
	j.snapshot = snap
	disks, err := j.client.SnapshotDisks(ctx, snap)
	if err != nil {
		return nil, err
	}
	if err := j.matchWarmDisks(disks); err != nil {
		return nil, err
	}
	for i, d := range disks {
		if d.ChangeID == "" {
			return nil, fmt.Errorf("%w: the snapshot of %s has no change id for disk %d: changed block tracking is not active on it",
				vsphere.ErrChangeTracking, j.info.Name, i)
		}
	}
	return disks, nil
}

// matchWarmDisks checks that disks (a snapshot's, or the VM's at the cutover) are the
// warm disks: the same number, keys and sizes.
func (j *job) matchWarmDisks(disks []vsphere.SnapshotDisk) error {
	if len(disks) != len(j.warm.disks) {
		return fmt.Errorf("%w: the VM has %d disks now, %d when the migration started (a disk was added or removed during the migration)",
			ErrUnsupportedVM, len(disks), len(j.warm.disks))
	}
	for i, d := range disks {
		w := j.warm.disks[i]
		if d.Key != w.key || d.CapacityBytes != w.capacity {
			return fmt.Errorf("%w: disk %d changed during the migration (key %d → %d, %d → %d bytes)",
				ErrUnsupportedVM, i, w.key, d.Key, w.capacity, d.CapacityBytes)
		}
	}
	return nil
}

// removeRoundSnapshot removes the round's snapshot once its change ids are recorded.
func (j *job) removeRoundSnapshot(ctx context.Context) error {
	if j.snapshot == nil {
		return nil
	}
	if err := j.client.RemoveSnapshot(ctx, j.vm, j.snapshot); err != nil {
		return err
	}
	j.snapshot = nil
	return nil
}

// keptCopy is the marker of a warm job's images kept in the storage dir.
type keptCopy struct {
	JobID string `json:"job_id"`
}

// KeptCopies lists the jobs whose warm images this agent keeps for a later attempt (a
// marker in the job's directory), but for those running (worker.CopyKeeper).
func (p *Pipeline) KeptCopies(running func(jobID string) bool) []string {
	markers, _ := filepath.Glob(filepath.Join(p.cfg.StorageDir, "*", markerFile))
	var out []string
	for _, m := range markers {
		var k keptCopy
		if b, err := os.ReadFile(m); err != nil || json.Unmarshal(b, &k) != nil || k.JobID == "" {
			continue
		}
		if filepath.Dir(m) == p.JobDir(k.JobID) && !running(k.JobID) {
			out = append(out, k.JobID)
		}
	}
	return out
}

// Discard removes the kept images of jobs no attempt will resume (worker.CopyKeeper).
func (p *Pipeline) Discard(jobIDs []string, running func(jobID string) bool) {
	for _, id := range jobIDs {
		dir := p.JobDir(id)
		if running(id) {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, markerFile)); err != nil {
			continue // not a kept warm copy: nothing of ours to remove
		}
		if err := os.RemoveAll(dir); err != nil {
			p.log.Warn("could not remove a kept warm copy", "job", id, "dir", dir, "err", err)
			continue
		}
		p.log.Info("removed a kept warm copy no attempt will resume", "job", id, "dir", dir)
	}
}
