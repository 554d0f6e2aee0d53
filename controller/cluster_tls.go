package controller

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/hypersdk/hypersdk/controller/cluster"
)

// Cluster TLS secures what controllers say to each other: raft (always mutual TLS when
// configured) and, on an https API, forwarding and joins (the peer presents its
// certificate; the API asks for one and trusts it only if the cluster CA signed it).
// Raft has no authentication of its own: a plain raft port lets anyone who reaches it pose
// as leader and write the replicated state, so a plain port is allowed on loopback only.

// ClusterTLSFiles resolves the cluster's certificate, key and CA: each cluster.tls field,
// else the api.tls one.
func (c *Config) ClusterTLSFiles() TLSConfig {
	f := c.Cluster.TLS
	if f.CertFile == "" && f.KeyFile == "" {
		f.CertFile, f.KeyFile = c.API.TLS.CertFile, c.API.TLS.KeyFile
	}
	if f.CAFile == "" {
		f.CAFile = c.API.TLS.CAFile
	}
	return f
}

// ClusterTLSEnabled reports whether raft and the peer channels run over mutual TLS.
func (c *Config) ClusterTLSEnabled() bool {
	f := c.ClusterTLSFiles()
	return f.CertFile != "" && f.KeyFile != "" && f.CAFile != ""
}

// validateClusterSecurity refuses a raft port reachable from other hosts without cluster
// TLS (the way the API refuses a non-loopback address without tokens), unless
// auth.insecure_no_auth says so. It reads no file: it runs before anything is touched.
func (c *Config) validateClusterSecurity() error {
	f := c.ClusterTLSFiles()
	if c.Cluster.TLS != (TLSConfig{}) && !c.ClusterTLSEnabled() {
		var missing []string
		for _, m := range []struct{ name, v string }{{"cert_file", f.CertFile}, {"key_file", f.KeyFile}, {"ca_file", f.CAFile}} {
			if m.v == "" {
				missing = append(missing, m.name)
			}
		}
		return fmt.Errorf("config: cluster.tls needs cert_file, key_file and ca_file (each defaults to the api.tls one): %s missing", strings.Join(missing, ", "))
	}
	if c.ClusterTLSEnabled() || c.Auth.InsecureNoAuth {
		return nil
	}
	if addr, exposed := c.raftExposed(); exposed {
		return fmt.Errorf("refusing to run raft on %s without cluster TLS: anyone who reaches that port could "+
			"rewrite the cluster's state. Configure cluster.tls (or api.tls with a ca_file: cert_file, key_file and "+
			"the CA that signed every controller's certificate), or use a loopback raft address, or pass "+
			"--insecure-no-auth", addr)
	}
	return nil
}

// raftExposed reports the first raft address (bound or advertised) that is not loopback.
func (c *Config) raftExposed() (string, bool) {
	for _, addr := range []string{c.Cluster.RaftAddr, c.Cluster.RaftAdvertise} {
		if addr == "" {
			continue
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil || !isLoopbackHost(host) {
			return addr, true
		}
	}
	return "", false
}

// isLoopbackHost: an IP in 127.0.0.0/8 or ::1, or a name that resolves only to such.
// "" and 0.0.0.0 bind every interface.
func isLoopbackHost(host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	if host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return false
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// warnInsecureCluster says loudly, at start, that raft runs without TLS where other hosts
// can reach it (auth.insecure_no_auth).
func warnInsecureCluster(cfg *Config, log *slog.Logger) {
	if cfg.ClusterTLSEnabled() {
		return
	}
	if addr, exposed := cfg.raftExposed(); exposed {
		log.Warn("INSECURE: raft listens without TLS on a non-loopback address (--insecure-no-auth): "+
			"anyone who reaches it can pose as leader and rewrite jobs, schedules and webhooks", "raft_addr", addr)
	}
}

// loadClusterTLS reads the cluster certificate, key and CA (nil, nil when cluster TLS is
// off) and checks what would otherwise fail later, one peer at a time: the certificate is
// signed by the CA, may serve and may dial (server and client auth), and names the raft
// address the peers dial.
func loadClusterTLS(cfg *Config) (*cluster.TransportTLS, error) {
	if !cfg.ClusterTLSEnabled() {
		return nil, nil
	}
	f := cfg.ClusterTLSFiles()
	// Errors name the key the operator wrote: cluster.tls.X, or the api.tls.X it defaults to.
	key := func(field string) string {
		own := cfg.Cluster.TLS.CertFile != "" || cfg.Cluster.TLS.KeyFile != ""
		if field == "ca_file" {
			own = cfg.Cluster.TLS.CAFile != ""
		}
		if own {
			return "cluster.tls." + field
		}
		return "api.tls." + field + " (serving as cluster TLS)"
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s / key_file: %w", key("cert_file"), err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("%s: %w", key("cert_file"), err)
		}
	}
	pemBytes, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key("ca_file"), err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("%s %s holds no PEM certificate", key("ca_file"), f.CAFile)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	for _, use := range []struct {
		eku  x509.ExtKeyUsage
		name string
	}{{x509.ExtKeyUsageServerAuth, "serverAuth"}, {x509.ExtKeyUsageClientAuth, "clientAuth"}} {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{use.eku}})
		if err != nil {
			return nil, fmt.Errorf("%s is not usable for the cluster's mutual TLS (%s, with the CA of %s): %w; "+
				"controllers present it both as server and as client, so it needs the serverAuth and clientAuth "+
				"extended key usages", key("cert_file"), use.name, key("ca_file"), err)
		}
	}
	host := raftHost(cfg)
	if host != "" {
		if err := leaf.VerifyHostname(host); err != nil {
			return nil, fmt.Errorf("%s does not name the raft address %s that peers dial: %w", key("cert_file"), host, err)
		}
	}
	return &cluster.TransportTLS{Certificate: cert, CAs: pool}, nil
}

// raftHost is the host peers dial for this node's raft (advertised, else bound; "" when it
// binds every interface and advertises nothing, which cluster.Open refuses anyway).
func raftHost(cfg *Config) string {
	addr := cfg.Cluster.RaftAdvertise
	if addr == "" {
		addr = cfg.Cluster.RaftAddr
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return ""
	}
	return host
}

// peerServerTLS makes the https API ask peers for their certificate and verify it against
// the cluster CA (users present none and are authenticated by token as before). Only then
// is a request with a verified chain a peer's (controller/api peer.go relies on this: with
// no ClientCAs, Go would verify client certificates against the system roots).
func peerServerTLS(srv *tls.Config, t *cluster.TransportTLS) {
	if t == nil {
		return
	}
	srv.ClientCAs = t.CAs
	srv.ClientAuth = tls.VerifyClientCertIfGiven
}

// peerClientTLS makes calls to peer controllers (forwarding, joins) present this node's
// cluster certificate.
func peerClientTLS(client *tls.Config, t *cluster.TransportTLS) {
	if t == nil {
		return
	}
	client.Certificates = []tls.Certificate{t.Certificate}
}
