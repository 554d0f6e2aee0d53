// Command hypersdk-sim runs a vCenter simulator with real disk bytes: a migration source for
// the demo, the end-to-end tests and the benchmarks.
//
//	hypersdk-sim --listen 127.0.0.1:8989 --vms 2 --disk-size 1G --fill random:0.5
//	hypersdk-sim --guest linux --guest-image "$(scripts/guest-image.sh)"   a bootable Debian guest
//	hypersdk-sim --vms 0 --shapes shapes.yaml     VMs that trigger pre-flight validation rules
//
// It prints one key=value line per fact, url first, then serves until SIGINT or SIGTERM and
// removes its datastores:
//
//	url=https://127.0.0.1:8989/sdk
//	thumbprint=AB:CD:…                   SHA-1 of its self-signed certificate
//	username=admin                       only with --username
//	datastore=LocalDS_0 path=/tmp/…      one per datastore
//	vm=/DC0/vm/vm-1 moref=vm-22 uuid=…   one per VM (uuid: its BIOS UUID)
//	disk=/tmp/…/vm-1-flat.vmdk vm=/DC0/vm/vm-1 capacity=1073741824
//	ready=true
//
// The URL carries no credentials. Without --username/--password the simulator accepts any
// non-empty user name and password; with them, only those. The password is never printed; it
// can also come from HYPERSDK_SIM_PASSWORD so that it does not show in the process list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hypersdk/hypersdk/shared/config"
	"github.com/hypersdk/hypersdk/shared/vcsim"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	d := vcsim.DefaultConfig()
	fs := flag.NewFlagSet("hypersdk-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen     = fs.String("listen", "127.0.0.1:8989", "`host:port` of the SDK endpoint (port 0 picks one)")
		vms        = fs.Int("vms", d.VMs, "number of VMs, named vm-1, vm-2, … under /DC0/vm")
		namePrefix = fs.String("name-prefix", d.NamePrefix, "prefix of the VM names (vm- makes vm-1, vm-2, …)")
		diskSize   = fs.String("disk-size", "1G", "capacity of each disk (K, M, G, T are powers of 1024; a multiple of 1M)")
		disks      = fs.Int("disks-per-vm", d.DisksPerVM, "disks per VM")
		fill       = fs.String("fill", "none", "flat extent content: none | zero[:FRACTION] | random[:FRACTION]; the rest is a hole")
		seed       = fs.Int64("seed", d.Seed, "seed of the random fill: the same seed writes the same bytes")
		powerOn    = fs.Bool("power-on", false, "leave the VMs powered on (default: powered off)")
		cpus       = fs.Int("cpus", d.CPUs, "vCPUs per VM")
		memoryMB   = fs.Int("memory-mb", d.MemoryMB, "memory per VM in MB")
		firmware   = fs.String("firmware", d.Firmware, "firmware of the VMs: bios | efi")
		username   = fs.String("username", "", "the only user name accepted (needs a password)")
		password   = fs.String("password", "", "the only password accepted (or set HYPERSDK_SIM_PASSWORD)")
		leaseTTL   = fs.Duration("lease-timeout", d.LeaseTimeout, "export lease timeout without progress calls")
		leaseStar  = fs.Bool("lease-host-star", false, "report export URLs with host \"*\", as a standalone ESXi does")
		prepare    = fs.Bool("prepare-exports", false, "convert every disk to stream-optimized in the background at start, so ExportVm is ready at once")
		guest      = fs.String("guest", "", "linux: every VM's first disk holds a bootable Debian 12 guest (a VMware-style install: open-vm-tools, /dev/sda1 in fstab, vmxnet3 NIC)")
		guestImage = fs.String("guest-image", "", "raw image of the guest (default $HYPERSDK_GUEST_IMAGE, else /var/cache/hypersdk/guest/debian12.raw; scripts/guest-image.sh builds it)")
		scsi       = fs.String("scsi-controller", "pvscsi", "the disks' controller: pvscsi | lsilogic")
		writeRate  = fs.Float64("write-rate", 0, "`MiB/s` the guest of every powered-on VM keeps writing to its disks (64 KiB grains at random offsets), for warm migrations")
		shapesFile = fs.String("shapes", "", "YAML `file` of extra VMs that trigger pre-flight validation rules (vms: [{name, rdm, shared_disk, independent_disk, encrypted_disk, encrypted, snapshots, pci_passthrough, usb_passthrough, vtpm, secure_boot, firmware, network, nvme, zero_size_disk, power_on, cpus, memory_mb, guest_id, change_tracking}])")
		logLevel   = fs.String("log-level", "info", "debug | info | warn | error")
		fillParsed vcsim.Fill
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hypersdk-sim: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "hypersdk-sim: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	size, err := vcsim.ParseSize(*diskSize)
	if err == nil {
		fillParsed, err = vcsim.ParseFill(*fill)
	}
	if err != nil {
		fmt.Fprintf(stderr, "hypersdk-sim: %v\n", err)
		return 2
	}
	var shapes vcsim.ShapesFile
	if *shapesFile != "" {
		if err := config.Load(*shapesFile, &shapes); err != nil {
			fmt.Fprintf(stderr, "hypersdk-sim: --shapes: %v\n", err)
			return 2
		}
	}
	if *password == "" {
		*password = os.Getenv("HYPERSDK_SIM_PASSWORD")
	}
	if *guest != "" && *guestImage == "" {
		*guestImage = os.Getenv("HYPERSDK_GUEST_IMAGE")
		if *guestImage == "" {
			*guestImage = "/var/cache/hypersdk/guest/debian12.raw"
		}
	}
	cfg := vcsim.Config{
		Listen: *listen, VMs: *vms, NamePrefix: *namePrefix, DisksPerVM: *disks, DiskSize: size, Fill: fillParsed, Seed: *seed,
		PowerOn: *powerOn, CPUs: *cpus, MemoryMB: *memoryMB, Firmware: *firmware,
		Username: *username, Password: *password, LeaseTimeout: *leaseTTL, LeaseHostStar: *leaseStar,
		PrepareExports: *prepare, Guest: *guest, GuestImage: *guestImage, SCSIController: *scsi,
		WriteRate: *writeRate, Shapes: shapes.VMs, Logger: log,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	sim, err := vcsim.Start(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "hypersdk-sim: %v\n", err)
		if errors.Is(err, vcsim.ErrConfig) {
			return 2
		}
		return 1
	}
	defer sim.Close()
	log.Info("started", "took", time.Since(start).Round(time.Millisecond))

	fmt.Fprintf(stdout, "url=%s\n", sim.URL)
	fmt.Fprintf(stdout, "thumbprint=%s\n", sim.Thumbprint)
	if *username != "" {
		fmt.Fprintf(stdout, "username=%s\n", *username)
	}
	for _, ds := range sim.Datastores {
		fmt.Fprintf(stdout, "datastore=%s path=%s\n", ds.Name, ds.Path)
	}
	for _, vm := range sim.VMs {
		fmt.Fprintf(stdout, "vm=%s moref=%s uuid=%s\n", vm.Path, vm.Moref, vm.UUID)
		for _, disk := range vm.Disks {
			fmt.Fprintf(stdout, "disk=%s vm=%s capacity=%d\n", disk.FlatPath, vm.Path, disk.Capacity)
		}
	}
	fmt.Fprintln(stdout, "ready=true")

	<-ctx.Done()
	log.Info("stopping: removing datastores")
	return 0
}
