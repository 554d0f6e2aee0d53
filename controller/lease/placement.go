package lease

import (
	"cmp"
	"fmt"
	"iter"
	"net/url"
	"slices"

	"github.com/hypersdk/hypersdk/proto"
)

// Placement: which pending job goes to which agent, and why a pending job waits. It is a
// pure function of its input (pending jobs, agents, running leases): no locks, no clock,
// no raft. The leader's broker places jobs with it, and every node explains pending jobs
// with it, so the two can never disagree about a rule.
//
// The rules (DESIGN.md "Leases"):
//   - A job that names its agent (options.target_agent, or the host of
//     destination.libvirt_uri when an agent has that name) runs only there.
//   - An agent holds at most max_jobs leases.
//   - At most PerVCenterLimit jobs run from one source vCenter.
//   - At most PerHostDiskLimit disks are copied at once from one source ESXi host (the
//     host pre-flight validation found the VM on; Forklift's scheduler counts the same), so
//     a busy host's NFC service is not asked for more than it can serve. A job with more
//     disks than the limit still runs when nothing else does.
//   - A job that demands a conversion method goes to an agent that has it when any live
//     agent does (when none does, any agent takes it and fails it saying what is missing).
//   - A job whose sealed password this controller cannot open is not handed out: the agent
//     could only fail it with "bad credentials".
//   - A warm job needs vddk like a job that demands it, and goes back to the agent holding
//     its earlier attempt's copy when that agent asks.
//   - A cordoned or draining agent (hyperctl agents cordon|drain) gets no job.
//   - An agent whose self-checks fail (libvirt unreachable, storage not writable or full,
//     no qemu-img) gets no job.
//   - A job's next attempt goes to another agent than the ones its earlier attempts ended
//     on, while another agent that may take it is alive (a warm job's copy holder first).
//   - Otherwise the oldest job goes to the agent with the most free storage, then memory,
//     then the fewest running jobs, then the first name.

// Agent is one agent as placement sees it.
type Agent struct {
	Name string
	// Alive: a member of the gossip pool (alive or suspect), or polling right now; State is
	// its gossip state, for the reasons ("" for an agent known only by its poll).
	Alive bool
	State proto.AgentState
	// Polls is how many of its long-polls wait on this leader: each can take one job.
	Polls int
	// Running is how many leases it holds; MaxJobs its limit (0: none known).
	Running, MaxJobs        int
	StorageFree, MemoryFree uint64
	Methods                 []string
	// Unhealthy says which self-check of the agent failed ("" when none that matters to
	// placement did).
	Unhealthy string
	// Cordoned is the operator's cordon or drain ("cordoned", "draining"; "" when none).
	Cordoned string
}

func (a *Agent) full() bool { return a.MaxJobs > 0 && a.Running >= a.MaxJobs }

// Input is what placement looks at.
type Input struct {
	// Agents are every agent known: the gossip view merged with the waiting polls.
	Agents []Agent
	// RunningPerVCenter is the number of running jobs per vCenter key
	// (proto.JobDefinition.VCenterKey).
	RunningPerVCenter map[string]int
	// PerVCenterLimit bounds running jobs per source vCenter (0: the default, 8).
	PerVCenterLimit int
	// RunningDisksPerHost is the disks of running jobs per source ESXi host
	// (proto.JobDefinition.SourceHostKey); PerHostDiskLimit bounds it (0: the default, 10).
	RunningDisksPerHost map[string]int
	PerHostDiskLimit    int
	// Usable says why a job cannot be handed out at all (its password does not open with
	// this controller's key); nil: every job is usable. Place calls it while the pending
	// jobs are walked under the state's read lock: it must not take that lock.
	Usable func(*proto.Job) error
}

// Grant is one placement decision.
type Grant struct {
	Job   *proto.Job
	Agent string
}

// View is an Input prepared for placing and explaining: built once per dispatch pass or
// per query, in O(agents); each job then costs O(1) plus the agents it is compared with.
type View struct {
	in      Input
	agents  []*Agent          // best first
	byName  map[string]*Agent // every known agent
	methods map[string]bool   // methods at least one live agent has
	alive   int
	placed  map[string]int // vCenter key → jobs granted in this pass
	// placedDisks: source host key → disks of the jobs granted in this pass
	placedDisks map[string]int
	vcKeys      map[string]string
	reasons     map[string]string // method → reason shared by the jobs without a target
}

