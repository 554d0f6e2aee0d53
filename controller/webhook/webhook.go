// Package webhook delivers the replicated webhook outbox. It runs on the leader only (Run is
// registered with cluster.OnLeadership).
//
// The rules (DESIGN.md "Webhooks"):
//   - Apply appends one outbox entry per (event, webhook) with the exact body to send; the
//     leader POSTs it and commits WebhookDelivered, which removes the entry. A new leader
//     resends whatever is still in the outbox: at most the entries that were in flight are
//     delivered twice, each time with the same X-HyperSDK-Delivery id.
//   - Each attempt has its own deadline (the webhook's timeout); retry_count retries follow
//     with exponential backoff and jitter. A webhook's entries go out in order.
//   - The config file's webhooks are added once in the cluster's life (WebhookSeed).
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/netpolicy"
	"github.com/hypersdk/hypersdk/shared/secrets"
	"github.com/hypersdk/hypersdk/shared/version"
)

// Applier commits commands (the raft node).
type Applier interface {
	Apply(cmd []byte) (any, error)
}

// Config tunes delivery. Zero values mean the defaults.
type Config struct {
	// Backoff is the wait before the first retry; it doubles per retry up to MaxBackoff,
	// and each wait is jittered to [½, 1½) of its value so receivers recovering from an
	// outage are not hit by every controller's retries at once.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Poll is how often the outbox is re-read when no append signal arrives.
	Poll time.Duration
	// Seed are the config file's webhooks, added at the cluster's first bootstrap.
	Seed []proto.Webhook
	// Secrets seals the seeds' header values and secrets before they enter the raft log,
	// and opens stored ones to deliver (nil: stored in clear).
	Secrets *secrets.Box
	// Policy says where deliveries and tests may connect (checked when dialling).
	Policy netpolicy.Policy
	// Client sends deliveries (nil: NewClient(Policy)).
	Client *http.Client
	Logger *slog.Logger
}

func (c *Config) fill() {
	if c.Backoff <= 0 {
		c.Backoff = time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Minute
	}
	if c.MaxBackoff < c.Backoff {
		c.MaxBackoff = c.Backoff
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.Client == nil {
		c.Client = NewClient(c.Policy)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// NewClient is the delivery HTTP client: no overall timeout (each attempt has a context
// deadline), no redirects (a 3xx would turn the POST into a GET elsewhere), every
// connection checked by the outbound policy when it is dialled. It connects directly,
// never through HTTP(S)_PROXY: through a proxy the policy would judge the proxy's address,
// not the receiver's.
func NewClient(pol netpolicy.Policy) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         pol.DialContext(10 * time.Second),
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// ErrUnreachable: a delivery attempt got no HTTP answer (refused, reset, timed out, or a
// target the outbound policy does not allow). Callers are told no more than that, so
// POST /webhooks/test cannot tell a closed port from a filtered one.
var ErrUnreachable = errors.New("webhook receiver unreachable")

// CheckURL checks a webhook URL against the policy before anything is sent: the scheme,
// and the host when it is an address literal (names are checked when dialled).
func CheckURL(pol netpolicy.Policy, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: webhook url is not a URL", proto.ErrInvalid)
	}
	if err := pol.CheckURL(u); err != nil {
		return fmt.Errorf("%w: webhook url: %v", proto.ErrInvalid, err)
	}
	return nil
}

// Deliverer sends the outbox while its node leads.
type Deliverer struct {
	cfg   Config
	log   *slog.Logger
	st    *state.State
	apply Applier
}

// New builds a deliverer over the replicated state.
func New(cfg Config, st *state.State, apply Applier) *Deliverer {
	cfg.fill()
	return &Deliverer{cfg: cfg, log: cfg.Logger.With("component", "webhooks"), st: st, apply: apply}
}

// Run seeds the config webhooks if the cluster never did, then delivers until ctx ends.
func (d *Deliverer) Run(ctx context.Context) {
	d.seed(ctx)
	acks := newAcker(d)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		acks.run(ctx)
	}()
	workers := make(map[string]*worker)
	defer func() {
		for _, w := range workers {
			w.stop()
		}
		wg.Wait()
	}()
	// dispatched is the highest outbox id handed to a worker in this term. Entries are
	// appended in id order, so only newer ones need reading; a new leader starts at 0 and
	// resends everything still in the outbox.
	var dispatched uint64
	tick := time.NewTicker(d.cfg.Poll)
	defer tick.Stop()
	for {
		for _, e := range d.st.Outbox(dispatched, 1000) {
			dispatched = e.ID
			w := workers[e.WebhookID]
			if w == nil {
				w = newWorker(ctx, d, acks, e.WebhookID, &wg)
				workers[e.WebhookID] = w
			}
			w.add(e)
		}
		if more := d.st.Outbox(dispatched, 1); len(more) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-d.st.OutboxSignal():
		case <-tick.C:
		}
	}
}

