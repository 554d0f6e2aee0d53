package migrate

import (
	"strings"
	"testing"
)

func TestChooseDevices(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       deviceInput
		bus, nic string
		warning  string // substring of a warning; "" = no warning
	}{
		{name: "converted Linux: virtio", in: deviceInput{Converted: true}, bus: "virtio", nic: "virtio"},
		{name: "converted, disk_bus sata asked", in: deviceInput{Converted: true, DiskBus: "sata"}, bus: "sata", nic: "virtio"},
		{name: "not converted: compatibility devices", in: deviceInput{WhyNotConverted: "guest_conversion is off"}, bus: "sata", nic: "e1000e"},
		{name: "not converted, disk_bus virtio asked: honoured with a warning", in: deviceInput{DiskBus: "virtio", WhyNotConverted: "off"},
			bus: "virtio", nic: "e1000e", warning: "no virtio-blk driver"},
		{name: "not converted, disk_bus scsi asked", in: deviceInput{DiskBus: "scsi", WhyNotConverted: "off"},
			bus: "scsi", nic: "e1000e", warning: "virtio-scsi"},
		{name: "Windows without virtio-win: compatibility devices, warned", in: deviceInput{Windows: true, WhyNotConverted: "no virtio-win drivers on this agent"},
			bus: "sata", nic: "e1000e", warning: "install the virtio-win drivers"},
		{name: "Windows converted with virtio-win: virtio", in: deviceInput{Windows: true, Converted: true}, bus: "virtio", nic: "virtio"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, warnings := chooseDevices(tc.in)
			if c.DiskBus != tc.bus || c.NICModel != tc.nic || c.Reason == "" {
				t.Errorf("got %+v, want bus %s nic %s with a reason", c, tc.bus, tc.nic)
			}
			all := strings.Join(warnings, "\n")
			if (tc.warning == "") != (len(warnings) == 0) || !strings.Contains(all, tc.warning) {
				t.Errorf("warnings %q, want one with %q", warnings, tc.warning)
			}
		})
	}
}

func TestIsWindows(t *testing.T) {
	for id, want := range map[string]bool{"windows2019srv_64Guest": true, "windows9_64Guest": true, "winNetStandardGuest": true,
		"debian12_64Guest": false, "ubuntu64Guest": false, "otherLinux64Guest": false, "": false} {
		if isWindows(id) != want {
			t.Errorf("isWindows(%q) = %v", id, !want)
		}
	}
}
