package api

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Browser guard: with no token configured the API trusts whoever reaches it, which is
// meant to be the processes of this host (the controller then listens on loopback only).
// A browser on this host reaches loopback too, on behalf of any web page it shows:
//   - a cross-site form or fetch() can POST text/plain without a CORS preflight, so
//     writes must say Content-Type: application/json (which needs a preflight this API
//     never grants);
//   - a page from another origin carries its Origin header: anything but this API's own
//     origin is refused;
//   - DNS rebinding points an attacker's name at 127.0.0.1 and then reads the answers as
//     same-origin, so the Host header must name this controller: an address literal,
//     localhost, the advertised name or a configured one (api.allowed_hosts). Rebinding
//     needs a name, never an address literal.
// Peer controllers proven by their certificate skip it; with tokens it is not needed (a
// browser never attaches a bearer token by itself).

// guardBrowsers applies the rules above in no-token mode.
func (s *Server) guardBrowsers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.auth.Enabled() || r.URL.Path == "/health" || fromPeer(r) {
			next.ServeHTTP(w, r)
			return
		}
		if !s.hostAllowed(r.Host) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("Host %q does not name this controller: use its address, localhost or a name in api.allowed_hosts", r.Host))
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("cross-origin request from %q refused", o))
			return
		}
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
				writeError(w, http.StatusUnsupportedMediaType, "writes need Content-Type: application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// hostAllowed reports whether a Host header names this controller.
func (s *Server) hostAllowed(host string) bool {
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.TrimSuffix(strings.Trim(name, "[]"), ".")
	if name == "" {
		return false
	}
	if net.ParseIP(name) != nil || strings.EqualFold(name, "localhost") {
		return true
	}
	for _, a := range s.allowedHosts {
		if strings.EqualFold(name, a) {
			return true
		}
	}
	return false
}

// sameOrigin reports whether an Origin header is this API's own origin (the dashboard).
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return false // includes "null": sandboxed frames, file: pages
	}
	return strings.EqualFold(u.Host, host)
}

// hostNames are the names a Host header may carry besides address literals: the
// configured ones and the host of the advertised API address.
func hostNames(advertise string, configured []string) []string {
	out := append([]string(nil), configured...)
	if h, _, err := net.SplitHostPort(advertise); err == nil && h != "" && net.ParseIP(h) == nil {
		out = append(out, h)
	}
	return out
}
