package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmware/govmomi/vim25/types"
	"libvirt.org/go/libvirtxml"

	"github.com/hypersdk/hypersdk/agent/libvirt"
	"github.com/hypersdk/hypersdk/agent/migrate"
	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
	"github.com/hypersdk/hypersdk/test/harness"
)

var allStages = []string{proto.StageConnecting, proto.StagePreparing, proto.StageConversion, proto.StageDefining, proto.StageCompleted}

// TestMigrate copies two-disk VMs (random bytes, then a hole) with each method and format
// and checks what a user gets: disks byte-identical to the source extents, sparse, in the
// job's directory; a domain with the VM's vCPUs, memory, disks, mapped NICs and MACs and
// the job id; progress through every stage to 100%; the transfer metrics.
func TestMigrate(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, vcsim.Config{VMs: 3, DisksPerVM: 2, DiskSize: 64 * mib, CPUs: 4, MemoryMB: 1536,
		Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}, func(c *migrate.Config) { c.Registry = reg })

	cases := []struct {
		name       string
		opts       proto.Options
		wantMethod string
		format     string
		nicKind    string // interface type in the domain
		nicTarget  string
		warning    string // a warning the job must carry
	}{
		{name: "https to qcow2, NIC mapped to a bridge", opts: proto.Options{ConversionMethod: "https", NetworkMapping: map[string]string{"VM Network": "bridge:hsdk-br9"}},
			format: "qcow2", nicKind: "bridge", nicTarget: "hsdk-br9", warning: `host bridge "hsdk-br9", which does not exist`},
		{name: "nfc to raw, NIC unmapped", opts: proto.Options{ConversionMethod: "nfc", OutputFormat: "raw", DiskBus: "sata", GuestConversion: new(bool)},
			format: "raw", nicKind: "network", nicTarget: "default", warning: "guest_conversion is false"},
		{name: "auto picks https for a powered-off VM with flat disks", opts: proto.Options{ConversionMethod: "auto", NetworkMapping: map[string]string{"VM Network": "network:hsdk-net9"}},
			wantMethod: "https", format: "qcow2", nicKind: "network", nicTarget: "hsdk-net9", warning: `libvirt network "hsdk-net9", which does not exist`},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			jobID := fmt.Sprintf("job-migrate-%d", i)
			l := f.lease(jobID, i, tc.opts)
			vm := f.sim.VMs[i]
			rec := &recorder{}
			res, err := f.run(l, rec, 2*time.Minute)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := rec.stages(); !slices.Equal(got, allStages) {
				t.Errorf("stages %v, want %v", got, allStages)
			}
			last := rec.last()
			if last.Stage != proto.StageCompleted || last.PercentComplete != 100 || last.CurrentBytes != 128*mib || last.TotalBytes != 128*mib {
				t.Errorf("last progress %+v, want completed 100%% of %d bytes", last, 128*mib)
			}
			if !strings.Contains(strings.Join(rec.warns(), "\n"), tc.warning) {
				t.Errorf("warnings %q lack %q", rec.warns(), tc.warning)
			}
			// Not converted: compatibility devices the guest has drivers for, and the
			// source's BIOS UUID as the domain's (the guest's SMBIOS UUID).
			if res.Devices == nil || res.Devices.DiskBus != "sata" || res.Devices.NICModel != "e1000e" ||
				res.Conversion == nil || res.Conversion.Converted || res.Conversion.Reason == "" {
				t.Errorf("result devices %+v conversion %+v, want sata/e1000e, not converted with a reason", res.Devices, res.Conversion)
			}
			if res.Virtualization == nil || (res.Virtualization.Type != "kvm" && res.Virtualization.Type != "qemu") {
				t.Errorf("result virtualization %+v", res.Virtualization)
			}
			if tc.wantMethod != "" && !strings.Contains(strings.Join(progressMessages(rec), "\n"), "with "+tc.wantMethod) {
				t.Errorf("progress never says the method is %s: %q", tc.wantMethod, progressMessages(rec))
			}

			// Disks: in the job's dir, named after the VM, identical to the source, sparse.
			if res.DomainName != vm.Name || res.LibvirtURI != harness.LibvirtURI || len(res.Disks) != 2 {
				t.Fatalf("result %+v", res)
			}
			for k, p := range res.Disks {
				if filepath.Dir(p) != f.p.JobDir(jobID) || !strings.HasPrefix(filepath.Base(p), vm.Name) || !strings.HasSuffix(p, "."+tc.format) {
					t.Errorf("disk %d at %s, want %s/%s-disk%d.%s", k, p, f.p.JobDir(jobID), vm.Name, k, tc.format)
				}
				sameContent(t, vm.Disks[k].FlatPath, p, tc.format)
				if alloc := allocatedBytes(t, p); alloc > 40*mib {
					t.Errorf("disk %d allocates %d bytes for 32 MiB of data: not sparse", k, alloc)
				}
			}

			// Domain: what the VM had.
			info := f.vsphereInfo(i)
			d := domainXML(t, vm.Name)
			if d.VCPU == nil || d.VCPU.Value != 4 {
				t.Errorf("vcpus %+v, want 4", d.VCPU)
			}
			if d.CPU == nil || d.CPU.Topology == nil || d.CPU.Topology.Sockets*d.CPU.Topology.Cores*d.CPU.Topology.Threads != 4 ||
				d.CPU.Topology.Cores != int(info.CoresPerSocket) {
				t.Errorf("cpu topology %+v, want %d cores per socket, 4 vCPUs", d.CPU, info.CoresPerSocket)
			}
			if mem := memoryMiB(d); mem != 1536 {
				t.Errorf("memory %d MiB, want 1536", mem)
			}
			if d.Devices == nil || len(d.Devices.Disks) != 2 {
				t.Fatalf("domain disks %+v", d.Devices)
			}
			for k, dd := range d.Devices.Disks {
				if dd.Source == nil || dd.Source.File == nil || dd.Source.File.File != res.Disks[k] || dd.Driver == nil || dd.Driver.Type != tc.format {
					t.Errorf("domain disk %d: %+v, want file %s format %s", k, dd.Source, res.Disks[k], tc.format)
				}
				if bus := tc.opts.DiskBus; bus != "" && (dd.Target == nil || dd.Target.Bus != bus) {
					t.Errorf("domain disk %d bus %+v, want %s", k, dd.Target, bus)
				}
			}
			if len(d.Devices.Interfaces) != 1 || len(info.NICs) != 1 {
				t.Fatalf("interfaces %d (VM has %d NICs)", len(d.Devices.Interfaces), len(info.NICs))
			}
			nic := d.Devices.Interfaces[0]
			if nic.MAC == nil || !strings.EqualFold(nic.MAC.Address, info.NICs[0].MAC) {
				t.Errorf("MAC %+v, want %s", nic.MAC, info.NICs[0].MAC)
			}
			switch tc.nicKind {
			case "bridge":
				if nic.Source == nil || nic.Source.Bridge == nil || nic.Source.Bridge.Bridge != tc.nicTarget {
					t.Errorf("interface source %+v, want bridge %s", nic.Source, tc.nicTarget)
				}
			case "network":
				if nic.Source == nil || nic.Source.Network == nil || nic.Source.Network.Network != tc.nicTarget {
					t.Errorf("interface source %+v, want network %s", nic.Source, tc.nicTarget)
				}
			}
			if !strings.EqualFold(d.UUID, info.UUID) || !strings.EqualFold(res.DomainUUID, info.UUID) {
				t.Errorf("domain uuid %s (result %s), want the source's BIOS UUID %s", d.UUID, res.DomainUUID, info.UUID)
			}
			if nic.Model == nil || nic.Model.Type != "e1000e" {
				t.Errorf("NIC model %+v, want e1000e for an unconverted guest", nic.Model)
			}
			if d.Metadata == nil || !strings.Contains(d.Metadata.XML, jobID) || !strings.Contains(d.Metadata.XML, info.UUID) {
				t.Errorf("metadata %+v lacks job id %s and source uuid %s", d.Metadata, jobID, info.UUID)
			}
			if kids := childTools(t); len(kids) > 0 {
				t.Errorf("tool processes left running: %v", kids)
			}
		})
	}
	if got := transferBytes(t, reg, "https"); got < 2*128*mib {
		t.Errorf("hypersdk_agent_transfer_bytes_total{method=https} = %v, want ≥ %d", got, 2*128*mib)
	}
	if got := transferBytes(t, reg, "nfc"); got < 128*mib {
		t.Errorf("hypersdk_agent_transfer_bytes_total{method=nfc} = %v, want ≥ %d", got, 128*mib)
	}
}

