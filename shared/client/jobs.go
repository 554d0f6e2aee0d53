package client

import (
	"context"
	"encoding/json"

	"github.com/hypersdk/hypersdk/proto"
)

// Health calls GET /health.
func (c *Client) Health(ctx context.Context) (proto.HealthResponse, error) {
	var out proto.HealthResponse
	return out, c.get(ctx, "/health", nil, &out)
}

// Status calls GET /status.
func (c *Client) Status(ctx context.Context) (proto.StatusResponse, error) {
	var out proto.StatusResponse
	return out, c.get(ctx, "/status", nil, &out)
}

// SubmitJob submits a job definition.
func (c *Client) SubmitJob(ctx context.Context, def proto.JobDefinition) (proto.SubmitResponse, error) {
	var out proto.SubmitResponse
	return out, c.post(ctx, "/jobs/submit", def, &out)
}

// SubmitJobJSON submits a job definition given as JSON, sent as is: the controller
// validates it (unknown fields are named in its error).
func (c *Client) SubmitJobJSON(ctx context.Context, def json.RawMessage) (proto.SubmitResponse, error) {
	var out proto.SubmitResponse
	return out, c.post(ctx, "/jobs/submit", def, &out)
}

// QueryJobs calls POST /jobs/query. It is a read: it may go to another controller after
// a transport error.
func (c *Client) QueryJobs(ctx context.Context, q proto.QueryRequest) (proto.QueryResponse, error) {
	var out proto.QueryResponse
	return out, c.call(ctx, request{method: "POST", path: "/jobs/query", idempotent: true}, q, &out)
}

// Job calls GET /jobs/{id}.
func (c *Client) Job(ctx context.Context, id string) (proto.Job, error) {
	var out proto.Job
	return out, c.get(ctx, "/jobs/"+pathEscape(id), nil, &out)
}

// CancelJobs calls POST /jobs/cancel.
func (c *Client) CancelJobs(ctx context.Context, req proto.CancelRequest) (proto.CancelResponse, error) {
	var out proto.CancelResponse
	return out, c.post(ctx, "/jobs/cancel", req, &out)
}

// Cutover calls POST /jobs/{id}/cutover: a warm job stops precopying and cuts over.
func (c *Client) Cutover(ctx context.Context, id string) (proto.CutoverResponse, error) {
	var out proto.CutoverResponse
	return out, c.post(ctx, "/jobs/"+pathEscape(id)+"/cutover", struct{}{}, &out)
}

// SubmitJobsJSON submits several job definitions as one list: the controller stores all of
// them in one raft entry or none (every invalid document named in its error).
func (c *Client) SubmitJobsJSON(ctx context.Context, defs []json.RawMessage) (proto.SubmitBatchResponse, error) {
	var out proto.SubmitBatchResponse
	return out, c.post(ctx, "/jobs/submit", defs, &out)
}

// ValidateJobsJSON asks the controller to check job definitions without submitting them
// (POST /jobs/validate; a controller without it answers 404).
func (c *Client) ValidateJobsJSON(ctx context.Context, defs []json.RawMessage) (json.RawMessage, error) {
	var out json.RawMessage
	var body any = defs
	if len(defs) == 1 {
		body = defs[0]
	}
	return out, c.post(ctx, "/jobs/validate", body, &out)
}
