// Package api serves the HyperSDK REST API on every controller: reads from the local
// replicated state, writes applied on the leader (forwarded there from followers).
package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/cluster"
	"github.com/hypersdk/hypersdk/controller/metrics"
	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/netpolicy"
	"github.com/hypersdk/hypersdk/shared/secrets"
)

// Store is the replicated state as the API reads it (controller/state.State).
type Store interface {
	Job(id string) (*proto.Job, bool)
	Query(q proto.QueryRequest) (state.QueryResult, error)
	Counts() map[proto.JobStatus]int
	RunningByAgent() map[string]int
	Node(id string) (state.NodeInfo, bool)
	Nodes() []state.NodeInfo
	Schedule(id string) (proto.Schedule, bool)
	Schedules() []proto.Schedule
	ScheduleStats() proto.ScheduleStats
	Webhooks() []proto.Webhook
	// AppliedIndex is the raft index of the last command the state applied.
	AppliedIndex() uint64
	// AgentControlOf and AgentEverSeen: the operator's cordons (cordon.go).
	AgentControlOf(agent string) (state.AgentControl, bool)
	AgentEverSeen(agent string) bool
	// ActiveJobForVM: a pending or running job of the source VM (submit.go).
	ActiveJobForVM(vmPath, vcenterKey string) (*proto.Job, bool)
}

// Raft is the controller's raft node as the API uses it (controller/cluster.Node): who
// leads, applying commands on the leader, and the membership.
type Raft interface {
	ID() string
	IsLeader() bool
	Leader() (id, raftAddr string)
	State() string
	Indexes() (commit, applied uint64)
	LastIndex() uint64
	// Sync says whether this node's state may answer reads (caught up with the leader).
	Sync() cluster.SyncStatus
	// Peers is every member as the leader sees it (ok false on a follower).
	Peers() (peers []cluster.PeerStatus, ok bool)
	Apply(cmd []byte) (any, error)
	Servers() ([]cluster.Server, error)
	Join(id, raftAddr string) error
	Remove(id string) error
}

// Fleet is the part of the agent view the API shows (nil until agents exist).
type Fleet interface {
	// Slots returns the fleet's job slots and the busy ones.
	Slots() (total, busy int)
}

// Config configures the API server. Zero values mean defaults.
type Config struct {
	NodeID string
	// MaxBodyBytes limits request bodies (413 beyond).
	MaxBodyBytes int64
	// LeaderWait is how long a write waits for a leader to appear before answering 503.
	LeaderWait time.Duration
	// MaxAttempts is stamped into jobs that don't set options.max_attempts.
	MaxAttempts int
	// ForwardScheme is http or https for leader forwarding.
	ForwardScheme string
	// ForwardTLS verifies the leader when forwarding over https.
	ForwardTLS *tls.Config
	// DisableMetrics removes /metrics (metrics.enabled: false).
	DisableMetrics bool
	// Tokens are the API bearer tokens (none: no authentication).
	Tokens []Token
	// RateLimit bounds requests per client.
	RateLimit RateLimit
	// Secrets seals passwords before they enter the raft log (nil: stored as sent).
	Secrets *secrets.Box
	// Outbound is where /vms/* and webhook URLs may point (shared/netpolicy).
	Outbound netpolicy.Policy
	// Advertise is this API's address as other controllers reach it, and AllowedHosts
	// further names a Host header may carry in no-token mode (browser.go).
	Advertise    string
	AllowedHosts []string
	// SavedNodes are the controllers' addresses this node saved to its data dir, shown by
	// GET /cluster for members the replicated state does not name yet (after a restart,
	// until the log is replayed). Nil: none.
	SavedNodes func() []state.NodeInfo
	Logger     *slog.Logger
}

func (c *Config) fill() {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.LeaderWait <= 0 {
		c.LeaderWait = 3 * time.Second
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = state.DefaultMaxAttempts
	}
	if c.ForwardScheme == "" {
		c.ForwardScheme = "http"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Server is the HTTP API of one controller.
type Server struct {
	cfg     Config
	log     *slog.Logger
	st      Store
	node    Raft
	metrics *metrics.Metrics
	fleet   Fleet
	agents  AgentsConfig
	auth    *Auth
	limiter *limiter
	// allowedHosts are the names a Host header may carry in no-token mode (browser.go).
	allowedHosts []string
	// validation: pre-flight checks (validate.go).
	validation ValidatorConfig
	router     *mux.Router
	client     *http.Client
	started    time.Time
	now        func() time.Time
	newID      func() string
}

// New builds the API server and its routes. It fails only on an invalid token list.
func New(cfg Config, st Store, node Raft, m *metrics.Metrics) (*Server, error) {
	cfg.fill()
	auth, err := NewAuth(cfg.Tokens)
	if err != nil {
		return nil, err
	}
	s := &Server{auth: auth, limiter: newLimiter(cfg.RateLimit),
		cfg: cfg, log: cfg.Logger.With("component", "api"), st: st, node: node, metrics: m,
		router: mux.NewRouter(), started: time.Now(), now: func() time.Time { return time.Now().UTC() },
		newID: newUUID, allowedHosts: hostNames(cfg.Advertise, cfg.AllowedHosts),
	}
	s.client = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     cfg.ForwardTLS,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     60 * time.Second,
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		},
	}
	s.routes()
	return s, nil
}