// TestRetryRedefinesOwnDomain: a second attempt of the same job (as after an agent was
// killed) replaces its own files and redefines its own domain: one domain, same UUID.
// Another job for the same VM fails before copying anything, saying who owns the name.
func TestRetryRedefinesOwnDomain(t *testing.T) {
	f := newFixture(t, vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: 16 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}})
	l := f.lease("job-retry", 0, proto.Options{ConversionMethod: "https"})
	first, err := f.run(l, &recorder{}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Leftovers of a killed attempt: a partial file the retry must not keep.
	stray := filepath.Join(f.p.JobDir("job-retry"), "partial.tmp")
	if err := os.WriteFile(stray, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	l.Attempt = 2
	second, err := f.run(l, &recorder{}, time.Minute)
	if err != nil {
		t.Fatalf("attempt 2: %v", err)
	}
	if second.DomainUUID != first.DomainUUID || second.DomainName != first.DomainName {
		t.Errorf("attempt 2 defined %s/%s, attempt 1 %s/%s: not a redefinition", second.DomainName, second.DomainUUID, first.DomainName, first.DomainUUID)
	}
	out, err := harness.Virsh("list", "--all", "--name")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, first.DomainName+"\n"); n != 1 {
		t.Errorf("%d domains named %s, want 1", n, first.DomainName)
	}
	if got := dirEntries(t, f.p.JobDir("job-retry")); len(got) != 1 || filepath.Join(f.p.JobDir("job-retry"), got[0]) != second.Disks[0] {
		t.Errorf("job dir holds %v, want only %s", got, second.Disks[0])
	}
	sameContent(t, f.sim.VMs[0].Disks[0].FlatPath, second.Disks[0], "qcow2")

	other := f.lease("job-other", 0, proto.Options{ConversionMethod: "https"})
	rec := &recorder{}
	_, err = f.run(other, rec, time.Minute)
	if !errors.Is(err, libvirt.ErrDomainExists) || errors.Is(err, worker.ErrRetryable) ||
		!strings.Contains(err.Error(), "job-retry") || !strings.HasPrefix(err.Error(), "preparing:") {
		t.Errorf("another job on the same name: %v; want a non-retryable collision at preparing naming job-retry", err)
	}
	if slices.Contains(rec.stages(), proto.StageConversion) {
		t.Errorf("the colliding job copied disks: stages %v", rec.stages())
	}
	if got := dirEntries(t, f.p.JobDir("job-other")); len(got) != 0 {
		t.Errorf("the colliding job left files: %v", got)
	}
	if d := domainXML(t, first.DomainName); d.UUID != first.DomainUUID || !strings.Contains(d.Metadata.XML, "job-retry") {
		t.Errorf("the first job's domain was changed by the colliding job")
	}
}

