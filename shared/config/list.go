// Package config holds what the daemons' configuration loading shares.
package config

import "strings"

// SplitList splits a comma-separated flag value ("a, b,,c") into its non-empty, trimmed
// items.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
