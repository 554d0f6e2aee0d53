package agent

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// hostFacter is the executor (the migration pipeline) when it can describe the host.
type hostFacter interface {
	HostFacts(ctx context.Context) proto.AgentFacts
}

// handleFacts serves GET /v1/facts: the host's networks, bridges, domains, firmware and
// drivers plus its capacity, for the controller's pre-flight validation. Domain names are
// the operator's business: with a join token configured, only a caller presenting it (the
// controllers) gets them.
func (a *Agent) handleFacts(exec any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if tok := a.cfg.JoinToken; tok != "" && !tokenMatches(r, tok) {
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(proto.ErrorResponse{Error: "agent join token missing or wrong"})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		var f proto.AgentFacts
		if hf, ok := exec.(hostFacter); ok {
			f = hf.HostFacts(ctx)
		}
		f.Name = a.cfg.Name
		f.Capacity, f.Capabilities, _ = a.Prober.Probe(ctx)
		_ = json.NewEncoder(w).Encode(f)
	}
}

func tokenMatches(r *http.Request, tok string) bool {
	got := r.Header.Get(proto.AgentTokenHeader)
	if got == "" {
		got = strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(tok)) == 1
}
