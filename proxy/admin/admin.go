// Package admin serves the sidecar's admin port: health for the kubelet,
// metrics for Prometheus, and debug endpoints for people.
//
// /live, /ready and /metrics answer anyone (the kubelet and Prometheus
// reach them on the pod IP); /debug/* answers only loopback clients, so a
// breaker can be reset by someone with a shell in the pod, not by anyone
// on the network.
package admin

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/promtext"
)

// The admin server's time bounds (its http.Server's ReadTimeout and
// WriteTimeout; docs/operations.md, "Limits and failure behaviour"). The
// port is on the pod network, so no request may hold its connection
// without end: a body trickled in, or answers never read (a pipeline of
// requests whose client does not read held the port shut, with the
// connection cap's eviction, before 2026-12-05). A probe or a scrape
// reads and is answered in milliseconds; Prometheus's own scrape_timeout
// is 10 s. A CPU profile or trace extends both by its duration
// (extendDeadlines).
const (
	// ReadTimeout bounds a request from its first byte to its body's end.
	ReadTimeout = 10 * time.Second
	// WriteTimeout bounds an answer, from the end of its request's
	// headers to its last byte written; each request of a pipeline has
	// its own.
	WriteTimeout = 10 * time.Second
)

// Breakers is what the admin server needs of the outbound path.
type Breakers interface {
	Breakers() any
	ResetBreaker(destination string) (name string, ok bool)
}

// Server is the admin endpoints' handler.
type Server struct {
	mux      *http.ServeMux
	ready    atomic.Bool
	breakers Breakers
	config   func() any
}

// New returns the admin handler. config returns what /debug/config shows.
func New(reg *promtext.Registry, breakers Breakers, config func() any) *Server {
	s := &Server{mux: http.NewServeMux(), breakers: breakers, config: config}
	s.mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /ready", s.serveReady)
	s.mux.Handle("GET /metrics", reg.Handler())
	s.mux.HandleFunc("GET /debug/breakers", loopbackOnly(s.serveBreakers))
	s.mux.HandleFunc("POST /debug/breakers/reset", loopbackOnly(s.serveReset))
	s.mux.HandleFunc("GET /debug/config", loopbackOnly(s.serveConfig))
	// Go's profiler (pprof.go): loopback only.
	s.mux.HandleFunc("GET /debug/pprof/{$}", loopbackOnly(serveProfileIndex))
	s.mux.HandleFunc("GET /debug/pprof/profile", loopbackOnly(serveCPUProfile))
	s.mux.HandleFunc("GET /debug/pprof/trace", loopbackOnly(serveTrace))
	s.mux.HandleFunc("GET /debug/pprof/{name}", loopbackOnly(serveNamedProfile))
	return s
}

// HandleJSON serves what f returns as JSON at GET path, to loopback
// clients only, like every /debug page (/debug/endpoints).
func (s *Server) HandleJSON(path string, f func() any) {
	s.mux.HandleFunc("GET "+path, loopbackOnly(func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, f()) }))
}

// SetReady flips /ready: on once the listeners are up, off when draining
// so that the kubelet stops sending traffic before the listeners close.
func (s *Server) SetReady(v bool) { s.ready.Store(v) }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	if !s.ready.Load() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

func (s *Server) serveBreakers(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"destinations": s.breakers.Breakers()})
}

func (s *Server) serveReset(w http.ResponseWriter, r *http.Request) {
	d := r.URL.Query().Get("destination")
	if d == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "missing ?destination= (see GET /debug/breakers for names)"})
		return
	}
	name, ok := s.breakers.ResetBreaker(d)
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no breaker for destination " + d})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"destination": name, "state": "closed"})
}

func (s *Server) serveConfig(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.config())
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// loopbackOnly refuses clients that are not on the pod's own loopback.
func loopbackOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		ip, perr := netip.ParseAddr(host)
		if err != nil || perr != nil || !ip.Unmap().IsLoopback() {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "debug endpoints answer only loopback clients: run curl inside the pod"})
			return
		}
		h(w, r)
	}
}
