package migrate

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/hypersdk/hypersdk/agent/capacity"
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
// a collision is reported before the copy rather than after it, and when libvirt does not
// answer: a job fails fast on a broken host, before any byte is copied, and (retryable)
// goes to another host (issue 17: a host with libvirt down copied every disk, then failed
// at define, three attempts in a row). Define checks the name again (it may be taken
// meanwhile); a domain it cannot read passes here.
func (d domains) checkFree(ctx context.Context, name, jobID string) error {
	conn, err := libvirt.Connect(ctx, d.uri)
	if err != nil {
		return err
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

// newVirtProbe starts the virtualisation probe of the agent's host (see agent/capacity):
// it runs in the background from the agent's start, and define waits for its decision. For
// libvirt drivers other than qemu's (test:///) there is nothing to decide.
func newVirtProbe(cfg Config, log *slog.Logger) *capacity.VirtProbe {
	if !strings.HasPrefix(cfg.LibvirtURI, "qemu") {
		return nil
	}
	var trial capacity.Trial
	if k := libvirt.FindKernel(); k != "" {
		trial = libvirt.BootTrial{URI: cfg.LibvirtURI, Kernel: k, Logger: log}.Run
	}
	vp := capacity.NewVirtProbe(capacity.VirtConfig{CacheFile: cfg.VirtProbeFile, LibvirtURI: cfg.LibvirtURI,
		Trial: trial, Fixed: cfg.Virtualization, Logger: log})
	go vp.Run(context.Background())
	return vp
}

// spec is the domain as read from vSphere, with this job's disks.
func (j *job) spec() libvirt.DomainSpec {
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
		BIOSUUID:       j.info.UUID,
	}
	for _, p := range j.disks {
		spec.Disks = append(spec.Disks, libvirt.Disk{Path: p, Format: j.format})
	}
	for _, n := range j.info.NICs {
		spec.NICs = append(spec.NICs, libvirt.NIC{Network: n.Network, MAC: n.MAC, Model: n.AdapterType})
	}
	return spec
}

// consoleLog is where the domain's serial console is recorded: beside its disks, so an
// operator finds both in the job's directory.
func (j *job) consoleLog() string {
	return filepath.Join(j.dir, safeName(j.info.Name)+"-console.log")
}

// define defines the domain on the local libvirtd (redefining this job's own earlier one)
// with the virtualisation the host runs and the devices the guest can drive, and starts it
// if asked (and no boot check does that).
func (j *job) define(ctx context.Context) (*proto.JobResult, error) {
	j.stage(proto.StageDefining, "defining domain "+j.info.Name+" on "+j.p.cfg.LibvirtURI)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts := j.def.Options
	spec := j.spec()

	conv := j.conversion
	devices, warnings := chooseDevices(deviceInput{DiskBus: opts.DiskBus, Converted: conv != nil && conv.Converted,
		Windows: isWindows(j.info.GuestID), WhyNotConverted: conversionReason(conv)})
	for _, w := range warnings {
		j.log.Warn("device choice", "warning", w)
		j.rep.Warn(w)
	}
	for i := range spec.Disks {
		spec.Disks[i].Bus = devices.DiskBus
	}
	for i := range spec.NICs {
		spec.NICs[i].Model = devices.NICModel
	}
	lopts := libvirt.Options{
		NetworkMapping: opts.NetworkMapping,
		DefaultNetwork: j.p.cfg.DefaultNetwork,
		// The boot check starts the domain itself, with its console attached.
		StartAfter: opts.StartAfter && !opts.VerifyBoot,
		Logger:     j.log,
	}
	var virt *proto.Virtualization
	if j.p.virt != nil {
		v, err := j.p.virt.Wait(ctx)
		if err != nil {
			return nil, err
		}
		virt = &v
		cpu := capacity.ParseCPUDef(v.CPU)
		lopts.DomainType, lopts.CPU = v.Type, &cpu
		lopts.ConsoleLog = j.consoleLog()
		if v.Type == proto.VirtTCG {
			j.rep.Warn("this agent runs guests under TCG (software emulation, 10-50 times slower than KVM): " + v.Reason)
		}
	}

	j.letQemuIn()
	conn, err := libvirt.Connect(ctx, j.p.cfg.LibvirtURI)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	res, err := libvirt.Define(ctx, conn, spec, lopts)
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
	j.log.Info("domain defined", "domain", res.Name, "disk_bus", devices.DiskBus, "nic", devices.NICModel,
		"virtualization", virtString(virt))
	return &proto.JobResult{
		DomainName: res.Name, DomainUUID: res.UUID, LibvirtURI: j.p.cfg.LibvirtURI,
		Disks:          append([]string(nil), j.disks...),
		Virtualization: virt, Devices: &devices, Conversion: conv,
	}, nil
}

func virtString(v *proto.Virtualization) string {
	if v == nil {
		return "libvirt's choice"
	}
	return v.Type + " " + v.CPU
}

// letQemuIn makes the storage dir and the job's dir traversable (not readable) by others:
// qemu runs as its own user (libvirt-qemu), and libvirt hands it the disk images (it
// chowns the files) but not the directories above them, so a domain whose disks sit in a
// 0750 directory defines fine and then fails to start with "Permission denied".
func (j *job) letQemuIn() {
	for _, d := range []string{j.p.cfg.StorageDir, j.dir} {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o011 == 0o011 {
			continue
		}
		if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
			j.log.Warn("cannot let qemu reach the disks: the domain may not start", "dir", d, "err", err)
		}
	}
}
