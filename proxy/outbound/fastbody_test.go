package outbound

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestFastBodiesAsTransport sends requests of every method, with bodies
// and without, through the handler four times, by fastProxy on the
// fast transport, by the ReverseProxy on it, and by the ReverseProxy on
// http.Transport (--std-transport), behind net/http's server, and
// behind the lean loop, under a
// policy with retries (the body held for replay) and one without: the
// upstream must receive the same bytes, head and body, and the app the
// same answer. The requests the fast transport takes (bodies of up to
// fastBodyMax bytes, held whole; none) must have been sent by it: its
// pool keeps their connection. Each request goes twice on one
// connection, so that the second goes on a kept one.
func TestFastBodiesAsTransport(t *testing.T) {
	big := strings.Repeat("b", fastBodyMax)
	requests := []struct {
		name, req string
		fast      bool
	}{
		{"post", "POST http://geo:8000/p?q=1 HTTP/1.1\r\nHost: geo:8000\r\nContent-Type: application/json\r\nContent-Length: 9\r\nUser-Agent: app/1\r\n\r\n{\"a\": 1}\n", true},
		{"put", "PUT /x HTTP/1.1\r\nHost: geo:8000\r\nContent-Length: 3\r\n\r\nabc", true},
		{"patch", "PATCH /x HTTP/1.1\r\nHost: geo:8000\r\nContent-Length: 3\r\nIdempotency-Key: k\r\n\r\nabc", true},
		{"delete with body", "DELETE /x HTTP/1.1\r\nHost: geo:8000\r\nContent-Length: 2\r\n\r\n{}", true},
		{"delete", "DELETE /x HTTP/1.1\r\nHost: geo:8000\r\n\r\n", true},
		{"post empty", "POST /x HTTP/1.1\r\nHost: geo:8000\r\nContent-Length: 0\r\n\r\n", true},
		{"post without length", "POST /x HTTP/1.1\r\nHost: geo:8000\r\n\r\n", true},
		{"custom method", "PURGE /x HTTP/1.1\r\nHost: geo:8000\r\nContent-Length: 1\r\n\r\nx", true},
		{"hop-by-hop", "POST /x HTTP/1.1\r\nHost: geo:8000\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nTe: trailers\r\nContent-Length: 1\r\n\r\nx", true},
		{"http/1.0", "POST /x HTTP/1.0\r\nHost: geo:8000\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", true},
		{"largest", "POST /x HTTP/1.1\r\nHost: geo:8000\r\nContent-Length: 16384\r\n\r\n" + big, true},
		{"larger", "POST /x HTTP/1.1\r\nHost: geo:8000\r\nContent-Length: 16385\r\n\r\n" + big + "x", false},
		{"chunked", "POST /x HTTP/1.1\r\nHost: geo:8000\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false},
	}
	responses := map[string]string{
		"length":  "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
		"empty":   "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
		"error":   "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\noops",
		"chunked": "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	}
	policies := map[string]string{
		"retries":    geoPolicy + "  retries: {attempts: 2, retryOn: [reset], backoff: {base: 1ms, max: 2ms}}\n",
		"no retries": geoPolicy,
	}
	for _, rq := range requests {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(rq.req)))
		if err != nil {
			t.Fatal(err)
		}
		st := &reqState{arrived: true} // as the lean loop holds a body sent with its head
		if r.ContentLength != 0 {
			st.in.ReadCloser = r.Body
		}
		if got := New(Config{}, policy.NewTable(nil, "default")).fastProxied(r, st); got != rq.fast {
			t.Fatalf("%s: fastProxy forwards it: %v, want %v; the comparison would prove less", rq.name, got, rq.fast)
		}
		for sname, resp := range responses {
			for pname, doc := range policies {
				t.Run(rq.name+"/"+sname+"/"+pname, func(t *testing.T) {
					up := newBodyUpstream(t, resp)
					table := parseTable(t, doc)
					cfg := Config{Metrics: telemetry.New(0), Resolve: map[string]string{"geo:8000": up.addr}}
					h := New(cfg, table)
					defer h.CloseIdleConnections()
					px := httptest.NewServer(h)
					defer px.Close()
					cfg.StdTransport, cfg.Metrics = true, telemetry.New(0)
					hs := New(cfg, table)
					defer hs.CloseIdleConnections()
					pxs := httptest.NewServer(hs)
					defer pxs.Close()

					fastApp := exchangeTwice(t, px.Listener.Addr().String(), rq.req)
					fastUp := normalize(up.got.last())
					kept := fastOf(h).idleTo("geo:8000")
					h.rpOnly.Store(true)
					rpApp := exchangeTwice(t, px.Listener.Addr().String(), rq.req)
					rpUp := normalize(up.got.last())
					h.rpOnly.Store(false)
					if rpUp != fastUp {
						t.Errorf("the upstream received\n%q\nfrom fastProxy and\n%q\nfrom the ReverseProxy", fastUp, rpUp)
					}
					if rpApp != fastApp {
						t.Errorf("the app received\n%q\nfrom fastProxy and\n%q\nfrom the ReverseProxy", fastApp, rpApp)
					}
					stdApp := exchangeTwice(t, pxs.Listener.Addr().String(), rq.req)
					stdUp := strings.ReplaceAll(normalize(up.got.last()), hs.hop.token, h.hop.token)
					if strings.Count(stdUp, " HTTP/1.1\r\n") != strings.Count(stdApp, "\r\nX-Request-Id: ") {
						t.Fatalf("the upstream received %q through http.Transport: not the two requests; the comparison proves nothing", stdUp)
					}
					if fastUp != stdUp {
						t.Errorf("the upstream received\n%q\nfrom the fast transport and\n%q\nfrom http.Transport", fastUp, stdUp)
					}
					if fastApp != stdApp {
						t.Errorf("the app received\n%q\nthrough the fast transport and\n%q\nthrough http.Transport", fastApp, stdApp)
					}
					// Behind the lean loop, which serves bodies of up to
					// leanhttp.MaxBody itself: a handler of its own, whose
					// fields go on as lines in the upstream's order.
					hl := New(Config{Metrics: telemetry.New(0), Resolve: cfg.Resolve}, table)
					defer hl.CloseIdleConnections()
					leanApp := exchangeTwice(t, serveLean(t, hl), rq.req)
					leanUp := strings.ReplaceAll(normalize(up.got.last()), hl.hop.token, h.hop.token)
					if proxytest.SortFields(leanUp) != proxytest.SortFields(stdUp) {
						t.Errorf("the upstream received\n%q\nbehind the lean loop and\n%q\nfrom http.Transport", leanUp, stdUp)
					}
					if proxytest.SortFields(leanApp) != proxytest.SortFields(stdApp) {
						t.Errorf("the app received\n%q\nbehind the lean loop and\n%q\nthrough http.Transport", leanApp, stdApp)
					}
					// A body goes on the fast transport when it is held
					// whole: to be sent again (retries), or, behind the lean
					// loop, when it came with its head (in the loop's 4 KiB
					// buffer); net/http's server cannot say, and streams it.
					bodiless := !strings.Contains(rq.req, "Content-Length: ") || strings.Contains(rq.req, "Content-Length: 0\r\n")
					if want := rq.fast && (bodiless || pname == "retries"); kept != want {
						t.Errorf("behind net/http's server, the fast transport kept a connection to the upstream: %v, want %v (it sends the request itself)", kept, want)
					}
					leanServed := !strings.HasPrefix(rq.req, "PURGE ") // a method it hands to net/http
					if want := rq.fast && (bodiless || pname == "retries" || leanServed && len(rq.req) <= 4<<10); fastOf(hl).idleTo("geo:8000") != want {
						t.Errorf("behind the lean loop, the fast transport kept a connection to the upstream: %v, want %v", !want, want)
					}
				})
			}
		}
	}
}

