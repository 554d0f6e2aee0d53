// Package test holds tests that start the real binaries as processes.
package test

import (
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/harness"
)

// TestControllerProcessFailover: three controller processes; SIGKILL the leader; a write
// through a survivor succeeds; no acknowledged job is lost; the killed node restarts from
// its data dir with no join flags and catches up; a fourth node joining later receives
// every existing job. Once on plain loopback, once over TLS (https API; raft, forwarding
// and joins over mutual TLS with the cluster CA).
func TestControllerProcessFailover(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		processFailover(t, func(dir, id string, join []string) *harness.Controller {
			return harness.StartController(t, dir, id, join, "--fast-raft")
		}, func(dir string) []*harness.Controller { return harness.StartControllers(t, dir, 3, "--fast-raft") })
	})
	t.Run("tls", func(t *testing.T) {
		var conf string
		var files harness.TLSFiles
		cs := processFailover(t, func(dir, id string, join []string) *harness.Controller {
			return harness.StartTLSController(t, dir, id, join, files, "--config", conf, "--fast-raft")
		}, func(dir string) []*harness.Controller {
			conf, files = harness.WriteTLSConfig(t, dir)
			return harness.StartTLSControllers(t, dir, 3, files, "--config", conf, "--fast-raft")
		})
		// The raft ports answer no plain raft client.
		intruder, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 3*time.Second, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		defer intruder.Close()
		for _, c := range cs {
			var resp raft.AppendEntriesResponse
			err := intruder.AppendEntries(raft.ServerID(c.ID), raft.ServerAddress(c.RaftAddr), &raft.AppendEntriesRequest{
				RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("intruder"), Addr: []byte(intruder.LocalAddr())},
				Term:      1 << 40}, &resp)
			if err == nil {
				t.Errorf("%s's raft port answered a plain client (term %d)", c.ID, resp.Term)
			}
		}
	})
}

// processFailover runs the failover with the given starters and returns the four nodes.
func processFailover(t *testing.T, startOne func(dir, id string, join []string) *harness.Controller,
	startThree func(dir string) []*harness.Controller) []*harness.Controller {
	dir := t.TempDir()
	cs := startThree(dir)
	var acked []string
	submit := func(c *harness.Controller, vm string) bool {
		var out proto.SubmitResponse
		code, err := harness.PostJSON(c.URL()+"/jobs/submit", harness.JobBody(vm), &out)
		if err == nil && code == http.StatusCreated {
			acked = append(acked, out.JobID)
			return true
		}
		return false
	}
	for i := 0; i < 30; i++ {
		if !submit(cs[i%3], fmt.Sprintf("DC0/vm/before-%d", i)) {
			t.Fatalf("submit %d failed on a healthy cluster", i)
		}
	}
	leader := harness.LeaderOf(cs)
	if leader == nil {
		t.Fatal("no leader")
	}
	leader.Signal(syscall.SIGKILL)
	leader.Wait(5 * time.Second)
	var survivors []*harness.Controller
	for _, c := range cs {
		if c != leader {
			survivors = append(survivors, c)
		}
	}
	// Writes through each survivor succeed once a new leader is elected (503 meanwhile).
	for i, c := range survivors {
		harness.WaitFor(t, 20*time.Second, "write through survivor "+c.ID, func() bool {
			return submit(c, fmt.Sprintf("DC0/vm/after-%d", i))
		})
	}
	checkAll := func(nodes []*harness.Controller) {
		t.Helper()
		for _, c := range nodes {
			harness.WaitFor(t, 20*time.Second, "every acknowledged job on "+c.ID, func() bool {
				var q proto.QueryResponse
				code, err := harness.PostJSON(c.URL()+"/jobs/query", `{"limit":1000}`, &q)
				if err != nil || code != 200 || q.Total != len(acked) {
					return false
				}
				seen := map[string]int{}
				for _, j := range q.Jobs {
					seen[j.Definition.ID]++
				}
				for _, id := range acked {
					if seen[id] != 1 {
						return false
					}
				}
				return true
			})
		}
	}
	checkAll(survivors)

	// The killed node restarts from its data dir; its flags still name its addresses but it
	// bootstraps nothing and needs no --join: it rejoins and catches up.
	leader.Restart(t)
	checkAll(cs)
	if !submit(leader, "DC0/vm/through-restarted") {
		harness.WaitFor(t, 10*time.Second, "write through the restarted node", func() bool {
			return submit(leader, "DC0/vm/through-restarted")
		})
	}

	// A node joining the running cluster receives every existing job.
	late := startOne(dir, "c4", []string{survivors[0].APIAddr})
	checkAll(append(cs, late))
	var cl harness.ClusterView
	harness.GetJSON(late.URL()+"/cluster", &cl)
	if len(cl.Nodes) != 4 {
		t.Fatalf("cluster after join has %d nodes", len(cl.Nodes))
	}
	return append(cs, late)
}
