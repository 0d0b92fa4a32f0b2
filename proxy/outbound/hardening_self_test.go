package outbound_test

// Issue #11, item 1: nothing sent through the sidecar reaches the
// sidecar's own listeners, by any spelling of their address, and a
// request that comes back round a loop is refused (Via).

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// expectRefusal checks an answer of the sidecar's own: status,
// X-Minimesh-Error, a JSON body of that kind, and one request ID in the
// header and the body.
func expectRefusal(t *testing.T, resp *http.Response, body []byte, code int, kind string) sidecarError {
	t.Helper()
	if resp.StatusCode != code {
		t.Fatalf("status %d, want %d (X-Minimesh-Error %q, body %q)", resp.StatusCode, code, resp.Header.Get("X-Minimesh-Error"), body)
	}
	if got := resp.Header.Get("X-Minimesh-Error"); got != kind {
		t.Fatalf("X-Minimesh-Error %q, want %q", got, kind)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
	var e sidecarError
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body is not JSON: %v: %q", err, body)
	}
	if e.Error != kind || e.Message == "" {
		t.Fatalf("body names error %q with message %q, want %q and a message", e.Error, e.Message, kind)
	}
	if id := resp.Header.Get("X-Request-ID"); !uuidRE.MatchString(id) || e.RequestID != id {
		t.Fatalf("X-Request-ID %q, body requestId %q: want one generated UUID in both", id, e.RequestID)
	}
	return e
}

// portOf is the port of host:port.
func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// canonicalName is how the sidecar names a destination: lowercase,
// without a trailing dot, an IPv6 zone's "%25" read as "%".
func canonicalName(authority string) string {
	host, port, _ := net.SplitHostPort(authority)
	host = strings.Replace(host, "%25", "%", 1)
	return net.JoinHostPort(strings.TrimSuffix(strings.ToLower(host), "."), port)
}

// selfSpellings are the ways an app can name a listener of the sidecar's
// on loopback: every one must be refused after resolution.
func selfSpellings(port string) []string {
	return []string{
		"127.0.0.1:" + port,
		"LOCALHOST:" + port,
		"localhost.:" + port,
		"127.0.0.2:" + port,
		"0:" + port,
		"0.0.0.0:" + port,
		"[::1]:" + port, // the sidecar listens on v4 only: still loopback and its port
		// A zone: Go dials an IPv4-mapped address as IPv4 with the zone
		// in its address string, and the kernel ignores it.
		"[::ffff:127.0.0.1%25lo]:" + port,
		"[::ffff:127.0.0.1%25anything]:" + port,
		"[::%25lo]:" + port,
	}
}

// addResolve adds a --resolve entry to a running sidecar's map (the
// dialer reads the one given to startSidecar), for an address known only
// once the sidecar listens: choosing a free port beforehand races other
// listeners. The dialer reads the map only to dial for a request, and
// every request is sent after this write, which the socket orders (for the
// race detector too: a write(2) happens before the read(2) that sees it).
func addResolve(m map[string]string, name, addr string) { m[name] = addr }

