package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

// serve runs the backend on addr (HTTP) and, when grpcAddr is not empty,
// its gRPC service (grpc.go) on grpcAddr; both share the failure and delay
// switches.
func serve(addr, grpcAddr string) {
	b := newBackend()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var gs *grpc.Server
	if grpcAddr != "" {
		gln, err := net.Listen("tcp", grpcAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		gs = newGRPCServer(b)
		go func() { _ = gs.Serve(gln) }()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	if err := run(ln, b, gs, sig, drainDelay, drainTimeout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// After SIGTERM the backend serves drainDelay more, while endpoints forget
// the pod, then stops accepting and waits up to drainTimeout for the
// requests in flight.
const (
	drainDelay   = 3 * time.Second
	drainTimeout = 5 * time.Second
)

// run serves h on ln until stop, then keeps serving for delay, stops
// accepting and returns once every request in flight is answered and its
// connection closed (gRPC calls as well), or with an error after timeout.
// The process ends when run returns: it used to return as soon as the
// shutdown began (ListenAndServe returns ErrServerClosed at once), which
// cut the requests still in flight.
func run(ln net.Listener, h http.Handler, gs *grpc.Server, stop <-chan os.Signal, delay, timeout time.Duration) error {
	srv := &http.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-stop:
	}
	time.Sleep(delay)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if gs != nil {
		go func() { <-ctx.Done(); gs.Stop() }()
		gs.GracefulStop()
	}
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: requests still in flight after %v: %w", timeout, err)
	}
	return nil
}

// backend answers every request with a JSON echo of it, naming the pod
// that answered (its host name, also in the X-Pod header), or with its
// failure status while it fails. Besides, on the pod's own address (the
// test reaches pod IPs from the host):
//
//	/admin/fail?on=1[&code=N]  fail from now on with status N (default 503;
//	                           gRPC: 503 → UNAVAILABLE, others INTERNAL);
//	                           on=0: heal
//	/admin/delay?ms=N          answer every request N ms late (0: at once;
//	                           at most 10,000)
//	/admin/hits                the requests it received, by path (at most
//	                           1,000 paths; gRPC calls count as /grpc), and
//	                           those that came through a sidecar (Via)
//	/healthz                   200 even while failing or slow (a
//	                           readiness probe)
//
// /admin/* and /healthz are not counted.
type backend struct {
	host string

	mu       sync.Mutex
	failCode int // 0: healthy
	delay    time.Duration
	hits     hits
}

type hits struct {
	Total int            `json:"total"`
	Paths map[string]int `json:"paths"`
	Via   map[string]int `json:"via"`
}

const maxPaths = 1000

// podHeader names the pod that answered.
const podHeader = "X-Pod"

func newBackend() *backend {
	host, _ := os.Hostname()
	return &backend{host: host, hits: hits{Paths: map[string]int{}, Via: map[string]int{}}}
}

// count records a request to path and returns the switches' state.
func (b *backend) count(path string, via bool) (failCode int, delay time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hits.Total++
	if _, ok := b.hits.Paths[path]; ok || len(b.hits.Paths) < maxPaths {
		b.hits.Paths[path]++
		if via {
			b.hits.Via[path]++
		}
	}
	return b.failCode, b.delay
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/healthz":
		w.WriteHeader(http.StatusOK)
		return
	case r.URL.Path == "/admin/fail":
		code := http.StatusServiceUnavailable
		if c := r.URL.Query().Get("code"); c != "" {
			n, err := strconv.Atoi(c)
			if err != nil || n < 400 || n > 599 {
				http.Error(w, "code: 400-599", http.StatusBadRequest)
				return
			}
			code = n
		}
		b.mu.Lock()
		b.failCode = 0
		if r.URL.Query().Get("on") == "1" {
			b.failCode = code
		}
		b.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	case r.URL.Path == "/admin/delay":
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 || ms > 10000 {
			http.Error(w, "ms: 0-10000", http.StatusBadRequest)
			return
		}
		b.mu.Lock()
		b.delay = time.Duration(ms) * time.Millisecond
		b.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	case r.URL.Path == "/admin/hits":
		b.mu.Lock()
		defer b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(b.hits)
		return
	case strings.HasPrefix(r.URL.Path, "/admin/"):
		http.NotFound(w, r)
		return
	}
	failCode, delay := b.count(r.URL.Path, r.Header.Get("Via") != "")
	if delay > 0 {
		time.Sleep(delay)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(podHeader, b.host)
	if failCode != 0 {
		w.WriteHeader(failCode)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"host": b.host, "method": r.Method, "path": r.URL.Path, "headers": r.Header, "failing": failCode != 0,
	})
}