const geoPolicy = "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata:\n  name: geo\nspec:\n  service: geo:8000\n"

// bodyUpstream answers every request, read whole, with the same bytes,
// on kept connections, and records each request's bytes as they came.
type bodyUpstream struct {
	addr   string
	answer string
	got    received
}

func newBodyUpstream(t *testing.T, answer string) *bodyUpstream {
	u := &bodyUpstream{answer: answer, got: make(received, 16)}
	u.addr, _ = proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		var raw bytes.Buffer
		// One byte a read: what the parser took is what the request was.
		br := bufio.NewReaderSize(io.TeeReader(oneByte{c}, &raw), 16)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			u.got <- raw.String()[:raw.Len()-br.Buffered()]
			raw.Next(raw.Len() - br.Buffered())
			if _, err := io.WriteString(c, u.answer); err != nil {
				return
			}
		}
	})
	return u
}

// oneByte reads one byte at a time.
type oneByte struct{ io.Reader }

func (r oneByte) Read(p []byte) (int, error) { return r.Reader.Read(p[:min(len(p), 1)]) }

// fastOf is h's fast transport.
func fastOf(h *Handler) *fastTransport {
	return h.rp.Transport.(*forwarder).t.(*fastTransport)
}

// idleTo reports whether t keeps a connection to addr.
func (t *fastTransport) idleTo(addr string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.idle[addr]
	return l != nil && len(l.conns) > 0
}

