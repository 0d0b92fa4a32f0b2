package outbound

// The time each try of a retried gRPC call tells its upstream
// (docs/grpc.md, "Deadlines"), on a fake clock: the handler runs in a
// synctest bubble, its HTTP/2 transport replaced by a scripted upstream
// that takes the time it is told to.

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/proxy/telemetry"
)

// scriptedH2 answers each try trailers-only with grpc-status 14
// (UNAVAILABLE) after the try's delay, OK once the delays run out, and
// records the grpc-timeout each try carried.
type scriptedH2 struct {
	delays []time.Duration

	mu       sync.Mutex
	timeouts []string
}

func (s *scriptedH2) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	s.mu.Lock()
	n := len(s.timeouts)
	s.timeouts = append(s.timeouts, req.Header.Get("Grpc-Timeout"))
	s.mu.Unlock()
	status := "0"
	if n < len(s.delays) {
		status = "14"
		select {
		case <-time.After(s.delays[n]):
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	h := http.Header{"Content-Type": {"application/grpc"}, "Grpc-Status": {status}}
	return &http.Response{StatusCode: http.StatusOK, Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, Body: http.NoBody, Request: req}, nil
}

func (s *scriptedH2) sent() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.timeouts)
}

// TestGRPCRetryTimeLeft: each try of a retried call carries, in
// grpc-timeout, the time the call has left (the smaller of the client's
// remaining deadline and the policy's remaining timeout, never
// perTryTimeout, which bounds a try only up to its response's headers),
// not the client's original value; and no retry goes once less than the
// deadline slack (10 ms) is left. The backoff is 1 ns, the upstream's
// failures take whole milliseconds: every value is exact.
func TestGRPCRetryTimeLeft(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spec   string // the policy's, after service
		header string // the client's grpc-timeout ("": none)
		delays []time.Duration
		want   []string // grpc-timeout of each try
		status string   // the call's grpc-status
	}{
		{"client deadline", "", "1S", []time.Duration{300 * time.Millisecond}, []string{"1000m", "700m"}, "0"},
		{"client deadline, two retries", "", "1000m", []time.Duration{300 * time.Millisecond, 450 * time.Millisecond},
			[]string{"1000m", "700m", "250m"}, "0"},
		{"policy timeout", "timeout: 800ms\n", "5S", []time.Duration{300 * time.Millisecond}, []string{"800m", "500m"}, "0"},
		{"policy timeout, no client deadline", "timeout: 800ms\n", "", []time.Duration{300 * time.Millisecond}, []string{"800m", "500m"}, "0"},
		{"perTryTimeout not told", "perTryTimeout: 200ms\n", "1S", []time.Duration{100 * time.Millisecond}, []string{"1000m", "900m"}, "0"},
		{"perTryTimeout larger than what is left", "perTryTimeout: 600ms\n", "1S", []time.Duration{500 * time.Millisecond},
			[]string{"1000m", "500m"}, "0"},
		{"perTryTimeout under the policy's timeout", "timeout: 800ms\nperTryTimeout: 200ms\n", "", []time.Duration{100 * time.Millisecond},
			[]string{"800m", "700m"}, "0"},
		{"perTryTimeout alone: no limit told", "perTryTimeout: 200ms\n", "", []time.Duration{100 * time.Millisecond}, []string{"", ""}, "0"},
		// Less than the slack left: the first try's answer is the call's.
		{"9 ms left", "", "200m", []time.Duration{191 * time.Millisecond}, []string{"200m"}, "14"},
		{"11 ms left", "", "200m", []time.Duration{189 * time.Millisecond}, []string{"200m", "11m"}, "0"},
		{"policy timeout, 9 ms left", "timeout: 200ms\n", "", []time.Duration{191 * time.Millisecond}, []string{"200m"}, "14"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const svc = "orders-service:50051"
				spec := "retries:\n  attempts: 3\n  retryOn: [grpc-unavailable]\n  backoff: {base: 1ns, max: 1ns}\n"
				for _, l := range bytes.Split([]byte(tc.spec), []byte("\n")) {
					if len(l) > 0 {
						if bytes.HasPrefix(l, []byte("perTryTimeout")) {
							spec += "  " + string(l) + "\n"
						} else {
							spec = string(l) + "\n" + spec
						}
					}
				}
				doc := "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata:\n  name: p\nspec:\n  service: " + svc + "\n"
				for _, l := range bytes.Split([]byte(spec), []byte("\n")) {
					if len(l) > 0 {
						doc += "  " + string(l) + "\n"
					}
				}
				h := New(Config{Metrics: telemetry.New(0)}, parseTable(t, doc))
				up := &scriptedH2{delays: tc.delays}
				h.rp.Transport.(*forwarder).h2 = up

				// One unary message: a 5-byte prefix and 3 bytes.
				req := httptest.NewRequest(http.MethodPost, "http://"+svc+"/orders.Orders/Get", bytes.NewReader([]byte{0, 0, 0, 0, 3, 1, 2, 3}))
				req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/2.0", 2, 0
				req.Header.Set("Content-Type", "application/grpc")
				req.Header.Set("Te", "trailers")
				if tc.header != "" {
					req.Header.Set("Grpc-Timeout", tc.header)
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if got := up.sent(); !slices.Equal(got, tc.want) {
					t.Errorf("tries carried grpc-timeout %q, want %q", got, tc.want)
				}
				if got := w.Result().Header.Get("Grpc-Status"); got != tc.status {
					t.Errorf("grpc-status %q, want %q", got, tc.status)
				}
			})
		})
	}
}

// TestFormatGRPCTimeoutLeft: a time left is spelt as gRPC requires, at
// most 8 digits and a unit, and never rounded down to less than the
// time there is (nor to 0, which is no deadline to some servers).
func TestFormatGRPCTimeoutLeft(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{700 * time.Millisecond, "700m"},
		{699*time.Millisecond + time.Nanosecond, "700m"},
		{11 * time.Millisecond, "11m"},
		{time.Nanosecond, "1m"},
		{99999999 * time.Millisecond, "99999999m"},
		{99999999*time.Millisecond + 1, "100000S"},
		{maxGRPCTimeout, "8640000S"},
	} {
		got := formatGRPCTimeout(tc.d)
		if got != tc.want || len(got) > 9 {
			t.Errorf("formatGRPCTimeout(%v) = %q, want %q", tc.d, got, tc.want)
		}
		if back, ok := parseGRPCTimeout(got); !ok || back < tc.d {
			t.Errorf("formatGRPCTimeout(%v) = %q reads back as %v", tc.d, got, back)
		}
	}
}
