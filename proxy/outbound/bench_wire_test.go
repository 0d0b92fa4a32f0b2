package outbound

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// BenchmarkProxyGETWire is the benchmark harness's exchange in one
// process, with the sidecar's share of it as large as it can be: a client
// that writes fortio's request as bytes and reads the answer by its
// Content-Length, an upstream that answers fortio's 256-byte body the
// same way, and between them the handler behind the lean loop (the
// default) with the harness's policy (timeout, retries, breaker) and the
// access log. BenchmarkProxyGET's client and upstream are net/http's
// and cost more than the sidecar; here most of the CPU per op is its.
// The policy is e2e/bench's sidecarPolicy (peers.go), written out: that
// package is a main, so keep the two in step by hand.
func BenchmarkProxyGETWire(b *testing.B) { proxyGETWire(b, nil) }

// BenchmarkProxyGETWireTraced is BenchmarkProxyGETWire traced as issue 16
// measures the sidecar: a sample ratio of 0.01 (the recorded requests'
// spans go to a collector that is not there, and are dropped).
func BenchmarkProxyGETWireTraced(b *testing.B) {
	tr, err := telemetry.NewTracing(telemetry.TracingConfig{Endpoint: refused.Addr(b), SampleRatio: 0.01,
		ServiceName: "bench", Logger: slog.New(slog.DiscardHandler)}, telemetry.New(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = tr.Shutdown(ctx)
	})
	proxyGETWire(b, tr)
}

func proxyGETWire(b *testing.B, tr *telemetry.Tracing) {
	up := wireUpstream(b)
	pols, err := policy.Decode("p.yaml", []byte(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: bench-upstream}
spec:
  service: bench-upstream
  timeout: 20s
  retries:
    attempts: 2
    perTryTimeout: 10s
    retryOn: [connect-failure, "502", "503", "504"]
    backoff: {base: 25ms, max: 250ms}
    budget: {ratio: 0.2, minPerSecond: 10}
  circuitBreaker:
    consecutiveFailures: 5
    openTimeout: 5s
    halfOpenRequests: 2
    failOn: [5xx, connect-failure, timeout]
`))
	if err != nil {
		b.Fatal(err)
	}
	log := telemetry.NewAccessLog(io.Discard)
	b.Cleanup(log.Close)
	h := New(Config{Metrics: telemetry.New(0), AccessLog: log, Tracing: tr, Resolve: map[string]string{"bench-upstream:80": up}},
		policy.NewTable(pols, "default"))
	c, err := net.Dial("tcp", serveLean(b, h))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("GET http://bench-upstream/ HTTP/1.1\r\nHost: bench-upstream\r\nUser-Agent: fortio.org/fortio-1.66.5\r\n\r\n")
	br := bufio.NewReader(c)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if code, err := readWireResponse(br); err != nil || code != 200 {
			b.Fatalf("response: %d, %v", code, err)
		}
	}
}

// wireUpstream answers every request as fortio's server does, and
// returns its address.
func wireUpstream(b testing.TB) string {
	body := bytes.Repeat([]byte("x"), 256)
	resp := append([]byte("HTTP/1.1 200 OK\r\nContent-Length: 256\r\nContent-Type: application/octet-stream\r\n"+
		"Date: Wed, 02 Dec 2026 08:00:00 GMT\r\n\r\n"), body...)
	addr, _ := proxytest.RawServer(b, func(c net.Conn, _ int) {
		defer c.Close()
		br := bufio.NewReader(c)
		for readWireHead(br) == nil {
			if _, err := c.Write(resp); err != nil {
				return
			}
		}
	})
	return addr
}

// readWireHead reads one message head, up to its empty line.
func readWireHead(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			return nil
		}
	}
}

// readWireResponse reads one response framed by Content-Length and
// returns its status.
func readWireResponse(br *bufio.Reader) (int, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 {
		return 0, io.ErrUnexpectedEOF
	}
	code, _ := strconv.Atoi(string(line[9:12]))
	n := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
	if n < 0 {
		return 0, io.ErrUnexpectedEOF
	}
	_, err = br.Discard(n)
	return code, err
}