// SetFleet wires the agent view (worker slots in /status).
func (s *Server) SetFleet(f Fleet) { s.fleet = f }

// Router exposes the router so other packages (agents, schedules, ...) add their routes.
func (s *Server) Router() *mux.Router { return s.router }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

func (s *Server) routes() {
	r := s.router
	r.Use(s.recoverMiddleware, s.instrument, s.guardBrowsers, s.authMiddleware, s.rateLimitMiddleware, s.freshReads)
	r.HandleFunc("/health", s.handleHealth).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/status", s.handleStatus).Methods(http.MethodGet)
	r.HandleFunc("/jobs/submit", s.handleSubmit).Methods(http.MethodPost)
	r.HandleFunc("/jobs/query", s.handleQuery).Methods(http.MethodPost)
	r.HandleFunc("/jobs/cancel", s.handleCancel).Methods(http.MethodPost)
	r.HandleFunc("/jobs/{id}", s.handleGetJob).Methods(http.MethodGet)
	r.HandleFunc("/jobs/{id}/cutover", s.handleCutover).Methods(http.MethodPost)
	r.HandleFunc("/cluster", s.handleCluster).Methods(http.MethodGet)
	r.HandleFunc("/cluster/join", s.handleJoin).Methods(http.MethodPost)
	r.HandleFunc("/cluster/nodes/{id}", s.handleRemoveNode).Methods(http.MethodDelete)
	if !s.cfg.DisableMetrics {
		r.Handle("/metrics", s.metrics.Handler()).Methods(http.MethodGet)
	}
	r.NotFoundHandler = s.unmatched(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	}))
	r.MethodNotAllowedHandler = s.unmatched(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path))
	}))
}

// statusRecorder remembers the status code for metrics.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Hijack/Flush (WebSocket, streaming).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// instrument records metrics labelled by the route template, never the raw path (raw
// paths would create a series per job id).
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := "unmatched"
		if route := mux.CurrentRoute(r); route != nil {
			if t, err := route.GetPathTemplate(); err == nil {
				path = t
			}
		}
		s.observe(path, next, w, r)
	})
}

func (s *Server) unmatched(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.observe("unmatched", h, w, r) })
}

func (s *Server) observe(path string, h http.Handler, w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	h.ServeHTTP(rec, r)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	if s.metrics != nil {
		s.metrics.ObserveRequest(r.Method, path, rec.status, time.Since(start).Seconds())
	}
}

func (s *Server) recoverMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				writeError(w, http.StatusInternalServerError, "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// sealPassword seals a job's (or template's) password on the leader before it is proposed.
func (s *Server) sealPassword(d *proto.JobDefinition) error {
	if d == nil {
		return nil
	}
	sealed, err := s.cfg.Secrets.Seal(d.Source.Password)
	if err != nil {
		return fmt.Errorf("seal password: %w", err)
	}
	d.Source.Password = sealed
	return nil
}

// writeJSON writes v with a status code.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, proto.ErrorResponse{Error: msg})
}

func writeUnavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, msg)
}

// ErrBodyTooLarge is returned by readBody beyond the configured limit.
var ErrBodyTooLarge = errors.New("request body too large")

// readBody reads the whole body within the limit.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.ContentLength > s.cfg.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", s.cfg.MaxBodyBytes))
		return nil, false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", s.cfg.MaxBodyBytes))
		} else {
			writeError(w, http.StatusBadRequest, "could not read request body: "+err.Error())
		}
		return nil, false
	}
	return b, true
}

// validator is a request body that checks itself.
type validator interface{ Validate() error }

// readRequest reads a body, decodes it strictly into a T and validates it. On failure it
// has written the 4xx answer and ok is false. body is kept for forwarding to the leader.
func readRequest[T any, P interface {
	*T
	validator
}](s *Server, w http.ResponseWriter, r *http.Request, allowEmpty bool) (body []byte, req T, ok bool) {
	if body, ok = s.readBody(w, r); !ok {
		return nil, req, false
	}
	if err := decodeStrict(body, &req, allowEmpty); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return nil, req, false
	}
	if err := P(&req).Validate(); err != nil {
		writeError(w, invalidStatus(err), err.Error())
		return nil, req, false
	}
	return body, req, true
}

// decodeStrict decodes exactly one JSON object with no unknown fields (proto.DecodeStrict).
func decodeStrict(b []byte, v any, allowEmpty bool) error {
	return proto.DecodeStrict(b, v, allowEmpty)
}

