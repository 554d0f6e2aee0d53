package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/client"
)

func init() {
	var (
		file          string
		watchAfter    bool
		status, vm    string
		agent         string
		limit         int
		pollInterval  time.Duration
		watchInterval = &pollInterval
		verifyBoot    bool
		dryRun        bool
		bootTimeout   time.Duration
		warm          warmFlags
	)
	register("jobs", "submit", &command{
		usage: "-f FILE|- [--watch] [--verify-boot [--boot-timeout D]] [--warm [--precopy-interval D] [--cutover-at RFC3339]]",
		help:  "submit one job, a list of jobs, or several YAML documents (JSON or YAML)",
		flags: func(_ *app, fs *flag.FlagSet) {
			fs.StringVar(&file, "f", "", "job definition file, JSON or YAML (- reads stdin)")
			fs.BoolVar(&watchAfter, "watch", false, "watch the job until it ends (one job only)")
			fs.DurationVar(watchInterval, "poll", time.Second, "poll interval when /ws is unavailable")
			fs.BoolVar(&dryRun, "dry-run", false, "check the jobs (here, and with the controller's /jobs/validate where it has one) without submitting them")
			fs.BoolVar(&verifyBoot, "verify-boot", false, "set options.verify_boot: start the migrated VM and wait for its login prompt")
			fs.DurationVar(&bootTimeout, "boot-timeout", 0, "with --verify-boot: options.boot_timeout_seconds (default 5m)")
			warm.register(fs)
		},
		run: func(a *app, args []string) error {
			set, err := warm.options()
			if err != nil {
				return err
			}
			if bootTimeout != 0 && !verifyBoot {
				return usagef("--boot-timeout goes with --verify-boot")
			}
			if bootTimeout < 0 || (bootTimeout > 0 && bootTimeout < time.Second) {
				return usagef("--boot-timeout must be at least 1s")
			}
			if verifyBoot {
				if set == nil {
					set = map[string]any{}
				}
				set["verify_boot"] = true
				if bootTimeout > 0 {
					set["boot_timeout_seconds"] = int(bootTimeout / time.Second)
				}
			}
			if dryRun {
				if watchAfter {
					return usagef("--dry-run submits nothing to --watch")
				}
				return a.jobsDryRun(args, file, set)
			}
			return a.jobsSubmit(args, file, watchAfter, pollInterval, set)
		},
	})
	register("jobs", "list", &command{
		usage: "[--status S[,S]] [--limit N] [--vm PATH] [--agent NAME]",
		help:  "list jobs, newest first",
		flags: func(_ *app, fs *flag.FlagSet) {
			fs.StringVar(&status, "status", "", "only jobs in these states: pending,running,completed,failed,cancelled")
			fs.IntVar(&limit, "limit", 50, "at most N jobs (1-1000)")
			fs.StringVar(&vm, "vm", "", "only jobs of this VM path")
			fs.StringVar(&agent, "agent", "", "only jobs of this agent")
		},
		run: func(a *app, args []string) error { return a.jobsList(args, status, limit, vm, agent) },
	})
	register("jobs", "get", &command{
		usage: "ID",
		help:  "show one job",
		run:   (*app).jobsGet,
	})
	var cancelStatus string
	register("jobs", "cancel", &command{
		usage: "ID... | --status pending|running",
		help:  "cancel jobs (pending ones at once, running ones through their agent)",
		flags: func(_ *app, fs *flag.FlagSet) {
			fs.StringVar(&cancelStatus, "status", "", "cancel every job in this state: pending or running")
		},
		run: func(a *app, args []string) error { return a.jobsCancel(args, cancelStatus) },
	})
	register("jobs", "watch", &command{
		usage: "ID",
		help:  "follow a job with a live progress bar until it ends; exit 0 if it completed, 4 otherwise",
		flags: func(_ *app, fs *flag.FlagSet) {
			fs.DurationVar(watchInterval, "poll", time.Second, "poll interval when /ws is unavailable")
		},
		run: func(a *app, args []string) error {
			if err := needArgs(args, 1, "one job ID"); err != nil {
				return err
			}
			return a.watch(args[0], pollInterval)
		},
	})
}

