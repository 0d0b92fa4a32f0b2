package outbound_test

// The status the sidecar records for a gRPC call (the metric's
// grpc_code, the access log's grpc_status, the breaker's outcome) is
// the one its client reads (docs/grpc.md, "Status mapping"), also when
// the upstream's answer is odd: several grpc-status fields, a status in
// headers that are not trailers-only, a content-type that is not gRPC, a
// message cut short before the trailers. Each case is answered by a raw
// HTTP/2 upstream, so that its frames are exactly as written, and read
// by the real grpc-go client.

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
)

// h2Answer writes one stream's answer: headers(end, name, value, ...)
// a HEADERS frame, data a DATA frame.
type h2Answer func(headers func(end bool, fields ...string), data func(end bool, p []byte))

// scriptedH2Upstream is an h2c upstream, written with the HTTP/2 framer,
// that answers every stream, once its request has arrived whole, as
// answer writes.
func scriptedH2Upstream(t *testing.T, answer h2Answer) string {
	t.Helper()
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		var hbuf bytes.Buffer
		enc := hpack.NewEncoder(&hbuf)
		respond := func(fr *http2.Framer, id uint32) {
			answer(func(end bool, fields ...string) {
				hbuf.Reset()
				for i := 0; i+1 < len(fields); i += 2 {
					_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
				}
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndStream: end, EndHeaders: true})
			}, func(end bool, p []byte) { _ = fr.WriteData(id, end, p) })
		}
		outbound.ServeH2c(c, func(fr *http2.Framer, f http2.Frame) error {
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamEnded() {
					respond(fr, f.StreamID)
				}
			case *http2.DataFrame:
				if n := len(f.Data()); n > 0 {
					_ = fr.WriteWindowUpdate(0, uint32(n))
					_ = fr.WriteWindowUpdate(f.StreamID, uint32(n))
				}
				if f.StreamEnded() {
					respond(fr, f.StreamID)
				}
			}
			return nil
		})
	})
	return addr
}

// servingMessage is one whole gRPC message: a HealthCheckResponse
// saying SERVING.
var servingMessage = []byte{0, 0, 0, 0, 2, 8, 1}

// grpcAnswer is an answer with gRPC response headers (more fields
// after them), one message, then trailers.
func grpcAnswer(head []string, msg []byte, trailers ...string) h2Answer {
	return func(headers func(bool, ...string), data func(bool, []byte)) {
		headers(false, append([]string{":status", "200", "content-type", "application/grpc"}, head...)...)
		data(false, msg)
		headers(true, trailers...)
	}
}