// TestSelfRequestsForbidden: through the sidecar as HTTP proxy, the
// sidecar's own outbound and admin ports are out of reach, by every
// spelling (names, loopback addresses, the unspecified address, IPv6
// loopback, a --resolve alias), in absolute form, in origin form with a
// Host header, and by CONNECT: 403 forbidden, never a breaker failure,
// one answer per request. An open breaker cannot be reset that way.
func TestSelfRequestsForbidden(t *testing.T) {
	u := newUpstream(t, status(http.StatusInternalServerError))
	res := map[string]string{geo: u.Host()}
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1, openTimeout: 60s}"), res)
	outAddr, adminAddr := sc.Addr, sc.Admin
	addResolve(res, "alias-svc:80", adminAddr)
	addResolve(res, "alias-out:80", outAddr)
	// Open geo's breaker: a reset through the proxy must not close it.
	if resp, _ := get(t, sc.Client(), "http://"+geo+"/"); resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("geo answered %d, want the upstream's 500", resp.StatusCode)
	}
	sc.waitBreakerState(geo, "open", time.Second)

	type request struct{ method, path string }
	adminRequests := []request{
		{http.MethodGet, "/debug/pprof/"},
		{http.MethodGet, "/debug/config"},
		{http.MethodPost, "/debug/breakers/reset?destination=" + geo},
	}
	outRequests := []request{{http.MethodGet, "/"}, {http.MethodPost, "/debug/config"}}
	type tc struct {
		name, raw, dest string
	}
	var cases []tc
	absolute := func(authorities []string, reqs []request) {
		for _, a := range authorities {
			for _, r := range reqs {
				cases = append(cases, tc{
					name: "absolute " + r.method + " http://" + a + r.path,
					raw:  r.method + " http://" + a + r.path + " HTTP/1.1\r\nHost: " + a + "\r\nContent-Length: 0\r\n\r\n",
					dest: canonicalName(a),
				})
			}
		}
	}
	outPort, adminPort := portOf(t, outAddr), portOf(t, adminAddr)
	absolute(selfSpellings(adminPort), adminRequests)
	absolute([]string{"alias-svc:80"}, adminRequests)
	absolute(selfSpellings(outPort), outRequests)
	absolute([]string{"alias-out:80"}, outRequests)
	for _, c := range []struct{ host, method, path string }{
		{"127.0.0.1:" + adminPort, http.MethodGet, "/debug/config"},
		{"LOCALHOST:" + adminPort, http.MethodGet, "/debug/pprof/"},
		{"localhost:" + adminPort, http.MethodPost, "/debug/breakers/reset?destination=" + geo},
		{"alias-svc", http.MethodPost, "/debug/breakers/reset?destination=" + geo},
		{"127.0.0.1:" + outPort, http.MethodGet, "/"},
	} {
		authority := c.host
		if !strings.Contains(authority, ":") {
			authority += ":80"
		}
		cases = append(cases, tc{
			name: "origin-form " + c.method + " " + c.path + " Host " + c.host,
			raw:  c.method + " " + c.path + " HTTP/1.1\r\nHost: " + c.host + "\r\nContent-Length: 0\r\n\r\n",
			dest: canonicalName(authority),
		})
	}
	connects := []string{"127.0.0.1:" + adminPort, "localhost:" + outPort, "alias-svc:80", "[::1]:" + adminPort, "[::ffff:127.0.0.1%25lo]:" + adminPort}
	for _, a := range connects {
		cases = append(cases, tc{
			name: "CONNECT " + a,
			raw:  "CONNECT " + a + " HTTP/1.1\r\nHost: " + a + "\r\n\r\n",
			dest: canonicalName(a),
		})
	}

	// Requests are counted in requests_total, tunnels in
	// tcp_connections_total (docs/metrics.md).
	answered := func(m metricSet) float64 {
		return m.value("minimesh_requests_total") + m.value("minimesh_tcp_connections_total")
	}
	before := answered(sc.metrics())
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := rawRoundTrip(t, sc.Addr, c.raw)
			e := expectRefusal(t, resp, body, http.StatusForbidden, "forbidden")
			if e.Destination != c.dest {
				t.Errorf("body names destination %q, want %q", e.Destination, c.dest)
			}
		})
	}

	// One answer per request: a request that had reached a listener of
	// the sidecar's would have been counted again there.
	m := sc.metrics()
	if got := answered(m) - before; got != float64(len(cases)) {
		t.Errorf("requests_total and tcp_connections_total grew by %v for %d requests, want %d", got, len(cases), len(cases))
	}
	if got, want := m.value("minimesh_requests_total", "code", "403"), len(cases)-len(connects); got != float64(want) {
		t.Errorf("requests_total{code=403} = %v, want %d", got, want)
	}
	if got := m.value("minimesh_tcp_connections_total", "direction", "outbound", "result", "forbidden"); got != float64(len(connects)) {
		t.Errorf("tcp_connections_total{result=forbidden} = %v, want %d (the CONNECTs)", got, len(connects))
	}
	for dest, b := range sc.breakers() {
		if dest == geo {
			continue
		}
		if b.State != "closed" || b.Counts.TotalFailures != 0 || b.Counts.ConsecutiveFailures != 0 {
			t.Errorf("breaker of %s: %+v, want closed without failures (a refusal is not the upstream's failure)", dest, b)
		}
	}
	// The resets sent through the proxy never arrived.
	if st := sc.breaker(geo); st.State != "open" {
		t.Fatalf("breaker of %s is %s after resets through the proxy, want still open", geo, st.State)
	}
	// The same reset sent straight to the admin port does close it: the
	// check above could have seen a reset.
	resp, err := sc.admin.Post("http://"+sc.Admin+"/debug/breakers/reset?destination="+geo, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || sc.breaker(geo).State != "closed" {
		t.Fatalf("direct reset: %d, breaker %s: want 200 and closed", resp.StatusCode, sc.breaker(geo).State)
	}
}

