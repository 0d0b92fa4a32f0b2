package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file holds -sweep (more fixed rates) and -http-proxy (the
// absolute-form path through HTTP_PROXY).

// rateList is a comma-separated list of request rates; each -sweep
// replaces the last, so that a later flag overrides the Makefile's.
type rateList []float64

func (l *rateList) String() string {
	var s []string
	for _, q := range *l {
		s = append(s, strconv.FormatFloat(q, 'f', -1, 64))
	}
	return strings.Join(s, ",")
}

func (l *rateList) Set(v string) error {
	*l = nil
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		q, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return fmt.Errorf("not a rate: %q", f)
		}
		*l = append(*l, q)
	}
	return nil
}

// intList is a comma-separated list of counts; each use replaces the
// last ("" empties it).
type intList []int

func (l *intList) String() string {
	var s []string
	for _, n := range *l {
		s = append(s, strconv.Itoa(n))
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	*l = nil
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return fmt.Errorf("not a count: %q", f)
		}
		*l = append(*l, n)
	}
	return nil
}

// rates are the fixed rates of a run, ascending: -qps and -sweep's.
func (o *options) rates() []float64 {
	rs := append([]float64{o.qps}, o.sweep...)
	slices.Sort(rs)
	return slices.Compact(rs)
}

// proxyHost names the upstream in the HTTP_PROXY path's URLs: Go's
// net/http (and so fortio's standard client) never sends a request for
// localhost or a loopback address through HTTP_PROXY, so the URL needs a
// name. The sidecar resolves it with --resolve; nginx, HAProxy and Caddy
// forward every request to the upstream whatever its URL says.
const proxyHost = "bench-upstream"

// proxyHostPort is proxyHost with the upstream's port.
func proxyHostPort(upstream string) string {
	_, port, _ := net.SplitHostPort(upstream)
	return net.JoinHostPort(proxyHost, port)
}

// proxyPath is how an -http-proxy target is loaded: fortio's standard
// client, the URL, and HTTP_PROXY.
type proxyPath struct {
	addr  string // where fortio connects: the proxy, or the upstream
	url   string
	proxy string // HTTP_PROXY; "": none (direct)
}

func (p *proxyPath) spec(qps float64, conns int, d time.Duration, res float64) loadSpec {
	l := loadSpec{qps: qps, conns: conns, duration: d, res: res, addr: p.addr,
		stdClient: true, url: p.url, proxy: p.proxy}
	if p.proxy != "" {
		// fortio looks the URL's host up before it starts (and would
		// dial that address without a proxy); the proxy is on loopback
		// too, so the dial through it is unchanged.
		l.resolve = "127.0.0.1"
	}
	return l
}

const proxySuffix = ":http-proxy"

// httpProxyTargets are the -http-proxy twins of direct, the sidecar and
// the peer proxies: the same processes, loaded by fortio's standard client
// through HTTP_PROXY (direct: no proxy, the same client), each checked
// with one absolute-form request first.
func httpProxyTargets(ctx context.Context, targets []*target, upstream string) ([]*target, error) {
	var out []*target
	for _, t := range targets {
		if !t.sweeps() || !slices.Contains(allKeys, t.key) {
			continue // the namespaces' targets and the -variant sidecars
		}
		tw := &target{key: t.key + proxySuffix, proc: t.proc, admin: t.admin, client: t.client,
			version: t.version, base: keyDirect + proxySuffix}
		if t.key == keyDirect {
			tw.name = "direct (std client)"
			tw.viaProxy = &proxyPath{addr: upstream, url: "http://" + upstream + "/"}
			tw.config = "fortio's standard client, no proxy: `GET /` to the upstream"
		} else {
			tw.name = t.name + " via HTTP_PROXY"
			tw.viaProxy = &proxyPath{addr: t.addr, url: "http://" + proxyHostPort(upstream) + "/", proxy: "http://" + t.addr}
			tw.config = "fortio's standard client with `HTTP_PROXY=http://" + t.addr + "`: `GET " + tw.viaProxy.url + " HTTP/1.1` (absolute-form)"
			if err := checkProxyPath(ctx, tw); err != nil {
				return nil, err
			}
		}
		tw.addr = tw.viaProxy.addr
		out = append(out, tw)
	}
	return out, nil
}

// checkProxyPath sends one absolute-form request through t's proxy and
// wants a 200; from the sidecar, with its X-Request-ID.
func checkProxyPath(ctx context.Context, t *target) error {
	pu, err := url.Parse(t.viaProxy.proxy)
	if err != nil {
		return err
	}
	c := &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{Proxy: http.ProxyURL(pu), DisableKeepAlives: true}}
	resp, err := getVia(ctx, c, t.viaProxy.url, "")
	if err != nil {
		return fmt.Errorf("%s: GET %s: %w", t.name, t.viaProxy.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: GET %s: %s (X-Minimesh-Error %q)", t.name, t.viaProxy.url, resp.Status, resp.Header.Get("X-Minimesh-Error"))
	}
	if strings.HasPrefix(t.key, keyMinimesh) && resp.Header.Get("X-Request-ID") == "" {
		return fmt.Errorf("%s: GET %s: no X-Request-ID: it did not come through the sidecar", t.name, t.viaProxy.url)
	}
	return nil
}
