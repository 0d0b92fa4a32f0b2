package outbound_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/otlptest"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/sidecar"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// judgedUpstream serves h over HTTP/1 and h2c, as a gRPC-capable
// upstream does, so that one upstream takes every transport's tries.
func judgedUpstream(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
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
	return ln.Addr().String()
}

// judgedClient is the app's client of sc for a transport: HTTP/1 through
// the proxy, or h2c straight to it (the sidecar's HTTP/2 transport).
func judgedClient(t *testing.T, sc *testSidecar, h2 bool, path string) (*http.Client, *http.Request) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+geo+path, nil)
	if h2 {
		req.URL.Host, req.Host = sc.Addr, geo
		return h2cClient(t), req
	}
	return sc.Client(), req
}

// judgedAnswer is what the app got for a request: the answer and its
// body as far as it could be read, or the request's error.
type judgedAnswer struct {
	resp    *http.Response
	err     error
	body    []byte
	readErr error
}

// doJudged sends req with c and reads its answer's body to the end.
func doJudged(c *http.Client, req *http.Request) judgedAnswer {
	resp, err := c.Do(req)
	if err != nil {
		return judgedAnswer{err: err}
	}
	defer resp.Body.Close()
	body, rerr := io.ReadAll(resp.Body)
	return judgedAnswer{resp: resp, body: body, readErr: rerr}
}

// holdBackoff holds each retry's backoff (outbound.SetBackoffSleep)
// until the test closes release, or the request ends: no real wait, and
// the test acts while a retry is pending. waiting gets a value as each
// backoff begins.
func holdBackoff(t *testing.T) (waiting <-chan struct{}, release chan<- struct{}) {
	w, r := make(chan struct{}, 1), make(chan struct{})
	outbound.SetBackoffSleep(t, func(ctx context.Context, _ time.Duration, _ time.Time) bool {
		w <- struct{}{}
		select {
		case <-r:
			return true
		case <-ctx.Done():
			return false
		}
	})
	return w, r
}

var judgedTransports = []struct {
	name string
	opt  sidecarOpt
	h2   bool
}{
	{"fast", withFastTransport(), false},
	{"std-transport", withStdTransport(), false},
	{"h2c", withFastTransport(), true},
}

// TestRetriedTriesEachASpan: a 503 with a body, as Envoy's or nginx's
// "no healthy upstream", retried twice: each of the three tries is a
// CLIENT span of its own, status 503 (docs/operations.md, "Traces").
// Before, a try judged for a retry was marked ended without its span
// ending: only the last try's span was exported.
func TestRetriedTriesEachASpan(t *testing.T) {
	for i, p := range judgedTransports {
		t.Run(p.name, func(t *testing.T) {
			up := judgedUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte("no healthy upstream"))
			})
			col := otlptest.Start(t)
			var alog accessLog
			sc := startSidecar(t, policyDoc("geo", "geo-service", retry503), resolve(up, geo), withAccessLog(&alog), p.opt,
				func(cfg *sidecar.Config) { cfg.OTLPEndpoint, cfg.TraceSampleRatio = col.Addr, 1 })
			c, req := judgedClient(t, sc, p.h2, "/x")
			traceID := fmt.Sprintf("%032x", 0x7e1a0000+i)
			const appSpan = "b7ad6b7169203331"
			req.Header.Set("Traceparent", "00-"+traceID+"-"+appSpan+"-01")
			resp, body := fetch(t, c, req)
			if resp.StatusCode != http.StatusServiceUnavailable || string(body) != "no healthy upstream" {
				t.Fatalf("app got %d %q, want the last try's 503", resp.StatusCode, body)
			}
			line := alog.wait(t, 1, 5*time.Second)[0]
			if line.Attempts != 3 || line.Error != "" {
				t.Errorf("access log attempts %d error %q, want 3 and none", line.Attempts, line.Error)
			}
			tries := 0
			for _, s := range col.Trace(t, traceID, 1+3) {
				if hex.EncodeToString(s.ParentSpanId) == appSpan {
					continue // the request's
				}
				tries++
				a := spanAttrs(s)
				if s.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || a["http.response.status_code"] != "503" || a["error.type"] != "503" {
					t.Errorf("try span: status %v, code %q, error.type %q; want an error, 503, 503", s.Status.GetCode(), a["http.response.status_code"], a["error.type"])
				}
			}
			if tries != 3 {
				t.Errorf("%d try spans, want 3", tries)
			}
		})
	}
}

