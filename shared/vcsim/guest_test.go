package vcsim_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/hypersdk/hypersdk/shared/vcsim"
)

// TestGuestLinux: with a guest, the first disk of every VM holds the image byte for byte
// (its holes kept), as large as the image; the VM looks like a VMware Linux VM (LSI Logic or
// pvscsi controller, vmxnet3 NIC, a Debian guest id) and has a BIOS UUID.
func TestGuestLinux(t *testing.T) {
	t.Parallel()
	// A stand-in image: 3.5 MiB (not a MiB multiple) with data, a 1 MiB hole, data.
	image := filepath.Join(t.TempDir(), "guest.raw")
	content := make([]byte, 3*mib+mib/2)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range content {
		if i < mib || i >= 2*mib {
			content[i] = byte(r.Uint32())
		}
	}
	if err := os.WriteFile(image, content, 0o644); err != nil {
		t.Fatal(err)
	}
	s := startSim(t, vcsim.Config{VMs: 2, DisksPerVM: 2, DiskSize: 2 * mib, Guest: vcsim.GuestLinux, GuestImage: image,
		SCSIController: "lsilogic", Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 1}})
	c := connect(t, s)
	for _, v := range s.VMs {
		if len(v.UUID) != 36 {
			t.Errorf("%s: BIOS UUID %q", v.Name, v.UUID)
		}
		flat := v.Disks[0].FlatPath
		got, err := os.ReadFile(flat)
		if err != nil {
			t.Fatal(err)
		}
		if v.Disks[0].Capacity != 4*mib || int64(len(got)) != 4*mib || !bytes.Equal(got[:len(content)], content) ||
			!bytes.Equal(got[len(content):], make([]byte, 4*mib-len(content))) {
			t.Errorf("%s: first disk %d bytes (capacity %d), want the image padded to 4 MiB", v.Name, len(got), v.Disks[0].Capacity)
		}
		if a := allocated(t, flat); a > 3*mib {
			t.Errorf("%s: first disk allocates %d bytes: the image's 1 MiB hole was written", v.Name, a)
		}
		if v.Disks[1].Capacity != 2*mib {
			t.Errorf("%s: second disk %d bytes, want the configured 2 MiB", v.Name, v.Disks[1].Capacity)
		}
		var mvm mo.VirtualMachine
		vm := findVM(t, c, v.Path)
		if err := vm.Properties(context.Background(), vm.Reference(), []string{"config"}, &mvm); err != nil {
			t.Fatal(err)
		}
		if mvm.Config.GuestId != "debian12_64Guest" || !strings.EqualFold(mvm.Config.Uuid, v.UUID) {
			t.Errorf("%s: guest id %q uuid %q (sim says %q)", v.Name, mvm.Config.GuestId, mvm.Config.Uuid, v.UUID)
		}
		devices := object.VirtualDeviceList(mvm.Config.Hardware.Device)
		if nics := devices.SelectByType((*types.VirtualEthernetCard)(nil)); len(nics) != 1 {
			t.Errorf("%s: %d NICs", v.Name, len(nics))
		} else if _, ok := nics[0].(*types.VirtualVmxnet3); !ok {
			t.Errorf("%s: NIC %T, want vmxnet3", v.Name, nics[0])
		}
		if ctl := devices.SelectByType((*types.VirtualLsiLogicController)(nil)); len(ctl) != 1 {
			t.Errorf("%s: want one LSI Logic controller, have %d", v.Name, len(ctl))
		}
	}
}

func TestGuestLinuxBadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  vcsim.Config
		want string
	}{
		{vcsim.Config{Guest: "windows", GuestImage: "/x"}, "not linux"},
		{vcsim.Config{Guest: vcsim.GuestLinux}, "scripts/guest-image.sh"},
		{vcsim.Config{Guest: vcsim.GuestLinux, GuestImage: "/nonexistent.raw"}, "no such file"},
		{vcsim.Config{SCSIController: "buslogic"}, "pvscsi or lsilogic"},
	} {
		s, err := vcsim.Start(context.Background(), tc.cfg)
		if err == nil {
			s.Close()
			t.Errorf("%+v: started", tc.cfg)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %q does not say %q", tc.cfg, err, tc.want)
		}
	}
}
