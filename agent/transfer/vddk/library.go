package vddk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// errLoad: the library exists but does not load (missing siblings, wrong architecture,
// symbols of a VDDK older than 6.5).
var errLoad = errors.New("VDDK does not load")

// ErrNotInstalled: there is no libvixDiskLib under the directory.
var ErrNotInstalled = errors.New("VDDK not installed")

// libraryNames are the sonames tried under DIR/lib64, newest first: the layout of VMware's
// tarball and of nbdkit's libdir=.
var libraryNames = []struct {
	name    string
	version int
}{{"libvixDiskLib.so.8", 8}, {"libvixDiskLib.so.7", 7}, {"libvixDiskLib.so.6", 6}}

// FindLibrary returns the newest libvixDiskLib.so.N under libdir/lib64 and N, without
// loading it; ErrNotInstalled when there is none.
func FindLibrary(libdir string) (string, int, error) { return findLibrary(libdir) }

func findLibrary(libdir string) (string, int, error) {
	if libdir == "" {
		return "", 0, fmt.Errorf("%w: no VDDK directory configured", ErrNotInstalled)
	}
	for _, l := range libraryNames {
		p := filepath.Join(libdir, "lib64", l.name)
		if _, err := os.Stat(p); err == nil {
			return p, l.version, nil
		}
	}
	return "", 0, fmt.Errorf("%w: %s has no lib64/libvixDiskLib.so.8, .so.7 or .so.6", ErrNotInstalled, libdir)
}

// LibraryDir is the directory VDDK's libraries live in: what LD_LIBRARY_PATH must name.
func LibraryDir(libdir string) string { return filepath.Join(libdir, "lib64") }

// credentialRE matches "password=…", "cookie: …" and the like in VDDK's messages.
var credentialRE = regexp.MustCompile(`(?i)\b(password|passwd|pwd|cookie|ticket|session[_ ]?key|key)(\s*[=:]\s*)("[^"]*"|'[^']*'|\S+)`)

// Scrub removes secrets from a message of VDDK: the given values wherever they appear,
// and the value of anything labelled as a credential.
func Scrub(s string, secrets []string) string {
	for _, v := range secrets {
		if len(v) >= 3 {
			s = strings.ReplaceAll(s, v, "********")
		}
	}
	return credentialRE.ReplaceAllString(s, "${1}${2}********")
}