// TestRefusedRetryBodyWatched: a retryable 503 whose retry is refused
// (the retry budget spent, the breaker opened by that very try, or the
// breaker opened by another request during the backoff) goes to the app,
// and its body is still watched: cut after its headers, before any byte,
// the app gets the sidecar's 502 reset; cut after 10 of its 100 bytes,
// the app has the 503 and the cut. Either way the access log, the
// metric (code 502) and the try's span record the reset
// (docs/operations.md, "A response that fails after its headers"). Before,
// the try counted as judged by its status as soon as a retry was
// considered: the app got no answer at all, or a cut 503 logged and
// counted as a clean 503, and the try's span was lost.
func TestRefusedRetryBodyWatched(t *testing.T) {
	const breakerByTry, breakerDuringBackoff, budgetSpent = "breaker opened by the try", "breaker opened during the backoff", "budget spent"
	for _, refusal := range []string{budgetSpent, breakerByTry, breakerDuringBackoff} {
		for _, bodyBytes := range []int{0, 10} {
			for i, p := range judgedTransports {
				t.Run(fmt.Sprintf("%s/%d bytes/%s", refusal, bodyBytes, p.name), func(t *testing.T) {
					refusedRetryCase(t, refusal == breakerDuringBackoff, map[string]string{
						budgetSpent:          retry503 + "  budget: {ratio: 0, minPerSecond: 0}\n",
						breakerByTry:         retry503 + "circuitBreaker: {consecutiveFailures: 1, openTimeout: 60s}\n",
						breakerDuringBackoff: "retries: {attempts: 1, retryOn: [\"503\"], backoff: {base: 2s, max: 2s}}\ncircuitBreaker: {consecutiveFailures: 2, openTimeout: 60s}\n",
					}[refusal], bodyBytes, p.opt, p.h2, i)
				})
			}
		}
	}
}

