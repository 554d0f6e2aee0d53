package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hypersdk/hypersdk/shared/client"
)

// Exit codes scripts can rely on.
const (
	exitOK          = 0 // done
	exitRejected    = 1 // the controller said no (4xx: not found, conflict, unauthorized)
	exitUsage       = 2 // bad command line or input file (jobs submit: also the controller's 400)
	exitUnavailable = 3 // no controller reachable, or it failed (5xx, no raft leader)
	exitJobFailed   = 4 // jobs watch / submit --watch: the job ended failed or cancelled
)

const rootUsage = `hyperctl controls a HyperSDK fleet through the REST API of any controller.

Usage:
  hyperctl [global flags] <command> <subcommand> [flags] [args]

Commands:
  jobs        submit -f FILE|- | list | get ID | cancel ID... | watch ID
  schedules   list | get ID | create -f FILE | update ID -f FILE | delete ID |
              enable ID | disable ID | trigger ID | stats
  webhooks    list | add -f FILE | delete INDEX | test URL
  vms         list | info PATH | shutdown PATH | poweroff PATH | remove-cdrom PATH
  cluster     status | remove ID
  agents      list | get NAME
  version     print the client and server versions

Global flags (also accepted after the command):
  --server URL[,URL...]  controllers to use, tried in order when one is unreachable
                         (env HYPERSDK_SERVER, default http://127.0.0.1:8080)
  --token TOKEN          API bearer token (env HYPERSDK_TOKEN; --token-file FILE reads it)
  -o table|json          output: tables for people, JSON for scripts (default table)
  --ca-file FILE         PEM CA bundle for https controllers
  --insecure             do not verify the controller's TLS certificate
  --timeout DURATION     per-request timeout (default 30s)

Exit codes:
  0  success
  1  the controller refused the request (4xx: not found, invalid, conflict, unauthorized)
  2  bad input: flags, arguments or input file (jobs submit: also when the controller
     finds a job invalid, 400); nothing was changed
  3  no controller reachable, or the cluster failed (5xx, no raft leader)
  4  jobs watch / submit --watch: the job ended failed or cancelled

Run 'hyperctl <command> --help' for the flags of a command.
`

// usageError is a mistake on the command line or in an input file (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{msg: fmt.Sprintf(format, a...)} }

// jobEndedError is a watched job that did not complete (exit 4).
type jobEndedError struct{ msg string }

func (e *jobEndedError) Error() string { return e.msg }

// app is one invocation: the streams, the global options and the client.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	ctx            context.Context

	server    string
	token     string
	tokenFile string
	output    string
	caFile    string
	insecure  bool
	timeout   time.Duration

	client *client.Client
	// tty is true when stdout is a terminal (live progress redraws in place).
	tty bool
}

// command is one "noun verb".
type command struct {
	usage string // "ID..." etc., after "hyperctl noun verb"
	help  string
	flags func(a *app, fs *flag.FlagSet)
	run   func(a *app, args []string) error
}

// nouns lists every command group; each file registers its own.
var nouns = map[string]map[string]*command{}

func register(noun, verb string, c *command) {
	if nouns[noun] == nil {
		nouns[noun] = map[string]*command{}
	}
	nouns[noun][verb] = c
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv, ctx: ctx}
	if f, ok := stdout.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			a.tty = true
		}
	}
	err := a.dispatch(args)
	return a.report(err)
}

// globalFlags binds the global options on fs (the root and every subcommand, so they may
// come before or after the command).
func (a *app) globalFlags(fs *flag.FlagSet) {
	fs.StringVar(&a.server, "server", a.server, "controllers, comma-separated (env HYPERSDK_SERVER)")
	fs.StringVar(&a.token, "token", a.token, "API bearer token (env HYPERSDK_TOKEN)")
	fs.StringVar(&a.tokenFile, "token-file", a.tokenFile, "read the API token from a file")
	fs.StringVar(&a.output, "o", a.output, "output format: table|json")
	fs.StringVar(&a.output, "output", a.output, "output format: table|json")
	fs.StringVar(&a.caFile, "ca-file", a.caFile, "PEM CA bundle for https controllers")
	fs.BoolVar(&a.insecure, "insecure", a.insecure, "skip TLS verification of the controller")
	fs.DurationVar(&a.timeout, "timeout", a.timeout, "per-request timeout")
}

