package migrate

import (
	"fmt"
	"strings"

	"github.com/hypersdk/hypersdk/proto"
)

// Disk buses and NIC models a domain gets.
const (
	busVirtio  = "virtio"
	busSATA    = "sata"
	nicVirtio  = "virtio"
	nicCompat  = "e1000e"
	busCompat  = busSATA
	guestWinOS = "win"
)

// deviceInput is what the device choice depends on.
type deviceInput struct {
	// DiskBus is the job's options.disk_bus ("" lets the agent choose).
	DiskBus string
	// Converted: virt-v2v converted the guest, so it has virtio drivers in its initramfs
	// (Linux) or its driver store (Windows).
	Converted bool
	// Windows is a Windows guest (VMware guest id win*).
	Windows bool
	// WhyNotConverted explains an unconverted guest, for the warning.
	WhyNotConverted string
}

// chooseDevices picks the disk bus and NIC model. A converted guest gets virtio, which is
// what virt-v2v prepared it for and the fastest; an unconverted one gets devices every
// guest OS has a driver for in its boot image (AHCI, which VMware's SATA controller is too,
// and the e1000e NIC), since a guest without a virtio driver does not find its root disk
// (Linux: "Gave up waiting for root file system device"; Windows: INACCESSIBLE_BOOT_DEVICE).
// The job's disk_bus wins, with a warning when the guest may lack its driver.
func chooseDevices(in deviceInput) (proto.DeviceChoice, []string) {
	var warnings []string
	c := proto.DeviceChoice{DiskBus: busCompat, NICModel: nicCompat}
	switch {
	case in.Converted:
		c.DiskBus, c.NICModel = busVirtio, nicVirtio
		c.Reason = "converted by virt-v2v: virtio drivers installed"
	case in.Windows:
		c.Reason = "Windows guest not converted (" + in.WhyNotConverted + "): compatibility devices, which Windows boots from without extra drivers"
		warnings = append(warnings, fmt.Sprintf("Windows guest not converted (%s): it gets compatibility devices (sata disks, e1000e NIC), which are slower than virtio; "+
			"install the virtio-win drivers on the agent (/usr/share/virtio-win) and migrate again with guest conversion to get virtio", in.WhyNotConverted))
	default:
		c.Reason = "guest not converted (" + in.WhyNotConverted + "): compatibility devices (sata, e1000e) that every guest has drivers for"
	}
	if in.DiskBus != "" && in.DiskBus != c.DiskBus {
		if !in.Converted && (in.DiskBus == busVirtio || in.DiskBus == "scsi") {
			warnings = append(warnings, fmt.Sprintf("disk_bus %s asked for an unconverted guest, which may have no %s driver in its boot image and then cannot find its disks; "+
				"options.verify_boot shows whether it boots", in.DiskBus, driverOf(in.DiskBus)))
		}
		c.Reason = fmt.Sprintf("disk bus %s from options.disk_bus; %s", in.DiskBus, c.Reason)
		c.DiskBus = in.DiskBus
	}
	return c, warnings
}

func driverOf(bus string) string {
	if bus == "scsi" {
		return "virtio-scsi"
	}
	return "virtio-blk"
}

// isWindows reads VMware's guest id (windows9_64Guest, winNetStandardGuest, …).
func isWindows(guestID string) bool {
	return strings.HasPrefix(strings.ToLower(guestID), guestWinOS)
}
