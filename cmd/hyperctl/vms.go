package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/hypersdk/hypersdk/shared/client"
)

// vcenterFlags are the vCenter connection flags of every vms command. The password is
// never a flag: flags show up in ps and shell history.
type vcenterFlags struct {
	url, user, datacenter, passwordFile, thumbprint string
	insecure                                        bool
}

func (v *vcenterFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	fs.StringVar(&v.url, "vcenter", getenv("HYPERSDK_VCENTER_URL"), "vCenter URL or host (env HYPERSDK_VCENTER_URL)")
	fs.StringVar(&v.user, "username", getenv("HYPERSDK_VCENTER_USER"), "vCenter user (env HYPERSDK_VCENTER_USER)")
	fs.StringVar(&v.datacenter, "datacenter", getenv("HYPERSDK_VCENTER_DATACENTER"), "datacenter (optional)")
	fs.StringVar(&v.passwordFile, "password-file", "", "file holding the vCenter password (or env HYPERSDK_VCENTER_PASSWORD)")
	fs.BoolVar(&v.insecure, "vcenter-insecure", false, "do not verify the vCenter's certificate")
	fs.StringVar(&v.thumbprint, "thumbprint", getenv("HYPERSDK_VCENTER_THUMBPRINT"), "pin the vCenter's certificate (SHA-1/SHA-256 hex)")
}

func (v *vcenterFlags) resolve(a *app) (client.VCenter, error) {
	vc := client.VCenter{URL: v.url, Username: v.user, Datacenter: v.datacenter, Insecure: v.insecure, Thumbprint: v.thumbprint}
	if vc.URL == "" {
		return vc, usagef("--vcenter URL is required (or HYPERSDK_VCENTER_URL)")
	}
	if vc.Username == "" {
		return vc, usagef("--username is required (or HYPERSDK_VCENTER_USER)")
	}
	switch {
	case v.passwordFile != "":
		b, err := os.ReadFile(v.passwordFile)
		if err != nil {
			return vc, usagef("password file: %v", err)
		}
		vc.Password = strings.TrimRight(string(b), "\r\n")
	default:
		vc.Password = a.getenv("HYPERSDK_VCENTER_PASSWORD")
	}
	if vc.Password == "" {
		return vc, usagef("the vCenter password is required: --password-file FILE or HYPERSDK_VCENTER_PASSWORD")
	}
	return vc, nil
}

func init() {
	var vf vcenterFlags
	var pattern string
	flags := func(a *app, fs *flag.FlagSet) { vf.register(fs, a.getenv) }
	register("vms", "list", &command{
		usage: "--vcenter URL --username USER [--password-file FILE] [--datacenter DC] [--pattern GLOB]",
		help:  "list the VMs of a vCenter (through the controller)",
		flags: func(a *app, fs *flag.FlagSet) {
			vf.register(fs, a.getenv)
			fs.StringVar(&pattern, "pattern", "", `inventory path glob, e.g. "DC0/vm/prod/*" (default: every VM)`)
		},
		run: func(a *app, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			vc, err := vf.resolve(a)
			if err != nil {
				return err
			}
			res, err := a.client.ListVMs(a.ctx, vc, pattern)
			if err != nil {
				return vmsErr(err, "GET /vms/list")
			}
			if a.jsonOut() {
				return a.printJSON(res)
			}
			if len(res.VMs) == 0 {
				fmt.Fprintln(a.stdout, "No VMs.")
				return nil
			}
			t := a.table("NAME", "PATH", "POWER", "CPUS", "MEMORY", "STORAGE", "GUEST OS", "IP")
			for _, v := range res.VMs {
				t.row(v.Name, v.Path, v.PowerState, v.NumCPU, humanBytes(int64(v.MemoryMB)<<20), humanBytes(v.Storage), truncate(v.GuestOS, 32), v.IPAddress)
			}
			return t.flush()
		},
	})
	register("vms", "info", &command{
		usage: "VM_PATH --vcenter URL --username USER [--password-file FILE]",
		help:  "show a VM's hardware, disks and NICs",
		flags: flags,
		run: func(a *app, args []string) error {
			if err := needArgs(args, 1, "one VM path"); err != nil {
				return err
			}
			vc, err := vf.resolve(a)
			if err != nil {
				return err
			}
			info, err := a.client.VMInfo(a.ctx, vc, args[0])
			if err != nil {
				return vmsErr(err, "GET /vms/info")
			}
			if a.jsonOut() {
				return a.printJSON(info)
			}
			hw := info.Hardware
			if err := fields(a.stdout,
				"Name", info.Name, "Path", info.Path, "UUID", info.UUID, "Power", info.PowerState,
				"CPUs", itoa(int(hw.NumCPU)), "Memory", humanBytes(int64(hw.MemoryMB)<<20), "Firmware", hw.Firmware,
				"Guest OS", info.GuestOS, "IP", info.IPAddress,
			); err != nil {
				return err
			}
			if len(info.Disks) > 0 {
				fmt.Fprintln(a.stdout)
				t := a.table("DISK", "CAPACITY", "FILE")
				for _, d := range info.Disks {
					t.row(d.Label, humanBytes(d.CapacityKB*1024), d.FilePath)
				}
				if err := t.flush(); err != nil {
					return err
				}
			}
			if len(info.NICs) > 0 {
				fmt.Fprintln(a.stdout)
				t := a.table("NIC", "NETWORK", "MAC", "ADAPTER", "CONNECTED")
				for _, n := range info.NICs {
					t.row(n.Label, n.Network, n.MAC, n.AdapterType, yesNo(n.Connected))
				}
				return t.flush()
			}
			return nil
		},
	})
	for _, action := range []struct{ verb, help, done string }{
		{"shutdown", "shut the guest down gracefully (VMware Tools)", "shutdown initiated"},
		{"poweroff", "power the VM off (hard)", "powered off"},
		{"remove-cdrom", "remove the VM's CD-ROM devices", "CD-ROM devices removed"},
	} {
		register("vms", action.verb, &command{
			usage: "VM_PATH --vcenter URL --username USER [--password-file FILE]",
			help:  action.help,
			flags: flags,
			run: func(a *app, args []string) error {
				if err := needArgs(args, 1, "one VM path"); err != nil {
					return err
				}
				vc, err := vf.resolve(a)
				if err != nil {
					return err
				}
				res, err := a.client.VMAction(a.ctx, action.verb, vc, args[0])
				if err != nil {
					return vmsErr(err, "POST /vms/"+action.verb)
				}
				return a.message(res, "%s: %s", args[0], firstNonEmpty(res.Message, action.done))
			},
		})
	}
}

// vmsErr explains a 404 for a route the controller does not have (a controller older
// than the VM discovery API) apart from a VM that is not there.
func vmsErr(err error, route string) error {
	var ae *client.APIError
	if errors.As(err, &ae) && ae.StatusCode == http.StatusNotFound && strings.HasPrefix(ae.Message, "no route for") {
		return fmt.Errorf("controller %s has no VM discovery API yet (%s answered: %w)", ae.Server, route, err)
	}
	return err
}
