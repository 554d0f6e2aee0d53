package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Role says what a token may do.
type Role string

const (
	// RoleAdmin may do everything.
	RoleAdmin Role = "admin"
	// RoleViewer may read: GETs, POST /jobs/query and /jobs/validate, /ws and /metrics.
	RoleViewer Role = "viewer"
)

// Token is one configured API token. Exactly one of Token and TokenSHA256 is set; only
// the hash is kept in memory.
type Token struct {
	Name        string `yaml:"name" json:"name"`
	Token       string `yaml:"token" json:"-"`
	TokenSHA256 string `yaml:"token_sha256" json:"-"`
	Role        Role   `yaml:"role" json:"role"`
}

// Auth checks bearer tokens. The zero value (no tokens) lets every request through: the
// controller then only listens on loopback unless told otherwise (see controller.New).
type Auth struct {
	tokens []authToken
}

type authToken struct {
	name string
	hash [32]byte
	role Role
}

// NewAuth validates the configured tokens.
func NewAuth(tokens []Token) (*Auth, error) {
	a := &Auth{}
	names := map[string]bool{}
	for i, t := range tokens {
		if t.Name == "" {
			return nil, fmt.Errorf("auth.tokens[%d]: name is required", i)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("auth.tokens: name %q appears twice", t.Name)
		}
		names[t.Name] = true
		if t.Role != RoleAdmin && t.Role != RoleViewer {
			return nil, fmt.Errorf("auth.tokens[%s]: role %q is not admin or viewer", t.Name, t.Role)
		}
		var at authToken
		at.name, at.role = t.Name, t.Role
		switch {
		case t.Token != "" && t.TokenSHA256 != "":
			return nil, fmt.Errorf("auth.tokens[%s]: set token or token_sha256, not both", t.Name)
		case t.Token != "":
			if len(t.Token) < 16 {
				return nil, fmt.Errorf("auth.tokens[%s]: token is shorter than 16 characters", t.Name)
			}
			at.hash = sha256.Sum256([]byte(t.Token))
		case t.TokenSHA256 != "":
			b, err := hex.DecodeString(strings.TrimSpace(t.TokenSHA256))
			if err != nil || len(b) != 32 {
				return nil, fmt.Errorf("auth.tokens[%s]: token_sha256 is not 64 hex digits", t.Name)
			}
			copy(at.hash[:], b)
		default:
			return nil, fmt.Errorf("auth.tokens[%s]: token or token_sha256 is required", t.Name)
		}
		a.tokens = append(a.tokens, at)
	}
	return a, nil
}

// Enabled reports whether any token is configured.
func (a *Auth) Enabled() bool { return a != nil && len(a.tokens) > 0 }

// errBadToken is the one answer to a missing or wrong token: which of the two it was is
// not worth telling an attacker.
var errBadToken = errors.New("missing or invalid bearer token")

// identify returns the token's name and role. Every configured hash is compared in
// constant time, so timing tells nothing about which token almost matched.
func (a *Auth) identify(r *http.Request) (string, Role, error) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		// Browsers cannot set headers on a WebSocket handshake: accept ?token= there only.
		if r.URL.Path == "/ws" {
			tok = r.URL.Query().Get("token")
		}
	}
	if tok == "" {
		return "", "", errBadToken
	}
	sum := sha256.Sum256([]byte(tok))
	var name string
	var role Role
	for _, t := range a.tokens {
		if subtle.ConstantTimeCompare(sum[:], t.hash[:]) == 1 {
			name, role = t.name, t.role
		}
	}
	if name == "" {
		return "", "", errBadToken
	}
	return name, role, nil
}

// readOnly reports whether a request only reads (what a viewer may do). /vms/* are not
// reads of this cluster: they log in to a vCenter with credentials the caller supplies,
// from the controller's network position, so they need an admin.
func readOnly(r *http.Request) bool {
	if strings.HasPrefix(r.URL.Path, "/vms/") {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	// Validation stores nothing: it reads the vCenter (as a viewer's GET /vms/list does) and
	// the fleet, so a planner without write rights can check a wave.
	return r.Method == http.MethodPost && (r.URL.Path == "/jobs/query" || r.URL.Path == "/jobs/validate")
}

// authMiddleware enforces tokens and roles on the user API. /health stays open; the agent
// API has its own check (agentid.go), which takes no API token: no user token ever
// receives a clear vCenter password.
func (s *Server) authMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.auth.Enabled() || r.URL.Path == "/health" || strings.HasPrefix(r.URL.Path, "/agent/v1/") || strings.HasPrefix(r.URL.Path, "/ui") || peerJoin(r) {
			next.ServeHTTP(w, r)
			return
		}
		_, role, err := s.auth.identify(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hypersdk"`)
			writeError(w, http.StatusUnauthorized, err.Error())
			return
		}
		if role != RoleAdmin && !readOnly(r) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("role %s may only read; %s %s needs an admin token", role, r.Method, r.URL.Path))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// RateLimit configures per-client request limits. Zero RequestsPerSecond disables them.
type RateLimit struct {
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	Burst             int     `yaml:"burst"`
}

// limiter keeps one token bucket per client (token name when authenticated, else the
// remote IP), forgetting idle clients so the map stays bounded.
type limiter struct {
	cfg     RateLimit
	mu      sync.Mutex
	clients map[string]*clientLimit
	lastGC  time.Time
}

type clientLimit struct {
	lim  *rate.Limiter
	seen time.Time
}

func newLimiter(cfg RateLimit) *limiter {
	if cfg.RequestsPerSecond <= 0 {
		return nil
	}
	if cfg.Burst <= 0 {
		cfg.Burst = int(2 * cfg.RequestsPerSecond)
	}
	return &limiter{cfg: cfg, clients: map[string]*clientLimit{}}
}

// maxTrackedClients bounds the limiter's memory under a flood from many addresses.
const maxTrackedClients = 100000

func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastGC) > time.Minute || len(l.clients) > maxTrackedClients {
		for k, c := range l.clients {
			if now.Sub(c.seen) > 5*time.Minute {
				delete(l.clients, k)
			}
		}
		l.lastGC = now
	}
	c, ok := l.clients[key]
	if !ok {
		if len(l.clients) >= maxTrackedClients {
			return false, time.Second
		}
		c = &clientLimit{lim: rate.NewLimiter(rate.Limit(l.cfg.RequestsPerSecond), l.cfg.Burst)}
		l.clients[key] = c
	}
	c.seen = now
	res := c.lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// rateLimitMiddleware answers 429 with Retry-After beyond the per-client rate. Peer
// controllers (proven by their certificate, peer.go, never by X-Hypersdk-Forwarded-By)
// are not limited: the requests they forward were counted where they entered, and their
// joins are theirs. Agents are limited by their own slots, not here.
func (s *Server) rateLimitMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.limiter == nil || r.URL.Path == "/health" || strings.HasPrefix(r.URL.Path, "/agent/v1/") ||
			fromPeer(r) {
			next.ServeHTTP(w, r)
			return
		}
		key := clientIP(r)
		if s.auth.Enabled() {
			if name, _, err := s.auth.identify(r); err == nil {
				key = "token:" + name
			}
		}
		if ok, wait := s.limiter.allow(key, time.Now()); !ok {
			secs := int(wait.Seconds()) + 1
			w.Header().Set("Retry-After", fmt.Sprint(secs))
			writeError(w, http.StatusTooManyRequests, fmt.Sprintf("rate limit of %g requests/s exceeded; retry in %d s", s.limiter.cfg.RequestsPerSecond, secs))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
