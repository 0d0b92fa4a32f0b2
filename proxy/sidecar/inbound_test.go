package sidecar_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
	"github.com/minimesh/minimesh/wellknown"
)

// TestInboundListener: with InboundAddr the sidecar serves an inbound
// listener under its own cap, shown as listener="inbound"; a connection
// made to it directly (not redirected) is reset; nothing sent through the
// outbound proxy reaches it (403); it drains with the rest. Without
// InboundAddr there is none.
func TestInboundListener(t *testing.T) {
	r := start(t, sidecar.Config{InboundAddr: "127.0.0.1:0", MaxInboundConnections: 8})
	addr := r.sc.InboundAddr()
	if addr == "" {
		t.Fatal("no inbound listener")
	}
	c, err := net.Dial("tcp", addr)
	if err == nil {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		if len(b) != 0 {
			t.Errorf("a direct connection to the inbound listener got %q", b)
		}
	}
	resp, err := r.client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorForbidden {
		t.Errorf("a request through the sidecar to its inbound listener: %s %q", resp.Status, resp.Header.Get(wellknown.HeaderError))
	}
	ms := r.metrics(t)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"minimesh_connections_open", []string{"listener", "inbound"}, -1},
		{"minimesh_connections_refused_total", []string{"listener", "inbound"}, 0},
		// "other": the listener's own port is never the app's (a label is
		// given only once a connection to the app on the port succeeded).
		{"minimesh_tcp_connections_total", []string{"direction", "inbound", "destination", "other", "result", "forbidden"}, -1},
	} {
		v, ok := ms.Value(c.name, c.labels...)
		if !ok || c.want >= 0 && v != c.want {
			t.Errorf("%s%v = %v (%v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}

	none := start(t, sidecar.Config{})
	if a := none.sc.InboundAddr(); a != "" {
		t.Errorf("inbound listener %s without InboundAddr", a)
	}
	if _, ok := none.metrics(t).Value("minimesh_connections_open", "listener", "inbound"); ok {
		t.Error("listener=\"inbound\" series without an inbound listener")
	}
}
