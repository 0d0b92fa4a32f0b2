package outbound_test

// The app's own faults on the way to an upstream are the app's, never the
// upstream's failures: a request header list over an HTTP/2 upstream's
// advertised SETTINGS_MAX_HEADER_LIST_SIZE (which Go's transport refuses
// to send), and a request body that fails after the upstream's headers
// (over --max-request-body-bytes, shorter or longer than its
// content-length, bad chunked framing). Before, both were answered,
// logged and counted as the upstream's reset (502, grpc-status 14, a
// breaker failure): five such requests opened the breaker for every
// caller though the upstream had handled none of them.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// A breaker that one counted failure opens, and retries that would
// repeat a reset: neither may see the app's faults.
const (
	appFaultBreaker = "circuitBreaker: {consecutiveFailures: 1, openTimeout: 60s}"
	appFaultPolicy  = "retries: {attempts: 2, retryOn: [reset, connect-failure]}\n" + appFaultBreaker
)

// TestHeaderListOverUpstreamLimit: an HTTP/2 upstream advertises a
// header list limit (8 KiB here) below the sidecar's own 64 KiB; an
// app's request between the two is answered 431 bad-request (gRPC:
// RESOURCE_EXHAUSTED), not sent nor retried, and counts neither way for
// the breaker, as an HTTP/1.1 upstream's own 431 would. Before: 502
// reset, a breaker failure for a request the upstream never saw. It
// drives Go's real transport, so a Go upgrade that changes the error's
// text (h2HeaderListTooLarge) fails here.
func TestHeaderListOverUpstreamLimit(t *testing.T) {
	for _, grpc := range []bool{false, true} {
		t.Run(map[bool]string{false: "h2", true: "grpc"}[grpc], func(t *testing.T) {
			var hits atomic.Int32
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			srv := &http.Server{Protocols: &p, MaxHeaderBytes: 8 << 10, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				if grpc {
					w.Header().Set("Content-Type", "application/grpc")
					w.Header().Set("Grpc-Status", "0")
				}
			})}
			go func() { _ = srv.Serve(ln) }()
			t.Cleanup(func() { srv.Close() })
			var al accessLog
			sc := startSidecar(t, policyDoc("flow", "flow-service", appFaultPolicy), resolve(ln.Addr().String(), flowSvc), withAccessLog(&al))
			c := h2cClient(t)
			call := func(big bool) *http.Response {
				t.Helper()
				req, _ := http.NewRequest(http.MethodGet, "http://"+sc.Addr+"/x", nil)
				if grpc {
					req, _ = http.NewRequest(http.MethodPost, "http://"+sc.Addr+"/p.S/M", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
					req.Header.Set("Content-Type", "application/grpc")
					req.Header.Set("Te", "trailers")
				}
				req.Host = flowSvc
				if big {
					req.Header.Set("X-Big", strings.Repeat("a", 20<<10))
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp
			}
			// A whole answer first: the upstream's SETTINGS, which come
			// before it on the connection, are in.
			if resp := call(false); resp.StatusCode != http.StatusOK {
				t.Fatalf("warm-up: %s", resp.Status)
			}
			const n = 3
			for range n {
				resp := call(true)
				kind := resp.Header.Get("X-Minimesh-Error")
				if grpc {
					if resp.StatusCode != http.StatusOK || resp.Header.Get("Grpc-Status") != "8" || kind != "bad-request" {
						t.Fatalf("%s, grpc-status %q (%s), X-Minimesh-Error %q: want a trailers-only RESOURCE_EXHAUSTED bad-request",
							resp.Status, resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message"), kind)
					}
				} else if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || kind != "bad-request" {
					t.Fatalf("%s, X-Minimesh-Error %q: want 431 bad-request", resp.Status, kind)
				}
			}
			if got := hits.Load(); got != 1 {
				t.Errorf("the upstream handled %d requests, want only the warm-up", got)
			}
			if b := sc.breaker(flowSvc); b.State != "closed" || b.Counts.TotalFailures != 0 {
				t.Errorf("breaker %s %+v: want closed, no failure", b.State, b.Counts)
			}
			wantLog, wantMetric := http.StatusRequestHeaderFieldsTooLarge, "431"
			if grpc {
				wantLog, wantMetric = http.StatusOK, "200"
			}
			for _, e := range al.wait(t, 1+n, 2*time.Second)[1:] {
				if e.Status != wantLog || e.Error != "bad-request" || e.Attempts != 1 || grpc && e.GRPCStatus != "RESOURCE_EXHAUSTED" {
					t.Errorf("access log %+v: want status %d, bad-request, 1 attempt", e, wantLog)
				}
			}
			if got := sc.metric("minimesh_requests_total", "destination", flowSvc, "code", wantMetric); got != map[bool]float64{false: n, true: 1 + n}[grpc] {
				t.Errorf("requests_total{code=%s} = %v", wantMetric, got)
			}
			if got := sc.metric("minimesh_retries_total", "destination", flowSvc); got != 0 {
				t.Errorf("retries_total = %v, want 0", got)
			}
		})
	}
}

// rawH2 is an app's HTTP/2 connection to the sidecar, framed by hand: a
// body can break its own content-length.
type rawH2 struct {
	t  *testing.T
	c  net.Conn
	fr *http2.Framer
}

func dialRawH2(t *testing.T, addr string) *rawH2 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_, _ = c.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	_ = fr.WriteSettings()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawH2{t: t, c: c, fr: fr}
}

