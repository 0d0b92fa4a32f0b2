package outbound

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/wellknown"
)

func TestIsGRPC(t *testing.T) {
	for _, tc := range []struct {
		ct   string
		want bool
	}{
		{"application/grpc", true},
		{"application/grpc+proto", true},
		{"application/grpc+json", true},
		{"application/grpc;charset=utf-8", true},
		{"Application/GRPC", true},
		{"application/grpc-web", false},
		{"application/grpc-web+proto", false},
		{"application/json", false},
		{"application/grp", false},
		{"", false},
	} {
		h := http.Header{}
		if tc.ct != "" {
			h.Set("Content-Type", tc.ct)
		}
		if got := isGRPC(h); got != tc.want {
			t.Errorf("isGRPC(%q) = %v, want %v", tc.ct, got, tc.want)
		}
	}
}

func TestGRPCTimeoutHeader(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"1S", time.Second, true},
		{"100m", 100 * time.Millisecond, true},
		{"5u", 5 * time.Microsecond, true},
		{"7n", 7, true},
		{"2M", 2 * time.Minute, true},
		{"1H", time.Hour, true},
		{"99999999H", maxGRPCTimeout, true},
		{"0m", 0, true},
		{"", 0, false},
		{"m", 0, false},
		{"10", 0, false},
		{"1s", 0, false},
		{"-1S", 0, false},
		{"123456789m", 0, false}, // 9 digits
		{"1.5S", 0, false},
	} {
		got, ok := parseGRPCTimeout(tc.v)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", tc.v, got, ok, tc.want, tc.ok)
		}
	}
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{2 * time.Second, "2000m"},
		{1500 * time.Microsecond, "2m"},
		{time.Nanosecond, "1m"},
		{24 * time.Hour, "86400000m"},
		{48 * time.Hour, "172800S"},
		{30 * 24 * time.Hour, "2592000S"},
	} {
		if got := formatGRPCTimeout(tc.d); got != tc.want {
			t.Errorf("formatGRPCTimeout(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

// TestGRPCTimeoutCap: the client's grpc-timeout is kept when shorter than
// the policy's timeout, else the policy's is the call's and the
// upstream's.
func TestGRPCTimeoutCap(t *testing.T) {
	for _, tc := range []struct {
		name     string
		header   string
		policy   time.Duration
		want     time.Duration
		client   bool
		upstream string
	}{
		{"client shorter", "100m", 2 * time.Second, 100 * time.Millisecond, true, "100m"},
		{"policy shorter", "10S", 2 * time.Second, 2 * time.Second, false, "2000m"},
		{"no header", "", 2 * time.Second, 2 * time.Second, false, "2000m"},
		{"no policy", "3S", 0, 3 * time.Second, true, "3S"},
		{"neither", "", 0, 0, false, ""},
		{"bad header", "soon", time.Second, time.Second, false, "1000m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.header != "" {
				h.Set("Grpc-Timeout", tc.header)
			}
			got, own, client := grpcTimeout(h, tc.policy)
			if got != tc.want || client != tc.client {
				t.Errorf("timeout %v (the client's: %v), want %v (%v)", got, client, tc.want, tc.client)
			}
			if want, _ := parseGRPCTimeout(tc.header); own != want {
				t.Errorf("the client's own timeout %v, want %v", own, want)
			}
			if got := h.Get("Grpc-Timeout"); got != tc.upstream {
				t.Errorf("upstream's grpc-timeout %q, want %q", got, tc.upstream)
			}
		})
	}
}

// TestGRPCMapping: the codes that the default failOn (5xx, …) counts are
// those whose HTTP equivalent is a 5xx, as Envoy maps them.
func TestGRPCMapping(t *testing.T) {
	for _, tc := range []struct {
		v    string
		code int
		http int
	}{
		{"0", grpcOK, 200},
		{"1", grpcCanceled, 499},
		{"2", grpcUnknown, 500},
		{"4", grpcDeadlineExceeded, 504},
		{"5", grpcNotFound, 404},
		{"8", grpcResourceExhausted, 429},
		{"12", grpcUnimplemented, 501},
		{"13", grpcInternal, 500},
		{"14", grpcUnavailable, 503},
		{"16", grpcUnauthenticated, 401},
		{"17", 17, 500}, // no code: kept, as grpc-go reads it (codes.Code(17))
		{"x", grpcUnknown, 500},
	} {
		code := grpcStatusOf(tc.v)
		if code != tc.code || grpcEquivalent(code) != tc.http {
			t.Errorf("grpc-status %q: code %d (HTTP %d), want %d (HTTP %d)", tc.v, code, grpcEquivalent(code), tc.code, tc.http)
		}
	}
	if grpcStatusOf("") != -1 {
		t.Error("no grpc-status must be -1")
	}
	for _, tc := range []struct {
		kind string
		code int
		want int
	}{
		{wellknown.ErrorCircuitOpen, 503, grpcUnavailable},
		{wellknown.ErrorConnectFailure, 502, grpcUnavailable},
		{wellknown.ErrorReset, 502, grpcUnavailable},
		{wellknown.ErrorTimeout, 504, grpcDeadlineExceeded},
		{wellknown.ErrorForbidden, 403, grpcPermissionDenied},
		{wellknown.ErrorBadRequest, 413, grpcResourceExhausted},
		{wellknown.ErrorBadRequest, 400, grpcInternal},
		{wellknown.ErrorLoop, 508, grpcInternal},
	} {
		if got := grpcAnswer(tc.kind, tc.code); got != tc.want {
			t.Errorf("grpcAnswer(%s, %d) = %d, want %d", tc.kind, tc.code, got, tc.want)
		}
	}
}

func TestGRPCMethod(t *testing.T) {
	for _, tc := range []struct {
		path, service, method string
		ok                    bool
	}{
		{"/grpc.health.v1.Health/Check", "grpc.health.v1.Health", "Check", true},
		{"/a/b", "a", "b", true},
		{"/", "", "", false},
		{"/Health/", "", "", false},
		{"//Check", "", "", false},
		{"Health/Check", "", "", false},
	} {
		s, m, ok := grpcMethod(tc.path)
		if s != tc.service || m != tc.method || ok != tc.ok {
			t.Errorf("grpcMethod(%q) = %q, %q, %v", tc.path, s, m, ok)
		}
	}
}

func TestGRPCEncodeMessage(t *testing.T) {
	for in, want := range map[string]string{
		"plain text":  "plain text",
		"100% down":   "100%25 down",
		"line\nbreak": "line%0Abreak",
		"caf\u00e9":   "caf%C3%A9",
		"":            "",
	} {
		if got := grpcEncodeMessage(in); got != want {
			t.Errorf("grpcEncodeMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestWriteGRPCError: the sidecar's answer to a gRPC call is a
// trailers-only response.
func TestWriteGRPCError(t *testing.T) {
	w := &headerRecorder{h: http.Header{}}
	writeGRPCError(w, grpcUnavailable, wellknown.ErrorCircuitOpen, errorBody{Message: "circuit breaker for geo:80 is open", RetryAfterSeconds: 30})
	if w.code != 200 || w.h.Get("Grpc-Status") != "14" || w.h.Get("Content-Type") != "application/grpc" ||
		w.h.Get(wellknown.HeaderError) != "circuit-open" || w.h.Get("Grpc-Message") != "minimesh: circuit breaker for geo:80 is open" ||
		w.h.Get("Retry-After") != "30" || w.n != 0 {
		t.Errorf("answer %d %v with %d body bytes", w.code, w.h, w.n)
	}
}

type headerRecorder struct {
	h    http.Header
	code int
	n    int
}

func (r *headerRecorder) Header() http.Header         { return r.h }
func (r *headerRecorder) WriteHeader(c int)           { r.code = c }
func (r *headerRecorder) Write(p []byte) (int, error) { r.n += len(p); return len(p), nil }

// TestRecordingOneMessage: a gRPC request body is sent again only when
// it was one whole message.
func TestRecordingOneMessage(t *testing.T) {
	msg := func(payload string) string {
		n := len(payload)
		return string([]byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}) + payload
	}
	for _, tc := range []struct {
		name string
		body string
		read int  // bytes the transport reads (-1: all and the end)
		want bool // sent again
	}{
		{"one message", msg("hello"), -1, true},
		{"empty message", msg(""), -1, true},
		{"two messages", msg("a") + msg("b"), -1, false},
		{"cut short", msg("hello")[:7], -1, false},
		{"one message, end read by the probe", msg("hello"), 10, true},
		{"over the limit", msg(strings.Repeat("x", MaxReplayBody)), -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recording{body: strings.NewReader(tc.body)}
			if tc.read < 0 {
				_, _ = io.Copy(io.Discard, r)
			} else {
				_, _ = io.ReadFull(r, make([]byte, tc.read))
			}
			_ = r.Close()
			b, ok := r.oneMessage()
			if ok != tc.want || ok && string(b) != tc.body {
				t.Errorf("oneMessage() = %q, %v; want %v", b, ok, tc.want)
			}
		})
	}
	t.Run("a stream that sends nothing more", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		r := &recording{body: pr}
		go func() { _, _ = pw.Write([]byte(msg("a"))) }()
		_, _ = io.ReadFull(r, make([]byte, 6))
		_ = r.Close()
		start := time.Now()
		if _, ok := r.oneMessage(); ok {
			t.Error("a stream still open was taken for a whole call")
		}
		if d := time.Since(start); d < endWait || d > 10*endWait {
			t.Errorf("waited %v, want about %v", d, endWait)
		}
	})
}
