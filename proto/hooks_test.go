package proto

import (
	"errors"
	"strings"
	"testing"
)

func TestHooksValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    *Hooks
		want string // "" valid
	}{
		{"none", nil, ""},
		{"command", &Hooks{Pre: &Hook{Command: "notify-cmdb", Args: []string{"--wave", "3"}, TimeoutSeconds: 60, Retries: 2}}, ""},
		{"url", &Hooks{Post: &Hook{URL: "https://hooks.example/done?token=x"}}, ""},
		{"both", &Hooks{Pre: &Hook{Command: "a", URL: "https://x/"}}, "exactly one"},
		{"neither", &Hooks{Post: &Hook{}}, "exactly one"},
		{"a path", &Hooks{Pre: &Hook{Command: "/bin/sh"}}, "not a path"},
		{"dot dot", &Hooks{Pre: &Hook{Command: "../x"}}, "not a path"},
		{"hidden", &Hooks{Pre: &Hook{Command: ".x"}}, "not a path"},
		{"ftp", &Hooks{Pre: &Hook{URL: "ftp://x/"}}, "http(s)"},
		{"credentials in url", &Hooks{Pre: &Hook{URL: "https://u:p@x/"}}, "without credentials"},
		{"args with url", &Hooks{Pre: &Hook{URL: "https://x/", Args: []string{"a"}}}, "args go with a command"},
		{"timeout", &Hooks{Pre: &Hook{Command: "a", TimeoutSeconds: 4000}}, "timeout_seconds"},
		{"retries", &Hooks{Pre: &Hook{Command: "a", Retries: -1}}, "retries"},
		{"NUL arg", &Hooks{Pre: &Hook{Command: "a", Args: []string{"x\x00"}}}, "NUL"},
	} {
		err := tc.h.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && (!strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid))) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