func (r *rawH2) headers(end bool, kv ...string) {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for i := 0; i < len(kv); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.Bytes(), EndHeaders: true, EndStream: end}); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawH2) data(end bool, p []byte) {
	// In frames the sidecar's default 16 KiB max frame size takes.
	for len(p) > 16<<10 {
		if err := r.fr.WriteData(1, false, p[:16<<10]); err != nil {
			r.t.Fatal(err)
		}
		p = p[16<<10:]
	}
	if err := r.fr.WriteData(1, end, p); err != nil {
		r.t.Fatal(err)
	}
}

// next is stream 1's next frame (nil: the connection ended).
func (r *rawH2) next() http2.Frame {
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return nil
		}
		if testing.Verbose() {
			r.t.Logf("frame %v", f)
		}
		if ackControl(r.fr, f) || f.Header().StreamID != 1 {
			continue
		}
		return f
	}
}

// appFaultCase is one way the app's body fails after the upstream's
// headers (and, early, its first body bytes or message) were sent.
type appFaultCase struct {
	name  string
	proto string // "h1", "h2" or "grpc"
	early bool   // the upstream sends body bytes (a gRPC message) before reading the app's body
	fault string // "over" the limit, "short" or "long" of its content-length, "chunk" framing
	// app: what the app gets: the sidecar's own status (withheld), or
	// for a cut, a gRPC status in trailers (grpc), else a reset (0).
	code   int
	grpc   string
	metric string // requests_total's code
	// orGone: the app's leaving (499, no error kind) is as right as its
	// fault. net/http's HTTP/2 server answers DATA past a stream's
	// content-length with RST_STREAM PROTOCOL_ERROR, ending the body and
	// cancelling the request at once: which of the two the sidecar
	// learns first is the scheduler's choice. Either way the app's doing,
	// never the upstream's failure.
	orGone bool
}

