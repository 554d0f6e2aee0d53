package main

import (
	"flag"
	"fmt"

	"github.com/hypersdk/hypersdk/proto"
)

func init() {
	var file string
	register("jobs", "validate", &command{
		usage: "FILE | -f FILE|-",
		help:  "run the pre-flight checks on jobs without submitting them; exit 1 if any has a critical concern",
		flags: func(_ *app, fs *flag.FlagSet) {
			fs.StringVar(&file, "f", "", "job definition file, JSON or YAML (- reads stdin); one job, a list, or several YAML documents")
		},
		run: func(a *app, args []string) error {
			switch {
			case len(args) == 1 && file == "":
				file = args[0]
			case len(args) > 0:
				return usagef("give the jobs as FILE or -f FILE, once")
			}
			return a.jobsValidate(file)
		},
	})
}

func (a *app) jobsValidate(file string) error {
	docs, err := a.readDocuments(file)
	if err != nil {
		return err
	}
	res, err := a.client.ValidateJobs(a.ctx, docs)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		if err := a.printJSON(res); err != nil {
			return err
		}
	} else if err := a.printConcerns(res); err != nil {
		return err
	}
	bad := 0
	for _, r := range res {
		if r.Critical() {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d jobs have critical concerns: submit would refuse them", bad, len(res))
	}
	return nil
}

// printConcerns shows one row per concern (and one "ok" row for a VM without any), the
// fix under its message.
func (a *app) printConcerns(res []proto.ValidationResult) error {
	t := a.table("VM", "AGENT", "CATEGORY", "RULE", "MESSAGE")
	var crit, warn int
	for _, r := range res {
		if len(r.Concerns) == 0 {
			t.row(r.VMPath, r.Agent, "ok", "", "no concerns")
			continue
		}
		for _, c := range r.Concerns {
			t.row(r.VMPath, r.Agent, c.Category, c.ID, c.Message)
			if c.Fix != "" {
				t.row(" ", " ", " ", " ", "fix: "+c.Fix)
			}
			switch c.Category {
			case proto.ConcernCritical:
				crit++
			case proto.ConcernWarning:
				warn++
			}
		}
	}
	if err := t.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(a.stdout, "%d jobs: %d critical, %d warning concerns\n", len(res), crit, warn)
	return err
}
