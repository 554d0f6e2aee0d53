package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

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
