package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/proto"
)

// Fresh reads (DESIGN.md "Any node serves the API"):
//   - Read-your-writes: the leader answers every write with the index its state has
//     applied (appliedIndexHeader); a follower that forwarded the write answers its client
//     only once its own state has applied that index, so the client's next read on the same
//     node sees the write. Without it `hyperctl jobs submit --watch` through a follower
//     read "job not found" right after the 201 (issue 17, 6 of 6 tries).
//   - A node that has not caught up with the leader (restarted, cut off) answers reads of
//     the replicated state 503 + Retry-After, never an emptier past ("No jobs." after a
//     restart). What counts as caught up is controller/cluster's Sync.

// appliedIndexHeader carries the leader's applied raft index on every write answer.
const appliedIndexHeader = "X-Hypersdk-Applied-Index"

// stateReads are the routes that answer from the replicated state: refused while this
// node is catching up. Anything else (health, cluster, metrics, agents from gossip, the
// vCenter's VMs, the dashboard's files) is served as it is.
var stateReads = map[string]bool{
	"GET /status": true, "POST /jobs/query": true, "GET /jobs/{id}": true,
	"GET /schedules": true, "GET /schedules/stats": true, "GET /schedules/{id}": true,
	"GET /webhooks": true, "GET /ws": true,
}

// freshReads answers reads of the replicated state 503 while this node catches up.
func (s *Server) freshReads(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if route := mux.CurrentRoute(r); route != nil {
			if t, err := route.GetPathTemplate(); err == nil && stateReads[r.Method+" "+t] {
				if st := s.node.Sync(); !st.CaughtUp {
					w.Header().Set("Retry-After", "1")
					writeError(w, http.StatusServiceUnavailable,
						fmt.Sprintf("controller %s is catching up with the leader (%s): its state may be incomplete; retry, or ask another controller", s.node.ID(), st.Reason))
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// markApplied adds the leader's applied index to a write's answer.
func (s *Server) markApplied(w http.ResponseWriter) {
	w.Header().Set(appliedIndexHeader, strconv.FormatUint(s.st.AppliedIndex(), 10))
}

// waitApplied waits until this node's state has applied the index the leader answered a
// forwarded write with, up to the leader wait. It reports false on timeout: the write
// happened, so its answer is returned anyway, and reads on this node are then refused
// while it lags (freshReads) rather than answered without the write.
func (s *Server) waitApplied(ctx context.Context, header string) bool {
	want, err := strconv.ParseUint(header, 10, 64)
	if err != nil || s.st.AppliedIndex() >= want {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LeaderWait)
	defer cancel()
	wait := time.Millisecond
	for s.st.AppliedIndex() < want {
		select {
		case <-ctx.Done():
			s.log.Warn("forwarded write acknowledged before this node applied it", "index", want, "applied", s.st.AppliedIndex())
			return false
		case <-time.After(wait):
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
	return true
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	st := s.node.Sync()
	if !st.CaughtUp {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, proto.HealthResponse{Status: proto.HealthCatchingUp, Lag: st.Lag, Reason: st.Reason})
		return
	}
	writeJSON(w, http.StatusOK, proto.HealthResponse{Status: proto.HealthOK})
}