func (a *app) dispatch(args []string) error {
	a.server = firstNonEmpty(a.getenv("HYPERSDK_SERVER"), client.DefaultServer)
	a.output = "table"
	a.timeout = 30 * time.Second

	root := flag.NewFlagSet("hyperctl", flag.ContinueOnError)
	root.SetOutput(io.Discard)
	a.globalFlags(root)
	help := root.Bool("help", false, "")
	root.BoolVar(help, "h", false, "")
	if err := root.Parse(args); err != nil {
		return usagef("%v", err)
	}
	rest := root.Args()
	if *help || len(rest) == 0 || rest[0] == "help" {
		if len(rest) > 1 && rest[0] == "help" {
			return a.dispatch([]string{rest[1], "--help"})
		}
		if len(rest) == 0 && !*help {
			fmt.Fprint(a.stderr, rootUsage)
			return usagef("a command is required")
		}
		fmt.Fprint(a.stdout, rootUsage)
		return nil
	}
	noun := rest[0]
	if noun == "version" {
		return a.runCommand("version", "", nouns["version"][""], rest[1:])
	}
	verbs, ok := nouns[noun]
	if !ok {
		return usagef("unknown command %q (run 'hyperctl --help')", noun)
	}
	if len(rest) < 2 {
		a.nounUsage(a.stderr, noun)
		return usagef("%s needs a subcommand", noun)
	}
	if rest[1] == "--help" || rest[1] == "-h" || rest[1] == "help" {
		a.nounUsage(a.stdout, noun)
		return nil
	}
	verb := rest[1]
	cmd, ok := verbs[verb]
	if !ok {
		return usagef("unknown subcommand %q of %s (run 'hyperctl %s --help')", verb, noun, noun)
	}
	return a.runCommand(noun, verb, cmd, rest[2:])
}

func (a *app) nounUsage(w io.Writer, noun string) {
	fmt.Fprintf(w, "Usage of hyperctl %s:\n", noun)
	var verbs []string
	for v := range nouns[noun] {
		verbs = append(verbs, v)
	}
	sort.Strings(verbs)
	for _, v := range verbs {
		c := nouns[noun][v]
		fmt.Fprintf(w, "  hyperctl %s %s %s\n      %s\n", noun, v, c.usage, c.help)
	}
}

func (a *app) runCommand(noun, verb string, cmd *command, args []string) error {
	name := strings.TrimSpace("hyperctl " + noun + " " + verb)
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if cmd.flags != nil {
		cmd.flags(a, fs)
	}
	a.globalFlags(fs)
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(a.stdout, "Usage: %s %s\n  %s\n\nFlags:\n", name, cmd.usage, cmd.help)
		fs.SetOutput(a.stdout)
		fs.PrintDefaults()
		return nil
	}
	if err != nil {
		return usagef("%s: %v", name, err)
	}
	if a.output != "table" && a.output != "json" {
		return usagef("-o must be table or json, not %q", a.output)
	}
	if err := a.connect(); err != nil {
		return err
	}
	return cmd.run(a, pos)
}

// parseInterleaved accepts flags before, between and after positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (a *app) connect() error {
	// The environment is read here, not as the flag's default: --help prints defaults.
	token := firstNonEmpty(a.token, a.getenv("HYPERSDK_TOKEN"))
	if a.tokenFile != "" {
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return usagef("token file: %v", err)
		}
		token = strings.TrimSpace(string(b))
	}
	var servers []string
	for _, s := range strings.Split(a.server, ",") {
		if s = strings.TrimSpace(s); s != "" {
			servers = append(servers, s)
		}
	}
	c, err := client.New(client.Config{Servers: servers, Token: token, Timeout: a.timeout, CAFile: a.caFile, Insecure: a.insecure})
	if err != nil {
		return usagef("%v", err)
	}
	a.client = c
	return nil
}

// report prints err in one line and returns the exit code.
func (a *app) report(err error) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	var api *client.APIError
	var unreach *client.UnreachableError
	var ended *jobEndedError
	code := exitRejected
	switch {
	case errors.As(err, &ue):
		code = exitUsage
	case errors.As(err, &unreach):
		code = exitUnavailable
	case errors.As(err, &api):
		if api.ServerSide() {
			code = exitUnavailable
		}
	case errors.As(err, &ended):
		code = exitJobFailed
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(a.stderr, "hyperctl: interrupted")
		return 130
	case errors.Is(err, context.DeadlineExceeded):
		code = exitUnavailable
	}
	msg := oneLine(err.Error())
	if api != nil && api.StatusCode == 401 {
		msg += " (give a token: --token, --token-file or HYPERSDK_TOKEN)"
	}
	fmt.Fprintln(a.stderr, "hyperctl: "+msg)
	return code
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// needArgs checks the number of positional arguments.
func needArgs(args []string, n int, what string) error {
	if len(args) != n {
		return usagef("expected %s, got %d argument(s)", what, len(args))
	}
	return nil
}