func refusedRetryCase(t *testing.T, duringBackoff bool, spec string, bodyBytes int, opt sidecarOpt, h2 bool, i int) {
	up := judgedUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("0123456789")[:bodyBytes])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection closed, the stream reset: the body cut
	})
	col := otlptest.Start(t)
	var alog accessLog
	sc := startSidecar(t, policyDoc("geo", "geo-service", spec), resolve(up, geo), withAccessLog(&alog), opt,
		func(cfg *sidecar.Config) { cfg.OTLPEndpoint, cfg.TraceSampleRatio = col.Addr, 1 })
	const appSpan = "b7ad6b7169203331"
	traceID := fmt.Sprintf("%032x", 0x7e1b0000+i*64+bodyBytes)

	send := func(path, trace string) judgedAnswer {
		c, req := judgedClient(t, sc, h2, path)
		if trace != "" {
			req.Header.Set("Traceparent", "00-"+trace+"-"+appSpan+"-01")
		}
		return doJudged(c, req)
	}
	requests := 1
	var got judgedAnswer
	if duringBackoff {
		// Request A's try fails and A waits out its backoff, held by the
		// test; meanwhile B's failure opens the breaker, and A's retry is
		// refused after the wait (readmit).
		waiting, release := holdBackoff(t)
		a := make(chan judgedAnswer, 1)
		go func() { a <- send("/a", traceID) }()
		<-waiting
		send("/b", "") // its retry refused at once: the breaker opened on it
		sc.waitBreakerState(geo, "open", 5*time.Second)
		close(release)
		got = <-a
		requests = 2
	} else {
		got = send("/a", traceID)
	}

	if got.err != nil {
		t.Fatalf("the app got no answer: %v", got.err)
	}
	if bodyBytes == 0 {
		if got.resp.StatusCode != http.StatusBadGateway || got.resp.Header.Get("X-Minimesh-Error") != "reset" {
			t.Errorf("app got %d %q %q, want the sidecar's 502 reset: nothing of the 503 reached it", got.resp.StatusCode, got.resp.Header.Get("X-Minimesh-Error"), got.body)
		}
	} else if got.resp.StatusCode != http.StatusServiceUnavailable || got.readErr == nil || string(got.body) != "0123456789" {
		t.Errorf("app got %d %q, read error %v; want the 503's 10 bytes, then the cut", got.resp.StatusCode, got.body, got.readErr)
	}

	var line *accessEntry
	for _, e := range alog.wait(t, requests, 5*time.Second) {
		if e.Path == "/a" {
			line = &e
		}
	}
	wantStatus := http.StatusBadGateway
	if bodyBytes > 0 {
		wantStatus = http.StatusServiceUnavailable // what the app got
	}
	if line == nil || line.Status != wantStatus || line.Error != "reset" || line.Attempts != 1 {
		t.Errorf("access log %+v, want status %d, error reset, 1 attempt", line, wantStatus)
	}
	sc.waitMetric(float64(requests), 5*time.Second, "minimesh_requests_total", "code", "502")
	if n := sc.metric("minimesh_requests_total", "code", "503"); n != 0 {
		t.Errorf("requests_total{code=503} = %v, want 0: every answer was cut", n)
	}
	if n := sc.metric("minimesh_retries_total"); n != 0 {
		t.Errorf("retries_total = %v, want 0: the retry was refused", n)
	}

	var try *tracepb.Span
	for _, s := range col.Trace(t, traceID, 2) {
		if hex.EncodeToString(s.ParentSpanId) != appSpan {
			try = s
		}
	}
	if try == nil {
		t.Fatal("no try span")
	}
	if a := spanAttrs(try); try.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || a["http.response.status_code"] != "503" || a["error.type"] != "reset" {
		t.Errorf("try span: status %v, code %q, error.type %q; want an error, 503, reset", try.Status.GetCode(), a["http.response.status_code"], a["error.type"])
	}
}

// TestRefusedRetryNonFailureStatusCounted: a 429 is in retryOn but not in
// failOn, so its status is no failure; its retry refused (the budget
// spent, or the breaker opened by other requests during the backoff), the
// app gets it, and how its body ends is the try's outcome for the breaker
// and the endpoint, which hear of it exactly once: a cut (before any
// byte, or after 10 of 100) a failure, a whole body a success
// (docs/operations.md, "A response that fails after its headers").
// Before, they heard the status as a success as soon as a retry was
// considered, and the cut that followed told neither: the breaker stayed
// closed on an upstream that cut every answer.
func TestRefusedRetryNonFailureStatusCounted(t *testing.T) {
	const budgetSpent, breakerDuringBackoff = "budget spent", "breaker opened during the backoff"
	const outlier = "outlierDetection: {consecutiveFailures: 100, baseEjectionTime: 1h}\n"
	specs := map[string]string{
		budgetSpent:          "retries: {attempts: 2, retryOn: [\"429\"], budget: {ratio: 0, minPerSecond: 0}}\ncircuitBreaker: {consecutiveFailures: 2, openTimeout: 60s}\n" + outlier,
		breakerDuringBackoff: "retries: {attempts: 1, retryOn: [\"429\"], backoff: {base: 2s, max: 2s}}\ncircuitBreaker: {consecutiveFailures: 2, openTimeout: 60s}\n" + outlier,
	}
	bodies := []struct {
		name string
		sent int  // bytes of the 429's body sent
		cut  bool // then the connection closed, the stream reset
	}{
		{"headers only", 0, true},
		{"part of the body", 10, true},
		{"whole body", 10, false},
	}
	for _, refusal := range []string{budgetSpent, breakerDuringBackoff} {
		for _, body := range bodies {
			for _, p := range judgedTransports {
				t.Run(refusal+"/"+body.name+"/"+p.name, func(t *testing.T) {
					refusedNonFailureCase(t, refusal == breakerDuringBackoff, specs[refusal], body.sent, body.cut, p.opt, p.h2)
				})
			}
		}
	}
}

