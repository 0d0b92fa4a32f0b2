package telemetry

import (
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/jaeger"
)

// TestCollectorOutage kills Jaeger while requests flow through the sidecar:
// requests must keep succeeding without getting slower (export never
// blocks a request), and the lost spans must be counted in
// minimesh_spans_dropped_total.
func TestCollectorOutage(t *testing.T) {
	j := jaeger.StartT(t)
	up := newUpstream(t, http.StatusOK)
	sc := startSidecar(t, sidecarOpts{
		OTLP:    j.OTLPAddr,
		Resolve: map[string]string{"orders-service:8000": up.Addr},
	})

	// Before the load: the exporter works, spans reach Jaeger.
	tp, traceID, parentID := newTraceparent()
	if resp, body := sc.get(t, "http://orders-service:8000/warmup", map[string]string{"traceparent": tp}); resp.StatusCode != http.StatusOK {
		t.Fatalf("warm-up request: %s %s", resp.Status, body)
	}
	sidecarSpan(t, j, traceID, parentID)

	// 50 requests/s for 6 s from one goroutine; Jaeger is killed after 2 s.
	const (
		rate     = 50
		duration = 6 * time.Second
		killAt   = 2 * time.Second
	)
	type result struct {
		at      time.Duration // since the start of the load
		latency time.Duration
		status  int
		err     error
	}
	results := make(chan result, rate*int(duration/time.Second)+rate)
	start := time.Now()
	go func() {
		defer close(results)
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for time.Since(start) < duration {
			<-tick.C
			at := time.Since(start)
			t0 := time.Now()
			resp, err := sc.Client.Get("http://orders-service:8000/orders")
			r := result{at: at}
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				r.status = resp.StatusCode
			}
			r.latency, r.err = time.Since(t0), err
			results <- r
		}
	}()
	time.Sleep(time.Until(start.Add(killAt)))
	j.Kill()
	killed := time.Since(start)

	var before, after []time.Duration
	failed := 0
	for r := range results {
		if r.err != nil || r.status != http.StatusOK {
			failed++
			if failed <= 5 {
				t.Errorf("request at %v: status %d, error %v", r.at, r.status, r.err)
			}
			continue
		}
		if r.at < killed {
			before = append(before, r.latency)
		} else {
			after = append(after, r.latency)
		}
	}
	if failed > 0 {
		t.Errorf("%d requests failed while the collector was down", failed)
	}
	if len(before) < rate || len(after) < 2*rate {
		t.Fatalf("only %d requests before and %d after the kill: the load did not run at %d/s", len(before), len(after), rate)
	}
	mb, ma := median(before), median(after)
	t.Logf("%d requests before the kill (median %v), %d after (median %v)", len(before), mb, len(after), ma)
	if ma > 2*mb+2*time.Millisecond {
		t.Errorf("median latency %v after the collector died, %v before: export slows requests", ma, mb)
	}

	// The exporter gives up on a batch after a few seconds of retries;
	// then the spans of the outage are counted as dropped.
	var dropped float64
	deadline := time.Now().Add(15 * time.Second)
	for {
		exp, err := sc.metrics()
		if err != nil {
			t.Fatal(err)
		}
		v, found := metricValue(exp, "minimesh_spans_dropped_total")
		if !found {
			t.Fatal("the sidecar's /metrics has no minimesh_spans_dropped_total")
		}
		if dropped = v; dropped > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if dropped == 0 {
		t.Errorf("minimesh_spans_dropped_total = 0 %v after the collector died", time.Since(start)-killed)
	}
	t.Logf("minimesh_spans_dropped_total = %v", dropped)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
