// Package packaging builds the .deb and .rpm packages of the agent, the controller and the
// command line client (hyperctl) with nfpm as a library, from the nfpm configurations in packaging/nfpm (usable with the
// nfpm command too), the systemd units in packaging/systemd, the default configurations in
// packaging/config and the maintainer scripts in packaging/scripts.
package packaging

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

// Packages and formats built by default.
var (
	Packages = []string{"hypersdk-agent", "hypersdk-controller", "hypersdk-cli"}
	Formats  = []string{"deb", "rpm"}
)

// Options says what to build from where.
type Options struct {
	// RepoRoot holds packaging/ and README.md; relative paths of the configurations are
	// relative to it.
	RepoRoot string
	// BinDir holds the built binaries (make build: bin/).
	BinDir string
	// OutDir receives the packages.
	OutDir string
	// Version is the build's version (git describe); PackageVersion makes it valid.
	Version  string
	Packages []string
	Formats  []string
	// FastCompression trades size for time (tests): no compression in the .deb, the
	// fastest zstd in the .rpm. The contents are the same.
	FastCompression bool
}

// ErrMissingBinary: a binary a package needs was not built.
var ErrMissingBinary = errors.New("binary not built")

// gitDescribe matches a tag-based version: v1.2, 1.2.3, v1.2.3-4-gabc... A bare commit hash
// (which may start with digits: "88c55fe") has no dot and does not match.
var gitDescribe = regexp.MustCompile(`^v?([0-9]+(?:\.[0-9]+)+)((?:[-+~].*)?)$`)

// PackageVersion turns a git-describe version into one dpkg and rpm both accept and order
// correctly: "v1.2.0" → "1.2.0", "v1.2.0-3-gabc" → "1.2.0+git3.gabc", an untagged
// "abc123-dirty" → "0.0.0~git.abc123.dirty" (sorts before any release).
func PackageVersion(v string) string {
	v = strings.TrimSpace(v)
	clean := func(s string) string {
		s = regexp.MustCompile(`[^A-Za-z0-9.+~]+`).ReplaceAllString(s, ".")
		return strings.Trim(s, ".")
	}
	if m := gitDescribe.FindStringSubmatch(v); m != nil {
		if m[2] == "" {
			return m[1]
		}
		rest := clean(m[2])
		if strings.HasPrefix(m[2], "-dev") || strings.HasPrefix(m[2], "-rc") || strings.HasPrefix(m[2], "-beta") || strings.HasPrefix(m[2], "-alpha") {
			return m[1] + "~" + rest
		}
		return m[1] + "+git" + rest
	}
	if c := clean(v); c != "" {
		return "0.0.0~git." + c
	}
	return "0.0.0"
}

// Build writes every package in every format to OutDir and returns their paths.
func Build(opts Options) ([]string, error) {
	if len(opts.Packages) == 0 {
		opts.Packages = Packages
	}
	if len(opts.Formats) == 0 {
		opts.Formats = Formats
	}
	root, err := filepath.Abs(opts.RepoRoot)
	if err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(opts.BinDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, err
	}
	env := map[string]string{"BIN_DIR": bin, "PKG_VERSION": PackageVersion(opts.Version)}
	// nfpm reads each file twice (size, then content): a binary or README rewritten in
	// between (a concurrent make build) breaks the archive. Package a snapshot instead.
	stage, err := os.MkdirTemp("", "hypersdk-pkg-stage-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	var out []string
	for _, name := range opts.Packages {
		cfg, err := nfpm.ParseFileWithEnvMapping(filepath.Join(root, "packaging", "nfpm", name+".yaml"), func(k string) string { return env[k] })
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
		// nfpm expands the environment in depends, replaces and the like, but not in the
		// deb-only breaks (hypersdk-cli breaks older controllers that still ship hyperctl).
		for i, b := range cfg.Deb.Breaks {
			cfg.Deb.Breaks[i] = os.Expand(b, func(k string) string { return env[k] })
		}
		for _, format := range opts.Formats {
			p, err := build(cfg, format, root, stage, opts)
			if err != nil {
				return out, fmt.Errorf("%s.%s: %w", name, format, err)
			}
			out = append(out, p)
		}
	}
	return out, nil
}

func build(cfg nfpm.Config, format, root, stage string, opts Options) (string, error) {
	info, err := cfg.Get(format)
	if err != nil {
		return "", err
	}
	info = nfpm.WithDefaults(info)
	if opts.FastCompression {
		info.Deb.Compression = "none"
		info.RPM.Compression = "zstd:fastest"
	}
	// The configurations name files relative to the repository root, so the packages
	// build the same from any working directory.
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(root, p)
	}
	for _, c := range info.Contents {
		if c.Type == "dir" || c.Type == "symlink" || c.Type == "ghost" {
			continue
		}
		src := abs(c.Source)
		if _, err := os.Stat(src); err != nil {
			if strings.HasPrefix(c.Destination, "/usr/bin/") {
				return "", fmt.Errorf("%w: %s (run make build)", ErrMissingBinary, src)
			}
			return "", err
		}
		staged := filepath.Join(stage, format, filepath.FromSlash(c.Destination))
		if err := copyFile(src, staged); err != nil {
			return "", err
		}
		c.Source = staged
	}
	s := &info.Scripts
	s.PreInstall, s.PostInstall, s.PreRemove, s.PostRemove = abs(s.PreInstall), abs(s.PostInstall), abs(s.PreRemove), abs(s.PostRemove)
	if err := nfpm.Validate(info); err != nil {
		return "", err
	}
	pkgr, err := nfpm.Get(format)
	if err != nil {
		return "", err
	}
	target := filepath.Join(opts.OutDir, pkgr.ConventionalFileName(info))
	f, err := os.Create(target)
	if err != nil {
		return "", err
	}
	info.Target = target
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		os.Remove(target)
		return "", err
	}
	return target, f.Close()
}

// copyFile copies src to dst (creating its directory), keeping the mode bits.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
