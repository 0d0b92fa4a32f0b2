package outbound_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/proxy/outbound"
)

// failTwice answers 503 to the first two requests and 200 "ok" to the
// rest, recording each request's body hash, Content-Length and
// Idempotency-Key.
type failTwice struct {
	mu     sync.Mutex
	bodies [][sha256.Size]byte
	sizes  []int
	keys   []string
	// lengths are the Content-Length headers the upstream saw (-1: the
	// body came chunked).
	lengths []int64
}

func (f *failTwice) handler(w http.ResponseWriter, r *http.Request, n int64) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, sha256.Sum256(b))
	f.sizes = append(f.sizes, len(b))
	f.lengths = append(f.lengths, r.ContentLength)
	f.keys = append(f.keys, r.Header.Get("Idempotency-Key"))
	f.mu.Unlock()
	if n <= 2 {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

const retry503 = `
retries:
  attempts: 2
  retryOn: ["503"]
  backoff: {base: 5ms, max: 10ms}
`

func randomBody(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 42))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestRetryTwiceThenSuccess: attempts: 2 with retryOn ["503"] against an
// upstream that fails twice: the client sees 200, the upstream three
// requests, and two retries are counted.
func TestRetryTwiceThenSuccess(t *testing.T) {
	var f failTwice
	u := newUpstream(t, f.handler)
	sc := startSidecar(t, policyDoc("geo", "geo-service", retry503), resolve(u.Host(), geo))
	resp, body := get(t, sc.Client(), "http://"+geo+"/v1/geocode?q=madrid")
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Fatalf("client got %d %q, want 200 ok", resp.StatusCode, body)
	}
	if got := u.hits.Load(); got != 3 {
		t.Fatalf("upstream saw %d requests, want 3", got)
	}
	m := sc.metrics()
	if got := m.value("minimesh_retries_total", "destination", geo, "reason", "503"); got != 2 {
		t.Errorf("retries_total{reason=503} = %v, want 2", got)
	}
	if got := m.value("minimesh_retries_total"); got != 2 {
		t.Errorf("retries_total (all) = %v, want 2", got)
	}
	if got := m.value("minimesh_requests_total", "destination", geo, "method", "GET", "code", "200"); got != 1 {
		t.Errorf("requests_total{GET,200} = %v, want 1 (retries are not requests)", got)
	}
	// Each try went through the breaker: two failures, then a success
	// that ended the run.
	want := breakerCounts{Requests: 3, TotalSuccesses: 1, TotalFailures: 2, ConsecutiveSuccesses: 1}
	if st := sc.breaker(geo); st.Counts != want {
		t.Errorf("breaker counts %+v, want %+v", st.Counts, want)
	}
}

// TestRetryNonIdempotent: a POST may have had its effect, so it is not
// retried on a 503 unless it carries an Idempotency-Key; with one it is,
// and the same body and key reach the upstream each time.
func TestRetryNonIdempotent(t *testing.T) {
	body := randomBody(1000)
	sum := sha256.Sum256(body)
	for _, tc := range []struct {
		name     string
		key      string
		wantCode int
		wantHits int64
	}{
		{"plain POST", "", http.StatusServiceUnavailable, 1},
		{"POST with Idempotency-Key", "order-7f3a", http.StatusOK, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f failTwice
			u := newUpstream(t, f.handler)
			sc := startSidecar(t, policyDoc("geo", "geo-service", retry503), resolve(u.Host(), geo))
			req, _ := http.NewRequest(http.MethodPost, "http://"+geo+"/orders", bytes.NewReader(body))
			if tc.key != "" {
				req.Header.Set("Idempotency-Key", tc.key)
			}
			resp, _ := fetch(t, sc.Client(), req)
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantCode)
			}
			if got := u.hits.Load(); got != tc.wantHits {
				t.Fatalf("upstream saw %d requests, want %d", got, tc.wantHits)
			}
			for i := range f.bodies {
				if f.bodies[i] != sum || f.keys[i] != tc.key {
					t.Fatalf("try %d: body of %d bytes (intact: %v), key %q", i+1, f.sizes[i], f.bodies[i] == sum, f.keys[i])
				}
			}
			if got := sc.metric("minimesh_retries_total"); got != float64(tc.wantHits-1) {
				t.Errorf("retries_total = %v, want %d", got, tc.wantHits-1)
			}
		})
	}
}

