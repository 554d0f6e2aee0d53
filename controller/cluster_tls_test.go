package controller_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

// tlsCluster is a test CA with one controller certificate (127.0.0.1) and an https client
// that trusts the CA.
type tlsCluster struct {
	ca                        *fleettest.TestCA
	caFile, certFile, keyFile string
	client                    *http.Client
}

func newTLSCluster(t *testing.T) *tlsCluster {
	t.Helper()
	tc := &tlsCluster{ca: fleettest.MustCA(t, "hypersdk cluster CA")}
	tc.caFile, tc.certFile, tc.keyFile = tc.ca.WriteFiles(t, t.TempDir(), "controller")
	tc.client = &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tc.ca.Pool()}}}
	return tc
}

// apply serves the API over TLS with the CA: api.tls then serves as the cluster TLS too.
func (tc *tlsCluster) apply(cfg *controller.Config) {
	cfg.API.TLS = controller.TLSConfig{CertFile: tc.certFile, KeyFile: tc.keyFile, CAFile: tc.caFile}
}

// call sends a request (503 retried a few times, as a client should) and returns the
// status and the decoded answer.
func call(t *testing.T, client *http.Client, method, url, token string, body []byte, hdr map[string]string) (int, map[string]any) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		r, _ := http.NewRequest(method, url, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		resp, err := client.Do(r)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || attempt == 5 {
			return resp.StatusCode, out
		}
		time.Sleep(time.Second) // Retry-After: 1
	}
}

// attacker is a raft client that is not a member: it speaks hashicorp/raft's protocol
// through its own stream layer.
type attacker struct {
	name  string
	trans *raft.NetworkTransport
}

// dialLayer is an attacker's raft.StreamLayer: a loopback listener (raft wants one) and a
// dial function.
type dialLayer struct {
	net.Listener
	dial func(addr string, timeout time.Duration) (net.Conn, error)
}

func (d dialLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return d.dial(string(addr), timeout)
}

func newAttackers(t *testing.T, otherCA *fleettest.TestCA) []attacker {
	t.Helper()
	plain, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 3*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	out := []attacker{{"plain raft.NewTCPTransport", plain}}
	tlsWith := func(name string, certs []tls.Certificate) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// The attacker trusts any server (it wants in, not to verify): only the server's
		// demand for a client certificate of the cluster CA can stop it.
		cfg := &tls.Config{InsecureSkipVerify: true, Certificates: certs} //nolint:gosec // the attacker's side
		layer := dialLayer{Listener: ln, dial: func(addr string, timeout time.Duration) (net.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", addr, cfg)
		}}
		tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: layer, MaxPool: 1,
			Timeout: 3 * time.Second, Logger: hclog.NewNullLogger()})
		t.Cleanup(func() { tr.Close() })
		out = append(out, attacker{name, tr})
	}
	tlsWith("TLS client without a certificate", nil)
	tlsWith("TLS client with a certificate of another CA", []tls.Certificate{otherCA.TLSCertificate(t, "intruder")})
	return out
}

// injectedJob is the entry an attacker appends: a job the cluster never accepted.
func injectedJob(id string) []byte {
	return state.MustEncode(state.CmdSubmitJob, state.SubmitJob{Definition: proto.JobDefinition{
		ID: id, VMPath: "DC0/vm/injected",
		Source:      proto.Source{Type: "vsphere", VCenterURL: "https://capture.invalid/sdk", Username: "u", Password: "p"},
		Destination: proto.Destination{Type: "kvm"}}})
}

func raftStat(c *controller.Controller, key string) uint64 {
	v, _ := strconv.ParseUint(c.Node.Stats()[key], 10, 64)
	return v
}

func (a attacker) header() raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("intruder"), Addr: []byte(a.trans.LocalAddr())}
}

// appendEntries poses as a leader of term and appends the job jobID after target's last
// entry (nil: the node took it).
func (a attacker) appendEntries(target *controller.Controller, term uint64, jobID string) error {
	id, addr := raft.ServerID(target.Node.ID()), raft.ServerAddress(target.Node.RaftAddr())
	last, lastTerm := raftStat(target, "last_log_index"), raftStat(target, "last_log_term")
	var resp raft.AppendEntriesResponse
	err := a.trans.AppendEntries(id, addr, &raft.AppendEntriesRequest{RPCHeader: a.header(), Term: term,
		PrevLogEntry: last, PrevLogTerm: lastTerm, LeaderCommitIndex: last + 1,
		Entries: []*raft.Log{{Index: last + 1, Term: term, Type: raft.LogCommand, Data: injectedJob(jobID)}}}, &resp)
	if err == nil && !resp.Success {
		return fmt.Errorf("answered but refused the entries (term %d)", resp.Term)
	}
	return err
}

