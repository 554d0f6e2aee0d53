package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/hypersdk/hypersdk/proto"
)

func init() {
	var file string
	fileFlag := func(_ *app, fs *flag.FlagSet) {
		fs.StringVar(&file, "f", "", "schedule file, JSON or YAML (- reads stdin)")
	}
	register("schedules", "list", &command{help: "list schedules", run: (*app).schedulesList})
	register("schedules", "get", &command{usage: "ID", help: "show one schedule", run: (*app).schedulesGet})
	register("schedules", "create", &command{
		usage: "-f FILE|-",
		help:  "create a schedule: id, name, schedule (cron: minute hour day month weekday), enabled, job_template",
		flags: fileFlag,
		run:   func(a *app, args []string) error { return a.schedulesCreate(args, file) },
	})
	register("schedules", "update", &command{
		usage: "ID -f FILE|-",
		help:  "change the fields the file sets (name, description, schedule, enabled, job_template)",
		flags: fileFlag,
		run:   func(a *app, args []string) error { return a.schedulesUpdate(args, file) },
	})
	register("schedules", "delete", &command{usage: "ID", help: "delete a schedule", run: (*app).schedulesDelete})
	register("schedules", "enable", &command{usage: "ID", help: "enable a schedule", run: func(a *app, args []string) error {
		return a.schedulesEnable(args, true)
	}})
	register("schedules", "disable", &command{usage: "ID", help: "disable a schedule", run: func(a *app, args []string) error {
		return a.schedulesEnable(args, false)
	}})
	register("schedules", "trigger", &command{usage: "ID", help: "run a schedule now", run: (*app).schedulesTrigger})
	register("schedules", "stats", &command{help: "schedule and run counts", run: (*app).schedulesStats})
}

func (a *app) schedulesList(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	res, err := a.client.Schedules(a.ctx)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	if len(res.Schedules) == 0 {
		fmt.Fprintln(a.stdout, "No schedules.")
		return nil
	}
	t := a.table("ID", "NAME", "SCHEDULE", "ENABLED", "VM", "NEXT RUN", "LAST RUN", "RUNS", "OK", "FAILED")
	for _, s := range res.Schedules {
		next := ""
		if s.NextRun != nil && s.Enabled {
			next = ago(*s.NextRun)
		}
		last := ""
		if s.LastRun != nil {
			last = ago(*s.LastRun)
		}
		t.row(s.ID, truncate(s.Name, 32), s.Schedule, yesNo(s.Enabled), truncate(s.JobTemplate.VMPath, 40), next, last,
			s.RunCount, s.SuccessfulRuns, s.FailedRuns)
	}
	return t.flush()
}

func (a *app) schedulesGet(args []string) error {
	if err := needArgs(args, 1, "one schedule ID"); err != nil {
		return err
	}
	s, err := a.client.Schedule(a.ctx, args[0])
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(s)
	}
	return printSchedule(a, s)
}

func printSchedule(a *app, s proto.Schedule) error {
	t := s.JobTemplate
	tmpl := fmt.Sprintf("%s from %s %s (user %s) to %s", t.VMPath, t.Source.Type, t.Source.VCenterURL, t.Source.Username, t.Destination.Type)
	if t.Destination.LibvirtURI != "" {
		tmpl += " " + t.Destination.LibvirtURI
	}
	next := ""
	if s.Enabled {
		next = stamp(s.NextRun)
	}
	return fields(a.stdout,
		"ID", s.ID,
		"Name", s.Name,
		"Description", s.Description,
		"Schedule", s.Schedule,
		"Enabled", yesNo(s.Enabled),
		"Job template", tmpl,
		"Options", describeOptions(t.Options),
		"Next run", next,
		"Last run", stamp(s.LastRun),
		"Runs", fmt.Sprintf("%d (%d successful, %d failed)", s.RunCount, s.SuccessfulRuns, s.FailedRuns),
		"Last error", s.LastError,
		"Created", stamp(&s.CreatedAt),
		"Updated", stamp(&s.UpdatedAt),
	)
}

func (a *app) schedulesCreate(args []string, file string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q (the schedule comes from -f FILE)", args[0])
	}
	docs, err := a.readDocuments(file)
	if err != nil {
		return err
	}
	var results []proto.ScheduleResponse
	for i, d := range docs {
		res, err := a.client.CreateSchedule(a.ctx, []byte(d))
		if err != nil {
			if len(docs) > 1 {
				return fmt.Errorf("schedule %d of %d: %w", i+1, len(docs), err)
			}
			return err
		}
		results = append(results, res)
		if !a.jsonOut() && res.Schedule != nil {
			fmt.Fprintf(a.stdout, "schedule %s created (%s", res.Schedule.ID, res.Schedule.Schedule)
			if res.Schedule.NextRun != nil && res.Schedule.Enabled {
				fmt.Fprintf(a.stdout, ", next run %s", stamp(res.Schedule.NextRun))
			}
			fmt.Fprintln(a.stdout, ")")
		}
	}
	if a.jsonOut() {
		if len(results) == 1 {
			return a.printJSON(results[0])
		}
		return a.printJSON(results)
	}
	return nil
}

func (a *app) schedulesUpdate(args []string, file string) error {
	if err := needArgs(args, 1, "one schedule ID"); err != nil {
		return err
	}
	doc, err := a.readOne(file)
	if err != nil {
		return err
	}
	res, err := a.client.UpdateSchedule(a.ctx, args[0], []byte(doc))
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.stdout, "schedule %s updated\n", args[0])
	return nil
}

func (a *app) schedulesDelete(args []string) error {
	if err := needArgs(args, 1, "one schedule ID"); err != nil {
		return err
	}
	res, err := a.client.DeleteSchedule(a.ctx, args[0])
	if err != nil {
		return err
	}
	return a.message(res, "schedule %s deleted", args[0])
}

func (a *app) schedulesEnable(args []string, on bool) error {
	if err := needArgs(args, 1, "one schedule ID"); err != nil {
		return err
	}
	res, err := a.client.EnableSchedule(a.ctx, args[0], on)
	if err != nil {
		return err
	}
	word := "disabled"
	if on {
		word = "enabled"
	}
	return a.message(res, "schedule %s %s", args[0], word)
}

func (a *app) schedulesTrigger(args []string) error {
	if err := needArgs(args, 1, "one schedule ID"); err != nil {
		return err
	}
	res, err := a.client.TriggerSchedule(a.ctx, args[0])
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.stdout, "schedule %s triggered (run %d): %d job(s)", res.ScheduleID, res.Run, len(res.JobIDs))
	if len(res.JobIDs) > 0 {
		fmt.Fprintf(a.stdout, " %s", strings.Join(res.JobIDs, " "))
	}
	fmt.Fprintln(a.stdout)
	return nil
}

func (a *app) schedulesStats(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	s, err := a.client.ScheduleStats(a.ctx)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(s)
	}
	return fields(a.stdout,
		"Schedules", fmt.Sprintf("%d (%d enabled, %d disabled)", s.TotalSchedules, s.EnabledSchedules, s.DisabledSchedules),
		"Runs", fmt.Sprintf("%d (%d successful, %d failed, %d running)", s.TotalRuns, s.SuccessfulRuns, s.FailedRuns, s.RunningRuns),
	)
}

// message prints a {"message"} answer: the answer in JSON, a sentence otherwise.
func (a *app) message(res proto.MessageResponse, format string, args ...any) error {
	if a.jsonOut() {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.stdout, format+"\n", args...)
	return nil
}
