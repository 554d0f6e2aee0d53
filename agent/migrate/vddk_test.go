package migrate_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/migrate"
	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/agent/transfer/vddk"
	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/fakevddk"
)

// The test binary is also the VDDK reader process that transfers start (os.Executable),
// as the agent's binary is.
func TestMain(m *testing.M) {
	vddk.RunIfReader()
	os.Exit(m.Run())
}

// vddkFixture is a pipeline whose VDDK is the fake, serving the simulator's datastores.
type vddkFixture struct {
	*fixture
	fake *fakevddk.Fake
}

func newVDDKFixture(t *testing.T, simCfg vcsim.Config, v fakevddk.Variant, edit ...func(*migrate.Config)) *vddkFixture {
	t.Helper()
	libdir := fakevddk.Build(t, v)
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	vf := &vddkFixture{}
	conf := filepath.Join(dir, "fakevddk.conf")
	vf.fixture = newFixture(t, simCfg, func(c *migrate.Config) {
		c.VDDKLibDir = libdir
		// Parallel tests share this process: each reader gets its test's fake through
		// the reader command, where the agent's readers inherit the agent's environment.
		c.Transfer.VDDKReader = []string{"env", fakevddk.EnvVar + "=" + conf, exe, vddk.Subcommand}
		for _, e := range edit {
			e(c)
		}
	})
	cfg := fakevddk.ForSim(vf.sim, "")
	cfg.Password = canaryPassword
	vf.fake = fakevddk.New(t, dir, cfg)
	return vf
}

// TestMigrateVDDK: VMs with two disks (data, a hole, and a data island in the hole) copied
// through the fake VDDK at the migration snapshot: byte-identical, only allocated chunks
// read, the snapshot passed to ConnectEx and removed afterwards; auto picks vddk where it
// loads; a VDDK without QueryAllocatedBlocks reads everything and says so.
func TestMigrateVDDK(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		variant fakevddk.Variant
		opts    proto.Options
		disks   int
		size    int64
		format  string
		warning string
	}{
		{"vddk, two disks, qcow2, half sparse", fakevddk.Standard, proto.Options{ConversionMethod: "vddk"}, 2, 64 * mib, "qcow2", ""},
		{"auto picks vddk, one disk, raw, odd size", fakevddk.Standard, proto.Options{OutputFormat: "raw"}, 1, 33 * mib, "raw", ""},
		{"VDDK without QueryAllocatedBlocks", fakevddk.NoQueryAllocated, proto.Options{ConversionMethod: "vddk"}, 2, 16 * mib, "qcow2", "VDDK 6.7 or later"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newVDDKFixture(t, vcsim.Config{VMs: 1, DisksPerVM: tc.disks, DiskSize: tc.size, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}}, tc.variant)
			vm := f.sim.VMs[0]
			// A data island inside the hole: holes between data must be found, not only the tail.
			for _, d := range vm.Disks {
				writeIsland(t, d.FlatPath, tc.size*3/4)
			}
			rec := &recorder{}
			res, err := f.run(f.lease(fmt.Sprintf("job-vddk-%d", i), 0, tc.opts), rec, 2*time.Minute)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if !strings.Contains(strings.Join(progressMessages(rec), "\n"), "with vddk") {
				t.Errorf("not copied with vddk: %q", progressMessages(rec))
			}
			last := rec.last()
			if last.Stage != proto.StageCompleted || last.PercentComplete != 100 || last.TotalBytes != int64(tc.disks)*tc.size || len(res.Disks) != tc.disks {
				t.Errorf("last progress %+v", last)
			}
			st := f.fake.ReadStats()
			for k, p := range res.Disks {
				flat := vm.Disks[k].FlatPath
				sameContent(t, flat, p, tc.format)
				data, err := fakevddk.DataRanges(flat)
				if err != nil {
					t.Fatal(err)
				}
				read := st.BytesRead(flat)
				if tc.variant == fakevddk.Standard {
					if err := st.CheckReadsInData(flat, data, 64<<10); err != nil {
						t.Error(err)
					}
					if want := fakevddk.AllocatedBytes(data, 64<<10, tc.size); read != want {
						t.Errorf("disk %d: read %d bytes, the allocated chunks hold %d", k, read, want)
					}
				} else if read != tc.size {
					t.Errorf("disk %d: read %d of %d bytes without QueryAllocatedBlocks", k, read, tc.size)
				}
				t.Logf("disk %d: %d bytes, %d with data, %d read", k, tc.size, fakevddk.AllocatedBytes(data, 1, tc.size), read)
			}
			connects := st.Where("call", "ConnectEx")
			if len(connects) == 0 {
				t.Fatal("no ConnectEx")
			}
			for _, c := range connects {
				if c["vmx"] != "moref="+vm.Moref || !strings.HasPrefix(c["snapshot"], "snapshot-") || c["read_only"] != "1" || c["transports"] != "nbdssl:nbd" {
					t.Errorf("ConnectEx %v: want vmx moref=%s, a snapshot, read-only, nbdssl:nbd", c, vm.Moref)
				}
			}
			if st.Calls["InitEx"] != tc.disks || st.Calls["Exit"] != tc.disks {
				t.Errorf("InitEx %d, Exit %d: want one each per disk's reader", st.Calls["InitEx"], st.Calls["Exit"])
			}
			if f.vsphereInfo(0).HasSnapshots {
				t.Error("the migration snapshot was not removed")
			}
			warns := strings.Join(rec.warns(), "\n")
			if tc.warning != "" && strings.Count(warns, tc.warning) != 1 {
				t.Errorf("warnings %q: want %q once", rec.warns(), tc.warning)
			}
			if tc.warning == "" && strings.Contains(warns, "VDDK") {
				t.Errorf("unexpected warnings %q", rec.warns())
			}
		})
	}
}

