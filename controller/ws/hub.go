// Package ws is the WebSocket hub of /ws. Every controller runs one over its own replicated
// state (every node applies every entry), so a client may connect to any node.
//
// Rules (DESIGN.md "WebSocket"):
//   - Envelope {type, timestamp, data}; on connect "jobs" then "status"; "status" every
//     StatusInterval; "job_update" on every job change; "schedule_event" on schedule runs.
//   - Each message is marshalled once per broadcast and sent to every client as one
//     websocket.PreparedMessage (the frame is built once, not once per client).
//   - A client whose bounded send buffer is full is dropped: the hub never waits for a
//     client, and apply never waits for the hub (the state subscription drops instead).
//   - With no client connected the hub holds no subscription and no ticker: no work.
package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// ErrClosed: the hub was closed.
var ErrClosed = errors.New("websocket hub closed")

// Config tunes the hub. Zero values mean the defaults.
type Config struct {
	// MaxClients caps concurrent connections (503 beyond).
	MaxClients int
	// MaxPerClient caps one client's connections (its token, or its address without
	// tokens: ClientKey), so one viewer cannot take every slot (429 beyond).
	MaxPerClient int
	// SendBuffer is how many messages may wait for one client before it is dropped.
	SendBuffer int
	// PingInterval, PongWait: a ping every 54 s; a client silent for 60 s is gone.
	PingInterval time.Duration
	PongWait     time.Duration
	// WriteWait bounds one write to a client.
	WriteWait time.Duration
	// StatusInterval is the period of "status" messages.
	StatusInterval time.Duration
	// RecentJobs is how many of the newest jobs the "jobs" message carries.
	RecentJobs int
	// EventBuffer is the state subscription's buffer.
	EventBuffer int
	// SocketBuffer fixes each connection's kernel send buffer. Left to autotuning it grows
	// to megabytes per client: a client that stopped reading would hold that much memory
	// and take that long to be noticed as slow.
	SocketBuffer int
	// CheckOrigin overrides gorilla's same-origin check (nil: same origin or no Origin).
	CheckOrigin func(*http.Request) bool
	Logger      *slog.Logger
}

// DefaultConfig returns the documented timings.
func DefaultConfig() Config {
	return Config{MaxClients: 256, MaxPerClient: 16, SendBuffer: 256, PingInterval: 54 * time.Second, PongWait: 60 * time.Second,
		WriteWait: 10 * time.Second, StatusInterval: 2 * time.Second, RecentJobs: 100, EventBuffer: 4096,
		SocketBuffer: 128 << 10}
}

