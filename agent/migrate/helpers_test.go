package migrate_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/hypersdk/hypersdk/agent/migrate"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
	"github.com/hypersdk/hypersdk/test/harness"
)

const mib = 1 << 20

// canaryPassword is the vCenter password of every test job: no log line, error or result
// may ever contain it.
const canaryPassword = "canary-S3cret-pw"

// logSink shows log lines in the test output and keeps them for the password check.
type logSink struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.b.Write(p)
	s.mu.Unlock()
	s.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// recorder is the worker.Reporter of a test: it keeps every progress and warning, and
// answers the commit point with refuse (nil: committed), noting the stage it came at.
type recorder struct {
	mu       sync.Mutex
	progress []proto.Progress
	warnings []string
	onUpdate func(proto.Progress)
	refuse   error
	commits  []string // "domain@uri", in order
}

func (r *recorder) Commit(ctx context.Context, domain, libvirtURI string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.commits = append(r.commits, domain+"@"+libvirtURI)
	return r.refuse
}

func (r *recorder) committed() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.commits...)
}

func (r *recorder) Progress(p proto.Progress) {
	r.mu.Lock()
	r.progress = append(r.progress, p)
	f := r.onUpdate
	r.mu.Unlock()
	if f != nil {
		f(p)
	}
}

func (r *recorder) Warn(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.warnings = append(r.warnings, msg)
}

// stages lists the stages reported, in order, without repeats.
func (r *recorder) stages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []string
	for _, p := range r.progress {
		if len(s) == 0 || s[len(s)-1] != p.Stage {
			s = append(s, p.Stage)
		}
	}
	return s
}

func (r *recorder) last() proto.Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.progress) == 0 {
		return proto.Progress{}
	}
	return r.progress[len(r.progress)-1]
}

func (r *recorder) warns() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.warnings...)
}

// fixture is one simulator and one pipeline writing into a private storage dir.
type fixture struct {
	t       *testing.T
	sim     *vcsim.Sim
	p       *migrate.Pipeline
	storage string
	logs    *logSink
}

func newFixture(t *testing.T, simCfg vcsim.Config, edit ...func(*migrate.Config)) *fixture {
	t.Helper()
	harness.RequireLibvirt(t)
	f := &fixture{t: t, storage: t.TempDir(), logs: &logSink{t: t}}
	simCfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if simCfg.Username == "" {
		simCfg.Username, simCfg.Password = "admin", canaryPassword
	}
	f.sim = harness.StartSim(t, simCfg)
	cfg := migrate.Config{
		StorageDir: f.storage, LibvirtURI: harness.LibvirtURI,
		// The simulator's disks hold random bytes, which virt-v2v cannot inspect: tests
		// that convert a guest ask for it per job or set this back to auto.
		GuestConversion: migrate.GuestConversionOff,
		VirtProbeFile:   harness.VirtProbeFile,
		Logger:          slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	for _, e := range edit {
		e(&cfg)
	}
	var err error
	if f.p, err = migrate.New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if strings.Contains(f.logs.String(), canaryPassword) {
			t.Errorf("the vCenter password appears in the pipeline's log")
		}
	})
	return f
}

// lease builds the lease of a job on the simulator's VM i; the domain it will define is
// undefined when the test ends.
func (f *fixture) lease(jobID string, vm int, opts proto.Options) proto.Lease {
	v := f.sim.VMs[vm]
	harness.CleanupDomain(f.t, v.Name)
	return proto.Lease{
		LeaseToken: proto.LeaseToken{JobID: jobID, Attempt: 1},
		TTLSeconds: 15,
		Definition: proto.JobDefinition{
			ID: jobID, VMPath: v.Path,
			Source: proto.Source{Type: "vsphere", VCenterURL: f.sim.URL.String(), Username: f.sim.Username,
				Password: canaryPassword, Thumbprint: f.sim.Thumbprint},
			Destination: proto.Destination{Type: "kvm"},
			Options:     opts,
		},
	}
}

func (f *fixture) run(l proto.Lease, r *recorder, timeout time.Duration) (*proto.JobResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return f.p.Run(ctx, l, r)
}

// vsphereInfo reads a simulated VM as the pipeline sees it.
func (f *fixture) vsphereInfo(vm int) *vsphere.VMInfo {
	f.t.Helper()
	var info *vsphere.VMInfo
	f.withVM(vm, func(ctx context.Context, c *vsphere.Client, v *vsphere.VM) (err error) {
		info, err = c.VMInfo(ctx, v)
		return err
	})
	return info
}

// withVM runs do with a vCenter session of the simulator and one of its VMs.
func (f *fixture) withVM(vm int, do func(context.Context, *vsphere.Client, *vsphere.VM) error) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: f.sim.URL.String(), Username: f.sim.Username, Password: canaryPassword,
		Thumbprint: f.sim.Thumbprint, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.t.Fatal(err)
	}
	defer c.Close(ctx)
	v, err := c.FindVM(ctx, f.sim.VMs[vm].Path)
	if err == nil {
		err = do(ctx, c, v)
	}
	if err != nil {
		f.t.Fatal(err)
	}
}

// domainXML reads a defined domain's persistent XML.
func domainXML(t *testing.T, name string) *libvirtxml.Domain {
	t.Helper()
	out, err := harness.Virsh("dumpxml", "--inactive", name)
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(out); err != nil {
		t.Fatal(err)
	}
	return &d
}

// sameContent checks an image against the source's flat extent with qemu-img compare
// (which compares guest-visible content: holes read as zeros on both sides).
func sameContent(t *testing.T, flat, image, format string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", format, flat, image).CombinedOutput()
	if err != nil {
		t.Errorf("qemu-img compare %s %s: %v: %s", flat, image, err, bytes.TrimSpace(out))
	}
}

// dirEntries lists a directory ("" when it does not exist).
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// childTools lists tool processes (nbdkit, qemu-img, qemu-nbd) whose parent is this test
// process: after a job ends there must be none.
func childTools(t *testing.T) []string {
	t.Helper()
	me := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		open, closeIdx := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closeIdx < 0 {
			continue
		}
		comm := s[open+1 : closeIdx]
		fields := strings.Fields(s[closeIdx+1:])
		if len(fields) < 2 || fields[0] == "Z" {
			continue
		}
		if fields[1] == strconv.Itoa(me) && (comm == "nbdkit" || comm == "qemu-img" || comm == "qemu-nbd") {
			found = append(found, comm+"/"+e.Name())
		}
	}
	return found
}
