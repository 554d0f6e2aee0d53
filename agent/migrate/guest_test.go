package migrate_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/migrate"
	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

func ptr[T any](v T) *T { return &v }

// TestGuestConversionWithoutVirtV2V: a job that requires guest conversion on an agent
// without virt-v2v fails before anything is defined, saying what is missing; one that
// leaves it to the agent (auto) completes unconverted with compatibility devices and a
// warning; one that opted out completes with a warning too.
func TestGuestConversionWithoutVirtV2V(t *testing.T) {
	t.Parallel()
	f := newFixture(t, vcsim.Config{VMs: 3, DiskSize: 8 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		func(c *migrate.Config) {
			c.GuestConversion = migrate.GuestConversionAuto
			c.V2VInPlace = "/nonexistent/virt-v2v-in-place"
		})
	cases := []struct {
		name    string
		conv    *bool
		fails   string // substring of the error; "" = completes
		warning string
	}{
		{name: "required", conv: ptr(true), fails: "virt-v2v-in-place is not installed"},
		{name: "auto", conv: nil, warning: "virt-v2v-in-place is not installed on this agent"},
		{name: "opted out", conv: ptr(false), warning: "guest_conversion is false"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			l := f.lease("job-noconv-"+tc.name, i, proto.Options{ConversionMethod: "https", GuestConversion: tc.conv})
			res, err := f.run(l, rec, 2*time.Minute)
			if tc.fails != "" {
				if err == nil || !strings.Contains(err.Error(), tc.fails) || !errors.Is(err, migrate.ErrGuestConversion) ||
					errors.Is(err, worker.ErrRetryable) || !strings.HasPrefix(err.Error(), "guest_conversion: ") {
					t.Fatalf("err = %v, want a non-retryable guest_conversion error saying %q", err, tc.fails)
				}
				if harness.DomainExists(f.sim.VMs[i].Name) || len(dirEntries(t, f.p.JobDir(l.JobID))) > 0 {
					t.Errorf("a failed conversion left a domain or files")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(strings.Join(rec.warns(), "\n"), tc.warning) {
				t.Errorf("warnings %q lack %q", rec.warns(), tc.warning)
			}
			if res.Conversion == nil || res.Conversion.Converted || res.Devices == nil || res.Devices.DiskBus != "sata" || res.Devices.NICModel != "e1000e" {
				t.Errorf("conversion %+v devices %+v, want not converted, sata + e1000e", res.Conversion, res.Devices)
			}
		})
	}
}

// TestGuestConversionNoOS: virt-v2v really runs (libguestfs's appliance, under TCG where the
// host has no usable KVM) over a disk of random bytes, finds no operating system, and the
// job fails with virt-v2v's own words, leaving no disk and no domain.
func TestGuestConversionNoOS(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("virt-v2v-in-place"); err != nil {
		t.Skip("virt-v2v-in-place is not installed (scripts/host-setup.sh installs it)")
	}
	f := newFixture(t, vcsim.Config{VMs: 1, DiskSize: 32 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 1}})
	rec := &recorder{}
	l := f.lease("job-v2v-noos", 0, proto.Options{ConversionMethod: "https", GuestConversion: ptr(true)})
	_, err := f.run(l, rec, 10*time.Minute)
	if err == nil || !errors.Is(err, migrate.ErrGuestConversion) || !strings.Contains(err.Error(), "No root device found") {
		t.Fatalf("err = %v, want the conversion to fail with virt-v2v's \"No root device found\"", err)
	}
	if harness.DomainExists(f.sim.VMs[0].Name) || len(dirEntries(t, f.p.JobDir(l.JobID))) > 0 {
		t.Errorf("the failed conversion left a domain or files: %v", dirEntries(t, f.p.JobDir(l.JobID)))
	}
	stages := rec.stages()
	if len(stages) == 0 || stages[len(stages)-1] != proto.StageGuestConversion {
		t.Errorf("stages %v, want to end in %s", stages, proto.StageGuestConversion)
	}
}

// TestVerifyBootNeverBoots: the boot check starts a domain whose disk holds random bytes;
// nothing ever comes up on its serial console, so the job fails after the boot timeout with
// the console's tail, and the domain and its disks stay (stopped) for the operator.
func TestVerifyBootNeverBoots(t *testing.T) {
	t.Parallel()
	f := newFixture(t, vcsim.Config{VMs: 1, DiskSize: 8 * mib, MemoryMB: 256, CPUs: 1, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 1}})
	harness.QemuCanReach(t, f.storage)
	rec := &recorder{}
	l := f.lease("job-noboot", 0, proto.Options{ConversionMethod: "https", VerifyBoot: true, BootTimeoutSeconds: 20,
		NetworkMapping: map[string]string{"VM Network": "bridge:" + harness.Bridge(t)}})
	_, err := f.run(l, rec, 5*time.Minute)
	if err == nil || !errors.Is(err, migrate.ErrBootCheck) || errors.Is(err, worker.ErrRetryable) {
		t.Fatalf("err = %v, want a non-retryable boot check failure", err)
	}
	for _, want := range []string{"boot_check: ", "no login prompt within 20s", "is kept (stopped)", "virsh console " + f.sim.VMs[0].Name, "last console lines:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	name := f.sim.VMs[0].Name
	if st, _ := harness.Virsh("domstate", name); strings.TrimSpace(st) != "shut off" {
		t.Errorf("kept domain %s is %q, want shut off", name, strings.TrimSpace(st))
	}
	if files := dirEntries(t, f.p.JobDir(l.JobID)); len(files) == 0 {
		t.Errorf("the kept domain's disks are gone")
	}
}

// TestWindowsWithoutVirtioWin: a Windows guest on an agent without virtio-win's drivers is
// not handed to virt-v2v (which would leave it unable to boot from virtio); it gets the
// compatibility devices Windows boots from, with a warning saying how to get virtio.
func TestWindowsWithoutVirtioWin(t *testing.T) {
	t.Parallel()
	f := newFixture(t, vcsim.Config{VMs: 1, DiskSize: 8 * mib, GuestID: "windows2019srv_64Guest", Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}},
		func(c *migrate.Config) {
			c.GuestConversion = migrate.GuestConversionAuto
			c.V2VInPlace = "/bin/false" // present; the job fails if it is run at all
			c.VirtioWin = "/nonexistent/virtio-win"
		})
	rec := &recorder{}
	res, err := f.run(f.lease("job-windows", 0, proto.Options{ConversionMethod: "https"}), rec, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res.Conversion == nil || res.Conversion.Converted || !strings.Contains(res.Conversion.Reason, "virtio-win") ||
		res.Devices == nil || res.Devices.DiskBus != "sata" || res.Devices.NICModel != "e1000e" {
		t.Errorf("conversion %+v devices %+v, want not converted (no virtio-win) on sata + e1000e", res.Conversion, res.Devices)
	}
	if !strings.Contains(strings.Join(rec.warns(), "\n"), "install the virtio-win drivers") {
		t.Errorf("warnings %q lack the virtio-win advice", rec.warns())
	}
	if d := domainXML(t, f.sim.VMs[0].Name); d.Clock == nil || d.Clock.Offset != "localtime" {
		t.Errorf("a Windows guest's clock %+v, want localtime", d.Clock)
	}
}
