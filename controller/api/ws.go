package api

import (
	"bufio"
	"net"
	"net/http"

	"github.com/hypersdk/hypersdk/controller/ws"
)

// SetWebSocket serves GET /ws with the hub. Call once, before serving.
func (s *Server) SetWebSocket(hub http.Handler) {
	s.router.Handle("/ws", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// One viewer's token is one client however many addresses it comes from.
		if s.auth.Enabled() {
			if name, _, err := s.auth.identify(r); err == nil {
				r = ws.WithClientKey(r, "token:"+name)
			}
		}
		hub.ServeHTTP(hijackable{ResponseWriter: w}, r)
	})).Methods(http.MethodGet)
}

// hijackable exposes Hijack through the middleware's wrappers (gorilla/websocket type-
// asserts http.Hijacker instead of using http.ResponseController), and records the 101 for
// the request metrics.
type hijackable struct{ http.ResponseWriter }

func (h hijackable) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if rec, ok := h.ResponseWriter.(*statusRecorder); ok && rec.status == 0 {
		rec.status = http.StatusSwitchingProtocols
	}
	return http.NewResponseController(h.ResponseWriter).Hijack()
}

func (h hijackable) Unwrap() http.ResponseWriter { return h.ResponseWriter }
