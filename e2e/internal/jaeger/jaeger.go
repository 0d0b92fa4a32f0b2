// Package jaeger runs a real Jaeger v2 (built by scripts/tools.sh from the
// tools/jaeger module) for the end-to-end tests, and reads traces back
// through its query API.
//
// Jaeger v2 started without --config is all-in-one on fixed ports (OTLP
// :4317 and :4318, query :16686 and :16685, and eight more), which would
// collide between tests. Start writes a small config instead: memory
// storage, the OTLP/gRPC receiver, the query extension and the health check,
// each on a free loopback port, and no telemetry listener.
package jaeger

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/freeport"
)

// Jaeger is a running Jaeger v2.
type Jaeger struct {
	// OTLPAddr is the OTLP/gRPC receiver, host:port (insecure).
	OTLPAddr string
	// QueryURL is the base URL of the query API and UI.
	QueryURL string
	// HealthURL is the health check (GET: 200 once every component runs).
	HealthURL string

	proc   *proc.Proc
	dir    string
	client *http.Client
}

// Options are the optional parts of Start.
type Options struct {
	// Path of the jaeger binary; empty: tools.Find("jaeger").
	Path string
	// StartTimeout bounds the wait for readiness (default 20 s).
	StartTimeout time.Duration
	// MaxTraces bounds the memory store (default 100000).
	MaxTraces int
	// OTLPHost is the address the OTLP receiver listens on (default
	// loopback); a cluster's pods reach the host at its bridge gateway.
	OTLPHost string
}

