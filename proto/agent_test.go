package proto

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

// The size limit is memberlist's: a larger meta makes memberlist panic in UpdateNode.
func TestNodeMetaMaxSizeIsMemberlists(t *testing.T) {
	if NodeMetaMaxSize != memberlist.MetaMaxSize {
		t.Fatalf("NodeMetaMaxSize = %d, memberlist.MetaMaxSize = %d", NodeMetaMaxSize, memberlist.MetaMaxSize)
	}
}

// debianPlugins is what nbdkit 1.32 on Debian 12 installs, plus the vddk plugin of a host
// with VMware's VDDK.
var debianPlugins = []string{"cc", "cdi", "curl", "data", "eval", "file", "floppy", "full", "info",
	"iso", "linuxdisk", "memory", "nbd", "null", "ondemand", "partitioning", "pattern", "random",
	"sh", "sparse-random", "split", "ssh", "tmpdisk", "torrent", "zero", "vddk"}

func fullMeta() NodeMeta {
	return NodeMeta{
		Role:    RoleAgent,
		Name:    strings.Repeat("k", MaxNodeNameLen),
		APIAddr: "https://kvm-host-0017.rack12.datacenter-east.example.com:9443",
		Version: "v1.12.3-rc.1+g0123456789ab-dirty",
		Capacity: AgentCapacity{CPUs: 1024, MemoryTotalBytes: 24 << 40, MemoryFreeBytes: 23 << 40,
			StorageFreeBytes: 900 << 40, StorageTotalBytes: 1 << 50,
			TransferRateBytesPerSecond: 12_500_000_000, TransferCapBytesPerSecond: 12_500_000_000},
		RunningJobs: 1000, MaxJobs: 1000,
		Capabilities: AgentCapabilities{
			QemuImg: true, QemuImgVersion: "10.1.2 (Debian 1:10.1.2+ds-1)",
			Nbdkit: true, NbdkitPlugins: debianPlugins, Nbdcopy: true, VDDK: true,
			LibvirtURI:       "qemu+ssh://migration@kvm-host-0017.rack12.datacenter-east.example.com/system?keyfile=/etc/hypersdk/id_ed25519",
			LibvirtReachable: true, Methods: []string{"nfc", "https", "vddk"},
			VirtV2V: true,
			Virtualization: &Virtualization{Type: VirtKVM, CPU: "host-model -arch-capabilities -tsx-ctrl", LibguestfsKVM: true,
				Reason: "hardware KVM: /dev/kvm (kvm_amd, svm); host-model: did not start (qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000000001c082f); " +
					"host-model -arch-capabilities: booted a kernel in 1.8 s; host-passthrough: booted a kernel in 1.7 s"},
		},
		Leaving: true,
	}
}

