// Command mkpkg builds the .deb and .rpm packages of hypersdk-agent,
// hypersdk-controller and hypersdk-cli (make packages).
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/hypersdk/hypersdk/packaging"
)

func main() {
	var opts packaging.Options
	var pkgs, formats string
	flag.StringVar(&opts.RepoRoot, "root", ".", "repository root (holds packaging/ and README.md)")
	flag.StringVar(&opts.BinDir, "bin", "bin", "directory of the built binaries")
	flag.StringVar(&opts.OutDir, "out", "dist", "output directory")
	flag.StringVar(&opts.Version, "version", "", "version (git describe); made valid for dpkg and rpm")
	flag.StringVar(&pkgs, "packages", strings.Join(packaging.Packages, ","), "packages to build")
	flag.StringVar(&formats, "formats", strings.Join(packaging.Formats, ","), "formats: deb,rpm")
	flag.Parse()
	opts.Packages = strings.Split(pkgs, ",")
	opts.Formats = strings.Split(formats, ",")
	paths, err := packaging.Build(opts)
	for _, p := range paths {
		fmt.Println(p)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkpkg:", err)
		os.Exit(1)
	}
}
