package outbound

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/field"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
)

// compareRequestLines fails t unless writeRequestLines, given the field
// lines of a request head as the lean loop gives them (each "Name:
// value" as a header map writes back; text, without the request line
// and the blank line) writes what toOutbound and writeRequestHead write
// from the header map http.ReadRequest makes of the same head: the same
// fields, one name's lines in the same order, and byte for byte when
// the app's lines come as Go's client sends them (Host and User-Agent
// first, the others sorted), with the request ID id and the trace
// fields tf. proto is the app's: "HTTP/1.1", or "HTTP/1.0" (whose Host
// may be missing). It reports false for a head the lean loop does not
// give as lines.
func compareRequestLines(t *testing.T, proto, target, text, id string, tf []telemetry.Field) bool {
	t.Helper()
	return compareMethodLines(t, "GET", proto, target, text, id, tf)
}

// compareMethodLines is compareRequestLines for a request of method, with
// a body of the length its lines give (none is sent: the heads alone
// are compared).
func compareMethodLines(t *testing.T, method, proto, target, text, id string, tf []telemetry.Field) bool {
	t.Helper()
	head := method + " " + target + " " + proto + "\r\n" + text + "\r\n"
	app, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
	if err != nil || app.ContentLength < 0 || len(app.TransferEncoding) > 0 || app.Header["Upgrade"] != nil ||
		app.Header["Expect"] != nil || app.Host == "" && proto != "HTTP/1.0" {
		return false // not a head the lean loop serves
	}
	lines := field.RequestLines{Text: text}
	at := 0
	for _, line := range strings.SplitAfter(text, "\r\n") {
		if line == "" {
			continue
		}
		at += len(line)
		name, value, ok := strings.Cut(strings.TrimSuffix(line, "\r\n"), ": ")
		if !ok || !field.Canonical(name) || !field.Bare(value) {
			return false // the lean loop gives no lines then
		}
		switch name {
		case "Connection":
			lines.Connection = true
		case "Te":
			lines.Te = true
		case "Via":
			lines.ViaEnd = at
		}
	}
	if _, ok := app.Header["Cache-Control"]; ok && !strings.Contains(text, "Cache-Control: ") {
		return false // a Pragma's Cache-Control, which the lines lack: no lines either
	}
	p := newHop()
	prepare := func() *http.Request {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse("http://10.0.0.1:8000")
		r.URL.Scheme, r.URL.Host, r.RequestURI = u.Scheme, u.Host, ""
		return r
	}
	idv := []string{id}

	// The header map's way: toOutbound (fastProxy), the request ID
	// (try), then writeRequestHead.
	mr := prepare()
	toOutbound(mr.Header, &p)
	mr.Header[requestIDKey] = idv
	var want bytes.Buffer
	_, ownMap := writeRequestHead(&want, mr, nil, tf)

	// The lines' way, the map left as it was.
	lr := prepare()
	lr.Header[requestIDKey] = idv // as serve sets it
	before := lr.Header.Clone()
	sc := respScratch{app: lines, appOK: true}
	sc.line(lr.Header, &p, idv)
	sc.trace = tf
	var got bytes.Buffer
	own := writeRequestLines(&got, lr, &sc)
	if !equalHeaders(lr.Header, before) {
		t.Errorf("writeRequestLines changed the header map: %v, was %v", lr.Header, before)
	}
	switch {
	case own != ownMap:
		t.Errorf("app's head %q: writeRequestLines wrote it: %v; writeRequestHead: %v", head, own, ownMap)
	case !own && got.Len() > 0:
		t.Errorf("app's head %q: writeRequestLines declined, but wrote %q", head, got.String())
	}
	if g, w := proxytest.SortFields(got.String()), proxytest.SortFields(want.String()); g != w {
		t.Errorf("app's head %q:\nwriteRequestLines\n%q\ntoOutbound and writeRequestHead\n%q", head, got.String(), want.String())
	}
	if goOrder(text) && got.String() != want.String() {
		t.Errorf("app's head %q in Go's order:\nwriteRequestLines\n%q\ntoOutbound and writeRequestHead\n%q", head, got.String(), want.String())
	}
	// What a server reads as a request.
	if _, err := http.ReadRequest(bufio.NewReader(&got)); own && err != nil {
		t.Errorf("writeRequestLines wrote a head a server refuses: %v", err)
	}

	// A map to write after all (unline): toOutbound's changes, once,
	// and the request ID kept.
	sc.unline(lr.Header)
	sc.unline(lr.Header)
	if !equalHeaders(lr.Header, mr.Header) {
		t.Errorf("unline: the map is %v, want %v", lr.Header, mr.Header)
	}
	return true
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// goOrder reports whether the lines come as Go's client writes them:
// Host, then User-Agent, then the others sorted by name.
func goOrder(text string) bool {
	var names []string
	for _, line := range strings.SplitAfter(text, "\r\n") {
		if n, _, ok := strings.Cut(line, ":"); ok {
			names = append(names, n)
		}
	}
	if len(names) > 0 && names[0] == "Host" {
		names = names[1:]
	}
	if len(names) > 0 && names[0] == "User-Agent" {
		names = names[1:]
	}
	return slices.IsSorted(names) && !slices.Contains(names, "Host") && !slices.Contains(names, "User-Agent")
}

// TestWriteRequestLines: heads as clients send them, and every field
// toOutbound, the request ID and the trace fields change.
func TestWriteRequestLines(t *testing.T) {
	tfs := testTraceFields(t)
	for _, text := range []string{
		"Host: geo:8000\r\n",
		"Accept: */*\r\nConnection: keep-alive\r\n", // HTTP/1.0 without a Host; HTTP/1.1 refuses it
		"Host: geo:8000\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n",                                                       // Go
		"Host: geo:8000\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n",                                                                         // curl
		"Host: geo:8000\r\nUser-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n", // requests
		"Accept: */*\r\nHost: geo:8000\r\nX-Request-Id: app-id\r\nUser-Agent: u\r\n",
		"Host: geo:8000\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n",
		"Host: geo:8000\r\nVia: 1.1 a\r\nAccept: */*\r\nVia: 1.0 b\r\nZ: z\r\n",
		"Host: geo:8000\r\nVia: 1.1 a\r\nConnection: Via\r\n",
		"Host: geo:8000\r\nConnection: keep-alive, X-Secret, Forwarded, User-Agent\r\nUser-Agent: u\r\nX-Secret: s\r\nForwarded: for=1\r\n",
		"Host: geo:8000\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: x\r\nTrailer: X\r\n",
		"Host: geo:8000\r\nTe: trailers, deflate\r\nConnection: TE\r\n",
		"Host: geo:8000\r\nTe: deflate\r\nTe: trailers\r\n",
		"Host: geo:8000\r\nTe: gzip\r\n",
		"Host: geo:8000\r\nUser-Agent: \r\nUser-Agent: second\r\n",
		"Host: geo:8000\r\nUser-Agent: first\r\nUser-Agent: second\r\n",
		"Host: geo:8000\r\nContent-Length: 0\r\n",
		"Host: geo:8000\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nTracestate: app=1\r\nB3: 1-2-1\r\nX-B3-Flags: 1\r\n",
		"Host: geo:8000\r\nConnection: Traceparent, Tracestate, X-Request-Id\r\nTraceparent: x\r\nTracestate: y\r\nX-Request-Id: z\r\n",
		"Host: geo:8000\r\nX-Empty: \r\nZ-Last: 1\r\nA-First: 2\r\n",
		"Host: geo:8000\r\nConnection: x-a\r\nX-A: 1\r\n",
		// More names than the scratch's room for them.
		"Host: geo:8000\r\nConnection: keep-alive, A, B, C, D, E\r\nA: 1\r\nE: 5\r\nF: 6\r\n",
		"Host: geo:8000\r\nConnection: A, B\r\nConnection: C, D, E, F, G, H, I, J\r\nJ: 1\r\nK: 2\r\n",
		"Host: geo:8000\r\nPragma: x\r\nAccept: */*\r\n",
		// Bodies, as Go's client sends their length (after User-Agent), and otherwise.
		"Host: geo:8000\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 3\r\nAccept-Encoding: gzip\r\nContent-Type: application/json\r\n",
		"Host: geo:8000\r\nContent-Length: 3\r\nUser-Agent: curl/8\r\nAccept: */*\r\n",
		"Content-Length: 12\r\nHost: geo:8000\r\n",
		"Host: geo:8000\r\nUser-Agent: u\r\nAccept: */*\r\n",
		"Host: geo:8000\r\nAccept: */*\r\nUser-Agent: \r\nContent-Length: 1\r\n",
		"Host: geo:8000\r\nConnection: Content-Length\r\nContent-Length: 4\r\n",
		"Host: geo:8000\r\nPragma: no-cache\r\nCache-Control: max-age=0\r\n",
	} {
		for _, m := range []string{"POST", "PUT", "PATCH", "DELETE"} {
			for _, tf := range tfs {
				if !compareMethodLines(t, m, "HTTP/1.1", "/p", text, "3f0d-id", tf) && strings.Contains(text, "Host: ") {
					t.Errorf("%s %q: not a head of lines; the comparison proves nothing", m, text)
				}
			}
		}
		for _, tf := range tfs {
			if !compareRequestLines(t, "HTTP/1.1", "/p?q=1", text, "3f0d-id", tf) && strings.Contains(text, "Host: ") {
				t.Errorf("%q: not a head of lines; the comparison proves nothing", text)
			}
			if !compareRequestLines(t, "HTTP/1.0", "/p?q=1", text, "3f0d-id", tf) {
				t.Errorf("%q over HTTP/1.0: not a head of lines; the comparison proves nothing", text)
			}
		}
	}
}

// FuzzWriteRequestLines: any lines the lean loop gives, any of the
// fields that change on the way, in any order.
func FuzzWriteRequestLines(f *testing.F) {
	f.Add(uint8(0), "Host: geo\nUser-Agent: u\nAccept: */*")
	f.Add(uint8(1), "Accept: a\nHost: geo\nVia: 1.1 x\nConnection: Via, X-A\nX-A: 1\nVia: 2 y")
	f.Add(uint8(2), "Host: geo\nTe: trailers\nConnection: te, keep-alive\nKeep-Alive: 1\nX-Request-Id: r")
	f.Add(uint8(3), "Host: geo\nTraceparent: t\nTracestate: s\nX-B3-Sampled: 1\nB3: b\nConnection: Forwarded\nForwarded: for=x")
	f.Add(uint8(4), "Host: geo\nConnection: a, b, c, d, e, f\nA: 1\nF: 2\nG: 3")
	tfs := testTraceFields(f)
	f.Fuzz(func(t *testing.T, m uint8, lines string) {
		var text strings.Builder
		for _, l := range strings.Split(lines, "\n") {
			name, value, ok := strings.Cut(l, ": ")
			if !ok || !field.Token([]byte(name)) || !field.Bare(value) || strings.ContainsAny(value, "\r\n") {
				continue
			}
			name = textproto.CanonicalMIMEHeaderKey(name)
			text.WriteString(name + ": " + value + "\r\n")
		}
		proto := "HTTP/1.1"
		if m&16 != 0 {
			proto = "HTTP/1.0"
		}
		method := [...]string{"GET", "POST", "PUT", "DELETE"}[m&3]
		compareMethodLines(t, method, proto, "/", text.String(), "id-"+string('a'+rune(m%16)), tfs[int(m>>5)%len(tfs)])
	})
}

// TestAdditionsSorted: the fields writeRequestLines adds come sorted by
// name whatever the trace fields' names, with and without Te and Via.
func TestAdditionsSorted(t *testing.T) {
	p := newHop()
	trace := []telemetry.Field{{Key: "A", Value: "1"}, {Key: "Te-Z", Value: "2"}, {Key: "Traceparent", Value: "3"},
		{Key: "Vz", Value: "4"}, {Key: "X-B3-Traceid", Value: "5"}, {Key: "Zz", Value: "6"}}
	for n := 0; n <= len(trace); n++ {
		for _, te := range []bool{false, true} {
			for _, via := range []bool{false, true} {
				sc := respScratch{trace: trace[:n], te: te, hop: &p, id: []string{"id"}}
				var room [9]telemetry.Field
				fs := sc.additions(&room, via)
				want := 1 + n
				if te {
					want++
				}
				if via {
					want++
				}
				if len(fs) != want || !slices.IsSortedFunc(fs, func(a, b telemetry.Field) int { return strings.Compare(a.Key, b.Key) }) {
					t.Errorf("trace %v, te %v, via %v: additions %v", trace[:n], te, via, fs)
				}
			}
		}
	}
}

// TestRequestLinesThroughLeanLoop: behind the lean loop, with tracing on
// and a policy that retries, every try's head the upstream receives is
// the app's without its hop-by-hop fields, with the app's Via and then
// the sidecar's, one request ID and the sidecar's trace fields: on the
// lines' way (a caller's traceparent, or none) and where the map is
// written after all (a caller's B3 context, which only the propagators
// write, telemetry.Fields).
func TestRequestLinesThroughLeanLoop(t *testing.T) {
	pols, err := policy.Decode("p.yaml", []byte(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo}
spec:
  service: geo
  retries: {attempts: 1, retryOn: ["503"], backoff: {base: 1ms, max: 1ms}, budget: {ratio: 1, minPerSecond: 1000}}
  circuitBreaker: {consecutiveFailures: 1000}
`))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := telemetry.NewTracing(telemetry.TracingConfig{Endpoint: refused.Addr(t), SampleRatio: 1,
		ServiceName: "test", Logger: slog.New(slog.DiscardHandler)}, telemetry.New(0))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = tr.Shutdown(ctx)
	}()
	up := newScriptedUpstream(t, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
	h := New(Config{Metrics: telemetry.New(0), Tracing: tr, Resolve: map[string]string{"geo:80": up.addr}}, policy.NewTable(pols, "default"))
	defer h.CloseIdleConnections()
	addr := serveLean(t, h)
	const hop = "Connection: keep-alive, X-Secret, X-Request-Id\r\nX-Secret: s\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic eA==\r\n" +
		"Via: 1.1 a\r\nAccept: */*\r\nX-Request-Id: app-id\r\nVia: 1.0 b\r\n"
	for name, tc := range map[string]struct{ trace, want string }{
		"no trace context": {"", "Traceparent"},
		"traceparent":      {"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n", "Traceparent"},
		"b3":               {"X-B3-Traceid: 0af7651916cd43dd8448eb211c80319c\r\nX-B3-Spanid: b7ad6b7169203331\r\nX-B3-Sampled: 1\r\nX-B3-Flags: 1\r\n", "X-B3-Spanid"},
	} {
		t.Run(name, func(t *testing.T) {
			req := "GET /p HTTP/1.1\r\nHost: geo\r\nUser-Agent: app/1\r\n" + hop + tc.trace + "\r\n"
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(wellknown.HeaderError) != "" {
				t.Fatalf("answer %v, %v: want the upstream's 503 after the retry", resp, err)
			}
			heads := strings.SplitAfter(up.got.last(), "\r\n\r\n")
			if len(heads) != 3 || heads[2] != "" {
				t.Fatalf("the upstream received %q: want two tries' heads", heads)
			}
			for _, head := range heads[:2] {
				r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
				if err != nil {
					t.Fatalf("%q: %v", head, err)
				}
				for _, k := range []string{"Connection", "X-Secret", "Keep-Alive", "Proxy-Authorization"} {
					if _, ok := r.Header[k]; ok {
						t.Errorf("the upstream received %s: %q", k, head)
					}
				}
				via := r.Header["Via"]
				if len(via) != 3 || via[0] != "1.1 a" || via[1] != "1.0 b" || via[2] != h.hop.value[0] {
					t.Errorf("Via %q, want the app's two, then the sidecar's", via)
				}
				if ids := r.Header[requestIDKey]; len(ids) != 1 || ids[0] != "app-id" {
					t.Errorf("request IDs %q, want the app's, though its Connection lists it", ids)
				}
				if r.Header.Get(tc.want) == "" || r.Header.Get("User-Agent") != "app/1" || r.Header.Get("Accept") != "*/*" {
					t.Errorf("no %s, or the app's fields lost: %q", tc.want, head)
				}
				if tc.trace != "" && strings.Contains(head, "b7ad6b7169203331") {
					t.Errorf("the caller's span ID went on, not the sidecar's: %q", head)
				}
				if tc.trace != "" && !strings.Contains(r.Header.Get(tc.want), "0af7651916cd43dd8448eb211c80319c") &&
					r.Header.Get("X-B3-Traceid") != "0af7651916cd43dd8448eb211c80319c" {
					t.Errorf("the caller's trace did not go on: %q", head)
				}
			}
		})
	}

	// The loop check reads the lines' Via too.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /p HTTP/1.1\r\nHost: geo\r\nVia: 1.1 a\r\nVia: "+h.hop.value[0]+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != http.StatusLoopDetected {
		t.Errorf("a request that came round a loop: %v, %v; want 508", resp, err)
	}
	if got := up.got.last(); got != "" {
		t.Errorf("the upstream received a looping request: %q", got)
	}
}

// TestHopHeader: the lines' writer drops the names toOutbound drops
// (hopHeaders), and no other.
func TestHopHeader(t *testing.T) {
	for _, k := range hopHeaders {
		if !hopHeader(k) {
			t.Errorf("hopHeader(%q) = false: it is one of hopHeaders", k)
		}
	}
	for _, k := range []string{"Via", "Host", "Accept", "Te-X", "Connections", "Forwarded", "X-Request-Id", ""} {
		if hopHeader(k) {
			t.Errorf("hopHeader(%q) = true: it is none of hopHeaders", k)
		}
	}
}
