package sidecar_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// TestOtherLoopback: a sidecar on 127.0.0.1 also serves [::1] on the same
// port (where iptables REDIRECT sends IPv6 connections), under one
// connection cap; without IPv6 loopback it starts all the same.
func TestOtherLoopback(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs IPv6 loopback ([::1]): %v", err)
		}
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		ln.Close()
	}
	u := newUpstream(t)
	r := start(t, sidecar.Config{MaxConnections: 1, Resolve: map[string]string{"geo:80": u.Host()}})
	_, port, _ := net.SplitHostPort(r.sc.OutboundAddr())
	if !strings.Contains(r.log.String(), `"outbound_other_loopback":"[::1]:`+port+`"`) {
		t.Errorf("ready line names no [::1] listener:\n%s", r.log.String())
	}
	proxy := &url.URL{Scheme: "http", Host: "[::1]:" + port}
	tr := &http.Transport{Proxy: http.ProxyURL(proxy)}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get("http://geo/")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body) // read whole, the connection is kept
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("through [::1]: %s", resp.Status)
	}
	// The kept-alive connection on [::1] holds the one place under the
	// cap: a connection to 127.0.0.1 is refused (reset).
	// The reset may come before the dial has returned.
	v4, err := net.Dial("tcp", r.sc.OutboundAddr())
	if errors.Is(err, syscall.ECONNRESET) {
		t.Logf("refused while dialling: %v", err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer v4.Close()
	_ = v4.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = v4.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
		t.Fatalf("a second connection was accepted past the shared cap of 1: %v", err)
	}
	t.Logf("refused after %v: %v", time.Since(start), err)
}