// NewView prepares in. The view keeps in.Agents' values; Place changes its copies.
func NewView(in Input) *View {
	if in.PerVCenterLimit <= 0 {
		in.PerVCenterLimit = DefaultConfig().PerVCenterLimit
	}
	if in.PerHostDiskLimit <= 0 {
		in.PerHostDiskLimit = DefaultConfig().PerHostDiskLimit
	}
	v := &View{in: in, byName: make(map[string]*Agent, len(in.Agents)), methods: map[string]bool{},
		placed: map[string]int{}, placedDisks: map[string]int{}, vcKeys: map[string]string{}, reasons: map[string]string{}}
	for i := range in.Agents {
		a := in.Agents[i]
		v.byName[a.Name] = &a
		v.agents = append(v.agents, &a)
		if a.Alive {
			v.alive++
			for _, m := range a.Methods {
				v.methods[m] = true
			}
		}
	}
	slices.SortFunc(v.agents, better)
	return v
}

// better orders agents for placement: most free storage, then most free memory, then the
// fewest running jobs, then name (deterministic).
func better(a, b *Agent) int {
	if c := cmp.Compare(b.StorageFree, a.StorageFree); c != 0 {
		return c
	}
	if c := cmp.Compare(b.MemoryFree, a.MemoryFree); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Running, b.Running); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}

// TargetAgent is the agent a job must run on, if it names one: options.target_agent, or
// the host of destination.libvirt_uri when an agent has that name.
func TargetAgent(j *proto.Job, isAgent func(string) bool) string {
	if t := j.Definition.Options.TargetAgent; t != "" {
		return t
	}
	if u := j.Definition.Destination.LibvirtURI; u != "" {
		if pu, err := url.Parse(u); err == nil && pu.Hostname() != "" && isAgent(pu.Hostname()) {
			return pu.Hostname()
		}
	}
	return ""
}

func (v *View) target(j *proto.Job) string {
	return TargetAgent(j, func(n string) bool { _, ok := v.byName[n]; return ok })
}

// vcenterKey is the job's vCenter key, parsed once per URL per view.
func (v *View) vcenterKey(j *proto.Job) string {
	u := j.Definition.Source.VCenterURL
	k, ok := v.vcKeys[u]
	if !ok {
		k = j.Definition.VCenterKey()
		v.vcKeys[u] = k
	}
	return k
}

// demanded is the method a job insists on that some live agent has ("" for none: any
// agent may take it). A warm job insists on vddk: it reads changed blocks at snapshots.
func (v *View) demanded(j *proto.Job) string {
	m := j.Definition.Options.ConversionMethod
	if j.Definition.Options.Warm && (m == "" || m == "auto") {
		m = "vddk"
	}
	if m != "" && m != "auto" && v.methods[m] {
		return m
	}
	return ""
}

// resumeAgent is the agent holding the copy an earlier attempt of a warm job made: the
// job goes there when that agent asks, so the copy is resumed instead of made again.
func (v *View) resumeAgent(j *proto.Job) *Agent {
	if r := j.WarmResume; r != nil && r.Agent != "" {
		return v.byName[r.Agent]
	}
	return nil
}

// blockedJob is the rule that keeps a job from every agent ("" when none does). usable
// (the password check, the costly one) is left to the caller.
func (v *View) blockedJob(j *proto.Job) string {
	key := v.vcenterKey(j)
	if n := v.in.RunningPerVCenter[key] + v.placed[key]; n >= v.in.PerVCenterLimit {
		return fmt.Sprintf("vCenter %s is at its limit of %d concurrent migrations", key, v.in.PerVCenterLimit)
	}
	if hk := j.Definition.SourceHostKey(); hk != "" {
		busy := v.in.RunningDisksPerHost[hk] + v.placedDisks[hk]
		if busy > 0 && busy+j.Definition.SourceHost.Disks > v.in.PerHostDiskLimit {
			return fmt.Sprintf("ESXi host %s is at its limit of %d disks copied at once (%d busy, this job has %d)",
				hostName(j.Definition.SourceHost), v.in.PerHostDiskLimit, busy, j.Definition.SourceHost.Disks)
		}
	}
	return ""
}

func hostName(h *proto.SourceHost) string {
	if h.Name != "" {
		return h.Name
	}
	return h.Moref
}

// refuses is the rule that keeps job j (its target t already resolved) from agent a (""
// when a may take it now).
func (v *View) refuses(j *proto.Job, t string, a *Agent) string {
	switch {
	case t != "" && a.Name != t:
		return fmt.Sprintf("only target agent %q may run it", t)
	case !a.Alive:
		return fmt.Sprintf("agent %q is not alive", a.Name)
	case a.Cordoned != "":
		return fmt.Sprintf("agent %q is %s (hyperctl agents uncordon %s)", a.Name, a.Cordoned, a.Name)
	case a.Unhealthy != "":
		return fmt.Sprintf("agent %q is unhealthy: %s", a.Name, a.Unhealthy)
	case a.full():
		return fmt.Sprintf("agent %q is busy (%d/%d jobs)", a.Name, a.Running, a.MaxJobs)
	}
	if m := v.demanded(j); m != "" && !slices.Contains(a.Methods, m) {
		return fmt.Sprintf("agent %q has no %s", a.Name, m)
	}
	return ""
}

