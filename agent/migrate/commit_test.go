package migrate_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/test/harness"
)

// The commit point in the pipeline: after the copy, before anything reaches libvirt, the
// pipeline asks to commit, naming the domain; refused, it deletes the disks it copied and
// defines nothing; committed, it defines once.
func TestCommitPointBeforeDefine(t *testing.T) {
	f := newFixture(t, vcsim.Config{VMs: 1, DisksPerVM: 1, DiskSize: 16 * mib, Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}})
	vm := f.sim.VMs[0]

	refused := &recorder{refuse: fmt.Errorf("%w: 409 job attempt 1: stale lease", worker.ErrNotCommitted)}
	l := f.lease("job-not-committed", 0, proto.Options{ConversionMethod: "https"})
	_, err := f.run(l, refused, time.Minute)
	if !errors.Is(err, worker.ErrNotCommitted) {
		t.Fatalf("a refused commit: %v, want ErrNotCommitted", err)
	}
	if got, want := refused.committed(), []string{vm.Name + "@" + harness.LibvirtURI}; !slices.Equal(got, want) {
		t.Fatalf("commit requests %v, want %v", got, want)
	}
	if !slices.Contains(refused.stages(), proto.StageConversion) {
		t.Fatalf("stages %v: the commit came before the copy", refused.stages())
	}
	if left := dirEntries(t, f.p.JobDir("job-not-committed")); len(left) > 0 {
		t.Errorf("the attempt that could not commit left its disks: %v", left)
	}
	if out, err := harness.Virsh("dominfo", vm.Name); err == nil {
		t.Errorf("the attempt that could not commit defined %s:\n%s", vm.Name, out)
	}

	ok := &recorder{}
	l = f.lease("job-committed", 0, proto.Options{ConversionMethod: "https"})
	res, err := f.run(l, ok, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(ok.committed()) != 1 || res.DomainName != vm.Name {
		t.Fatalf("committed run: %d commits, domain %q", len(ok.committed()), res.DomainName)
	}
	sameContent(t, vm.Disks[0].FlatPath, res.Disks[0], "qcow2")
}
