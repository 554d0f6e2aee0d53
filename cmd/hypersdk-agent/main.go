// Command hypersdk-agent runs the agent of a KVM host: it joins the fleet's gossip pool,
// leases migration jobs from the controllers, copies the VMs' disks from vSphere and defines
// the domains on the local libvirtd.
//
//	hypersdk-agent --config FILE --name NAME --controllers URL,... --gossip-addr H:P \
//	               --gossip-join H:P,... --libvirt-uri URI --storage-dir DIR --max-jobs N \
//	               --vddk-libdir DIR
//
// With no flags it works on one machine: controller http://127.0.0.1:8080, qemu:///system.
// Flags override the YAML file. SIGTERM or SIGINT stops it gracefully: no new leases,
// running jobs get shutdown_grace to finish, the rest are handed back.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hypersdk/hypersdk/agent"
	"github.com/hypersdk/hypersdk/agent/migrate"
	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/agent/transfer/vddk"
	"github.com/hypersdk/hypersdk/shared/config"
	"github.com/hypersdk/hypersdk/shared/logging"
	"github.com/hypersdk/hypersdk/shared/version"
)

// The agent advertises the pipeline's transfer rate with its capacity.
var _ agent.TransferRater = (*migrate.Pipeline)(nil)

func main() {
	// The agent re-executes itself as the reader process of VMware's VDDK (one per disk
	// copied with the vddk method): see agent/transfer/vddk.
	vddk.RunIfReader()
	config.Main(run)
}

func run(args []string) error {
	cfg := agent.DefaultConfig()
	o := config.NewOverrides(flag.NewFlagSet("hypersdk-agent", flag.ContinueOnError))
	o.String("name", &cfg.Name, "agent name, unique in the fleet (default: the host name)")
	o.List("controllers", &cfg.Controllers, "comma-separated controller API URLs (default http://127.0.0.1:8080)")
	o.String("join-token", &cfg.JoinToken, "token presented to the controllers (or set HYPERSDK_JOIN_TOKEN, which keeps it out of ps)")
	o.String("api-addr", &cfg.APIAddr, "listen address of the agent's /health and /metrics (default 127.0.0.1:8082)")
	o.String("gossip-addr", &cfg.Gossip.Addr, "gossip listen address host:port (default 127.0.0.1:7947)")
	o.String("gossip-advertise", &cfg.Gossip.Advertise, "gossip address other members reach (default: gossip-addr)")
	o.List("gossip-join", &cfg.Gossip.Join, "comma-separated gossip members to join (default 127.0.0.1:7946)")
	o.True("fast-gossip", &cfg.Gossip.Fast, "short gossip failure detection (tests and one-machine demos)")
	o.String("libvirt-uri", &cfg.LibvirtURI, "libvirt URI domains are defined on (default qemu:///system)")
	o.String("storage-dir", &cfg.StorageDir, "where converted disks are written (default /var/lib/hypersdk/storage)")
	o.Int("max-jobs", &cfg.MaxJobs, "jobs run at the same time (default 2)")
	o.String("default-network", &cfg.DefaultNetwork, "libvirt network for NICs whose VMware network is not mapped (default \"default\")")
	o.String("vddk-libdir", &cfg.Transfer.VDDKLibDir, "where VMware's VDDK is unpacked (DIR/lib64/libvixDiskLib.so.8), for the vddk method (config transfer.vddk_libdir)")
	o.Float("min-free-storage-mb", func(mb float64) { cfg.MinFreeStorage = uint64(max(mb, 0) * (1 << 20)) }, "free MiB in the storage dir below which the agent is unhealthy and takes no work (config min_free_storage in bytes; default 1024)")
	o.String("attempt-log", &cfg.AttemptLog, "append one JSON line per job attempt start and end to this file")
	o.String("guest-conversion", &cfg.GuestConversion, "what jobs that do not set options.guest_conversion get: auto (virt-v2v when installed) or off")
	o.String("virt-probe-file", &cfg.VirtProbeFile, "cache of the virtualisation decision for this boot of the host (default <storage-dir>/.virt-probe.json)")
	var probeVirt, checkConfig bool
	o.True("check-config", &checkConfig, "check the configuration (file and flags) and that the storage dir is writable, then exit: 0 when valid")
	o.True("probe-virtualization", &probeVirt, "decide (or read this boot's decision) how this host runs guests, print it as JSON and exit")
	o.String("log-level", &cfg.Log.Level, "debug|info|warn|error")
	o.String("log-format", &cfg.Log.Format, "text|json")
	// The environment's join token beats the file's; the flag beats both.
	done, err := o.Parse(args, &cfg, func() {
		if t := os.Getenv("HYPERSDK_JOIN_TOKEN"); t != "" {
			cfg.JoinToken = t
		}
	})
	if done || err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if checkConfig {
		return agent.CheckConfig(cfg, os.Stdout)
	}
	log, err := logging.New(os.Stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	pipeline, err := migrate.New(migrate.Config{
		StorageDir: cfg.StorageDir, LibvirtURI: cfg.LibvirtURI, DefaultNetwork: cfg.DefaultNetwork,
		VDDKLibDir: cfg.VDDKDir(), Registry: reg, Logger: log,
		Transfer: transfer.Config{Retries: cfg.Transfer.Retries, RetryDelay: cfg.Transfer.RetryDelay,
			RequestTimeout: cfg.Transfer.RequestTimeout, VDDKTransports: cfg.Transfer.VDDKTransports,
			VDDKConnections: cfg.Transfer.VDDKConnections, Connections: cfg.Transfer.Connections,
			MaxBytesPerSecond: transfer.BytesPerSecondFromMbps(cfg.Transfer.MaxMbps)},
		GuestConversion: cfg.GuestConversion, VirtProbeFile: cfg.VirtProbeFile,
		HooksDir: cfg.HooksDir, AgentName: cfg.Name,
	})
	if err != nil {
		return err
	}
	if probeVirt {
		// Run once before the tests or a demo (make test does), so agents started later
		// find this boot's decision in the cache instead of probing.
		v, err := pipeline.WaitVirtualization(context.Background())
		if err != nil {
			return err
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	a, err := agent.New(ctx, cfg, pipeline, reg, log)
	if err != nil {
		return err
	}
	log.Info("hypersdk-agent running", "version", version.Version, "name", cfg.Name, "libvirt_uri", cfg.LibvirtURI,
		"storage_dir", cfg.StorageDir)
	err = a.Run(ctx)
	log.Info("hypersdk-agent stopped")
	return err
}
