package outbound_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/proxy/outbound"
)

// answered is how a probe was answered.
type answered struct {
	code int
	kind string
	err  error
}

// heldProbe is the rig of the refused-probe tests: a destination whose
// one endpoint refuses, its breaker half-open, retries' backoffs held
// once hold is set (waiting says one is, release ends it), and hung, a
// pod that holds every request it gets (arrived says one did).
type heldProbe struct {
	sc               *testSidecar
	hung             *upstream
	hold             atomic.Bool
	waiting, release chan struct{}
	arrived          chan struct{}
}

// newHeldProbe opens the destination's breaker on a refused dial and
// waits for it to half-open after openTimeout.
func newHeldProbe(t *testing.T, openTimeout string, opts ...sidecarOpt) *heldProbe {
	h := &heldProbe{waiting: make(chan struct{}, 1), release: make(chan struct{}), arrived: make(chan struct{}, 1)}
	outbound.SetBackoffSleep(t, func(ctx context.Context, _ time.Duration, _ time.Time) bool {
		if !h.hold.Load() {
			return true
		}
		h.waiting <- struct{}{}
		select {
		case <-h.release:
			return true
		case <-ctx.Done():
			return false
		}
	})
	answer := make(chan struct{})
	h.hung = newUpstream(t, func(http.ResponseWriter, *http.Request, int64) {
		h.arrived <- struct{}{}
		<-answer
	})
	t.Cleanup(func() { close(answer) }) // before the server's close
	h.sc = startSidecar(t, policyDoc("geo", "geo-service", `
retries: {attempts: 1, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}}
circuitBreaker: {consecutiveFailures: 1, openTimeout: `+openTimeout+`, halfOpenRequests: 1}
outlierDetection: {consecutiveFailures: 0}
`), nil, append([]sidecarOpt{withNamespace("shop")}, opts...)...)
	setGeo(h.sc, refused.Addr(t))
	resp, body := get(t, h.sc.Client(), "http://"+geo+"/open")
	expectSidecarError(t, resp, body, http.StatusBadGateway, "connect-failure", geo)
	h.sc.waitBreakerState(geo, "half-open", 10*time.Second)
	return h
}

// inBackoff waits for the probe p's retry to wait in its backoff.
func (h *heldProbe) inBackoff(t *testing.T, p <-chan answered) {
	t.Helper()
	select {
	case <-h.waiting:
	case a := <-p:
		t.Fatalf("the probe was answered %+v before its retry's backoff", a)
	case <-time.After(10 * time.Second):
		t.Fatal("the probe's retry never waited")
	}
}

// refusedCounted releases the probe p's retry, which the breaker
// refuses: p is answered its own 502 connect-failure, and the breaker
// heard it (open again, once).
func (h *heldProbe) refusedCounted(t *testing.T, p <-chan answered) {
	t.Helper()
	close(h.release)
	if a := <-p; a.err != nil || a.code != http.StatusBadGateway || a.kind != "connect-failure" {
		t.Fatalf("the probe: %+v, want its own 502 connect-failure", a)
	}
	if st := h.sc.breaker(geo).State; st != "open" {
		t.Errorf("breaker %s after the probe's refusal was the app's answer, want open", st)
	}
	if got := h.sc.metrics().value("minimesh_circuit_breaker_transitions_total", "destination", geo, "from", "half-open", "to", "open"); got != 1 {
		t.Errorf("transitions half-open->open = %v, want 1", got)
	}
}

// TestRefusedProbeRetryRefusedCounts: a half-open breaker's probe that
// an endpoint refuses yields its place to its retry (docs/policy.md,
// "Circuit breaker"); when the breaker then refuses that retry after all
// (here its place went stale during the backoff, the test's, and another
// request's probe took it), the app is answered the probe's 502
// connect-failure, and the breaker hears that failure: it opens again.
// Before, the probe's verdict was let go for good to free the place, and
// the failure the app got was heard by no breaker: it stayed half-open.
func TestRefusedProbeRetryRefusedCounts(t *testing.T) {
	for _, tr := range balanceTransports {
		t.Run(tr.name, func(t *testing.T) {
			h := newHeldProbe(t, "500ms", tr.opt)
			c := h.sc.Client()

			// P, the probe: refused, its retry waits in its backoff.
			h.hold.Store(true)
			call := func(path string) <-chan answered {
				ch := make(chan answered, 1)
				go func() {
					resp, err := c.Get("http://" + geo + path)
					if err != nil {
						ch <- answered{err: err}
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					ch <- answered{code: resp.StatusCode, kind: resp.Header.Get("X-Minimesh-Error")}
				}()
				return ch
			}
			p := call("/probe")
			h.inBackoff(t, p)

			// Q: once the retry's place is stale (openTimeout), a request
			// takes it as the probe, and waits at the hung pod.
			setGeo(h.sc, h.hung.Host())
			deadline := time.Now().Add(10 * time.Second)
		wait:
			for {
				select {
				case <-h.arrived:
					break wait
				case a := <-call("/q"):
					if a.err != nil || a.code != http.StatusServiceUnavailable || a.kind != "circuit-open" {
						t.Fatalf("a request while the probe's retry holds the place: %+v, want 503 circuit-open", a)
					}
				}
				if time.Now().After(deadline) {
					t.Fatal("no request took the probe's stale place")
				}
				time.Sleep(20 * time.Millisecond)
			}

			h.refusedCounted(t, p)
		})
	}
}

// TestTunnelRefusedProbeRetryRefusedCounts: as
// TestRefusedProbeRetryRefusedCounts, for an opaque connection (a CONNECT
// tunnel; dialTunnel serves redirected TCP alike). A half-open breaker's
// probe whose dial the endpoint refused yields its place to its retry;
// when another request's probe takes that place during the retry's
// backoff (the test's), the breaker refuses the retry, and the app is
// answered the probe's 502 connect-failure, a failure the breaker hears:
// it opens again. Before, the probe's verdict was let go for good before
// the retry asked: the app got 503 circuit-open and the breaker stayed
// half-open.
func TestTunnelRefusedProbeRetryRefusedCounts(t *testing.T) {
	h := newHeldProbe(t, "300ms")
	c := h.sc.Client()

	// P, the probe, a CONNECT: refused, its retry waits in its backoff.
	h.hold.Store(true)
	p := make(chan answered, 1)
	conn := dialSidecar(t, h.sc)
	go func() {
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second)) // a bound on a failing run
		if _, err := io.WriteString(conn, "CONNECT "+geo+" HTTP/1.1\r\nHost: "+geo+"\r\n\r\n"); err != nil {
			p <- answered{err: err}
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
		if err != nil {
			p <- answered{err: err}
			return
		}
		resp.Body.Close()
		p <- answered{code: resp.StatusCode, kind: resp.Header.Get("X-Minimesh-Error")}
	}()
	h.inBackoff(t, p)

	// Q takes the place the probe yielded, and waits at the hung pod.
	setGeo(h.sc, h.hung.Host())
	q := make(chan error, 1)
	go func() {
		resp, err := c.Get("http://" + geo + "/q")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%d %s", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
			}
		}
		q <- err
	}()
	select {
	case <-h.arrived:
	case err := <-q:
		t.Fatalf("the request meant to take the probe's place was answered: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no request took the probe's place")
	}

	h.refusedCounted(t, p)
}
