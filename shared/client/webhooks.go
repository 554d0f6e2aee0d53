package client

import (
	"context"
	"strconv"

	"github.com/hypersdk/hypersdk/proto"
)

// Webhooks calls GET /webhooks (header values and secrets come back masked).
func (c *Client) Webhooks(ctx context.Context) (proto.WebhookListResponse, error) {
	var out proto.WebhookListResponse
	return out, c.get(ctx, "/webhooks", nil, &out)
}

// AddWebhook calls POST /webhooks with a proto.WebhookRequest or its JSON.
func (c *Client) AddWebhook(ctx context.Context, req any) (proto.WebhookAddResponse, error) {
	var out proto.WebhookAddResponse
	return out, c.post(ctx, "/webhooks", jsonBody(req), &out)
}

// DeleteWebhook calls DELETE /webhooks/{index}.
func (c *Client) DeleteWebhook(ctx context.Context, index int) (proto.MessageResponse, error) {
	var out proto.MessageResponse
	return out, c.delete(ctx, "/webhooks/"+strconv.Itoa(index), &out)
}

// TestWebhook calls POST /webhooks/test: the answering controller sends one delivery.
func (c *Client) TestWebhook(ctx context.Context, req proto.WebhookTestRequest) (proto.MessageResponse, error) {
	var out proto.MessageResponse
	return out, c.post(ctx, "/webhooks/test", req, &out)
}
