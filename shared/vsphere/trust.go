package vsphere

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// trustMode is how the client decided to trust the server's certificate.
type trustMode int

const (
	trustPlainHTTP trustMode = iota // http:// URL, no TLS
	trustCA                         // valid chain for the host name (system roots)
	trustPinned                     // leaf matches the configured thumbprint
	trustInsecure                   // verification disabled by configuration
)

// NormalizeThumbprint turns a SHA-1 or SHA-256 thumbprint in any usual spelling (colons,
// spaces or none, any case) into vSphere's form: upper-case hex pairs joined by colons.
func NormalizeThumbprint(s string) (string, error) {
	clean := strings.NewReplacer(":", "", " ", "", "-", "").Replace(strings.TrimSpace(s))
	b, err := hex.DecodeString(clean)
	if err != nil || (len(b) != sha1.Size && len(b) != sha256.Size) {
		return "", fmt.Errorf("thumbprint %q is not a SHA-1 or SHA-256 hex digest", s)
	}
	return colonHex(b), nil
}

func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02X", x)
	}
	return strings.Join(parts, ":")
}

// ThumbprintSHA1 is the certificate's SHA-1 thumbprint as vSphere and VDDK print it.
func ThumbprintSHA1(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	return colonHex(sum[:])
}

// ThumbprintSHA256 is the certificate's SHA-256 thumbprint, colon-separated.
func ThumbprintSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return colonHex(sum[:])
}

// thumbprintMatches compares a normalized thumbprint (SHA-1 or SHA-256) with the leaf.
func thumbprintMatches(normalized string, cert *x509.Certificate) bool {
	return normalized == ThumbprintSHA1(cert) || normalized == ThumbprintSHA256(cert)
}

// fetchCertificates completes a TLS handshake without verification to see what the server
// presents; the trust decision is made afterwards, so the error can show the thumbprint.
func fetchCertificates(ctx context.Context, nd *net.Dialer, hostport, serverName string) ([]*x509.Certificate, error) {
	if nd == nil {
		nd = &net.Dialer{}
	}
	if nd.Timeout == 0 {
		c := *nd
		c.Timeout = 15 * time.Second
		nd = &c
	}
	d := tls.Dialer{
		NetDialer: nd,
		Config:    &tls.Config{InsecureSkipVerify: true, ServerName: serverName}, //nolint:gosec // inspection only, see decideTrust
	}
	conn, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("the server sent no certificate")
	}
	return certs, nil
}

// decideTrust applies the configuration to the presented chain: insecure wins, then a
// configured thumbprint (which must match, even if the chain is also valid: the operator
// pinned this certificate), then normal verification against the system roots.
func decideTrust(certs []*x509.Certificate, host string, insecure bool, thumbprint string) (trustMode, error) {
	leaf := certs[0]
	fix := fmt.Sprintf("set source.insecure: true, or pin this certificate with source.thumbprint: %q (SHA-1; SHA-256 %s also accepted)",
		ThumbprintSHA1(leaf), ThumbprintSHA256(leaf))
	switch {
	case insecure:
		return trustInsecure, nil
	case thumbprint != "":
		if thumbprintMatches(thumbprint, leaf) {
			return trustPinned, nil
		}
		return 0, fmt.Errorf("%w: the certificate of %s does not match source.thumbprint %s; if the server's certificate was replaced, %s",
			ErrUntrustedCertificate, host, thumbprint, fix)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Intermediates: inter}); err != nil {
		return 0, fmt.Errorf("%w: %s presents a certificate that is not trusted (%v); %s",
			ErrUntrustedCertificate, host, shortX509(err), fix)
	}
	return trustCA, nil
}

// shortX509 keeps the useful part of an x509 verification error.
func shortX509(err error) string {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return "signed by an unknown authority"
	case errors.As(err, &he):
		return "not valid for this host name: " + he.Error()
	case errors.As(err, &ci):
		return ci.Error()
	}
	return err.Error()
}

// tlsConfigFor builds a Go TLS configuration implementing the trust decision, for HTTP
// clients other than the SOAP one (datastore and NFC transfers).
func tlsConfigFor(mode trustMode, host, thumbprint string) *tls.Config {
	switch mode {
	case trustInsecure:
		return &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the operator's explicit choice
	case trustPinned:
		return &tls.Config{
			// Chain and name checks are replaced by the pin, as govmomi does for thumbprints:
			// vCenter certificates are often self-signed and reached by IP.
			InsecureSkipVerify: true, //nolint:gosec // verified by VerifyConnection
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 || !thumbprintMatches(thumbprint, cs.PeerCertificates[0]) {
					return fmt.Errorf("%w: the certificate of %s no longer matches source.thumbprint", ErrUntrustedCertificate, host)
				}
				return nil
			},
		}
	default:
		return &tls.Config{ServerName: host}
	}
}
