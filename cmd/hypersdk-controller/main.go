// Command hypersdk-controller runs one controller of the HyperSDK fleet.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/shared/config"
	"github.com/hypersdk/hypersdk/shared/logging"
	"github.com/hypersdk/hypersdk/shared/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "hypersdk-controller:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("hypersdk-controller", flag.ContinueOnError)
	var (
		configPath  = fs.String("config", "", "YAML config file")
		nodeID      = fs.String("node-id", "", "raft node id (default: stored in the data dir, else the hostname)")
		dataDir     = fs.String("data-dir", "", "data dir: raft log, snapshots, node id (config database.path)")
		apiAddr     = fs.String("api-addr", "", "API listen address host:port (default 127.0.0.1:8080)")
		apiAdv      = fs.String("api-advertise", "", "API address other controllers reach (default: api-addr)")
		raftAddr    = fs.String("raft-addr", "", "raft listen address host:port (default 127.0.0.1:8081)")
		raftAdv     = fs.String("raft-advertise", "", "raft address other controllers reach (default: raft-addr)")
		gossipAddr  = fs.String("gossip-addr", "", "gossip listen address host:port (default 127.0.0.1:7946)")
		gossipJoin  = fs.String("gossip-join", "", "comma-separated gossip members to join")
		bootstrap   = fs.Bool("bootstrap", false, "form a new cluster when this node has no state")
		join        = fs.String("join", "", "comma-separated API addresses of existing controllers to join")
		fastRaft    = fs.Bool("fast-raft", false, "short raft timers (tests and single-machine demos)")
		noAuth      = fs.Bool("insecure-no-auth", false, "serve a non-loopback API without tokens, or a non-loopback raft port without cluster TLS (unsafe)")
		rateLimit   = fs.Float64("rate-limit", -1, "API requests per second per client (0 disables; default 1000)")
		logLevel    = fs.String("log-level", "", "debug|info|warn|error")
		logFormat   = fs.String("log-format", "", "text|json")
		showVersion = fs.Bool("version", false, "print the version and exit")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(version.String("hypersdk-controller"))
		return nil
	}
	cfg, err := controller.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.Cluster.NodeID, *nodeID)
	set(&cfg.Database.Path, *dataDir)
	set(&cfg.API.Addr, *apiAddr)
	set(&cfg.API.Advertise, *apiAdv)
	set(&cfg.Cluster.RaftAddr, *raftAddr)
	set(&cfg.Cluster.RaftAdvertise, *raftAdv)
	set(&cfg.Gossip.Addr, *gossipAddr)
	set(&cfg.Log.Level, *logLevel)
	set(&cfg.Log.Format, *logFormat)
	if *gossipJoin != "" {
		cfg.Gossip.Join = config.SplitList(*gossipJoin)
	}
	if *join != "" {
		cfg.Cluster.Join = config.SplitList(*join)
	}
	if *bootstrap {
		cfg.Cluster.Bootstrap = true
	}
	if *fastRaft {
		cfg.Cluster.Fast = true
	}
	if *noAuth {
		cfg.Auth.InsecureNoAuth = true
	}
	if *rateLimit >= 0 {
		cfg.API.RateLimit.RequestsPerSecond = *rateLimit
		cfg.API.RateLimit.Burst = 0 // twice the rate
	}
	log, err := logging.New(os.Stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	c, err := controller.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	log.Info("shutting down")
	return c.Close()
}
