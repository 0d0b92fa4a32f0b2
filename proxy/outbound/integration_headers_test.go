package outbound_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/proxy/requestid"
)

// headerRecorder is an upstream that keeps the headers, Host and request
// URI of every request it gets.
type headerRecorder struct {
	mu   sync.Mutex
	reqs []*http.Request // Header, Host and RequestURI only
}

func (h *headerRecorder) handler(w http.ResponseWriter, r *http.Request, _ int64) {
	h.mu.Lock()
	h.reqs = append(h.reqs, &http.Request{Header: r.Header.Clone(), Host: r.Host, RequestURI: r.RequestURI})
	h.mu.Unlock()
	_, _ = w.Write([]byte("ok"))
}

func (h *headerRecorder) last(t *testing.T) *http.Request {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.reqs) == 0 {
		t.Fatal("the upstream saw no request")
	}
	return h.reqs[len(h.reqs)-1]
}

// TestRequestIDKept: a valid incoming X-Request-ID reaches the upstream
// unchanged and comes back on the response.
func TestRequestIDKept(t *testing.T) {
	var rec headerRecorder
	u := newUpstream(t, rec.handler)
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	c := sc.Client()
	for _, id := range []string{
		"abc-123",
		"0af7651916cd43dd8448eb211c80319c",
		strings.Repeat("r", 128), // the longest kept
		`printable ~!@#$%^&*()_+{}|:"<>? ascii`,
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/", nil)
		req.Header.Set("X-Request-ID", id)
		resp, _ := fetch(t, c, req)
		if got := rec.last(t).Header.Values("X-Request-ID"); len(got) != 1 || got[0] != id {
			t.Errorf("upstream saw X-Request-ID %q, want %q", got, id)
		}
		if got := resp.Header.Values("X-Request-ID"); len(got) != 1 || got[0] != id {
			t.Errorf("response X-Request-ID %q, want %q", got, id)
		}
	}
}

// TestRequestIDReplaced: a missing or invalid X-Request-ID (too long,
// control or non-ASCII characters) is replaced by a fresh UUID, which the
// upstream sees and the app gets back.
func TestRequestIDReplaced(t *testing.T) {
	var rec headerRecorder
	u := newUpstream(t, rec.handler)
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	c := sc.Client()
	seen := map[string]bool{}
	for name, id := range map[string]*string{
		"missing":   nil,
		"129 bytes": ptr(strings.Repeat("r", 129)),
		"tab":       ptr("abc\tdef"),
		"non-ASCII": ptr("caf\xc3\xa9-42"),
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/", nil)
		if id != nil {
			req.Header.Set("X-Request-ID", *id)
		}
		resp, _ := fetch(t, c, req)
		up := rec.last(t).Header.Values("X-Request-ID")
		back := resp.Header.Values("X-Request-ID")
		if len(up) != 1 || !uuidRE.MatchString(up[0]) {
			t.Errorf("%s: upstream saw X-Request-ID %q, want one new UUID", name, up)
			continue
		}
		if len(back) != 1 || back[0] != up[0] {
			t.Errorf("%s: response X-Request-ID %q, want the upstream's %q", name, back, up[0])
		}
		if seen[up[0]] {
			t.Errorf("%s: UUID %s given twice", name, up[0])
		}
		seen[up[0]] = true
	}
}

func ptr[T any](v T) *T { return &v }

// TestRequestIDOnSidecarAnswers: the sidecar's own error answers carry
// the request's ID too, kept when valid.
func TestRequestIDOnSidecarAnswers(t *testing.T) {
	sc := startSidecar(t, "", resolve(refused.Addr(t), geo))
	req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/", nil)
	req.Header.Set("X-Request-ID", "trace-me-7")
	resp, body := fetch(t, sc.Client(), req)
	e := expectSidecarError(t, resp, body, http.StatusBadGateway, "connect-failure", geo)
	if resp.Header.Get("X-Request-ID") != "trace-me-7" || e.RequestID != "trace-me-7" {
		t.Fatalf("X-Request-ID %q, body requestId %q, want trace-me-7", resp.Header.Get("X-Request-ID"), e.RequestID)
	}
}

