package proto

import (
	"net/url"
	"regexp"
	"strings"
)

// Hooks are commands or HTTP calls the agent runs around a migration (Forklift's pre and
// post hooks): Pre before anything is done to the source VM (a failure fails the job with
// nothing copied), Post once the domain is defined (and booted, with verify_boot): a
// failure marks the job failed and keeps the domain.
type Hooks struct {
	Pre  *Hook `json:"pre,omitempty"`
	Post *Hook `json:"post,omitempty"`
}

// Hook is one command or one HTTP call: exactly one of Command and URL.
type Hook struct {
	// Command names an executable in the agent's hooks_dir: a file name, never a path (the
	// API never makes an agent run an arbitrary program). Args are passed as they are.
	Command string   `json:"command,omitempty"`
	Args    []string `json:"args,omitempty"`
	// URL receives a POST of the job's facts as JSON; a 2xx answer is success.
	URL string `json:"url,omitempty"`
	// TimeoutSeconds bounds one try (default 300); Retries are further tries after a
	// failure (default 0), one second apart, doubling.
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	Retries        int `json:"retries,omitempty"`
}

// HookFacts are what a hook learns about its job: the environment of a command
// (HYPERSDK_<FIELD>, upper case) and the body of an HTTP call. Never the password.
type HookFacts struct {
	Hook       string `json:"hook"` // pre or post
	JobID      string `json:"job_id"`
	Attempt    int    `json:"attempt"`
	Agent      string `json:"agent,omitempty"`
	VMPath     string `json:"vm_path"`
	VCenter    string `json:"vcenter"`
	DomainName string `json:"domain_name,omitempty"`
	LibvirtURI string `json:"libvirt_uri,omitempty"`
	ScheduleID string `json:"schedule_id,omitempty"`
}

var hookCommand = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Validate checks both hooks.
func (h *Hooks) Validate() error {
	if h == nil {
		return nil
	}
	for name, k := range map[string]*Hook{"pre": h.Pre, "post": h.Post} {
		if k == nil {
			continue
		}
		if err := k.validate(); err != nil {
			return invalid("options.hooks.%s: %s", name, strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
		}
	}
	return nil
}

func (k *Hook) validate() error {
	switch {
	case (k.Command == "") == (k.URL == ""):
		return invalid("give exactly one of command and url")
	case k.Command != "" && !hookCommand.MatchString(k.Command):
		return invalid("command %q must be a file name in the agent's hooks_dir (letters, digits, '.', '_', '-'), not a path", k.Command)
	case k.TimeoutSeconds < 0 || k.TimeoutSeconds > 3600:
		return invalid("timeout_seconds must be between 0 and 3600")
	case k.Retries < 0 || k.Retries > 10:
		return invalid("retries must be between 0 and 10")
	case len(k.Args) > 32:
		return invalid("at most 32 args")
	case k.URL != "" && len(k.Args) > 0:
		return invalid("args go with a command, not a url")
	}
	for _, a := range k.Args {
		if len(a) > 1024 || strings.ContainsRune(a, 0) {
			return invalid("an arg is longer than 1024 bytes or holds a NUL")
		}
	}
	if k.URL != "" {
		u, err := url.Parse(k.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return invalid("url %q must be http(s)://host/... without credentials", k.URL)
		}
	}
	return nil
}
