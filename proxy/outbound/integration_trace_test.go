package outbound_test

import (
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/otlptest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// tracedTries is an upstream that fails the first try with 503 and
// records the trace fields every try brought.
type tracedTries struct {
	mu     sync.Mutex
	fields []http.Header
}

func (u *tracedTries) handler(w http.ResponseWriter, r *http.Request, n int64) {
	h := http.Header{}
	for _, k := range []string{"Traceparent", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled", "B3", "X-B3-Flags"} {
		if v, ok := r.Header[k]; ok {
			h[k] = v
		}
	}
	u.mu.Lock()
	u.fields = append(u.fields, h)
	u.mu.Unlock()
	if n == 1 {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

// TestTriesTraceContext: with retries, each try of a recorded request
// goes upstream as a span of its own (the upstream's span hangs under the
// try it served); the tries of a request not recorded (the app's trace
// says not sampled, or the ratio left it out) carry the request's own
// span, the one its access log line names, marked not sampled. Both ways
// the W3C and B3 fields agree, and the app's trace goes on.
func TestTriesTraceContext(t *testing.T) {
	const traceID = "0af7651916cd43dd8448eb211c80319c"
	for _, c := range []struct {
		name, traceparent string
		ratio             float64
		sampled           bool
	}{
		{"app sampled", "00-" + traceID + "-b7ad6b7169203331-01", 0, true},
		{"app not sampled", "00-" + traceID + "-b7ad6b7169203331-00", 1, false},
		{"new trace left out", "", 0, false},
		{"new trace recorded", "", 1, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var u tracedTries
			up := newUpstream(t, u.handler)
			var alog accessLog
			sc := startSidecar(t, policyDoc("geo", "geo-service", retry503), resolve(up.Host(), geo),
				withAccessLog(&alog), func(cfg *sidecar.Config) {
					// Nobody answers there: spans are made, then dropped.
					cfg.OTLPEndpoint, cfg.TraceSampleRatio = "127.0.0.1:1", c.ratio
				})
			req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/x", nil)
			if c.traceparent != "" {
				req.Header.Set("Traceparent", c.traceparent)
			}
			if resp, body := fetch(t, sc.Client(), req); resp.StatusCode != http.StatusOK {
				t.Fatalf("%d %s, want 200 after a retry", resp.StatusCode, body)
			}
			line := alog.wait(t, 1, 5*time.Second)[0]
			u.mu.Lock()
			tries := u.fields
			u.mu.Unlock()
			if len(tries) != 2 {
				t.Fatalf("%d tries reached the upstream, want 2", len(tries))
			}
			flag, sampled := "-00", "0"
			if c.sampled {
				flag, sampled = "-01", "1"
			}
			var spans []string
			for i, h := range tries {
				tp := h.Get("Traceparent")
				parts := strings.Split(tp, "-")
				if len(parts) != 4 || !strings.HasSuffix(tp, flag) || (c.traceparent != "" && parts[1] != traceID) {
					t.Fatalf("try %d: traceparent %q, want the app's trace, flags %s", i+1, tp, flag[1:])
				}
				if h.Get("X-B3-Traceid") != parts[1] || h.Get("X-B3-Spanid") != parts[2] || h.Get("X-B3-Sampled") != sampled {
					t.Errorf("try %d: B3 fields %v disagree with traceparent %q", i+1, h, tp)
				}
				if parts[1] != line.TraceID {
					t.Errorf("try %d: trace %s, the access log's %s", i+1, parts[1], line.TraceID)
				}
				spans = append(spans, parts[2])
			}
			if c.sampled {
				if spans[0] == spans[1] || spans[0] == line.SpanID || spans[1] == line.SpanID {
					t.Errorf("recorded: tries sent spans %v, request span %s: want a span of each try's own", spans, line.SpanID)
				}
			} else if spans[0] != line.SpanID || spans[1] != line.SpanID {
				t.Errorf("not recorded: tries sent spans %v, want the request's own span %s", spans, line.SpanID)
			}
		})
	}
}

// spanAttrs returns a span's attributes as strings (ints in decimal).
func spanAttrs(s *tracepb.Span) map[string]string {
	m := map[string]string{}
	for _, a := range s.Attributes {
		v := a.Value.GetStringValue()
		if v == "" {
			v = strconv.FormatInt(a.Value.GetIntValue(), 10)
		}
		m[a.Key] = v
	}
	return m
}

// TestSpanSemconv: the request span (the app's logical request) and each
// try's span (one HTTP attempt, "HTTP request retries and redirects") are
// CLIENT spans as the HTTP semantic conventions want them: a 4xx is an
// error, as a 5xx is, with error.type the status code; a try whose body
// is cut after its headers (a Content-Length body short, a chunked body
// cut, an HTTP/2 stream reset) is a failed try, error.type reset, as
// the breaker, the metric and the access log have it, not the success
// its headers said; every try span has the method, url.full,
// server.address and server.port, and network.peer.* of the endpoint
// the balancer picked, the second try http.request.resend_count 1; a
// gRPC call's try has the status of its trailers, read at its end.
func TestSpanSemconv(t *testing.T) {
	var mu sync.Mutex
	hits := map[string]int{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		hits[r.URL.Path]++
		n := hits[r.URL.Path]
		mu.Unlock()
		switch r.URL.Path {
		case "/missing":
			w.WriteHeader(http.StatusNotFound)
		case "/unavailable":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/retry":
			if n == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok"))
		case "/trunc", "/chunked":
			if r.URL.Path == "/trunc" {
				w.Header().Set("Content-Length", "100")
			}
			_, _ = w.Write([]byte("0123456789"))
			w.(http.Flusher).Flush()
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.Close()
			}
		case "/grpc.health.v1.Health/Check":
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			_, _ = w.Write(wholeMessage)
			w.Header().Set("Grpc-Status", "5") // NOT_FOUND
		case "/h2reset":
			_, _ = w.Write([]byte("0123456789"))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // RST_STREAM mid-body
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	up := ln.Addr().String()
	_, upPort, _ := net.SplitHostPort(up)

	col := otlptest.Start(t)
	sc := startSidecar(t, policyDoc("geo", "geo-service", retry503), nil, withNamespace("shop"),
		func(cfg *sidecar.Config) { cfg.OTLPEndpoint, cfg.TraceSampleRatio = col.Addr, 1 })
	sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: {{Addr: up}}})

	type span struct {
		status  tracepb.Status_StatusCode
		code    string // http.response.status_code; "" for none
		errType string // "" for none
	}
	unset, failed := tracepb.Status_STATUS_CODE_UNSET, tracepb.Status_STATUS_CODE_ERROR
	for i, tc := range []struct {
		path    string
		h2      bool
		grpc    string // the call's rpc.grpc.status_code; "": not gRPC
		request span
		tries   []span
	}{
		{"/missing", false, "", span{failed, "404", "404"}, []span{{failed, "404", "404"}}},
		{"/unavailable", false, "", span{failed, "503", "503"}, []span{{failed, "503", "503"}, {failed, "503", "503"}, {failed, "503", "503"}}},
		{"/retry", false, "", span{unset, "200", ""}, []span{{failed, "503", "503"}, {unset, "200", ""}}},
		{"/trunc", false, "", span{failed, "", "reset"}, []span{{failed, "200", "reset"}}},
		{"/chunked", false, "", span{failed, "", "reset"}, []span{{failed, "200", "reset"}}},
		{"/h2reset", true, "", span{failed, "", "reset"}, []span{{failed, "200", "reset"}}},
		{"/grpc.health.v1.Health/Check", true, "5", span{failed, "200", ""}, []span{{failed, "200", ""}}},
	} {
		t.Run(tc.path[strings.LastIndexByte(tc.path, '/')+1:], func(t *testing.T) {
			traceID := fmt.Sprintf("%032x", 0x5e3c0000+i)
			const appSpan = "b7ad6b7169203331"
			var c *http.Client
			method := http.MethodGet
			req, _ := http.NewRequest(method, "http://"+geo+tc.path, nil)
			if tc.grpc != "" {
				method = http.MethodPost
				req, _ = http.NewRequest(method, "http://"+geo+tc.path, strings.NewReader(string(wholeMessage)))
				req.Header.Set("Content-Type", "application/grpc")
				req.Header.Set("Te", "trailers")
			}
			if tc.h2 {
				c = h2cClient(t)
				req.URL.Host, req.Host = sc.Addr, geo
			} else {
				c = sc.Client()
			}
			req.Header.Set("Traceparent", "00-"+traceID+"-"+appSpan+"-01")
			if resp, err := c.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			spans := col.Trace(t, traceID, 1+len(tc.tries))
			var reqSpan *tracepb.Span
			for _, s := range spans {
				if hex.EncodeToString(s.ParentSpanId) == appSpan {
					reqSpan = s
				}
			}
			if reqSpan == nil {
				t.Fatalf("no span under the app's: %v", spans)
			}
			check := func(what string, s *tracepb.Span, want span) map[string]string {
				t.Helper()
				a := spanAttrs(s)
				if s.Kind != tracepb.Span_SPAN_KIND_CLIENT || s.Status.GetCode() != want.status ||
					a["http.response.status_code"] != want.code && want.code != "" || a["error.type"] != want.errType {
					t.Errorf("%s: kind %v, status %v, http.response.status_code %q, error.type %q; want CLIENT, %v, %q, %q",
						what, s.Kind, s.Status.GetCode(), a["http.response.status_code"], a["error.type"], want.status, want.code, want.errType)
				}
				return a
			}
			check("request span", reqSpan, tc.request)
			var tries []*tracepb.Span
			for _, s := range spans {
				if s != reqSpan {
					tries = append(tries, s)
					if string(s.ParentSpanId) != string(reqSpan.SpanId) {
						t.Errorf("try span %x under %x, want the request span %x", s.SpanId, s.ParentSpanId, reqSpan.SpanId)
					}
				}
			}
			for n, s := range tries {
				a := spanAttrs(s)
				resend, _ := strconv.Atoi(a["http.request.resend_count"]) // absent on the first try
				if resend < 0 || resend >= len(tc.tries) {
					t.Fatalf("try span with http.request.resend_count %q", a["http.request.resend_count"])
				}
				check(fmt.Sprintf("try %d (span %d)", resend+1, n), s, tc.tries[resend])
				for k, v := range map[string]string{
					"http.request.method": method, "url.full": "http://" + geo + tc.path,
					"server.address": "geo-service", "server.port": "8000",
					"network.peer.address": "127.0.0.1", "network.peer.port": upPort,
				} {
					if a[k] != v {
						t.Errorf("try %d: %s %q, want %q", resend+1, k, a[k], v)
					}
				}
				if tc.grpc != "" && a["rpc.grpc.status_code"] != tc.grpc {
					t.Errorf("try %d: rpc.grpc.status_code %q, want %q", resend+1, a["rpc.grpc.status_code"], tc.grpc)
				}
				if _, ok := a["http.request.resend_count"]; ok != (resend > 0) {
					t.Errorf("try %d: http.request.resend_count present %v, want it from the second try", resend+1, ok)
				}
			}
		})
	}
}
