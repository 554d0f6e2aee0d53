package netpolicy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/shared/testutil"
)

// The address rules, judged without connecting anywhere (tests never send traffic off
// loopback: something answers at 169.254.169.254 on these machines).
func TestCheckAddr(t *testing.T) {
	allowPriv := Policy{AllowPrivate: true}
	nets, err := ParseNetworks([]string{"10.20.0.0/16", "fd12:3456::/32"})
	if err != nil {
		t.Fatal(err)
	}
	withNets := Policy{AllowedNetworks: nets}
	cases := []struct {
		addr                     string
		deflt, private, networks bool // allowed by the zero policy, AllowPrivate, AllowedNetworks
	}{
		{"8.8.8.8", true, true, true},
		{"2001:4860:4860::8888", true, true, true},
		{"169.254.169.254", false, false, false},
		{"169.254.1.1", false, false, false},
		{"fd00:ec2::254", false, false, false},
		{"fe80::1", false, false, false},
		{"::ffff:169.254.169.254", false, false, false},
		{"64:ff9b::a9fe:a9fe", false, false, false}, // NAT64 of 169.254.169.254
		{"224.0.0.1", false, false, false},
		{"255.255.255.255", false, false, false},
		{"127.0.0.1", false, true, false},
		{"127.8.9.10", false, true, false},
		{"::1", false, true, false},
		{"::ffff:127.0.0.1", false, true, false},
		{"0.0.0.0", false, true, false},
		{"::", false, true, false},
		{"10.0.0.5", false, true, false},
		{"10.20.1.2", false, true, true},
		{"172.16.0.1", false, true, false},
		{"192.168.1.1", false, true, false},
		{"100.64.0.1", false, true, false},
		{"fd12:3456::1", false, true, true},
		{"fc00::1", false, true, false},
	}
	for _, tc := range cases {
		a := netip.MustParseAddr(tc.addr)
		for _, p := range []struct {
			name string
			pol  Policy
			want bool
		}{{"default", Policy{}, tc.deflt}, {"allow_private", allowPriv, tc.private}, {"allowed_networks", withNets, tc.networks}} {
			err := p.pol.CheckAddr(a)
			if (err == nil) != p.want {
				t.Errorf("%s under %s: %v, want allowed=%v", tc.addr, p.name, err, p.want)
			}
			if err != nil && !errors.Is(err, ErrRefused) {
				t.Errorf("%s: error %v is not ErrRefused", tc.addr, err)
			}
			// The dial-time hook judges exactly the same way.
			cerr := p.pol.Control("tcp", netip.AddrPortFrom(a, 443).String(), nil)
			if (cerr == nil) != p.want {
				t.Errorf("%s under %s: Control %v, want allowed=%v", tc.addr, p.name, cerr, p.want)
			}
		}
	}
}

func TestCheckURL(t *testing.T) {
	cases := []struct {
		url  string
		pol  Policy
		want bool
	}{
		{"https://vcenter.example.com/sdk", Policy{}, true},
		{"http://vcenter.example.com/sdk", Policy{}, false},
		{"http://vcenter.example.com/sdk", Policy{AllowHTTP: true}, true},
		{"ftp://vcenter.example.com/", Policy{AllowHTTP: true}, false},
		{"https://169.254.169.254/latest", Policy{AllowPrivate: true}, false},
		{"https://[fd00:ec2::254]/", Policy{AllowPrivate: true}, false},
		{"https://127.0.0.1:8443/", Policy{}, false},
		{"https://127.0.0.1:8443/", Policy{AllowPrivate: true}, true},
		// A name is judged when it is dialled, not here.
		{"https://localhost:8443/", Policy{}, true},
	}
	for _, tc := range cases {
		u, _ := url.Parse(tc.url)
		if err := tc.pol.CheckURL(u); (err == nil) != tc.want {
			t.Errorf("%s %+v: %v, want allowed=%v", tc.url, tc.pol, err, tc.want)
		}
	}
}

// The dialer refuses before connecting: a loopback listener sees no connection, whether
// it is named by address or by a name that resolves to it (the rebinding case).
func TestDialerRefusesBeforeConnecting(t *testing.T) {
	addr, accepted := testutil.CountingListener(t, false)
	_, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, target := range []string{addr, net.JoinHostPort("localhost", port)} {
		c, err := Policy{}.Dialer(time.Second).DialContext(ctx, "tcp", target)
		if err == nil {
			c.Close()
			t.Fatalf("dial %s: allowed", target)
		}
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("dial %s: %v, want ErrRefused", target, err)
		}
	}
	c, err := Policy{AllowPrivate: true}.Dialer(time.Second).DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial with allow_private: %v", err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for accepted.Load() < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("listener accepted %d connections, want exactly the 1 allowed one", n)
	}
}
