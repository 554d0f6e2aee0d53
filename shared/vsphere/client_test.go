package vsphere_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

func TestNormalizeThumbprint(t *testing.T) {
	t.Parallel()
	sha1 := "52:6C:4E:88:1D:78:AE:12:1C:F3:BB:6C:5B:F4:E2:82:86:A7:08:AF"
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{sha1, sha1, false},
		{strings.ToLower(sha1), sha1, false},
		{strings.ReplaceAll(sha1, ":", ""), sha1, false},
		{" " + strings.ReplaceAll(sha1, ":", " ") + " ", sha1, false},
		{strings.Repeat("ab", 32), strings.TrimSuffix(strings.Repeat("AB:", 32), ":"), false},
		{"52:6C", "", true},
		{"zz" + sha1[2:], "", true},
		{"", "", true},
	}
	for _, tc := range tests {
		got, err := vsphere.NormalizeThumbprint(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("NormalizeThumbprint(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestConnect covers the trust decision, credentials and URL forms against a simulator that
// takes only one user and password.
func TestConnect(t *testing.T) {
	t.Parallel()
	const password = "Pa55-w0rd!"
	s := startSim(t, vcsim.Config{Username: "admin", Password: password})
	cert := serverCert(t, s)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name     string
		edit     func(*vsphere.Config)
		wantErr  error
		wantText []string // the error says all of these
	}{
		{name: "pinned SHA-1 as printed by the simulator", edit: func(c *vsphere.Config) {}},
		{name: "pinned SHA-1 lower case without colons", edit: func(c *vsphere.Config) {
			c.Thumbprint = strings.ToLower(strings.ReplaceAll(s.Thumbprint, ":", ""))
		}},
		{name: "pinned SHA-256", edit: func(c *vsphere.Config) { c.Thumbprint = vsphere.ThumbprintSHA256(cert) }},
		{name: "insecure", edit: func(c *vsphere.Config) { c.Thumbprint, c.Insecure = "", true }},
		{name: "host:port URL", edit: func(c *vsphere.Config) { c.URL = s.URL.Host }},
		{name: "https URL without /sdk", edit: func(c *vsphere.Config) { c.URL = "https://" + s.URL.Host }},
		{name: "datacenter", edit: func(c *vsphere.Config) { c.Datacenter = "DC0" }},
		{
			name:     "neither insecure nor thumbprint",
			edit:     func(c *vsphere.Config) { c.Thumbprint = "" },
			wantErr:  vsphere.ErrUntrustedCertificate,
			wantText: []string{"source.insecure", "source.thumbprint", s.Thumbprint, "unknown authority"},
		},
		{
			name:     "wrong thumbprint",
			edit:     func(c *vsphere.Config) { c.Thumbprint = strings.Repeat("AB:", 19) + "AB" },
			wantErr:  vsphere.ErrUntrustedCertificate,
			wantText: []string{"does not match", s.Thumbprint},
		},
		{
			name:     "wrong password",
			edit:     func(c *vsphere.Config) { c.Password = password + "x" },
			wantErr:  vsphere.ErrBadCredentials,
			wantText: []string{`"admin"`},
		},
		{
			name:    "wrong user",
			edit:    func(c *vsphere.Config) { c.Username = "root" },
			wantErr: vsphere.ErrBadCredentials,
		},
		{
			name:     "no password",
			edit:     func(c *vsphere.Config) { c.Password = "" },
			wantErr:  vsphere.ErrBadCredentials,
			wantText: []string{"required"},
		},
		{
			name:    "nothing listening",
			edit:    func(c *vsphere.Config) { c.URL = closedAddr },
			wantErr: vsphere.ErrUnreachable,
		},
		{
			name:    "unknown datacenter",
			edit:    func(c *vsphere.Config) { c.Datacenter = "DC9" },
			wantErr: vsphere.ErrNotFound,
		},
		{
			name:     "credentials in the URL",
			edit:     func(c *vsphere.Config) { c.URL = "https://admin:" + password + "@" + s.URL.Host },
			wantText: []string{"credentials belong in username/password"},
		},
		{
			name:     "malformed thumbprint",
			edit:     func(c *vsphere.Config) { c.Thumbprint = "not-hex" },
			wantText: []string{"source.thumbprint"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := simConfig(t, s)
			tc.edit(&cfg)
			c, err := vsphere.Connect(testCtx(t), cfg)
			if tc.wantErr == nil && tc.wantText == nil {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer c.Close(context.Background())
				if _, err := c.FindVM(testCtx(t), "DC0/vm/vm-1"); err != nil {
					t.Errorf("the session does not work: %v", err)
				}
				if c.ServerThumbprint() != s.Thumbprint {
					t.Errorf("ServerThumbprint %q, want %q", c.ServerThumbprint(), s.Thumbprint)
				}
				return
			}
			if err == nil {
				c.Close(context.Background())
				t.Fatal("Connect succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v is not %v", err, tc.wantErr)
			}
			for _, want := range tc.wantText {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("error %q contains the password", err)
			}
		})
	}
}

// TestHTTPTransportTrust: the transport handed to transfer code makes the session's trust
// decision, so a pinned client refuses a server with another certificate.
func TestHTTPTransportTrust(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{})
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(other.Close)

	tests := []struct {
		name       string
		edit       func(*vsphere.Config)
		otherOK    bool
		insecure   bool
		wantCookie bool
	}{
		{name: "pinned", edit: func(c *vsphere.Config) {}, otherOK: false, wantCookie: true},
		{name: "insecure", edit: func(c *vsphere.Config) { c.Thumbprint, c.Insecure = "", true }, otherOK: true, insecure: true, wantCookie: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := connect(t, s, tc.edit)
			if c.Insecure() != tc.insecure {
				t.Errorf("Insecure() = %v", c.Insecure())
			}
			client := &http.Client{Transport: c.HTTPTransport()}
			res, err := client.Get(s.URL.String() + "/../about")
			if err != nil {
				t.Fatalf("GET the simulator: %v", err)
			}
			res.Body.Close()
			res, err = client.Get(other.URL)
			if tc.otherOK && err != nil {
				t.Errorf("insecure transport refused another server: %v", err)
			}
			if !tc.otherOK {
				if err == nil {
					res.Body.Close()
					t.Error("pinned transport accepted a server with another certificate")
				} else if !errors.Is(err, vsphere.ErrUntrustedCertificate) {
					t.Errorf("error %v is not ErrUntrustedCertificate", err)
				}
			}
			if got := c.SessionHeader().Get("Cookie"); tc.wantCookie && !strings.HasPrefix(got, "vmware_soap_session=") {
				t.Errorf("session header Cookie %q", got)
			}
		})
	}
}
