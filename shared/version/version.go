// Package version carries the build's version, set with -ldflags by the Makefile.
package version

import "fmt"

// Set at link time: -X github.com/hypersdk/hypersdk/shared/version.Version=...
var (
	Version = "0.1.0-dev"
	Commit  = "unknown"
)

// String is the one-line version every binary prints for --version.
func String(program string) string {
	return fmt.Sprintf("%s %s (commit %s)", program, Version, Commit)
}