// TestAppBodyFaultAfterHeaders: the app's body fails after the
// upstream's headers reached the sidecar. It is the app's fault as it is
// before them: `bad-request` with the status the sidecar answers a
// request body it cannot read (400; 413 over the limit), in the app's
// answer when nothing of the upstream's had reached it, in a gRPC call's
// trailers between two messages, in the access log, the metric and the
// gRPC status; the breaker, whose one failure would open it, counts the
// try neither way, and nothing is retried. Before: the upstream's
// `reset`, 502, grpc-status 14, a breaker failure.
func TestAppBodyFaultAfterHeaders(t *testing.T) {
	const limit = 64 << 10
	cases := []appFaultCase{
		{name: "h2 over the limit", proto: "h2", early: true, fault: "over", metric: "413"},
		{name: "h2 short of its content-length", proto: "h2", early: true, fault: "short", metric: "400"},
		{name: "h2 past its content-length", proto: "h2", early: true, fault: "long", metric: "400", orGone: true},
		{name: "h2 over the limit, nothing sent yet", proto: "h2", fault: "over", code: 413, metric: "413"},
		// A gRPC call keeps the 200 its app got: its failure is in
		// minimesh_grpc_requests_total (docs/metrics.md).
		{name: "grpc over the limit", proto: "grpc", early: true, fault: "over", grpc: "8", metric: "200"},
		{name: "grpc short of its content-length", proto: "grpc", early: true, fault: "short", grpc: "13", metric: "200"},
		{name: "h1 over the limit", proto: "h1", early: true, fault: "over", metric: "413"},
		{name: "h1 bad chunked framing", proto: "h1", early: true, fault: "chunk", metric: "400"},
		{name: "h1 over the limit, nothing sent yet", proto: "h1", fault: "over", code: 413, metric: "413"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sent := make(chan struct{}) // the upstream's headers (and first bytes) went
			var hits atomic.Int32
			h := func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) > 1 {
					return // the check that the breaker is still closed
				}
				_ = http.NewResponseController(w).EnableFullDuplex() // HTTP/1: read the body after answering
				if tc.proto == "grpc" {
					w.Header().Set("Content-Type", "application/grpc")
					w.Header().Set("Trailer", "Grpc-Status")
				} else if !tc.early {
					// A length: the sidecar holds the status back until the
					// first body byte (a stream's goes at once).
					w.Header().Set("Content-Length", "100")
				}
				w.WriteHeader(http.StatusOK)
				if tc.early {
					_, _ = w.Write([]byte{0, 0, 0, 0, 1, 'a'}) // one whole gRPC message
				}
				http.NewResponseController(w).Flush()
				close(sent)
				_, _ = io.Copy(io.Discard, r.Body)
				<-r.Context().Done()
			}
			var up string
			if tc.proto == "h1" {
				up = newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) { h(w, r) }).Host()
			} else {
				up = startH2CUpstream(t, h)
			}
			var al accessLog
			// No retries: a body kept for one is read ahead of the try.
			sc := startSidecar(t, policyDoc("flow", "flow-service", appFaultBreaker), resolve(up, flowSvc),
				withAccessLog(&al), func(c *sidecar.Config) { c.MaxRequestBody = limit })
			if tc.proto == "h1" {
				appFaultH1(t, sc.Addr, tc, sent)
			} else {
				appFaultH2(t, sc.Addr, tc, sent)
			}
			e := al.wait(t, 1, 5*time.Second)[0]
			wantStatus := http.StatusOK // what the app got before the cut
			if tc.code != 0 {
				wantStatus = tc.code
			}
			metric := tc.metric
			if tc.orGone && e.Status == 499 && e.Error == "" && e.Attempts == 1 {
				metric = "499"
			} else if e.Error != "bad-request" || e.Status != wantStatus || e.Attempts != 1 {
				t.Errorf("access log %+v: want status %d, error bad-request, 1 attempt", e, wantStatus)
			}
			if tc.grpc != "" {
				want := map[string]string{"8": "RESOURCE_EXHAUSTED", "13": "INTERNAL"}[tc.grpc]
				if e.GRPCStatus != want {
					t.Errorf("access log grpc_status %q, want %s", e.GRPCStatus, want)
				}
				sc.waitMetric(1, 2*time.Second, "minimesh_grpc_requests_total", "destination", flowSvc, "grpc_code", want)
			}
			sc.waitMetric(1, 2*time.Second, "minimesh_requests_total", "destination", flowSvc, "code", metric)
			if b := sc.breaker(flowSvc); b.State != "closed" || b.Counts.TotalFailures != 0 {
				t.Errorf("breaker %s %+v: want closed, no failure", b.State, b.Counts)
			}
			if got := sc.metric("minimesh_retries_total", "destination", flowSvc); got != 0 {
				t.Errorf("retries_total = %v, want 0", got)
			}
			// Another call still reaches the upstream: no breaker open.
			req, _ := http.NewRequest(http.MethodGet, "http://"+flowSvc+"/next", nil)
			c := sc.Client()
			if tc.proto != "h1" {
				req.URL.Host = sc.Addr
				req.Host = flowSvc
				c = h2cClient(t)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("the next request got %s (%s), want the upstream's 200", resp.Status, resp.Header.Get("X-Minimesh-Error"))
			}
		})
	}
}

