package outbound_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
)

// TestTimeoutWholeRequest: an upstream that never answers gets 504
// timeout from the sidecar after the policy's timeout, and its request is
// cancelled.
func TestTimeoutWholeRequest(t *testing.T) {
	cancelled := make(chan struct{})
	u := newUpstream(t, func(_ http.ResponseWriter, r *http.Request, _ int64) {
		hang(r)
		close(cancelled)
	})
	sc := startSidecar(t, policyDoc("geo", "geo-service", "timeout: 300ms"), resolve(u.Host(), geo))
	start := time.Now()
	resp, body := get(t, sc.Client(), "http://"+geo+"/slow")
	elapsed := time.Since(start)
	e := expectSidecarError(t, resp, body, http.StatusGatewayTimeout, "timeout", geo)
	if e.RequestID == "" || e.RequestID != resp.Header.Get("X-Request-ID") {
		t.Errorf("body requestId %q, header X-Request-ID %q: want the same ID", e.RequestID, resp.Header.Get("X-Request-ID"))
	}
	if elapsed < 300*time.Millisecond || elapsed > time.Second {
		t.Errorf("504 after %v, want about the 300ms timeout", elapsed)
	}
	select {
	case <-cancelled:
	case <-time.After(time.Second):
		t.Fatal("the upstream request was not cancelled at the timeout")
	}
	if got := u.hits.Load(); got != 1 {
		t.Fatalf("upstream saw %d requests, want 1", got)
	}
	if got := sc.metric("minimesh_requests_total", "destination", geo, "code", "504"); got != 1 {
		t.Errorf("requests_total{504} = %v, want 1", got)
	}
}

// TestClientGoneCancelsUpstream: an app that gives up on a request (its
// context is cancelled) makes the sidecar cancel the upstream request,
// which is neither a breaker failure nor an error answer.
func TestClientGoneCancelsUpstream(t *testing.T) {
	entered := make(chan struct{})
	cancelled := make(chan struct{})
	u := newUpstream(t, func(_ http.ResponseWriter, r *http.Request, _ int64) {
		close(entered)
		<-r.Context().Done()
		close(cancelled)
	})
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}"), resolve(u.Host(), geo))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+geo+"/report", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := sc.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-entered:
	case <-time.After(2 * time.Second):
		t.Fatal("the request never reached the upstream")
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v, want context.Canceled", err)
	}
	select {
	case <-cancelled:
	case <-time.After(time.Second):
		t.Fatal("the upstream did not see its request cancelled within 1s of the client leaving")
	}
	// Recorded as nginx's 499, and not held against the upstream: one
	// failure would have opened this breaker.
	sc.waitMetric(1, 2*time.Second, "minimesh_requests_total", "destination", geo, "code", "499")
	if st := sc.breaker(geo); st.State != "closed" || st.Counts.TotalFailures != 0 {
		t.Fatalf("breaker %+v, want closed without failures", st)
	}
}

// TestClientGoneMidBody: an app that leaves while the response body is
// streaming also cancels the upstream request.
func TestClientGoneMidBody(t *testing.T) {
	cancelled := make(chan struct{})
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("first line\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(cancelled)
	})
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+geo+"/stream", nil)
	resp, err := sc.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("first line\n"))
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-cancelled:
	case <-time.After(time.Second):
		t.Fatal("the upstream did not see its request cancelled within 1s of the client leaving")
	}
}

// TestConnectFailure: an upstream that refuses connections gets 502
// connect-failure with a JSON body naming it.
func TestConnectFailure(t *testing.T) {
	sc := startSidecar(t, "", resolve(refused.Addr(t), geo))
	resp, body := get(t, sc.Client(), "http://"+geo+"/")
	e := expectSidecarError(t, resp, body, http.StatusBadGateway, "connect-failure", geo)
	if !uuidRE.MatchString(e.RequestID) || e.RequestID != resp.Header.Get("X-Request-ID") {
		t.Errorf("requestId %q, X-Request-ID %q: want one generated UUID in both", e.RequestID, resp.Header.Get("X-Request-ID"))
	}
	if got := sc.metric("minimesh_requests_total", "destination", geo, "code", "502"); got != 1 {
		t.Errorf("requests_total{502} = %v, want 1", got)
	}
	if st := sc.breaker(geo); st.Counts.TotalFailures != 1 {
		t.Errorf("breaker counted %d failures, want 1", st.Counts.TotalFailures)
	}
}

// TestTimeoutCoversBody: the whole-request timeout covers the response
// body: an upstream that sends its headers and then stalls mid-body has
// its response cut at the timeout and its request cancelled. The app
// never sees a clean end of a short body: a streamed (chunked) response
// ends with an error after the bytes that came; a response with a
// Content-Length, which the sidecar had not flushed yet, ends with the
// connection closed.
func TestTimeoutCoversBody(t *testing.T) {
	for _, withLength := range []bool{false, true} {
		name := "chunked"
		if withLength {
			name = "content-length"
		}
		t.Run(name, func(t *testing.T) {
			cancelled := make(chan struct{})
			u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
				if withLength {
					w.Header().Set("Content-Length", "1000")
				}
				_, _ = w.Write([]byte("the first 20 bytes.."))
				w.(http.Flusher).Flush()
				hang(r)
				close(cancelled)
			})
			sc := startSidecar(t, policyDoc("geo", "geo-service", "timeout: 300ms"), resolve(u.Host(), geo))
			start := time.Now()
			resp, err := sc.Client().Get("http://" + geo + "/slow-body")
			if err == nil {
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d, want the upstream's 200", resp.StatusCode)
				}
				var body []byte
				body, err = io.ReadAll(resp.Body)
				if err == nil {
					t.Fatalf("body ended cleanly after %d bytes; want an error for the truncated body", len(body))
				}
				if string(body) != "the first 20 bytes.." {
					t.Errorf("app got %q before the cut", body)
				}
			} else if !withLength {
				t.Fatalf("a streamed response failed before its headers: %v", err)
			}
			if elapsed := time.Since(start); elapsed < 300*time.Millisecond || elapsed > time.Second {
				t.Errorf("response cut after %v, want about the 300ms timeout", elapsed)
			}
			select {
			case <-cancelled:
			case <-time.After(time.Second):
				t.Fatal("the upstream request was not cancelled at the timeout")
			}
		})
	}
}
