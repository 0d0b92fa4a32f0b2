package inbound

import (
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/minimesh/minimesh/proxy/internal/otlptest"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestServerSpan: a request into the pod is a SERVER span that continues
// the caller's trace (its traceparent), with the request's attributes; the
// app's request carries the sidecar's span as its parent, so the app's
// own server span hangs under it. A 5xx of the app is an error span; a
// 4xx is not (it is the caller's error, by the HTTP conventions).
func TestServerSpan(t *testing.T) {
	col := otlptest.Start(t)
	endpoint := col.Addr
	tr, err := telemetry.NewTracing(telemetry.TracingConfig{Endpoint: endpoint, SampleRatio: 1, ServiceName: "tenant"}, telemetry.New(0))
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/fail":
			w.WriteHeader(500)
		case "/missing":
			w.WriteHeader(404)
		}
	}), Config{Tracing: tr})

	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	tests := []struct {
		path   string
		code   int
		parent string // the incoming traceparent, or ""
		error  bool
	}{
		{"/ok", 200, "00-" + traceID + "-" + parentID + "-01", false},
		{"/fail", 500, "00-" + traceID + "-" + parentID + "-01", true},
		{"/missing", 404, "", false},
	}
	appParents := map[string]string{}
	for _, tt := range tests {
		req, _ := http.NewRequest("GET", "http://"+r.front+tt.path, nil)
		req.Host = "tenant-service:8000"
		req.Header.Set("User-Agent", "caller/1")
		if tt.parent != "" {
			req.Header.Set("traceparent", tt.parent)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code {
			t.Fatalf("%s: %d", tt.path, resp.StatusCode)
		}
		seen := <-r.seen
		appParents[tt.path] = seen.Header.Get("traceparent")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	spans := col.Spans()
	if len(spans) != len(tests) {
		t.Fatalf("%d spans exported, want %d", len(spans), len(tests))
	}
	for i, tt := range tests {
		s := spans[i]
		attrs := map[string]string{}
		for _, kv := range s.Attributes {
			if sv := kv.Value.GetStringValue(); sv != "" {
				attrs[kv.Key] = sv
			} else {
				attrs[kv.Key] = strings.TrimSpace(kv.Value.String())
			}
		}
		if s.Kind != tracepb.Span_SPAN_KIND_SERVER || s.Name != "GET" {
			t.Errorf("%s: span %q kind %v, want a SERVER span named GET", tt.path, s.Name, s.Kind)
		}
		if tt.parent != "" && (hex.EncodeToString(s.TraceId) != traceID || hex.EncodeToString(s.ParentSpanId) != parentID) {
			t.Errorf("%s: span in trace %x under %x, want the caller's %s under %s", tt.path, s.TraceId, s.ParentSpanId, traceID, parentID)
		}
		if tt.parent == "" && len(s.ParentSpanId) != 0 {
			t.Errorf("%s: a new trace's span has a parent %x", tt.path, s.ParentSpanId)
		}
		want := "00-" + hex.EncodeToString(s.TraceId) + "-" + hex.EncodeToString(s.SpanId) + "-01"
		if appParents[tt.path] != want {
			t.Errorf("%s: the app saw traceparent %q, want the sidecar's span %q", tt.path, appParents[tt.path], want)
		}
		if attrs["url.path"] != tt.path || attrs["http.request.method"] != "GET" || attrs["server.address"] != "tenant-service" ||
			attrs["client.address"] != "127.0.0.1" || attrs["user_agent.original"] != "caller/1" || attrs["minimesh.request_id"] == "" ||
			!strings.Contains(attrs["http.response.status_code"], strconv.Itoa(tt.code)) {
			t.Errorf("%s: attributes %v", tt.path, attrs)
		}
		if isErr := s.Status != nil && s.Status.Code == tracepb.Status_STATUS_CODE_ERROR; isErr != tt.error {
			t.Errorf("%s: error status %v, want %v", tt.path, s.Status, tt.error)
		}
	}
}

// TestServerSpanNotRecorded: a caller's trace it decided not to record
// goes on to the app under a span of the sidecar's own (a new span ID,
// not sampled), which no collector receives: the span context Begin makes
// without the SDK, on the inbound side.
func TestServerSpanNotRecorded(t *testing.T) {
	col := otlptest.Start(t)
	endpoint := col.Addr
	tr, err := telemetry.NewTracing(telemetry.TracingConfig{Endpoint: endpoint, SampleRatio: 1, ServiceName: "tenant"}, telemetry.New(0))
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), Config{Tracing: tr})
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	seenSpans := map[string]bool{}
	for range 3 {
		req, _ := http.NewRequest("GET", "http://"+r.front+"/ok", nil)
		req.Host = "tenant-service:8000"
		req.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-00")
		req.Header.Set("tracestate", "vendor=v1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		seen := <-r.seen
		tp := seen.Header.Get("traceparent")
		parts := strings.Split(tp, "-")
		if len(parts) != 4 || parts[0] != "00" || parts[1] != traceID || parts[3] != "00" ||
			len(parts[2]) != 16 || parts[2] == parentID || parts[2] == "0000000000000000" {
			t.Fatalf("the app saw traceparent %q, want the caller's trace %s under a new span of the sidecar's, not sampled", tp, traceID)
		}
		if seenSpans[parts[2]] {
			t.Errorf("span ID %s twice", parts[2])
		}
		seenSpans[parts[2]] = true
		if ts := seen.Header.Get("tracestate"); ts != "vendor=v1" {
			t.Errorf("the app saw tracestate %q, want the caller's", ts)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if spans := col.Spans(); len(spans) != 0 {
		t.Errorf("%d spans exported for requests the caller did not sample", len(spans))
	}
}
