package outbound_test

// Edges of a gRPC call's status where the sidecar and a real grpc-go
// client could disagree (docs/grpc.md, "Status mapping" and "The
// sidecar's own answers"): a cut in the middle of a message at the
// client's deadline or the policy's, a grpc-status that is no code, and
// a unary call's count of messages, which the wire does not tell.

import (
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/telemetry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
)

// resetBeforeTold answers a gRPC call with its headers and part of a
// message, then resets the stream (net/http: RST_STREAM INTERNAL_ERROR)
// early before the end of the time the sidecar told it in grpc-timeout,
// as a server enforcing that deadline on a clock a little ahead does.
func resetBeforeTold(t *testing.T, early time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		arrived := time.Now()
		told, ok := strings.CutSuffix(r.Header.Get("Grpc-Timeout"), "m")
		ms, err := strconv.Atoi(told)
		if !ok || err != nil {
			t.Errorf("grpc-timeout %q, want milliseconds", r.Header.Get("Grpc-Timeout"))
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(halfMessage)
		w.(http.Flusher).Flush()
		select {
		case <-time.After(time.Until(arrived.Add(time.Duration(ms)*time.Millisecond - early))):
		case <-r.Context().Done():
			return
		}
		panic(http.ErrAbortHandler)
	}
}

// TestGRPCEdgeCutMidMessage: a call cut in the middle of a message is
// read by a grpc-go client as the sidecar records it. An upstream's
// reset within grpcDeadlineSlack before the client's deadline is the
// deadline's, recorded DEADLINE_EXCEEDED, and the client reads that too:
// the sidecar holds the cut until the client's own timer has ended the
// call (before, the reset went on at once and the client, its deadline
// not yet passed, read INTERNAL). A reset well before the deadline is
// the upstream's: INTERNAL both sides. The policy's timeout in the
// middle of a message can only be a reset (net/http's server resets
// with INTERNAL_ERROR, and a CANCEL would read CANCELLED): INTERNAL both
// sides. Each call is made on a warm channel, so that the client's
// deadline and the one the sidecar takes from its grpc-timeout are
// apart by no more than a loopback hop.
func TestGRPCEdgeCutMidMessage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		policy   string
		deadline time.Duration // the client's
		answer   func(t *testing.T) http.HandlerFunc
		want     codes.Code
		kinds    string // the access log's error: one of, "-" for none
		failure  bool   // counted for the breaker, else neither way
	}{
		{"upstream reset 9ms before the client's deadline", "", 400 * time.Millisecond,
			func(t *testing.T) http.HandlerFunc { return resetBeforeTold(t, 9*time.Millisecond) }, codes.DeadlineExceeded, "- timeout", false},
		{"upstream reset 5ms before the client's deadline", "", 400 * time.Millisecond,
			func(t *testing.T) http.HandlerFunc { return resetBeforeTold(t, 5*time.Millisecond) }, codes.DeadlineExceeded, "- timeout", false},
		{"upstream reset well before the client's deadline", "", 400 * time.Millisecond,
			func(t *testing.T) http.HandlerFunc { return resetBeforeTold(t, 200*time.Millisecond) }, codes.Internal, "reset", true},
		{"policy timeout", "timeout: 200ms\n", 10 * time.Second,
			func(*testing.T) http.HandlerFunc { return answerThen(halfMessage, "hang") }, codes.Internal, "timeout", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startH2CUpstream(t, warmable(tc.answer(t)))
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, tc.policy), resolve(up, healthSvc), withAccessLog(&alog))
			c := grpcClient(t, sc, healthSvc)
			warm(t, c)
			alog.wait(t, 1, 5*time.Second)
			_, err := check(c, tc.deadline)
			read := grpcstatus.Code(err)
			if read != tc.want {
				t.Errorf("grpc-go read %v (%v), want %v", read, err, tc.want)
			}
			e := alog.wait(t, 2, 5*time.Second)[1]
			kind := e.Error
			if kind == "" {
				kind = "-"
			}
			if e.GRPCStatus != telemetry.GRPCCodes[read] || !slices.Contains(strings.Fields(tc.kinds), kind) {
				t.Errorf("access log grpc_status %q, error %q; the client read %v, want error one of %q", e.GRPCStatus, e.Error, read, tc.kinds)
			}
			if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", telemetry.GRPCCodes[read]); got != 1 {
				t.Errorf("minimesh_grpc_requests_total{grpc_code=%q} = %v; the client read it", telemetry.GRPCCodes[read], got)
			}
			// The line is logged once the try has ended: the breaker's
			// counts are final by then (the warm-up's success is one).
			if b := sc.breaker(healthSvc).Counts; (b.TotalFailures == 1) != tc.failure || b.TotalSuccesses != 1 {
				t.Errorf("breaker counts %+v: want a failure %v", b, tc.failure)
			}
		})
	}
}