// TestRetryReplaysBody: a body of up to 64 KiB (MaxReplayBody) is kept
// and sent again, byte for byte and with its Content-Length, on every
// try.
func TestRetryReplaysBody(t *testing.T) {
	for _, size := range []int{1, 10 << 10, 64 << 10} {
		t.Run(itoa(size), func(t *testing.T) {
			f := sendThroughRetries(t, size)
			if len(f.bodies) != 3 {
				t.Fatalf("upstream saw %d tries, want 3", len(f.bodies))
			}
			for i, n := range f.lengths {
				if n != int64(size) {
					t.Errorf("try %d arrived with Content-Length %d, want %d", i+1, n, size)
				}
			}
		})
	}
}

// TestRetryLargeBodySentOnce: a body larger than 64 KiB streams through
// once and is not retried: the client gets the upstream's 503.
func TestRetryLargeBodySentOnce(t *testing.T) {
	for _, size := range []int{64<<10 + 1, 100 << 10, 1 << 20} {
		t.Run(itoa(size), func(t *testing.T) {
			f := sendThroughRetries(t, size)
			if len(f.bodies) != 1 {
				t.Fatalf("upstream saw %d tries, want 1", len(f.bodies))
			}
		})
	}
}

// sendThroughRetries PUTs a random body of size bytes through a sidecar
// whose policy retries 503s twice, to an upstream that fails twice. It
// checks that every try carried the body intact, that the client's
// answer is the last try's, and that
// the retries counted are the tries sent.
func sendThroughRetries(t *testing.T, size int) *failTwice {
	t.Helper()
	f := new(failTwice)
	u := newUpstream(t, f.handler)
	sc := startSidecar(t, policyDoc("geo", "geo-service", retry503), resolve(u.Host(), geo))
	body := randomBody(size)
	sum := sha256.Sum256(body)
	req, _ := http.NewRequest(http.MethodPut, "http://"+geo+"/tiles/7", bytes.NewReader(body))
	resp, _ := fetch(t, sc.Client(), req)
	hits := u.hits.Load()
	if want := map[int64]int{1: http.StatusServiceUnavailable, 3: http.StatusOK}[hits]; resp.StatusCode != want {
		t.Fatalf("client got %d after %d tries, want %d", resp.StatusCode, hits, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.bodies {
		if f.sizes[i] != size || f.bodies[i] != sum {
			t.Fatalf("try %d carried %d bytes (intact: %v), want the %d sent", i+1, f.sizes[i], f.bodies[i] == sum, size)
		}
	}
	if got := sc.metric("minimesh_retries_total"); got != float64(hits-1) {
		t.Errorf("retries_total = %v, want %d", got, hits-1)
	}
	return f
}

// TestRetryLargeBodyKeepsContentLength: a body too large to replay is
// still sent with the client's Content-Length, not re-framed as chunked:
// an upstream that needs the length (411 otherwise, as object stores and
// HTTP/1.0 servers do) must not start failing because a retries block
// was added to its policy.
func TestRetryLargeBodyKeepsContentLength(t *testing.T) {
	f := sendThroughRetries(t, 1<<20)
	for i, n := range f.lengths {
		if n != 1<<20 {
			t.Errorf("try %d arrived with Content-Length %d, want the client's %d", i+1, n, 1<<20)
		}
	}
}

// itoa names a size for a subtest: 64KiB, 65537B, 1MiB.
func itoa(n int) string {
	switch {
	case n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "MiB"
	case n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}

// TestRetryConnectFailurePOST: a request that could not be sent because
// the connection was refused is retried whatever its method, and the
// upstream that finally answers receives the whole body, small (kept for
// replay) or large (streamed once).
//
// The upstream's port is closed until the sidecar has counted its first
// connect-failure retry, then it listens. The retries after the first
// wait out their backoff and then for the listener, so that one or two
// tries are refused: the test checks that every count agrees (refused
// tries = retries = breaker failures). Before, their jittered backoffs
// alone bounded the test's time to listen: nine of them could add up to
// less than a stall of the test (under 50 ms: odds of 3e-6, 100 ms:
// 1e-3), and every try was refused.
func TestRetryConnectFailurePOST(t *testing.T) {
	for _, size := range []int{10 << 10, 512 << 10} {
		t.Run(itoa(size), func(t *testing.T) {
			addr, release, err := refused.Hold()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(release)
			listening := make(chan struct{})
			listened := sync.OnceFunc(func() { close(listening) })
			var waits atomic.Int32
			outbound.SetBackoffSleep(t, func(ctx context.Context, d time.Duration, _ time.Time) bool {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return false
				}
				if waits.Add(1) == 1 {
					return true // the test listens once it sees this retry counted
				}
				select {
				case <-listening:
					return true
				case <-ctx.Done():
					return false
				}
			})
			sc := startSidecar(t, policyDoc("geo", "geo-service", `
retries:
  attempts: 10
  retryOn: [connect-failure]
  backoff: {base: 50ms, max: 50ms}
circuitBreaker: {consecutiveFailures: 20}
`), resolve(addr, geo))
			t.Cleanup(listened) // before the sidecar's: a retry held on a failure
			body := randomBody(size)
			type answer struct {
				code int
				err  error
			}
			done := make(chan answer, 1)
			go func() {
				resp, err := sc.Client().Post("http://"+geo+"/orders", "application/octet-stream", bytes.NewReader(body))
				if err != nil {
					done <- answer{err: err}
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				done <- answer{code: resp.StatusCode}
			}()
			deadline := time.Now().Add(10 * time.Second) // a wait, not a figure: the race detector on 2 loaded cores
			for sc.metric("minimesh_retries_total", "destination", geo, "reason", "connect-failure") < 1 {
				if time.Now().After(deadline) {
					t.Fatal("no connect-failure retry within 10s")
				}
				time.Sleep(time.Millisecond)
			}
			release() // now a listener may take the port
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatalf("re-listening on %s: %v", addr, err)
			}
			listened()
			var mu sync.Mutex
			var got [][]byte
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				got = append(got, b)
				mu.Unlock()
				w.WriteHeader(http.StatusCreated)
			})}
			go func() { _ = srv.Serve(ln) }()
			t.Cleanup(func() { srv.Close() })

			a := <-done
			if a.err != nil || a.code != http.StatusCreated {
				t.Fatalf("client got %d %v, want 201", a.code, a.err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 1 {
				t.Fatalf("upstream saw %d requests, want 1", len(got))
			}
			if !bytes.Equal(got[0], body) {
				t.Fatalf("upstream received %d bytes, want the %d sent intact", len(got[0]), len(body))
			}
			retries := sc.metric("minimesh_retries_total", "destination", geo)
			st := sc.breaker(geo)
			if retries < 1 || retries > 10 || float64(st.Counts.TotalFailures) != retries || st.Counts.TotalSuccesses != 1 {
				t.Fatalf("%v retries, breaker %+v: want one failure per retry and one success", retries, st.Counts)
			}
		})
	}
}

// TestRetryBackoffBounded: the backoff is exponential with full jitter,
// capped at max, so only upper bounds can be asserted: five retries with
// base = max = 50ms wait at most 250ms in all (uncapped doubling would
// wait up to 1.55s), and no single gap between tries exceeds the cap by
// more than the tries' own time.
func TestRetryBackoffBounded(t *testing.T) {
	var mu sync.Mutex
	var at []time.Time
	u := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		w.WriteHeader(http.StatusBadGateway)
	})
	sc := startSidecar(t, policyDoc("geo", "geo-service", `
retries:
  attempts: 5
  retryOn: [gateway-error]
  backoff: {base: 50ms, max: 50ms}
circuitBreaker: {consecutiveFailures: 100}
`), resolve(u.Host(), geo))
	c := sc.Client()
	get(t, c, "http://"+geo+"/warm") // connections made, not timed
	mu.Lock()
	at = nil
	mu.Unlock()
	start := time.Now()
	resp, _ := get(t, c, "http://"+geo+"/")
	elapsed := time.Since(start)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Minimesh-Error") != "" {
		t.Fatalf("client got %d %q, want the upstream's last 502", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(at) != 6 {
		t.Fatalf("upstream saw %d tries, want 6", len(at))
	}
	const slack = 400 * time.Millisecond // six loopback round trips on a loaded machine
	if elapsed > 5*50*time.Millisecond+slack {
		t.Errorf("6 tries took %v, want at most 5×50ms of backoff plus %v", elapsed, slack)
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap > 50*time.Millisecond+slack {
			t.Errorf("gap before try %d: %v, want <= 50ms cap (+%v)", i+1, gap, slack)
		}
	}
	if got := sc.metric("minimesh_retries_total", "destination", geo, "reason", "502"); got != 10 {
		t.Errorf("retries_total{502} = %v, want 10 (5 for each of the two requests)", got)
	}
}

