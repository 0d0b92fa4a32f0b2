package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func serve(addr string) {
	srv := &http.Server{Addr: addr, Handler: newBackend()}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		time.Sleep(3 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// backend answers every request with a JSON echo of it, or with 503 while
// it fails. Besides:
//
//	/admin/fail?on=1   fail from now on (on=0: heal)
//	/admin/hits        the requests it received, by path (at most 1,000
//	                   paths), and those that came through a sidecar (Via)
//	/healthz           200 even while failing (a readiness probe)
//
// /admin/* and /healthz are not counted.
type backend struct {
	host string

	mu      sync.Mutex
	failing bool
	hits    hits
}

type hits struct {
	Total int            `json:"total"`
	Paths map[string]int `json:"paths"`
	Via   map[string]int `json:"via"`
}

const maxPaths = 1000

func newBackend() *backend {
	host, _ := os.Hostname()
	return &backend{host: host, hits: hits{Paths: map[string]int{}, Via: map[string]int{}}}
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/healthz":
		w.WriteHeader(http.StatusOK)
		return
	case r.URL.Path == "/admin/fail":
		b.mu.Lock()
		b.failing = r.URL.Query().Get("on") == "1"
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
	b.mu.Lock()
	b.hits.Total++
	if _, ok := b.hits.Paths[r.URL.Path]; ok || len(b.hits.Paths) < maxPaths {
		b.hits.Paths[r.URL.Path]++
		if r.Header.Get("Via") != "" {
			b.hits.Via[r.URL.Path]++
		}
	}
	failing := b.failing
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if failing {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"host": b.host, "method": r.Method, "path": r.URL.Path, "headers": r.Header, "failing": failing,
	})
}
