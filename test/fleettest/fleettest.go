// Package fleettest plays the agent's side of the protocol for tests of what operators
// see (hyperctl, the dashboard, the Grafana dashboard): a real gossip member advertising
// host capacity, and the real agent API (lease, progress, complete, fail) spoken the way
// agent/worker speaks it, so a test decides when a job moves.
package fleettest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent/capacity"
	"github.com/hypersdk/hypersdk/agent/membership"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/gossip/gossiptest"
)

// StartMember joins the gossip pool at join as agent name, advertising this host's real
// capacity (its storage dir is a temp dir) and maxJobs slots. It leaves when the test ends.
func StartMember(t testing.TB, name string, maxJobs int, join ...string) *membership.Membership {
	t.Helper()
	return StartMemberProbing(t, name, maxJobs, capacity.Config{}, join...)
}

// StartMemberProbing is StartMember with a prober configuration (its storage dir and
// libvirt URI are the test's own): e.g. a VDDKProbe that finds VDDK.
func StartMemberProbing(t testing.TB, name string, maxJobs int, probe capacity.Config, join ...string) *membership.Membership {
	t.Helper()
	return StartMemberWith(t, name, maxJobs, Prober(t, probe), join...)
}

// Prober is the capacity prober a test agent runs: probe with the test's own storage dir
// and libvirt URI, advertising TCG unless probe says how guests run.
func Prober(t testing.TB, probe capacity.Config) *capacity.Prober {
	probe.StorageDir, probe.LibvirtURI = t.TempDir(), "test:///default"
	if probe.Virtualization == nil {
		// What an agent on a host without KVM advertises once its probe has decided.
		probe.Virtualization = func() *proto.Virtualization {
			return &proto.Virtualization{Type: proto.VirtTCG, CPU: "default", Reason: "TCG: no /dev/kvm on this host"}
		}
	}
	return capacity.New(probe)
}

// StartMemberWith is StartMember advertising what prober measures (say, a host whose
// transfers run at a given rate under a cap).
func StartMemberWith(t testing.TB, name string, maxJobs int, prober membership.Prober, join ...string) *membership.Membership {
	t.Helper()
	m, err := membership.Start(context.Background(), membership.Config{
		Gossip:  gossiptest.Config(proto.RoleAgent, name),
		Name:    name,
		APIAddr: "127.0.0.1:1",
		Version: "fleettest",
		MaxJobs: maxJobs,
		Join:    join,
		// The test moves the job count itself; re-measuring adds nothing.
		RefreshInterval: time.Hour,
		Prober:          prober,
		Logger:          gossiptest.Logger(),
	})
	if err != nil {
		t.Fatalf("agent %s: %v", name, err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := m.WaitJoined(ctx); err != nil {
		t.Fatalf("agent %s: %v", name, err)
	}
	return m
}

// Agent speaks the agent API to a controller (any node: followers forward to the leader).
type Agent struct {
	Name string
	// URL is a controller's base URL.
	URL string
	// Token is the join token, if the controller wants one: the first call enrols
	// Credential with it.
	Token string
	// Credential is the agent's own credential, presented on every call but the enrolment.
	Credential string
	hc         *http.Client
}

// Enroll makes a credential (unless set) and enrols it under Name with the join token.
func (a *Agent) Enroll() (int, error) {
	if a.Credential == "" {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		a.Credential = hex.EncodeToString(b)
	}
	sum := sha256.Sum256([]byte(a.Credential))
	return a.post("/agent/v1/enroll", proto.EnrollRequest{Agent: a.Name, CredentialSHA256: hex.EncodeToString(sum[:])}, nil)
}

// NewAgent returns an agent API client for name.
func NewAgent(name, url string) *Agent {
	return &Agent{Name: name, URL: url, hc: &http.Client{Timeout: 30 * time.Second}}
}

func (a *Agent) post(path string, in, out any) (int, error) {
	b, _ := json.Marshal(in)
	req, err := http.NewRequest(http.MethodPost, a.URL+path, bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if path == "/agent/v1/enroll" {
		if a.Token != "" {
			req.Header.Set(proto.AgentTokenHeader, a.Token)
		}
	} else {
		if a.Token != "" && a.Credential == "" {
			if code, err := a.Enroll(); err != nil {
				return code, err
			}
		}
		if a.Credential != "" {
			req.Header.Set(proto.AgentCredentialHeader, a.Credential)
		}
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("%s: %d %s", path, resp.StatusCode, bytes.TrimSpace(body))
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return resp.StatusCode, err
		}
	}
	return resp.StatusCode, nil
}

// Lease long-polls until the controller grants a job (failing the test after timeout).
func (a *Agent) Lease(t testing.TB, timeout time.Duration) *proto.Lease {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var res proto.LeaseResponse
		_, err := a.post("/agent/v1/lease", proto.LeaseRequest{
			Agent: a.Name, MaxJobs: 4, WaitSeconds: 2,
			Capacity:     proto.AgentCapacity{CPUs: 4, MemoryTotalBytes: 16 << 30, MemoryFreeBytes: 8 << 30, StorageFreeBytes: 500 << 30},
			Capabilities: proto.AgentCapabilities{QemuImg: true, Nbdkit: true, Methods: []string{"https", "nfc"}},
		}, &res)
		if err == nil && res.Lease != nil {
			return res.Lease
		}
	}
	t.Fatalf("agent %s got no lease within %s", a.Name, timeout)
	return nil
}

// Progress reports progress, retrying while the controller throttles it (at most one
// progress write per job per second), so the state holds p when it returns.
func (a *Agent) Progress(t testing.TB, l *proto.Lease, p proto.Progress) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var res proto.ReportResponse
		_, err := a.post("/agent/v1/progress", proto.ProgressRequest{LeaseToken: l.LeaseToken, Agent: a.Name, Progress: p}, &res)
		if err == nil && !res.Throttled {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("progress of %s not recorded: %v (throttled %v)", l.JobID, err, res.Throttled)
		}
		<-tick.C
	}
}

