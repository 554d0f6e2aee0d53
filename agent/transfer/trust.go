package transfer

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Trust is the TLS trust decision for the source (vCenter/ESXi). Exactly one way applies, in
// this order: TLSConfig, Thumbprint, Insecure, CAFile, else the system roots.
type Trust struct {
	// Insecure skips certificate verification entirely.
	Insecure bool
	// CAFile is a PEM bundle of CAs to trust instead of the system roots.
	CAFile string
	// Thumbprint pins the server's leaf certificate: SHA-1 (vSphere's usual form) or
	// SHA-256, hex, with or without colons.
	Thumbprint string
	// TLSConfig is used as is (cloned), e.g. the one the govmomi session already trusts.
	TLSConfig *tls.Config
}

// clientConfig builds the Go TLS configuration.
func (t Trust) clientConfig() (*tls.Config, error) {
	switch {
	case t.TLSConfig != nil:
		return t.TLSConfig.Clone(), nil
	case t.Thumbprint != "":
		want, err := parseThumbprint(t.Thumbprint)
		if err != nil {
			return nil, err
		}
		return &tls.Config{
			// Chain and name checks are replaced by the pin, as govmomi does for thumbprints:
			// vCenter certificates are often self-signed and reached by IP.
			InsecureSkipVerify: true, //nolint:gosec // verified by VerifyConnection below
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("server sent no certificate")
				}
				got := thumbprintOf(cs.PeerCertificates[0], len(want))
				if !strings.EqualFold(got, hex.EncodeToString(want)) {
					return fmt.Errorf("certificate thumbprint %s does not match the pinned %s", colonHex(got), colonHex(hex.EncodeToString(want)))
				}
				return nil
			},
		}, nil
	case t.Insecure:
		return &tls.Config{InsecureSkipVerify: true}, nil //nolint:gosec // operator's explicit choice
	case t.CAFile != "":
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", t.CAFile)
		}
		return &tls.Config{RootCAs: pool}, nil
	default:
		return &tls.Config{}, nil
	}
}

// httpClient is the client for one stream (descriptor, HEAD, the NFC stream): no overall
// timeout (the NFC stream is long) but bounded connection setup so a dead host fails fast.
func (t Trust) httpClient() (*http.Client, error) { return t.httpClientConns(1) }

// httpClientConns is a client that keeps up to conns connections to a host alive, one per
// copier worker, so range requests never wait for a TCP and TLS handshake after the first.
func (t Trust) httpClientConns(conns int) (*http.Client, error) {
	cfg, err := t.clientConfig()
	if err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: cfg,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, connReadBuffer)}, nil
		},
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		MaxIdleConnsPerHost:   max(conns, 2),
		MaxConnsPerHost:       max(conns, 2),
		IdleConnTimeout:       90 * time.Second,
		// Disk bytes are incompressible or already deflated; gzip would only cost CPU.
		DisableCompression: true,
		// Small, so that the large reads of the copier and the nfc decoder (pieces, grains)
		// go from TLS straight into their buffers instead of being copied through this one.
		ReadBufferSize:    16 << 10,
		WriteBufferSize:   64 << 10,
		ForceAttemptHTTP2: false,
	}
	return &http.Client{Transport: tr}, nil
}

// connReadBuffer is how much one read from the socket may take. TLS alone reads a record
// (16 KiB) at a time; on a host where a system call costs a hypervisor exit, reading what
// the socket holds in one call halves the CPU spent receiving a disk.
const connReadBuffer = 512 << 10

// bufferedConn reads the TCP connection through a large buffer (under TLS).
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func parseThumbprint(s string) ([]byte, error) {
	h := strings.NewReplacer(":", "", " ", "", "-", "").Replace(strings.TrimSpace(s))
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != sha1.Size && len(b) != sha256.Size) {
		return nil, fmt.Errorf("thumbprint %q is neither a SHA-1 nor a SHA-256 hex digest", s)
	}
	return b, nil
}

func thumbprintOf(c *x509.Certificate, size int) string {
	if size == sha1.Size {
		s := sha1.Sum(c.Raw) //nolint:gosec // vSphere's thumbprint format, used as a pin
		return hex.EncodeToString(s[:])
	}
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

func colonHex(h string) string {
	h = strings.ToUpper(h)
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i:min(i+2, len(h))])
	}
	return b.String()
}

// isCertError reports a certificate the trust rejects: no retry will change that.
func isCertError(err error) bool {
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	var tve *tls.CertificateVerificationError
	return errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) || errors.As(err, &tve) ||
		strings.Contains(err.Error(), "does not match the pinned")
}

// tlsHint turns a certificate failure into the fix an operator needs.
func tlsHint(err error) error {
	if isCertError(err) {
		return fmt.Errorf("%w: untrusted source certificate (set source.insecure or pin source.thumbprint): %v", ErrSource, err)
	}
	return fmt.Errorf("%w: %v", ErrSource, err)
}
