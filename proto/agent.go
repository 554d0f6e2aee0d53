package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// AgentState is an agent's liveness as the answering controller sees it.
type AgentState string

const (
	AgentAlive AgentState = "alive"
	// AgentSuspect: still a member, but it did not answer this controller's last probe.
	AgentSuspect AgentState = "suspect"
	// AgentDead: the gossip pool declared it failed (crash, partition, SIGKILL).
	AgentDead AgentState = "dead"
	// AgentLeft: it announced its departure (graceful shutdown).
	AgentLeft AgentState = "left"
)

// Member reports whether the agent still belongs to the pool (alive or suspect).
func (s AgentState) Member() bool { return s == AgentAlive || s == AgentSuspect }

// AgentCapacity is what an agent's host can offer, measured by the agent.
type AgentCapacity struct {
	CPUs              int    `json:"cpus"`
	MemoryTotalBytes  uint64 `json:"memory_total_bytes"`
	MemoryFreeBytes   uint64 `json:"memory_free_bytes"`
	StorageFreeBytes  uint64 `json:"storage_free_bytes"`
	StorageTotalBytes uint64 `json:"storage_total_bytes"`
	// TransferRateBytesPerSecond is what the agent's disk copies read from their sources
	// now (averaged over the last seconds); TransferCapBytesPerSecond is its cap
	// (transfer.max_mbps), 0 for none. Both are left out when zero, so an agent that is not
	// copying speaks to controllers older than these fields exactly as before.
	TransferRateBytesPerSecond uint64 `json:"transfer_rate_bytes_per_second,omitempty"`
	TransferCapBytesPerSecond  uint64 `json:"transfer_cap_bytes_per_second,omitempty"`
	// Healthy: every self-check of the agent passed (health.go); FailedChecks names the
	// checks that did not (HealthCheck*), Reasons says why and what to do. Placement keeps
	// jobs away from an agent with a failed check.
	Healthy      bool     `json:"healthy"`
	FailedChecks []string `json:"failed_checks,omitempty"`
	Reasons      []string `json:"reasons,omitempty"`
}

// AgentCapabilities is what an agent's host can do: the tools found and the transfer
// methods (a subset of ConversionMethods without "auto") they make possible.
type AgentCapabilities struct {
	QemuImg          bool     `json:"qemu_img"`
	QemuImgVersion   string   `json:"qemu_img_version,omitempty"`
	Nbdkit           bool     `json:"nbdkit"`
	NbdkitPlugins    []string `json:"nbdkit_plugins,omitempty"`
	Nbdcopy          bool     `json:"nbdcopy"`
	VDDK             bool     `json:"vddk"`
	LibvirtURI       string   `json:"libvirt_uri,omitempty"`
	LibvirtReachable bool     `json:"libvirt_reachable"`
	Methods          []string `json:"methods,omitempty"`
	// VirtV2V: virt-v2v-in-place is installed (guest conversion).
	VirtV2V bool `json:"virt_v2v"`
	// Virtualization is how the host runs guests, once the agent's probe has decided
	// (absent while it runs).
	Virtualization *Virtualization `json:"virtualization,omitempty"`
}

// HasMethod reports whether the agent can run the given conversion method.
func (c AgentCapabilities) HasMethod(m string) bool { return slices.Contains(c.Methods, m) }

// AgentInfo is one agent in GET /agents and GET /agents/{name}.
type AgentInfo struct {
	Name  string     `json:"name"`
	State AgentState `json:"state"`
	// Address is the agent's gossip address (host:port); APIAddr its own HTTP endpoint.
	Address      string            `json:"address"`
	APIAddr      string            `json:"api_addr,omitempty"`
	Capacity     AgentCapacity     `json:"capacity"`
	RunningJobs  int               `json:"running_jobs"`
	MaxJobs      int               `json:"max_jobs"`
	Capabilities AgentCapabilities `json:"capabilities"`
	// LastSeen is the last time the answering controller had evidence the agent was alive.
	LastSeen time.Time `json:"last_seen"`
	Version  string    `json:"version,omitempty"`
	// Cordon is the operator's "cordoned" or "draining" (hyperctl agents cordon|drain),
	// replicated: every controller shows it ("" when the agent takes work).
	Cordon string `json:"cordon,omitempty"`
}

