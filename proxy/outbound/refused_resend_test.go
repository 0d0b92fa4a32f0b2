package outbound_test

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/wellknown"
	"golang.org/x/net/http2"
)

// stoppingPod is an endpoint of geo-service that answers /warm, and stops
// on any other path as a pod does whose stop races a request written on a
// kept connection: it calls stopping, closes its listener (a dial after
// is refused) and then the connection, the request read and unanswered.
// ran counts the requests it read on other paths than /warm.
func stoppingPod(t *testing.T, stopping func()) (addr string, ran *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ran = new(atomic.Int32)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/warm" {
				_, _ = io.WriteString(w, "warm")
				return
			}
			ran.Add(1)
			stopping()
			ln.Close()
			panic(http.ErrAbortHandler)
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), ran
}

// TestRefusedResendGoesElsewhere: a GET written on a kept connection
// that its pod closed unanswered as it stopped, and whose resend on a new
// connection that pod refused, goes once to another endpoint under the
// default policy (no retries), as a refused first dial does
// (docs/policy.md, "Retries"): the refused resend says the pod is gone,
// and a GET is safe to repeat. Before 2026-12-07 it was the app's 502
// reset: 0 to 5 calls per pod stopped in TestRefusedEndpointRollingStop.
// A request that is not safe to repeat (a POST, which both transports
// resend on a new connection for its X-Idempotency-Key, a key the
// forwarder's retries do not take) stays the 502 reset, sent to no other
// pod: the stopping pod may have run it. Either way the stopped pod's
// endpoint hears a failure, whatever failOn says (a refused dial), and
// the breaker counts the refused try as failOn says only when it is the
// app's answer. The other pod is added as the first pod
// stops, so that the first try goes to the stopping one.
func TestRefusedResendGoesElsewhere(t *testing.T) {
	for _, tr := range balanceTransports {
		for _, tc := range []struct {
			name, method, key, failOn string
			moved                     bool
		}{
			{"GET", http.MethodGet, "", "", true},
			{"POST with X-Idempotency-Key", http.MethodPost, "X-Idempotency-Key", "", false},
			{"GET, failOn without reset", http.MethodGet, "", "[5xx]", true},
			{"POST, failOn without reset", http.MethodPost, "X-Idempotency-Key", "[5xx]", false},
		} {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				other := echoPods(t, 1)[0]
				var onStop atomic.Pointer[func()]
				stopping, ran := stoppingPod(t, func() { (*onStop.Load())() })
				var alog accessLog
				pol := ""
				if tc.failOn != "" {
					pol = policyDoc("geo", "geo-service", "circuitBreaker: {failOn: "+tc.failOn+"}")
				}
				sc := startSidecar(t, pol, nil, withNamespace("shop"), withAccessLog(&alog), tr.opt)
				setGeo(sc, stopping)
				both := func() { setGeo(sc, stopping, other.Host()) }
				onStop.Store(&both)
				c := sc.Client()
				if resp, body := get(t, c, "http://"+geo+"/warm"); resp.StatusCode != http.StatusOK {
					t.Fatalf("warm: %d %s", resp.StatusCode, body) // leaves a kept connection to the stopping pod
				}
				req, err := http.NewRequest(tc.method, "http://"+geo+"/stop", nil)
				if err != nil {
					t.Fatal(err)
				}
				if tc.key != "" {
					req.Header.Set(tc.key, "k1")
				}
				resp, body := fetch(t, c, req)
				if n := ran.Load(); n != 1 {
					t.Errorf("the stopping pod read the request %d times, want once", n)
				}
				attempts := 1
				if tc.moved {
					attempts = 2
					if resp.StatusCode != http.StatusOK || string(body) != "pod 0 " {
						t.Errorf("%d %s %q, want the other pod's answer", resp.StatusCode, resp.Header.Get(wellknown.HeaderError), body)
					}
					if n := other.hits.Load(); n != 1 {
						t.Errorf("the other pod took %d requests, want 1", n)
					}
					if got := sc.metric("minimesh_retries_total", "destination", geo, "reason", "reset"); got != 1 {
						t.Errorf(`minimesh_retries_total{reason="reset"} = %v, want 1`, got)
					}
				} else {
					expectSidecarError(t, resp, body, http.StatusBadGateway, wellknown.ErrorReset, geo)
					if n := other.hits.Load(); n != 0 {
						t.Errorf("the other pod took %d requests, want none: the stopping pod may have run it", n)
					}
				}
				if e := alog.wait(t, 2, 5*time.Second)[1]; e.Attempts != attempts {
					t.Errorf("access log: %d attempts, want %d", e.Attempts, attempts)
				}
				if e := endpointsOf(sc)[stopping]; e.ConsecutiveFailures != 1 {
					t.Errorf("the stopped pod's endpoint: %+v, want 1 failure", e)
				}
				wantFailures := uint32(0)
				if !tc.moved && tc.failOn == "" {
					wantFailures = 1
				}
				if b := sc.breaker(geo); b.Counts.TotalFailures != wantFailures {
					t.Errorf("breaker %+v, want %d failures: the refused try counts only as the app's answer", b.Counts, wantFailures)
				}
			})
		}
	}
}

// TestRefusedResendGoesElsewhereH2C: over h2c, a GET whose stream the
// stopping pod reset with PROTOCOL_ERROR, which Go's transport sends
// again on a new connection (golang/go#47635) that the pod refused, goes
// once to another endpoint, as over HTTP/1 (TestRefusedResendGoesElsewhere);
// a POST stays the reset of its stream, sent nowhere else.
func TestRefusedResendGoesElsewhereH2C(t *testing.T) {
	for _, tc := range []struct {
		method string
		moved  bool
	}{{http.MethodGet, true}, {http.MethodPost, false}} {
		t.Run(tc.method, func(t *testing.T) {
			var other atomic.Int32
			otherAddr := startH2CUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				other.Add(1)
				fmt.Fprintf(w, "other pod, %s", r.Proto)
			})
			var onStop atomic.Pointer[func()]
			addr, heard := h2DyingUpstream(t, []string{"/stop"}, func(fr *http2.Framer, s map[string]uint32) error {
				(*onStop.Load())()
				return fr.WriteRSTStream(s["/stop"], http2.ErrCodeProtocol)
			})
			var alog accessLog
			sc := startSidecar(t, "", nil, withNamespace("shop"), withAccessLog(&alog))
			setGeo(sc, addr)
			both := func() { setGeo(sc, addr, otherAddr) }
			onStop.Store(&both)
			req, err := http.NewRequest(tc.method, "http://"+sc.Addr+"/stop", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = geo
			resp, err := h2cClient(t).Transport.RoundTrip(req)
			if err != nil {
				t.Fatalf("the app got no answer: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if n := heard("/stop"); n != 1 {
				t.Errorf("the stopping pod was sent the request %d times, want once", n)
			}
			if tc.moved {
				if resp.StatusCode != http.StatusOK || !bytes.Equal(body, []byte("other pod, HTTP/2.0")) {
					t.Errorf("%d %s %q, want the other pod's answer over h2c", resp.StatusCode, resp.Header.Get(wellknown.HeaderError), body)
				}
			} else {
				expectSidecarError(t, resp, body, http.StatusBadGateway, wellknown.ErrorReset, geo)
				if n := other.Load(); n != 0 {
					t.Errorf("the other pod took %d requests, want none", n)
				}
			}
			if e := alog.wait(t, 1, 5*time.Second)[0]; e.Attempts != map[bool]int{true: 2, false: 1}[tc.moved] {
				t.Errorf("access log: %d attempts", e.Attempts)
			}
		})
	}
}