func (a *app) jobsSubmit(args []string, file string, watchAfter bool, poll time.Duration, setOptions map[string]any) error {
	docs, err := a.readJobs(args, file, setOptions)
	if err != nil {
		return err
	}
	if watchAfter && len(docs) != 1 {
		return usagef("--watch follows one job; %s holds %d", file, len(docs))
	}
	if err := checkDocuments(file, docs); err != nil {
		return err
	}
	var results []proto.SubmitResponse
	if len(docs) == 1 {
		res, err := a.client.SubmitJobJSON(a.ctx, docs[0])
		if err != nil {
			return badInput(fmt.Errorf("%s: %w", inputName(file), err))
		}
		results = append(results, res)
	} else {
		// One list, one raft entry: all of the file's jobs are stored or none.
		res, err := a.client.SubmitJobsJSON(a.ctx, docs)
		if err != nil {
			return badInput(fmt.Errorf("%s: none of its %d jobs was submitted: %w", inputName(file), len(docs), err))
		}
		results = res.Jobs
	}
	if !a.jsonOut() {
		for _, res := range results {
			fmt.Fprintf(a.stdout, "job %s submitted\n", res.JobID)
		}
	}
	if a.jsonOut() && !watchAfter {
		if len(results) == 1 {
			return a.printJSON(results[0])
		}
		return a.printJSON(results)
	}
	if watchAfter {
		return a.watch(results[0].JobID, poll)
	}
	return nil
}

// withOptions sets fields of a job document's options (the flags of jobs submit), keeping
// everything else as written; the controller still validates the whole job.
func withOptions(doc json.RawMessage, set map[string]any) (json.RawMessage, error) {
	if len(set) == 0 {
		return doc, nil
	}
	var job map[string]any
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&job); err != nil || job == nil {
		return nil, fmt.Errorf("a job is a JSON object")
	}
	opts, ok := job["options"].(map[string]any)
	if !ok {
		if job["options"] != nil {
			return nil, fmt.Errorf("options is not an object")
		}
		opts = map[string]any{}
	}
	for k, v := range set {
		opts[k] = v
	}
	job["options"] = opts
	return json.Marshal(job)
}

