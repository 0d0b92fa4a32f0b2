package outbound

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Each request through the handler leaves one access log line that ties
// it to its response (request ID), its trace (the app's trace ID) and its
// outcome, and never the query string.
func TestAccessLogLinePerRequest(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(500)
			return
		}
		_, _ = w.Write([]byte("hello"))
	}))
	defer up.Close()
	var out lockedBuf
	alog := telemetry.NewAccessLog(&out)
	m := telemetry.New(0)
	// A collector nobody answers: spans are made (and dropped), so the
	// log can carry their IDs.
	tr, err := telemetry.NewTracing(telemetry.TracingConfig{Endpoint: "127.0.0.1:1", SampleRatio: 1}, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = tr.Shutdown(ctx)
	})
	c := proxyFor(t, pol("geo", "geo-service", "1"), up.URL, func(cfg *Config) {
		cfg.AccessLog, cfg.Tracing, cfg.ServiceName, cfg.Metrics = alog, tr, "tenant-service", m
	}, "geo-service:80")

	const traceID = "0af7651916cd43dd8448eb211c80319c"
	send := func(path string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, "http://geo-service"+path, nil)
		req.Header.Set("traceparent", "00-"+traceID+"-b7ad6b7169203331-01")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	ok := send("/search?q=secret")
	failed := send("/fail")
	fast := send("/search") // the breaker (1 failure) is open now
	alog.Close()

	lines := strings.Split(strings.TrimSpace(out.b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d access log lines, want 3:\n%s", len(lines), out.b.String())
	}
	want := []struct {
		resp                  *http.Response
		path                  string
		status                float64
		errKind, breakerState string
		bytesOut              float64
	}{
		{ok, "/search", 200, "", "closed", 5},
		{failed, "/fail", 500, "", "open", 0},
		{fast, "/search", 503, wellknown.ErrorCircuitOpen, "open", -1},
	}
	for i, line := range lines {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %d not JSON: %v\n%s", i+1, err, line)
		}
		w := want[i]
		if e["request_id"] != w.resp.Header.Get(wellknown.HeaderRequestID) || e["request_id"] == "" {
			t.Errorf("line %d request_id %v, response header %q", i+1, e["request_id"], w.resp.Header.Get(wellknown.HeaderRequestID))
		}
		if e["trace_id"] != traceID || e["span_id"] == nil {
			t.Errorf("line %d trace_id %v span_id %v, want the app's trace %s", i+1, e["trace_id"], e["span_id"], traceID)
		}
		if e["path"] != w.path || e["status"] != w.status || e["service"] != "tenant-service" ||
			e["destination"] != "geo-service:80" || e["method"] != "GET" || e["attempts"] != 1.0 || e["breaker"] != w.breakerState {
			t.Errorf("line %d: %s", i+1, line)
		}
		if (e["error"] == nil) != (w.errKind == "") || (w.errKind != "" && e["error"] != w.errKind) {
			t.Errorf("line %d error %v, want %q", i+1, e["error"], w.errKind)
		}
		if w.bytesOut >= 0 && e["bytes_out"] != w.bytesOut {
			t.Errorf("line %d bytes_out %v, want %v", i+1, e["bytes_out"], w.bytesOut)
		}
		if strings.Contains(line, "secret") {
			t.Errorf("line %d carries the query string: %s", i+1, line)
		}
	}
}