// errStatus maps sentinel errors to HTTP status codes in one place.
func errStatus(err error) int {
	switch {
	case errors.Is(err, proto.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, proto.ErrInvalid), errors.Is(err, state.ErrInvalidCursor), errors.Is(err, state.ErrBadCommand):
		return http.StatusBadRequest
	case errors.Is(err, state.ErrNotFound), errors.Is(err, cluster.ErrUnknownNode):
		return http.StatusNotFound
	case errors.Is(err, state.ErrExists), errors.Is(err, state.ErrStaleLease), errors.Is(err, state.ErrInvalidState):
		return http.StatusConflict
	case errors.Is(err, cluster.ErrNotLeader), errors.Is(err, cluster.ErrNoLeader), errors.Is(err, cluster.ErrLeadershipLost),
		errors.Is(err, cluster.ErrShutdown), errors.Is(err, cluster.ErrTimeout):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// invalidStatus is the status of a request that failed validation: 413 for a definition
// over its size bound, else 400.
func invalidStatus(err error) int {
	if errors.Is(err, proto.ErrTooLarge) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}

func (s *Server) writeErr(w http.ResponseWriter, err error) {
	code := errStatus(err)
	if code == http.StatusServiceUnavailable {
		writeUnavailable(w, err.Error())
		return
	}
	if code == http.StatusInternalServerError {
		s.log.Error("request failed", "err", err)
	}
	writeError(w, code, err.Error())
}

// forwardedHeader marks a request a follower forwarded, so it is never forwarded twice.
const forwardedHeader = "X-Hypersdk-Forwarded-By"

// Leader describes where writes go.
type leaderTarget struct {
	self    bool
	id      string
	apiAddr string
}

// findLeader waits (up to LeaderWait) until a leader is known, and its API address too.
func (s *Server) findLeader(ctx context.Context) (leaderTarget, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LeaderWait)
	defer cancel()
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		if s.node.IsLeader() {
			return leaderTarget{self: true, id: s.node.ID()}, nil
		}
		if id, _ := s.node.Leader(); id != "" && id != s.node.ID() {
			if n, ok := s.st.Node(id); ok && n.APIAddr != "" {
				return leaderTarget{id: id, apiAddr: n.APIAddr}, nil
			}
		}
		select {
		case <-ctx.Done():
			return leaderTarget{}, cluster.ErrNoLeader
		case <-t.C:
		}
	}
}

// write runs apply on the leader, or forwards the raw request (body already read) to it
// and copies its answer back unchanged.
func (s *Server) write(w http.ResponseWriter, r *http.Request, body []byte, apply func() (int, any, error)) {
	deadline := time.Now().Add(s.cfg.LeaderWait)
	for {
		lt, err := s.findLeader(r.Context())
		if err != nil {
			writeUnavailable(w, "no raft leader: the cluster is electing one or has lost its quorum; retry")
			return
		}
		if lt.self {
			code, v, err := apply()
			s.markApplied(w)
			// Not leader: the entry was never enqueued, so it is safe to find the new leader
			// and send it there. Leadership lost mid-commit is not retried here: the entry
			// may be committed, and the client decides (a submit answer names the job id
			// to resubmit with, which is idempotent).
			if errors.Is(err, cluster.ErrNotLeader) && time.Now().Before(deadline) && r.Header.Get(forwardedHeader) == "" {
				continue
			}
			if err != nil {
				s.writeErr(w, err)
				return
			}
			writeJSON(w, code, v)
			return
		}
		if r.Header.Get(forwardedHeader) != "" {
			// Forwarded to us but we are not the leader (leadership moved): don't chain.
			writeUnavailable(w, "leader changed while the request was forwarded; retry")
			return
		}
		retry, err := s.forward(w, r, body, lt)
		if err == nil {
			return
		}
		if !retry || time.Now().After(deadline) {
			s.metrics.Forwarded.WithLabelValues("error").Inc()
			writeUnavailable(w, fmt.Sprintf("leader %s unreachable: %v", lt.id, err))
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// forward sends the request to the leader. retry reports that the leader never saw it
// (connection refused), so trying the next leader cannot apply it twice.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, body []byte, lt leaderTarget) (retry bool, err error) {
	u := s.cfg.ForwardScheme + "://" + lt.apiAddr + r.URL.RequestURI()
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	// The agent's join token and credential travel too: the leader authenticates the
	// agent itself (dropping them left agents of a follower with 401 after a leader change).
	for _, h := range []string{"Content-Type", "Authorization", "Accept", proto.AgentTokenHeader, proto.AgentCredentialHeader} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	req.Header.Set(forwardedHeader, s.node.ID())
	resp, err := s.client.Do(req)
	if err != nil {
		var op *net.OpError
		return errors.As(err, &op) && op.Op == "dial", err
	}
	defer resp.Body.Close()
	// Read the answer before waiting: the leader's connection is not held meanwhile.
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return false, err
	}
	for _, h := range []string{"Content-Type", "Retry-After", appliedIndexHeader} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	if v := resp.Header.Get(appliedIndexHeader); v != "" {
		s.waitApplied(r.Context(), v)
	}
	w.Header().Set("X-Hypersdk-Leader", lt.id)
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
	s.metrics.Forwarded.WithLabelValues(strconv.Itoa(resp.StatusCode)).Inc()
	return false, nil
}
