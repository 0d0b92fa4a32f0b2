package outbound

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/proxy/internal/field"
	"github.com/minimesh/minimesh/proxy/requestid"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"go.opentelemetry.io/otel/trace"
)

// The fast transport's wire format must be net/http's, byte for byte:
// each test compares writeRequestHead with Request.Write and
// readResponseHead with http.ReadResponse on the same input.

func TestWriteRequestHeadAsRequestWrite(t *testing.T) {
	for _, tc := range []struct {
		name, method, target, host string
		header                     http.Header
		own                        bool // written by writeRequestHead
		length                     int64
	}{
		{name: "plain", method: "GET", target: "http://geo:8000/", header: http.Header{"User-Agent": {""}}, own: true},
		{name: "default agent", method: "GET", target: "http://geo:8000/a/b", header: http.Header{}, own: true},
		{name: "agent and headers", method: "HEAD", target: "http://geo:8000/x?q=1&r=%20",
			header: http.Header{"User-Agent": {" curl/8 "}, "Accept": {"*/*"}, "X-Request-Id": {"abc"}, "B": {"2", " 1 "}}, own: true},
		{name: "options", method: "OPTIONS", target: "http://geo:8000/", header: http.Header{"Origin": {"x"}}, own: true},
		{name: "host header", method: "GET", target: "http://10.0.0.1:8000/p", host: "geo.default:8000", header: http.Header{}, own: true},
		{name: "force query", method: "GET", target: "http://geo/p?", header: http.Header{}, own: true},
		{name: "escaped path", method: "GET", target: "http://geo/a%2Fb/%7Ec d", header: http.Header{}, own: true},
		{name: "invalid name dropped", method: "GET", target: "http://geo/", header: http.Header{"Bad Name": {"x"}, "Ok": {"y"}}, own: true},
		{name: "excluded", method: "GET", target: "http://geo/", header: http.Header{"Host": {"h"}, "Content-Length": {"3"}, "Trailer": {"x"}, "Transfer-Encoding": {"chunked"}}, own: true},
		{name: "invalid host", method: "GET", target: "http://geo/", host: "a b", header: http.Header{}, own: true},
		{name: "ipv6", method: "GET", target: "http://[::1]:80/", header: http.Header{}, own: true},
		{name: "empty method", method: "", target: "http://geo/", header: http.Header{}, own: true},
		{name: "blank agent", method: "GET", target: "http://geo/", header: http.Header{"User-Agent": {"  "}}, own: true},
		{name: "newline in value", method: "GET", target: "http://geo/", header: http.Header{"X": {"a\r\nb"}}},
		{name: "newline in agent", method: "GET", target: "http://geo/", header: http.Header{"User-Agent": {"a\nb"}}},
		{name: "punycode host", method: "GET", target: "http://geo/", host: "bücher.example", header: http.Header{}},
		{name: "zone", method: "GET", target: "http://geo/", host: "[fe80::1%25eth0]:80", header: http.Header{}},
		{name: "get with body", method: "GET", target: "http://geo/", header: http.Header{}, length: 3, own: true},
		{name: "post", method: "POST", target: "http://geo:8000/p?q=1", header: http.Header{"Content-Type": {"application/json"}, "Content-Length": {"99"}}, length: 9, own: true},
		{name: "post empty", method: "POST", target: "http://geo/", header: http.Header{}, own: true},
		{name: "put empty", method: "PUT", target: "http://geo/", header: http.Header{"User-Agent": {""}}, own: true},
		{name: "patch", method: "PATCH", target: "http://geo/", header: http.Header{"A": {"1"}}, length: 1, own: true},
		{name: "delete", method: "DELETE", target: "http://geo/", header: http.Header{}, own: true},
		{name: "delete with body", method: "DELETE", target: "http://geo/", header: http.Header{}, length: 2, own: true},
		{name: "custom method", method: "PURGE", target: "http://geo/", header: http.Header{}, length: 1, own: true},
		{name: "unknown length", method: "POST", target: "http://geo/", header: http.Header{}, length: -1},
		{name: "app's trace fields", method: "GET", target: "http://geo/", header: http.Header{"Traceparent": {"00-stale"},
			"Tracestate": {"app=1"}, "B3": {"stale"}, "X-B3-Flags": {"1"}, "X-B3-Parentspanid": {"1"}, "X-B3-Sampled": {"1", "0"},
			"X-B3-Spanid": {"s"}, "X-B3-Traceid": {"t"}, "A": {"1"}, "Tracez": {"z"}, "X-B3-Z": {"z"}, "Z": {"z"}}, own: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := url.Parse(tc.target)
			if err != nil {
				t.Fatal(err)
			}
			for i, tf := range testTraceFields(t) {
				req := &http.Request{Method: tc.method, URL: u, Host: tc.host, Header: tc.header, ProtoMajor: 1, ProtoMinor: 1, ContentLength: tc.length}
				own := compareRequestHead(t, req, tf)
				if own != tc.own {
					t.Errorf("trace fields %d: written by writeRequestHead: %v, want %v", i, own, tc.own)
				}
			}
		})
	}
}

