package client

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/hypersdk/hypersdk/proto"
)

// ValidateJobs calls POST /jobs/validate with a batch of job definitions given as JSON
// (sent as is, so the controller names unknown fields). Nothing is stored: it may go to
// another controller after a transport error.
func (c *Client) ValidateJobs(ctx context.Context, defs []json.RawMessage) ([]proto.ValidationResult, error) {
	var out []proto.ValidationResult
	return out, c.call(ctx, request{method: http.MethodPost, path: "/jobs/validate", idempotent: true}, defs, &out)
}
