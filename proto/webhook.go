package proto

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Webhook events: the API document's plus job.cancelled and schedule.failed.
const (
	EventJobSubmitted      = "job.submitted"
	EventJobStarted        = "job.started"
	EventJobCompleted      = "job.completed"
	EventJobFailed         = "job.failed"
	EventJobCancelled      = "job.cancelled"
	EventJobProgress       = "job.progress"
	EventScheduleTriggered = "schedule.triggered"
	EventScheduleCompleted = "schedule.completed"
	EventScheduleFailed    = "schedule.failed"
	// EventTest is only sent by POST /webhooks/test.
	EventTest = "test"
)

// WebhookEvents lists the events a webhook can subscribe to.
var WebhookEvents = []string{
	EventJobSubmitted, EventJobStarted, EventJobCompleted, EventJobFailed, EventJobCancelled,
	EventJobProgress, EventScheduleTriggered, EventScheduleCompleted, EventScheduleFailed,
	EventJobPrecopyRound, EventJobCutover,
}

// Headers of every delivery. A receiver drops a repeat by X-HyperSDK-Delivery (a new leader
// may resend what was in flight when the old one died) and checks X-HyperSDK-Signature,
// sha256=<hex HMAC-SHA256 of the body with the webhook's secret>, when a secret is set.
const (
	HeaderWebhookEvent     = "X-HyperSDK-Event"
	HeaderWebhookDelivery  = "X-HyperSDK-Delivery"
	HeaderWebhookSignature = "X-HyperSDK-Signature"
)

// Webhook limits and defaults.
const (
	DefaultWebhookTimeout    = 30
	DefaultWebhookRetryCount = 3
	MaxWebhookTimeout        = 300
	MaxWebhookRetryCount     = 10
)

