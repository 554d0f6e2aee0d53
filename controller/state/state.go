// Package state is the replicated state machine of the controllers: every job, lease and
// controller registration, changed only by commands applied through raft.
//
// Apply is deterministic (no clock, no randomness, no I/O): the leader stamps times and ids
// into a command before it is proposed. Jobs are immutable once stored: apply replaces the
// pointer with a modified copy, so a snapshot is a cheap copy of pointers and readers may
// hold a *proto.Job without locks.
package state

import (
	"maps"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/google/btree"

	"github.com/hypersdk/hypersdk/proto"
)

// entry is a stored job with its position in submission order.
type entry struct {
	seq uint64
	job *proto.Job
}

func bySeq(a, b *entry) bool { return a.seq < b.seq }

func newIndex() *btree.BTreeG[*entry] { return btree.NewG(16, bySeq) }

// State holds everything the controllers replicate. It is safe for concurrent use: apply
// takes the write lock, reads take the read lock.
type State struct {
	mu       sync.RWMutex
	jobs     map[string]*entry
	all      *btree.BTreeG[*entry]
	byStatus map[proto.JobStatus]*btree.BTreeG[*entry]
	byAgent  map[string]*btree.BTreeG[*entry]
	// byVMPath holds a VM's few jobs in submission order: a slice, not a btree per VM
	// (100k VMs each with a btree cost about 40% of the controller's memory).
	byVMPath map[string][]*entry
	// running counts leased jobs per agent and runningVC per source vCenter
	// (JobDefinition.VCenterKey): what placement and pending reasons need, without a scan.
	running   map[string]int
	runningVC map[string]int
	// runningHostDisks counts the disks of running jobs per source ESXi host
	// (JobDefinition.SourceHostKey): placement's per-host limit.
	runningHostDisks map[string]int
	nextSeq          uint64
	nodes            map[string]NodeInfo
	// agentCtl holds the cordoned and draining agents (agentctl.go).
	agentCtl map[string]AgentControl
	// counters are cluster-wide totals kept by apply (agentctl.go), under mu.
	counters LeaseCounters
	// strs interns the strings jobs repeat (vCenter, user, types, agent names): JSON
	// decoding allocates each copy anew, which at 100k jobs is megabytes of duplicates.
	strs map[string]string

	appliedIndex atomic.Uint64
	events       *broker
	// sw holds schedules, webhooks and the webhook outbox (swstate.go), under mu.
	sw *swState
	// agentIDs are the enrolled agents by name, agentByCred their names by credential
	// hash (agentid.go), under mu.
	agentIDs    map[string]*AgentIdentity
	agentByCred map[string]string
}

// New returns an empty state.
func New() *State {
	s := &State{events: newBroker(), sw: newSWState()}
	s.events.derive = s.derive
	s.reset()
	return s
}

func (s *State) reset() {
	s.jobs = make(map[string]*entry)
	s.all = newIndex()
	s.byStatus = make(map[proto.JobStatus]*btree.BTreeG[*entry])
	for _, st := range proto.AllStatuses {
		s.byStatus[st] = newIndex()
	}
	s.byAgent = make(map[string]*btree.BTreeG[*entry])
	s.byVMPath = make(map[string][]*entry)
	s.running = make(map[string]int)
	s.runningVC = make(map[string]int)
	s.runningHostDisks = make(map[string]int)
	s.nextSeq = 0
	s.nodes = make(map[string]NodeInfo)
	s.agentCtl = make(map[string]AgentControl)
	s.counters = LeaseCounters{}
	s.strs = make(map[string]string)
	s.agentIDs = make(map[string]*AgentIdentity)
	s.agentByCred = make(map[string]string)
}

// intern returns the stored copy of v. Caller holds the write lock.
func (s *State) intern(v string) string {
	if v == "" {
		return ""
	}
	if c, ok := s.strs[v]; ok {
		return c
	}
	if len(s.strs) < 100000 { // bounded: unique values are not worth keeping
		s.strs[v] = v
	}
	return v
}

