package outbound_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/proxy/leanhttp"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// refusedCase is a request the sidecar refuses, and what the app sends
// behind it on the same connection.
type refusedCase struct {
	name   string
	head   string
	code   int
	kind   string
	behind string
}

// TestRefusedConnectClosesConnection: a CONNECT the sidecar answers with
// anything but its 200 (400 bad authority, 502 connect-failure, 503
// circuit-open, 403 its own port; on a redirected connection 400 for any
// CONNECT) ends the app's connection with the answer: the bytes behind a
// CONNECT are the tunnel's, never requests. The TE10 guard stops following
// a connection at a CONNECT, so before 2026-12-06 an HTTP/1.0 request
// with Transfer-Encoding behind a refused CONNECT went upstream and its
// body, a second request, after it: smuggled. So too the 400 for a request
// target the sidecar cannot forward (docs/operations.md): the request
// behind it was served. Both servers, on the proxy listener and the
// redirected one.
func TestRefusedConnectClosesConnection(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
	}))
	defer up.Close()
	host := strings.TrimPrefix(up.URL, "http://")
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 63) + ".example"
	// te10 is an HTTP/1.0 request with Transfer-Encoding whose "body" is a
	// second request: what net/http serves as two once nothing refuses it.
	te10 := func(prefix string) string {
		return "POST " + prefix + "/te10 HTTP/1.0\r\nHost: " + host + "\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"GET " + prefix + "/smuggled HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	}
	next := func(prefix string) string { return "GET " + prefix + "/next HTTP/1.1\r\nHost: " + host + "\r\n\r\n" }
	proxied := "http://" + host

	for _, server := range []string{sidecar.ServerLean, sidecar.ServerStd} {
		t.Run("proxy listener/"+server, func(t *testing.T) {
			sc := startSidecar(t, policyDoc("payments", "payments-service", "circuitBreaker: {consecutiveFailures: 1, openTimeout: 60s}"),
				resolve(refused.Addr(t), secure), withServer(server))
			connect := func(authority string) string {
				return "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n"
			}
			// In order: the connect-failure opens the breaker the next row meets.
			testRefusedCloses(t, sc.Addr, &mu, &seen, []refusedCase{
				{"CONNECT without a port", connect("nohost"), 400, "bad-request", te10(proxied)},
				{"CONNECT to a long authority", connect(long + ":443"), 400, "bad-request", te10(proxied)},
				{"CONNECT connect-failure", connect(secure), 502, "connect-failure", te10(proxied)},
				{"CONNECT circuit-open", connect(secure), 503, "circuit-open", te10(proxied)},
				{"CONNECT to the sidecar itself", connect(sc.Addr), 403, "forbidden", te10(proxied)},
				{"https:// without CONNECT", "GET https://" + host + "/ HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 400, "bad-request", next(proxied)},
				{"no host", "GET / HTTP/1.1\r\nHost: \r\n\r\n", 400, "bad-request", next(proxied)},
				{"a host:port over 259 bytes", "GET http://" + long + "/ HTTP/1.1\r\nHost: " + long + "\r\n\r\n", 400, "bad-request", next(proxied)},
			})
		})
	}
	for _, tc := range []struct {
		name  string
		serve func(r *rig, orig string) string
	}{
		{"redirected/" + sidecar.ServerLean, (*rig).redirectedLean},
		{"redirected/" + sidecar.ServerStd, redirectedGuarded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.serve(newRig(t, "", 0), host)
			testRefusedCloses(t, addr, &mu, &seen, []refusedCase{
				{"CONNECT", "CONNECT elsewhere:443 HTTP/1.1\r\nHost: elsewhere:443\r\n\r\n", 400, "bad-request", te10("")},
				{"absolute-form target", "GET http://elsewhere/ HTTP/1.1\r\nHost: elsewhere\r\n\r\n", 400, "bad-request", next("")},
			})
		})
	}
}

// testRefusedCloses sends each case's request and what is behind it on a
// connection of its own to addr, and wants the sidecar's answer, then the
// end of the connection, and nothing at the upstream (seen).
func testRefusedCloses(t *testing.T, addr string, mu *sync.Mutex, seen *[]string, cases []refusedCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A bound on a failing run (the connection the old code kept
			// open), not part of what is tested.
			c.SetDeadline(time.Now().Add(5 * time.Second))
			mu.Lock()
			before := len(*seen)
			mu.Unlock()
			if _, err := io.WriteString(c, tc.head+tc.behind); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || resp.Header.Get("X-Minimesh-Error") != tc.kind {
				t.Errorf("answer %d %q, want %d %q", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), tc.code, tc.kind)
			}
			rest, err := io.ReadAll(br)
			if err != nil || len(rest) != 0 {
				first, _, _ := strings.Cut(string(rest), "\r\n")
				t.Errorf("after the answer: %d bytes (%q…), %v; want the end of the connection", len(rest), first, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if got := (*seen)[before:]; len(got) != 0 {
				t.Errorf("the upstream saw %q, want nothing", got)
			}
		})
	}
}

// redirectedGuarded is redirectedServer as the sidecar serves redirected
// connections with --server std: net/http behind the TE10 guard.
func redirectedGuarded(r *rig, orig string) string {
	r.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(orig)
	srv := &http.Server{Handler: r.h.Transparent(), ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
		return outbound.WithOriginalDst(ctx, ap)
	}}
	go func() { _ = srv.Serve(leanhttp.GuardListener(ln)) }()
	r.t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