// TestSourceErrors: mistakes in the job fail with a message that says what to fix, are not
// retried, leave nothing behind and never show the password.
func TestSourceErrors(t *testing.T) {
	f := newFixture(t, vcsim.Config{VMs: 2, DisksPerVM: 1, DiskSize: 8 * mib, PowerOn: true})
	cases := []struct {
		name  string
		edit  func(*proto.Lease)
		is    error
		want  []string
		stage string
	}{
		{name: "bad credentials", edit: func(l *proto.Lease) { l.Definition.Source.Password = "wrong-" + canaryPassword },
			is: vsphere.ErrBadCredentials, want: []string{"bad vCenter credentials", `user "admin"`}, stage: "connecting"},
		{name: "untrusted certificate", edit: func(l *proto.Lease) { l.Definition.Source.Thumbprint = "" },
			is: vsphere.ErrUntrustedCertificate, want: []string{"source.insecure", "source.thumbprint", f.sim.Thumbprint}, stage: "connecting"},
		{name: "pinned thumbprint does not match", edit: func(l *proto.Lease) {
			l.Definition.Source.Thumbprint = strings.Repeat("AB:", 19) + "AB"
		}, is: vsphere.ErrUntrustedCertificate, want: []string{"does not match source.thumbprint"}, stage: "connecting"},
		{name: "VM not found", edit: func(l *proto.Lease) { l.Definition.VMPath = "/DC0/vm/no-such-vm" },
			is: vsphere.ErrVMNotFound, want: []string{"no-such-vm"}, stage: "connecting"},
		{name: "powered on without shutdown options", edit: func(*proto.Lease) {},
			is: migrate.ErrPoweredOn, want: []string{"powered on", "options.shutdown", "options.power_off"}, stage: "preparing"},
		{name: "vddk without VDDK on this host", edit: func(l *proto.Lease) {
			l.Definition.Options = proto.Options{ConversionMethod: "vddk", PowerOff: true}
		}, is: transfer.ErrVDDKUnavailable, want: []string{"vddk"}, stage: "preparing"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			jobID := fmt.Sprintf("job-err-%d", i)
			l := f.lease(jobID, 0, proto.Options{ConversionMethod: "https"})
			tc.edit(&l)
			res, err := f.run(l, &recorder{}, time.Minute)
			if err == nil {
				t.Fatalf("Run succeeded: %+v", res)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			if errors.Is(err, worker.ErrRetryable) {
				t.Errorf("error %q is marked retryable: a retry fails the same way", err)
			}
			if !strings.HasPrefix(err.Error(), tc.stage+": ") {
				t.Errorf("error %q does not name the stage %s", err, tc.stage)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), canaryPassword) {
				t.Errorf("error shows the password: %q", err)
			}
			if got := dirEntries(t, f.p.JobDir(jobID)); len(got) != 0 {
				t.Errorf("failed job left files: %v", got)
			}
			if harness.DomainExists(f.sim.VMs[0].Name) {
				t.Errorf("failed job left a domain")
			}
		})
	}
}