// TestHopByHopHeaders: hop-by-hop headers (those named by Connection,
// Proxy-Connection, Keep-Alive, Proxy-Authorization) stop at the
// sidecar; end-to-end headers, Accept-Encoding and the app's own
// X-Forwarded-For pass unchanged, and the sidecar adds no
// X-Forwarded-For of its own.
func TestHopByHopHeaders(t *testing.T) {
	var rec headerRecorder
	u := newUpstream(t, rec.handler)
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	resp, _ := rawRoundTrip(t, sc.Addr, "GET http://"+geo+"/h?x=1 HTTP/1.1\r\n"+
		"Host: "+geo+"\r\n"+
		"Connection: keep-alive, X-Foo\r\n"+
		"X-Foo: connection-scoped\r\n"+
		"Proxy-Connection: keep-alive\r\n"+
		"Keep-Alive: timeout=5\r\n"+
		"Proxy-Authorization: Basic YXBwOnNlY3JldA==\r\n"+
		"Accept-Encoding: gzip, br\r\n"+
		"X-End-To-End: kept\r\n"+
		"Authorization: Bearer app-token\r\n"+
		"\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := rec.last(t)
	for _, h := range []string{"Connection", "X-Foo", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization", "X-Forwarded-For"} {
		if v, ok := got.Header[h]; ok {
			t.Errorf("upstream got %s: %q", h, v)
		}
	}
	for h, want := range map[string]string{
		"Accept-Encoding": "gzip, br",
		"X-End-To-End":    "kept",
		"Authorization":   "Bearer app-token",
	} {
		if v := got.Header.Values(h); len(v) != 1 || v[0] != want {
			t.Errorf("upstream got %s: %q, want %q", h, v, want)
		}
	}
	if got.Host != geo || got.RequestURI != "/h?x=1" {
		t.Errorf("upstream got Host %q URI %q, want %q /h?x=1", got.Host, got.RequestURI, geo)
	}
}

// TestAppXForwardedForKept: an X-Forwarded-For the app set itself is the
// app's business and passes as is: the sidecar is the app's own egress,
// not a hop to record.
func TestAppXForwardedForKept(t *testing.T) {
	var rec headerRecorder
	u := newUpstream(t, rec.handler)
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/", nil)
	req.Header.Set("X-Forwarded-For", "10.1.2.3")
	fetch(t, sc.Client(), req)
	if got := rec.last(t).Header.Values("X-Forwarded-For"); len(got) != 1 || got[0] != "10.1.2.3" {
		t.Fatalf("upstream got X-Forwarded-For %q, want the app's own \"10.1.2.3\"", got)
	}
}

// TestGzipPassesThrough: the sidecar neither asks for compression nor
// undoes it: a gzip body arrives still gzip-encoded, byte for byte.
func TestGzipPassesThrough(t *testing.T) {
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	_, _ = zw.Write(bytes.Repeat([]byte("compressible geo data "), 500))
	zw.Close()
	var acceptEncoding []string
	var mu sync.Mutex
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		mu.Lock()
		acceptEncoding = r.Header.Values("Accept-Encoding")
		mu.Unlock()
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(zipped.Bytes())
	})
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	for _, ae := range []string{"gzip", ""} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/big", nil)
		if ae != "" {
			req.Header.Set("Accept-Encoding", ae)
		}
		resp, body := fetch(t, sc.Client(), req) // DisableCompression: the raw bytes
		if resp.Header.Get("Content-Encoding") != "gzip" || !bytes.Equal(body, zipped.Bytes()) {
			t.Fatalf("Accept-Encoding %q: got Content-Encoding %q and %d bytes, want the upstream's %d gzip bytes",
				ae, resp.Header.Get("Content-Encoding"), len(body), zipped.Len())
		}
		mu.Lock()
		got := acceptEncoding
		mu.Unlock()
		if ae == "" && len(got) != 0 || ae != "" && (len(got) != 1 || got[0] != ae) {
			t.Fatalf("app sent Accept-Encoding %q, upstream got %q", ae, got)
		}
	}
}