func (c *Config) fill() {
	d := DefaultConfig()
	if c.MaxClients <= 0 {
		c.MaxClients = d.MaxClients
	}
	if c.MaxPerClient <= 0 {
		c.MaxPerClient = d.MaxPerClient
	}
	if c.SendBuffer < 4 {
		c.SendBuffer = max(c.SendBuffer, 0)
		if c.SendBuffer == 0 {
			c.SendBuffer = d.SendBuffer
		} else {
			c.SendBuffer = 4 // room for the two connect messages
		}
	}
	if c.PingInterval <= 0 {
		c.PingInterval = d.PingInterval
	}
	if c.PongWait <= 0 {
		c.PongWait = d.PongWait
	}
	if c.PongWait <= c.PingInterval {
		c.PongWait = c.PingInterval + c.PingInterval/9
	}
	if c.WriteWait <= 0 {
		c.WriteWait = d.WriteWait
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = d.StatusInterval
	}
	if c.RecentJobs <= 0 {
		c.RecentJobs = d.RecentJobs
	}
	if c.EventBuffer <= 0 {
		c.EventBuffer = d.EventBuffer
	}
	if c.SocketBuffer <= 0 {
		c.SocketBuffer = d.SocketBuffer
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// StatusFunc returns the data of a "status" message (the GET /status document).
type StatusFunc func() any

// Hub fans state changes out to WebSocket clients.
type Hub struct {
	cfg      Config
	log      *slog.Logger
	st       *state.State
	status   StatusFunc
	upgrader websocket.Upgrader

	register   chan *client
	unregister chan *client
	done       chan struct{}
	closeOnce  sync.Once
	wg         sync.WaitGroup

	conns   atomic.Int64 // accepted connections (for the cap)
	perMu   sync.Mutex
	per     map[string]int // connections per ClientKey
	active  atomic.Int64   // clients registered with the hub
	dropped atomic.Uint64
}

type client struct {
	conn *websocket.Conn
	send chan *websocket.PreparedMessage
}

// New starts a hub (idle until a client connects).
func New(cfg Config, st *state.State, status StatusFunc) *Hub {
	cfg.fill()
	h := &Hub{cfg: cfg, log: cfg.Logger.With("component", "ws"), st: st, status: status,
		register: make(chan *client), unregister: make(chan *client), done: make(chan struct{}), per: map[string]int{}}
	h.upgrader = websocket.Upgrader{
		ReadBufferSize: 1024, WriteBufferSize: 4096, HandshakeTimeout: 10 * time.Second,
		CheckOrigin: cfg.CheckOrigin,
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			writeError(w, status, "websocket: "+reason.Error())
		},
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.run()
	}()
	return h
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(proto.ErrorResponse{Error: msg})
}

// Clients is the number of connected clients.
func (h *Hub) Clients() int { return int(h.active.Load()) }

// Dropped is how many clients were dropped for being too slow.
func (h *Hub) Dropped() uint64 { return h.dropped.Load() }

// Close disconnects every client and stops the hub. Safe to call twice.
func (h *Hub) Close() {
	h.closeOnce.Do(func() { close(h.done) })
	h.wg.Wait()
}

// ServeHTTP upgrades GET /ws. The ResponseWriter must implement http.Hijacker.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case <-h.done:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "websocket hub is shutting down")
		return
	default:
	}
	if n := h.conns.Add(1); n > int64(h.cfg.MaxClients) {
		h.conns.Add(-1)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, "too many WebSocket clients on this controller; retry later or connect to another one")
		return
	}
	defer h.conns.Add(-1)
	key := ClientKey(r)
	if !h.takeSlot(key) {
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("this client has %d WebSocket connections to this controller already", h.cfg.MaxPerClient))
		return
	}
	defer h.giveSlot(key)
	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered
	}
	if tc, ok := conn.NetConn().(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(h.cfg.SocketBuffer)
	}
	c := &client{conn: conn, send: make(chan *websocket.PreparedMessage, h.cfg.SendBuffer)}
	select {
	case h.register <- c:
	case <-h.done:
		conn.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.writeLoop(c)
	}()
	h.readLoop(c)
	h.remove(c)
	wg.Wait()
}

type clientKey struct{}

// WithClientKey names the client a request comes from (the API sets its token's name);
// without it ClientKey is the remote address.
func WithClientKey(r *http.Request, key string) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), clientKey{}, key))
}

// ClientKey is who a WebSocket request is from, for MaxPerClient.
func ClientKey(r *http.Request) string {
	if k, ok := r.Context().Value(clientKey{}).(string); ok && k != "" {
		return k
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return "addr:" + host
}

func (h *Hub) takeSlot(key string) bool {
	h.perMu.Lock()
	defer h.perMu.Unlock()
	if h.per[key] >= h.cfg.MaxPerClient {
		return false
	}
	h.per[key]++
	return true
}

func (h *Hub) giveSlot(key string) {
	h.perMu.Lock()
	defer h.perMu.Unlock()
	if h.per[key]--; h.per[key] <= 0 {
		delete(h.per, key)
	}
}

func (h *Hub) remove(c *client) {
	select {
	case h.unregister <- c:
	case <-h.done:
	}
}

// readLoop discards what the client sends (the protocol is server → client) and keeps the
// read deadline moving with pongs, so a dead peer is noticed within PongWait.
func (h *Hub) readLoop(c *client) {
	c.conn.SetReadLimit(4096)
	_ = c.conn.SetReadDeadline(time.Now().Add(h.cfg.PongWait))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(h.cfg.PongWait))
	})
	for {
		if _, _, err := c.conn.ReadMessage(); err != nil {
			return
		}
	}
}

