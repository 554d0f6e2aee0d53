// Package netpolicy decides where a controller may connect on a caller's behalf: VM
// discovery (/vms/*) with the caller's vCenter URL, webhook tests and deliveries, the
// vCenter a schedule's glob is expanded against. Without it a viewer could make the
// controller probe any host and port (a port scanner behind the firewall, a reader of
// cloud metadata services).
//
// The rules:
//   - https only, unless AllowHTTP;
//   - link-local and metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254) are
//     always refused, as are multicast and broadcast;
//   - loopback, private (RFC 1918, unique-local, carrier-grade NAT) and unspecified
//     addresses only with AllowPrivate, or when inside one of AllowedNetworks;
//   - public addresses are allowed.
//
// The address check runs at dial time, in the dialer's Control hook, on the address the
// connection is really made to: a name that resolves to a public address when checked
// and to a private one when dialled (DNS rebinding) is still refused.
package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// ErrRefused marks a connection the policy does not allow. Callers that answer users
// must not tell it apart from other connection failures (see the package doc).
var ErrRefused = errors.New("target not allowed by the outbound policy")

// Policy is the outbound policy. The zero value allows public https targets only.
type Policy struct {
	// AllowHTTP permits plain http:// targets.
	AllowHTTP bool
	// AllowPrivate permits loopback, private and unspecified addresses.
	AllowPrivate bool
	// AllowedNetworks are permitted even when private (never link-local or metadata).
	AllowedNetworks []netip.Prefix
}

// ParseNetworks parses CIDR prefixes ("10.20.0.0/16", "fd12::/48") for AllowedNetworks.
func ParseNetworks(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR prefix: %v", c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

var (
	// alwaysRefused are never a legitimate target of a request: cloud metadata and
	// other link-local services answer there.
	alwaysRefused = []netip.Prefix{
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("fe80::/10"),
		netip.MustParsePrefix("fd00:ec2::254/128"),
		netip.MustParsePrefix("255.255.255.255/32"),
	}
	// private are reachable only where the operator allows them.
	private = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"), // "this network": 0.0.0.0 dials the local host
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("::/128"),
		netip.MustParsePrefix("fc00::/7"),
	}
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
)

func within(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// CheckAddr says whether the policy allows connecting to a.
func (p Policy) CheckAddr(a netip.Addr) error {
	a = a.Unmap()
	if a.Is6() && nat64.Contains(a) {
		// A NAT64 address reaches the IPv4 address it embeds: judge that one.
		b := a.As16()
		a = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	switch {
	case !a.IsValid():
		return fmt.Errorf("%w: no address", ErrRefused)
	case within(a, alwaysRefused), a.IsLinkLocalUnicast(), a.IsMulticast(), a.IsLinkLocalMulticast():
		return fmt.Errorf("%w: %s is a link-local, metadata or multicast address", ErrRefused, a)
	case within(a, p.AllowedNetworks):
		return nil
	case (within(a, private) || a.IsLoopback() || a.IsPrivate() || a.IsUnspecified()) && !p.AllowPrivate:
		return fmt.Errorf("%w: %s is a loopback or private address (security.allow_private_targets, security.allowed_target_networks)", ErrRefused, a)
	}
	return nil
}

// CheckURL checks a target URL before anything is dialled: its scheme, and its host when
// that is an address literal (a name is checked when dialled).
func (p Policy) CheckURL(u *url.URL) error {
	switch strings.ToLower(u.Scheme) {
	case "https":
	case "http":
		if !p.AllowHTTP {
			return fmt.Errorf("%w: http:// targets are not allowed, use https (security.allow_http_targets)", ErrRefused)
		}
	default:
		return fmt.Errorf("%w: scheme %q", ErrRefused, u.Scheme)
	}
	if a, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil {
		return p.CheckAddr(a)
	}
	return nil
}

// Control is a net.Dialer Control hook: it runs after name resolution, just before the
// socket connects, and refuses an address the policy does not allow, so nothing is sent.
func (p Policy) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrRefused, address, err)
	}
	return p.CheckAddr(ap.Addr())
}

// Dialer returns a dialer that enforces the policy on every connection it makes.
func (p Policy) Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: p.Control}
}

// DialContext is Dialer(timeout).DialContext, in the shape http.Transport wants.
func (p Policy) DialContext(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.Dialer(timeout).DialContext
}
