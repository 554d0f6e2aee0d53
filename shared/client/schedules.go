package client

import (
	"context"
	"encoding/json"

	"github.com/hypersdk/hypersdk/proto"
)

// Schedules calls GET /schedules.
func (c *Client) Schedules(ctx context.Context) (proto.ScheduleListResponse, error) {
	var out proto.ScheduleListResponse
	return out, c.get(ctx, "/schedules", nil, &out)
}

// Schedule calls GET /schedules/{id}.
func (c *Client) Schedule(ctx context.Context, id string) (proto.Schedule, error) {
	var out proto.Schedule
	return out, c.get(ctx, "/schedules/"+pathEscape(id), nil, &out)
}

// CreateSchedule calls POST /schedules with a proto.ScheduleRequest or its JSON.
func (c *Client) CreateSchedule(ctx context.Context, req any) (proto.ScheduleResponse, error) {
	var out proto.ScheduleResponse
	return out, c.post(ctx, "/schedules", jsonBody(req), &out)
}

// UpdateSchedule calls PUT /schedules/{id} with a proto.ScheduleUpdate or its JSON.
func (c *Client) UpdateSchedule(ctx context.Context, id string, upd any) (proto.ScheduleResponse, error) {
	var out proto.ScheduleResponse
	return out, c.put(ctx, "/schedules/"+pathEscape(id), jsonBody(upd), &out)
}

// DeleteSchedule calls DELETE /schedules/{id}.
func (c *Client) DeleteSchedule(ctx context.Context, id string) (proto.MessageResponse, error) {
	var out proto.MessageResponse
	return out, c.delete(ctx, "/schedules/"+pathEscape(id), &out)
}

// EnableSchedule calls POST /schedules/{id}/enable (or /disable when on is false).
func (c *Client) EnableSchedule(ctx context.Context, id string, on bool) (proto.MessageResponse, error) {
	verb := "/disable"
	if on {
		verb = "/enable"
	}
	var out proto.MessageResponse
	return out, c.post(ctx, "/schedules/"+pathEscape(id)+verb, nil, &out)
}

// TriggerSchedule calls POST /schedules/{id}/trigger.
func (c *Client) TriggerSchedule(ctx context.Context, id string) (proto.ScheduleTriggerResponse, error) {
	var out proto.ScheduleTriggerResponse
	return out, c.post(ctx, "/schedules/"+pathEscape(id)+"/trigger", nil, &out)
}

// ScheduleStats calls GET /schedules/stats.
func (c *Client) ScheduleStats(ctx context.Context) (proto.ScheduleStats, error) {
	var out proto.ScheduleStats
	return out, c.get(ctx, "/schedules/stats", nil, &out)
}

// jsonBody passes raw JSON through unchanged and marshals anything else.
func jsonBody(v any) any {
	if b, ok := v.([]byte); ok {
		return json.RawMessage(b)
	}
	return v
}