// rpcResults runs every raft RPC of the attacker against target with a term far above
// the cluster's and returns each call's error (nil: the node answered). The snapshot it
// offers is malformed: a node that answers it panics (raft v1.7.3 decodes the
// configuration with a panic), which is one more reason a raft port must not be open.
func (a attacker) rpcResults(target *controller.Controller, term uint64, jobID string) map[string]error {
	id, addr := raft.ServerID(target.Node.ID()), raft.ServerAddress(target.Node.RaftAddr())
	hdr := a.header()
	last := raftStat(target, "last_log_index")
	res := map[string]error{"AppendEntries": a.appendEntries(target, term, jobID)}

	var rvResp raft.RequestVoteResponse
	res["RequestVote"] = a.trans.RequestVote(id, addr, &raft.RequestVoteRequest{RPCHeader: hdr, Term: term + 1,
		LastLogIndex: last + 1000, LastLogTerm: term + 1, LeadershipTransfer: true}, &rvResp)

	var isResp raft.InstallSnapshotResponse
	res["InstallSnapshot"] = a.trans.InstallSnapshot(id, addr, &raft.InstallSnapshotRequest{RPCHeader: hdr,
		SnapshotVersion: raft.SnapshotVersionMax, Term: term + 2, LastLogIndex: last + 2000, LastLogTerm: term + 2,
		Size: 2}, &isResp, strings.NewReader("{}"))

	var tnResp raft.TimeoutNowResponse
	res["TimeoutNow"] = a.trans.TimeoutNow(id, addr, &raft.TimeoutNowRequest{RPCHeader: hdr}, &tnResp)
	return res
}

// TestRaftPortRefusesNonMembers: against a 3-node cluster whose raft runs over mutual TLS
// (api.tls with a ca_file serves as the cluster TLS), a plain raft client, a TLS client
// without a certificate and one with a certificate of another CA get no answer to any
// raft RPC: no term moves, nothing is injected, the cluster keeps its leader and takes
// writes.
func TestRaftPortRefusesNonMembers(t *testing.T) {
	tc := newTLSCluster(t)
	nodes := controller.StartTestClusterWith(t, 3, func(_ int, cfg *controller.Config) { tc.apply(cfg) })
	leaderBefore := controller.Leader(nodes)
	if leaderBefore == nil {
		t.Fatal("no leader")
	}
	termBefore := raftStat(leaderBefore, "term")
	attackTerm := termBefore + 1000

	for _, a := range newAttackers(t, fleettest.MustCA(t, "another CA")) {
		t.Run(a.name, func(t *testing.T) {
			for _, n := range nodes {
				for rpc, err := range a.rpcResults(n, attackTerm, "injected-"+n.Node.ID()) {
					if err == nil {
						t.Errorf("%s answered %s from a non-member", n.Node.ID(), rpc)
					}
				}
			}
		})
	}

	for _, n := range nodes {
		if term := raftStat(n, "term"); term >= attackTerm {
			t.Errorf("%s took the attacker's term %d", n.Node.ID(), term)
		}
		for _, m := range nodes {
			if _, ok := n.State.Job("injected-" + m.Node.ID()); ok {
				t.Errorf("an injected job is on %s", n.Node.ID())
			}
		}
	}
	// Still healthy: a write through a follower is acknowledged and replicated everywhere.
	var follower *controller.Controller
	for _, n := range nodes {
		if !n.Node.IsLeader() {
			follower = n
		}
	}
	code, out := call(t, tc.client, "POST", follower.URL()+"/jobs/submit", "", jobBody("DC0/vm/after-attack"), nil)
	if code != http.StatusCreated {
		t.Fatalf("submit after the attack: %d %v", code, out)
	}
	id, _ := out["job_id"].(string)
	controller.WaitFor(t, 10*time.Second, "the job on every node", func() bool {
		for _, n := range nodes {
			if _, ok := n.State.Job(id); !ok {
				return false
			}
		}
		return true
	})
}