// AgentControlRequest is the optional body of POST /agents/{name}/cordon|drain|uncordon.
type AgentControlRequest struct {
	Reason string `json:"reason,omitempty"`
}

// Validate implements the API's request check.
func (r *AgentControlRequest) Validate() error {
	if len(r.Reason) > 256 {
		return invalid("reason is longer than 256 bytes")
	}
	return nil
}

// AgentControlResponse answers a cordon, drain or uncordon.
type AgentControlResponse struct {
	Agent   string `json:"agent"`
	Cordon  string `json:"cordon"` // "cordoned", "draining" or "" (uncordoned)
	Message string `json:"message"`
}

// AgentsResponse answers GET /agents.
type AgentsResponse struct {
	Agents []AgentInfo `json:"agents"`
	Total  int         `json:"total"`
}

// NodeRole says what a gossip member is.
type NodeRole string

const (
	RoleController NodeRole = "controller"
	RoleAgent      NodeRole = "agent"
)

// NodeMeta is the metadata every gossip member advertises (memberlist node meta). It
// travels in every alive message, so its encoding is compact binary and is bounded by
// NodeMetaMaxSize: memberlist panics on larger metadata.
type NodeMeta struct {
	Role         NodeRole
	Name         string
	APIAddr      string
	Version      string
	Capacity     AgentCapacity
	RunningJobs  int
	MaxJobs      int
	Capabilities AgentCapabilities
	// Leaving is announced just before a graceful leave: memberlist v0.5.4 reports a leave and
	// a failure through the same NotifyLeave with no usable state, so receivers tell them
	// apart by this flag.
	Leaving bool
	// Truncated is set by DecodeNodeMeta when the sender dropped list items to stay in size.
	Truncated bool
}

// Limits of the node metadata. NodeMetaMaxSize equals memberlist.MetaMaxSize (asserted by
// a test; proto does not import memberlist).
const (
	NodeMetaMaxSize   = 512
	MaxNodeNameLen    = 64
	maxMetaAddrLen    = 96
	maxMetaVersionLen = 32
	maxMetaToolVerLen = 24
	maxMetaURILen     = 128
	maxMetaItemLen    = 32
)

// ErrNodeMeta marks metadata that cannot be decoded (foreign or corrupt member).
var ErrNodeMeta = errors.New("invalid node metadata")

// Validate checks what must never be truncated: the identity of the node.
func (m NodeMeta) Validate() error {
	switch m.Role {
	case RoleController, RoleAgent:
	default:
		return invalid("node role %q is not controller or agent", m.Role)
	}
	if m.Name == "" {
		return invalid("node name is required")
	}
	if len(m.Name) > MaxNodeNameLen {
		return invalid("node name %q is longer than %d bytes", m.Name, MaxNodeNameLen)
	}
	if strings.ContainsFunc(m.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) || !utf8.ValidString(m.Name) {
		return invalid("node name %q contains control characters or invalid UTF-8", m.Name)
	}
	return nil
}

// Wire format v1 (append-only: a decoder ignores trailing bytes it does not know, and a
// field missing at the end decodes as zero, so agents and controllers of neighbouring
// versions understand each other during a rolling upgrade):
//
//	format byte (1) | role byte | flags uvarint | name | api | version | cpus | mem total |
//	mem free | storage free | storage total | running | max | qemu-img version | libvirt uri |
//	methods (count, items) | nbdkit plugins (count, items) |
//	guest flags uvarint | virtualization type | cpu | reason | transfer rate | transfer cap |
//	failed health checks uvarint
//
// Strings are uvarint length + bytes, numbers uvarint. The lists get what remains of the 512
// bytes once the trailers (guest: at most guestTrailerMax bytes; transfer: at most
// transferTrailerMax, appended later than the lists and so after them) are reserved, in a
// deterministic order, so truncation drops the least useful items and the same input always
// encodes to the same bytes (the sender compares bytes to decide whether to re-broadcast).
const nodeMetaFormat = 1

