package test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/test/harness"
)

// TestCheckConfig: `--check-config` of both daemons checks and exits without starting
// anything: 0 with a valid configuration; the agent's names a host fault and what to do.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	noDaemon := "qemu+unix:///system?socket=" + filepath.Join(dir, "none.sock")
	for _, tc := range []struct {
		bin  string
		args []string
		code int
		has  string
	}{
		{"hypersdk-controller", []string{"--check-config", "--data-dir", filepath.Join(dir, "c")}, 0, "configuration valid"},
		{"hypersdk-controller", []string{"--check-config", "--log-level", "loud"}, 1, "loud"},
		{"hypersdk-agent", []string{"--check-config", "--storage-dir", dir, "--libvirt-uri", "test:///default"}, 0, "configuration valid"},
		{"hypersdk-agent", []string{"--check-config", "--storage-dir", dir, "--libvirt-uri", noDaemon}, 1, "systemctl start libvirtd"},
		{"hypersdk-agent", []string{"--check-config", "--max-jobs", "99"}, 1, "max_jobs"},
	} {
		out, err := exec.Command(harness.Bin(t, tc.bin), tc.args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.Contains(string(out), tc.has) {
			t.Errorf("%s %v: exit %d, want %d with %q:\n%s", tc.bin, tc.args, code, tc.code, tc.has, out)
		}
	}
}