// openFDs counts the test process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

// TestSelfRequestLeavesNothingBehind: requests aimed at the sidecar
// itself end with their answer: no connection the sidecar made to itself
// stays open, no goroutine is left, and each is counted once.
func TestSelfRequestLeavesNothingBehind(t *testing.T) {
	sc := startSidecar(t, "", nil)
	outPort, adminPort := portOf(t, sc.Addr), portOf(t, sc.Admin)
	raws := []string{
		"GET http://127.0.0.1:" + outPort + "/ HTTP/1.1\r\nHost: 127.0.0.1:" + outPort + "\r\n\r\n",
		"GET http://localhost:" + adminPort + "/debug/config HTTP/1.1\r\nHost: localhost:" + adminPort + "\r\n\r\n",
		"POST http://[::1]:" + adminPort + "/debug/breakers/reset?destination=x:1 HTTP/1.1\r\nHost: [::1]:" + adminPort + "\r\nContent-Length: 0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: 0.0.0.0:" + outPort + "\r\n\r\n",
		"CONNECT 127.0.0.1:" + adminPort + " HTTP/1.1\r\nHost: 127.0.0.1:" + adminPort + "\r\n\r\n",
	}
	send := func() {
		for _, raw := range raws {
			resp, body := rawRoundTrip(t, sc.Addr, raw)
			expectRefusal(t, resp, body, http.StatusForbidden, "forbidden")
		}
	}
	// Warm up (destinations, breakers, metric series), then take the
	// baseline once the counts are steady.
	send()
	// Requests are counted in requests_total, tunnels in
	// tcp_connections_total (docs/metrics.md).
	answered := func() float64 {
		m := sc.metrics()
		return m.value("minimesh_requests_total") + m.value("minimesh_tcp_connections_total")
	}
	before := answered()
	var g0, f0 int
	proxytest.Poll(2*time.Second, 20*time.Millisecond, func() bool {
		g, f := runtime.NumGoroutine(), openFDs(t)
		steady := g == g0 && f == f0
		g0, f0 = g, f
		return steady
	})
	const rounds = 10
	for range rounds {
		send()
	}
	// The connections of the requests close as their answers are read;
	// the server's side closes a moment later.
	const slack = 2
	var g, f int
	if !proxytest.Poll(3*time.Second, 10*time.Millisecond, func() bool {
		g, f = runtime.NumGoroutine(), openFDs(t)
		return g <= g0+slack && f <= f0+slack
	}) {
		t.Fatalf("after %d requests to the sidecar itself: %d goroutines (was %d), %d open files (was %d)", rounds*len(raws), g, g0, f, f0)
	}
	if got := answered() - before; got != float64(rounds*len(raws)) {
		t.Fatalf("requests_total and tcp_connections_total grew by %v for %d requests, want one each", got, rounds*len(raws))
	}
}

// TestViaLoopRefused: sidecar A sends svc-b to sidecar B, and B sends it
// back to A. The request comes back to A with A's own Via entry and is
// refused with 508 loop: A and B each forwarded it exactly once, and the
// app gets the 508.
func TestViaLoopRefused(t *testing.T) {
	var logA, logB accessLog
	resA := map[string]string{}
	a := startSidecar(t, "", resA, withAccessLog(&logA))
	b := startSidecar(t, "", map[string]string{"svc-b:80": a.Addr}, withAccessLog(&logB))
	addResolve(resA, "svc-b:80", b.Addr)
	resp, body := get(t, a.Client(), "http://svc-b/loop")
	e := expectRefusal(t, resp, body, http.StatusLoopDetected, "loop")
	if e.Destination != "svc-b:80" {
		t.Errorf("the 508 names destination %q, want svc-b:80", e.Destination)
	}
	for _, s := range []struct {
		name string
		sc   *testSidecar
		log  *accessLog
	}{{"A", a, &logA}, {"B", b, &logB}} {
		m := s.sc.metrics()
		if got := m.value("minimesh_requests_total"); got != 1 {
			t.Errorf("sidecar %s counted %v requests, want exactly 1 (one forward)", s.name, got)
		}
		if got := m.value("minimesh_requests_total", "destination", "svc-b:80", "code", "508"); got != 1 {
			t.Errorf("sidecar %s requests_total{svc-b:80, 508} = %v, want 1", s.name, got)
		}
		es := s.log.wait(t, 1, 2*time.Second)
		if es[0].Destination != "svc-b:80" || es[0].Status != http.StatusLoopDetected || es[0].RequestID != e.RequestID {
			t.Errorf("sidecar %s access log %+v, want svc-b:80 508 with request ID %s", s.name, es[0], e.RequestID)
		}
	}
}

