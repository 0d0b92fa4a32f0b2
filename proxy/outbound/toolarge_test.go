package outbound_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/minimesh/minimesh/proxy/internal/otlptest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// contactLog is an upstream listener that answers nothing and hands
// over the connections it accepts, in the order they were made: the
// kernel's accept queue is first in, first out.
type contactLog struct {
	ln    net.Listener
	conns chan net.Conn
}

func newContactLog(t *testing.T) *contactLog {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &contactLog{ln: ln, conns: make(chan net.Conn, 16)}
	go func() {
		defer close(l.conns)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range l.conns {
			c.Close()
		}
	})
	return l
}

// contacted returns how many connections the sidecar had made to the
// upstream by now, and what the first of them sent: the test makes one
// of its own, a marker, and counts those accepted before it.
func (l *contactLog) contacted(t *testing.T) (n int, first string) {
	t.Helper()
	marker, err := net.Dial("tcp", l.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer marker.Close()
	for {
		var c net.Conn
		select {
		case c = <-l.conns:
		case <-time.After(5 * time.Second):
			t.Fatal("the upstream listener never accepted the test's own connection")
		}
		if c.RemoteAddr().String() == marker.LocalAddr().String() {
			c.Close()
			return n, first
		}
		if n++; n == 1 {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			b, _ := io.ReadAll(io.LimitReader(c, 256))
			first = string(b)
		}
		c.Close()
	}
}

// TestOverLimitContentLengthRefusedBeforeAnyTry: a request whose
// Content-Length is over --max-request-body-bytes gets the sidecar's own
// 413 bad-request (a gRPC call RESOURCE_EXHAUSTED) before any try: the
// upstream is never dialled, so a non-idempotent one never sees a
// request cut short. The access log, the metric and the request's span
// say what they said of the 413 before (413, bad-request, one attempt),
// the breaker counts nothing, and an HTTP/1.1 connection closes after
// the answer: the body behind the head, a request here, is never read as
// the next one. Before: the upstream got "POST /big … Content-Length: 56"
// and the first bytes of the body, then the cut.
func TestOverLimitContentLengthRefusedBeforeAnyTry(t *testing.T) {
	const limit = 10
	// A request to the same service, hidden in the refused one's body:
	// served, it would reach the upstream.
	smuggled := "GET http://" + geo + "/smuggled HTTP/1.1\r\nHost: " + geo + "\r\n\r\n"
	for _, tc := range []struct {
		name      string
		proto     string // "h1", "h2" or "grpc"
		server    string // "": the suite's (MINIMESH_TEST_SERVER)
		transport string // "std", "fast"; "": the suite's (MINIMESH_TEST_TRANSPORT)
		retries   bool
	}{
		{name: "h1", proto: "h1"},
		{name: "h1 lean server fast transport", proto: "h1", server: sidecar.ServerLean, transport: "fast"},
		{name: "h1 lean server std transport", proto: "h1", server: sidecar.ServerLean, transport: "std"},
		{name: "h1 std server fast transport", proto: "h1", server: sidecar.ServerStd, transport: "fast"},
		{name: "h1 std server std transport", proto: "h1", server: sidecar.ServerStd, transport: "std"},
		{name: "h1 with retries", proto: "h1", retries: true},
		{name: "h2", proto: "h2"},
		{name: "h2 std transport", proto: "h2", transport: "std"},
		{name: "grpc", proto: "grpc"},
		{name: "grpc with retries", proto: "grpc", retries: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newContactLog(t)
			col := otlptest.Start(t)
			var al accessLog
			spec := appFaultBreaker // one failure would open it
			if tc.retries {
				spec = appFaultPolicy
			}
			opts := []sidecarOpt{withAccessLog(&al), func(c *sidecar.Config) {
				c.MaxRequestBody = limit
				c.OTLPEndpoint, c.TraceSampleRatio = col.Addr, 1
			}}
			if tc.server != "" {
				opts = append(opts, withServer(tc.server))
			}
			switch tc.transport {
			case "std":
				opts = append(opts, withStdTransport())
			case "fast":
				opts = append(opts, withFastTransport())
			}
			sc := startSidecar(t, policyDoc("geo", "geo-service", spec), resolve(up.ln.Addr().String(), geo), opts...)

			body := smuggled
			const traceID = "0af7651916cd43dd8448eb211c804130"
			const appSpan = "b7ad6b7169203331"
			traceparent := "00-" + traceID + "-" + appSpan + "-01"
			var resp *http.Response
			var respBody []byte
			if tc.proto == "h1" {
				c := dialSidecar(t, sc)
				head := "POST http://" + geo + "/big HTTP/1.1\r\nHost: " + geo + "\r\nTraceparent: " + traceparent +
					"\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
				if _, err := io.WriteString(c, head+body); err != nil {
					t.Fatal(err)
				}
				br := bufio.NewReader(c)
				var err error
				if resp, err = http.ReadResponse(br, nil); err != nil {
					t.Fatalf("reading the answer: %v", err)
				}
				if respBody, err = io.ReadAll(resp.Body); err != nil {
					t.Fatalf("reading the answer's body: %v", err)
				}
				if !resp.Close {
					t.Errorf("answer without Connection: close (%v): the rest of the body would be read as the next request", resp.Header)
				}
				// Nothing after the answer: the body was not served as a
				// request of its own.
				if next, err := br.ReadString('\n'); err == nil || next != "" {
					t.Errorf("after the 413 the connection sent %q (%v), want its end", next, err)
				}
			} else {
				req, _ := http.NewRequest(http.MethodPost, "http://"+sc.Addr+"/big", bytes.NewReader([]byte(body)))
				req.Host = geo
				req.Header.Set("Traceparent", traceparent)
				if tc.proto == "grpc" {
					req.URL.Path = "/pkg.Svc/Put"
					req.Header.Set("Content-Type", "application/grpc")
					req.Header.Set("Te", "trailers")
				}
				var err error
				if resp, err = h2cClient(t).Do(req); err != nil {
					t.Fatalf("%s: %v", tc.proto, err)
				}
				respBody, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if n, first := up.contacted(t); n != 0 {
				t.Errorf("the upstream was contacted (%d connections, the first sent %q): want the 413 before any try", n, first)
			}

			wantCode, wantMetric, wantGRPC := http.StatusRequestEntityTooLarge, "413", ""
			if tc.proto == "grpc" {
				wantCode, wantMetric, wantGRPC = http.StatusOK, "200", "RESOURCE_EXHAUSTED"
				if g := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status"); g != "8" {
					t.Errorf("grpc-status %q, want 8 (RESOURCE_EXHAUSTED)", g)
				}
			}
			if resp.StatusCode != wantCode || resp.Header.Get("X-Minimesh-Error") != "bad-request" {
				t.Errorf("%s, X-Minimesh-Error %q: want %d bad-request", resp.Status, resp.Header.Get("X-Minimesh-Error"), wantCode)
			}
			if tc.proto != "grpc" {
				var eb sidecarError
				if err := json.Unmarshal(respBody, &eb); err != nil || eb.Error != "bad-request" || eb.Destination != geo ||
					eb.Message != "request body larger than "+strconv.Itoa(limit)+" bytes" || eb.RequestID == "" {
					t.Errorf("answer's body %q (%v): want the sidecar's bad-request naming the limit", respBody, err)
				}
			}

			e := al.wait(t, 1, 5*time.Second)[0]
			if e.Status != wantCode || e.Error != "bad-request" || e.Attempts != 0 || e.GRPCStatus != wantGRPC || e.Path != "/big" && tc.proto != "grpc" {
				t.Errorf("access log %+v: want status %d, error bad-request, no attempt, grpc_status %q", e, wantCode, wantGRPC)
			}
			sc.waitMetric(1, 2*time.Second, "minimesh_requests_total", "destination", geo, "code", wantMetric)
			if wantGRPC != "" {
				sc.waitMetric(1, 2*time.Second, "minimesh_grpc_requests_total", "destination", geo, "grpc_code", wantGRPC)
			}
			if got := sc.metric("minimesh_retries_total", "destination", geo); got != 0 {
				t.Errorf("retries_total = %v, want 0", got)
			}
			if b := sc.breaker(geo); b.State != "closed" || b.Counts.TotalFailures != 0 || b.Counts.Requests != 0 {
				t.Errorf("breaker %s %+v: want closed, nothing counted", b.State, b.Counts)
			}

			var reqSpan *tracepb.Span
			for _, s := range col.Trace(t, traceID, 1) {
				if hex.EncodeToString(s.ParentSpanId) == appSpan {
					reqSpan = s
				}
			}
			if reqSpan == nil {
				t.Fatal("no request span under the app's")
			}
			a := spanAttrs(reqSpan)
			wantSpanCode := strconv.Itoa(wantCode)
			if reqSpan.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || a["http.response.status_code"] != wantSpanCode || a["error.type"] != "bad-request" {
				t.Errorf("request span: status %v, http.response.status_code %q, error.type %q; want ERROR, %s, bad-request",
					reqSpan.Status.GetCode(), a["http.response.status_code"], a["error.type"], wantSpanCode)
			}
			if wantGRPC != "" && a["rpc.grpc.status_code"] != "8" {
				t.Errorf("request span: rpc.grpc.status_code %q, want 8", a["rpc.grpc.status_code"])
			}
		})
	}
}