func (v *View) usable(j *proto.Job) string {
	if v.in.Usable == nil {
		return ""
	}
	if err := v.in.Usable(j); err != nil {
		return err.Error()
	}
	return ""
}

// Place hands pending jobs (oldest first) to the agents' waiting polls: each job goes to
// the best agent that may take it. It stops as soon as no poll is left. The view's counts
// move with each grant, so a view places once.
func (v *View) Place(pending iter.Seq[*proto.Job]) []Grant {
	polls := 0
	for _, a := range v.agents {
		if a.Alive && !a.full() {
			polls += a.Polls
		}
	}
	var grants []Grant
	for j := range pending {
		if polls == 0 {
			break
		}
		if v.blockedJob(j) != "" {
			continue
		}
		t := v.target(j)
		var pick *Agent
		if t != "" {
			if a := v.byName[t]; a != nil && a.Polls > 0 && v.refuses(j, t, a) == "" {
				pick = a
			}
		} else {
			// A warm job's copy holder first; otherwise another agent than those its
			// earlier attempts ended on.
			if a := v.resumeAgent(j); a != nil && a.Polls > 0 && v.refuses(j, t, a) == "" {
				pick = a
			} else {
				pick = v.pickAnother(j)
			}
		}
		if pick == nil || v.usable(j) != "" {
			continue
		}
		pick.Polls--
		pick.Running++
		polls--
		if pick.full() {
			polls -= pick.Polls
		}
		v.placed[v.vcenterKey(j)]++
		if hk := j.Definition.SourceHostKey(); hk != "" {
			v.placedDisks[hk] += j.Definition.SourceHost.Disks
		}
		grants = append(grants, Grant{Job: j, Agent: pick.Name})
	}
	return grants
}

// pickAnother is the best polling agent for job j (no target): one its earlier attempts did
// not end on, else, when no other agent that may take it is alive (it would poll soon),
// one they did end on. nil: none now.
func (v *View) pickAnother(j *proto.Job) *Agent {
	var again *Agent
	otherLater := false
	for _, a := range v.agents {
		if v.refuses(j, "", a) != "" {
			continue
		}
		tried := slices.Contains(j.FailedAgents, a.Name)
		switch {
		case !tried && a.Polls > 0:
			return a
		case !tried:
			otherLater = true
		case a.Polls > 0 && again == nil:
			again = a
		}
	}
	if otherLater {
		return nil
	}
	return again
}

// Reason explains why a pending job is not running, by the rules Place applies: "" when
// an agent alive and free may take it (the job waits for that agent's next poll).
func (v *View) Reason(j *proto.Job) string {
	if j.Status != proto.StatusPending {
		return ""
	}
	if r := v.usable(j); r != "" {
		return r
	}
	if t := v.target(j); t != "" {
		a, ok := v.byName[t]
		switch {
		case !ok:
			return fmt.Sprintf("target agent %q is not in the fleet", t)
		case !a.Alive && a.State != "":
			return fmt.Sprintf("target agent %q is %s", t, a.State)
		case !a.Alive:
			return fmt.Sprintf("target agent %q is not alive", t)
		case a.full():
			return fmt.Sprintf("target agent %q is busy (%d/%d jobs)", t, a.Running, a.MaxJobs)
		}
		if r := v.refuses(j, t, a); r != "" {
			return fmt.Sprintf("target agent %q cannot run it: %s", t, r)
		}
		return v.blockedJob(j)
	}
	if v.alive == 0 {
		return "no agent is alive in the fleet"
	}
	if r := v.blockedJob(j); r != "" {
		return r
	}
	// Without a target the agents' verdicts depend on the job only through the method it
	// demands: one scan per method serves every job of the view.
	m := v.demanded(j)
	r, ok := v.reasons[m]
	if !ok {
		r = v.noAgentReason(j, m)
		v.reasons[m] = r
	}
	return r
}

// noAgentReason is why no live agent may take job j (which demands method m), "" when one
// may.
func (v *View) noAgentReason(j *proto.Job, m string) string {
	for _, a := range v.agents {
		if v.refuses(j, "", a) == "" {
			return ""
		}
	}
	if m == "" {
		// An unhealthy or cordoned agent is named: "busy" would hide a host that needs
		// an operator.
		for _, a := range v.agents {
			if !a.Alive || a.Unhealthy == "" && a.Cordoned == "" {
				continue
			}
			if v.alive == 1 {
				return v.refuses(j, "", a)
			}
			return fmt.Sprintf("all %d alive agents are busy or kept from work (%s)", v.alive, v.refuses(j, "", a))
		}
		return fmt.Sprintf("all %d alive agents are busy", v.alive)
	}
	with := 0
	for _, a := range v.agents {
		if a.Alive && slices.Contains(a.Methods, m) {
			with++
		}
	}
	return fmt.Sprintf("waiting for an agent with %s: all %d alive agents that have it are busy", m, with)
}