// internJob shares the job's repeated strings with earlier jobs. Caller holds the lock.
func (s *State) internJob(j *proto.Job) {
	d := &j.Definition
	d.Source.Type, d.Source.VCenterURL = s.intern(d.Source.Type), s.intern(d.Source.VCenterURL)
	d.Source.Username, d.Source.Datacenter = s.intern(d.Source.Username), s.intern(d.Source.Datacenter)
	d.Source.Thumbprint, d.Destination.Type = s.intern(d.Source.Thumbprint), s.intern(d.Destination.Type)
	d.Destination.LibvirtURI, d.Options.ConversionMethod = s.intern(d.Destination.LibvirtURI), s.intern(d.Options.ConversionMethod)
	d.Options.OutputFormat, d.Options.DiskBus = s.intern(d.Options.OutputFormat), s.intern(d.Options.DiskBus)
	d.Options.TargetAgent, d.ScheduleID = s.intern(d.Options.TargetAgent), s.intern(d.ScheduleID)
	j.Agent, j.Progress.Stage = s.intern(j.Agent), s.intern(j.Progress.Stage)
}

// insert adds a new job to every index. Caller holds the write lock.
func (s *State) insert(j *proto.Job) {
	s.internJob(j)
	s.nextSeq++
	e := &entry{seq: s.nextSeq, job: j}
	s.jobs[j.Definition.ID] = e
	s.all.ReplaceOrInsert(e)
	s.byStatus[j.Status].ReplaceOrInsert(e)
	// Inserts come in increasing seq order (apply, and restore in snapshot order), so
	// appending keeps the slice sorted.
	s.byVMPath[j.Definition.VMPath] = append(s.byVMPath[j.Definition.VMPath], e)
	if j.Agent != "" {
		idx(s.byAgent, j.Agent).ReplaceOrInsert(e)
	}
	if j.Status == proto.StatusRunning {
		s.countRunning(j, +1)
	}
}

// replace swaps in a modified copy of a job and moves it between indexes. Caller holds
// the write lock.
func (s *State) replace(e *entry, nj *proto.Job) {
	old := e.job
	if old.Status != nj.Status {
		s.byStatus[old.Status].Delete(e)
		s.byStatus[nj.Status].ReplaceOrInsert(e)
	}
	if old.Agent != nj.Agent && nj.Agent != "" {
		// byAgent keeps every job an agent ever held (history by agent); a requeue
		// clears Agent but the job stays listed under the agents that ran it.
		idx(s.byAgent, nj.Agent).ReplaceOrInsert(e)
	}
	// Progress reports replace a running job with a running job: only a change of status
	// or agent moves the counts.
	if old.Status != nj.Status || old.Agent != nj.Agent {
		if old.Status == proto.StatusRunning {
			s.countRunning(old, -1)
		}
		if nj.Status == proto.StatusRunning {
			s.countRunning(nj, +1)
		}
	}
	e.job = nj
}

// countRunning adds d to the running counts of the job's agent and vCenter. Caller holds
// the write lock.
func (s *State) countRunning(j *proto.Job, d int) {
	add := func(m map[string]int, k string) {
		if m[k]+d <= 0 {
			delete(m, k)
			return
		}
		m[k] += d
	}
	add(s.running, j.Agent)
	add(s.runningVC, j.Definition.VCenterKey())
	if k := j.Definition.SourceHostKey(); k != "" {
		if n := s.runningHostDisks[k] + d*j.Definition.SourceHost.Disks; n > 0 {
			s.runningHostDisks[k] = n
		} else {
			delete(s.runningHostDisks, k)
		}
	}
}

func idx(m map[string]*btree.BTreeG[*entry], key string) *btree.BTreeG[*entry] {
	t, ok := m[key]
	if !ok {
		t = newIndex()
		m[key] = t
	}
	return t
}

