package soak

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestIdleConnectionCost: an idle keep-alive client connection costs the
// built sidecar its goroutine's stack, which the collector halves to 4 KB
// while it waits, and a few hundred bytes of heap: neither a read nor a
// write buffer (docs/benchmarks.md, "Per idle connection"). Before, each
// held both (8 KB) and a stack of 8 KB the collector could not shrink.
func TestIdleConnectionCost(t *testing.T) {
	bin := sidecarBinary(t)
	sc := startSidecar(t, bin, t.TempDir(), map[string]string{"svc-ok:8000": serveHTTP(t, okUpstream)})

	const n = 800 // under --max-connections' 1,024
	before := sc.memory(t)
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range n {
		c, err := net.Dial("tcp", sc.outbound)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		// One request each, through the whole outbound path, then idle.
		if _, err := io.WriteString(c, "GET /idle HTTP/1.1\r\nHost: svc-ok:8000\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Upstream") != "ok" || resp.Close {
			t.Fatalf("connection %d: %s, X-Upstream %q, close %v", i, resp.Status, resp.Header.Get("X-Upstream"), resp.Close)
		}
	}
	after := sc.memory(t)
	stack := (after.stack - before.stack) / n
	heap := (after.heap - before.heap) / n
	t.Logf("per idle connection: stack %d bytes, live heap %d bytes (%d goroutines)", stack, heap, after.goroutines)
	// At least one goroutine per connection; "before" may count a few
	// that come and go (the admin connection's, a timer's writer): under
	// CI's load it held 2 more than after (816 for 800 connections, 18
	// before).
	if after.goroutines < before.goroutines+n-8 {
		t.Fatalf("%d goroutines with %d connections open, %d before: the connections are not served", after.goroutines, n, before.goroutines)
	}
	if stack > 5<<10 {
		t.Errorf("stack %d bytes per idle connection, want at most 5 KiB: the collector did not halve the stacks of the waiting goroutines (too deep a wait?)", stack)
	}
	if heap > 5<<10 {
		t.Errorf("live heap %d bytes per idle connection, want at most 5 KiB: buffers held while idle?", heap)
	}
}

// memory are the sidecar's stacks and live heap after two collections
// (each halves a stack at most once).
type memory struct{ stack, heap, goroutines int64 }

func (s *sidecar) memory(t *testing.T) memory {
	t.Helper()
	for range 2 {
		if code, body := s.get("/debug/pprof/heap?gc=1"); code != http.StatusOK {
			t.Fatalf("/debug/pprof/heap?gc=1: %d %s", code, body)
		}
	}
	code, body := s.get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	m := memory{
		stack:      int64(value(mfs["go_memstats_stack_inuse_bytes"])),
		heap:       int64(value(mfs["go_memstats_heap_alloc_bytes"])),
		goroutines: int64(value(mfs["go_goroutines"])),
	}
	if m.stack == 0 || m.heap == 0 || m.goroutines == 0 {
		t.Fatalf("/metrics without the Go runtime's figures: %+v", m)
	}
	return m
}
