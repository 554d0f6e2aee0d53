package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// convert copies every disk into <job dir>/<vm>-disk<N>.<format>, in parallel (bounded),
// with one aggregated progress for the job.
func (j *job) convert(ctx context.Context) error {
	j.format = j.def.Options.OutputFormat
	if j.format == "" {
		j.format = transfer.FormatQcow2
	}
	// A previous attempt of this job (an agent killed mid-copy, then restarted) may have
	// left files here: they are this job's own, start from scratch.
	if err := os.RemoveAll(j.dir); err != nil {
		return fmt.Errorf("%w: removing the files of an earlier attempt in %s: %v", ErrStorage, j.dir, err)
	}
	if err := os.MkdirAll(j.dir, 0o750); err != nil {
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	disks := j.info.Disks
	sizes := make([]int64, len(disks))
	j.disks = make([]string, len(disks))
	var total int64
	for i, d := range disks {
		sizes[i] = d.CapacityBytes
		total += d.CapacityBytes
		j.disks[i] = filepath.Join(j.dir, fmt.Sprintf("%s-disk%d.%s", safeName(j.info.Name), i, j.format))
	}
	msg := fmt.Sprintf("copying %d disk(s) with %s", len(disks), j.method)
	// One cap for the whole job: its disks, copied in parallel, share it.
	j.limiter = transfer.NewLimiter(transfer.BytesPerSecondFromMbps(j.def.Options.MaxMbps))
	if j.limiter != nil {
		msg += fmt.Sprintf(", capped at %d Mbit/s", j.def.Options.MaxMbps)
	}
	j.log.Info(msg, "bytes", total, "format", j.format, "dir", j.dir, "parallel_disks", min(len(disks), j.p.cfg.MaxParallelDisks))
	j.report(proto.Progress{Stage: proto.StageConversion, TotalBytes: total, Message: msg})

	agg := j.copyProgress(proto.StageConversion, msg, sizes)

	started := time.Now()
	var err error
	switch j.method {
	case transfer.MethodHTTPS:
		err = j.copyHTTPS(ctx, agg)
	case transfer.MethodNFC:
		err = j.copyNFC(ctx, agg)
	case transfer.MethodVDDK:
		err = j.copyVDDK(ctx, agg)
	default:
		err = fmt.Errorf("%w: method %q", transfer.ErrMethodUnavailable, j.method)
	}
	if err != nil {
		if cerr := errCancelled(ctx, "disk copy"); cerr != nil {
			return cerr
		}
		return err
	}
	agg.Finish()
	if d := time.Since(started).Seconds(); d > 0 {
		j.copyRate = float64(total) / d
	}
	j.report(proto.Progress{Stage: proto.StageConversion, PercentComplete: 100, CurrentBytes: total, TotalBytes: total,
		BytesPerSecond: j.copyRate, Message: msg})
	return nil
}

// copyProgress is the aggregated progress of a copy of disks of the given sizes: reported
// as stage with msg, and counted in the transfer metrics.
func (j *job) copyProgress(stage, msg string, sizes []int64) *transfer.Aggregator {
	bytesC := j.p.metrics.bytes.WithLabelValues(j.method)
	rateG := j.p.metrics.rate.WithLabelValues(j.lease.JobID)
	var counted int64 // bytes already added to the counter; the aggregator is serial
	return transfer.NewAggregator(func(pr proto.Progress) {
		if d := pr.CurrentBytes - counted; d > 0 {
			bytesC.Add(float64(d))
			counted = pr.CurrentBytes
		}
		rateG.Set(pr.BytesPerSecond)
		pr.Stage, pr.Message = stage, msg
		j.report(pr)
	}, sizes, 0, msg)
}

func (j *job) output(i int, agg *transfer.Aggregator) transfer.Output {
	return transfer.Output{Path: j.disks[i], Format: j.format, Progress: agg.Disk(i), Label: j.info.Disks[i].File, Limiter: j.limiter,
		Images: j.images}
}

// trust is the transfer's TLS decision for a host of the source, matching the session's:
// insecure, or pinned (the device's own thumbprint when vSphere reports one, since NFC
// URLs point at ESXi hosts with their own certificates), else the system roots.
func (j *job) trust(deviceThumbprint string) transfer.Trust {
	src := j.def.Source
	switch {
	case src.Insecure:
		return transfer.Trust{Insecure: true}
	case deviceThumbprint != "":
		return transfer.Trust{Thumbprint: deviceThumbprint}
	case src.Thumbprint != "":
		return transfer.Trust{Thumbprint: src.Thumbprint}
	}
	return transfer.Trust{}
}

// copyHTTPS reads each disk's flat extents from the datastore /folder URL.
func (j *job) copyHTTPS(ctx context.Context, agg *transfer.Aggregator) error {
	return transfer.Parallel(ctx, j.p.cfg.MaxParallelDisks, j.info.Disks, func(ctx context.Context, i int, d vsphere.Disk) error {
		u, hdr, err := j.client.DatastoreFileURL(ctx, d.Datastore, d.DatastorePath)
		if err != nil {
			return err
		}
		_, err = j.p.xfer.HTTPS(ctx, transfer.HTTPSSource{DescriptorURL: u.String(), Header: hdr, Trust: j.trust("")}, j.output(i, agg))
		if err != nil {
			return fmt.Errorf("disk %d (%s): %w", i, d.File, err)
		}
		return nil
	})
}

// copyNFC opens an export lease and decodes each disk's stream-optimized VMDK as it
// arrives. The lease is completed on success and aborted otherwise, so vSphere releases
// the VM either way.
func (j *job) copyNFC(ctx context.Context, agg *transfer.Aggregator) (err error) {
	exp, err := j.client.ExportVM(ctx, j.vm)
	if err != nil {
		return err
	}
	defer func() {
		ectx := context.WithoutCancel(ctx)
		if err != nil {
			cause := err
			if ctx.Err() != nil {
				cause = errors.New("migration cancelled")
			}
			if aerr := exp.Abort(ectx, cause); aerr != nil {
				j.log.Warn("export lease abort", "err", aerr)
			}
			return
		}
		if cerr := exp.Complete(ectx); cerr != nil {
			// The disks are here; vSphere will time the lease out by itself.
			j.log.Warn("export lease complete", "err", cerr)
		}
	}()
	var devices []vsphere.ExportDevice
	var devIndex []int
	for i, d := range exp.Devices {
		if d.Disk {
			devices = append(devices, d)
			devIndex = append(devIndex, i)
		}
	}
	if len(devices) != len(j.info.Disks) {
		return fmt.Errorf("%w: the export lease offers %d disk(s) for a VM with %d", ErrUnsupportedVM, len(devices), len(j.info.Disks))
	}
	var mu sync.Mutex // Export.Progress is safe, but keep per-disk percentages together
	return transfer.Parallel(ctx, j.p.cfg.MaxParallelDisks, devices, func(ctx context.Context, i int, dev vsphere.ExportDevice) error {
		out := j.output(i, agg)
		diskProgress := out.Progress
		out.Progress = func(pr proto.Progress) {
			diskProgress(pr)
			mu.Lock()
			exp.Progress(devIndex[i], float32(pr.PercentComplete))
			mu.Unlock()
		}
		_, err := j.p.xfer.NFC(ctx, transfer.NFCSource{URL: dev.URL, Header: exp.Header, Trust: j.trust(dev.SSLThumbprint)}, out)
		if err != nil {
			return fmt.Errorf("disk %d (%s): %w", i, j.info.Disks[i].File, err)
		}
		exp.DeviceDone(devIndex[i])
		return nil
	})
}

// copyVDDK reads each disk through VMware's VDDK at the migration snapshot. VDDK checks the
// server's certificate by its SHA-1 thumbprint: the one this job's session verified (pinned
// by source.thumbprint, or by the system roots), or the one it saw with source.insecure.
func (j *job) copyVDDK(ctx context.Context, agg *transfer.Aggregator) error {
	var warnMu sync.Mutex
	warned := map[string]bool{}
	return transfer.Parallel(ctx, j.p.cfg.MaxParallelDisks, j.info.Disks, func(ctx context.Context, i int, d vsphere.Disk) error {
		res, err := j.p.xfer.VDDK(ctx, j.vddkSource(d.File, j.snapshot), j.output(i, agg))
		if err != nil {
			return fmt.Errorf("disk %d (%s): %w", i, d.File, err)
		}
		warnMu.Lock()
		defer warnMu.Unlock()
		for _, w := range res.Warnings {
			if !warned[w] { // a note about the library comes with every disk: once per job
				warned[w] = true
				j.rep.Warn(w)
			}
		}
		return nil
	})
}

// vddkSource is a disk file of the VM read through VDDK at snap (nil: the disk as it is).
func (j *job) vddkSource(file string, snap *vsphere.Snapshot) transfer.VDDKSource {
	u := j.client.URL()
	port := 0
	if p := u.Port(); p != "" {
		port, _ = strconv.Atoi(p)
	}
	src := transfer.VDDKSource{
		Server: u.Hostname(), Port: port, User: j.def.Source.Username, Password: j.def.Source.Password,
		Thumbprint: j.client.ServerThumbprint(), Insecure: j.def.Source.Insecure,
		VMMoref: j.info.Moref, File: file, Libdir: j.p.cfg.VDDKLibDir,
	}
	if snap != nil {
		src.Snapshot = snap.Moref()
	}
	src.Readers = j.readers // started ahead for the cutover (nil otherwise)
	return src
}
