package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hypersdk/hypersdk/proto"
)

// Stream is a WebSocket connection to one controller's /ws.
type Stream struct {
	// Server is the controller the stream is connected to.
	Server string
	conn   *websocket.Conn
	stop   func() bool
}

// Stream connects to /ws of the first controller that accepts. A controller that answers
// the upgrade with an error (404: no WebSocket there) gives an *APIError.
func (c *Client) Stream(ctx context.Context) (*Stream, error) {
	d := websocket.Dialer{
		Proxy: http.ProxyFromEnvironment, HandshakeTimeout: c.cfg.DialTimeout + 5*time.Second,
		TLSClientConfig: c.tls.Clone(),
	}
	h := http.Header{}
	h.Set("User-Agent", c.cfg.UserAgent)
	if c.cfg.Token != "" {
		h.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	var tried []string
	var lastErr error
	var lastAPI *APIError
	for _, i := range c.order() {
		base := *c.servers[i]
		tried = append(tried, base.String())
		u := base
		u.Scheme = map[string]string{"http": "ws", "https": "wss"}[base.Scheme]
		u.Path = base.Path + "/ws"
		dctx, cancel := context.WithTimeout(ctx, d.HandshakeTimeout)
		conn, resp, err := d.DialContext(dctx, u.String(), h)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if resp != nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
				lastAPI = &APIError{StatusCode: resp.StatusCode, Message: errorMessage(resp.StatusCode, b), Server: base.String()}
				if resp.StatusCode < 500 {
					return nil, lastAPI
				}
				continue
			}
			lastErr = err
			continue
		}
		s := &Stream{Server: base.String(), conn: conn}
		// Closing the connection is the only way to interrupt a blocked read.
		s.stop = context.AfterFunc(ctx, func() { conn.Close() })
		return s, nil
	}
	if lastAPI != nil {
		return nil, lastAPI
	}
	return nil, &UnreachableError{Servers: tried, Reason: reason(lastErr), Err: lastErr}
}

// Next blocks for the next message. The controller sends "status" every 2 s, so a read
// that waits much longer means the connection is dead.
func (s *Stream) Next() (proto.WSMessage, error) {
	var m proto.WSMessage
	_ = s.conn.SetReadDeadline(time.Now().Add(90 * time.Second))
	_, b, err := s.conn.ReadMessage()
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("websocket: malformed message: %w", err)
	}
	return m, nil
}

// Close ends the stream.
func (s *Stream) Close() error {
	s.stop()
	_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	return s.conn.Close()
}

// Watch modes reported to WatchOptions.OnMode.
const (
	ModeWebSocket = "websocket"
	ModePolling   = "polling"
)

// WatchOptions tunes WatchJob.
type WatchOptions struct {
	// PollInterval is the period of GET /jobs/{id} when /ws is unavailable (default 1 s).
	PollInterval time.Duration
	// OnUpdate sees every new state of the job, the first one included.
	OnUpdate func(proto.Job)
	// OnMode is told how updates arrive, and why polling was chosen (nil for websocket).
	OnMode func(mode string, why error)
	// GiveUp is how long the watch tolerates an unreachable cluster (default 60 s).
	GiveUp time.Duration
}

// WatchJob follows a job until it ends (completed, failed or cancelled) and returns its
// final state. Updates come from /ws job_update messages; when /ws is unavailable, or
// the stream breaks, it polls GET /jobs/{id}.
func (c *Client) WatchJob(ctx context.Context, id string, opt WatchOptions) (proto.Job, error) {
	if opt.PollInterval <= 0 {
		opt.PollInterval = time.Second
	}
	if opt.GiveUp <= 0 {
		opt.GiveUp = 60 * time.Second
	}
	onUpdate := func(j proto.Job) {
		if opt.OnUpdate != nil {
			opt.OnUpdate(j)
		}
	}
	onMode := func(m string, why error) {
		if opt.OnMode != nil {
			opt.OnMode(m, why)
		}
	}
	// Subscribe before reading the job: an update between the two is then not lost.
	stream, serr := c.Stream(ctx)
	if serr != nil && ctx.Err() != nil {
		return proto.Job{}, ctx.Err()
	}
	if stream != nil {
		defer stream.Close()
	}
	j, err := c.Job(ctx, id)
	if err != nil {
		return j, err
	}
	onUpdate(j)
	if j.Status.Terminal() {
		return j, nil
	}
	if stream != nil {
		onMode(ModeWebSocket, nil)
		j, serr = watchStream(ctx, c, stream, j, onUpdate)
		if serr == nil {
			return j, nil
		}
		if ctx.Err() != nil {
			return j, ctx.Err()
		}
	}
	onMode(ModePolling, serr)
	return c.poll(ctx, j, opt, onUpdate)
}

// watchStream follows job updates on the stream; an error means "fall back to polling".
func watchStream(ctx context.Context, c *Client, s *Stream, j proto.Job, onUpdate func(proto.Job)) (proto.Job, error) {
	id := j.Definition.ID
	last := time.Now()
	for {
		m, err := s.Next()
		if err != nil {
			return j, fmt.Errorf("websocket closed: %w", err)
		}
		switch m.Type {
		case proto.WSJobUpdate:
			var u proto.Job
			if json.Unmarshal(m.Data, &u) != nil || u.Definition.ID != id {
				continue
			}
			j, last = u, time.Now()
			onUpdate(j)
			if j.Status.Terminal() {
				return j, nil
			}
		case proto.WSStatus:
			// A slow client may be dropped by the hub without a close frame reaching us
			// first; reading the job now and then bounds what a lost update costs.
			if time.Since(last) > 10*time.Second {
				u, err := c.Job(ctx, id)
				if err != nil {
					continue
				}
				last = time.Now()
				if changed(j, u) {
					j = u
					onUpdate(j)
				}
				if j.Status.Terminal() {
					return j, nil
				}
			}
		}
	}
}

func (c *Client) poll(ctx context.Context, j proto.Job, opt WatchOptions, onUpdate func(proto.Job)) (proto.Job, error) {
	t := time.NewTicker(opt.PollInterval)
	defer t.Stop()
	var failingSince time.Time
	for {
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-t.C:
		}
		u, err := c.Job(ctx, j.Definition.ID)
		if err != nil {
			var ae *APIError
			if errors.As(err, &ae) && !ae.ServerSide() {
				return j, err
			}
			if failingSince.IsZero() {
				failingSince = time.Now()
			} else if time.Since(failingSince) > opt.GiveUp {
				return j, err
			}
			continue
		}
		failingSince = time.Time{}
		if changed(j, u) {
			j = u
			onUpdate(j)
		}
		if j.Status.Terminal() {
			return j, nil
		}
	}
}

func changed(a, b proto.Job) bool {
	return a.Status != b.Status || a.Progress != b.Progress || !a.UpdatedAt.Equal(b.UpdatedAt) || a.Attempt != b.Attempt
}
