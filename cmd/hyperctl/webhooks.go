package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/hypersdk/hypersdk/proto"
)

// headerFlags collects repeated --header Name=Value flags.
type headerFlags map[string]string

func (h headerFlags) String() string { return "" }
func (h headerFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(k) == "" {
		return fmt.Errorf("header %q is not Name=Value", s)
	}
	h[strings.TrimSpace(k)] = v
	return nil
}

func init() {
	var (
		file, url, events, secretFile, event string
		headers                              headerFlags
		timeout                              int
	)
	register("webhooks", "list", &command{help: "list webhooks (header values and secrets are masked)", run: (*app).webhooksList})
	register("webhooks", "add", &command{
		usage: "-f FILE|- | --url URL --events E[,E] [--header Name=Value]... [--secret-file FILE]",
		help:  "add a webhook; events: " + strings.Join(proto.WebhookEvents, ", "),
		flags: func(_ *app, fs *flag.FlagSet) {
			headers = headerFlags{}
			fs.StringVar(&file, "f", "", "webhook file, JSON or YAML (- reads stdin)")
			fs.StringVar(&url, "url", "", "receiver URL (instead of -f)")
			fs.StringVar(&events, "events", "", "comma-separated events (with --url)")
			fs.Var(headers, "header", "extra header Name=Value (repeatable, with --url)")
			fs.StringVar(&secretFile, "secret-file", "", "file holding the HMAC signing secret (with --url)")
			fs.IntVar(&timeout, "timeout-seconds", 0, "per-attempt timeout in seconds (with --url)")
		},
		run: func(a *app, args []string) error {
			return a.webhooksAdd(args, file, url, events, headers, secretFile, timeout)
		},
	})
	register("webhooks", "delete", &command{usage: "INDEX", help: "delete the webhook at INDEX (as webhooks list shows)", run: (*app).webhooksDelete})
	register("webhooks", "test", &command{
		usage: "URL [--event E] [--header Name=Value]...",
		help:  "send one test delivery to URL from the controller",
		flags: func(_ *app, fs *flag.FlagSet) {
			headers = headerFlags{}
			fs.StringVar(&event, "event", "", "event name to send (default test)")
			fs.Var(headers, "header", "extra header Name=Value (repeatable)")
			fs.IntVar(&timeout, "timeout-seconds", 0, "delivery timeout in seconds")
		},
		run: func(a *app, args []string) error { return a.webhooksTest(args, event, headers, timeout) },
	})
}

func (a *app) webhooksList(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	res, err := a.client.Webhooks(a.ctx)
	if err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printJSON(res)
	}
	if len(res.Webhooks) == 0 {
		fmt.Fprintln(a.stdout, "No webhooks.")
		return nil
	}
	t := a.table("INDEX", "URL", "EVENTS", "ENABLED", "TIMEOUT", "RETRIES", "HEADERS", "SIGNED")
	for i, w := range res.Webhooks {
		var names []string
		for k := range w.Headers {
			names = append(names, k)
		}
		sort.Strings(names)
		t.row(i, w.URL, strings.Join(w.Events, ","), yesNo(w.Enabled), fmt.Sprintf("%ds", w.Timeout), w.RetryCount,
			strings.Join(names, ","), yesNo(w.Secret != ""))
	}
	return t.flush()
}

func (a *app) webhooksAdd(args []string, file, url, events string, headers headerFlags, secretFile string, timeout int) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	var docs []json.RawMessage
	switch {
	case file != "" && url != "":
		return usagef("give either -f FILE or --url, not both")
	case file != "":
		var err error
		if docs, err = a.readDocuments(file); err != nil {
			return err
		}
	case url != "":
		req := proto.WebhookRequest{URL: url, Headers: headers}
		for _, e := range strings.Split(events, ",") {
			if e = strings.TrimSpace(e); e != "" {
				req.Events = append(req.Events, e)
			}
		}
		if len(req.Events) == 0 {
			return usagef("--events is required with --url: %s", strings.Join(proto.WebhookEvents, ", "))
		}
		if timeout > 0 {
			req.Timeout = &timeout
		}
		if secretFile != "" {
			b, err := os.ReadFile(secretFile)
			if err != nil {
				return usagef("secret file: %v", err)
			}
			req.Secret = strings.TrimRight(string(b), "\r\n")
		}
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		docs = []json.RawMessage{b}
	default:
		return usagef("-f FILE or --url URL --events E is required")
	}
	var results []proto.WebhookAddResponse
	for i, d := range docs {
		res, err := a.client.AddWebhook(a.ctx, []byte(d))
		if err != nil {
			if len(docs) > 1 {
				return fmt.Errorf("webhook %d of %d: %w", i+1, len(docs), err)
			}
			return err
		}
		results = append(results, res)
		if !a.jsonOut() {
			fmt.Fprintf(a.stdout, "webhook %d added: %s (%s)\n", res.Index, res.Webhook.URL, strings.Join(res.Webhook.Events, ","))
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

func (a *app) webhooksDelete(args []string) error {
	if err := needArgs(args, 1, "one webhook INDEX"); err != nil {
		return err
	}
	i, err := strconv.Atoi(args[0])
	if err != nil || i < 0 {
		return usagef("INDEX %q must be a number >= 0 (see hyperctl webhooks list)", args[0])
	}
	res, err := a.client.DeleteWebhook(a.ctx, i)
	if err != nil {
		return err
	}
	return a.message(res, "webhook %d deleted", i)
}

func (a *app) webhooksTest(args []string, event string, headers headerFlags, timeout int) error {
	if err := needArgs(args, 1, "the receiver URL"); err != nil {
		return err
	}
	req := proto.WebhookTestRequest{URL: args[0], Event: event, Headers: headers}
	if len(headers) == 0 {
		req.Headers = nil
	}
	if timeout > 0 {
		req.Timeout = &timeout
	}
	res, err := a.client.TestWebhook(a.ctx, req)
	if err != nil {
		return err
	}
	return a.message(res, "test delivery to %s: %s", args[0], res.Message)
}
