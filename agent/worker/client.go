package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// Errors of the agent API client.
var (
	// ErrStale: the controller says the lease is no longer ours (409) or the job is gone (404).
	ErrStale = errors.New("lease is stale")
	// ErrUnavailable: no controller answered usefully (network errors, 503s).
	ErrUnavailable = errors.New("no controller available")
	// ErrUnauthorized: the agent's credential (or, enrolling, the join token) was refused.
	ErrUnauthorized = errors.New("agent credential or join token refused by the controller")
	// ErrNameTaken: another credential is enrolled under this agent's name.
	ErrNameTaken = errors.New("agent name enrolled with another credential")
)

// client talks to any controller of the cluster (followers forward to the leader) and
// moves on to the next one when a controller is down.
type client struct {
	urls  []string
	token string
	http  *http.Client

	mu  sync.Mutex
	cur int

	// id is this agent's identity (credential.go).
	id identity
}

func newClient(urls []string, token string, hc *http.Client) *client {
	clean := make([]string, 0, len(urls))
	for _, u := range urls {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if u == "" {
			continue
		}
		if !strings.Contains(u, "://") {
			u = "http://" + u
		}
		clean = append(clean, u)
	}
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: time.Minute}}
	}
	return &client{urls: clean, token: token, http: hc}
}

func (c *client) base() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.urls[c.cur%len(c.urls)]
}

func (c *client) rotate(from string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.urls[c.cur%len(c.urls)] == from {
		c.cur++
	}
}

// post sends one authenticated agent call to the current controller (enrolling first
// when this process has not yet). timeout bounds this attempt.
func (c *client) post(ctx context.Context, path string, in, out any, timeout time.Duration) error {
	cred, err := c.credential(ctx, timeout)
	if err != nil {
		return err
	}
	hdr, err := c.send(ctx, path, in, out, timeout, proto.AgentCredentialHeader, cred)
	if errors.Is(err, ErrUnauthorized) {
		// Unknown here: a controller that lost its state, an admin's forget, or a follower
		// that has not applied the enrolment yet. Enrol again on the next call (the same
		// credential: a no-op where the identity is known).
		c.unenrolled(cred)
	}
	if err == nil && hdr.Get(proto.AgentRotateHeader) != "" {
		go c.rotateCredential(context.WithoutCancel(ctx))
	}
	return err
}

// send posts to the current controller with one authentication header. A controller that
// refuses the credential (401), fails (5xx) or cannot be reached is left for the next one:
// after a leader change a follower that cannot help must not keep the agent idle.
func (c *client) send(ctx context.Context, path string, in, out any, timeout time.Duration, authHeader, authValue string) (http.Header, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	base := c.base()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if authValue != "" {
		req.Header.Set(authHeader, authValue)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.rotate(base)
		return nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	switch {
	case resp.StatusCode == http.StatusOK:
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				return nil, fmt.Errorf("%s%s: decode answer: %w", base, path, err)
			}
		}
		return resp.Header, nil
	case resp.StatusCode == http.StatusConflict && path == enrollPath:
		return nil, fmt.Errorf("%w: %s", ErrNameTaken, errorText(b))
	case resp.StatusCode == http.StatusConflict || resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%w: %s", ErrStale, errorText(b))
	case resp.StatusCode == http.StatusUnauthorized:
		c.rotate(base)
		return nil, fmt.Errorf("%w: %s: %s", ErrUnauthorized, base, errorText(b))
	case resp.StatusCode >= 500:
		c.rotate(base)
		return nil, fmt.Errorf("%w: %s answered %d: %s", ErrUnavailable, base, resp.StatusCode, errorText(b))
	}
	return nil, fmt.Errorf("%s%s: %d %s", base, path, resp.StatusCode, errorText(b))
}

func errorText(b []byte) string {
	var e proto.ErrorResponse
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(b))
}

// postRetry retries transient failures with backoff until ok, a permanent error, or
// the deadline.
func (c *client) postRetry(ctx context.Context, path string, in, out any, deadline time.Duration) error {
	stop := time.Now().Add(deadline)
	backoff := 100 * time.Millisecond
	for {
		err := c.post(ctx, path, in, out, 10*time.Second)
		// 401 is worth another try too: the call went to the next controller.
		transient := errors.Is(err, ErrUnavailable) || errors.Is(err, ErrUnauthorized)
		if err == nil || !transient || time.Now().Add(backoff).After(stop) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}
