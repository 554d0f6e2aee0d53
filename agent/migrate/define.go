package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"

	"github.com/hypersdk/hypersdk/agent/libvirt"
	"github.com/hypersdk/hypersdk/proto"
)

// definedDomain is a domain this attempt defined (cleanup undefines it if the job fails
// after all, e.g. cancelled while starting it).
type definedDomain struct {
	name  string
	jobID string
}

// domains is the pipeline's view of the local hypervisor: agent/libvirt does the work,
// this keeps the URI and the job-level rules (fail fast on a collision, undefine only what
// this job made).
type domains struct {
	uri        string
	defaultNet string
	log        *slog.Logger
}

func newDomains(uri, defaultNet string, log *slog.Logger) domains {
	return domains{uri: uri, defaultNet: defaultNet, log: log}
}

// checkFree fails when the domain name belongs to something other than this job, so that
// a collision is reported before the copy rather than after it. Define checks again (the
// name may be taken meanwhile); this is only the early warning, so anything it cannot
// decide (libvirtd down, which the define stage retries) passes.
func (d domains) checkFree(ctx context.Context, name, jobID string) error {
	conn, err := libvirt.Connect(ctx, d.uri)
	if err != nil {
		d.log.Warn("cannot check the domain name before the copy", "err", err)
		return nil
	}
	defer conn.Close()
	md, err := libvirt.ReadMetadata(conn, name)
	switch {
	case err != nil:
		return nil // no such domain, or not readable now: Define decides
	case md == nil:
		return fmt.Errorf("%w: domain %q exists on %s and was not made by a HyperSDK migration; rename or remove it (virsh undefine %s) and retry",
			libvirt.ErrDomainExists, name, d.uri, name)
	case md.JobID != jobID:
		return fmt.Errorf("%w: domain %q exists on %s, made by migration job %s (of %s); remove it (virsh undefine --nvram %s) or migrate under another name",
			libvirt.ErrDomainExists, name, d.uri, md.JobID, md.SourceVMPath, name)
	}
	return nil
}

// undefine removes a domain this job defined (never anyone else's: libvirt.Undefine checks
// the job id in its metadata).
func (d domains) undefine(ctx context.Context, dd *definedDomain) error {
	conn, err := libvirt.Connect(ctx, d.uri)
	if err != nil {
		return err
	}
	defer conn.Close()
	return libvirt.Undefine(ctx, conn, dd.name, dd.jobID)
}

// define defines the domain on the local libvirtd (redefining this job's own earlier one)
// and starts it if asked.
func (j *job) define(ctx context.Context) (*proto.JobResult, error) {
	j.stage(proto.StageDefining, "defining domain "+j.info.Name+" on "+j.p.cfg.LibvirtURI)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts := j.def.Options
	spec := libvirt.DomainSpec{
		Name:           j.info.Name,
		VCPUs:          int(j.info.NumCPU),
		CoresPerSocket: int(j.info.CoresPerSocket),
		MemoryMiB:      int64(j.info.MemoryMB),
		Firmware:       j.info.Firmware,
		GuestOS:        j.info.GuestID,
		JobID:          j.lease.JobID,
		SourceVMUUID:   j.info.UUID,
		SourceVMPath:   j.info.Path,
	}
	for _, p := range j.disks {
		spec.Disks = append(spec.Disks, libvirt.Disk{Path: p, Format: j.format, Bus: opts.DiskBus})
	}
	for _, n := range j.info.NICs {
		spec.NICs = append(spec.NICs, libvirt.NIC{Network: n.Network, MAC: n.MAC, Model: n.AdapterType})
	}

	if opts.GuestConversion {
		j.guestConversion(ctx)
	}

	conn, err := libvirt.Connect(ctx, j.p.cfg.LibvirtURI)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	res, err := libvirt.Define(ctx, conn, spec, libvirt.Options{
		NetworkMapping: opts.NetworkMapping,
		DefaultNetwork: j.p.cfg.DefaultNetwork,
		StartAfter:     opts.StartAfter,
		Logger:         j.log,
	})
	if err != nil {
		return nil, err
	}
	j.domain = &definedDomain{name: res.Name, jobID: j.lease.JobID}
	for _, w := range res.Warnings {
		j.log.Warn("domain definition", "warning", w)
		j.rep.Warn(w)
	}
	if res.Redefined {
		j.log.Info("redefined the domain of an earlier attempt of this job", "domain", res.Name)
	}
	return &proto.JobResult{
		DomainName: res.Name, DomainUUID: res.UUID, LibvirtURI: j.p.cfg.LibvirtURI,
		Disks: append([]string(nil), j.disks...),
	}, nil
}

// guestConversion would run virt-v2v-in-place on the converted disks (virtio drivers,
// fstab, bootloader). It is optional and only where installed; without it the job
// completes with a warning, since the disks and domain are still correct copies.
func (j *job) guestConversion(ctx context.Context) {
	if _, err := exec.LookPath("virt-v2v-in-place"); err != nil {
		j.rep.Warn("guest_conversion was asked but virt-v2v-in-place is not installed on this agent; the guest was not converted (install virt-v2v and run virt-v2v-in-place on the domain)")
		return
	}
	// -i disk inspects one disk: the first, which the domain boots from and where the
	// guest's OS (drivers, fstab, bootloader) lives.
	args := []string{"-i", "disk"}
	if j.format != "" {
		args = append(args, "-if", j.format)
	}
	args = append(args, j.disks[0])
	cmd := exec.CommandContext(ctx, "virt-v2v-in-place", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if i := strings.LastIndex(msg, "\n"); i >= 0 {
			msg = msg[i+1:]
		}
		if errors.Is(ctx.Err(), context.Canceled) {
			return
		}
		j.rep.Warn(fmt.Sprintf("guest conversion with virt-v2v-in-place failed (%v: %s); the domain is defined with the unconverted guest", err, msg))
		return
	}
	j.log.Info("guest converted with virt-v2v-in-place")
}