// Complete reports success.
func (a *Agent) Complete(t testing.TB, l *proto.Lease, result *proto.JobResult) {
	t.Helper()
	if _, err := a.post("/agent/v1/complete", proto.CompleteRequest{LeaseToken: l.LeaseToken, Agent: a.Name, Result: result}, nil); err != nil {
		t.Fatalf("complete %s: %v", l.JobID, err)
	}
}

// Fail reports a failed attempt that must not be retried.
func (a *Agent) Fail(t testing.TB, l *proto.Lease, msg string) {
	t.Helper()
	if _, err := a.post("/agent/v1/fail", proto.FailRequest{LeaseToken: l.LeaseToken, Agent: a.Name, Error: msg}, nil); err != nil {
		t.Fatalf("fail %s: %v", l.JobID, err)
	}
}

// Warm reports a warm job's status, as the agent does after each round.
func (a *Agent) Warm(t testing.TB, l *proto.Lease, st proto.WarmStatus) {
	t.Helper()
	if code, err := a.post("/agent/v1/warm", proto.WarmReport{LeaseToken: l.LeaseToken, Agent: a.Name, Status: st}, nil); err != nil || code != http.StatusOK {
		t.Fatalf("warm report of %s: %d %v", l.JobID, code, err)
	}
}

// JobBody is a valid job definition; the password is a canary tests look for in output.
func JobBody(vmPath string) proto.JobDefinition {
	return proto.JobDefinition{
		VMPath:      vmPath,
		Source:      proto.Source{Type: "vsphere", VCenterURL: "https://127.0.0.1:1/sdk", Username: "admin", Password: CanaryPassword},
		Destination: proto.Destination{Type: "kvm", LibvirtURI: "test:///default"},
	}
}

// CanaryPassword must never appear in anything shown to a user.
const CanaryPassword = "canary-Pa55w0rd"

// Heartbeat sends an empty heartbeat (the agent holds no lease): its status says whether
// the controller still knows the agent's credential.
func (a *Agent) Heartbeat() (int, error) {
	return a.post("/agent/v1/heartbeat", proto.HeartbeatRequest{Agent: a.Name}, nil)
}

// TryLease is one long-poll of up to wait: the lease, or nil when none was granted.
func (a *Agent) TryLease(wait time.Duration) (*proto.Lease, error) {
	var res proto.LeaseResponse
	_, err := a.post("/agent/v1/lease", proto.LeaseRequest{
		Agent: a.Name, MaxJobs: 4, WaitSeconds: max(1, int(wait/time.Second)),
		Capacity:     proto.AgentCapacity{CPUs: 4, MemoryTotalBytes: 16 << 30, MemoryFreeBytes: 8 << 30, StorageFreeBytes: 500 << 30, Healthy: true},
		Capabilities: proto.AgentCapabilities{QemuImg: true, Nbdkit: true, Methods: []string{"https", "nfc"}},
	}, &res)
	return res.Lease, err
}

// Renew heartbeats for leases and returns the controller's answer.
func (a *Agent) Renew(t testing.TB, leases ...*proto.Lease) proto.HeartbeatResponse {
	t.Helper()
	req := proto.HeartbeatRequest{Agent: a.Name}
	for _, l := range leases {
		req.Leases = append(req.Leases, l.LeaseToken)
	}
	var res proto.HeartbeatResponse
	if _, err := a.post("/agent/v1/heartbeat", req, &res); err != nil {
		t.Fatalf("heartbeat of %s: %v", a.Name, err)
	}
	return res
}

// FailRetryable reports a failed attempt the job may retry (a hand-back).
func (a *Agent) FailRetryable(t testing.TB, l *proto.Lease, msg string) {
	t.Helper()
	if _, err := a.post("/agent/v1/fail", proto.FailRequest{LeaseToken: l.LeaseToken, Agent: a.Name, Error: msg, Retryable: true}, nil); err != nil {
		t.Fatalf("fail %s: %v", l.JobID, err)
	}
}
