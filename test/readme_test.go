package test

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// readmeBlock returns the commands of the README's code block that contains marker: the
// lines after it up to the block's end, comment lines dropped, trailing comments cut.
func readmeBlock(t *testing.T, marker string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds []string
	in := false
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		switch {
		case !in && strings.HasPrefix(line, marker):
			in = true
		case in && line == "```":
			return cmds
		case in && line != "" && !strings.HasPrefix(line, "#"):
			if i := strings.Index(line, " #"); i >= 0 {
				line = strings.TrimSpace(line[:i])
			}
			cmds = append(cmds, line)
		}
	}
	t.Fatalf("README has no code block with %q", marker)
	return nil
}

// TestReadmeThreeNodes runs the README's "three nodes on one machine" as written, in a
// network namespace of its own (its ports are fixed): three controllers, an agent joined
// through c1, then its curl lines. c3 names a leader and three members, and sees the
// agent (issue 17: c2 exited with "address already in use" without naming --gossip-addr,
// and agents were invisible from c2 and c3). The only changes to the text: bin/ is the
// built binaries, /tmp the test's temp dir, and the agent gets the test agents' flags.
func TestReadmeThreeNodes(t *testing.T) {
	cmds := readmeBlock(t, "# three nodes on one machine")
	if len(cmds) < 6 {
		t.Fatalf("README block too short: %q", cmds)
	}
	bin, tmp := harness.BinDir(t), t.TempDir()
	n := harness.NewNet(t)
	m := n.Add("readme", 2)
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	for i, line := range cmds {
		line = strings.ReplaceAll(line, "/tmp/", tmp+"/")
		args := strings.Fields(line)
		switch {
		case strings.HasPrefix(args[0], "bin/"):
			name := strings.TrimPrefix(args[0], "bin/")
			if name == "hypersdk-agent" {
				args = append(args, harness.AgentTestArgs()...)
			}
			p := m.Start(t, filepath.Join(bin, name), args[2], tmp, args[1:]...)
			t.Cleanup(func() { p.Signal(syscall.SIGTERM); p.Wait(10 * time.Second) })
		case args[0] == "curl":
			// Each line is what an operator types once the daemons above are up: retried
			// until it answers (a node joining, an agent's gossip spreading).
			var out []byte
			harness.WaitFor(t, 60*time.Second, "README line "+line, func() bool {
				out, err = exec.Command("ip", append([]string{"netns", "exec", m.NS, curl, "-f"}, args[1:]...)...).Output()
				return err == nil && readmeCheck(t, i, line, out)
			})
			t.Logf("%s\n%s", line, out)
		default:
			t.Fatalf("README line %d is no command this test knows: %q", i, line)
		}
	}
}

// readmeCheck says whether a curl line's answer is what the README says it shows.
func readmeCheck(t *testing.T, i int, line string, out []byte) bool {
	switch {
	case strings.HasSuffix(line, "/cluster"):
		var cl proto.ClusterStatus
		if json.Unmarshal(out, &cl) != nil || cl.Leader.ID == "" || len(cl.Nodes) != 3 {
			return false
		}
		for _, n := range cl.Nodes {
			if n.Health == nil || !n.Health.Reachable {
				return false
			}
		}
		return true
	case strings.HasSuffix(line, "/agents"):
		var res proto.AgentsResponse
		return json.Unmarshal(out, &res) == nil && res.Total == 1 && res.Agents[0].Name == "kvm-01" && res.Agents[0].State == proto.AgentAlive
	case strings.Contains(line, "DELETE"):
		return true
	}
	t.Fatalf("README line %d: no check for %q", i, line)
	return false
}

// TestGossipPortTakenNamesTheFlag: a second controller on a gossip port in use exits
// saying which flag chooses another.
func TestGossipPortTakenNamesTheFlag(t *testing.T) {
	dir := t.TempDir()
	cs := harness.StartControllers(t, dir, 1)
	gossip := harness.ArgValue(cs[0].Args, "--gossip-addr")
	p := harness.Start(t, harness.Bin(t, "hypersdk-controller"), "c2", dir, "--node-id", "c2", "--data-dir", filepath.Join(dir, "c2"),
		"--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--gossip-addr", gossip)
	if !p.Wait(30 * time.Second) {
		t.Fatal("the second controller runs on a taken gossip port")
	}
	out, _ := os.ReadFile(p.LogPath)
	if !strings.Contains(string(out), "address already in use") || !strings.Contains(string(out), "--gossip-addr") {
		t.Fatalf("the error does not name --gossip-addr:\n%s", out)
	}
}