// TestLibvirtDownFailsBeforeTheCopy: with libvirt unreachable, a job fails in preparing,
// before any byte is copied, retryable (another host may take it), saying what to do.
func TestLibvirtDownFailsBeforeTheCopy(t *testing.T) {
	noDaemon := "qemu+unix:///system?socket=" + filepath.Join(t.TempDir(), "none.sock")
	f := newFixture(t, vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: 8 * mib}, func(c *migrate.Config) { c.LibvirtURI = noDaemon })
	l := f.lease("job-nolibvirt", 0, proto.Options{ConversionMethod: "https"})
	r := &recorder{}
	_, err := f.run(l, r, time.Minute)
	if !errors.Is(err, libvirt.ErrLibvirtUnreachable) || !errors.Is(err, worker.ErrRetryable) ||
		!strings.HasPrefix(err.Error(), "preparing: ") || !strings.Contains(err.Error(), "systemctl start libvirtd") {
		t.Fatalf("error %v: want a retryable libvirt-unreachable failure in preparing", err)
	}
	if p := r.last(); p.CurrentBytes != 0 || slices.Contains(r.stages(), proto.StageConversion) {
		t.Fatalf("bytes were copied before the failure: stages %v, last %+v", r.stages(), p)
	}
	if got := dirEntries(t, f.p.JobDir("job-nolibvirt")); len(got) != 0 {
		t.Errorf("failed job left files: %v", got)
	}
}

