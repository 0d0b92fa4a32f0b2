package interception_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestInboundIdleConnectionsMemory: 1,000 callers' kept-alive HTTP
// connections, idle after one request each, cost the sidecar a bounded
// amount of memory (the figure is in docs/operations.md).
func TestInboundIdleConnectionsMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections")
	}
	const n = 1000
	p := newInboundPod(t, 1024)
	rss := func() float64 { return p.metric("process_resident_memory_bytes") / (1 << 20) }
	// Warm up, then measure the idle baseline.
	if _, err := p.get(fmt.Sprintf("http://%s:8080/warm", podV4), nil); err != nil {
		t.Fatal(err)
	}
	<-p.seen
	p.client.CloseIdleConnections()
	time.Sleep(500 * time.Millisecond)
	before := rss()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for range p.seen {
		}
	}()
	for i := range n {
		c, err := p.dial(podV4.String() + ":8080")
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /idle HTTP/1.1\r\nHost: app\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	time.Sleep(time.Second)
	if open := p.metric(`minimesh_connections_open{listener="inbound"}`); open != n {
		t.Errorf("%v inbound connections open, want %d", open, n)
	}
	after := rss()
	t.Logf("sidecar RSS: %.1f MiB idle, %.1f MiB with %d idle inbound keep-alive connections (%.1f KiB each)", before, after, n, (after-before)*1024/n)
	if after > 96 {
		t.Errorf("RSS %.1f MiB with %d idle connections", after, n)
	}
}
