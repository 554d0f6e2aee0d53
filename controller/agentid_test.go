package controller_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

const agentJoin = "join-token-0123456789abcdef"

func enrollBody(name, cred string) []byte {
	sum := sha256.Sum256([]byte(cred))
	b, _ := json.Marshal(proto.EnrollRequest{Agent: name, CredentialSHA256: hex.EncodeToString(sum[:])})
	return b
}

func leaseBody(agent string) []byte {
	b, _ := json.Marshal(proto.LeaseRequest{Agent: agent, MaxJobs: 4, WaitSeconds: 1,
		Capacity:     proto.AgentCapacity{CPUs: 4, MemoryTotalBytes: 16 << 30, MemoryFreeBytes: 8 << 30, StorageFreeBytes: 500 << 30},
		Capabilities: proto.AgentCapabilities{QemuImg: true, Nbdkit: true, Methods: []string{"https", "nfc"}}})
	return b
}

// Issue 18 (high): with only the join token and "agent": "<a real agent's name>", a client
// leased a job pinned to that agent, got the clear password and completed it with a forged
// result; (medium) admin API tokens were accepted on /agent/v1/lease and received clear
// passwords. Every call here goes to a follower, which forwards to the leader.
func TestAgentImpersonationRefused(t *testing.T) {
	cs := controller.StartTestClusterWith(t, 3, func(i int, cfg *controller.Config) {
		cfg.Auth.Tokens = authConfig(t, "x", t.TempDir()).Auth.Tokens
		cfg.Agents.JoinToken = agentJoin
	})
	var f *controller.Controller
	for _, c := range cs {
		if !c.Node.IsLeader() {
			f = c
			break
		}
	}
	hc := http.DefaultClient
	u := f.URL()
	real := fleettest.NewAgent("kvm-real", u)
	real.Token = agentJoin
	if code, err := real.Enroll(); err != nil || code != 200 {
		t.Fatalf("real agent enrols: %d %v", code, err)
	}
	code, out := call(t, hc, "POST", u+"/jobs/submit", adminTok,
		[]byte(`{"vm_path":"DC0/vm/pinned","source":{"type":"vsphere","vcenter_url":"127.0.0.1:1","username":"admin","password":"canary-pw"},"destination":{"type":"kvm"},"options":{"target_agent":"kvm-real"}}`), nil)
	if code != http.StatusCreated {
		t.Fatalf("submit: %d %v", code, out)
	}
	jobID := out["job_id"].(string)

	const evilCred = "evil-credential-0123456789abcdef0123456789"
	if code, out := call(t, hc, "POST", u+"/agent/v1/enroll", "", enrollBody("kvm-evil", evilCred), map[string]string{proto.AgentTokenHeader: agentJoin}); code != 200 {
		t.Fatalf("the attacker enrols under its own name (it has the join token): %d %v", code, out)
	}
	attacks := []struct {
		name string
		path string
		body []byte
		tok  string
		hdr  map[string]string
		code int
	}{
		{"join token where the credential goes", "/agent/v1/lease", leaseBody("kvm-real"), "", map[string]string{proto.AgentTokenHeader: agentJoin}, 401},
		{"join token as bearer", "/agent/v1/lease", leaseBody("kvm-real"), agentJoin, nil, 401},
		{"join token as credential", "/agent/v1/lease", leaseBody("kvm-real"), "", map[string]string{proto.AgentCredentialHeader: agentJoin}, 401},
		{"admin API token", "/agent/v1/lease", leaseBody("kvm-real"), adminTok, nil, 401},
		{"admin API token as credential", "/agent/v1/lease", leaseBody("kvm-real"), "", map[string]string{proto.AgentCredentialHeader: adminTok}, 401},
		{"second enrolment under the real agent's name", "/agent/v1/enroll", enrollBody("kvm-real", "another-credential-0123456789abcdef"), "", map[string]string{proto.AgentTokenHeader: agentJoin}, 409},
		{"enrolment without the join token", "/agent/v1/enroll", enrollBody("kvm-new", "another-credential-0123456789abcdef"), "", nil, 401},
		{"enrolment with an admin token", "/agent/v1/enroll", enrollBody("kvm-new", "another-credential-0123456789abcdef"), adminTok, nil, 401},
		{"own credential, another agent's name", "/agent/v1/lease", leaseBody("kvm-real"), "", map[string]string{proto.AgentCredentialHeader: evilCred}, 403},
		{"forged completion under the real name", "/agent/v1/complete", []byte(fmt.Sprintf(`{"agent":"kvm-real","job_id":%q,"attempt":1,"result":{"domain_name":"evil","libvirt_uri":"qemu+ssh://evil/system"}}`, jobID)), "", map[string]string{proto.AgentCredentialHeader: evilCred}, 403},
		{"forged commit point under the real name", "/agent/v1/commit", []byte(fmt.Sprintf(`{"agent":"kvm-real","job_id":%q,"attempt":1,"domain":"evil"}`, jobID)), "", map[string]string{proto.AgentCredentialHeader: evilCred}, 403},
		{"forged warm report under the real name", "/agent/v1/warm", []byte(fmt.Sprintf(`{"agent":"kvm-real","job_id":%q,"attempt":1,"status":{"phase":"done","rounds":1}}`, jobID)), "", map[string]string{proto.AgentCredentialHeader: evilCred}, 403},
		{"viewer forgets an agent", "/agents/kvm-real/forget", nil, viewerTok, nil, 403},
	}
	for _, a := range attacks {
		if code, out := call(t, hc, "POST", u+a.path, a.tok, a.body, a.hdr); code != a.code {
			t.Errorf("%s: %d %v, want %d", a.name, code, out, a.code)
		}
	}
	// Leasing as itself, the attacker never gets the job pinned to kvm-real.
	if code, out := call(t, hc, "POST", u+"/agent/v1/lease", "", leaseBody("kvm-evil"), map[string]string{proto.AgentCredentialHeader: evilCred}); code != 200 || out["lease"] != nil {
		t.Fatalf("the attacker's own lease: %d %v", code, out)
	}
	if j, _ := f.State.Job(jobID); j.Status != proto.StatusPending {
		t.Fatalf("after the attacks the job is %s", j.Status)
	}

	// The real agent gets its job (and the password: it is the agent).
	l := real.Lease(t, 20*time.Second)
	if l.JobID != jobID || l.Definition.Source.Password != "canary-pw" {
		t.Fatalf("real agent's lease: %s %q", l.JobID, l.Definition.Source.Password)
	}
	if code, out := call(t, hc, "POST", u+"/agent/v1/complete", "", []byte(fmt.Sprintf(`{"agent":"kvm-evil","job_id":%q,"attempt":1}`, jobID)), map[string]string{proto.AgentCredentialHeader: evilCred}); code != 409 {
		t.Fatalf("the attacker completes the real agent's lease as itself: %d %v, want 409", code, out)
	}
	// call retries a 503 (leadership lost mid-commit on a loaded machine): the retry of an
	// applied completion is 409, which is fine here, the state below decides.
	done := []byte(fmt.Sprintf(`{"agent":"kvm-real","job_id":%q,"attempt":%d,"result":{"domain_name":"pinned"}}`, jobID, l.Attempt))
	if code, out := call(t, hc, "POST", u+"/agent/v1/complete", "", done, map[string]string{proto.AgentCredentialHeader: real.Credential}); code != 200 && code != 409 {
		t.Fatalf("the real agent completes: %d %v", code, out)
	}
	controller.WaitFor(t, 10*time.Second, "completed by the real agent", func() bool {
		j, _ := f.State.Job(jobID)
		return j.Status == proto.StatusCompleted && j.Result != nil && j.Result.DomainName == "pinned"
	})

	// A replaced host: the admin forgets the name, the old credential stops working and a
	// new host enrols under it.
	if code, out := call(t, hc, "POST", u+"/agents/kvm-real/forget", adminTok, nil, nil); code != 200 {
		t.Fatalf("forget: %d %v", code, out)
	}
	controller.WaitFor(t, 5*time.Second, "forget applied here", func() bool { return len(f.State.AgentIdentities()) == 1 })
	if code, _ := call(t, hc, "POST", u+"/agent/v1/heartbeat", "", []byte(`{"agent":"kvm-real","leases":[]}`), map[string]string{proto.AgentCredentialHeader: real.Credential}); code != 401 {
		t.Fatalf("forgotten credential: %d, want 401", code)
	}
	if code, out := call(t, hc, "POST", u+"/agent/v1/enroll", "", enrollBody("kvm-real", "new-host-credential-0123456789abcdef"), map[string]string{proto.AgentTokenHeader: agentJoin}); code != 200 {
		t.Fatalf("new host under the forgotten name: %d %v", code, out)
	}
}