// TestPlainRaftPortIsOpenToAnyone shows what the refusal to start prevents: against a
// plain raft port (allowed on loopback only) the same plain client poses as leader with a
// higher term and appends a job that the node applies.
func TestPlainRaftPortIsOpenToAnyone(t *testing.T) {
	node := controller.StartTestCluster(t, 1)[0]
	a := newAttackers(t, fleettest.MustCA(t, "another CA"))[0]
	term := raftStat(node, "term") + 1000
	if err := a.appendEntries(node, term, "injected"); err != nil {
		t.Fatalf("the plain raft port refused the attacker (%v): this test no longer shows the risk", err)
	}
	controller.WaitFor(t, 5*time.Second, "the injected job applied", func() bool {
		_, ok := node.State.Job("injected")
		return ok
	})
	if got := raftStat(node, "term"); got < term {
		t.Fatalf("term %d, want the attacker's %d or later", got, term)
	}
}

// TestClusterSecurityRefusals: a raft address others can reach needs cluster TLS, and a
// cluster TLS that would fail peer by peer later is refused at start with the reason;
// either way the data dir is left as it was. --insecure-no-auth starts, with a warning.
func TestClusterSecurityRefusals(t *testing.T) {
	ip := nonLoopbackIP(t) // only bound, never sent to
	ca := fleettest.MustCA(t, "hypersdk cluster CA")
	dir := t.TempDir()
	caFile, certFile, keyFile := ca.WriteFiles(t, dir, "controller")
	serverOnly := filepath.Join(dir, "server-only")
	otherCA := filepath.Join(dir, "other-ca")
	withIP := filepath.Join(dir, "with-ip")
	for _, d := range []string{serverOnly, otherCA, withIP} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	_, soCert, soKey := ca.WriteFiles(t, serverOnly, "controller", x509.ExtKeyUsageServerAuth)
	ocCA, _, _ := fleettest.MustCA(t, "another CA").WriteFiles(t, otherCA, "x")
	certPEM, keyPEM, err := ca.IssueFor("controller", []string{ip, "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ipCert, ipKey := filepath.Join(withIP, "cert.pem"), filepath.Join(withIP, "key.pem")
	if err := os.WriteFile(ipCert, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ipKey, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	exposed := net.JoinHostPort(ip, "0")

	cases := []struct {
		name   string
		mutate func(*controller.Config)
		want   string // "" starts
		warn   bool
	}{
		{"non-loopback raft without TLS", func(c *controller.Config) { c.Cluster.RaftAddr = exposed },
			"refusing to run raft on " + exposed + " without cluster TLS", false},
		{"non-loopback raft advertised without TLS", func(c *controller.Config) { c.Cluster.RaftAdvertise = net.JoinHostPort(ip, "8081") },
			"without cluster TLS", false},
		{"API TLS without a CA is no cluster TLS", func(c *controller.Config) {
			c.Cluster.RaftAddr = exposed
			c.API.TLS = controller.TLSConfig{CertFile: certFile, KeyFile: keyFile}
		}, "without cluster TLS", false},
		{"cluster.tls without a CA", func(c *controller.Config) {
			c.Cluster.TLS = controller.TLSConfig{CertFile: certFile, KeyFile: keyFile}
		}, "cluster.tls needs cert_file, key_file and ca_file (each defaults to the api.tls one): ca_file missing", false},
		{"certificate without clientAuth", func(c *controller.Config) {
			c.API.TLS = controller.TLSConfig{CertFile: soCert, KeyFile: soKey, CAFile: caFile}
		}, "api.tls.cert_file (serving as cluster TLS) is not usable for the cluster's mutual TLS (clientAuth", false},
		{"certificate of another CA", func(c *controller.Config) {
			c.Cluster.TLS = controller.TLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: ocCA}
		}, "cluster.tls.cert_file is not usable for the cluster's mutual TLS (serverAuth, with the CA of cluster.tls.ca_file)", false},
		{"certificate without the raft address", func(c *controller.Config) {
			c.Cluster.RaftAddr = exposed
			c.Cluster.TLS = controller.TLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile}
		}, "does not name the raft address " + ip, false},
		{"--insecure-no-auth starts, loudly", func(c *controller.Config) {
			c.Cluster.RaftAddr = exposed
			c.Auth.InsecureNoAuth = true
		}, "", true},
		{"non-loopback raft with cluster TLS starts", func(c *controller.Config) {
			c.Cluster.RaftAddr = exposed
			c.Cluster.TLS = controller.TLSConfig{CertFile: ipCert, KeyFile: ipKey, CAFile: caFile}
		}, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			cfg := controller.TestConfig(t, "n1", data)
			tc.mutate(&cfg)
			// slog's handler serializes the writes; the file is read once the node is closed.
			logFile, err := os.Create(filepath.Join(t.TempDir(), "log"))
			if err != nil {
				t.Fatal(err)
			}
			defer logFile.Close()
			c, err := controller.New(cfg, slog.New(slog.NewTextHandler(logFile, nil)))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				c.Close()
				logs, _ := os.ReadFile(logFile.Name())
				if warned := bytes.Contains(logs, []byte("level=WARN msg=\"INSECURE: raft listens without TLS")); warned != tc.warn {
					t.Fatalf("warning logged: %v, want %v; log:\n%s", warned, tc.warn, logs)
				}
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("started; want a refusal with %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Fatalf("the refused start touched the data dir: %v", err)
			}
		})
	}
}