// checkDocuments checks every job of a file as the controller will (strict JSON, unknown
// fields named by their path, the definition's rules) and names each bad one with its
// file and document: a usage error (exit 2), nothing submitted.
func checkDocuments(file string, docs []json.RawMessage) error {
	var bad []string
	for i, d := range docs {
		var def proto.JobDefinition
		err := proto.DecodeStrict(d, &def, false)
		if err == nil {
			err = def.Validate()
		}
		if err != nil {
			where := inputName(file)
			if len(docs) > 1 {
				where = fmt.Sprintf("%s: document %d", where, i+1)
			}
			bad = append(bad, fmt.Sprintf("%s: %v", where, err))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	if len(docs) > 1 {
		return usagef("%d of %d jobs are invalid, none was submitted: %s", len(bad), len(docs), strings.Join(bad, "; "))
	}
	return usagef("%s", bad[0])
}

// badInput makes the controller's 400 on a submitted file a usage error (exit 2: the
// file is wrong, retrying it as is cannot help); other errors are left as they are.
func badInput(err error) error {
	if client.StatusCode(err) == http.StatusBadRequest {
		return usagef("%v", err)
	}
	return err
}

func inputName(file string) string {
	if file == "-" {
		return "stdin"
	}
	return file
}

// readJobs reads the job documents of -f FILE with the flags' options set on each.
func (a *app) readJobs(args []string, file string, setOptions map[string]any) ([]json.RawMessage, error) {
	if len(args) > 0 {
		return nil, usagef("unexpected argument %q (the job comes from -f FILE)", args[0])
	}
	docs, err := a.readDocuments(file)
	if err != nil {
		return nil, err
	}
	for i := range docs {
		if docs[i], err = withOptions(docs[i], setOptions); err != nil {
			return nil, usagef("%s: job %d: %v", file, i+1, err)
		}
	}
	return docs, nil
}

// jobsDryRun is jobs submit --dry-run: the local checks, then the controller's
// /jobs/validate where it has one (it also knows the fleet and the jobs already there).
func (a *app) jobsDryRun(args []string, file string, setOptions map[string]any) error {
	docs, err := a.readJobs(args, file, setOptions)
	if err != nil {
		return err
	}
	if err := checkDocuments(file, docs); err != nil {
		return err
	}
	how := "checked by the controller's /jobs/validate"
	out, err := a.client.ValidateJobsJSON(a.ctx, docs)
	switch code := client.StatusCode(err); {
	case err == nil:
	case code == http.StatusNotFound || code == http.StatusMethodNotAllowed:
		how, out = "checked here only: this controller has no /jobs/validate", nil
	case code == http.StatusBadRequest:
		return usagef("%s: %v", inputName(file), err)
	default:
		return fmt.Errorf("%s: %w", inputName(file), err)
	}
	if a.jsonOut() {
		return a.printJSON(map[string]any{"valid": true, "jobs": len(docs), "checked": how, "controller": out})
	}
	fmt.Fprintf(a.stdout, "%d job(s) valid, none submitted (%s)\n", len(docs), how)
	return nil
}

func parseStatuses(s string) (proto.StatusList, error) {
	var out proto.StatusList
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(strings.ToLower(p))
		if p == "" {
			continue
		}
		st := proto.JobStatus(p)
		if !st.Valid() {
			return nil, usagef("--status %q is not one of pending, running, completed, failed, cancelled", p)
		}
		out = append(out, st)
	}
	return out, nil
}

func (a *app) jobsList(args []string, status string, limit int, vm, agent string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	if limit < 1 || limit > proto.MaxQueryLimit {
		return usagef("--limit must be between 1 and %d", proto.MaxQueryLimit)
	}
	st, err := parseStatuses(status)
	if err != nil {
		return err
	}
	q := proto.QueryRequest{Status: st, Limit: limit, VMPath: vm, Agent: agent}
	if len(st) == 0 && vm == "" && agent == "" {
		q.All = true
	}
	res, err := a.client.QueryJobs(a.ctx, q)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	if len(res.Jobs) == 0 {
		fmt.Fprintln(a.stdout, "No jobs.")
		return nil
	}
	t := a.table("ID", "VM", "STATUS", "STAGE", "PROGRESS", "RATE", "AGENT", "SUBMITTED")
	for _, j := range res.Jobs {
		t.row(j.Definition.ID, truncate(j.Definition.VMPath, 48), j.Status, stageOf(j), percent(j.Progress.PercentComplete),
			humanRate(j.Progress.BytesPerSecond), j.Agent, ago(j.SubmittedAt))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if res.Total > len(res.Jobs) {
		fmt.Fprintf(a.stdout, "%d of %d jobs shown (--limit)\n", len(res.Jobs), res.Total)
	}
	return nil
}

func stageOf(j proto.Job) string {
	if j.Status == proto.StatusPending {
		return "queued"
	}
	return j.Progress.Stage
}

func (a *app) jobsGet(args []string) error {
	if err := needArgs(args, 1, "one job ID"); err != nil {
		return err
	}
	j, err := a.client.Job(a.ctx, args[0])
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(j)
	}
	return printJob(a, j)
}

func printJob(a *app, j proto.Job) error {
	d := j.Definition
	src := fmt.Sprintf("%s %s (user %s", d.Source.Type, d.Source.VCenterURL, d.Source.Username)
	if d.Source.Datacenter != "" {
		src += ", datacenter " + d.Source.Datacenter
	}
	src += ")"
	dst := d.Destination.Type
	if d.Destination.LibvirtURI != "" {
		dst += " " + d.Destination.LibvirtURI
	}
	status := string(j.Status)
	if j.Attempt > 0 {
		status += fmt.Sprintf(" (attempt %d of %d)", j.Attempt, max(d.Options.MaxAttempts, j.Attempt))
	}
	if j.CancelRequested && !j.Status.Terminal() {
		status += ", cancel requested"
	}
	p := j.Progress
	progress := ""
	if j.Status != proto.StatusPending {
		progress = fmt.Sprintf("%s %s", stageOf(j), percent(p.PercentComplete))
		if p.TotalBytes > 0 {
			progress += fmt.Sprintf("  %s / %s", humanBytes(p.CurrentBytes), humanBytes(p.TotalBytes))
		}
		if r := humanRate(p.BytesPerSecond); r != "" {
			progress += "  " + r
		}
		if p.ETASeconds > 0 && !j.Status.Terminal() {
			progress += "  ETA " + humanDuration(time.Duration(p.ETASeconds*float64(time.Second)))
		}
		if p.Message != "" {
			progress += "  (" + p.Message + ")"
		}
	}
	var errText, result string
	if j.Error != nil {
		errText = *j.Error
	}
	if r := j.Result; r != nil {
		result = strings.TrimSpace(fmt.Sprintf("domain %s %s", r.DomainName, r.DomainUUID))
		if len(r.Disks) > 0 {
			result += "; disks " + strings.Join(r.Disks, ", ")
		}
		if v := r.Virtualization; v != nil {
			result += fmt.Sprintf("; runs under %s (cpu %s)", v.Type, v.CPU)
		}
		if c := r.Conversion; c != nil && c.Converted {
			result += fmt.Sprintf("; converted by %s in %.0fs", c.Tool, c.Seconds)
		} else if c != nil {
			result += "; not converted: " + c.Reason
		}
		if dv := r.Devices; dv != nil {
			result += fmt.Sprintf("; %s disks, %s NIC", dv.DiskBus, dv.NICModel)
		}
		if b := r.Boot; b != nil {
			result += fmt.Sprintf("; booted in %.0fs: %q", b.Seconds, b.Evidence)
		}
	}
	opts := describeOptions(d.Options)
	return fields(a.stdout,
		"ID", d.ID,
		"Name", d.Name,
		"VM", d.VMPath,
		"Source", src,
		"Destination", dst,
		"Options", opts,
		"Schedule", d.ScheduleID,
		"Status", status,
		"Pending because", j.PendingReason,
		"Agent", j.Agent,
		"Progress", progress,
		"Submitted", stamp(&j.SubmittedAt),
		"Started", stamp(j.StartedAt),
		"Finished", stamp(j.CompletedAt),
		"Error", errText,
		"Warnings", strings.Join(j.Warnings, "; "),
		"Warm", describeWarm(d.Options, j.Warm),
		"Concerns", describeConcerns(j.Concerns),
		"Source host", describeSourceHost(d.SourceHost),
		"Result", result,
	)
}

// describeConcerns lists what pre-flight validation found: "warning device.usb_passthrough; info …".
func describeConcerns(cs []proto.Concern) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		parts = append(parts, string(c.Category)+" "+c.ID)
	}
	return strings.Join(parts, "; ")
}