// appFaultH2 sends tc's request on a raw HTTP/2 connection: its first
// body bytes, then, once the upstream's answer has begun (early: its
// first DATA reached the app; else the upstream has sent its headers,
// which the sidecar holds back), the fault. It checks what the app gets.
func appFaultH2(t *testing.T, addr string, tc appFaultCase, sent <-chan struct{}) {
	r := dialRawH2(t, addr)
	kv := []string{":method", "POST", ":scheme", "http", ":authority", flowSvc, ":path", "/p.S/M"}
	if tc.proto == "grpc" {
		kv = append(kv, "content-type", "application/grpc", "te", "trailers")
	}
	if tc.fault != "over" {
		kv = append(kv, "content-length", "100")
	}
	r.headers(false, kv...)
	r.data(false, make([]byte, 10))
	if tc.early {
		for {
			f := r.next()
			if f == nil {
				t.Fatal("the connection ended before the upstream's first DATA")
			}
			if _, ok := f.(*http2.DataFrame); ok {
				break
			}
		}
	} else {
		<-sent
	}
	switch tc.fault {
	case "over":
		r.data(true, make([]byte, 64<<10))
	case "short":
		r.data(true, make([]byte, 10))
	case "long":
		r.data(true, make([]byte, 200))
	}
	var status, grpcStatus, kind string
	reset := false
	for {
		f := r.next()
		if f == nil {
			break
		}
		if _, ok := f.(*http2.RSTStreamFrame); ok {
			reset = true
			break
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			for _, hf := range h.Fields {
				switch hf.Name {
				case ":status":
					status = hf.Value
				case "grpc-status":
					grpcStatus = hf.Value
				case "x-minimesh-error":
					kind = hf.Value
				}
			}
		}
		if f.Header().Flags.Has(http2.FlagDataEndStream) { // (FlagHeadersEndStream too)
			break
		}
	}
	switch {
	case tc.code != 0:
		if status != strconv.Itoa(tc.code) || kind != "bad-request" {
			t.Errorf("the app got status %s, X-Minimesh-Error %q: want the sidecar's %d bad-request", status, kind, tc.code)
		}
	case tc.grpc != "":
		if grpcStatus != tc.grpc || kind != "bad-request" {
			t.Errorf("the app's trailers: grpc-status %q, X-Minimesh-Error %q: want %s bad-request", grpcStatus, kind, tc.grpc)
		}
	default:
		if !reset {
			t.Errorf("the app's answer ended without RST_STREAM: want a cut")
		}
	}
}

// appFaultH1 sends tc's request on a raw HTTP/1.1 connection: its first
// bytes, then, once the upstream's answer has begun, the
// fault. It checks what the app gets.
func appFaultH1(t *testing.T, addr string, tc appFaultCase, sent <-chan struct{}) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	const over = 96 << 10 // past the limit
	// Chunked both ways: a Content-Length over the limit is refused
	// before any try (TestOverLimitContentLengthRefusedBeforeAnyTry).
	_, _ = io.WriteString(c, "POST http://"+flowSvc+"/up HTTP/1.1\r\nHost: "+flowSvc+"\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n")
	br := bufio.NewReader(c)
	var resp *http.Response
	if tc.early {
		if resp, err = http.ReadResponse(br, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 6)); err != nil {
			t.Fatal(err)
		}
	} else {
		<-sent
	}
	switch tc.fault {
	case "over":
		// Whatever the sidecar reads of it before it stops.
		_, _ = c.Write(append([]byte(strconv.FormatInt(over, 16)+"\r\n"), make([]byte, over)...))
	case "chunk":
		_, _ = io.WriteString(c, "zz\r\n")
	}
	if tc.early {
		if _, err := io.Copy(io.Discard, resp.Body); err == nil {
			t.Errorf("the app's answer ended cleanly: want a cut")
		}
		return
	}
	if resp, err = http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	}
	var b struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&b)
	if resp.StatusCode != tc.code || b.Error != "bad-request" {
		t.Errorf("the app got %s, %+v: want the sidecar's %d bad-request", resp.Status, b, tc.code)
	}
}