// TestTLSClusterFailover: over mutual TLS, the leader's loss elects a new one among the
// survivors, writes go on through them and no acknowledged job is lost.
func TestTLSClusterFailover(t *testing.T) {
	tc := newTLSCluster(t)
	nodes := controller.StartTestClusterWith(t, 3, func(_ int, cfg *controller.Config) { tc.apply(cfg) })
	var acked []string
	submit := func(c *controller.Controller, vm string) {
		t.Helper()
		code, out := call(t, tc.client, "POST", c.URL()+"/jobs/submit", "", jobBody(vm), nil)
		if code != http.StatusCreated {
			t.Fatalf("submit through %s: %d %v", c.Node.ID(), code, out)
		}
		acked = append(acked, out["job_id"].(string))
	}
	for i := 0; i < 9; i++ {
		submit(nodes[i%3], fmt.Sprintf("DC0/vm/before-%d", i))
	}
	_, survivors := controller.StopLeader(t, nodes)
	for i := 0; i < 6; i++ {
		submit(survivors[i%2], fmt.Sprintf("DC0/vm/after-%d", i))
	}
	for _, n := range survivors {
		controller.WaitFor(t, 10*time.Second, "every acknowledged job on "+n.Node.ID(), func() bool {
			for _, id := range acked {
				if _, ok := n.State.Job(id); !ok {
					return false
				}
			}
			return true
		})
	}
}

// TestTokenSHA256OnlyControllersJoin: controllers that keep only token hashes (as the HA
// guide recommends) have no clear token to join with; over cluster TLS their certificate
// authenticates them. The certificate is no user credential: without a token, users are
// still 401.
func TestTokenSHA256OnlyControllersJoin(t *testing.T) {
	tc := newTLSCluster(t)
	adminSum, viewerSum := sha256.Sum256([]byte(adminTok)), sha256.Sum256([]byte(viewerTok))
	nodes := controller.StartTestClusterWith(t, 3, func(_ int, cfg *controller.Config) {
		tc.apply(cfg)
		cfg.Auth.Tokens = []api.Token{
			{Name: "ops", TokenSHA256: hex.EncodeToString(adminSum[:]), Role: api.RoleAdmin},
			{Name: "dash", TokenSHA256: hex.EncodeToString(viewerSum[:]), Role: api.RoleViewer},
		}
	})
	var follower *controller.Controller
	for _, n := range nodes {
		if !n.Node.IsLeader() {
			follower = n
		}
	}
	if code, out := call(t, tc.client, "POST", follower.URL()+"/jobs/submit", adminTok, jobBody("DC0/vm/sha"), nil); code != http.StatusCreated {
		t.Fatalf("admin submit through a follower: %d %v", code, out)
	}
	join := []byte(`{"id":"intruder","raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2"}`)
	for _, c := range []struct {
		path, method, token string
		body                []byte
		want                int
	}{
		{"/cluster/join", "POST", "", join, http.StatusUnauthorized},
		{"/cluster/join", "POST", viewerTok, join, http.StatusForbidden},
		{"/jobs/submit", "POST", "", jobBody("DC0/vm/none"), http.StatusUnauthorized},
		{"/status", "GET", "", nil, http.StatusUnauthorized},
	} {
		if code, out := call(t, tc.client, c.method, follower.URL()+c.path, c.token, c.body, nil); code != c.want {
			t.Errorf("%s %s without a peer certificate (token %q): %d %v, want %d", c.method, c.path, c.token, code, out, c.want)
		}
	}
}

