package capacity

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hypersdk/hypersdk/proto"
)

// fakeKVM is a host whose KVM behaves like a kind of machine seen in the field: which CPU
// definitions start, and which then boot a kernel.
type fakeKVM struct {
	startErr map[string]string // CPUDef.String() → qemu's start error
	boots    map[string]bool   // CPUDef.String() → the kernel reaches its end of init
	tried    []string
}

func (f *fakeKVM) trial(_ context.Context, typ string, cpu CPUDef) TrialResult {
	f.tried = append(f.tried, typ+" "+cpu.String())
	if e, ok := f.startErr[cpu.String()]; ok {
		return TrialResult{Error: e}
	}
	if f.boots[cpu.String()] {
		return TrialResult{Started: true, Booted: true, Evidence: "VFS: Unable to mount root fs", Seconds: 1.5}
	}
	return TrialResult{Started: true, Evidence: "Probing EDD (edd=off to disable)... ok", Seconds: 30}
}

const msrAbort = "internal error: process exited while connecting to monitor: qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000000001c082f"

// TestDecide is the decision table: what each kind of host ends up with, and which trials
// it took to get there.
func TestDecide(t *testing.T) {
	hw := HostVirt{DevKVM: true, HWFlag: "svm", Modules: []string{"kvm_amd"}}
	pvm := HostVirt{DevKVM: true, Modules: []string{"kvm_pvm"}}
	for _, tc := range []struct {
		name      string
		host      HostVirt
		kvm       *fakeKVM // nil: no trial possible
		wantType  string
		wantCPU   string
		wantLGKVM bool
		wantTried []string
		reason    []string // substrings of the reason
	}{
		{name: "no /dev/kvm: TCG without trials", host: HostVirt{Modules: []string{"kvm_pvm"}},
			kvm: &fakeKVM{}, wantType: proto.VirtTCG, wantCPU: "default", reason: []string{"no /dev/kvm"}},
		{name: "hardware KVM, host-model boots", host: hw,
			kvm:      &fakeKVM{boots: map[string]bool{"host-model": true, "host-passthrough": true}},
			wantType: proto.VirtKVM, wantCPU: "host-model", wantLGKVM: true,
			wantTried: []string{"kvm host-model", "kvm host-passthrough"},
			reason:    []string{"hardware KVM", "kvm_amd", "host-model: booted a kernel"}},
		{name: "nested KVM refusing an MSR: host-model minus arch-capabilities", host: hw,
			kvm: &fakeKVM{startErr: map[string]string{"host-model": msrAbort, "host-passthrough": msrAbort},
				boots: map[string]bool{"host-model -arch-capabilities": true}},
			wantType: proto.VirtKVM, wantCPU: "host-model -arch-capabilities", wantLGKVM: false,
			wantTried: []string{"kvm host-model", "kvm host-model -arch-capabilities", "kvm host-passthrough"},
			reason:    []string{"failed to set MSR 0x10a", "host-model -arch-capabilities: booted"}},
		{name: "only qemu's default CPU boots", host: hw,
			kvm: &fakeKVM{startErr: map[string]string{"host-model": "unsupported configuration: CPU mode 'host-model' is not supported", "host-passthrough": "no"},
				boots: map[string]bool{"default": true}},
			wantType: proto.VirtKVM, wantCPU: "default",
			wantTried: []string{"kvm host-model", "kvm default", "kvm host-passthrough"}},
		{name: "kvm_pvm: starts without the MSR, hangs after Probing EDD: TCG", host: pvm,
			kvm:      &fakeKVM{startErr: map[string]string{"host-model": msrAbort, "host-passthrough": msrAbort}},
			wantType: proto.VirtTCG, wantCPU: "default",
			wantTried: []string{"kvm host-model", "kvm host-model -arch-capabilities", "kvm default"},
			reason:    []string{"TCG", "kvm_pvm", "no vmx/svm", "Probing EDD"}},
		{name: "the same MSR failing again is not retried forever", host: hw,
			kvm:       &fakeKVM{startErr: map[string]string{"host-model": msrAbort, "host-model -arch-capabilities": msrAbort, "default": msrAbort}},
			wantType:  proto.VirtTCG,
			wantCPU:   "default",
			wantTried: []string{"kvm host-model", "kvm host-model -arch-capabilities", "kvm default"}},
		{name: "hardware KVM where no trial domain starts at all: trust the hardware", host: hw,
			kvm: &fakeKVM{startErr: map[string]string{"host-model": "Cannot access kernel '/boot/vmlinuz': Permission denied",
				"default": "Cannot access kernel '/boot/vmlinuz': Permission denied"}},
			wantType: proto.VirtKVM, wantCPU: "host-model", wantLGKVM: true,
			wantTried: []string{"kvm host-model", "kvm default"}, reason: []string{"no trial domain started", "Permission denied"}},
		{name: "no kernel to boot, hardware KVM: trust the hardware", host: hw,
			wantType: proto.VirtKVM, wantCPU: "host-model", wantLGKVM: true, reason: []string{"not confirmed"}},
		{name: "no kernel to boot, kvm_pvm: TCG", host: pvm,
			wantType: proto.VirtTCG, wantCPU: "default", reason: []string{"not hardware KVM"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var trial Trial
			if tc.kvm != nil {
				trial = tc.kvm.trial
			}
			v := Decide(context.Background(), tc.host, trial)
			if v.Type != tc.wantType || v.CPU != tc.wantCPU || v.LibguestfsKVM != tc.wantLGKVM {
				t.Errorf("got type %q cpu %q libguestfs_kvm %v, want %q %q %v (reason %q)",
					v.Type, v.CPU, v.LibguestfsKVM, tc.wantType, tc.wantCPU, tc.wantLGKVM, v.Reason)
			}
			if tc.kvm != nil && strings.Join(tc.kvm.tried, ",") != strings.Join(tc.wantTried, ",") {
				t.Errorf("trials %q, want %q", tc.kvm.tried, tc.wantTried)
			}
			for _, r := range tc.reason {
				if !strings.Contains(v.Reason, r) {
					t.Errorf("reason %q lacks %q", v.Reason, r)
				}
			}
		})
	}
}