// AppliedIndex is the raft index of the last entry applied to this state.
func (s *State) AppliedIndex() uint64 { return s.appliedIndex.Load() }

// Job returns one job (shared, never modify it).
func (s *State) Job(id string) (*proto.Job, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.jobs[id]
	if !ok {
		return nil, false
	}
	return e.job, true
}

// Counts returns the number of jobs per status.
func (s *State) Counts() map[proto.JobStatus]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[proto.JobStatus]int, len(s.byStatus))
	for st, t := range s.byStatus {
		out[st] = t.Len()
	}
	return out
}

// TotalJobs returns the number of stored jobs.
func (s *State) TotalJobs() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.jobs)
}

// RunningByAgent returns how many jobs each agent holds a lease for.
func (s *State) RunningByAgent() map[string]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.running)
}

// RunningOn is how many jobs an agent holds a lease for.
func (s *State) RunningOn(agent string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.running[agent]
}

// RunningPerVCenter returns how many jobs run from each source vCenter
// (JobDefinition.VCenterKey): a copy, one entry per vCenter with running jobs.
func (s *State) RunningPerVCenter() map[string]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.runningVC)
}

// RunningDisksPerHost returns the disks of running jobs per source ESXi host
// (JobDefinition.SourceHostKey): a copy, one entry per host with running jobs.
func (s *State) RunningDisksPerHost() map[string]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.runningHostDisks)
}

// Jobs calls fn for every job with the given status in submission order (oldest first)
// until fn returns false.
func (s *State) Jobs(status proto.JobStatus, fn func(*proto.Job) bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.byStatus[status]
	if !ok {
		return
	}
	t.Ascend(func(e *entry) bool { return fn(e.job) })
}

// Node returns a controller registration.
func (s *State) Node(id string) (NodeInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.nodes[id]
	return n, ok
}

// Nodes returns every controller registration sorted by id.
func (s *State) Nodes() []NodeInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]NodeInfo, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// MaxQueryBytes bounds a query page in bytes as well as in jobs (issue 18: viewers'
// queries of jobs with ~0.9 MB network_mapping each took a follower from 686 MB to
// 4.3 GB). A page holds at least one job; the cursor gives the rest.
const MaxQueryBytes = 4 << 20

// approxJobBytes estimates a job's JSON size from its variable-length parts (exact size
// would cost an encoding per job on every query).
func approxJobBytes(j *proto.Job) int {
	d := &j.Definition
	n := 1024 + len(d.VMPath) + len(d.ID) + len(d.Source.VCenterURL)
	if j.Error != nil {
		n += len(*j.Error)
	}
	for k, v := range d.Options.NetworkMapping {
		n += len(k) + len(v) + 8
	}
	for _, w := range j.Warnings {
		n += len(w) + 4
	}
	return n
}

// QueryResult is a page of jobs (shared pointers) and the filter's total.
type QueryResult struct {
	Jobs       []*proto.Job
	Total      int
	NextCursor string
}