// TestForwardedByTrustedOnlyFromPeers: the leader does not count requests its peers
// forward (they were counted where they entered), but X-Hypersdk-Forwarded-By proves
// nothing: a client that sets it is rate-limited like any other, on a plain cluster (where
// it came from a controller's own address) and on a TLS one.
func TestForwardedByTrustedOnlyFromPeers(t *testing.T) {
	// A refill of one request per 100 s: only the burst counts during the test.
	limit := api.RateLimit{RequestsPerSecond: 0.01, Burst: 5}
	spoof := map[string]string{"X-Hypersdk-Forwarded-By": "node2"}
	burst := func(t *testing.T, client *http.Client, url string, n int, hdr map[string]string) (ok, limited int) {
		for i := 0; i < n; i++ {
			switch code, _ := call(t, client, "GET", url+"/status", "", nil, hdr); code {
			case http.StatusOK:
				ok++
			case http.StatusTooManyRequests:
				limited++
			default:
				t.Fatalf("GET /status: %d", code)
			}
		}
		return ok, limited
	}

	t.Run("plain", func(t *testing.T) {
		node := controller.StartTestClusterWith(t, 1, func(_ int, cfg *controller.Config) { cfg.API.RateLimit = limit })[0]
		if ok, limited := burst(t, http.DefaultClient, node.URL(), 8, spoof); ok != 5 || limited != 3 {
			t.Fatalf("8 spoofed requests: %d ok, %d limited; want 5 and 3", ok, limited)
		}
	})

	t.Run("tls", func(t *testing.T) {
		tc := newTLSCluster(t)
		nodes := controller.StartTestClusterWith(t, 2, func(_ int, cfg *controller.Config) {
			tc.apply(cfg)
			cfg.API.RateLimit = limit
		})
		leader := controller.Leader(nodes)
		follower := nodes[0]
		if follower == leader {
			follower = nodes[1]
		}
		// Five writes through the follower use up the client's burst there; the leader sees
		// them from its peer and counts none of them.
		for i := 0; i < 5; i++ {
			if code, out := call(t, tc.client, "POST", follower.URL()+"/jobs/submit", "", jobBody(fmt.Sprintf("DC0/vm/fw-%d", i)), nil); code != http.StatusCreated {
				t.Fatalf("submit %d through the follower: %d %v", i, code, out)
			}
		}
		if ok, limited := burst(t, tc.client, leader.URL(), 8, spoof); ok != 5 || limited != 3 {
			t.Fatalf("8 spoofed requests at the leader: %d ok, %d limited; want 5 (the forwarded writes were not counted) and 3", ok, limited)
		}
	})
}

// BenchmarkSubmitTransport measures the submit path (HTTP, forwarding, raft, apply) of a
// 3-node in-process cluster on plain loopback and over TLS side by side (https API, mutual
// TLS for raft and forwarding). Rate limits off: this measures the transport.
func BenchmarkSubmitTransport(b *testing.B) {
	ca := fleettest.MustCA(b, "bench CA")
	caFile, certFile, keyFile := ca.WriteFiles(b, b.TempDir(), "controller")
	for _, bc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"tls", true}} {
		b.Run(bc.name, func(b *testing.B) {
			nodes := controller.StartTestClusterWith(b, 3, func(_ int, c *controller.Config) {
				c.Cluster.Fast = false // LAN timers: the fast test timers elect a new leader under this load
				c.API.RateLimit = api.RateLimit{}
				if bc.tls {
					c.API.TLS = controller.TLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile}
				}
			})
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128,
				TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
			var n, retries atomic.Int64
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					for {
						resp, err := client.Post(nodes[i%3].URL()+"/jobs/submit", "application/json",
							bytes.NewReader(jobBody(fmt.Sprint("DC0/vm/b", i))))
						if err != nil {
							b.Fatal(err)
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode == http.StatusCreated {
							break
						}
						// An election on a loaded machine: retry as a client does (the
						// retries are reported; a 409 would be a retry that was stored).
						if resp.StatusCode != http.StatusServiceUnavailable {
							b.Fatalf("status %d", resp.StatusCode)
						}
						retries.Add(1)
						time.Sleep(100 * time.Millisecond)
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "submits/s")
			b.ReportMetric(float64(retries.Load()), "503-retries")
		})
	}
}