func describeSourceHost(h *proto.SourceHost) string {
	if h == nil {
		return ""
	}
	name := h.Name
	if name == "" {
		name = h.Moref
	}
	return fmt.Sprintf("%s (%d disks)", name, h.Disks)
}

func describeOptions(o proto.Options) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("method", o.ConversionMethod)
	add("format", o.OutputFormat)
	add("disk_bus", o.DiskBus)
	add("target_agent", o.TargetAgent)
	for k, v := range map[string]bool{"shutdown": o.Shutdown, "power_off": o.PowerOff, "remove_cdrom": o.RemoveCDROM,
		"start_after": o.StartAfter, "verify_boot": o.VerifyBoot} {
		if v {
			parts = append(parts, k)
		}
	}
	if o.GuestConversion != nil {
		parts = append(parts, "guest_conversion="+strconv.FormatBool(*o.GuestConversion))
	}
	if o.BootTimeoutSeconds > 0 {
		parts = append(parts, "boot_timeout="+strconv.Itoa(o.BootTimeoutSeconds)+"s")
	}
	for k, v := range o.NetworkMapping {
		parts = append(parts, fmt.Sprintf("net %q→%s", k, v))
	}
	// Map order is random; keep the output stable for people diffing it.
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func (a *app) jobsCancel(args []string, status string) error {
	if len(args) == 0 && status == "" {
		return usagef("expected one or more job IDs, or --status pending|running")
	}
	req := proto.CancelRequest{JobIDs: args}
	if status != "" {
		st := proto.JobStatus(strings.ToLower(status))
		if st != proto.StatusPending && st != proto.StatusRunning {
			return usagef("--status must be pending or running")
		}
		req.Status = st
	}
	res, err := a.client.CancelJobs(a.ctx, req)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.stdout, "%d job(s) cancelled\n", res.Count)
	if len(res.Skipped) > 0 {
		fmt.Fprintf(a.stdout, "already finished: %s\n", strings.Join(res.Skipped, " "))
	}
	if len(res.NotFound) > 0 {
		fmt.Fprintf(a.stdout, "not found: %s\n", strings.Join(res.NotFound, " "))
	}
	return nil
}

func itoa(n int) string { return strconv.Itoa(n) }
