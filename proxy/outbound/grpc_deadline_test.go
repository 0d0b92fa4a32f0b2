package outbound_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
)

// TestGRPCClientDeadlineNotABreakerFailure: a caller's own deadline (a
// grpc-timeout shorter than the policy's timeout, or none) or its cancel
// (RST_STREAM CANCEL) ends calls to a healthy service; none of them is
// the service's failure, so the breaker stays closed and every other
// caller's calls go on (docs/grpc.md, "Deadlines").
func TestGRPCClientDeadlineNotABreakerFailure(t *testing.T) {
	for _, tc := range []struct {
		name     string
		timeout  string // the policy's
		deadline bool   // a deadline (grpc-timeout), else a cancel
	}{
		{"deadline, no policy timeout", "", true},
		{"deadline under the policy timeout", "timeout: 2s\n", true},
		{"cancel", "", false},
		{"cancel under the policy timeout", "timeout: 2s\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := &healthServer{delay: 50 * time.Millisecond}
			addr := startGRPC(t, hs)
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, tc.timeout+"circuitBreaker:\n  consecutiveFailures: 3\n  openTimeout: 60s\n"),
				resolve(addr, healthSvc), withAccessLog(&alog))
			c := grpcClient(t, sc, healthSvc)
			const calls = 8
			want := codes.DeadlineExceeded
			if !tc.deadline {
				want = codes.Canceled
			}
			for i := 0; i < calls; i++ {
				var err error
				if tc.deadline {
					_, err = check(c, 10*time.Millisecond)
				} else {
					ctx, cancel := context.WithCancel(context.Background())
					time.AfterFunc(10*time.Millisecond, cancel)
					_, err = c.Check(ctx, &healthpb.HealthCheckRequest{})
					cancel()
				}
				if grpcstatus.Code(err) != want {
					t.Fatalf("call %d: %v, want %v", i+1, err, want)
				}
			}
			if _, err := check(c, 5*time.Second); err != nil {
				t.Errorf("a call with time enough: %v", err)
			}
			// Recorded as what the client read, whoever ended the call:
			// its own reset at its deadline was CANCELLED in the metric,
			// the span and the log. (A call its client ended before it
			// left, under load, never reached the sidecar: the lines are
			// those of the calls that did, each recorded before its log
			// line is written.)
			var lines []accessEntry
			if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
				lines = alog.entries(t)
				return float64(len(lines)) == sc.metric("minimesh_requests_total", "destination", healthSvc) && len(lines) > 1
			}) {
				t.Fatalf("%d access log lines, %v requests recorded", len(lines), sc.metric("minimesh_requests_total", "destination", healthSvc))
			}
			if b := sc.breaker(healthSvc); b.State != "closed" {
				t.Errorf("breaker %s after %d calls the callers themselves ended, want closed", b.State, calls)
			}
			if got := sc.metric("minimesh_circuit_breaker_rejected_total", "destination", healthSvc); got != 0 {
				t.Errorf("rejected_total = %v, want 0", got)
			}
			name := map[codes.Code]string{codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.Canceled: "CANCELLED"}[want]
			for i, e := range lines {
				if e.GRPCStatus != name && e.GRPCStatus != "OK" {
					t.Errorf("access log line %d: grpc_status %q (%+v), want %q", i+1, e.GRPCStatus, e, name)
				}
			}
			if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", name); got != float64(len(lines)-1) {
				t.Errorf("grpc_requests_total{%s} = %v, want %d", name, got, len(lines)-1)
			}
		})
	}
}

// h2cCall sends one unary gRPC call (an empty message) over h2c to the
// sidecar for authority with the given grpc-timeout ("" for none), as a
// client that never cancels it: it waits for whatever answer comes. It
// returns the call's grpc-status ("reset" for a stream reset after its
// headers) and X-Minimesh-Error.
func h2cCall(t *testing.T, tr http.RoundTripper, sidecar, authority, timeout string) (string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+sidecar+"/grpc.health.v1.Health/Check", bytes.NewReader(make([]byte, 5)))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = authority
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	if timeout != "" {
		req.Header.Set("Grpc-Timeout", timeout)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "reset", resp.Header.Get("X-Minimesh-Error") // the stream cut after its headers
	}
	g := resp.Header.Get("Grpc-Status")
	if g == "" {
		g = resp.Trailer.Get("Grpc-Status")
	}
	return g, resp.Header.Get("X-Minimesh-Error")
}