// TestRetryBudgetExhausted: ratio 0 and minPerSecond 1 allow 10 retries
// per 10 s window; a burst of failing requests gets exactly 10 retries in
// all, sequential or concurrent.
func TestRetryBudgetExhausted(t *testing.T) {
	const pol = `
retries:
  attempts: 1
  retryOn: ["503"]
  backoff: {base: 1ms, max: 1ms}
  budget: {ratio: 0, minPerSecond: 1}
circuitBreaker: {consecutiveFailures: 1000}
`
	for _, concurrent := range []bool{false, true} {
		name := "sequential"
		if concurrent {
			name = "concurrent"
		}
		t.Run(name, func(t *testing.T) {
			const requests = 40
			u := newUpstream(t, status(http.StatusServiceUnavailable))
			sc := startSidecar(t, policyDoc("geo", "geo-service", pol), resolve(u.Host(), geo))
			c := sc.Client()
			var wg sync.WaitGroup
			for range requests {
				send := func() {
					resp, err := c.Get("http://" + geo + "/")
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusServiceUnavailable {
						t.Errorf("status %d, want the upstream's 503", resp.StatusCode)
					}
				}
				if concurrent {
					wg.Go(send)
				} else {
					send()
				}
			}
			wg.Wait()
			if got := u.hits.Load(); got != requests+10 {
				t.Errorf("upstream saw %d requests, want %d (each once, plus the budget's 10 retries)", got, requests+10)
			}
			if got := sc.metric("minimesh_retries_total", "destination", geo); got != 10 {
				t.Errorf("retries_total = %v, want 10", got)
			}
		})
	}
}