// TestMigrateVDDKFailures: a thumbprint VDDK does not accept and a crash inside VDDK fail
// the job with what to do, leave no files, no domain, no snapshot and no process; the
// thumbprint is the job's mistake (not retried), the crash is not (retried).
func TestMigrateVDDKFailures(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		edit      func(*fakevddk.Config)
		retryable bool
		want      []string
	}{
		{"VDDK rejects the thumbprint", func(c *fakevddk.Config) { c.Thumbprint = "12:34:56:78" }, false,
			[]string{"conversion", "source.thumbprint", "actual thumbprint=12:34:56:78"}},
		{"VDDK rejects the password", func(c *fakevddk.Config) { c.Password = "another-password" }, false,
			[]string{"conversion", "refused the credentials", "source.password"}},
		{"VDDK crashes", func(c *fakevddk.Config) { c.CrashAfterBytes = 4 << 20 }, true,
			[]string{"conversion", "reader process", "signal: aborted"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newVDDKFixture(t, vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: 16 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.75}}, fakevddk.Standard)
			tc.edit(&f.fake.Cfg)
			f.fake.Write()
			jobID := fmt.Sprintf("job-vddk-fail-%d", i)
			_, err := f.run(f.lease(jobID, 0, proto.Options{ConversionMethod: "vddk"}), &recorder{}, 2*time.Minute)
			if err == nil {
				t.Fatal("Run succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if errors.Is(err, worker.ErrRetryable) != tc.retryable {
				t.Errorf("retryable = %v, want %v (%v)", !tc.retryable, tc.retryable, err)
			}
			if tc.retryable != errors.Is(err, transfer.ErrSource) {
				t.Errorf("error kind: %v", err)
			}
			if strings.Contains(err.Error(), canaryPassword) {
				t.Error("the password is in the error")
			}
			if files := dirEntries(t, f.p.JobDir(jobID)); len(files) != 0 {
				t.Errorf("files left: %v", files)
			}
			if f.vsphereInfo(0).HasSnapshots {
				t.Error("the migration snapshot was not removed")
			}
			// Tests run in parallel: look for this job's processes only (qemu-nbd names the
			// job's dir, a reader has this test's fake in its environment).
			if left := processesMentioning(f.p.JobDir(jobID), f.fake.Env()); len(left) > 0 {
				t.Errorf("processes left: %v", left)
			}
		})
	}
}

// processesMentioning lists processes whose command line or environment contains one of
// the strings.
func processesMentioning(ss ...string) []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' || e.Name() == strconv.Itoa(os.Getpid()) {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		for _, s := range ss {
			if bytes.Contains(cmd, []byte(s)) || bytes.Contains(env, []byte(s)) {
				found = append(found, e.Name()+": "+string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
				break
			}
		}
	}
	return found
}

// writeIsland writes 1 MiB of non-zero bytes at off into a flat extent.
func writeIsland(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, mib)
	for i := range b {
		b[i] = byte(i*7 + 1)
	}
	if _, err := f.WriteAt(b, off&^(64<<10-1)); err != nil {
		t.Fatal(err)
	}
}