// TestGRPCClientDeadlineOutcomes: every way a call can end at its
// client's own deadline (the sidecar's timer just after it, the
// upstream's DEADLINE_EXCEEDED in the headers or the trailers, the
// upstream's reset) is not the upstream's failure, while the policy's
// own timeout and a DEADLINE_EXCEEDED well before the client's deadline
// still are. The client here never cancels: each outcome is the one
// reported, not the client's reset racing it. The deadline is short and
// wall time, so a loaded machine may spend it before a call reaches the
// upstream: such a call must still be DEADLINE_EXCEEDED without a
// breaker failure, and the test makes another, counting the calls that
// reached the upstream, not the calls made.
func TestGRPCClientDeadlineOutcomes(t *testing.T) {
	const clientDeadline = 40 * time.Millisecond
	for _, tc := range []struct {
		name    string
		policy  string
		timeout string // the client's grpc-timeout
		// answer answers the call at the upstream.
		answer   func(w http.ResponseWriter, r *http.Request)
		wantCode string // one of, separated by spaces
		wantOpen bool
	}{
		{"sidecar timer at the client's deadline", "", "40m", hangCall, "4", false},
		{"upstream DEADLINE_EXCEEDED, trailers-only, at it", "timeout: 5s\n", "40m", deadlineAfter(clientDeadline, false), "4", false},
		// The trailers, or under load the sidecar's timer first: a reset.
		{"upstream DEADLINE_EXCEEDED in trailers, at it", "", "40m", deadlineAfter(clientDeadline, true), "4 reset", false},
		{"upstream reset at it", "", "40m", func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(clientDeadline)
			panic(http.ErrAbortHandler)
		}, "4", false},
		// Controls: the upstream's failures, or the policy's timeout.
		{"upstream DEADLINE_EXCEEDED long before it", "", "5S", deadlineAfter(0, false), "4", true},
		{"policy timeout shorter", "timeout: 40ms\n", "5S", hangCall, "4", true},
		{"no client deadline", "timeout: 40ms\n", "", hangCall, "4", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			up := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				_, _ = io.Copy(io.Discard, r.Body)
				tc.answer(w, r)
			})}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go func() { _ = up.Serve(ln) }()
			t.Cleanup(func() { up.Close() })
			sc := startSidecar(t, policyDoc("health", healthSvc, tc.policy+"circuitBreaker:\n  consecutiveFailures: 2\n  openTimeout: 60s\n"),
				resolve(ln.Addr().String(), healthSvc))
			tr := h2cClient(t).Transport
			const calls = 3
			if tc.wantOpen {
				for i := 0; i < calls; i++ {
					code, kind := h2cCall(t, tr, sc.Addr, healthSvc, tc.timeout)
					if i == calls-1 {
						if kind != "circuit-open" {
							t.Errorf("call %d: grpc-status %s, %q; want the open breaker's answer", i+1, code, kind)
						}
					} else if !slices.Contains(strings.Fields(tc.wantCode), code) {
						t.Errorf("call %d: grpc-status %s (%q), want %s", i+1, code, kind, tc.wantCode)
					}
				}
				// The open breaker's answer sent nothing upstream. (A policy
				// timeout may end a call before the upstream saw it: a
				// failure all the same.)
				if n := hits.Load(); n > calls-1 {
					t.Errorf("the upstream saw %d calls, want at most %d", n, calls-1)
				}
			} else {
				// calls calls that reached the upstream: under load the 40 ms
				// may run out before a call gets there, the sidecar's timer
				// answering it. Such a call is its client's deadline too (the
				// same code, no breaker failure) but not the outcome named, so
				// another is made, up to maxCalls; every one must leave the
				// breaker closed.
				const maxCalls = 10
				made := 0
				for ; made < maxCalls && hits.Load() < calls; made++ {
					code, kind := h2cCall(t, tr, sc.Addr, healthSvc, tc.timeout)
					if !slices.Contains(strings.Fields(tc.wantCode), code) || kind == "circuit-open" {
						t.Errorf("call %d: grpc-status %s (%q), want %s", made+1, code, kind, tc.wantCode)
						break
					}
				}
				// A call the sidecar reset on its way may reach the
				// upstream after its client had the answer.
				if !t.Failed() && !proxytest.Poll(10*time.Second, 5*time.Millisecond, func() bool { return hits.Load() >= calls }) {
					t.Errorf("the upstream saw %d of %d calls, want %d", hits.Load(), made, calls)
				}
				if made > calls {
					t.Logf("%d calls for %d that reached the upstream", made, hits.Load())
				}
			}
			if b := sc.breaker(healthSvc); (b.State == "open") != tc.wantOpen {
				t.Errorf("breaker %s, want open: %v", b.State, tc.wantOpen)
			}
		})
	}
}

// deadlineAfter answers DEADLINE_EXCEEDED after wait: trailers-only, or
// after the headers and a message, in the trailers.
func deadlineAfter(wait time.Duration, trailers bool) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		if trailers {
			w.Header().Set("Trailer", "Grpc-Status")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(make([]byte, 5))
			w.(http.Flusher).Flush()
			time.Sleep(wait)
			w.Header().Set("Grpc-Status", "4")
			return
		}
		time.Sleep(wait)
		w.Header().Set("Grpc-Status", "4")
		w.WriteHeader(http.StatusOK)
	}
}

// hangCall answers nothing until the call ends.
func hangCall(_ http.ResponseWriter, r *http.Request) { hang(r) }