const (
	flagLeaving = 1 << iota
	flagQemuImg
	flagNbdkit
	flagNbdcopy
	flagVDDK
	flagLibvirtReachable
	flagTruncated
)

// Guest trailer flags (a second flags field: the first is full at 7 bits).
const (
	guestFlagVirtV2V = 1 << iota
	guestFlagProbed
	guestFlagLibguestfsKVM
)

// Bounds of the guest trailer: the reason is the longest field and the first to be cut.
const (
	maxMetaVirtTypeLen = 8
	maxMetaCPULen      = 48
	maxMetaReasonLen   = 96
	guestTrailerMax    = 1 + 1 + maxMetaVirtTypeLen + 1 + maxMetaCPULen + 1 + maxMetaReasonLen
)

var roleBytes = map[NodeRole]byte{RoleController: 1, RoleAgent: 2}

// pluginRank orders nbdkit plugins by how much placement cares about them.
var pluginRank = map[string]int{"vddk": 0, "curl": 1, "ssh": 2, "nbd": 3, "file": 4}

// SortPlugins orders nbdkit plugin names the way the metadata keeps them: the plugins
// the transfer methods use first, then the rest by name.
func SortPlugins(p []string) {
	slices.SortFunc(p, func(a, b string) int {
		ra, oka := pluginRank[a]
		rb, okb := pluginRank[b]
		switch {
		case oka && okb:
			return ra - rb
		case oka:
			return -1
		case okb:
			return 1
		}
		return strings.Compare(a, b)
	})
}

// Encode returns the metadata in at most NodeMetaMaxSize bytes. Over-long free-text fields
// are cut at a rune boundary and list items that do not fit are dropped (Truncated is then
// set on the decoded side); only an invalid identity is an error.
func (m NodeMeta) Encode() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, NodeMetaMaxSize)
	b = append(b, nodeMetaFormat, roleBytes[m.Role])
	flagsAt := len(b)
	b = append(b, 0) // flags fit one uvarint byte (< 0x80)
	c := m.Capabilities
	var flags byte
	for bit, on := range map[byte]bool{
		flagLeaving: m.Leaving, flagQemuImg: c.QemuImg, flagNbdkit: c.Nbdkit,
		flagNbdcopy: c.Nbdcopy, flagVDDK: c.VDDK, flagLibvirtReachable: c.LibvirtReachable,
	} {
		if on {
			flags |= bit
		}
	}
	b = appendString(b, m.Name, MaxNodeNameLen)
	b = appendString(b, m.APIAddr, maxMetaAddrLen)
	b = appendString(b, m.Version, maxMetaVersionLen)
	for _, v := range []uint64{
		nonNeg(m.Capacity.CPUs), m.Capacity.MemoryTotalBytes, m.Capacity.MemoryFreeBytes,
		m.Capacity.StorageFreeBytes, m.Capacity.StorageTotalBytes, nonNeg(m.RunningJobs), nonNeg(m.MaxJobs),
	} {
		b = binary.AppendUvarint(b, v)
	}
	b = appendString(b, c.QemuImgVersion, maxMetaToolVerLen)
	b = appendString(b, c.LibvirtURI, maxMetaURILen)

	methods := slices.Clone(c.Methods)
	slices.SortStableFunc(methods, func(a, b string) int { return methodRank(a) - methodRank(b) })
	plugins := slices.Clone(c.NbdkitPlugins)
	SortPlugins(plugins)
	// The transfer trailer comes last (it was added after the guest trailer) and is
	// reserved whole: two numbers.
	trailer := encodeTransferTrailer(m.Capacity)
	// The failed health checks follow it (added later still): one bit per check.
	trailer = binary.AppendUvarint(trailer, healthBits(m.Capacity.FailedChecks))
	end := NodeMetaMaxSize - len(trailer)
	// Room for the guest trailer is reserved before the lists: its essentials (type, CPU)
	// and the start of the reason, but never so much that the methods and the transfer
	// plugins (the first list items, which placement uses) lose their room. The reason
	// then grows into whatever the lists leave.
	free := end - len(b) - 2 // after both list counts
	essential := len(encodeGuestTrailer(c, 0))
	reserve := essential + min(guestReasonReserve, reasonLen(c))
	if free-reserve < listsMinRoom {
		reserve = max(essential, free-listsMinRoom)
	}
	limit := end - reserve
	var cut bool
	// Reserve the plugins' count byte while filling methods, so both counts always fit.
	b, cut = appendList(b, methods, limit-1)
	if cut {
		flags |= flagTruncated
	}
	b, cut = appendList(b, plugins, limit)
	if cut {
		flags |= flagTruncated
	}
	b = append(b, encodeGuestTrailer(c, end-len(b))...)
	b = append(b, trailer...)
	b[flagsAt] = flags
	return b, nil
}

