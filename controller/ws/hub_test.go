package ws

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/testutil"
)

// With nobody connected the hub holds no subscription (apply publishes to nobody) and runs
// no status ticker; the first client starts both, the last one stops them.
func TestHubIdleWithoutClients(t *testing.T) {
	st := state.New()
	var statusCalls atomic.Int64
	h := New(Config{MaxClients: 1, StatusInterval: 10 * time.Millisecond}, st, func() any {
		statusCalls.Add(1)
		return proto.StatusResponse{TotalJobs: st.TotalJobs()}
	})
	t.Cleanup(h.Close)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	if st.Subscribers() != 0 {
		t.Fatal("subscribed with no client")
	}

	conn, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for len(types) < 3 {
		var m proto.WSMessage
		if err := conn.ReadJSON(&m); err != nil {
			t.Fatal(err)
		}
		types = append(types, m.Type)
	}
	if types[0] != proto.WSJobs || types[1] != proto.WSStatus || types[2] != proto.WSStatus {
		t.Fatalf("messages %v, want jobs, status, status", types)
	}
	if st.Subscribers() != 1 || h.Clients() != 1 {
		t.Fatalf("subscribers %d clients %d", st.Subscribers(), h.Clients())
	}
	// Over the cap: 503 with a JSON error, before any upgrade.
	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second client: %v %v", err, resp)
	}
	var e proto.ErrorResponse
	if json.NewDecoder(resp.Body).Decode(&e); !strings.Contains(e.Error, "too many") {
		t.Fatalf("503 body %+v", e)
	}

	conn.Close()
	testutil.WaitFor(t, 5*time.Second, "hub idle", func() bool { return st.Subscribers() == 0 && h.Clients() == 0 })
	// Idle: no status is built any more (five periods pass without one).
	calls := statusCalls.Load()
	<-time.After(50 * time.Millisecond)
	if statusCalls.Load() != calls {
		t.Fatal("status ticker runs with no client")
	}
}
