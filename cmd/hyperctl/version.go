package main

import (
	"flag"
	"fmt"
	"runtime"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/version"
)

func init() {
	var clientOnly bool
	register("version", "", &command{
		usage: "[--client]",
		help:  "print hyperctl's version and the answering controller's",
		flags: func(_ *app, fs *flag.FlagSet) {
			fs.BoolVar(&clientOnly, "client", false, "only hyperctl's version (no server contact)")
		},
		run: func(a *app, args []string) error { return a.version(args, clientOnly) },
	})
}

type versionInfo struct {
	Client struct {
		Version   string `json:"version"`
		Commit    string `json:"commit"`
		GoVersion string `json:"go_version"`
	} `json:"client"`
	Server *proto.StatusResponse `json:"server,omitempty"`
}

func (a *app) version(args []string, clientOnly bool) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	var v versionInfo
	v.Client.Version, v.Client.Commit, v.Client.GoVersion = version.Version, version.Commit, runtime.Version()
	var serverErr error
	if !clientOnly {
		st, err := a.client.Status(a.ctx)
		if err == nil {
			v.Server = &st
		}
		serverErr = err
	}
	if a.jsonOut() {
		if err := a.printJSON(v); err != nil {
			return err
		}
		return serverErr
	}
	fmt.Fprintln(a.stdout, version.String("hyperctl"))
	if v.Server != nil {
		role := v.Server.RaftRole
		if v.Server.Leader != v.Server.NodeID {
			role += ", leader " + firstNonEmpty(v.Server.Leader, "none")
		}
		fmt.Fprintf(a.stdout, "server: hypersdk-controller %s on node %s (%s)\n", v.Server.Version, v.Server.NodeID, role)
	}
	return serverErr
}