// Trailer room: the part of the reason reserved ahead of the lists, and what the lists keep
// whatever happens (methods and the vddk and curl plugins).
const (
	guestReasonReserve = 40
	listsMinRoom       = 32
)

func reasonLen(c AgentCapabilities) int {
	if c.Virtualization == nil {
		return 0
	}
	return min(len(c.Virtualization.Reason), maxMetaReasonLen)
}

// encodeGuestTrailer writes what the agent knows about running guests: virt-v2v present,
// and the virtualisation its probe chose (type, CPU definition, and the reason cut to what
// room leaves after the rest: the full reason is in the agent's log). The flags, type and
// CPU are always written whole.
func encodeGuestTrailer(c AgentCapabilities, room int) []byte {
	var flags uint64
	if c.VirtV2V {
		flags |= guestFlagVirtV2V
	}
	var typ, cpu, reason string
	if v := c.Virtualization; v != nil {
		flags |= guestFlagProbed
		if v.LibguestfsKVM {
			flags |= guestFlagLibguestfsKVM
		}
		typ, cpu, reason = v.Type, v.CPU, v.Reason
	}
	b := binary.AppendUvarint(make([]byte, 0, guestTrailerMax), flags)
	b = appendString(b, typ, maxMetaVirtTypeLen)
	b = appendString(b, cpu, maxMetaCPULen)
	return appendString(b, reason, min(maxMetaReasonLen, max(0, room-len(b)-1)))
}

// MaxMetaTransferRate is the largest transfer rate or cap the metadata carries (about 4.4
// TB/s, 35 times proto.MaxMbps): larger values are sent as this, so the transfer trailer
// takes at most 12 bytes and leaves the lists and the guest trailer their room.
const MaxMetaTransferRate = 1<<42 - 1

// transferTrailerMax bounds the transfer trailer: two uvarints of at most 42 bits.
const transferTrailerMax = 2 * 6

// encodeTransferTrailer writes the agent's current transfer rate and its cap, after the
// guest trailer: an older decoder ignores them, and metadata from an older agent decodes them
// as 0.
func encodeTransferTrailer(c AgentCapacity) []byte {
	b := binary.AppendUvarint(make([]byte, 0, transferTrailerMax), min(c.TransferRateBytesPerSecond, MaxMetaTransferRate))
	return binary.AppendUvarint(b, min(c.TransferCapBytesPerSecond, MaxMetaTransferRate))
}

func methodRank(m string) int {
	if i := slices.Index(ConversionMethods, m); i >= 0 {
		return i
	}
	return len(ConversionMethods)
}

func nonNeg(v int) uint64 {
	if v < 0 {
		return 0
	}
	return uint64(v)
}

// cut returns s shortened to at most n bytes without splitting a rune.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func appendString(b []byte, s string, max int) []byte {
	s = cut(s, max)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendList writes as many leading items as fit under limit. Counts stay below 0x80 so