// TestPowerOptions: a running VM is shut down or powered off only as the options say; a
// guest that ignores the shutdown is powered off after the timeout when power_off allows
// it (with a warning), else the job fails saying so.
func TestPowerOptions(t *testing.T) {
	f := newFixture(t, vcsim.Config{VMs: 3, DisksPerVM: 1, DiskSize: 8 * mib, PowerOn: true, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 1}})
	if err := f.sim.SetGuestIgnoresShutdown(f.sim.VMs[1].Name, true); err != nil {
		t.Fatal(err)
	}
	if err := f.sim.SetGuestIgnoresShutdown(f.sim.VMs[2].Name, true); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		vm      int
		opts    proto.Options
		wantErr string
		warning string
	}{
		{name: "graceful shutdown, CD-ROM removed", vm: 0, opts: proto.Options{Shutdown: true, RemoveCDROM: true}},
		{name: "hung guest without power_off fails after the timeout", vm: 1, opts: proto.Options{Shutdown: true, ShutdownTimeoutSeconds: 1},
			wantErr: "options.power_off"},
		{name: "hung guest is powered off after the timeout", vm: 2, opts: proto.Options{Shutdown: true, PowerOff: true, ShutdownTimeoutSeconds: 1},
			warning: "did not shut down within 1s"},
		{name: "power off", vm: 1, opts: proto.Options{PowerOff: true}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.ConversionMethod = "https"
			l := f.lease(fmt.Sprintf("job-power-%d", i), tc.vm, tc.opts)
			rec := &recorder{}
			res, err := f.run(l, rec, time.Minute)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || errors.Is(err, worker.ErrRetryable) {
					t.Fatalf("Run: %v; want a non-retryable error mentioning %q", err, tc.wantErr)
				}
				if st := f.vsphereInfo(tc.vm).PowerState; st != "poweredOn" {
					t.Errorf("VM is %s after a failed shutdown without power_off: the job must not power it off", st)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			info := f.vsphereInfo(tc.vm)
			if info.PowerState != "poweredOff" {
				t.Errorf("source VM is %s after the migration", info.PowerState)
			}
			if tc.warning != "" && !strings.Contains(strings.Join(rec.warns(), "\n"), tc.warning) {
				t.Errorf("warnings %q lack %q", rec.warns(), tc.warning)
			}
			sameContent(t, f.sim.VMs[tc.vm].Disks[0].FlatPath, res.Disks[0], "qcow2")
			if tc.opts.RemoveCDROM {
				if hasCDROM(t, f, tc.vm) {
					t.Errorf("the VM still has a CD-ROM")
				}
			}
		})
	}
}