// TestRetryPerTryTimeout: a first try that hangs is abandoned after
// perTryTimeout (the upstream sees its request cancelled) and the second
// try's answer reaches the client.
func TestRetryPerTryTimeout(t *testing.T) {
	firstCancelled := make(chan struct{})
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if n == 1 {
			hang(r)
			close(firstCancelled)
			return
		}
		_, _ = w.Write([]byte("second try"))
	})
	sc := startSidecar(t, policyDoc("geo", "geo-service", `
timeout: 3s
retries:
  attempts: 1
  perTryTimeout: 200ms
  retryOn: [timeout]
  backoff: {base: 1ms, max: 1ms}
`), resolve(u.Host(), geo))
	start := time.Now()
	resp, body := get(t, sc.Client(), "http://"+geo+"/")
	elapsed := time.Since(start)
	if resp.StatusCode != http.StatusOK || string(body) != "second try" {
		t.Fatalf("client got %d %q, want 200 from the second try", resp.StatusCode, body)
	}
	if elapsed < 200*time.Millisecond || elapsed > 1500*time.Millisecond {
		t.Errorf("took %v, want about the 200ms perTryTimeout", elapsed)
	}
	select {
	case <-firstCancelled:
	case <-time.After(2 * time.Second):
		t.Fatal("the abandoned first try was not cancelled upstream")
	}
	if got := u.hits.Load(); got != 2 {
		t.Fatalf("upstream saw %d requests, want 2", got)
	}
	if got := sc.metric("minimesh_retries_total", "destination", geo, "reason", "timeout"); got != 1 {
		t.Errorf("retries_total{timeout} = %v, want 1", got)
	}
}

// TestRetryWholeTimeoutCapsTries: timeout bounds all tries together: with
// perTryTimeout 300ms and timeout 450ms against a hanging upstream the
// second try is cut short by the whole timeout, no third one starts, and
// the client gets 504 timeout.
func TestRetryWholeTimeoutCapsTries(t *testing.T) {
	u := newUpstream(t, func(_ http.ResponseWriter, r *http.Request, _ int64) { hang(r) })
	sc := startSidecar(t, policyDoc("geo", "geo-service", `
timeout: 450ms
retries:
  attempts: 5
  perTryTimeout: 300ms
  retryOn: [timeout]
  backoff: {base: 5ms, max: 5ms}
circuitBreaker: {consecutiveFailures: 100}
`), resolve(u.Host(), geo))
	start := time.Now()
	resp, body := get(t, sc.Client(), "http://"+geo+"/")
	elapsed := time.Since(start)
	expectSidecarError(t, resp, body, http.StatusGatewayTimeout, "timeout", geo)
	if elapsed < 450*time.Millisecond || elapsed > 1200*time.Millisecond {
		t.Errorf("took %v, want about the 450ms timeout", elapsed)
	}
	if got := u.hits.Load(); got != 2 {
		t.Fatalf("upstream saw %d tries, want 2", got)
	}
	// The whole timeout ended the second try: no third can be sent, so
	// none may be counted (nor taken from the budget).
	if got := sc.metric("minimesh_retries_total", "destination", geo); got != 1 {
		t.Errorf("retries_total = %v, want 1 (the upstream saw 2 tries)", got)
	}
}

