package lease

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

type fakeFleet []proto.AgentInfo

func (f fakeFleet) List() []proto.AgentInfo { return append([]proto.AgentInfo(nil), f...) }
func (f fakeFleet) Get(n string) (proto.AgentInfo, bool) {
	for _, a := range f {
		if a.Name == n {
			return a, true
		}
	}
	return proto.AgentInfo{}, false
}

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func jobDef(id, method string) proto.JobDefinition {
	return proto.JobDefinition{ID: id, VMPath: "DC0/vm/" + id, CreatedAt: t0,
		Source:      proto.Source{Type: "vsphere", VCenterURL: "https://vc-" + id + ".example/sdk", Username: "u", Password: "p"},
		Destination: proto.Destination{Type: "kvm"}, Options: proto.Options{ConversionMethod: method}}
}

func mustApply(t testing.TB, st *state.State, idx *uint64, ct state.CommandType, payload any) {
	t.Helper()
	*idx++
	if err, ok := st.Apply(*idx, state.MustEncode(ct, payload)).(error); ok {
		t.Fatal(err)
	}
}

// Fault 7 of issue 11: the dispatcher keeps a job that demands a method some live agent
// has away from agents without it; pending_reason said nothing while it waited.
func TestPendingReasonNamesTheMissingMethod(t *testing.T) {
	st := state.New()
	var idx uint64
	mustApply(t, st, &idx, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef("v", "vddk")})
	j, _ := st.Job("v")
	fleet := fakeFleet{
		{Name: "with-vddk", State: proto.AgentAlive, RunningJobs: 1, MaxJobs: 1, Capabilities: proto.AgentCapabilities{Methods: []string{"vddk", "https"}}},
		{Name: "without", State: proto.AgentAlive, RunningJobs: 0, MaxJobs: 2, Capabilities: proto.AgentCapabilities{Methods: []string{"https"}}},
	}
	if r := PendingReason(j, st, fleet, 8); !strings.Contains(r, "vddk") {
		t.Fatalf("pending reason %q does not say the job waits for an agent with vddk", r)
	}
}

// Fault 6 of issue 11: the pending reason walked every running job (and parsed its vCenter
// URL) for every pending job of a query. Its cost must not grow with the running jobs.
func TestPendingReasonCostDoesNotGrowWithRunningJobs(t *testing.T) {
	allocs := map[int]float64{}
	for _, n := range []int{10, 2000} {
		st := state.New()
		var idx uint64
		for i := 0; i < n; i++ {
			id := fmt.Sprint("r", i)
			mustApply(t, st, &idx, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef(id, "")})
			mustApply(t, st, &idx, state.CmdLeaseGrant, state.LeaseGrant{LeaseToken: state.LeaseToken{JobID: id, Attempt: 1}, Agent: fmt.Sprint("a", i), At: t0})
		}
		mustApply(t, st, &idx, state.CmdSubmitJob, state.SubmitJob{Definition: jobDef("waiting", "")})
		j, _ := st.Job("waiting")
		allocs[n] = testing.AllocsPerRun(20, func() { PendingReason(j, st, nil, 8) })
	}
	if allocs[2000] > allocs[10]+2 {
		t.Fatalf("allocations per pending reason: %v with 10 running jobs, %v with 2000", allocs[10], allocs[2000])
	}
}
