package lease

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// pjob is a pending job from vCenter vc; opts change its definition.
func pjob(id, vc string, opts ...func(*proto.JobDefinition)) *proto.Job {
	d := proto.JobDefinition{ID: id, VMPath: "DC0/vm/" + id, CreatedAt: t0,
		Source:      proto.Source{Type: "vsphere", VCenterURL: "https://" + vc + "/sdk", Username: "u", Password: "p"},
		Destination: proto.Destination{Type: "kvm"}}
	for _, o := range opts {
		o(&d)
	}
	return &proto.Job{Definition: d, Status: proto.StatusPending}
}

func target(a string) func(*proto.JobDefinition) {
	return func(d *proto.JobDefinition) { d.Options.TargetAgent = a }
}
func libvirtURI(u string) func(*proto.JobDefinition) {
	return func(d *proto.JobDefinition) { d.Destination.LibvirtURI = u }
}
func onHost(moref string, disks int) func(*proto.JobDefinition) {
	return func(d *proto.JobDefinition) {
		d.SourceHost = &proto.SourceHost{Moref: moref, Name: moref + ".esx", Disks: disks}
	}
}
func method(m string) func(*proto.JobDefinition) {
	return func(d *proto.JobDefinition) { d.Options.ConversionMethod = m }
}

func warm(d *proto.JobDefinition) { d.Options.Warm = true }

// resumable is j with an earlier attempt's warm copy on agent.
func resumable(j *proto.Job, agent string) *proto.Job {
	j.WarmResume = &proto.WarmResume{Agent: agent, Rounds: 1}
	return j
}

// polling is an agent with one waiting poll and room for max jobs.
func polling(name string, storage, memory uint64, running, max int, methods ...string) Agent {
	return Agent{Name: name, Alive: true, Polls: 1, Running: running, MaxJobs: max, StorageFree: storage, MemoryFree: memory, Methods: methods}
}

// sick is a with a failed libvirt self-check.
func sick(a Agent) Agent {
	a.Unhealthy = proto.HealthReason(proto.HealthCheckLibvirt)
	return a
}

func cordoned(a Agent, how string) Agent {
	a.Cordoned = how
	return a
}

// failedOn is j after attempts that ended on agents.
func failedOn(j *proto.Job, agents ...string) *proto.Job {
	j.FailedAgents, j.Attempt = agents, len(agents)
	return j
}

func seq(jobs []*proto.Job) func(func(*proto.Job) bool) {
	return func(yield func(*proto.Job) bool) {
		for _, j := range jobs {
			if !yield(j) {
				return
			}
		}
	}
}

