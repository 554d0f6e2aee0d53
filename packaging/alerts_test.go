package packaging_test

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestAlertRules: the shipped alert rules load in Prometheus (`promtool check rules`) and
// each alert fires on the series that should raise it (`promtool test rules`, with the
// metric names the controllers and agents export). promtool is in the prometheus package
// (scripts/host-setup.sh installs it).
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt install prometheus; scripts/host-setup.sh does)")
	}
	dir := filepath.Join(repoRoot(t), "packaging", "prometheus")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
