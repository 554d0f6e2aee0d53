package main

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// warmFlags are jobs submit's flags for a warm migration.
type warmFlags struct {
	warm      bool
	interval  time.Duration
	cutoverAt string
}

func (w *warmFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&w.warm, "warm", false, "set options.warm: copy while the VM runs, cut over later (hyperctl jobs cutover ID, or --cutover-at)")
	fs.DurationVar(&w.interval, "precopy-interval", 0, "with --warm: options.precopy_interval_seconds (default 1h)")
	fs.StringVar(&w.cutoverAt, "cutover-at", "", "with --warm: options.cutover_at, an RFC 3339 time (2026-12-05T02:00:00Z)")
}

// options are the options the flags set (nil: none).
func (w *warmFlags) options() (map[string]any, error) {
	if !w.warm {
		if w.interval != 0 || w.cutoverAt != "" {
			return nil, usagef("--precopy-interval and --cutover-at go with --warm")
		}
		return nil, nil
	}
	set := map[string]any{"warm": true}
	if w.interval != 0 {
		if w.interval < time.Second || w.interval%time.Second != 0 {
			return nil, usagef("--precopy-interval must be whole seconds, at least 1s")
		}
		set["precopy_interval_seconds"] = int(w.interval / time.Second)
	}
	if w.cutoverAt != "" {
		t, err := time.Parse(time.RFC3339, w.cutoverAt)
		if err != nil {
			return nil, usagef("--cutover-at %q is not an RFC 3339 time like 2026-12-05T02:00:00Z", w.cutoverAt)
		}
		set["cutover_at"] = t.Format(time.RFC3339)
	}
	return set, nil
}

func init() {
	register("jobs", "cutover", &command{
		usage: "ID",
		help:  "cut a warm job over now: stop precopying, shut the VM down, copy its last changes, define the domain",
		run:   (*app).jobsCutover,
	})
}

func (a *app) jobsCutover(args []string) error {
	if err := needArgs(args, 1, "one job ID"); err != nil {
		return err
	}
	res, err := a.client.Cutover(a.ctx, args[0])
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	fmt.Fprintln(a.stdout, res.Message)
	return nil
}

// describeWarm is the Warm line of jobs get: rounds, when, what changed, the downtime.
func describeWarm(o proto.Options, w *proto.WarmStatus) string {
	if !o.Warm {
		return ""
	}
	var parts []string
	interval := o.PrecopyInterval()
	plan := "every " + humanDuration(interval)
	if o.CutoverAt != nil {
		plan += ", cutover at " + o.CutoverAt.UTC().Format(time.RFC3339)
	} else {
		plan += ", cutover on request (hyperctl jobs cutover ID)"
	}
	if w == nil {
		return "precopy " + plan
	}
	parts = append(parts, fmt.Sprintf("%s, %d round(s) (%s)", w.Phase, w.Rounds, plan))
	if w.LastRoundAt != nil {
		parts = append(parts, fmt.Sprintf("last round %s ago: %s", humanDuration(time.Since(*w.LastRoundAt).Round(time.Second)), humanBytes(w.ChangedBytes)))
	}
	if w.NextRoundAt != nil && w.Phase == proto.WarmPhasePrecopy {
		parts = append(parts, "next round at "+w.NextRoundAt.UTC().Format(time.RFC3339))
	}
	if w.CutoverRequested && w.Phase == proto.WarmPhasePrecopy {
		parts = append(parts, "cutover requested")
	}
	if w.DowntimeSeconds > 0 {
		parts = append(parts, fmt.Sprintf("downtime %.1fs", w.DowntimeSeconds))
	}
	if w.FullCopy != "" {
		parts = append(parts, w.FullCopy)
	}
	return strings.Join(parts, "; ")
}