func (d *Deliverer) seed(ctx context.Context) {
	if d.st.WebhooksSeeded() {
		return
	}
	for ctx.Err() == nil {
		seed := make([]proto.Webhook, 0, len(d.cfg.Seed))
		for _, w := range d.cfg.Seed {
			sw, err := SealSecrets(d.cfg.Secrets, w)
			if err != nil {
				d.log.Error("cannot seal a config webhook's secrets; not adding the config file's webhooks", "err", err)
				return
			}
			seed = append(seed, sw)
		}
		_, err := d.apply.Apply(state.MustEncode(state.CmdWebhookSeed, state.WebhookSeed{Webhooks: seed, At: time.Now().UTC()}))
		if err == nil {
			if len(d.cfg.Seed) > 0 {
				d.log.Info("added the config file's webhooks", "count", len(d.cfg.Seed))
			}
			return
		}
		d.log.Warn("seeding config webhooks failed; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(d.cfg.Poll):
		}
	}
}

// worker delivers one webhook's entries in order.
type worker struct {
	d      *Deliverer
	acks   *acker
	id     string
	mu     sync.Mutex
	queue  []*state.OutboxEntry
	wake   chan struct{}
	cancel context.CancelFunc
}

func newWorker(ctx context.Context, d *Deliverer, acks *acker, id string, wg *sync.WaitGroup) *worker {
	ctx, cancel := context.WithCancel(ctx)
	w := &worker{d: d, acks: acks, id: id, wake: make(chan struct{}, 1), cancel: cancel}
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.run(ctx)
	}()
	return w
}

func (w *worker) stop() { w.cancel() }

func (w *worker) add(e *state.OutboxEntry) {
	w.mu.Lock()
	w.queue = append(w.queue, e)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) next() *state.OutboxEntry {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		return nil
	}
	e := w.queue[0]
	w.queue[0] = nil
	w.queue = w.queue[1:]
	return e
}

func (w *worker) run(ctx context.Context) {
	for {
		e := w.next()
		if e == nil {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
				continue
			}
		}
		if !w.d.st.InOutbox(e.ID) {
			continue // dropped by the cap or a delete while queued
		}
		hook, ok := w.d.st.Webhook(e.WebhookID)
		if !ok {
			continue // deleted: apply dropped its entries
		}
		var result string
		var attempts int
		if hook, err := OpenSecrets(w.d.cfg.Secrets, hook); err != nil {
			// No retry can help: this leader's key is not the one that sealed them.
			w.d.log.Error("webhook not delivered: its header values or secret do not open with this controller's secrets key",
				"webhook", hook.ID, "delivery", e.ID, "err", err)
			result = state.DeliveryFailure
		} else {
			result, attempts = w.d.deliver(ctx, hook, e)
		}
		if ctx.Err() != nil {
			// Leadership lost mid-delivery: the entry stays in the outbox and the next
			// leader sends it again (same delivery id).
			return
		}
		w.acks.add(state.Delivery{ID: e.ID, Result: result, Attempts: attempts})
	}
}

// deliver makes up to 1+retry_count attempts.
func (d *Deliverer) deliver(ctx context.Context, hook proto.Webhook, e *state.OutboxEntry) (string, int) {
	id := strconv.FormatUint(e.ID, 10)
	var err error
	for attempt := 0; attempt <= hook.RetryCount; attempt++ {
		if attempt > 0 {
			wait := d.backoff(attempt)
			select {
			case <-ctx.Done():
				return state.DeliveryFailure, attempt
			case <-time.After(wait):
			}
		}
		err = Send(ctx, d.cfg.Client, hook, id, e.Event, e.Payload)
		if err == nil {
			d.log.Debug("webhook delivered", "webhook", hook.ID, "delivery", id, "event", e.Event, "attempt", attempt+1)
			return state.DeliverySuccess, attempt + 1
		}
		if ctx.Err() != nil {
			return state.DeliveryFailure, attempt + 1
		}
		d.log.Info("webhook attempt failed", "webhook", hook.ID, "url", SafeURL(hook.URL), "delivery", id,
			"event", e.Event, "attempt", attempt+1, "of", hook.RetryCount+1, "err", err)
	}
	d.log.Warn("webhook delivery given up", "webhook", hook.ID, "url", SafeURL(hook.URL), "delivery", id,
		"event", e.Event, "attempts", hook.RetryCount+1, "err", err)
	return state.DeliveryFailure, hook.RetryCount + 1
}

// backoff is the jittered wait before retry number attempt (1-based).
func (d *Deliverer) backoff(attempt int) time.Duration {
	b := d.cfg.Backoff
	for i := 1; i < attempt && b < d.cfg.MaxBackoff; i++ {
		b *= 2
	}
	b = min(b, d.cfg.MaxBackoff)
	return time.Duration(float64(b) * (0.5 + rand.Float64()))
}

