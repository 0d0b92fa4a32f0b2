package inbound

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/replayguard"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestAppCrashOnRequestNotResent: a request the app drops without an
// answer after reading it (a crash on it) is not written into the app
// again, whatever its method and however many connections to the app
// are kept: http.Transport sent a replayable one again on each kept
// connection (21 runs with 20 kept), and an app that crashed only the
// first time answered the second, recorded as a success.
func TestAppCrashOnRequestNotResent(t *testing.T) {
	for _, tc := range []struct {
		name, method, extra string
		warm                int
		crashes             int32 // -1: every time
	}{
		{"GET, 20 kept", "GET", "", 20, -1},
		{"GET crashing once, 1 kept", "GET", "", 1, 1},
		{"HEAD, 4 kept", "HEAD", "", 4, -1},
		{"OPTIONS, 4 kept", "OPTIONS", "", 4, -1},
		{"TRACE, 4 kept", "TRACE", "", 4, -1},
		{"bodiless POST with Idempotency-Key, 4 kept", "POST", "Idempotency-Key: k\r\nContent-Length: 0\r\n", 4, -1},
		{"bodiless DELETE, 4 kept", "DELETE", "", 4, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var runs atomic.Int32
			var arrived sync.WaitGroup
			arrived.Add(tc.warm)
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				if req.URL.Path == "/crash" {
					if n := runs.Add(1); tc.crashes < 0 || n <= tc.crashes {
						panic(http.ErrAbortHandler)
					}
					_, _ = io.WriteString(w, "ok")
					return
				}
				// Every warm request holds its connection until all
				// have arrived: each on a connection of its own.
				arrived.Done()
				arrived.Wait()
				_, _ = io.WriteString(w, "ok")
			}), Config{})
			go func() {
				for range r.seen {
				}
			}()
			var wg sync.WaitGroup
			for range tc.warm {
				wg.Go(func() {
					if resp := r.exchange(t, "GET /warm HTTP/1.1\r\nHost: a\r\n\r\n"); resp.StatusCode != http.StatusOK {
						t.Errorf("warm: %d", resp.StatusCode)
					}
				})
			}
			wg.Wait()
			resp := r.exchange(t, tc.method+" /crash HTTP/1.1\r\nHost: a\r\n"+tc.extra+"\r\n")
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("caller got %d, want 502", resp.StatusCode)
			}
			if got := runs.Load(); got != 1 {
				t.Errorf("the app ran /crash %d times, want 1", got)
			}
			// The log flushes every 200 ms.
			proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool { return strings.Contains(r.logOut.String(), "/crash") })
			var line map[string]any
			for _, l := range r.logLines(t) {
				if l["path"] == "/crash" {
					line = l
				}
			}
			if line == nil || line["status"] != float64(http.StatusBadGateway) {
				t.Errorf("access log line of /crash: %v, want status 502", line)
			}
		})
	}
}

// TestReplayGuardLetsUnwrittenTryGoAgain: a try after one that wrote
// nothing (a kept connection the app closed while idle, found as the
// request was about to go) takes its connection as usual; one after a
// try that wrote is refused: its connection closed before any write,
// the request's context ended with errNotResent.
func TestReplayGuardLetsUnwrittenTryGoAgain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		written int // bytes the first try wrote
		refused bool
	}{
		{"nothing written", 0, false},
		{"written", 5, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			var g replayGuard
			ctx, cancel := g.guard(context.Background(), req)
			if cancel == nil {
				t.Fatal("a bodiless GET is not guarded")
			}
			defer cancel(nil)
			first, firstPeer := net.Pipe()
			defer firstPeer.Close()
			go func() { _, _ = io.Copy(io.Discard, firstPeer) }()
			gotConn := httptrace.ContextClientTrace(ctx).GotConn
			a := replayguard.Count(first)
			gotConn(httptrace.GotConnInfo{Conn: a, Reused: true})
			if tc.written > 0 {
				if _, err := a.Write(make([]byte, tc.written)); err != nil {
					t.Fatal(err)
				}
			}
			second, secondPeer := net.Pipe()
			defer secondPeer.Close()
			b := replayguard.Count(second)
			gotConn(httptrace.GotConnInfo{Conn: b, Reused: true})
			done := make(chan error, 1)
			go func() { _, err := b.Write([]byte("GET / HTTP/1.1\r\n")); done <- err }()
			if tc.refused {
				if err := <-done; err == nil {
					t.Error("the refused try's write went through")
				}
				if context.Cause(ctx) != errNotResent {
					t.Errorf("context cause %v, want errNotResent", context.Cause(ctx))
				}
				return
			}
			buf := make([]byte, 64)
			if n, err := secondPeer.Read(buf); err != nil || n == 0 {
				t.Errorf("the second try's write did not arrive: %d, %v", n, err)
			}
			if ctx.Err() != nil {
				t.Errorf("context ended: %v", context.Cause(ctx))
			}
		})
	}
}

// TestResendable: the requests the guard watches are those
// http.Transport writes again after a write (its isReplayable), as the
// ReverseProxy makes them: bodiless.
func TestResendable(t *testing.T) {
	for _, tc := range []struct {
		method, key string
		length      int64
		want        bool
	}{
		{http.MethodGet, "", 0, true},
		{http.MethodHead, "", 0, true},
		{http.MethodOptions, "", 0, true},
		{http.MethodTrace, "", 0, true},
		{http.MethodGet, "", -1, false}, // a chunked body
		{http.MethodPost, "", 0, false},
		{http.MethodDelete, "", 0, false},
		{http.MethodPost, "Idempotency-Key", 0, true},
		{http.MethodPatch, "X-Idempotency-Key", 0, true},
		{http.MethodPost, "Idempotency-Key", 3, false},
	} {
		req := httptest.NewRequest(tc.method, "/", nil)
		req.ContentLength = tc.length
		if tc.key != "" {
			req.Header.Set(tc.key, "k")
		}
		if got := resendable(req); got != tc.want {
			t.Errorf("%s %q length %d: %v, want %v", tc.method, tc.key, tc.length, got, tc.want)
		}
	}
}