// TestCancelAndBrokenTransfer: a cancel in the middle of the copy and a source that goes
// away in the middle both stop the job promptly and leave no files, no domain and no tool
// process; the broken transfer is retryable, the cancel returns the context's error.
func TestCancelAndBrokenTransfer(t *testing.T) {
	f := newFixture(t, vcsim.Config{VMs: 2, DisksPerVM: 2, DiskSize: 64 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		func(c *migrate.Config) {
			// A broken range is read again once, quickly: the broken case stays short.
			c.Transfer = transfer.Config{Retries: 1, RetryDelay: time.Second, RequestTimeout: 5 * time.Second}
		})
	cases := []struct {
		name  string
		vm    int
		opts  proto.Options
		stop  func(cancel context.CancelFunc, th *harness.Throttle)
		check func(t *testing.T, err error)
	}{
		{name: "cancel during https", vm: 0, opts: proto.Options{ConversionMethod: "https"},
			stop: func(cancel context.CancelFunc, _ *harness.Throttle) { cancel() },
			check: func(t *testing.T, err error) {
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run after cancel: %v, want context.Canceled", err)
				}
			}},
		{name: "source gone during https", vm: 1, opts: proto.Options{ConversionMethod: "https"},
			stop: func(_ context.CancelFunc, th *harness.Throttle) { th.Close() },
			check: func(t *testing.T, err error) {
				if err == nil || !errors.Is(err, worker.ErrRetryable) || !strings.HasPrefix(err.Error(), "conversion:") {
					t.Errorf("Run after the source went away: %v, want a retryable conversion error", err)
				}
			}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// 2 MB/s per connection: the copy takes about 30 s, long enough to interrupt.
			th := harness.StartThrottle(t, f.sim.URL.Host, 2<<20)
			jobID := fmt.Sprintf("job-stop-%d", i)
			l := f.lease(jobID, tc.vm, tc.opts)
			l.Definition.Source.VCenterURL = "https://" + th.Addr + "/sdk"
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rec := &recorder{}
			fired := make(chan struct{})
			rec.onUpdate = func(p proto.Progress) {
				if p.Stage == proto.StageConversion && p.CurrentBytes > 4*mib {
					select {
					case <-fired:
					default:
						close(fired)
					}
				}
			}
			done := make(chan error, 1)
			go func() {
				_, err := f.p.Run(ctx, l, rec)
				done <- err
			}()
			select {
			case <-fired:
			case err := <-done:
				t.Fatalf("job ended before it could be interrupted: %v", err)
			case <-time.After(45 * time.Second):
				t.Fatal("no conversion progress")
			}
			files := dirEntries(t, f.p.JobDir(jobID))
			if len(files) == 0 {
				t.Fatalf("no partial files while copying")
			}
			// Both disks of the VM are being copied at once: one after the other, the
			// second image would not exist before the first is complete.
			if len(files) != len(f.sim.VMs[tc.vm].Disks) {
				t.Errorf("%d of %d disk images exist mid-copy: %v (disks are not copied in parallel)", len(files), len(f.sim.VMs[tc.vm].Disks), files)
			}
			stopped := time.Now()
			tc.stop(cancel, th)
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the job did not stop within 30 s")
			}
			t.Logf("stopped in %s: %v", time.Since(stopped).Round(time.Millisecond), err)
			tc.check(t, err)
			if got := dirEntries(t, f.p.JobDir(jobID)); len(got) != 0 {
				t.Errorf("files left: %v", got)
			}
			if harness.DomainExists(f.sim.VMs[tc.vm].Name) {
				t.Errorf("a domain was defined")
			}
			if kids := childTools(t); len(kids) > 0 {
				t.Errorf("tool processes left running: %v", kids)
			}
		})
	}
}

func progressMessages(r *recorder) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var m []string
	for _, p := range r.progress {
		m = append(m, p.Message)
	}
	return m
}

func allocatedBytes(t *testing.T, p string) int64 {
	t.Helper()
	out, err := exec.Command("du", "--block-size=1", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	fmt.Sscanf(string(out), "%d", &n)
	return n
}

func memoryMiB(d *libvirtxml.Domain) int64 {
	if d.Memory == nil {
		return 0
	}
	v := int64(d.Memory.Value)
	switch strings.ToLower(d.Memory.Unit) {
	case "", "kib", "k":
		return v / 1024
	case "mib", "m":
		return v
	case "gib", "g":
		return v * 1024
	case "b", "bytes":
		return v / mib
	}
	return v
}

func transferBytes(t *testing.T, reg *prometheus.Registry, method string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "hypersdk_agent_transfer_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "method" && lp.GetValue() == method {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no hypersdk_agent_transfer_bytes_total{method=%q}", method)
	return 0
}

func hasCDROM(t *testing.T, f *fixture, vm int) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: f.sim.URL.String(), Username: f.sim.Username, Password: canaryPassword, Thumbprint: f.sim.Thumbprint})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	v, err := c.FindVM(ctx, f.sim.VMs[vm].Path)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := v.Object().Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return len(devs.SelectByType((*types.VirtualCdrom)(nil))) > 0
}