// TestRetryOnReset: with the default retryOn (connect-failure, reset,
// gateway-error) a GET whose connection is reset before any answer is
// tried again, each try on a new connection; a POST, which the upstream
// may have acted on, is not.
func TestRetryOnReset(t *testing.T) {
	for _, tc := range []struct {
		method   string
		wantHits int64
	}{
		{http.MethodGet, 3},
		{http.MethodPost, 1},
	} {
		t.Run(tc.method, func(t *testing.T) {
			addr, hits := newResetUpstream(t)
			sc := startSidecar(t, policyDoc("geo", "geo-service", `
retries:
  attempts: 2
  backoff: {base: 1ms, max: 1ms}
circuitBreaker: {consecutiveFailures: 10}
`), resolve(addr, geo))
			req, _ := http.NewRequest(tc.method, "http://"+geo+"/", strings.NewReader("payload"))
			resp, body := fetch(t, sc.Client(), req)
			expectSidecarError(t, resp, body, http.StatusBadGateway, "reset", geo)
			if got := hits.Load(); got != tc.wantHits {
				t.Fatalf("upstream read %d requests, want %d", got, tc.wantHits)
			}
			if got := sc.metric("minimesh_retries_total", "destination", geo, "reason", "reset"); got != float64(tc.wantHits-1) {
				t.Errorf("retries_total{reset} = %v, want %d", got, tc.wantHits-1)
			}
			if st := sc.breaker(geo); st.Counts.ConsecutiveFailures != uint32(tc.wantHits) {
				t.Errorf("breaker counted %d consecutive failures, want one per try (%d)", st.Counts.ConsecutiveFailures, tc.wantHits)
			}
		})
	}
}

// TestRetryAfterDrainCutShort: a first try answered 503 whose body is cut
// short while the retry loop drains it, then a good answer. The app gets
// the retry's answer, recorded as what it is; the cut-short body failed
// only its own try (the breaker counts it). Bodiless answers too, where
// nothing of the retry's answer is read through the failed body's state.
func TestRetryAfterDrainCutShort(t *testing.T) {
	for _, p := range []struct {
		name string
		opts []sidecarOpt
	}{{"fast", nil}, {"std-transport", []sidecarOpt{withStdTransport()}}} {
		for _, final := range []struct{ name, raw, body, code string }{
			{"204", "HTTP/1.1 204 No Content\r\n\r\n", "", "204"},
			{"empty 200", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "", "200"},
			{"200", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "ok", "200"},
		} {
			t.Run(p.name+"/"+final.name, func(t *testing.T) {
				var n atomic.Int32
				addr, _ := newRawUpstream(t, func(c net.Conn, _ *http.Request) {
					if n.Add(1) == 1 {
						io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\nabc")
						return // closed 97 bytes short
					}
					io.WriteString(c, final.raw)
				})
				sc := startSidecar(t, policyDoc("geo", "geo-service",
					`retries: {attempts: 1, retryOn: ["503"], backoff: {base: 1ms, max: 1ms}}`), resolve(addr, geo), p.opts...)
				resp, body := get(t, sc.Client(), "http://"+geo+"/")
				if strconv.Itoa(resp.StatusCode) != final.code || string(body) != final.body || resp.Header.Get("X-Minimesh-Error") != "" {
					t.Fatalf("app got %d %q (X-Minimesh-Error %q), want the retry's %s %q",
						resp.StatusCode, body, resp.Header.Get("X-Minimesh-Error"), final.code, final.body)
				}
				sc.waitMetric(1, 5*time.Second, "minimesh_requests_total", "destination", geo, "code", final.code)
				if got := sc.metric("minimesh_requests_total", "destination", geo); got != 1 {
					t.Errorf("requests_total{destination=%s} = %v, want the one request, as %s", geo, got, final.code)
				}
				if st := sc.breaker(geo); st.Counts.TotalFailures != 1 || st.Counts.TotalSuccesses != 1 {
					t.Errorf("breaker counted %d failures and %d successes, want 1 and 1 (the cut-short try, the retry)",
						st.Counts.TotalFailures, st.Counts.TotalSuccesses)
				}
			})
		}
	}
}