func refusedNonFailureCase(t *testing.T, duringBackoff bool, spec string, sent int, cut bool, opt sidecarOpt, h2 bool) {
	up := judgedUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/b" {
			w.WriteHeader(http.StatusServiceUnavailable) // a failure, not retried
			return
		}
		length := sent
		if cut {
			length = 100
		}
		w.Header().Set("Content-Length", fmt.Sprint(length))
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte("0123456789")[:sent])
		if cut {
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
	})
	var alog accessLog
	sc := startSidecar(t, policyDoc("geo", "geo-service", spec), nil, withNamespace("shop"), withAccessLog(&alog), opt)
	sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: {{Addr: up}}})

	send := func(path string) judgedAnswer { return doJudged(judgedClient(t, sc, h2, path)) }
	requests, otherFailures := 1, 0
	var got judgedAnswer
	if duringBackoff {
		// A's 429 waits out its backoff, held by the test; meanwhile two
		// 503s open the breaker, and A's retry is refused after the wait.
		waiting, release := holdBackoff(t)
		a := make(chan judgedAnswer, 1)
		go func() { a <- send("/a") }()
		<-waiting
		for range 2 {
			if b := send("/b"); b.err != nil || b.resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("/b: %+v, want the upstream's 503", b)
			}
		}
		sc.waitBreakerState(geo, "open", 5*time.Second)
		close(release)
		got = <-a
		requests, otherFailures = 3, 2
	} else {
		got = send("/a")
	}

	if got.err != nil {
		t.Fatalf("the app got no answer: %v", got.err)
	}
	switch {
	case cut && sent == 0:
		if got.resp.StatusCode != http.StatusBadGateway || got.resp.Header.Get("X-Minimesh-Error") != "reset" {
			t.Errorf("app got %d %q %q, want the sidecar's 502 reset", got.resp.StatusCode, got.resp.Header.Get("X-Minimesh-Error"), got.body)
		}
	case cut:
		if got.resp.StatusCode != http.StatusTooManyRequests || got.readErr == nil || string(got.body) != "0123456789" {
			t.Errorf("app got %d %q, read error %v; want the 429's 10 bytes, then the cut", got.resp.StatusCode, got.body, got.readErr)
		}
	default:
		if got.resp.StatusCode != http.StatusTooManyRequests || got.readErr != nil || string(got.body) != "0123456789" {
			t.Errorf("app got %d %q, read error %v; want the whole 429", got.resp.StatusCode, got.body, got.readErr)
		}
	}
	var line *accessEntry
	for _, e := range alog.wait(t, requests, 5*time.Second) {
		if e.Path == "/a" {
			line = &e
		}
	}
	wantStatus, wantErr := http.StatusTooManyRequests, ""
	if cut {
		wantErr = "reset"
		if sent == 0 {
			wantStatus = http.StatusBadGateway
		}
	}
	if line == nil || line.Status != wantStatus || line.Error != wantErr || line.Attempts != 1 {
		t.Errorf("access log %+v, want status %d, error %q, 1 attempt", line, wantStatus, wantErr)
	}

	// The endpoint: the try ended once (nothing left in flight), a cut
	// adding a failure to the 503s' run, a whole body ending it.
	wantFails := 0
	if cut {
		wantFails = otherFailures + 1
	}
	var ep debugEndpoint
	if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
		ep = endpointsOf(sc)[up]
		return ep.InFlight == 0 && ep.ConsecutiveFailures == wantFails
	}) {
		t.Errorf("endpoint %+v, want 0 in flight and %d consecutive failures", ep, wantFails)
	}
	// The breaker: with the budget spent, its counts are this try's
	// alone; opened during the backoff, it drops the outcome of a try
	// begun before (a new state, fresh counts).
	want := breakerCounts{Requests: 2, TotalSuccesses: 1, ConsecutiveSuccesses: 1} // the refused retry's permission is a request
	if cut {
		want = breakerCounts{Requests: 2, TotalFailures: 1, ConsecutiveFailures: 1}
	}
	wantState := "closed"
	if duringBackoff {
		want, wantState = breakerCounts{}, "open"
	}
	if b := sc.breaker(geo); b.State != wantState || b.Counts != want {
		t.Errorf("breaker %s %+v, want %s %+v", b.State, b.Counts, wantState, want)
	}
}

