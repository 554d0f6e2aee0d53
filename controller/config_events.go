package controller

import (
	"fmt"
	"time"

	"github.com/hypersdk/hypersdk/controller/webhook"
	"github.com/hypersdk/hypersdk/proto"
)

// SchedulerConfig: scheduler.enabled (default true). When false the /schedules routes
// answer 503 and this node never fires schedules, even as leader.
type SchedulerConfig struct {
	Enabled *bool `yaml:"enabled"`
	// Poll is the longest the scheduler sleeps between two looks (default 1s).
	Poll time.Duration `yaml:"poll"`
	// MaxJobsPerFire caps the jobs one firing creates (default 500); a vm_path glob
	// matching more fails the run with the count.
	MaxJobsPerFire int `yaml:"max_jobs_per_fire"`
}

// WebSocketConfig tunes /ws. Zero values mean the documented defaults.
type WebSocketConfig struct {
	// MaxClients caps concurrent connections per controller (default 256; 503 beyond).
	MaxClients int `yaml:"max_clients"`
	// SendBuffer is how many messages may wait for one client before it is dropped
	// (default 256).
	SendBuffer int `yaml:"send_buffer"`
	// SocketBuffer is each connection's kernel send buffer in bytes (default 128 KiB).
	SocketBuffer   int           `yaml:"socket_buffer"`
	PingInterval   time.Duration `yaml:"ping_interval"`
	PongWait       time.Duration `yaml:"pong_wait"`
	StatusInterval time.Duration `yaml:"status_interval"`
}

// WebhookDeliveryConfig tunes retries: the first retry waits Backoff (default 1s), each
// next one twice as long up to MaxBackoff (default 1m), jittered.
type WebhookDeliveryConfig struct {
	Backoff    time.Duration `yaml:"backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
}

// SchedulerEnabled is true unless scheduler.enabled is false.
func (c *Config) SchedulerEnabled() bool { return c.Scheduler.Enabled == nil || *c.Scheduler.Enabled }

// webhookRequest turns a webhooks: entry of the config file into the API's request shape,
// so both go through the same validation and defaults.
func (w WebhookConfig) webhookRequest() proto.WebhookRequest {
	r := proto.WebhookRequest{URL: w.URL, Events: w.Events, Enabled: w.Enabled, RetryCount: w.RetryCount,
		Headers: w.Headers, Secret: w.Secret}
	if w.Timeout != 0 {
		t := w.Timeout
		r.Timeout = &t
	}
	return r
}

// SeedWebhooks returns the config file's webhooks, validated, defaults applied.
func (c *Config) SeedWebhooks() ([]proto.Webhook, error) {
	out := make([]proto.Webhook, 0, len(c.Webhooks))
	for i, w := range c.Webhooks {
		r := w.webhookRequest()
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("config: webhooks[%d]: %w", i, err)
		}
		out = append(out, r.Webhook())
	}
	return out, nil
}

func (c *Config) validateEvents() error {
	seeds, err := c.SeedWebhooks()
	if err != nil {
		return err
	}
	pol := c.OutboundPolicy()
	for i, w := range seeds {
		if err := webhook.CheckURL(pol, w.URL); err != nil {
			return fmt.Errorf("config: webhooks[%d]: %w", i, err)
		}
	}
	if c.Scheduler.MaxJobsPerFire < 0 {
		return fmt.Errorf("config: scheduler.max_jobs_per_fire must not be negative")
	}
	if c.WebSocket.MaxClients < 0 || c.WebSocket.SendBuffer < 0 {
		return fmt.Errorf("config: websocket.max_clients and websocket.send_buffer must not be negative")
	}
	if c.WebhookDelivery.Backoff < 0 || c.WebhookDelivery.MaxBackoff < 0 {
		return fmt.Errorf("config: webhook_delivery.backoff and max_backoff must not be negative")
	}
	return nil
}
