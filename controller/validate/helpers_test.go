package validate

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// testShapes are simulator VMs that each trigger one rule; "plain" triggers none.
var testShapes = []vcsim.Shape{
	{Name: "plain"},
	{Name: "rdm", RDM: true},
	{Name: "shared", SharedDisk: true},
	{Name: "independent", IndependentDisk: true},
	{Name: "snapshots", Snapshots: 1},
	{Name: "snapshots-cbt", Snapshots: 1, ChangeTracking: true},
	{Name: "encrypted-vm", Encrypted: true},
	{Name: "encrypted-disk", EncryptedDisk: true},
	{Name: "pci", PCIPassthrough: true},
	{Name: "usb", USBPassthrough: true},
	{Name: "vtpm", VTPM: true},
	{Name: "secure-boot", Firmware: "efi", SecureBoot: true},
	{Name: "running", PowerOn: true},
	{Name: "nvme", NVMe: true},
	{Name: "zero", ZeroSizeDisk: true},
	{Name: "efi", Firmware: "efi"},
	{Name: "big", CPUs: 64, MemoryMB: 1 << 20},
	{Name: "windows", GuestID: "windows2019srv_64Guest"},
	{Name: "vlan10", Network: "Prod-VLAN10"},
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func quietLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startShapes starts a simulator with vms plain VMs plus testShapes.
func startShapes(t testing.TB, vms int) *vcsim.Sim {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	s, err := vcsim.Start(ctx, vcsim.Config{VMs: vms, DiskSize: 64 << 20, Shapes: testShapes, Logger: log})
	if err != nil {
		t.Fatalf("vcsim: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func simSource(s *vcsim.Sim) proto.Source {
	return proto.Source{Type: "vsphere", VCenterURL: s.URL.String(), Username: s.Username, Password: s.Password, Thumbprint: s.Thumbprint}
}

func simJob(s *vcsim.Sim, vm string) proto.JobDefinition {
	return proto.JobDefinition{VMPath: "DC0/vm/" + vm, Source: simSource(s), Destination: proto.Destination{Type: "kvm"}}
}

// vmInfos reads every shape's VMInfo once.
func vmInfos(t *testing.T, s *vcsim.Sim) map[string]*vsphere.VMInfo {
	t.Helper()
	ctx := context.Background()
	src := simSource(s)
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: src.VCenterURL, Username: src.Username, Password: src.Password, Thumbprint: src.Thumbprint})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close(ctx)
	out := map[string]*vsphere.VMInfo{}
	var mu sync.Mutex
	for _, sh := range testShapes {
		vm, err := c.FindVM(ctx, "DC0/vm/"+sh.Name)
		if err != nil {
			t.Fatalf("find %s: %v", sh.Name, err)
		}
		info, err := c.VMInfo(ctx, vm)
		if err != nil {
			t.Fatalf("info %s: %v", sh.Name, err)
		}
		mu.Lock()
		out[sh.Name] = info
		mu.Unlock()
	}
	return out
}

func ids(cs []proto.Concern) map[string]proto.ConcernCategory {
	m := map[string]proto.ConcernCategory{}
	for _, c := range cs {
		m[c.ID] = c.Category
	}
	return m
}