// TestOriginFormWithHost: a request sent straight to the listener in
// origin form (as a client that was redirected to it, or pointed at it,
// sends) goes to its Host, under that destination's policy.
func TestOriginFormWithHost(t *testing.T) {
	var rec headerRecorder
	u := newUpstream(t, rec.handler)
	sc := startSidecar(t, policyDoc("geo", "geo-service", "timeout: 2s"), resolve(u.Host(), geo, "geo-service:80"))
	for _, tc := range []struct{ host, dest string }{
		{geo, geo},
		{"geo-service", "geo-service:80"}, // no port: HTTP's 80
	} {
		resp, body := rawRoundTrip(t, sc.Addr, "GET /origin?q=1 HTTP/1.1\r\nHost: "+tc.host+"\r\n\r\n")
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			t.Fatalf("Host %s: %d %q", tc.host, resp.StatusCode, body)
		}
		got := rec.last(t)
		if got.Host != tc.host || got.RequestURI != "/origin?q=1" {
			t.Fatalf("upstream got Host %q URI %q, want %q /origin?q=1", got.Host, got.RequestURI, tc.host)
		}
		if st := sc.breaker(tc.dest); st.Policy != "geo" || st.Counts.TotalSuccesses != 1 {
			t.Fatalf("destination %s: %+v, want policy geo and one success", tc.dest, st)
		}
	}
	// The same with Go's client pointed at the listener, Host set.
	req, _ := http.NewRequest(http.MethodGet, "http://"+sc.Addr+"/direct", nil)
	req.Host = geo
	resp, body := fetch(t, &http.Client{}, req)
	if resp.StatusCode != http.StatusOK || string(body) != "ok" || rec.last(t).RequestURI != "/direct" {
		t.Fatalf("direct client: %d %q", resp.StatusCode, body)
	}
	if got := u.hits.Load(); got != 3 {
		t.Fatalf("upstream saw %d requests, want 3", got)
	}
}

// TestHeaderTooLarge: a request whose headers exceed the sidecar's limit
// gets 431 from the sidecar and never reaches the upstream.
func TestHeaderTooLarge(t *testing.T) {
	u := newUpstream(t, status(http.StatusOK))
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("b", 100<<10))
	resp, _ := fetch(t, sc.Client(), req)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}
	if got := u.hits.Load(); got != 0 {
		t.Fatalf("upstream saw %d requests, want 0", got)
	}
	// Just under the limit still passes.
	req.Header.Set("X-Big", strings.Repeat("b", 60<<10))
	if resp, _ := fetch(t, sc.Client(), req); resp.StatusCode != http.StatusOK {
		t.Fatalf("60 KiB of headers: status %d, want 200", resp.StatusCode)
	}
}

// TestRequestIDSingleUpstream: whatever the app sent, the upstream sees
// exactly one X-Request-ID, the one the app gets back: an app that sent
// two (a client library and the app code both adding one) must not
// leave the upstream and the sidecar's logs disagreeing about the ID.
func TestRequestIDSingleUpstream(t *testing.T) {
	var rec headerRecorder
	u := newUpstream(t, rec.handler)
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/", nil)
	req.Header.Add("X-Request-ID", "first-id")
	req.Header.Add("X-Request-ID", "second-id")
	resp, _ := fetch(t, sc.Client(), req)
	up := rec.last(t).Header.Values("X-Request-ID")
	back := resp.Header.Values("X-Request-ID")
	if len(up) != 1 || len(back) != 1 || up[0] != back[0] {
		t.Fatalf("upstream saw X-Request-ID %q, app got back %q: want one and the same", up, back)
	}
}

