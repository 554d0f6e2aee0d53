package config

import (
	"errors"
	"flag"
	"fmt"
	"strconv"

	"github.com/hypersdk/hypersdk/shared/version"
)

// Overrides are the command-line flags that override a daemon's config file: each flag
// given on the command line sets its field, after the file is loaded (flags win), in the
// order the flags were given. A flag not given leaves the file's value (or the default);
// an empty string or list means "not given", as it always did.
//
//	cfg := DefaultConfig()
//	o := config.NewOverrides(flag.NewFlagSet("hypersdk-controller", flag.ContinueOnError))
//	o.String("node-id", &cfg.Cluster.NodeID, "raft node id")
//	if done, err := o.Parse(args, &cfg, nil); done || err != nil { ... }
type Overrides struct {
	fs     *flag.FlagSet
	set    []func()
	config *string
	ver    *bool
}

// NewOverrides defines override flags on fs, and the two every daemon has: --config (the
// YAML file) and --version.
func NewOverrides(fs *flag.FlagSet) *Overrides {
	return &Overrides{fs: fs, config: fs.String("config", "", "YAML config file"),
		ver: fs.Bool("version", false, "print the version and exit")}
}

// Parse parses the command line, loads the --config file over cfg (a pointer to the
// defaults), runs between (nil: nothing; e.g. the environment, which the flags beat) and
// applies the flags given. done reports that --help or --version was answered: the daemon
// exits without starting.
func (o *Overrides) Parse(args []string, cfg any, between func()) (done bool, err error) {
	if err := o.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return true, err
	}
	if o.fs.NArg() > 0 {
		return true, fmt.Errorf("unexpected argument %q", o.fs.Arg(0))
	}
	if *o.ver {
		fmt.Println(version.String(o.fs.Name()))
		return true, nil
	}
	if err := Load(*o.config, cfg); err != nil {
		return true, err
	}
	if between != nil {
		between()
	}
	o.Apply()
	return false, nil
}

func (o *Overrides) later(f func()) { o.set = append(o.set, f) }

// String overrides *dst with a non-empty value.
func (o *Overrides) String(name string, dst *string, usage string) {
	o.fs.Func(name, usage, func(v string) error {
		if v != "" {
			o.later(func() { *dst = v })
		}
		return nil
	})
}

// List overrides *dst with a non-empty comma-separated list (SplitList).
func (o *Overrides) List(name string, dst *[]string, usage string) {
	o.fs.Func(name, usage, func(v string) error {
		if l := SplitList(v); len(l) > 0 {
			o.later(func() { *dst = l })
		}
		return nil
	})
}

// Int overrides *dst with a non-zero value.
func (o *Overrides) Int(name string, dst *int, usage string) {
	o.fs.Func(name, usage, func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		if n != 0 {
			o.later(func() { *dst = n })
		}
		return nil
	})
}

// Float calls set with the flag's value when it is given (set may touch several fields).
func (o *Overrides) Float(name string, set func(float64), usage string) {
	o.fs.Func(name, usage, func(v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return err
		}
		o.later(func() { set(f) })
		return nil
	})
}

// True sets *dst to true when the boolean flag is given (and true): it turns a file's
// setting on, never off.
func (o *Overrides) True(name string, dst *bool, usage string) {
	o.fs.BoolFunc(name, usage, func(v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return err
		}
		if b {
			o.later(func() { *dst = true })
		}
		return nil
	})
}

// Apply applies the flags given, in order. Call it once the file is loaded.
func (o *Overrides) Apply() {
	for _, f := range o.set {
		f()
	}
}
