package vsphere_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os/exec"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

const mib = 1 << 20

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startSim starts a simulator for one test; small disks keep tests fast.
func startSim(t *testing.T, cfg vcsim.Config) *vcsim.Sim {
	t.Helper()
	if cfg.DiskSize == 0 {
		cfg.DiskSize = 2 * mib
	}
	cfg.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := vcsim.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("vcsim.Start: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// simConfig is a client configuration for the simulator that pins its certificate.
func simConfig(t *testing.T, s *vcsim.Sim) vsphere.Config {
	return vsphere.Config{
		URL:        s.URL.String(),
		Username:   s.Username,
		Password:   s.Password,
		Thumbprint: s.Thumbprint,
		Logger:     testLogger(t),
	}
}

// connect logs in to the simulator and logs out at cleanup.
func connect(t *testing.T, s *vcsim.Sim, edit ...func(*vsphere.Config)) *vsphere.Client {
	t.Helper()
	cfg := simConfig(t, s)
	for _, e := range edit {
		e(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := vsphere.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func findVM(t *testing.T, c *vsphere.Client, path string) *vsphere.VM {
	t.Helper()
	vm, err := c.FindVM(context.Background(), path)
	if err != nil {
		t.Fatalf("FindVM %s: %v", path, err)
	}
	return vm
}

// serverCert fetches the simulator's certificate, to compute thumbprints the way an
// operator would (openssl s_client).
func serverCert(t *testing.T, s *vcsim.Sim) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", s.URL.Host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func requireQemuImg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed: run scripts/host-setup.sh")
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
