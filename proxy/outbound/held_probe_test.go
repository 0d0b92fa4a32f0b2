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
			var hold atomic.Bool
			waiting, release := make(chan struct{}, 1), make(chan struct{})
			outbound.SetBackoffSleep(t, func(ctx context.Context, _ time.Duration, _ time.Time) bool {
				if !hold.Load() {
					return true
				}
				waiting <- struct{}{}
				select {
				case <-release:
					return true
				case <-ctx.Done():
					return false
				}
			})
			arrived, answer := make(chan struct{}, 1), make(chan struct{})
			hung := newUpstream(t, func(http.ResponseWriter, *http.Request, int64) {
				arrived <- struct{}{}
				<-answer
			})
			t.Cleanup(func() { close(answer) }) // before the server's close
			gone := refused.Addr(t)
			sc := startSidecar(t, policyDoc("geo", "geo-service", `
retries: {attempts: 1, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}}
circuitBreaker: {consecutiveFailures: 1, openTimeout: 500ms, halfOpenRequests: 1}
outlierDetection: {consecutiveFailures: 0}
`), nil, withNamespace("shop"), tr.opt)
			setGeo(sc, gone)
			c := sc.Client()
			resp, body := get(t, c, "http://"+geo+"/open")
			expectSidecarError(t, resp, body, http.StatusBadGateway, "connect-failure", geo)
			sc.waitBreakerState(geo, "half-open", 10*time.Second)

			// P, the probe: refused, its retry waits in its backoff.
			hold.Store(true)
			type answered struct {
				code int
				kind string
				err  error
			}
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
			select {
			case <-waiting:
			case a := <-p:
				t.Fatalf("the probe was answered %+v before its retry's backoff", a)
			case <-time.After(10 * time.Second):
				t.Fatal("the probe's retry never waited")
			}

			// Q: once the retry's place is stale (openTimeout), a request
			// takes it as the probe, and waits at the hung pod.
			setGeo(sc, hung.Host())
			deadline := time.Now().Add(10 * time.Second)
		wait:
			for {
				select {
				case <-arrived:
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

			close(release)
			if a := <-p; a.err != nil || a.code != http.StatusBadGateway || a.kind != "connect-failure" {
				t.Fatalf("the probe: %+v, want its own 502 connect-failure", a)
			}
			if st := sc.breaker(geo).State; st != "open" {
				t.Errorf("breaker %s after the probe's refusal was the app's answer, want open", st)
			}
			if got := sc.metrics().value("minimesh_circuit_breaker_transitions_total", "destination", geo, "from", "half-open", "to", "open"); got != 1 {
				t.Errorf("transitions half-open->open = %v, want 1", got)
			}
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
	var hold atomic.Bool
	waiting, release := make(chan struct{}, 1), make(chan struct{})
	outbound.SetBackoffSleep(t, func(ctx context.Context, _ time.Duration, _ time.Time) bool {
		if !hold.Load() {
			return true
		}
		waiting <- struct{}{}
		select {
		case <-release:
			return true
		case <-ctx.Done():
			return false
		}
	})
	arrived, answer := make(chan struct{}, 1), make(chan struct{})
	hung := newUpstream(t, func(http.ResponseWriter, *http.Request, int64) {
		arrived <- struct{}{}
		<-answer
	})
	t.Cleanup(func() { close(answer) }) // before the server's close
	gone := refused.Addr(t)
	sc := startSidecar(t, policyDoc("geo", "geo-service", `
retries: {attempts: 1, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}}
circuitBreaker: {consecutiveFailures: 1, openTimeout: 300ms, halfOpenRequests: 1}
outlierDetection: {consecutiveFailures: 0}
`), nil, withNamespace("shop"))
	setGeo(sc, gone)
	c := sc.Client()
	resp, body := get(t, c, "http://"+geo+"/open")
	expectSidecarError(t, resp, body, http.StatusBadGateway, "connect-failure", geo)
	sc.waitBreakerState(geo, "half-open", 10*time.Second)

	// P, the probe, a CONNECT: refused, its retry waits in its backoff.
	hold.Store(true)
	type answered struct {
		code int
		kind string
		err  error
	}
	p := make(chan answered, 1)
	conn := dialSidecar(t, sc)
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
	select {
	case <-waiting:
	case a := <-p:
		t.Fatalf("the probe was answered %+v before its retry's backoff", a)
	case <-time.After(10 * time.Second):
		t.Fatal("the probe's retry never waited")
	}

	// Q takes the place the probe yielded, and waits at the hung pod.
	setGeo(sc, hung.Host())
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
	case <-arrived:
	case err := <-q:
		t.Fatalf("the request meant to take the probe's place was answered: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no request took the probe's place")
	}

	close(release)
	if a := <-p; a.err != nil || a.code != http.StatusBadGateway || a.kind != "connect-failure" {
		t.Fatalf("the probe: %+v, want its own 502 connect-failure", a)
	}
	if st := sc.breaker(geo).State; st != "open" {
		t.Errorf("breaker %s after the probe's refusal was the app's answer, want open", st)
	}
	if got := sc.metrics().value("minimesh_circuit_breaker_transitions_total", "destination", geo, "from", "half-open", "to", "open"); got != 1 {
		t.Errorf("transitions half-open->open = %v, want 1", got)
	}
}