func TestFailingFeature(t *testing.T) {
	for msg, want := range map[string]string{
		msrAbort: "arch-capabilities",
		"qemu-system-x86_64: error: failed to set MSR 0x122 to 0x3": "tsx-ctrl",
		"qemu-system-x86_64: error: failed to set MSR 0x999 to 0x1": "",
		"Permission denied": "",
	} {
		if got := failingFeature(msg); got != want {
			t.Errorf("failingFeature(%q) = %q, want %q", msg, got, want)
		}
	}
}

func TestCPUDefString(t *testing.T) {
	for _, c := range []CPUDef{{}, {Mode: "host-model"}, {Mode: "host-model", Disable: []string{"arch-capabilities", "tsx-ctrl"}}, {Mode: "host-passthrough"}} {
		back := ParseCPUDef(c.String())
		if back.String() != c.String() || back.Mode != c.Mode || len(back.Disable) != len(c.Disable) {
			t.Errorf("%q read back as %+v", c.String(), back)
		}
	}
}

func TestCPUVirtFlag(t *testing.T) {
	for in, want := range map[string]string{
		"processor\t: 0\nflags\t\t: fpu vme de pse svm sse\n": "svm",
		"flags\t: fpu vmx\nflags\t: svm\n":                    "vmx",
		"flags\t\t: fpu vme hypervisor\n":                     "",
		"":                                                    "",
	} {
		if got := cpuVirtFlag(strings.NewReader(in)); got != want {
			t.Errorf("cpuVirtFlag(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestVirtProbeCachesPerBoot: the decision is made once per boot of the host and shared
// through the cache file; a new boot id, or another libvirt URI, probes again.
func TestVirtProbeCachesPerBoot(t *testing.T) {
	file := filepath.Join(t.TempDir(), "virt-probe.json")
	var trials atomic.Int32
	bootID := "boot-1"
	newProbe := func(uri string) *VirtProbe {
		return NewVirtProbe(VirtConfig{
			CacheFile: file, LibvirtURI: uri,
			Host:   func() HostVirt { return HostVirt{DevKVM: true, HWFlag: "vmx", Modules: []string{"kvm_intel"}} },
			BootID: func() string { return bootID },
			Trial: func(context.Context, string, CPUDef) TrialResult {
				trials.Add(1)
				return TrialResult{Started: true, Booted: true}
			},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}
	p := newProbe("qemu:///system")
	if p.Result() != nil {
		t.Fatal("a result before Run")
	}
	v := p.Run(context.Background())
	if v.Type != proto.VirtKVM || trials.Load() != 2 {
		t.Fatalf("first probe: %+v after %d trials", v, trials.Load())
	}
	if got, err := p.Wait(context.Background()); err != nil || got != v || *p.Result() != v {
		t.Errorf("Wait = %+v, %v; Result = %+v", got, err, p.Result())
	}
	if v2 := newProbe("qemu:///system").Run(context.Background()); v2 != v || trials.Load() != 2 {
		t.Errorf("second agent on the same boot: %+v after %d trials (want the cached decision)", v2, trials.Load())
	}
	newProbe("qemu+ssh://other/system").Run(context.Background())
	if trials.Load() != 4 {
		t.Errorf("another libvirt URI used the cache (%d trials)", trials.Load())
	}
	bootID = "boot-2"
	newProbe("qemu:///system").Run(context.Background())
	if trials.Load() != 6 {
		t.Errorf("a new boot used the old decision (%d trials)", trials.Load())
	}
	if b, err := os.ReadFile(file); err != nil || !strings.Contains(string(b), `"boot_id": "boot-2"`) {
		t.Errorf("cache file %s: %s %v", file, b, err)
	}
}
