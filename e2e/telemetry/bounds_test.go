package telemetry

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/jaeger"
)

// TestLongURLSpansReachJaeger: the app calls with URLs of 60 KB (a head
// may be 64 KiB). The sidecar's batch of 128 such spans was a 7.7 MB
// export, which a real collector (Jaeger's OTLP receiver takes 4 MiB a
// message) refuses whole: those spans and the ordinary ones exported
// with them were lost and counted dropped. The sidecar now cuts a span's
// attributes (2,048 bytes): every span reaches Jaeger, url.full cut, and
// none is dropped. A span of a method that is not a standard one is named
// "HTTP" (it was named by the method: an operation name per method a
// client sends).
func TestLongURLSpansReachJaeger(t *testing.T) {
	j := jaeger.StartT(t)
	up := newUpstream(t, http.StatusOK)
	sc := startSidecar(t, sidecarOpts{
		OTLP:    j.OTLPAddr,
		Resolve: map[string]string{"orders-service:8000": up.Addr},
	})

	// 160 long-URL requests from 4 goroutines, then ordinary ones, one
	// with a method of its own; all within a batch's second or two.
	long := "http://orders-service:8000/" + strings.Repeat("a", 60000)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 40 {
				resp, err := sc.Client.Get(long)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("long-URL request: %v", err)
	}
	tp, traceID, parentID := newTraceparent()
	if resp, body := sc.get(t, "http://orders-service:8000/orders/1", map[string]string{"traceparent": tp}); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %s %s", resp.Status, body)
	}
	tpLong, traceLong, parentLong := newTraceparent()
	if resp, body := sc.get(t, long, map[string]string{"traceparent": tpLong}); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET long: %s %s", resp.Status, body)
	}
	tpFoo, traceFoo, parentFoo := newTraceparent()
	req, _ := http.NewRequest("FOO", "http://orders-service:8000/orders/2", nil)
	req.Header.Set("traceparent", tpFoo)
	resp, err := sc.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	span := sidecarSpan(t, j, traceID, parentID)
	wantTags(t, span, map[string]string{"url.full": "http://orders-service:8000/orders/1"})
	longSpan := sidecarSpan(t, j, traceLong, parentLong)
	if u, _ := longSpan.Tag("url.full"); len(u) > 2048 || !strings.HasPrefix(long, u) {
		t.Errorf("the long request's url.full is %d bytes (a prefix: %v), want its first 2,048 at most", len(u), strings.HasPrefix(long, u))
	}
	foo := sidecarSpan(t, j, traceFoo, parentFoo)
	if foo.OperationName != "HTTP" {
		t.Errorf("the span of a FOO request is named %q, want HTTP", foo.OperationName)
	}
	wantTags(t, foo, map[string]string{"http.request.method": "_OTHER", "http.request.method_original": "FOO"})

	// Nothing was lost on the way: the exports all went through.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := sc.metrics()
		if err != nil {
			t.Fatal(err)
		}
		dropped, _ := metricValue(m, "minimesh_spans_dropped_total")
		if dropped != 0 {
			t.Fatalf("minimesh_spans_dropped_total = %v, want 0: Jaeger refused exports", dropped)
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
}
