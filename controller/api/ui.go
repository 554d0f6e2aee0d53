package api

import (
	"net/http"
)

// SetUI serves the dashboard (controller/web) under /ui/ and sends "/" there. Call once,
// before serving. The route template "/ui/" labels every dashboard file in the metrics.
func (s *Server) SetUI(h http.Handler) {
	s.router.PathPrefix("/ui/").Handler(h).Methods(http.MethodGet, http.MethodHead)
	s.router.Handle("/ui", h).Methods(http.MethodGet, http.MethodHead)
	s.router.Handle("/", http.RedirectHandler("/ui/", http.StatusFound)).Methods(http.MethodGet, http.MethodHead)
}