// TestGRPCVerdictAsRead: for each odd answer, the code the grpc-go
// client reads is the one wanted (grpc-go's rules, docs/grpc.md), and
// the metric, the access log and the breaker record that code. Before,
// the sidecar recorded OK where the client read UNAVAILABLE (the first
// of two grpc-status fields; a status in non-final headers), UNKNOWN (a
// content-type that is not gRPC) or INTERNAL (a message cut short).
func TestGRPCVerdictAsRead(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer h2Answer
		want   codes.Code
	}{
		{"plain OK", grpcAnswer(nil, servingMessage, "grpc-status", "0"), codes.OK},
		{"plain UNAVAILABLE", grpcAnswer(nil, servingMessage, "grpc-status", "14"), codes.Unavailable},
		{"two grpc-status, 0 then 14: the last", grpcAnswer(nil, servingMessage, "grpc-status", "0", "grpc-status", "14"), codes.Unavailable},
		{"two grpc-status, 14 then 0: the last", grpcAnswer(nil, servingMessage, "grpc-status", "14", "grpc-status", "0"), codes.OK},
		{"a malformed grpc-status before a good one", grpcAnswer(nil, servingMessage, "grpc-status", "x", "grpc-status", "0"), codes.Unknown},
		{"a malformed grpc-status after a good one", grpcAnswer(nil, servingMessage, "grpc-status", "0", "grpc-status", "1x"), codes.Unknown},
		{"trailers without grpc-status", grpcAnswer(nil, servingMessage, "x-other", "1"), codes.Unknown},
		{"status 0 in non-final headers, 14 in trailers", grpcAnswer([]string{"grpc-status", "0"}, servingMessage, "grpc-status", "14"), codes.Unavailable},
		{"status 0 in headers with content-length 0, 14 in trailers", func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(false, ":status", "200", "content-type", "application/grpc", "content-length", "0", "grpc-status", "0")
			headers(true, "grpc-status", "14")
		}, codes.Unavailable},
		{"trailers-only without grpc-status", func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-type", "application/grpc")
		}, codes.Unknown},
		{"status 14 in non-final headers, 0 in trailers", grpcAnswer([]string{"grpc-status", "14"}, servingMessage, "grpc-status", "0"), codes.OK},
		{"content-type text/html, trailers 0", func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-type", "text/html")
			data(false, []byte("hello"))
			headers(true, "grpc-status", "0")
		}, codes.Unknown},
		{"content-type text/html, trailers-only 0", func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-type", "text/html", "grpc-status", "0")
		}, codes.Unknown},
		{"content-type Application/GRPC (grpc-go compares exactly)", func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-type", "Application/GRPC")
			data(false, servingMessage)
			headers(true, "grpc-status", "0")
		}, codes.Unknown},
		{"gRPC content-type on a 503, trailers 0: the status is grpc-status", func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "503", "content-type", "application/grpc")
			data(false, servingMessage)
			headers(true, "grpc-status", "0")
		}, codes.OK},
		{"trailers-only 14", func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-type", "application/grpc", "grpc-status", "14")
		}, codes.Unavailable},
		{"trailers-only, two grpc-status 14 then 5", func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-type", "application/grpc", "grpc-status", "14", "grpc-status", "5")
		}, codes.NotFound},
		{"a 10-byte message with 2 bytes sent, trailers 0", grpcAnswer(nil, []byte{0, 0, 0, 0, 10, 8, 1}, "grpc-status", "0"), codes.Internal},
		{"3 bytes of a message's prefix, trailers 0", grpcAnswer(nil, []byte{0, 0, 0}, "grpc-status", "0"), codes.Internal},
		{"a message cut short, trailers 14", grpcAnswer(nil, []byte{0, 0, 0, 0, 10, 8, 1}, "grpc-status", "14"), codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := scriptedH2Upstream(t, tc.answer)
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, ""), resolve(up, healthSvc), withAccessLog(&alog))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := grpcClient(t, sc, healthSvc).Check(ctx, &healthpb.HealthCheckRequest{})
			read := grpcstatus.Code(err)
			if read != tc.want {
				t.Fatalf("grpc-go read %v (%v), want %v: the case does not test what it says", read, err, tc.want)
			}
			e := alog.wait(t, 1, 2*time.Second)[0]
			if e.GRPCStatus != telemetry.GRPCCodes[read] {
				t.Errorf("access log grpc_status %q, the client read %v", e.GRPCStatus, read)
			}
			if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", telemetry.GRPCCodes[read]); got != 1 {
				t.Errorf("minimesh_grpc_requests_total{grpc_code=%q} = %v, want 1; the client read %v", telemetry.GRPCCodes[read], got, read)
			}
			var b breakerStatus
			proxytest.Poll(2*time.Second, 5*time.Millisecond, func() bool {
				b = sc.breaker(healthSvc)
				return b.Counts.TotalSuccesses+b.Counts.TotalFailures > 0
			})
			failed := read != codes.OK && read != codes.NotFound // the default failOn: 5xx, which NOT_FOUND (404) is not
			wantFailures, wantSuccesses := uint32(0), uint32(1)
			if failed {
				wantFailures, wantSuccesses = 1, 0
			}
			if b.Counts.TotalFailures != wantFailures || b.Counts.TotalSuccesses != wantSuccesses {
				t.Errorf("breaker counts %+v: the client read %v", b.Counts, read)
			}
		})
	}
}

// TestGRPCVerdictCutAtDeadline: a grpc-go call whose deadline runs out
// while its answer is open, between two messages or in the middle of
// one, is read DEADLINE_EXCEEDED by its client (its own timer ends it),
// and recorded so, counting neither way for the breaker (docs/grpc.md,
// "Deadlines"); a reset in the middle of a message is recorded INTERNAL
// only when the client's deadline is not the cause.
func TestGRPCVerdictCutAtDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"after a whole message", servingMessage},
		{"in the middle of a message", []byte{0, 0, 0, 0, 10, 8, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := scriptedH2Upstream(t, func(headers func(bool, ...string), data func(bool, []byte)) {
				headers(false, ":status", "200", "content-type", "application/grpc")
				data(false, tc.msg) // and nothing more: the stream stays open
			})
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, ""), resolve(up, healthSvc), withAccessLog(&alog))
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := grpcClient(t, sc, healthSvc).Check(ctx, &healthpb.HealthCheckRequest{})
			if read := grpcstatus.Code(err); read != codes.DeadlineExceeded {
				t.Fatalf("grpc-go read %v (%v), want DeadlineExceeded", read, err)
			}
			// The line is logged once the try has ended: the breaker's
			// counts are final by then.
			e := alog.wait(t, 1, 2*time.Second)[0]
			if e.GRPCStatus != "DEADLINE_EXCEEDED" {
				t.Errorf("access log grpc_status %q, error %q; the client read DEADLINE_EXCEEDED", e.GRPCStatus, e.Error)
			}
			if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "DEADLINE_EXCEEDED"); got != 1 {
				t.Errorf("minimesh_grpc_requests_total{grpc_code=DEADLINE_EXCEEDED} = %v, want 1", got)
			}
			if b := sc.breaker(healthSvc); b.Counts.TotalFailures+b.Counts.TotalSuccesses != 0 {
				t.Errorf("breaker counts %+v: the client's own deadline counts neither way", b.Counts)
			}
		})
	}
}