// warmable answers Watch trailers-only OK at once (warm), any other
// call as h does.
func warmable(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/Watch") {
			h(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "0")
		w.WriteHeader(http.StatusOK)
	}
}

// warm opens the channel's connections, the app's to the sidecar and
// the sidecar's to the upstream, with a Watch that warmable ends at once.
func warm(t *testing.T, c healthpb.HealthClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if err != io.EOF {
		t.Fatalf("warm-up call: %v, want its end", err)
	}
}

// bigMessage is one gRPC message of 1 MiB that a HealthCheckResponse
// decodes: field 2, unknown to it, its tag, its length (a varint) and
// its bytes.
func bigMessage() []byte {
	const n = 1 << 20
	m := make([]byte, 5, 5+n)
	binary.BigEndian.PutUint32(m[1:5], n)
	m = append(m, 0x12)
	m = binary.AppendUvarint(m, uint64(n-1-uvarintLen(n)))
	return m[:5+n]
}

// uvarintLen is the length of the varint that says the rest of a
// message of n bytes after its tag.
func uvarintLen(n int) int {
	for l := 1; ; l++ {
		if len(binary.AppendUvarint(nil, uint64(n-1-l))) == l {
			return l
		}
	}
}

// TestGRPCEdgeOwnDeadlineAfterPolicy: an app whose stream holds the
// sidecar's answer back (its flow-control window full: it reads
// nothing) past the policy's timeout, its own deadline much later, has
// its stream reset by the policy's timeout (RST_STREAM INTERNAL_ERROR,
// once the sidecar's write of the answer has waited stalledWriteGrace
// past it: docs/grpc.md), which grpc-go reads as INTERNAL; the sidecar
// records the same, with error timeout, before the app reads anything.
// Before, the sidecar's answer waited on the app's window until the
// app's own deadline ended the call (recorded DEADLINE_EXCEEDED; before
// that, CANCELLED).
func TestGRPCEdgeOwnDeadlineAfterPolicy(t *testing.T) {
	msg := bigMessage()
	upstreamDone := make(chan struct{})
	up := startH2CUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(msg)
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the policy's timeout
		close(upstreamDone)
	})
	var alog accessLog
	sc := startSidecar(t, policyDoc("health", healthSvc, "timeout: 300ms\n"), resolve(up, healthSvc), withAccessLog(&alog))
	// Fixed windows of 64 KiB (no BDP estimate growing them): the app's
	// stream takes no more of the message until it reads.
	cc, err := grpc.NewClient("passthrough:///"+sc.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(healthSvc), grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-upstreamDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the policy's timeout did not end the upstream's request")
	}
	// Recorded while the app reads nothing; then the app reads.
	e := alog.wait(t, 1, 10*time.Second)[0]
	_, err = w.Recv()
	if read := grpcstatus.Code(err); read != codes.Internal {
		t.Fatalf("grpc-go read %v (%v), want Internal: the sidecar's reset in the middle of a message", read, err)
	}
	if e.GRPCStatus != "INTERNAL" || e.Error != "timeout" {
		t.Errorf("access log grpc_status %q error %q (%+v); the client read INTERNAL, cut by the timeout", e.GRPCStatus, e.Error, e)
	}
	if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "INTERNAL"); got != 1 {
		t.Errorf("minimesh_grpc_requests_total{grpc_code=INTERNAL} = %v, want 1", got)
	}
}