var viaEntry = regexp.MustCompile(`^1\.1 minimesh-[0-9a-f]{8}$`)

// TestViaAppended: an upstream sees this sidecar's Via entry exactly
// once, after the app's own, on the fast path and on http.Transport. A
// request that already carries the entry is refused as a loop before it
// reaches the upstream, and so is one that passed through 16 sidecars.
func TestViaAppended(t *testing.T) {
	var mu sync.Mutex
	var vias [][]string
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		mu.Lock()
		vias = append(vias, r.Header.Values("Via"))
		mu.Unlock()
	})
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	c := sc.Client()
	send := func(method string, via []string) (*http.Response, []byte) {
		var body *strings.Reader
		if method == http.MethodPost {
			body = strings.NewReader("payload")
		} else {
			body = strings.NewReader("")
		}
		req, err := http.NewRequest(method, "http://"+geo+"/via", body)
		if err != nil {
			t.Fatal(err)
		}
		if method != http.MethodPost {
			req.Body, req.ContentLength = http.NoBody, 0
		}
		for _, v := range via {
			req.Header.Add("Via", v)
		}
		return fetch(t, c, req)
	}
	last := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return vias[len(vias)-1]
	}
	var token string
	for _, tc := range []struct {
		method string
		appVia []string
	}{
		{http.MethodGet, nil},
		{http.MethodGet, []string{"1.0 app-proxy"}},
		{http.MethodPost, nil},
		{http.MethodPost, []string{"1.0 app-proxy", "1.1 corp-gw"}},
	} {
		resp, body := send(tc.method, tc.appVia)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s with Via %q: %d %q, want 200", tc.method, tc.appVia, resp.StatusCode, body)
		}
		got := last()
		joined := strings.Join(got, ", ")
		if strings.Count(joined, "minimesh-") != 1 {
			t.Fatalf("%s: upstream saw Via %q, want one minimesh entry", tc.method, got)
		}
		if len(got) != len(tc.appVia)+1 || strings.Join(got[:len(tc.appVia)], ", ") != strings.Join(tc.appVia, ", ") || !viaEntry.MatchString(got[len(got)-1]) {
			t.Fatalf("%s: upstream saw Via %q, want the app's %q followed by \"1.1 minimesh-XXXXXXXX\"", tc.method, got, tc.appVia)
		}
		if tok := strings.TrimPrefix(got[len(got)-1], "1.1 "); token == "" {
			token = tok
		} else if tok != token {
			t.Fatalf("the sidecar's Via entry changed from %s to %s", token, tok)
		}
	}

	hits := u.hits.Load()
	others := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("1.1 minimesh-%08x", i+1)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		via  []string
		want int
	}{
		{"own entry", []string{"1.0 app-proxy, 1.1 " + token}, http.StatusLoopDetected},
		{"own entry, separate line", []string{"1.0 app-proxy", "1.1 " + token}, http.StatusLoopDetected},
		{"16 other sidecars", others(16), http.StatusLoopDetected},
		{"15 other sidecars", others(15), http.StatusOK},
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			resp, body := send(method, tc.via)
			if tc.want == http.StatusLoopDetected {
				expectRefusal(t, resp, body, tc.want, "loop")
			} else if resp.StatusCode != tc.want {
				t.Fatalf("%s %s: %d %q, want %d", tc.name, method, resp.StatusCode, body, tc.want)
			}
		}
		if tc.want == http.StatusOK {
			hits += 2
		}
		if got := u.hits.Load(); got != hits {
			t.Fatalf("%s: upstream saw %d requests, want %d", tc.name, got, hits)
		}
	}
}