// Every rule of DESIGN.md's placement, as the broker applies it (grants) and as every node
// explains it (reasons): both from the same View.
func TestPlacement(t *testing.T) {
	const gib = 1 << 30
	sealedErr := errors.New("the vCenter password does not open with this controller's secrets key")
	cases := []struct {
		name      string
		agents    []Agent
		jobs      []*proto.Job
		runningVC map[string]int
		limit     int
		hostDisks map[string]int // running disks per source host key
		hostLimit int
		unusable  map[string]bool
		grants    []string          // "job→agent", in placement order
		reasons   map[string]string // job → a part of its pending reason after the grants ("" for none)
	}{
		{name: "most free storage first",
			agents: []Agent{polling("small", 10*gib, 64*gib, 0, 2), polling("big", 90*gib, 1*gib, 0, 2)},
			jobs:   []*proto.Job{pjob("j1", "vc")},
			grants: []string{"j1→big"}},
		{name: "then most free memory",
			agents: []Agent{polling("lowmem", 50*gib, 2*gib, 0, 2), polling("himem", 50*gib, 8*gib, 0, 2)},
			jobs:   []*proto.Job{pjob("j1", "vc")},
			grants: []string{"j1→himem"}},
		{name: "then fewest running, then name",
			agents: []Agent{polling("b", gib, gib, 0, 4), polling("c", gib, gib, 1, 4), polling("a", gib, gib, 0, 4)},
			jobs:   []*proto.Job{pjob("j1", "vc"), pjob("j2", "vc"), pjob("j3", "vc")},
			grants: []string{"j1→a", "j2→b", "j3→c"}},
		{name: "oldest job first, one job per poll",
			agents: []Agent{polling("a", gib, gib, 0, 4)},
			jobs:   []*proto.Job{pjob("old", "vc"), pjob("new", "vc")},
			grants: []string{"old→a"}, reasons: map[string]string{"new": ""}},
		{name: "max_jobs: a full agent takes nothing",
			agents:  []Agent{polling("full", 99*gib, gib, 2, 2), polling("free", gib, gib, 1, 2)},
			jobs:    []*proto.Job{pjob("j1", "vc"), pjob("j2", "vc")},
			grants:  []string{"j1→free"},
			reasons: map[string]string{"j2": "all 2 alive agents are busy"}},
		{name: "max_jobs: everyone full",
			agents:  []Agent{polling("a", gib, gib, 1, 1), {Name: "b", Alive: true, Running: 3, MaxJobs: 3}},
			jobs:    []*proto.Job{pjob("j1", "vc")},
			reasons: map[string]string{"j1": "all 2 alive agents are busy"}},
		{name: "per-vCenter limit",
			agents:    []Agent{polling("a", gib, gib, 0, 4), polling("b", gib, gib, 0, 4)},
			jobs:      []*proto.Job{pjob("j1", "vc-1.example"), pjob("j2", "VC-1.example"), pjob("j3", "vc-2.example")},
			runningVC: map[string]int{"vc-1.example": 7}, limit: 8,
			grants:  []string{"j1→a", "j3→b"},
			reasons: map[string]string{"j2": "vCenter vc-1.example is at its limit of 8"}},
		{name: "per source host disk limit",
			agents: []Agent{polling("a", gib, gib, 0, 9), polling("b", gib, gib, 0, 9)},
			jobs: []*proto.Job{pjob("h1", "vc", onHost("host-1", 4)), pjob("h2", "vc", onHost("host-1", 4)),
				pjob("h3", "vc", onHost("host-2", 4)), pjob("nohost", "vc")},
			hostDisks: map[string]int{"vc/host-1": 4}, hostLimit: 10,
			// host-1 has 4 busy: h1 brings it to 8, h2 would make 12.
			grants:  []string{"h1→a", "h3→b"},
			reasons: map[string]string{"h2": "ESXi host host-1.esx is at its limit of 10 disks copied at once (8 busy, this job has 4)"}},
		{name: "a job with more disks than the host limit runs when its host is idle",
			agents:    []Agent{polling("a", gib, gib, 0, 9)},
			jobs:      []*proto.Job{pjob("wide", "vc", onHost("host-1", 16))},
			hostLimit: 10,
			grants:    []string{"wide→a"}},
		{name: "target_agent runs only on its agent",
			agents:  []Agent{polling("better", 99*gib, gib, 0, 2), polling("named", gib, gib, 0, 2)},
			jobs:    []*proto.Job{pjob("t1", "vc", target("named")), pjob("j2", "vc")},
			grants:  []string{"t1→named", "j2→better"},
			reasons: map[string]string{}},
		{name: "target_agent not polling: the job waits, the others go",
			agents:  []Agent{polling("a", gib, gib, 0, 2), {Name: "named", Alive: true, MaxJobs: 2}},
			jobs:    []*proto.Job{pjob("t1", "vc", target("named")), pjob("j2", "vc")},
			grants:  []string{"j2→a"},
			reasons: map[string]string{"t1": ""}},
		{name: "target_agent busy, dead or unknown",
			agents: []Agent{polling("a", gib, gib, 0, 2), {Name: "busy", Alive: true, Running: 1, MaxJobs: 1}, {Name: "dead", State: proto.AgentDead, MaxJobs: 2}},
			jobs:   []*proto.Job{pjob("t1", "vc", target("busy")), pjob("t2", "vc", target("dead")), pjob("t3", "vc", target("nowhere"))},
			reasons: map[string]string{"t1": `target agent "busy" is busy (1/1 jobs)`, "t2": `target agent "dead" is dead`,
				"t3": `target agent "nowhere" is not in the fleet`}},
		{name: "libvirt URI host names the agent",
			agents:  []Agent{polling("better", 99*gib, gib, 0, 2), polling("kvm-2", gib, gib, 0, 2)},
			jobs:    []*proto.Job{pjob("l1", "vc", libvirtURI("qemu+ssh://root@kvm-2/system"))},
			grants:  []string{"l1→kvm-2"},
			reasons: map[string]string{}},
		{name: "libvirt URI host that is no agent: anyone",
			agents: []Agent{polling("better", 99*gib, gib, 0, 2), polling("kvm-2", gib, gib, 0, 2)},
			jobs:   []*proto.Job{pjob("l1", "vc", libvirtURI("qemu+ssh://elsewhere/system"))},
			grants: []string{"l1→better"}},
		{name: "a demanded method goes to an agent that has it",
			agents: []Agent{polling("https-only", 99*gib, gib, 0, 2, "https", "nfc"), polling("vddk", gib, gib, 0, 2, "vddk", "https")},
			jobs:   []*proto.Job{pjob("v1", "vc", method("vddk")), pjob("h1", "vc", method("https"))},
			grants: []string{"v1→vddk", "h1→https-only"}},
		{name: "a demanded method whose agents are busy waits",
			agents:  []Agent{polling("https-only", 99*gib, gib, 0, 2, "https"), {Name: "vddk", Alive: true, Running: 1, MaxJobs: 1, Methods: []string{"vddk"}}},
			jobs:    []*proto.Job{pjob("v1", "vc", method("vddk"))},
			reasons: map[string]string{"v1": "waiting for an agent with vddk: all 1 alive agents that have it are busy"}},
		{name: "a method no live agent has: any agent takes it (and says what is missing)",
			agents: []Agent{polling("a", gib, gib, 0, 2, "https"), {Name: "gone", Methods: []string{"vddk"}}},
			jobs:   []*proto.Job{pjob("v1", "vc", method("vddk"))},
			grants: []string{"v1→a"}},
		{name: "auto is no demand",
			agents: []Agent{polling("a", gib, gib, 0, 2, "https"), polling("b", 0, 0, 0, 2, "vddk")},
			jobs:   []*proto.Job{pjob("j1", "vc", method("auto"))},
			grants: []string{"j1→a"}},
		{name: "a warm job needs vddk, auto or not",
			agents: []Agent{polling("https-only", 99*gib, gib, 0, 2, "https"), polling("vddk", gib, gib, 0, 2, "vddk")},
			jobs:   []*proto.Job{pjob("w1", "vc", warm), pjob("w2", "vc", warm, method("auto"))},
			grants: []string{"w1→vddk"}, reasons: map[string]string{"w2": ""}},
		{name: "a warm job goes back to the agent holding its copy when it asks",
			agents: []Agent{polling("better", 99*gib, gib, 0, 2, "vddk"), polling("holder", gib, gib, 0, 2, "vddk")},
			jobs:   []*proto.Job{resumable(pjob("w1", "vc", warm), "holder"), pjob("w2", "vc", warm)},
			grants: []string{"w1→holder", "w2→better"}},
		{name: "the holder not asking: the warm job goes elsewhere (a full copy)",
			agents: []Agent{polling("better", 99*gib, gib, 0, 2, "vddk"), {Name: "holder", Alive: true, MaxJobs: 2, Methods: []string{"vddk"}}},
			jobs:   []*proto.Job{resumable(pjob("w1", "vc", warm), "holder")},
			grants: []string{"w1→better"}},
		{name: "a password this controller cannot open is never granted",
			agents:   []Agent{polling("a", gib, gib, 0, 2)},
			jobs:     []*proto.Job{pjob("sealed", "vc"), pjob("clear", "vc")},
			unusable: map[string]bool{"sealed": true},
			grants:   []string{"clear→a"},
			reasons:  map[string]string{"sealed": "secrets key"}},
		{name: "no agent alive",
			agents:  []Agent{{Name: "dead", MaxJobs: 2}},
			jobs:    []*proto.Job{pjob("j1", "vc")},
			reasons: map[string]string{"j1": "no agent is alive in the fleet"}},
		{name: "an unhealthy agent gets no job, however much room it has",
			agents:  []Agent{sick(polling("big", 99*gib, 99*gib, 0, 4)), polling("small", gib, gib, 3, 4)},
			jobs:    []*proto.Job{pjob("j1", "vc"), pjob("j2", "vc")},
			grants:  []string{"j1→small"},
			reasons: map[string]string{"j2": `all 2 alive agents are busy or kept from work (agent "big" is unhealthy: libvirt`}},
		{name: "only unhealthy agents: the job waits, saying why",
			agents:  []Agent{sick(polling("big", 99*gib, 99*gib, 0, 4))},
			jobs:    []*proto.Job{pjob("j1", "vc"), pjob("t1", "vc", target("big"))},
			reasons: map[string]string{"j1": `agent "big" is unhealthy: libvirt is not reachable`, "t1": `agent "big" is unhealthy`}},
		{name: "a next attempt goes to another agent than the one that failed it",
			agents: []Agent{polling("big", 99*gib, gib, 0, 4), polling("small", gib, gib, 0, 4)},
			jobs:   []*proto.Job{failedOn(pjob("j1", "vc"), "big"), pjob("j2", "vc")},
			grants: []string{"j1→small", "j2→big"}},
		{name: "a next attempt waits for the other agent's poll",
			agents:  []Agent{polling("big", 99*gib, gib, 0, 4), {Name: "small", Alive: true, MaxJobs: 4}},
			jobs:    []*proto.Job{failedOn(pjob("j1", "vc"), "big")},
			reasons: map[string]string{"j1": ""}},
		{name: "a next attempt goes back when no other agent may take it",
			agents: []Agent{polling("big", 99*gib, gib, 0, 4), {Name: "small", Alive: true, Running: 1, MaxJobs: 1}, sick(polling("sick", gib, gib, 0, 4))},
			jobs:   []*proto.Job{failedOn(pjob("j1", "vc"), "big")},
			grants: []string{"j1→big"}},
		{name: "a cordoned agent gets no job",
			agents:  []Agent{cordoned(polling("big", 99*gib, 99*gib, 0, 4), "cordoned"), polling("small", gib, gib, 0, 4)},
			jobs:    []*proto.Job{pjob("j1", "vc"), pjob("t1", "vc", target("big"))},
			grants:  []string{"j1→small"},
			reasons: map[string]string{"t1": `agent "big" is cordoned (hyperctl agents uncordon big)`}},
		{name: "a draining agent gets no job",
			agents:  []Agent{cordoned(polling("big", 99*gib, 99*gib, 0, 4), "draining")},
			jobs:    []*proto.Job{pjob("j1", "vc")},
			reasons: map[string]string{"j1": `agent "big" is draining`}},
		{name: "alive agents with room but not polling: nothing granted, nothing to explain",
			agents:  []Agent{{Name: "idle", Alive: true, MaxJobs: 2}},
			jobs:    []*proto.Job{pjob("j1", "vc")},
			reasons: map[string]string{"j1": ""}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Agents: tc.agents, PerVCenterLimit: tc.limit,
				RunningPerVCenter: tc.runningVC, RunningDisksPerHost: tc.hostDisks, PerHostDiskLimit: tc.hostLimit,
				Usable: func(j *proto.Job) error {
					if tc.unusable[j.Definition.ID] {
						return sealedErr
					}
					return nil
				}}
			var got []string
			v := NewView(in)
			for _, g := range v.Place(seq(tc.jobs)) {
				got = append(got, g.Job.Definition.ID+"→"+g.Agent)
			}
			if !slices.Equal(got, tc.grants) {
				t.Fatalf("grants %v, want %v", got, tc.grants)
			}
			// Reasons from the same view, as it stands once the grants are committed.
			for id, want := range tc.reasons {
				var j *proto.Job
				for _, c := range tc.jobs {
					if c.Definition.ID == id {
						j = c
					}
				}
				r := v.Reason(j)
				if (want == "") != (r == "") || !strings.Contains(r, want) {
					t.Errorf("reason of %s: %q, want %q", id, r, want)
				}
			}
		})
	}
}

