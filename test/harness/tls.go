package harness

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hypersdk/hypersdk/test/fleettest"
)

// harnessCA is the harness's certificate authority, one per test process: Client trusts it, and
// the controllers of StartTLSControllers present certificates it signed to their clients
// and to each other (raft, forwarding and joins run over mutual TLS with it).
var harnessCA = func() *fleettest.TestCA {
	c, err := fleettest.NewCA("hypersdk harness CA")
	if err != nil {
		panic(fmt.Sprintf("harness CA: %v", err))
	}
	return c
}()

// clientTLS trusts the harness CA (and nothing else: controllers are the only https
// servers the harness client talks to).
func clientTLS() *tls.Config { return &tls.Config{RootCAs: harnessCA.Pool()} }

// TLSFiles are the harness CA and a controller certificate of it (127.0.0.1, localhost,
// serverAuth and clientAuth) on disk.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// WriteTLS writes the harness CA and a new controller certificate into dir/tls.
func WriteTLS(t testing.TB, dir string) TLSFiles {
	t.Helper()
	d := filepath.Join(dir, "tls")
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	var f TLSFiles
	f.CAFile, f.CertFile, f.KeyFile = harnessCA.WriteFiles(t, d, "controller")
	return f
}

// APIConfig is the controller YAML section that serves the API over https with these
// files; with the ca_file it is also the cluster's mutual TLS.
func (f TLSFiles) APIConfig() string {
	return fmt.Sprintf("api:\n  tls: {cert_file: %q, key_file: %q, ca_file: %q}\n", f.CertFile, f.KeyFile, f.CAFile)
}

// WriteTLSConfig writes the certificates and a controller config holding only APIConfig,
// and returns the config's path (for --config) and the files.
func WriteTLSConfig(t testing.TB, dir string) (string, TLSFiles) {
	t.Helper()
	f := WriteTLS(t, dir)
	path := filepath.Join(dir, "controller-tls.yaml")
	if err := os.WriteFile(path, []byte(f.APIConfig()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, f
}