// TestGRPCEdgeStatusBeyondCodes: a grpc-status that is a number but no
// code (17, or -1 which grpc-go keeps as uint32) is read by grpc-go as
// codes.Code(n), not UNKNOWN: the access log names it as grpc-go does
// (Code(17)), the metric counts it UNKNOWN (its labels are the 17
// names), the breaker a 500, and no grpc- condition of retryOn names it:
// retryOn: [grpc-unknown] does not send it again, as grpc-go's own retry
// policy would not. Before, it was recorded UNKNOWN and retried.
func TestGRPCEdgeStatusBeyondCodes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer h2Answer
		want   codes.Code
	}{
		{"trailers 17", grpcAnswer(nil, servingMessage, "grpc-status", "17"), codes.Code(17)},
		{"trailers -1", grpcAnswer(nil, servingMessage, "grpc-status", "-1"), codes.Code(1<<32 - 1)},
		{"trailers-only 17", func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-type", "application/grpc", "grpc-status", "17")
		}, codes.Code(17)},
		{"trailers-only 2147483647", func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-type", "application/grpc", "grpc-status", "2147483647")
		}, codes.Code(1<<31 - 1)},
		{"trailers-only 2147483648, past 32 bits: malformed", func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-type", "application/grpc", "grpc-status", "2147483648")
		}, codes.Unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := scriptedH2Upstream(t, tc.answer)
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, "retries:\n  attempts: 2\n  retryOn: [grpc-unknown]\n"),
				resolve(up, healthSvc), withAccessLog(&alog))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := grpcClient(t, sc, healthSvc).Check(ctx, &healthpb.HealthCheckRequest{})
			read := grpcstatus.Code(err)
			if read != tc.want {
				t.Fatalf("grpc-go read %v (%v), want %v: the case does not test what it says", read, err, tc.want)
			}
			e := alog.wait(t, 1, 5*time.Second)[0]
			if e.GRPCStatus != readName(read) {
				t.Errorf("access log grpc_status %q, the client read %v", e.GRPCStatus, read)
			}
			// Only a trailers-only status can be retried (docs/grpc.md).
			if retried := read == codes.Unknown && strings.Contains(tc.name, "only"); (e.Attempts > 1) != retried {
				t.Errorf("%d attempts, want a retry %v: retryOn [grpc-unknown] and the client read %v", e.Attempts, retried, read)
			}
			if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "UNKNOWN"); got != 1 {
				t.Errorf("minimesh_grpc_requests_total{grpc_code=UNKNOWN} = %v, want 1: a code past the names counts there", got)
			}
			if b := sc.breaker(healthSvc).Counts; b.TotalFailures < 1 || b.TotalSuccesses != 0 {
				t.Errorf("breaker counts %+v: the client read an error (a 500 for failOn)", b)
			}
		})
	}
}

// readName is the name of a code as the access log writes it: the
// metric's for the 17, grpc-go's String for any other.
func readName(c codes.Code) string {
	if int(c) < len(telemetry.GRPCCodes) {
		return telemetry.GRPCCodes[c]
	}
	return c.String()
}

// TestGRPCEdgeCardinalityUnseen: whether a call is unary is not on the
// wire (its method's descriptor says it, which the sidecar does not
// have), so one answer is read two ways: OK with no message, or with two,
// is grpc-go's INTERNAL for a unary call ("cardinality violation") and
// OK for a server stream. The sidecar records OK for both, as
// docs/grpc.md says; this test holds that page to the code.
func TestGRPCEdgeCardinalityUnseen(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs int
	}{
		{"no message", 0},
		{"two messages", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := scriptedH2Upstream(t, func(headers func(bool, ...string), data func(bool, []byte)) {
				headers(false, ":status", "200", "content-type", "application/grpc")
				for range tc.msgs {
					data(false, servingMessage)
				}
				headers(true, "grpc-status", "0")
			})
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, ""), resolve(up, healthSvc), withAccessLog(&alog))
			c := grpcClient(t, sc, healthSvc)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); grpcstatus.Code(err) != codes.Internal || !strings.Contains(err.Error(), "cardinality") {
				t.Errorf("unary: grpc-go read %v, want INTERNAL, a cardinality violation", err)
			}
			w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
			n := 0
			for err == nil {
				if _, err = w.Recv(); err == nil {
					n++
				}
			}
			if err != io.EOF || n != tc.msgs {
				t.Errorf("server stream: %d messages, then %v; want %d, then its end (OK)", n, err, tc.msgs)
			}
			for i, e := range alog.wait(t, 2, 5*time.Second) {
				if e.GRPCStatus != "OK" {
					t.Errorf("access log line %d: grpc_status %q, want OK (what the wire says)", i+1, e.GRPCStatus)
				}
			}
		})
	}
}