// Query returns jobs newest first. With only a status filter it costs O(offset+limit)
// (O(log n + limit) with a cursor); a vm_path or agent filter walks that index only.
func (s *State) Query(q proto.QueryRequest) (QueryResult, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = proto.DefaultQueryLimit
	}
	var after uint64 // cursor: return entries with seq < after
	if q.Cursor != "" {
		v, err := strconv.ParseUint(q.Cursor, 10, 64)
		if err != nil || v == 0 {
			return QueryResult{}, ErrInvalidCursor
		}
		after = v
	}
	s.mu.RLock()
	defer s.mu.RUnlock()

	if len(q.JobIDs) > 0 {
		return s.queryIDs(q, limit), nil
	}

	statusSet := make(map[proto.JobStatus]bool, len(q.Status))
	for _, st := range q.Status {
		statusSet[st] = true
	}
	match := func(j *proto.Job) bool {
		if len(statusSet) > 0 && !statusSet[j.Status] {
			return false
		}
		if q.VMPath != "" && j.Definition.VMPath != q.VMPath {
			return false
		}
		if q.Agent != "" && j.Agent != q.Agent {
			return false
		}
		return true
	}

	// Pick the narrowest index that the filter fully covers.
	var sources []*btree.BTreeG[*entry]
	filtered := true // whether items from sources still need match()
	switch {
	case q.VMPath != "":
		if es := s.byVMPath[q.VMPath]; len(es) > 0 {
			t := newIndex()
			for _, e := range es {
				t.ReplaceOrInsert(e)
			}
			sources = append(sources, t)
		}
	case q.Agent != "":
		if t, ok := s.byAgent[q.Agent]; ok {
			sources = append(sources, t)
		}
	case len(statusSet) > 0:
		for st := range statusSet {
			sources = append(sources, s.byStatus[st])
		}
		filtered = false
	default:
		sources = append(sources, s.all)
		filtered = false
	}

	res := QueryResult{Jobs: make([]*proto.Job, 0, min(limit, 64))}
	if !filtered {
		for _, t := range sources {
			res.Total += t.Len()
		}
	}
	skip := q.Offset
	var last uint64
	size := 0 // approxJobBytes of the page so far
	more := false
	// k-way merge of the sources, newest first.
	iters := make([]*descIter, 0, len(sources))
	for _, t := range sources {
		iters = append(iters, newDescIter(t, after))
	}
	for {
		var best *descIter
		for _, it := range iters {
			if it.peek() != nil && (best == nil || it.peek().seq > best.peek().seq) {
				best = it
			}
		}
		if best == nil {
			break
		}
		e := best.next()
		if filtered && !match(e.job) {
			continue
		}
		if filtered {
			res.Total++
		}
		if skip > 0 {
			skip--
			continue
		}
		if sz := approxJobBytes(e.job); len(res.Jobs) < limit && (len(res.Jobs) == 0 || size+sz <= MaxQueryBytes) {
			res.Jobs = append(res.Jobs, e.job)
			size += sz
			last = e.seq
			continue
		}
		more = true
		if !filtered {
			break // totals are already known: stop at limit+1
		}
	}
	if more && last > 0 {
		res.NextCursor = strconv.FormatUint(last, 10)
	}
	return res, nil
}

func (s *State) queryIDs(q proto.QueryRequest, limit int) QueryResult {
	res := QueryResult{}
	statusSet := make(map[proto.JobStatus]bool, len(q.Status))
	for _, st := range q.Status {
		statusSet[st] = true
	}
	for _, id := range q.JobIDs {
		e, ok := s.jobs[id]
		if !ok || (len(statusSet) > 0 && !statusSet[e.job.Status]) {
			continue
		}
		res.Total++
		if res.Total > q.Offset && len(res.Jobs) < limit {
			res.Jobs = append(res.Jobs, e.job)
		}
	}
	return res
}

// descIter walks a btree from the newest entry below a bound, one item at a time, by
// re-seeking: the btree has no cursor type, and a seek is O(log n).
type descIter struct {
	t    *btree.BTreeG[*entry]
	cur  *entry
	done bool
}

func newDescIter(t *btree.BTreeG[*entry], below uint64) *descIter {
	it := &descIter{t: t}
	it.seek(below)
	return it
}

func (it *descIter) seek(below uint64) {
	it.cur = nil
	visit := func(e *entry) bool {
		if below != 0 && e.seq >= below {
			return true
		}
		it.cur = e
		return false
	}
	if below == 0 {
		it.t.Descend(visit)
	} else {
		it.t.DescendLessOrEqual(&entry{seq: below}, visit)
	}
	if it.cur == nil {
		it.done = true
	}
}

func (it *descIter) peek() *entry {
	if it.done {
		return nil
	}
	return it.cur
}

func (it *descIter) next() *entry {
	e := it.cur
	it.seek(e.seq)
	return e
}