// Webhook is a configured receiver. The API addresses webhooks by their index in the list
// (DELETE /webhooks/{index}); ID is stable across deletions of others.
type Webhook struct {
	ID         string            `json:"id"`
	URL        string            `json:"url"`
	Events     []string          `json:"events"`
	Enabled    bool              `json:"enabled"`
	Timeout    int               `json:"timeout"`
	RetryCount int               `json:"retry_count"`
	Headers    map[string]string `json:"headers,omitempty"`
	Secret     string            `json:"secret,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
}

// Redacted returns a copy safe to show: header values (often bearer tokens) and the secret
// are masked; the names stay so an operator sees what is configured.
func (w Webhook) Redacted() Webhook {
	if len(w.Headers) > 0 {
		h := make(map[string]string, len(w.Headers))
		for k := range w.Headers {
			h[k] = RedactedPassword
		}
		w.Headers = h
	}
	if w.Secret != "" {
		w.Secret = RedactedPassword
	}
	w.Events = slices.Clone(w.Events)
	return w
}

// Wants reports whether the webhook is enabled and subscribed to event.
func (w *Webhook) Wants(event string) bool {
	return w.Enabled && slices.Contains(w.Events, event)
}

// WebhookRequest is the body of POST /webhooks (and a webhooks: entry of the config file).
// Omitted enabled, timeout and retry_count mean true, 30 and 3.
type WebhookRequest struct {
	URL        string            `json:"url"`
	Events     []string          `json:"events"`
	Enabled    *bool             `json:"enabled,omitempty"`
	Timeout    *int              `json:"timeout,omitempty"`
	RetryCount *int              `json:"retry_count,omitempty"`
	Headers    map[string]string `json:"headers,omitempty"`
	Secret     string            `json:"secret,omitempty"`
}

// reservedHeaders are set by the delivery itself.
var reservedHeaders = []string{"Content-Type", "Content-Length", "Host", "Transfer-Encoding", "Connection",
	HeaderWebhookEvent, HeaderWebhookDelivery, HeaderWebhookSignature}

// ValidateWebhookURL accepts an absolute http or https URL without credentials.
func ValidateWebhookURL(raw string) error {
	if strings.TrimSpace(raw) == "" {
		return invalid("url is required")
	}
	if len(raw) > 2048 {
		return invalid("url is longer than 2048 characters")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return invalid("url is not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return invalid("url scheme must be http or https")
	}
	if u.Host == "" || u.Hostname() == "" {
		return invalid("url has no host")
	}
	if u.User != nil {
		return invalid("url must not carry credentials: use headers (e.g. Authorization) or a secret")
	}
	return nil
}

// Validate checks a webhook request.
func (r *WebhookRequest) Validate() error {
	if err := ValidateWebhookURL(r.URL); err != nil {
		return err
	}
	if len(r.Events) == 0 {
		return invalid("events is required: one or more of %s", strings.Join(WebhookEvents, ", "))
	}
	for _, e := range r.Events {
		if !slices.Contains(WebhookEvents, e) {
			return invalid("event %q is not one of %s", e, strings.Join(WebhookEvents, ", "))
		}
	}
	if r.Timeout != nil && (*r.Timeout < 1 || *r.Timeout > MaxWebhookTimeout) {
		return invalid("timeout must be between 1 and %d seconds", MaxWebhookTimeout)
	}
	if r.RetryCount != nil && (*r.RetryCount < 0 || *r.RetryCount > MaxWebhookRetryCount) {
		return invalid("retry_count must be between 0 and %d", MaxWebhookRetryCount)
	}
	if len(r.Headers) > 32 {
		return invalid("at most 32 headers")
	}
	for k, v := range r.Headers {
		if !validHeaderName(k) {
			return invalid("header name %q is not a valid HTTP header name", k)
		}
		for _, res := range reservedHeaders {
			if strings.EqualFold(k, res) {
				return invalid("header %s is set by the delivery and cannot be configured", res)
			}
		}
		if strings.ContainsAny(v, "\r\n\x00") || len(v) > 4096 {
			return invalid("header %s has an invalid value", k)
		}
	}
	if len(r.Secret) > 1024 {
		return invalid("secret is longer than 1024 characters")
	}
	if r.Secret == RedactedPassword {
		return invalid("secret is the redaction mask; send the real secret")
	}
	return nil
}

func validHeaderName(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for _, c := range k {
		if c > 126 || c <= 32 || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	return true
}

// Webhook returns the webhook the request describes, defaults applied (ID and CreatedAt
// are stamped by the controller).
func (r *WebhookRequest) Webhook() Webhook {
	w := Webhook{
		URL: r.URL, Events: dedupeStrings(r.Events), Enabled: true, Timeout: DefaultWebhookTimeout,
		RetryCount: DefaultWebhookRetryCount, Secret: r.Secret,
	}
	if r.Enabled != nil {
		w.Enabled = *r.Enabled
	}
	if r.Timeout != nil {
		w.Timeout = *r.Timeout
	}
	if r.RetryCount != nil {
		w.RetryCount = *r.RetryCount
	}
	if len(r.Headers) > 0 {
		w.Headers = make(map[string]string, len(r.Headers))
		for k, v := range r.Headers {
			w.Headers[http.CanonicalHeaderKey(k)] = v
		}
	}
	return w
}

func dedupeStrings(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// WebhookListResponse answers GET /webhooks.
type WebhookListResponse struct {
	Webhooks  []Webhook `json:"webhooks"`
	Total     int       `json:"total"`
	Timestamp time.Time `json:"timestamp"`
}

// WebhookAddResponse answers POST /webhooks.
type WebhookAddResponse struct {
	Message string  `json:"message"`
	Webhook Webhook `json:"webhook"`
	Index   int     `json:"index"`
}

// WebhookTestRequest is the body of POST /webhooks/test. Event defaults to "test".
type WebhookTestRequest struct {
	URL     string            `json:"url"`
	Event   string            `json:"event,omitempty"`
	Timeout *int              `json:"timeout,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Secret  string            `json:"secret,omitempty"`
}

// Validate checks a test request.
func (r *WebhookTestRequest) Validate() error {
	req := WebhookRequest{URL: r.URL, Events: []string{EventJobCompleted}, Timeout: r.Timeout, Headers: r.Headers, Secret: r.Secret}
	if err := req.Validate(); err != nil {
		return err
	}
	if r.Event != "" && r.Event != EventTest && !slices.Contains(WebhookEvents, r.Event) {
		return invalid("event %q is not %q or one of %s", r.Event, EventTest, strings.Join(WebhookEvents, ", "))
	}
	return nil
}

// WebhookPayload is the body of every delivery: {event, timestamp, data}.
type WebhookPayload struct {
	Event     string          `json:"event"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}