func parseTable(t *testing.T, doc string) *policy.Table {
	t.Helper()
	pols, err := policy.Decode("policies.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return policy.NewTable(pols, "default")
}

// TestHeldBodyWithDeclinedHead: a request whose head the fast writers
// leave to Request.Write (here a Host with an IPv6 zone, which it
// drops) goes with the body the forwarder holds (respScratch.body), not
// the request's own, which the forwarder read to its end.
func TestHeldBodyWithDeclinedHead(t *testing.T) {
	up := newBodyUpstream(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	ft := newTestFast()
	defer ft.CloseIdleConnections()
	for _, host := range []string{"geo:8000", "[fe80::1%25eth0]:8000"} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+up.addr+"/x", strings.NewReader("")) // read already
		req.Host, req.ContentLength = host, 3
		resp, err := ft.roundTrip(req, deadlines{}, nil, &respScratch{body: []byte("abc")})
		if err != nil {
			t.Fatalf("Host %s: %v", host, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got := up.got.last()
		if resp.StatusCode != http.StatusOK || !strings.HasSuffix(got, "Content-Length: 3\r\n\r\nabc") {
			t.Errorf("Host %s: %s; the upstream got %q, want the body abc", host, resp.Status, got)
		}
	}
}

// TestStaleRetryReplayable: a kept connection the upstream closed after
// the request was written is tried again on a new one only for a request
// http.Transport would send again: GET, HEAD, OPTIONS, TRACE, or one
// with an idempotency key; a POST, PUT or DELETE fails as it is.
func TestStaleRetryReplayable(t *testing.T) {
	for _, tc := range []struct {
		method, key string
		again       bool
	}{
		{http.MethodGet, "", true},
		{http.MethodPut, "", false},
		{http.MethodDelete, "", false},
		{http.MethodPost, "", false},
		{http.MethodPost, "Idempotency-Key", true},
		{http.MethodPatch, "X-Idempotency-Key", true},
	} {
		req, _ := http.NewRequest(tc.method, "http://geo/", nil)
		if tc.key != "" {
			req.Header.Set(tc.key, "k")
		}
		if got := replayable(req); got != tc.again {
			t.Errorf("%s with %q: replayable %v, want %v", tc.method, tc.key, got, tc.again)
		}
	}
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestReplayReadsNoFurtherThanItKeeps: deciding that a body is too large
// to keep for a retry reads one byte past MaxReplayBody, not what the
// buffer's growth had room for (it read up to about twice the limit).
func TestReplayReadsNoFurtherThanItKeeps(t *testing.T) {
	body := &countingReader{r: bytes.NewReader(make([]byte, 1<<20))}
	r, err := newReplay(io.NopCloser(body), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if body.n != MaxReplayBody+1 || r.stream == nil {
		t.Fatalf("read %d bytes to decide (stream %v), want %d", body.n, r.stream != nil, MaxReplayBody+1)
	}
}