// the count is one byte and can be patched after the items are placed.
func appendList(b []byte, items []string, limit int) ([]byte, bool) {
	countAt := len(b)
	b = append(b, 0)
	n := 0
	for _, it := range items {
		it = cut(it, maxMetaItemLen)
		if n == 0x7f || len(b)+1+len(it) > limit {
			break
		}
		b = appendString(b, it, maxMetaItemLen)
		n++
	}
	b[countAt] = byte(n)
	return b, n < len(items)
}

type metaReader struct {
	b   []byte
	err error
}

func (r *metaReader) done() bool { return r.err != nil || len(r.b) == 0 }

func (r *metaReader) uvarint() uint64 {
	if r.done() {
		return 0 // a field absent at the end (older sender) decodes as zero
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("%w: bad number", ErrNodeMeta)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *metaReader) str() string {
	if r.done() {
		return ""
	}
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%w: string overruns the metadata", ErrNodeMeta)
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *metaReader) list() []string {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%w: list overruns the metadata", ErrNodeMeta)
		return nil
	}
	var out []string
	for i := uint64(0); i < n && r.err == nil; i++ {
		out = append(out, r.str())
	}
	return out
}

func toInt(v uint64) int {
	if v > uint64(int(^uint(0)>>1)) {
		return int(^uint(0) >> 1)
	}
	return int(v)
}

// DecodeNodeMeta parses metadata written by Encode (of this or a later format-1 version).
func DecodeNodeMeta(b []byte) (NodeMeta, error) {
	var m NodeMeta
	if len(b) < 2 {
		return m, fmt.Errorf("%w: %d bytes", ErrNodeMeta, len(b))
	}
	if b[0] != nodeMetaFormat {
		return m, fmt.Errorf("%w: unknown format %d", ErrNodeMeta, b[0])
	}
	for role, rb := range roleBytes {
		if b[1] == rb {
			m.Role = role
		}
	}
	r := &metaReader{b: b[2:]}
	flags := r.uvarint()
	m.Leaving = flags&flagLeaving != 0
	m.Truncated = flags&flagTruncated != 0
	c := &m.Capabilities
	c.QemuImg = flags&flagQemuImg != 0
	c.Nbdkit = flags&flagNbdkit != 0
	c.Nbdcopy = flags&flagNbdcopy != 0
	c.VDDK = flags&flagVDDK != 0
	c.LibvirtReachable = flags&flagLibvirtReachable != 0
	m.Name = r.str()
	m.APIAddr = r.str()
	m.Version = r.str()
	m.Capacity.CPUs = toInt(r.uvarint())
	m.Capacity.MemoryTotalBytes = r.uvarint()
	m.Capacity.MemoryFreeBytes = r.uvarint()
	m.Capacity.StorageFreeBytes = r.uvarint()
	m.Capacity.StorageTotalBytes = r.uvarint()
	m.RunningJobs = toInt(r.uvarint())
	m.MaxJobs = toInt(r.uvarint())
	c.QemuImgVersion = r.str()
	c.LibvirtURI = r.str()
	c.Methods = r.list()
	c.NbdkitPlugins = r.list()
	if !r.done() {
		gf := r.uvarint()
		c.VirtV2V = gf&guestFlagVirtV2V != 0
		typ, cpu, reason := r.str(), r.str(), r.str()
		if gf&guestFlagProbed != 0 {
			c.Virtualization = &Virtualization{Type: typ, CPU: cpu, Reason: reason, LibguestfsKVM: gf&guestFlagLibguestfsKVM != 0}
		}
	}
	m.Capacity.TransferRateBytesPerSecond = r.uvarint()
	m.Capacity.TransferCapBytesPerSecond = r.uvarint()
	// Absent (an older agent): no check failed.
	m.Capacity.FailedChecks, m.Capacity.Reasons = checksFromBits(r.uvarint())
	m.Capacity.Healthy = len(m.Capacity.FailedChecks) == 0
	if r.err != nil {
		return NodeMeta{}, r.err
	}
	if err := m.Validate(); err != nil {
		return NodeMeta{}, fmt.Errorf("%w: %v", ErrNodeMeta, err)
	}
	return m, nil
}
