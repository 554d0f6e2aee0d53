package fleettest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestCA is a throwaway certificate authority: it issues certificates for 127.0.0.1 and
// localhost that serve and dial (serverAuth and clientAuth), as controllers' cluster
// certificates must.
type TestCA struct {
	Cert   *x509.Certificate
	PEM    []byte
	key    *ecdsa.PrivateKey
	serial atomic.Int64
}

// NewCA creates a CA named name. It takes no testing.TB so a harness can make one per
// process.
func NewCA(name string) (*TestCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &TestCA{Cert: cert, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
	ca.serial.Store(1)
	return ca, nil
}

// MustCA is NewCA for tests.
func MustCA(t testing.TB, name string) *TestCA {
	t.Helper()
	ca, err := NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Pool is a pool holding just this CA.
func (ca *TestCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue returns the PEM certificate and key of a new leaf named cn, valid for 127.0.0.1
// and localhost, with the given extended key usages (none: serverAuth and clientAuth).
func (ca *TestCA) Issue(cn string, usages ...x509.ExtKeyUsage) (certPEM, keyPEM []byte, err error) {
	return ca.IssueFor(cn, []string{"127.0.0.1", "localhost"}, usages...)
}

// IssueFor is Issue for the given hosts (IP addresses or DNS names).
func (ca *TestCA) IssueFor(cn string, hosts []string, usages ...x509.ExtKeyUsage) (certPEM, keyPEM []byte, err error) {
	var ips []net.IP
	var names []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			names = append(names, h)
		}
	}
	if len(usages) == 0 {
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: ips, DNSNames: names, ExtKeyUsage: usages, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// TLSCertificate is a new leaf named cn as a tls.Certificate (for in-process clients).
func (ca *TestCA) TLSCertificate(t testing.TB, cn string, usages ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	c, k, err := ca.Issue(cn, usages...)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// WriteFiles writes the CA and a new leaf named cn into dir as ca.pem, cert.pem and
// key.pem (mode 0600).
func (ca *TestCA) WriteFiles(t testing.TB, dir, cn string, usages ...x509.ExtKeyUsage) (caFile, certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(cn, usages...)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(fmt.Errorf("write %s: %w", p, err))
		}
		return p
	}
	return write("ca.pem", ca.PEM), write("cert.pem", certPEM), write("key.pem", keyPEM)
}

// WriteTestCA writes a new test CA and a certificate for 127.0.0.1 and localhost signed by
// it (serverAuth and clientAuth: it serves the API and is the cluster certificate) into
// dir, as PEM files.
func WriteTestCA(t testing.TB, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	return MustCA(t, "hypersdk test CA").WriteFiles(t, dir, "controller")
}