// testTraceFields are trace fields a try may send: none, and
// telemetry.Fields' without and with a trace state.
func testTraceFields(t testing.TB) [][]telemetry.Field {
	ts, err := trace.ParseTraceState("vendor=v1,other=o2")
	if err != nil {
		t.Fatal(err)
	}
	all := [][]telemetry.Field{nil}
	for _, c := range []trace.SpanContextConfig{
		{TraceID: trace.TraceID{0x4b, 0xf9, 15: 0x36}, SpanID: trace.SpanID{0, 0xf0, 7: 0xb7}},
		{TraceID: trace.TraceID{1, 15: 0xff}, SpanID: trace.SpanID{7: 1}, TraceFlags: trace.FlagsSampled, TraceState: ts},
	} {
		fs, ok := telemetry.Fields(telemetry.Place{SC: trace.NewSpanContext(c)}, new([5]telemetry.Field))
		if !ok {
			t.Fatalf("no trace fields for %+v", c)
		}
		all = append(all, fs)
	}
	return all
}

// compareRequestHead fails t if writeRequestHead writes req with the
// trace fields tf otherwise than req.Write with tf in its header map
// (telemetry.SetFields), and reports whether it wrote it. req's header
// is left as it was.
func compareRequestHead(t *testing.T, req *http.Request, tf []telemetry.Field) bool {
	t.Helper()
	var want bytes.Buffer
	in := req.Header
	if tf != nil {
		req.Header = in.Clone()
		telemetry.SetFields(req.Header, tf)
	}
	// A body of the request's length, which the fast transport writes
	// right after the head; none of an unknown length (Request.Write
	// would send it chunked).
	var body []byte
	if req.ContentLength > 0 {
		body = bytes.Repeat([]byte{'b'}, int(req.ContentLength))
		req.Body = io.NopCloser(bytes.NewReader(body))
	} else if req.ContentLength < 0 {
		req.Body = io.NopCloser(strings.NewReader("b"))
	}
	wantErr := req.Write(&want)
	req.Header, req.Body = in, nil
	before := in.Clone()
	var got bytes.Buffer
	_, own := writeRequestHead(&got, req, nil, tf)
	if own {
		got.Write(body)
	}
	if !reflect.DeepEqual(req.Header, before) {
		t.Errorf("writeRequestHead changed the header map: %v, was %v", req.Header, before)
	}
	if !own {
		if got.Len() > 0 {
			t.Errorf("declined, but wrote %q", got.String())
		}
		return false
	}
	if wantErr != nil {
		t.Fatalf("writeRequestHead wrote %q; Request.Write: %v", got.String(), wantErr)
	}
	if got.String() != want.String() {
		t.Errorf("writeRequestHead:\n%q\nRequest.Write:\n%q", got.String(), want.String())
	}
	return true
}

func FuzzWriteRequestHead(f *testing.F) {
	f.Add(uint8(0), "geo:8000", "", "/a/b", "q=1", "Accept", "*/*", "User-Agent", "x")
	f.Add(uint8(1), "geo", "h:1", "/%7E", "", "X-Request-Id", "id", "Via", "1.1 a")
	f.Add(uint8(2), "[::1]:80", "", "", "", "bad key", "v", "", "")
	f.Add(uint8(0x10), "geo", "", "/", "", "Traceparent", "00-x", "X-B3-Z", "z")
	f.Add(uint8(0x20), "geo", "", "/", "", "Tracestate", "app=1", "Tracez", "z")
	f.Add(uint8(0x30), "geo", "", "/", "", "Tracestate", "app=1", "X-B3-Flags", "1")
	traceFields := testTraceFields(f)
	f.Add(uint8(0x04), "geo", "", "/", "", "Content-Length", "7", "", "") // POST, a body of 4
	f.Add(uint8(0x0d), "geo", "", "/", "", "A", "1", "", "")              // DELETE, none
	f.Fuzz(func(t *testing.T, m uint8, urlHost, host, path, query, k1, v1, k2, v2 string) {
		method := [...]string{"GET", "HEAD", "OPTIONS", "", "POST", "PUT", "PATCH", "DELETE"}[m%8]
		length := int64(0)
		if m%8 >= 4 && m&0x40 == 0 {
			length = int64(len(query) % 5)
		}
		u := &url.URL{Scheme: "http", Host: urlHost, Path: path, RawQuery: query, ForceQuery: m&4 != 0}
		h := http.Header{}
		if k1 != "" {
			h[k1] = append(h[k1], v1)
		}
		if k2 != "" {
			h[k2] = append(h[k2], v2)
		}
		if m&8 != 0 {
			h["User-Agent"] = nil
		}
		compareRequestHead(t, &http.Request{Method: method, URL: u, Host: host, Header: h, ProtoMajor: 1, ProtoMinor: 1, ContentLength: length},
			traceFields[int(m>>4)%len(traceFields)])
	})
}

func TestReadResponseHeadAsReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name, method, raw string
		own               bool // read by readResponseHead
		lines             bool // and as lines, when asked
	}{
		{name: "own reason", method: "GET", raw: "HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n", own: true, lines: true},
		{name: "no fields", method: "GET", raw: "HTTP/1.1 304 Not Modified\r\n\r\n", own: true, lines: true},
		{name: "repeated canonical key", method: "GET", raw: "HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nX-1: 1\r\nSet-Cookie: b\r\nContent-Length: 1\r\n\r\nz", own: true, lines: true},
		{name: "upper case key", method: "GET", raw: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-ID: a\r\n\r\nb", own: true},
		{name: "keep-alive", method: "GET", raw: "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n", own: true},
		{name: "upgrade", method: "GET", raw: "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n", own: true},
		{name: "proxy fields", method: "GET", raw: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n", own: true},
		{name: "te", method: "GET", raw: "HTTP/1.1 200 OK\r\nTe: trailers\r\nContent-Length: 0\r\n\r\n", own: true},
		{name: "plain", method: "GET", raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nokNEXT", own: true, lines: true},
		{name: "no reason", method: "GET", raw: "HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n", own: true, lines: true},
		{name: "repeated key", method: "GET", raw: "HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nX: 1\r\nset-cookie: b\r\nContent-Length: 1\r\n\r\nz", own: true},
		{name: "spaces", method: "GET", raw: "HTTP/1.1 200  OK \r\nX:\t v \t\r\nY:\r\nContent-Length:  3 \r\n\r\nabc", own: true, lines: true},
		{name: "a tab for the space", method: "GET", raw: "HTTP/1.1 200 OK\r\nX:\tv\r\nContent-Length: 3\r\n\r\nabc", own: true, lines: true},
		{name: "no space", method: "GET", raw: "HTTP/1.1 200 OK\r\nX:v\r\nContent-Length: 3\r\n\r\nabc", own: true, lines: true},
		{name: "head", method: "HEAD", raw: "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", own: true, lines: true},
		{name: "head without length", method: "HEAD", raw: "HTTP/1.1 200 OK\r\n\r\n", own: true, lines: true},
		{name: "no content", method: "GET", raw: "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", own: true, lines: true},
		{name: "not modified", method: "GET", raw: "HTTP/1.1 304 Not Modified\r\nEtag: x\r\n\r\n", own: true, lines: true},
		{name: "short body", method: "GET", raw: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", own: true, lines: true},
		{name: "odd status", method: "GET", raw: "HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n", own: true, lines: true},
		{name: "lowercase keys", method: "GET", raw: "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nx-request-id: a\r\n\r\nb", own: true},
		{name: "chunked", method: "GET", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"},
		{name: "until close", method: "GET", raw: "HTTP/1.1 200 OK\r\n\r\nabc"},
		{name: "close", method: "GET", raw: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"},
		{name: "http/1.0", method: "GET", raw: "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{name: "informational", method: "GET", raw: "HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{name: "two lengths", method: "GET", raw: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"},
		{name: "signed length", method: "GET", raw: "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\na"},
		{name: "pragma", method: "GET", raw: "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n"},
		{name: "space before colon", method: "GET", raw: "HTTP/1.1 200 OK\r\nX : y\r\nContent-Length: 0\r\n\r\n"},
		{name: "folded", method: "GET", raw: "HTTP/1.1 200 OK\r\nX: y\r\n z\r\nContent-Length: 0\r\n\r\n"},
		{name: "bare lf", method: "GET", raw: "HTTP/1.1 200 OK\nContent-Length: 0\n\n"},
		{name: "bare lf in a field", method: "GET", raw: "HTTP/1.1 200 OK\r\nX: ab\nContent-Length: 0\r\n\r\n"},
		{name: "bare lf for the blank line", method: "GET", raw: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n"},
		{name: "bare lf ending a field", method: "GET", raw: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\n\r\n"},
		{name: "control byte", method: "GET", raw: "HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 0\r\n\r\n"},
		{name: "incomplete", method: "GET", raw: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if own, _ := compareResponseHead(t, tc.method, []byte(tc.raw), false); own != tc.own {
				t.Errorf("read by readResponseHead: %v, want %v", own, tc.own)
			}
			if own, lines := compareResponseHead(t, tc.method, []byte(tc.raw), true); own != tc.own || lines != tc.lines {
				t.Errorf("asked for lines: read %v, as lines %v; want %v, %v", own, lines, tc.own, tc.lines)
			}
		})
	}
}

// compareResponseHead fails t if readResponseHead reads raw, the answer
// to a method request, otherwise than http.ReadResponse, head and body,
// and reports whether it read it, and whether as lines (asked with
// asLines): lines of leanhttp's SetRawHeader's form that are, read into
// a header, http.ReadResponse's header (only a head without a hop-by-hop
// field comes as lines).
func compareResponseHead(t *testing.T, method string, raw []byte, asLines bool) (own, gotLines bool) {
	t.Helper()
	req := &http.Request{Method: method, URL: &url.URL{Path: "/"}}
	br := bufio.NewReaderSize(bytes.NewReader(raw), 4<<10)
	_, _ = br.Peek(1)
	sc := dirtyScratch(t)
	fr, lines := readResponseHead(br, req, asLines, sc)
	if fr == nil {
		if br.Buffered() != min(len(raw), 4<<10) {
			t.Errorf("declined, but consumed %d bytes", min(len(raw), 4<<10)-br.Buffered())
		}
		return false, false
	}
	got := &fr.Response
	if got.Header == nil {
		if !asLines {
			t.Fatalf("no header, and no lines asked for")
		}
		// Every line of SetRawHeader's form, and the facts noted as they
		// were read those SetRawHeader notes from the lines (what
		// SetCheckedRawHeader then takes on trust).
		var facts field.Facts
		for _, line := range bytes.SplitAfter(lines, crlf) {
			if len(line) == 0 {
				continue
			}
			if line[0] == ':' || !lineForm.Match(line) {
				t.Errorf("line %q is not of SetRawHeader's form", line)
				continue
			}
			name, value, _ := bytes.Cut(line[:len(line)-2], []byte(": "))
			if !facts.Note(name, value) {
				t.Errorf("line %q is one SetRawHeader declines", line)
			}
		}
		// eventStream, noted as read, is what the first Content-Type
		// line says.
		var stream bool
		for _, line := range bytes.SplitAfter(lines, crlf) {
			if v, ok := bytes.CutPrefix(line, []byte("Content-Type:")); ok {
				stream = eventStream(strings.TrimSpace(string(v)))
				break
			}
		}
		if stream != sc.eventStream {
			t.Errorf("eventStream noted as read %v, of the lines %v", sc.eventStream, stream)
		}
		// hasID, noted as read, is whether a line is X-Request-Id's.
		if has := bytes.HasPrefix(lines, requestIDName) || bytes.Contains(lines, []byte("\n"+requestIDKey+":")); has != sc.hasID {
			t.Errorf("hasID noted as read %v, of the lines %v", sc.hasID, has)
		}
		if facts != sc.facts {
			t.Errorf("facts noted as read %+v, of the lines %+v", sc.facts, facts)
		}
		got.Header = http.Header{}
		addLines(got.Header, lines)
		gotLines = true
	} else if lines != nil {
		t.Errorf("lines %q beside a header", lines)
	}
	if got.Body == nil {
		fr.lb = lengthBody{br: br, left: got.ContentLength}
		got.Body = &fr.lb
	}
	wbr := bufio.NewReaderSize(bytes.NewReader(raw), 4<<10)
	want, err := http.ReadResponse(wbr, req)
	if err != nil {
		t.Fatalf("readResponseHead read %q; http.ReadResponse: %v", raw, err)
	}
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"Status", got.Status, want.Status},
		{"StatusCode", got.StatusCode, want.StatusCode},
		{"Proto", [3]any{got.Proto, got.ProtoMajor, got.ProtoMinor}, [3]any{want.Proto, want.ProtoMajor, want.ProtoMinor}},
		{"Header", got.Header, want.Header},
		{"ContentLength", got.ContentLength, want.ContentLength},
		{"Close", got.Close, want.Close},
		{"TransferEncoding", got.TransferEncoding, want.TransferEncoding},
		{"Trailer", got.Trailer, want.Trailer},
		{"NoBody", got.Body == http.NoBody, want.Body == http.NoBody},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Errorf("%s: readResponseHead %#v, http.ReadResponse %#v", f.name, f.got, f.want)
		}
	}
	gb, gerr := io.ReadAll(got.Body)
	wb, werr := io.ReadAll(want.Body)
	if !bytes.Equal(gb, wb) || errString(gerr) != errString(werr) {
		t.Errorf("body: readResponseHead %q, %v; http.ReadResponse %q, %v", gb, gerr, wb, werr)
	}
	// What is left is the next response's: the same bytes.
	grest, _ := io.ReadAll(br)
	wrest, _ := io.ReadAll(wbr)
	if !bytes.Equal(grest, wrest) {
		t.Errorf("left on the connection: readResponseHead %q, http.ReadResponse %q", grest, wrest)
	}
	return true, gotLines
}

// lineForm is a line of leanhttp's SetRawHeader: a canonical name (each
// letter upper case first and after a hyphen, lower case elsewhere), a
// colon and a space, a value without control bytes (HTAB aside) nor
// white space at its ends, CRLF.
var lineForm = regexp.MustCompile("^" + canonicalRE + ": (" + valueRE + `)?\r\n$`)

const (
	tokenOther  = "0-9!#$%&'*+.^_|~`"
	canonicalRE = "[A-Z" + tokenOther + "]?[a-z" + tokenOther + "]*(-[A-Z" + tokenOther + "]?[a-z" + tokenOther + "]*)*"
	valueRE     = `[^\x00-\x20\x7f]([^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?`
)

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func FuzzReadResponseHead(f *testing.F) {
	f.Add(false, []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"))
	f.Add(true, []byte("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"))
	f.Add(false, []byte("HTTP/1.1 204 No Content\r\nX-Request-Id: a\r\nx-request-id: b\r\n\r\n"))
	f.Add(false, []byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"))
	f.Add(false, []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Request-Id: up\r\nDate: x\r\n\r\n"))
	f.Add(true, []byte("HTTP/1.1 200 OK\r\nX-Request-Id: up\r\nContent-Length: 0\r\n\r\n"))
	f.Add(false, []byte("HTTP/1.1 200 OK\r\nDate: x\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"))
	f.Add(false, []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Type: text/event-stream\r\nContent-Length: 0\r\n\r\n"))
	f.Add(false, []byte("HTTP/1.1 200 OK\r\nX: ab\nContent-Length: 0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head bool, raw []byte) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		compareResponseHead(t, method, raw, false)
		compareResponseHead(t, method, raw, true)
	})
}

// dirtyScratch is a respScratch as a request's state lends it after
// another request's response, one with a body and more fields, read as
// lines, than most.
func dirtyScratch(t *testing.T) *respScratch {
	t.Helper()
	// (Its notes set, as a later head's must not find them.)
	const head = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n" +
		"Set-Cookie: a=b\r\nX-D: 4\r\nX-E: a rather long value that takes room\r\nX-Request-Id: z\r\n" +
		"Content-Type: text/event-stream\r\n\r\nabc"
	sc := new(respScratch)
	br := bufio.NewReader(strings.NewReader(head))
	_, _ = br.Peek(1)
	fr, lines := readResponseHead(br, &http.Request{Method: "GET"}, true, sc)
	if fr == nil || lines == nil {
		t.Fatalf("readResponseHead(%q) declined, or not as lines", head)
	}
	if !sc.hasID || !sc.eventStream {
		t.Fatalf("readResponseHead(%q) noted no X-Request-Id or no event stream", head)
	}
	fr.lb = lengthBody{br: br, left: 3}
	fr.body = fastBody{ReadCloser: &fr.lb}
	fr.Body = &fr.body
	return sc
}

// TestReadResponseHeadScratchAllocs: a head read into a scratch an
// earlier response used costs no allocation: the response and its
// lines are the scratch's.
func TestReadResponseHeadScratchAllocs(t *testing.T) {
	raw := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nDate: Wed, 02 Dec 2026 08:00:00 GMT\r\n\r\nok")
	req := &http.Request{Method: "GET"}
	sc := new(respScratch)
	var rd bytes.Reader
	br := bufio.NewReader(nil)
	read := func() {
		rd.Reset(raw)
		br.Reset(&rd)
		_, _ = br.Peek(1)
		if fr, lines := readResponseHead(br, req, true, sc); fr == nil || lines == nil {
			t.Fatal("declined, or not as lines")
		}
	}
	read()
	if allocs := testing.AllocsPerRun(100, read); allocs != 0 {
		t.Errorf("%v allocations per head, want 0", allocs)
	}
}

// TestNameOf holds nameOf to the lists it stands for: every hop-by-hop
// name kept out of lines, the names http.ReadResponse frames or rewrites
// declined in any case, the rest plain.
func TestNameOf(t *testing.T) {
	for _, k := range hopHeaders {
		if got := nameOf([]byte(k)); got != hopField && got != declined {
			t.Errorf("nameOf(%q) = %d: a hop-by-hop name passed on as a line", k, got)
		}
	}
	for _, k := range []string{"Connection", "Transfer-Encoding", "Trailer", "Pragma"} {
		for _, spelt := range []string{k, strings.ToLower(k), strings.ToUpper(k)} {
			if got := nameOf([]byte(spelt)); got != declined {
				t.Errorf("nameOf(%q) = %d, want declined", spelt, got)
			}
		}
	}
	for _, k := range []string{"Content-Length", "content-length", "CONTENT-LENGTH"} {
		if got := nameOf([]byte(k)); got != contentLength {
			t.Errorf("nameOf(%q) = %d, want contentLength", k, got)
		}
	}
	if got := nameOf([]byte(requestIDKey)); got != requestIDLine {
		t.Errorf("nameOf(%q) = %d, want requestIDLine", requestIDKey, got)
	}
	if got := nameOf([]byte("Content-Type")); got != contentTypeLine {
		t.Errorf("nameOf(Content-Type) = %d, want contentTypeLine", got)
	}
	for _, k := range []string{"content-type", "Content-type", "Date", "x-request-id", "X-Request-ID", "X-Request-Ix", "Tf", "Upgrades", "Keep-Alivf", "Proxy-Authorisation", "Proxy-Connections", ""} {
		if got := nameOf([]byte(k)); got != plainName {
			t.Errorf("nameOf(%q) = %d, want plain", k, got)
		}
	}
}

// TestIDLine: a request ID goes into the answer's lines unchecked only
// when its line is of SetRawHeader's form.
func TestIDLine(t *testing.T) {
	for id, want := range map[string]bool{
		"4bf92f35-77b3-4da6-a3ce-929d0e0e4736": true, "a b": true, "~": true,
		"a\tb": true, "ü": true, // a value SetRawHeader takes
		"": false, " a": false, "a ": false, "\ta": false, "a\t": false, "a\r\nX-Evil: 1": false, "\x7f": false, "12345678\n": false,
	} {
		if got := idLine(id); got != want {
			t.Errorf("idLine(%q) = %v, want %v", id, got, want)
		}
	}
	// The IDs the sidecar makes itself go unchecked (reqState.ownID).
	for range 1000 {
		if id := requestid.New(); !idLine(id) {
			t.Fatalf("idLine(requestid.New() %q) = false", id)
		}
	}
}

// TestWriteRequestHeadKeepsNothing: the sorting scratch, kept on an idle
// upstream connection, holds none of a request's fields after it is
// written or declined.
func TestWriteRequestHeadKeepsNothing(t *testing.T) {
	good := http.Header{}
	for _, k := range []string{"A", "B", "C", "D", "E", "F", "G", "H"} {
		good[k] = []string{"1"}
	}
	badValue := maps.Clone(good)
	badValue["Bad"] = []string{"2\r\nX: y"}
	badUA := maps.Clone(good)
	badUA["User-Agent"] = []string{"a\r\nb"}
	for _, h := range []http.Header{good, badValue, badUA} {
		// Twenty times: the map's order decides how many fields come
		// before the declined one.
		for range 20 {
			req := &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, Host: "a", Header: h}
			var b bytes.Buffer
			fields, _ := writeRequestHead(&b, req, make([]headerField, 0, 16), nil)
			for i, f := range fields[:cap(fields)] {
				if f.key != "" || f.values != nil {
					t.Fatalf("scratch field %d after %v: %+v", i, h, f)
				}
			}
		}
	}
}
