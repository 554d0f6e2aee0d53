package config

import (
	"fmt"
	"os"
	"path/filepath"
)

// Gossip is the gossip section of both daemons' files: their seat in the one memberlist
// pool the controllers and agents share.
type Gossip struct {
	Addr      string   `yaml:"addr"`
	Advertise string   `yaml:"advertise"`
	Join      []string `yaml:"join"`
	Key       string   `yaml:"key"`
	Label     string   `yaml:"label"`
}

// Log selects the log level (debug|info|warn|error) and format (text|json).
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Main runs a daemon's run function with its arguments and exits with status 1 and
// "<command>: <error>" on stderr when it fails.
func Main(run func(args []string) error) {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", filepath.Base(os.Args[0]), err)
		os.Exit(1)
	}
}
