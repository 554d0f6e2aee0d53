package api

import "net/http"

// fromPeer reports whether the request comes from a peer controller, proven by a client
// certificate of the cluster CA. The https listener asks for client certificates only
// when cluster TLS is on and verifies them against the cluster CA alone
// (controller.peerServerTLS), so a verified chain here means a peer. An address or a
// header proves nothing: any process on a controller's host shares its address, and
// anyone can set X-Hypersdk-Forwarded-By.
func fromPeer(r *http.Request) bool {
	return r.TLS != nil && len(r.TLS.VerifiedChains) > 0
}

// peerJoin reports a join (or re-registration) called by a peer controller: its
// certificate authenticates it, so controllers that keep only token_sha256 (and so have
// no clear token to present) can join.
func peerJoin(r *http.Request) bool {
	return r.URL.Path == "/cluster/join" && r.Method == http.MethodPost && fromPeer(r)
}
