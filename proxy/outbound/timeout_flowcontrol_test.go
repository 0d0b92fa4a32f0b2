package outbound_test

// The policy's timeout, the whole request's time (docs/policy.md), ends a
// response whose way to the app is blocked by the app itself: an app that
// opens a stream and stops reading fills its HTTP/2 flow-control window
// (or, over HTTP/1.1, its TCP receive buffer), and the sidecar's write of
// the answer waits on it. Before, that write waited until the app read or
// went away: the sidecar's goroutines and buffers, and the breaker's and
// the metrics' outcome, stayed open past the timeout, and the exchange
// was recorded as the app's leaving (499, CANCELLED) once it ended.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// flowSvc is the destination of these tests.
const flowSvc = "flow-service:8000"

// endless answers with a body that never ends, in 16 KiB writes (gRPC
// messages of that size for a gRPC call), flushed, until the request's
// context ends, which it reports on ended.
func endless(ended chan<- struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		defer close(ended)
		_, _ = io.Copy(io.Discard, r.Body)
		chunk := bytes.Repeat([]byte("x"), 16<<10)
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			w.Header().Set("Content-Type", "application/grpc")
			msg := make([]byte, 5, 5+len(chunk))
			binary.BigEndian.PutUint32(msg[1:], uint32(len(chunk)))
			chunk = append(msg, chunk...)
		}
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				break
			}
			if rc.Flush() != nil {
				break
			}
		}
		<-r.Context().Done()
	}
}

// h2Stalled opens one HTTP/2 stream to the sidecar with a raw framer and
// never gives flow-control credit back (no WINDOW_UPDATE: the initial
// 65,535 bytes of the stream and the connection are all the sidecar may
// send), as a client library does for a body its app does not read. It
// returns a channel that gets how the stream ended: "RST_STREAM <code>",
// "END_STREAM" (with grpc-status when trailers ended it), or the read
// error of a connection that ended first.
func h2Stalled(t *testing.T, addr, authority string, grpc bool) <-chan string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	fields := []string{":method", "GET", ":scheme", "http", ":authority", authority, ":path", "/big"}
	if grpc {
		fields = []string{":method", "POST", ":scheme", "http", ":authority", authority, ":path", "/flow.Stream/Watch",
			"content-type", "application/grpc", "te", "trailers"}
	}
	for i := 0; i < len(fields); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
		t.Fatal(err)
	}
	end := make(chan string, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				end <- "read: " + err.Error()
				return
			}
			if ackControl(fr, f) {
				continue
			}
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				end <- "RST_STREAM " + f.ErrCode.String()
				return
			case *http2.MetaHeadersFrame:
				if f.StreamEnded() {
					end <- "END_STREAM grpc-status " + headerValue(f, "grpc-status")
					return
				}
			case *http2.DataFrame:
				if f.StreamEnded() {
					end <- "END_STREAM"
					return
				}
			case *http2.GoAwayFrame:
				end <- "GOAWAY " + f.ErrCode.String()
				return
			}
		}
	}()
	return end
}

// headerValue is a field of a HEADERS frame.
func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// http1Stalled sends a GET through the sidecar (absolute form, as an app
// with HTTP_PROXY) on a connection with a small receive buffer, and
// reads nothing: the sidecar's writes block once the socket buffers are
// full.
func http1Stalled(t *testing.T, addr, authority string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
	if _, err := fmt.Fprintf(c, "GET http://%s/big HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority); err != nil {
		t.Fatal(err)
	}
}

// TestTimeoutEndsStalledReader: an app that opens a stream and stops
// reading it (HTTP/2 GET, a gRPC server stream, an HTTP/1.1 GET) has its
// stream ended by the policy's timeout: the upstream's request is
// cancelled, the app's stream reset (its HTTP/1.1 connection closed),
// and the exchange recorded as the timeout it was, as for any response
// that fails after its headers (docs/operations.md): the access log keeps
// the 200 the app got with error timeout, minimesh_requests_total counts
// a 504, the breaker a failure; a gRPC call is INTERNAL, as its client
// reads a reset in the middle of a message, and keeps its 200 in
// minimesh_requests_total. All of it before the app
// reads a byte: before, none of it happened until the app read or went
// away, and then it was recorded as the app's leaving (499, CANCELLED,
// no breaker outcome).
func TestTimeoutEndsStalledReader(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind string // "h2", "grpc", "http1"
		code string // the access log's grpc_status
	}{
		{"HTTP/2 GET", "h2", ""},
		{"gRPC server stream", "grpc", "INTERNAL"},
		{"HTTP/1.1 GET", "http1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ended := make(chan struct{})
			var up string
			if tc.kind == "http1" {
				up = newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) { endless(ended)(w, r) }).Host()
			} else {
				up = startH2CUpstream(t, endless(ended))
			}
			var alog accessLog
			sc := startSidecar(t, policyDoc("flow", flowSvc, "timeout: 300ms\n"), resolve(up, flowSvc), withAccessLog(&alog))
			var end <-chan string
			if tc.kind == "http1" {
				http1Stalled(t, sc.Addr, flowSvc)
			} else {
				end = h2Stalled(t, sc.Addr, flowSvc, tc.kind == "grpc")
			}
			start := time.Now()
			select {
			case <-ended:
			case <-time.After(15 * time.Second):
				t.Fatal("the upstream's request was not cancelled within 15 s of a 300 ms timeout")
			}
			if end != nil {
				select {
				case how := <-end:
					if how != "RST_STREAM INTERNAL_ERROR" {
						t.Errorf("the app's stream ended %q, want RST_STREAM INTERNAL_ERROR", how)
					}
				case <-time.After(15 * time.Second):
					t.Fatal("the app's stream was not reset within 15 s of a 300 ms timeout: the sidecar still waits on its flow-control window")
				}
			}
			// Recorded while the app still reads nothing.
			e := alog.wait(t, 1, 15*time.Second)[0]
			t.Logf("recorded after %v: %+v", time.Since(start), e)
			if e.Status != http.StatusOK || e.Error != "timeout" || e.GRPCStatus != tc.code {
				t.Errorf("access log status %d error %q grpc_status %q, want 200 timeout %q", e.Status, e.Error, e.GRPCStatus, tc.code)
			}
			wantMetric := "504"
			if tc.kind == "grpc" {
				wantMetric = "200" // its failure is in minimesh_grpc_requests_total, counted once (docs/metrics.md)
			}
			sc.waitMetric(1, 5*time.Second, "minimesh_requests_total", "destination", flowSvc, "code", wantMetric)
			if tc.kind == "grpc" {
				sc.waitMetric(1, 5*time.Second, "minimesh_grpc_requests_total", "destination", flowSvc, "grpc_code", "INTERNAL")
			}
			if b := sc.breaker(flowSvc).Counts; b.TotalFailures != 1 || b.TotalSuccesses != 0 {
				t.Errorf("breaker counts %+v, want the timeout's one failure", b)
			}
		})
	}
}
