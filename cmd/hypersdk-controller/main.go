// Command hypersdk-controller runs one controller of the HyperSDK fleet.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/shared/config"
	"github.com/hypersdk/hypersdk/shared/logging"
)

func main() { config.Main(run) }

func run(args []string) error {
	cfg := controller.DefaultConfig()
	o := config.NewOverrides(flag.NewFlagSet("hypersdk-controller", flag.ContinueOnError))
	o.String("node-id", &cfg.Cluster.NodeID, "raft node id (default: stored in the data dir, else the hostname)")
	o.String("data-dir", &cfg.Database.Path, "data dir: raft log, snapshots, node id (config database.path)")
	o.String("api-addr", &cfg.API.Addr, "API listen address host:port (default 127.0.0.1:8080)")
	o.String("api-advertise", &cfg.API.Advertise, "API address other controllers reach (default: api-addr)")
	o.String("raft-addr", &cfg.Cluster.RaftAddr, "raft listen address host:port (default 127.0.0.1:8081)")
	o.String("raft-advertise", &cfg.Cluster.RaftAdvertise, "raft address other controllers reach (default: raft-addr)")
	o.String("gossip-addr", &cfg.Gossip.Addr, "gossip listen address host:port (default 127.0.0.1:7946)")
	o.List("gossip-join", &cfg.Gossip.Join, "comma-separated gossip members to join")
	o.True("bootstrap", &cfg.Cluster.Bootstrap, "form a new cluster when this node has no state")
	o.List("join", &cfg.Cluster.Join, "comma-separated API addresses of existing controllers to join")
	o.True("fast-raft", &cfg.Cluster.Fast, "short raft timers (tests and single-machine demos)")
	o.True("allow-private-targets", &cfg.Security.AllowPrivateTargets, "let /vms/*, webhooks and schedule globs reach loopback and private addresses (config security.allow_private_targets)")
	o.True("allow-http-targets", &cfg.Security.AllowHTTPTargets, "let /vms/*, webhooks and schedule globs use http:// (config security.allow_http_targets)")
	o.True("insecure-no-auth", &cfg.Auth.InsecureNoAuth, "serve a non-loopback API without tokens, or a non-loopback raft port without cluster TLS (unsafe)")
	o.Float("rate-limit", func(rps float64) {
		if rps >= 0 {
			cfg.API.RateLimit.RequestsPerSecond = rps
			cfg.API.RateLimit.Burst = 0 // twice the rate
		}
	}, "API requests per second per client (0 disables; default 1000)")
	var validateOnSubmit string
	o.String("validate-on-submit", &validateOnSubmit, "true|false: run the pre-flight checks before storing a job (config validation.on_submit; default true)")
	o.String("log-level", &cfg.Log.Level, "debug|info|warn|error")
	o.String("log-format", &cfg.Log.Format, "text|json")
	var checkConfig bool
	o.True("check-config", &checkConfig, "check the configuration (file and flags) and exit: 0 when valid")
	if done, err := o.Parse(args, &cfg, nil); done || err != nil {
		return err
	}
	if validateOnSubmit != "" {
		b, err := strconv.ParseBool(validateOnSubmit)
		if err != nil {
			return fmt.Errorf("--validate-on-submit %q: want true or false", validateOnSubmit)
		}
		cfg.Validation.OnSubmit = &b
	}
	if checkConfig {
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("configuration invalid: %w", err)
		}
		if _, err := logging.New(os.Stderr, cfg.Log.Level, cfg.Log.Format); err != nil {
			return fmt.Errorf("configuration invalid: %w", err)
		}
		fmt.Println("hypersdk-controller: configuration valid")
		return nil
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