func TestNodeMetaSize(t *testing.T) {
	manyPlugins := make([]string, 200)
	for i := range manyPlugins {
		manyPlugins[i] = strings.Repeat(string(rune('a'+i%26)), 40)
	}
	adversarial := fullMeta()
	adversarial.APIAddr = strings.Repeat("a", 1000)
	adversarial.Version = strings.Repeat("v", 1000)
	adversarial.Capabilities.LibvirtURI = strings.Repeat("u", 1000)
	adversarial.Capabilities.QemuImgVersion = strings.Repeat("q", 1000)
	adversarial.Capabilities.NbdkitPlugins = append(manyPlugins, "vddk", "curl")
	adversarial.Capacity = AgentCapacity{CPUs: math.MaxInt, MemoryTotalBytes: math.MaxUint64,
		MemoryFreeBytes: math.MaxUint64, StorageFreeBytes: math.MaxUint64, StorageTotalBytes: math.MaxUint64,
		TransferRateBytesPerSecond: math.MaxUint64, TransferCapBytesPerSecond: math.MaxUint64}
	adversarial.RunningJobs, adversarial.MaxJobs = math.MaxInt, math.MaxInt

	typical := NodeMeta{Role: RoleAgent, Name: "kvm01", APIAddr: "10.0.0.5:9090", Version: "v1.0.0",
		Capabilities: AgentCapabilities{QemuImg: true, Nbdkit: true, NbdkitPlugins: debianPlugins[:25]}}

	for _, tc := range []struct {
		name          string
		meta          NodeMeta
		wantTruncated bool
		wantPlugins   []string // prefix the receiver must see
		wantMethods   []string
	}{
		{"realistic maximum", fullMeta(), true, []string{"vddk", "curl", "ssh", "nbd", "file"}, []string{"vddk", "https", "nfc"}},
		{"adversarial", adversarial, true, []string{"vddk", "curl"}, []string{"vddk", "https", "nfc"}},
		{"debian host, every plugin fits", typical, false, []string{"curl", "ssh", "nbd", "file", "cc"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.meta.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > memberlist.MetaMaxSize {
				t.Fatalf("encoded meta is %d bytes, limit %d", len(b), memberlist.MetaMaxSize)
			}
			t.Logf("%d bytes", len(b))
			again, _ := tc.meta.Encode()
			if string(again) != string(b) {
				t.Fatal("encoding is not deterministic: the sender would re-broadcast unchanged meta")
			}
			got, err := DecodeNodeMeta(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Truncated != tc.wantTruncated {
				t.Fatalf("Truncated = %v, want %v", got.Truncated, tc.wantTruncated)
			}
			want := tc.meta.Capacity
			want.TransferRateBytesPerSecond = min(want.TransferRateBytesPerSecond, MaxMetaTransferRate)
			want.TransferCapBytesPerSecond = min(want.TransferCapBytesPerSecond, MaxMetaTransferRate)
			want.Healthy = true // no failed check
			if got.Name != tc.meta.Name || !reflect.DeepEqual(got.Capacity, want) || got.RunningJobs != tc.meta.RunningJobs {
				t.Fatalf("identity or capacity lost: %+v", got)
			}
			if got.Capabilities.VDDK != tc.meta.Capabilities.VDDK || got.Leaving != tc.meta.Leaving {
				t.Fatalf("flags lost: %+v", got)
			}
			if len(got.Capabilities.NbdkitPlugins) < len(tc.wantPlugins) ||
				!reflect.DeepEqual(got.Capabilities.NbdkitPlugins[:len(tc.wantPlugins)], tc.wantPlugins) {
				t.Fatalf("plugins %v, want prefix %v", got.Capabilities.NbdkitPlugins, tc.wantPlugins)
			}
			if !tc.wantTruncated && len(got.Capabilities.NbdkitPlugins) != len(tc.meta.Capabilities.NbdkitPlugins) {
				t.Fatalf("plugins dropped without need: %v", got.Capabilities.NbdkitPlugins)
			}
			if !reflect.DeepEqual(got.Capabilities.Methods, tc.wantMethods) {
				t.Fatalf("methods %v, want %v", got.Capabilities.Methods, tc.wantMethods)
			}
			// The virtualisation survives every squeeze (the reason cut short), ahead of
			// the nbdkit plugins.
			if wv, gv := tc.meta.Capabilities.Virtualization, got.Capabilities.Virtualization; (wv == nil) != (gv == nil) ||
				wv != nil && (gv.Type != wv.Type || gv.CPU != wv.CPU || gv.LibguestfsKVM != wv.LibguestfsKVM ||
					!strings.HasPrefix(wv.Reason, gv.Reason) || len(gv.Reason) == 0) || got.Capabilities.VirtV2V != tc.meta.Capabilities.VirtV2V {
				t.Fatalf("virtualization %+v (virt-v2v %v), want %+v", gv, got.Capabilities.VirtV2V, wv)
			}
		})
	}
}

func TestNodeMetaRoundTrip(t *testing.T) {
	m := NodeMeta{
		Role: RoleAgent, Name: "kvm-01", APIAddr: "10.1.2.3:9090", Version: "v0.3.0",
		Capacity: AgentCapacity{CPUs: 16, MemoryTotalBytes: 64 << 30, MemoryFreeBytes: 40 << 30, StorageFreeBytes: 2 << 40, StorageTotalBytes: 4 << 40,
			TransferRateBytesPerSecond: 230 << 20, TransferCapBytesPerSecond: 125_000_000,
			// The gossip metadata carries which checks failed; the reasons it decodes to are
			// the generic ones (the agent's /health has the precise text).
			FailedChecks: []string{HealthCheckLibvirt, HealthCheckControllers},
			Reasons:      []string{HealthReason(HealthCheckLibvirt), HealthReason(HealthCheckControllers)}},
		RunningJobs: 2, MaxJobs: 4,
		Capabilities: AgentCapabilities{QemuImg: true, QemuImgVersion: "7.2.22", Nbdkit: true,
			NbdkitPlugins: []string{"curl", "file", "ssh"}, Nbdcopy: true, LibvirtURI: "qemu:///system",
			LibvirtReachable: true, Methods: []string{"https", "nfc"}, VirtV2V: true,
			Virtualization: &Virtualization{Type: VirtTCG, CPU: "default", Reason: "TCG: no /dev/kvm on this host"}},
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeNodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	want := m
	want.Capabilities.NbdkitPlugins = []string{"curl", "ssh", "file"} // SortPlugins order
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}

	// A newer sender appends fields; this decoder must ignore them.
	if got2, err := DecodeNodeMeta(append(b, 0x05, 'x', 'y')); err != nil || got2.Name != m.Name {
		t.Fatalf("trailing bytes: %v %+v", err, got2)
	}
	// An older sender stops early; missing fields decode as zero.
	ctl := NodeMeta{Role: RoleController, Name: "c1", APIAddr: "127.0.0.1:8080"}
	cb, _ := ctl.Encode()
	if got3, err := DecodeNodeMeta(cb[:3+1+len("c1")+1+len("127.0.0.1:8080")]); err != nil || got3.Name != "c1" || got3.Role != RoleController {
		t.Fatalf("short meta: %v %+v", err, got3)
	}
}

func TestNodeMetaInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta NodeMeta
	}{
		{"no role", NodeMeta{Name: "a"}},
		{"no name", NodeMeta{Role: RoleAgent}},
		{"long name", NodeMeta{Role: RoleAgent, Name: strings.Repeat("n", MaxNodeNameLen+1)}},
		{"control char", NodeMeta{Role: RoleAgent, Name: "a\nb"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.meta.Encode(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Encode error = %v, want ErrInvalid", err)
			}
		})
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"unknown format", []byte{9, 2, 0}},
		{"string overrun", []byte{1, 2, 0, 50, 'a'}},
		{"bad varint", []byte{1, 2, 0, 1, 'a', 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{"unknown role", []byte{1, 7, 0, 1, 'a'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeNodeMeta(tc.b); !errors.Is(err, ErrNodeMeta) {
				t.Fatalf("Decode error = %v, want ErrNodeMeta", err)
			}
		})
	}
}

func TestAgentsResponseJSON(t *testing.T) {
	b, err := json.Marshal(AgentsResponse{Agents: []AgentInfo{{Name: "kvm01", State: AgentAlive,
		Capacity: AgentCapacity{CPUs: 4}, Capabilities: AgentCapabilities{QemuImg: true}}}, Total: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"agents"`, `"total":1`, `"state":"alive"`, `"address"`, `"capacity":{"cpus":4`,
		`"memory_free_bytes"`, `"storage_total_bytes"`, `"running_jobs"`, `"max_jobs"`, `"qemu_img":true`,
		`"libvirt_reachable"`, `"last_seen"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("GET /agents body lacks %s: %s", key, b)
		}
	}
}
