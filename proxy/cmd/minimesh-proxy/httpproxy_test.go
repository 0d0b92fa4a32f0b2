package main

import (
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// TestHTTPProxyConfig: a fresh httpproxy.Config, the code behind
// http.ProxyFromEnvironment, with HTTP_PROXY pointing at the sidecar.
func TestHTTPProxyConfig(t *testing.T) {
	u := newUpstream(t)
	p := local(t, "--resolve", geo+"="+u.addr())
	cfg := &httpproxy.Config{HTTPProxy: "http://" + p.outbound}
	proxyFunc := cfg.ProxyFunc()

	// Loopback is never proxied: hence --resolve and a service name.
	loop, _ := url.Parse(u.URL)
	if pu, err := proxyFunc(loop); err != nil || pu != nil {
		t.Fatalf("ProxyFunc(%s) = %v, %v; want direct", u.URL, pu, err)
	}
	target, _ := url.Parse("http://" + geo + "/")
	if pu, err := proxyFunc(target); err != nil || pu == nil || pu.Host != p.outbound {
		t.Fatalf("ProxyFunc(%s) = %v, %v; want the sidecar", target, pu, err)
	}

	tr := &http.Transport{
		Proxy:             func(r *http.Request) (*url.URL, error) { return proxyFunc(r.URL) },
		DisableKeepAlives: true,
	}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(target.String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id := resp.Header.Get("X-Request-ID")
	if resp.StatusCode != 200 || string(body) != "hello from geo\n" || id == "" || resp.Header.Get("X-Seen-Request-ID") != id {
		t.Fatalf("through the sidecar: %d %q X-Request-ID %q, upstream saw %q", resp.StatusCode, body, id, resp.Header.Get("X-Seen-Request-ID"))
	}
}