// The broker and pending_reason cannot disagree (fault 7 of issue 11): for any fleet, a
// lone pending job is granted when every alive agent with room polls exactly when its
// reason is empty. Random fleets, fixed seed.
func TestPlacementAndReasonAgree(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 7))
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	for i := 0; i < 3000; i++ {
		var agents []Agent
		for k := 0; k < 1+r.IntN(4); k++ {
			a := Agent{Name: fmt.Sprint("ag", k), Alive: r.IntN(4) > 0, MaxJobs: r.IntN(3), StorageFree: uint64(r.IntN(3))}
			a.Running = r.IntN(a.MaxJobs + 1)
			for _, m := range []string{"https", "nfc", "vddk"} {
				if r.IntN(2) == 0 {
					a.Methods = append(a.Methods, m)
				}
			}
			if a.Alive && !a.full() {
				a.Polls = 1
			}
			agents = append(agents, a)
		}
		var opts []func(*proto.JobDefinition)
		if r.IntN(3) == 0 {
			opts = append(opts, target(pick("ag0", "ag1", "ag9")))
		}
		if r.IntN(3) == 0 {
			opts = append(opts, libvirtURI("qemu+ssh://"+pick("ag0", "ag2", "host")+"/system"))
		}
		opts = append(opts, method(pick("", "auto", "https", "vddk")))
		j := pjob("j", "vc", opts...)
		running := r.IntN(3)
		sealed := r.IntN(10) == 0
		in := Input{Agents: agents, PerVCenterLimit: 2, RunningPerVCenter: map[string]int{"vc": running},
			Usable: func(*proto.Job) error {
				if sealed {
					return errors.New("sealed")
				}
				return nil
			}}
		granted := len(NewView(in).Place(seq([]*proto.Job{j}))) == 1
		reason := NewView(in).Reason(j)
		if granted != (reason == "") {
			t.Fatalf("case %d: granted %v but reason %q\nagents %+v\njob %+v running %d sealed %v", i, granted, reason, agents, j.Definition, running, sealed)
		}
	}
}

// fakeFleet is a gossip view for the manager.
type fakeFleet []proto.AgentInfo

func (f fakeFleet) List() []proto.AgentInfo { return append([]proto.AgentInfo(nil), f...) }