func (h *Hub) writeLoop(c *client) {
	ping := time.NewTicker(h.cfg.PingInterval)
	defer func() {
		ping.Stop()
		c.conn.Close() // also ends readLoop
	}()
	for {
		select {
		case m, ok := <-c.send:
			if !ok {
				// Dropped by the hub (too slow) or hub closed.
				_ = c.conn.WriteControl(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseGoingAway, "closing"), time.Now().Add(time.Second))
				return
			}
			_ = c.conn.SetWriteDeadline(time.Now().Add(h.cfg.WriteWait))
			if err := c.conn.WritePreparedMessage(m); err != nil {
				return
			}
		case <-ping.C:
			if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(h.cfg.WriteWait)); err != nil {
				return
			}
		}
	}
}

// run is the hub loop: idle (blocked on register) while nobody is connected.
func (h *Hub) run() {
	for {
		select {
		case <-h.done:
			return
		case <-h.unregister:
			// A client dropped while others were served leaves after the hub went idle.
		case c := <-h.register:
			if !h.serve(c) {
				return
			}
		}
	}
}

// serve runs while at least one client is connected; false when the hub closed.
func (h *Hub) serve(first *client) bool {
	sub := h.st.Subscribe(h.cfg.EventBuffer)
	defer sub.Close()
	ticker := time.NewTicker(h.cfg.StatusInterval)
	defer ticker.Stop()
	clients := make(map[*client]struct{})
	add := func(c *client) {
		clients[c] = struct{}{}
		h.active.Store(int64(len(clients)))
		// The subscription exists before the list is read: a change is in the list, in
		// a later job_update, or both; never in neither.
		for _, m := range []*websocket.PreparedMessage{h.jobsMessage(), h.message(proto.WSStatus, h.status())} {
			if m != nil {
				c.send <- m // the buffer holds at least 4: never blocks here
			}
		}
	}
	drop := func(c *client) {
		if _, ok := clients[c]; !ok {
			return
		}
		delete(clients, c)
		close(c.send)
		h.active.Store(int64(len(clients)))
	}
	broadcast := func(m *websocket.PreparedMessage) {
		if m == nil {
			return
		}
		for c := range clients {
			select {
			case c.send <- m:
			default:
				// Too slow: drop it rather than wait. Closing the socket also unblocks a
				// write stuck on the client's full TCP window.
				drop(c)
				h.dropped.Add(1)
				_ = c.conn.NetConn().Close()
				h.log.Info("dropped a slow WebSocket client", "remote", c.conn.RemoteAddr().String())
			}
		}
	}
	add(first)
	lostEvents := sub.Dropped()
	for len(clients) > 0 {
		select {
		case <-h.done:
			for c := range clients {
				drop(c)
			}
			return false
		case c := <-h.register:
			add(c)
		case c := <-h.unregister:
			drop(c)
		case ev, ok := <-sub.C:
			if !ok {
				return true
			}
			broadcast(h.eventMessage(ev))
			if n := sub.Dropped(); n != lostEvents {
				// The subscription overflowed: clients missed updates; resend the list.
				lostEvents = n
				broadcast(h.jobsMessage())
			}
		case <-ticker.C:
			broadcast(h.message(proto.WSStatus, h.status()))
		}
	}
	h.active.Store(0)
	return true
}

func (h *Hub) eventMessage(ev state.Event) *websocket.PreparedMessage {
	switch {
	case ev.Kind == state.EventRestored:
		return h.jobsMessage()
	case ev.Job != nil:
		return h.message(proto.WSJobUpdate, ev.Job.Redacted())
	case ev.Schedule != nil:
		return h.message(proto.WSScheduleEvent, ev.Schedule)
	}
	return nil
}

func (h *Hub) jobsMessage() *websocket.PreparedMessage {
	res, err := h.st.Query(proto.QueryRequest{Limit: h.cfg.RecentJobs})
	data := proto.WSJobsData{Jobs: make([]proto.Job, 0, len(res.Jobs)), Total: res.Total}
	if err == nil {
		for _, j := range res.Jobs {
			data.Jobs = append(data.Jobs, j.Redacted())
		}
	}
	return h.message(proto.WSJobs, data)
}

// message marshals an envelope once and prepares its frame once for every client.
func (h *Hub) message(typ string, data any) *websocket.PreparedMessage {
	raw, err := json.Marshal(data)
	if err != nil {
		h.log.Error("marshal websocket data", "type", typ, "err", err)
		return nil
	}
	b, _ := json.Marshal(proto.WSMessage{Type: typ, Timestamp: time.Now().UTC(), Data: raw})
	m, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		return nil
	}
	return m
}