// TestBadTargets: requests the sidecar cannot forward get 400
// bad-request from the sidecar itself: https:// in absolute form (HTTPS
// must be tunnelled with CONNECT), another scheme, CONNECT without a
// port.
func TestBadTargets(t *testing.T) {
	u := newUpstream(t, status(http.StatusOK))
	sc := startSidecar(t, "", resolve(u.Host(), geo, "geo-service:443"))
	for _, raw := range []string{
		"GET https://geo-service/ HTTP/1.1\r\nHost: geo-service\r\n\r\n",
		"GET ftp://geo-service/ HTTP/1.1\r\nHost: geo-service\r\n\r\n",
		"CONNECT geo-service HTTP/1.1\r\nHost: geo-service\r\n\r\n",
	} {
		resp, body := rawRoundTrip(t, sc.Addr, raw)
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Minimesh-Error") != "bad-request" {
			t.Errorf("%q: %d %q %s, want 400 bad-request", strings.SplitN(raw, "\r\n", 2)[0], resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), body)
		}
	}
	if got := u.hits.Load(); got != 0 {
		t.Fatalf("upstream saw %d requests, want 0", got)
	}
}

// TestQueryPassesThrough: the request target's query reaches the upstream
// byte for byte: semicolons, odd escapes and parameter order included (a
// signed URL is signed over exactly these bytes).
func TestQueryPassesThrough(t *testing.T) {
	var rec headerRecorder
	u := newUpstream(t, rec.handler)
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	for _, uri := range []string{
		"/search?z=1&a=2&m=3",
		"/search?filter=a;b&sig=Zm9v%2Fbar&a=1",
		"/search?q=100%&z=1",
		"/tiles;v=2/7?x=%zz",
	} {
		resp, _ := rawRoundTrip(t, sc.Addr, "GET http://"+geo+uri+" HTTP/1.1\r\nHost: "+geo+"\r\n\r\n")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: status %d", uri, resp.StatusCode)
			continue
		}
		if got := rec.last(t).RequestURI; got != uri {
			t.Errorf("upstream got %q, app sent %q", got, uri)
		}
	}
}

// TestRequestIDOnePerRequest: the upstream gets exactly one
// X-Request-ID, the one the app gets back: the app's first when valid,
// else a new one, whether the app sent none, one, several, an invalid
// one or one named in Connection (a hop-by-hop field: never stripped),
// on every path a request takes (its lines sent on as they came, its
// header map written, the standard transport, a body).
func TestRequestIDOnePerRequest(t *testing.T) {
	for _, p := range []struct {
		name string
		opts []sidecarOpt
	}{{"fast", nil}, {"std-transport", []sidecarOpt{withStdTransport()}}} {
		t.Run(p.name, func(t *testing.T) {
			got := make(chan []string, 1)
			u := newUpstream(t, func(_ http.ResponseWriter, r *http.Request, _ int64) { got <- r.Header.Values("X-Request-Id") })
			sc := startSidecar(t, "", resolve(u.Host(), geo), p.opts...)
			c := dialSidecar(t, sc)
			br := bufio.NewReader(c)
			for _, f := range []struct{ fields, want string }{
				{"", ""},
				{"X-Request-ID: caller-id\r\n", "caller-id"},
				{"x-request-id: caller-id\r\n", "caller-id"},
				{"Connection: keep-alive, X-Request-ID\r\nX-Request-ID: caller-id\r\n", "caller-id"},
				{"X-Request-Id: a\r\nX-Request-Id: b\r\n", "a"},
				{"X-Request-Id: caf\xc3\xa9\r\n", ""},
				{"X-Request-Id:  spaced \r\n", "spaced"}, // lines not as the map writes them
			} {
				for _, req := range []string{
					"GET http://" + geo + "/ HTTP/1.1\r\nHost: " + geo + "\r\n" + f.fields + "\r\n",
					"POST http://" + geo + "/ HTTP/1.1\r\nHost: " + geo + "\r\n" + f.fields + "Content-Length: 2\r\n\r\nhi",
				} {
					io.WriteString(c, req)
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					back := resp.Header.Get("X-Request-Id")
					ids := <-got
					if len(ids) != 1 || ids[0] != back || f.want != "" && back != f.want || f.want == "" && !requestid.Valid(back) {
						t.Errorf("%q: upstream saw X-Request-ID %q, app got back %q; want one, the same, %q (or a new one if empty)", req, ids, back, f.want)
					}
				}
			}
		})
	}
}
