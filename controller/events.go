package controller

import (
	"context"
	"log/slog"

	"github.com/hypersdk/hypersdk/controller/api"
	"github.com/hypersdk/hypersdk/controller/schedule"
	"github.com/hypersdk/hypersdk/controller/webhook"
	"github.com/hypersdk/hypersdk/controller/ws"
)

// wireEvents builds the scheduler, the webhook deliverer and the WebSocket hub, registers
// the leader-only work, the routes and the metrics. Called by New right after the API
// server exists, before it serves.
func (c *Controller) wireEvents(log *slog.Logger) {
	cfg := c.cfg
	// Validated by Config.Validate at the start of New.
	seeds, _ := cfg.SeedWebhooks()

	c.Scheduler = schedule.New(schedule.Config{
		Poll: cfg.Scheduler.Poll, MaxAttempts: cfg.Cluster.MaxAttempts, MaxJobsPerFire: cfg.Scheduler.MaxJobsPerFire, Logger: log,
		Lister:   vsphereLister{log: log.With("component", "scheduler"), box: c.secrets, policy: cfg.OutboundPolicy()},
		Validate: c.scheduleValidate(),
	}, c.State, c.Node)
	if cfg.SchedulerEnabled() {
		c.Node.OnLeadership(c.Scheduler.Run)
	}

	c.Webhooks = webhook.New(webhook.Config{
		Backoff: cfg.WebhookDelivery.Backoff, MaxBackoff: cfg.WebhookDelivery.MaxBackoff, Seed: seeds, Secrets: c.secrets,
		Policy: cfg.OutboundPolicy(), Logger: log,
	}, c.State, c.Node)
	c.Node.OnLeadership(c.Webhooks.Run)

	c.WS = ws.New(ws.Config{
		MaxClients: cfg.WebSocket.MaxClients, SendBuffer: cfg.WebSocket.SendBuffer, PingInterval: cfg.WebSocket.PingInterval,
		PongWait: cfg.WebSocket.PongWait, StatusInterval: cfg.WebSocket.StatusInterval, SocketBuffer: cfg.WebSocket.SocketBuffer,
		Logger: log,
	}, c.State, func() any { return c.API.Status() })
	// Hijacked connections outlive http.Server.Shutdown: close the hub with the controller.
	c.goLoop(func(ctx context.Context) {
		<-ctx.Done()
		c.WS.Close()
	})

	c.API.SetSchedules(api.SchedulesConfig{Enabled: cfg.SchedulerEnabled(), Runner: c.Scheduler})
	c.API.SetWebhooks(c.Webhooks)
	c.API.SetWebSocket(c.WS)
	c.Metrics.RegisterEvents(eventsSource{c})
}

// eventsSource adapts the controller to the events metrics.
type eventsSource struct{ c *Controller }

func (e eventsSource) WebhookDeliveryCounters() (uint64, uint64, uint64) {
	return e.c.State.WebhookDeliveryCounters()
}
func (e eventsSource) ScheduleRunCounters() (uint64, uint64, uint64) {
	return e.c.State.ScheduleRunCounters()
}
func (e eventsSource) WSClients() int { return e.c.WS.Clients() }
func (e eventsSource) LeaseCounters() (uint64, uint64) {
	c := e.c.State.Counters()
	return c.LeaseExpiries, c.Requeues
}