// SealSecrets returns w with its header values and secret sealed (the API and the seed do
// this on the leader, before the webhook enters the raft log and snapshots, as with vCenter
// passwords). Without a key, w is returned as it is.
func SealSecrets(box *secrets.Box, w proto.Webhook) (proto.Webhook, error) {
	return mapSecrets(w, box.Seal)
}

// OpenSecrets returns w with its header values and secret in clear, for a delivery.
func OpenSecrets(box *secrets.Box, w proto.Webhook) (proto.Webhook, error) {
	return mapSecrets(w, box.Open)
}

// mapSecrets applies f to the secret and every header value, on copies: the stored
// webhook is shared with every reader of the state.
func mapSecrets(w proto.Webhook, f func(string) (string, error)) (proto.Webhook, error) {
	var err error
	if w.Secret, err = f(w.Secret); err != nil {
		return w, fmt.Errorf("webhook secret: %w", err)
	}
	if len(w.Headers) > 0 {
		h := make(map[string]string, len(w.Headers))
		for k, v := range w.Headers {
			if h[k], err = f(v); err != nil {
				return w, fmt.Errorf("webhook header %s: %w", k, err)
			}
		}
		w.Headers = h
	}
	return w, nil
}

// Send makes one delivery attempt with the webhook's timeout as its deadline. Any 2xx is
// success. Errors never include header values or the secret.
func Send(ctx context.Context, client *http.Client, hook proto.Webhook, deliveryID, event string, body []byte) error {
	timeout := time.Duration(hook.Timeout) * time.Second
	if timeout <= 0 {
		timeout = proto.DefaultWebhookTimeout * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("bad webhook url")
	}
	for k, v := range hook.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "HyperSDK-Webhook/"+version.Version)
	req.Header.Set(proto.HeaderWebhookEvent, event)
	req.Header.Set(proto.HeaderWebhookDelivery, deliveryID)
	if hook.Secret != "" {
		req.Header.Set(proto.HeaderWebhookSignature, Sign(hook.Secret, body))
	}
	resp, err := client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // url.Error repeats the URL, which may carry a token in its query
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w: no answer within %s", ErrUnreachable, timeout)
		}
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}

// Sign returns the X-HyperSDK-Signature value of a body: sha256=<hex HMAC-SHA256>.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// SafeURL is a webhook URL fit for logs: scheme, host and path, no query (tokens hide there).
func SafeURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid url)"
	}
	return u.Scheme + "://" + u.Host + u.Path
}

// acker commits delivery outcomes in batches: whatever finished while the previous
// commit was in flight goes into the next one, so a burst costs a few raft entries.
type acker struct {
	d    *Deliverer
	mu   sync.Mutex
	buf  []state.Delivery
	wake chan struct{}
}

func newAcker(d *Deliverer) *acker { return &acker{d: d, wake: make(chan struct{}, 1)} }

func (a *acker) add(dl state.Delivery) {
	a.mu.Lock()
	a.buf = append(a.buf, dl)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *acker) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		}
		for {
			a.mu.Lock()
			batch := a.buf
			a.buf = nil
			a.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			_, err := a.d.apply.Apply(state.MustEncode(state.CmdWebhookDelivered, state.WebhookDelivered{Deliveries: batch, At: time.Now().UTC()}))
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				// Still leader (e.g. a slow disk): keep the outcomes and try again.
				a.d.log.Warn("recording webhook deliveries failed; retrying", "count", len(batch), "err", err)
				a.mu.Lock()
				a.buf = append(batch, a.buf...)
				a.mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-time.After(a.d.cfg.Poll):
				}
			}
		}
	}
}

// Test sends one test delivery now, from this node, without retries (POST /webhooks/test).
func (d *Deliverer) Test(ctx context.Context, r proto.WebhookTestRequest) error {
	event := r.Event
	if event == "" {
		event = proto.EventTest
	}
	if err := CheckURL(d.cfg.Policy, r.URL); err != nil {
		return err
	}
	hook := (&proto.WebhookRequest{URL: r.URL, Events: []string{event}, Timeout: r.Timeout, Headers: r.Headers, Secret: r.Secret}).Webhook()
	hook.RetryCount = 0
	if r.Timeout == nil {
		hook.Timeout = 10 // an operator is waiting for the answer
	}
	now := time.Now().UTC()
	data, _ := json.Marshal(map[string]string{"message": "test webhook from HyperSDK"})
	body, _ := json.Marshal(proto.WebhookPayload{Event: event, Timestamp: now, Data: data})
	err := Send(ctx, d.cfg.Client, hook, "test-"+strconv.FormatInt(now.UnixNano(), 36), event, body)
	if errors.Is(err, ErrUnreachable) {
		// The detail (refused, reset, EOF, timed out, not allowed) would tell a caller
		// which ports are open where: the operator finds it in the log.
		d.log.Info("test webhook not delivered", "url", SafeURL(r.URL), "err", err)
		return ErrUnreachable
	}
	return err
}

// Policy is the outbound policy deliveries follow.
func (d *Deliverer) Policy() netpolicy.Policy { return d.cfg.Policy }