// TestHalfOpenProbeNonFailureStatusNotRetried: a half-open breaker's one
// probe (halfOpenRequests: 1) answers 429, in retryOn but not in failOn.
// The probe keeps its place until its body ends, so its retry is refused
// and the app gets the 429, watched: read whole, the probe succeeded and
// the breaker closes; cut, the probe failed and the breaker opens again
// (docs/operations.md, "A response that fails after its headers"). Before,
// the status closed the breaker as the retry was considered, and a cut
// probe left it closed on an upstream that cut its answers.
func TestHalfOpenProbeNonFailureStatusNotRetried(t *testing.T) {
	for _, cut := range []bool{false, true} {
		for _, p := range judgedTransports {
			t.Run(fmt.Sprintf("cut=%v/%s", cut, p.name), func(t *testing.T) {
				up := judgedUpstream(t, func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/b" {
						w.WriteHeader(http.StatusServiceUnavailable)
						return
					}
					w.Header().Set("Content-Length", map[bool]string{false: "10", true: "100"}[cut])
					w.WriteHeader(http.StatusTooManyRequests)
					_, _ = w.Write([]byte("0123456789"))
					if cut {
						w.(http.Flusher).Flush()
						panic(http.ErrAbortHandler)
					}
				})
				var alog accessLog
				sc := startSidecar(t, policyDoc("geo", "geo-service", "retries: {attempts: 2, retryOn: [\"429\"]}\ncircuitBreaker: {consecutiveFailures: 1, openTimeout: 200ms, halfOpenRequests: 1}\n"),
					resolve(up, geo), withAccessLog(&alog), p.opt)
				send := func(path string) (*http.Response, []byte, error) {
					c, req := judgedClient(t, sc, p.h2, path)
					resp, err := c.Do(req)
					if err != nil {
						t.Fatalf("%s: %v", path, err)
					}
					defer resp.Body.Close()
					body, rerr := io.ReadAll(resp.Body)
					return resp, body, rerr
				}
				send("/b")
				sc.waitBreakerState(geo, "open", 5*time.Second)
				sc.waitBreakerState(geo, "half-open", 5*time.Second)
				resp, body, rerr := send("/a")
				if resp.StatusCode != http.StatusTooManyRequests || string(body) != "0123456789" || (rerr != nil) != cut {
					t.Errorf("app got %d %q, read error %v; want the probe's 429 (cut: %v)", resp.StatusCode, body, rerr, cut)
				}
				var line *accessEntry
				for _, e := range alog.wait(t, 2, 5*time.Second) {
					if e.Path == "/a" {
						line = &e
					}
				}
				wantErr, wantState := "", "closed"
				if cut {
					wantErr, wantState = "reset", "open"
				}
				if line == nil || line.Attempts != 1 || line.Status != http.StatusTooManyRequests || line.Error != wantErr {
					t.Errorf("access log %+v, want 1 attempt, 429, error %q", line, wantErr)
				}
				// By its transitions: an open breaker half-opens again
				// after its 200ms.
				sc.waitMetric(1, 5*time.Second, "minimesh_circuit_breaker_transitions_total", "destination", geo, "from", "half-open", "to", wantState)
				if n := sc.metric("minimesh_retries_total"); n != 0 {
					t.Errorf("retries_total = %v, want 0: the probe's retry was refused", n)
				}
			})
		}
	}
}