// config is Jaeger's configuration (an OpenTelemetry Collector config):
// the all-in-one components that the tests need, on the given ports.
const config = `# written by minimesh's e2e/internal/jaeger
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: %[1]s
  jaeger_query:
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: %[2]s
    grpc:
      endpoint: %[3]s
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: %[5]d
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %[4]s
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// Start starts Jaeger on free loopback ports and waits until it is ready.
// A port taken by someone else between choosing and binding it costs a
// retry with other ports.
func Start(opt Options) (*Jaeger, error) {
	if opt.Path == "" {
		p, err := tools.Find("jaeger")
		if err != nil {
			return nil, err
		}
		opt.Path = p
	}
	if opt.StartTimeout <= 0 {
		opt.StartTimeout = 20 * time.Second
	}
	if opt.MaxTraces <= 0 {
		opt.MaxTraces = 100000
	}
	var err error
	for range 3 {
		var j *Jaeger
		j, err = start(opt)
		if err == nil {
			return j, nil
		}
		if !freeport.Taken(err) {
			break
		}
	}
	return nil, err
}

func start(opt Options) (*Jaeger, error) {
	addrs, err := freeport.Addrs(4)
	if err != nil {
		return nil, err
	}
	health, query, queryGRPC, otlp := addrs[0], addrs[1], addrs[2], addrs[3]
	if opt.OTLPHost != "" {
		_, port, _ := net.SplitHostPort(otlp)
		otlp = net.JoinHostPort(opt.OTLPHost, port)
	}
	dir, err := os.MkdirTemp("", "minimesh-jaeger-")
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, health, query, queryGRPC, otlp, opt.MaxTraces), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p, err := proc.Start("jaeger", opt.Path, []string{"--config", cfg}, proc.Options{Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	j := &Jaeger{
		OTLPAddr:  otlp,
		QueryURL:  "http://" + query,
		HealthURL: "http://" + health + "/status",
		proc:      p,
		dir:       dir,
		client:    &http.Client{Timeout: 5 * time.Second},
	}
	if err := p.WaitReady(opt.StartTimeout, j.ready); err != nil {
		j.Stop()
		return nil, err
	}
	return j, nil
}

// StartT starts Jaeger for a test and stops it in t.Cleanup. Without the
// jaeger binary the test is skipped (failed under CI=true).
func StartT(t testing.TB) *Jaeger {
	t.Helper()
	path := proc.NeedTool(t, "jaeger")
	j, err := Start(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out := j.Output(); t.Failed() && out != "" {
			t.Logf("jaeger's last output:\n%s", out)
		}
		j.Stop()
	})
	return j
}

// ready: the health check says every component runs, and the OTLP port
// accepts connections.
func (j *Jaeger) ready() error {
	resp, err := j.client.Get(j.HealthURL)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", j.HealthURL, resp.Status, bytes.TrimSpace(body))
	}
	c, err := net.DialTimeout("tcp", j.OTLPAddr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// Stop ends Jaeger (SIGTERM, then SIGKILL) and removes its files. It may
// be called more than once.
func (j *Jaeger) Stop() {
	j.proc.Stop()
	os.RemoveAll(j.dir)
}

// Kill ends Jaeger at once with SIGKILL, as a crash of the collector
// would; Stop still cleans up afterwards.
func (j *Jaeger) Kill() { j.proc.Kill() }

// Alive fails when Jaeger has exited.
func (j *Jaeger) Alive() error { return j.proc.Alive() }

// Output is Jaeger's last log output.
func (j *Jaeger) Output() string { return j.proc.Output() }

// ErrNotFound: Jaeger holds no trace with that id (yet).
var ErrNotFound = errors.New("trace not found")

// Span is a span as the query API (GET /api/traces/{id}) shows it, with its
// process resolved.
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	StartTime     int64       `json:"startTime"` // µs since the epoch
	Duration      int64       `json:"duration"`  // µs
	Tags          []KeyValue  `json:"tags"`
	ProcessID     string      `json:"processID"`
	Warnings      []string    `json:"warnings"`
	// Process is processes[ProcessID] of the trace.
	Process Process `json:"-"`
}

// Reference links a span to another: refType CHILD_OF (the parent) or
// FOLLOWS_FROM.
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// KeyValue is a tag: type is string, bool, int64, float64 or binary.
// Numbers are json.Number.
type KeyValue struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// Process is the emitter of a span: OpenTelemetry's resource, with
// service.name as ServiceName and the other attributes as tags.
type Process struct {
	ServiceName string     `json:"serviceName"`
	Tags        []KeyValue `json:"tags"`
}

// ParentID is the span id of the CHILD_OF reference, or "".
func (s Span) ParentID() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Tag returns the value of the span's tag key as text (numbers as written,
// bools as true/false), and whether it is there.
func (s Span) Tag(key string) (string, bool) { return lookup(s.Tags, key) }

// Tag returns the value of the process's tag key as text.
func (p Process) Tag(key string) (string, bool) { return lookup(p.Tags, key) }

func lookup(tags []KeyValue, key string) (string, bool) {
	for _, kv := range tags {
		if kv.Key == key {
			return fmt.Sprint(kv.Value), true
		}
	}
	return "", false
}

type traceResponse struct {
	Data []struct {
		TraceID   string             `json:"traceID"`
		Spans     []Span             `json:"spans"`
		Processes map[string]Process `json:"processes"`
	} `json:"data"`
	Errors []struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	} `json:"errors"`
}

// Trace returns the spans of trace traceID (32 hex digits); ErrNotFound
// when Jaeger has none.
func (j *Jaeger) Trace(traceID string) ([]Span, error) {
	return j.TraceContext(context.Background(), traceID)
}

// TraceContext is Trace with a context.
func (j *Jaeger) TraceContext(ctx context.Context, traceID string) ([]Span, error) {
	u := j.QueryURL + "/api/traces/" + traceID
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("GET %s: %w", u, ErrNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytes.TrimSpace(body))
	}
	var tr traceResponse
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&tr); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if len(tr.Errors) > 0 {
		return nil, fmt.Errorf("GET %s: error %d: %s", u, tr.Errors[0].Code, tr.Errors[0].Msg)
	}
	var spans []Span
	for _, d := range tr.Data {
		for _, s := range d.Spans {
			s.Process = d.Processes[s.ProcessID]
			spans = append(spans, s)
		}
	}
	if len(spans) == 0 {
		return nil, fmt.Errorf("GET %s: %w", u, ErrNotFound)
	}
	return spans, nil
}

// WaitTrace polls Trace until the trace has at least one span, for at most
// timeout.
func (j *Jaeger) WaitTrace(traceID string, timeout time.Duration) ([]Span, error) {
	return j.WaitTraceFunc(traceID, timeout, func([]Span) bool { return true })
}

// WaitTraceFunc polls Trace until done accepts its spans, for at most
// timeout, and returns the last spans seen.
func (j *Jaeger) WaitTraceFunc(traceID string, timeout time.Duration, done func([]Span) bool) ([]Span, error) {
	deadline := time.Now().Add(timeout)
	for {
		spans, err := j.Trace(traceID)
		if err == nil && done(spans) {
			return spans, nil
		}
		if err == nil {
			err = fmt.Errorf("trace %s: %d spans, not yet the ones wanted", traceID, len(spans))
		}
		if aerr := j.Alive(); aerr != nil {
			return spans, aerr
		}
		if time.Now().After(deadline) {
			return spans, fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