// Guessing the join token or a credential is paced by api.rate_limit (the agent API is
// otherwise not limited: agents are paced by their slots).
func TestAgentAuthFailuresAreRateLimited(t *testing.T) {
	c := controller.StartTestClusterWith(t, 1, func(i int, cfg *controller.Config) {
		cfg.Agents.JoinToken = agentJoin
		cfg.API.RateLimit.RequestsPerSecond, cfg.API.RateLimit.Burst = 5, 5
	})[0]
	got429 := false
	for i := 0; i < 30 && !got429; i++ {
		hdr := map[string]string{proto.AgentTokenHeader: fmt.Sprintf("guess-%02d-0123456789abcdef", i)}
		code, _ := call(t, http.DefaultClient, "POST", c.URL()+"/agent/v1/enroll", "", enrollBody("kvm-guess", "cred-0123456789abcdef0123456789"), hdr)
		switch code {
		case http.StatusTooManyRequests:
			got429 = true
		case http.StatusUnauthorized:
		default:
			t.Fatalf("guess %d: %d", i, code)
		}
	}
	if !got429 {
		t.Fatal("30 join-token guesses at once with a limit of 5/s were never paced")
	}
	// A real agent still gets in once the bucket refills.
	a := fleettest.NewAgent("kvm-after-flood", c.URL())
	a.Token = agentJoin
	controller.WaitFor(t, 10*time.Second, "enrolment after the flood", func() bool {
		code, _ := a.Enroll()
		return code == http.StatusOK
	})
}
