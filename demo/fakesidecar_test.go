package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A tiny stand-in for minimesh-proxy, for testing the demo's own logic and
// screen without the real sidecar: the test binary turns into it when
// started with DEMO_FAKE_SIDECAR=1. It implements only what the demo uses,
// after DESIGN.md. It is never part of the demo itself.

const fakeSidecarEnv = "DEMO_FAKE_SIDECAR"

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(fakeSidecarEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "run":
		if err := fakeSidecar(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "fake sidecar:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case os.Getenv(demoModeEnv) == "1":
		os.Exit(demoMode())
	}
	os.Exit(m.Run())
}

// TestDemoFakeSidecar runs the demo against the fake sidecar. It is a
// development aid: set DEMO_FAKE_SIDECAR_TEST=1 to run it.
func TestDemoFakeSidecar(t *testing.T) {
	if os.Getenv("DEMO_FAKE_SIDECAR_TEST") != "1" {
		t.Skip("set DEMO_FAKE_SIDECAR_TEST=1 to run the demo against the fake sidecar")
	}
	t.Setenv(fakeSidecarEnv, "1")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	assertStory(t, self, 25*time.Second)
}

type fakeBreaker struct {
	mu                   sync.Mutex
	state                string
	requests, succ, fail int64
	consSucc, consFail   int64
	openUntil            time.Time
	probes               int
	openTimeout          time.Duration
	transitions          map[transition]int
}

func (b *fakeBreaker) setState(s string) {
	b.transitions[transition{b.state, s}]++
	b.state = s
	b.consSucc, b.consFail, b.probes = 0, 0, 0
	if s == "open" {
		b.openUntil = time.Now().Add(b.openTimeout)
	}
}

func (b *fakeBreaker) current() string {
	if b.state == "open" && time.Now().After(b.openUntil) {
		b.setState("half-open")
	}
	return b.state
}

func (b *fakeBreaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.current() {
	case "open":
		return false
	case "half-open":
		if b.probes >= 2 {
			return false
		}
		b.probes++
	}
	b.requests++
	return true
}

func (b *fakeBreaker) done(ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok {
		b.succ++
		b.consSucc++
		b.consFail = 0
		if b.state == "half-open" && b.consSucc >= 2 {
			b.setState("closed")
		}
		return
	}
	b.fail++
	b.consFail++
	b.consSucc = 0
	switch {
	case b.state == "half-open":
		b.setState("open")
	case b.state == "closed" && b.consFail >= 5:
		b.setState("open")
	}
}

func fakeSidecar(args []string) error {
	if len(args) == 0 || args[0] != "run" {
		return errors.New("usage: run [flags]")
	}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	outbound := fs.String("outbound-addr", "127.0.0.1:15001", "")
	admin := fs.String("admin-addr", ":15020", "")
	dir := fs.String("policy-dir", "", "")
	fs.String("service-name", "", "")
	fs.String("log-level", "info", "")
	resolve := map[string]string{}
	fs.Func("resolve", "", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return errors.New("want HOST:PORT=ADDR")
		}
		resolve[k] = v
		return nil
	})
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	yaml, err := os.ReadFile(filepath.Join(*dir, "nominatim.yaml"))
	if err != nil {
		return err
	}
	mt := regexp.MustCompile(`openTimeout: (\S+)`).FindSubmatch(yaml)
	if mt == nil {
		return errors.New("no openTimeout")
	}
	ot, err := time.ParseDuration(string(mt[1]))
	if err != nil {
		return err
	}
	br := &fakeBreaker{state: "closed", openTimeout: ot, transitions: map[transition]int{}}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if a, ok := resolve[addr]; ok {
				addr = a
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-ID")
		if id == "" {
			b := make([]byte, 16)
			rand.Read(b)
			id = hex.EncodeToString(b)
		}
		w.Header().Set("X-Request-ID", id)
		if !br.allow() {
			w.Header().Set("X-Minimesh-Error", "circuit-open")
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(503)
			fmt.Fprintf(w, `{"error":"circuit open","destination":%q}`+"\n", r.URL.Host)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		out := r.Clone(ctx)
		out.RequestURI = ""
		out.Header.Set("X-Request-ID", id)
		resp, err := tr.RoundTrip(out)
		if err != nil {
			br.done(false)
			if ctx.Err() != nil {
				w.Header().Set("X-Minimesh-Error", "timeout")
				w.WriteHeader(504)
				return
			}
			w.Header().Set("X-Minimesh-Error", "connect-failure")
			w.WriteHeader(502)
			return
		}
		defer resp.Body.Close()
		br.done(resp.StatusCode < 500)
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			w.Write(buf[:n])
			if err != nil {
				break
			}
		}
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/debug/breakers", func(w http.ResponseWriter, r *http.Request) {
		br.mu.Lock()
		defer br.mu.Unlock()
		v := breakerView{Destination: destination, Policy: "nominatim", State: br.current()}
		v.Counts.Requests, v.Counts.TotalSuccesses, v.Counts.TotalFailures = br.requests, br.succ, br.fail
		v.Counts.ConsecutiveSuccesses, v.Counts.ConsecutiveFailures = br.consSucc, br.consFail
		if br.state == "open" {
			v.OpenUntil = br.openUntil.Format(time.RFC3339Nano)
		}
		json.NewEncoder(w).Encode(map[string]any{"destinations": []breakerView{v}})
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		br.mu.Lock()
		defer br.mu.Unlock()
		for t, n := range br.transitions {
			fmt.Fprintf(w, "minimesh_circuit_breaker_transitions_total{destination=%q,from=%q,to=%q} %d\n", destination, t.From, t.To, n)
		}
	})
	ps := &http.Server{Addr: *outbound, Handler: proxy}
	as := &http.Server{Addr: *admin, Handler: mux}
	errc := make(chan error, 2)
	go func() { errc <- ps.ListenAndServe() }()
	go func() { errc <- as.ListenAndServe() }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	select {
	case err := <-errc:
		return err
	case <-sig:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	as.Shutdown(ctx)
	return ps.Shutdown(ctx)
}
