package outbound

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
)

// heldConn stands for an idle upstream connection: the pool only closes
// it (nil Conn: any other call panics).
type heldConn struct {
	net.Conn
	name   string
	closed atomic.Bool
}

func (c *heldConn) Close() error { c.closed.Store(true); return nil }

// poolRig drives a fast transport's pool without the network: keep hands
// it a connection as a request's end does (release), take asks for one
// of a key (get), and order lists what it keeps, oldest first, checking
// that its per-key lists, its list of all and its count agree.
type poolRig struct {
	t     *testing.T
	ft    *fastTransport
	conns map[string]*heldConn
}

func newPoolRig(t *testing.T, perKey, total int) *poolRig {
	ft := newFastTransport(func(context.Context, string, string) (net.Conn, error) {
		t.Error("dialled: the pool had no connection where one was kept")
		return nil, io.EOF
	}, http.DefaultTransport, perKey)
	ft.maxTotal = total
	t.Cleanup(ft.CloseIdleConnections)
	return &poolRig{t: t, ft: ft, conns: map[string]*heldConn{}}
}

func (r *poolRig) keep(key, name string) {
	hc := r.conns[name]
	if hc == nil {
		hc = &heldConn{name: name}
		r.conns[name] = hc
	}
	r.ft.release(&fconn{Conn: hc, key: key, br: bufio.NewReader(hc)}, func() bool { return true }, true)
}

func (r *poolRig) take(key string) string {
	c, reused, err := r.ft.get(context.Background(), key, 0, time.Time{}, nil)
	if err != nil || !reused {
		r.t.Fatalf("take %s: reused %v, %v", key, reused, err)
	}
	return c.Conn.(*heldConn).name
}

func (r *poolRig) order() []string {
	r.ft.mu.Lock()
	defer r.ft.mu.Unlock()
	var all []string
	pos := map[*fconn]int{}
	for c := r.ft.oldest; c != nil; c = c.newer {
		if c.newer != nil && c.newer.older != c {
			r.t.Fatalf("list of all broken after %s", c.Conn.(*heldConn).name)
		}
		pos[c] = len(all)
		all = append(all, c.Conn.(*heldConn).name)
	}
	inLists := 0
	for key, l := range r.ft.idle {
		for i, c := range l.conns {
			p, ok := pos[c]
			if !ok || c.key != key {
				r.t.Fatalf("%s kept under %s but not in the list of all", c.Conn.(*heldConn).name, key)
			}
			if i > 0 && pos[l.conns[i-1]] > p {
				r.t.Fatalf("%s's list is not in the order of the list of all", key)
			}
		}
		inLists += len(l.conns)
	}
	if inLists != len(all) || r.ft.kept != len(all) {
		r.t.Fatalf("%d kept in the keys' lists, %d in the list of all, count %d", inLists, len(all), r.ft.kept)
	}
	return all
}

func (r *poolRig) closed() []string {
	var names []string
	for name, hc := range r.conns {
		if hc.closed.Load() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// TestFastPoolTotalCap: the fast transport keeps at most maxTotal idle
// connections of all keys together, closing the one kept longest
// whatever its key, and counts each so closed. Before, each key kept up
// to 256 and nothing bounded their sum: 5,000 authorities held 5,014
// descriptors.
func TestFastPoolTotalCap(t *testing.T) {
	for _, tc := range []struct {
		name          string
		perKey, total int
		run           func(r *poolRig)
		kept          []string // oldest first
		closed        []string
		evicted       uint64
		keys          int // lists left in the map
	}{
		{
			name: "more keys than the cap", perKey: 4, total: 4,
			run: func(r *poolRig) {
				for i := range 10 {
					r.keep(fmt.Sprintf("h%d:80", i), fmt.Sprintf("c%d", i))
				}
			},
			kept:   []string{"c6", "c7", "c8", "c9"},
			closed: []string{"c0", "c1", "c2", "c3", "c4", "c5"}, evicted: 6, keys: 4,
		},
		{
			name: "one key's own oldest", perKey: 8, total: 3,
			run: func(r *poolRig) {
				for _, n := range []string{"a1", "a2", "a3", "a4"} {
					r.keep("a:80", n)
				}
			},
			kept: []string{"a2", "a3", "a4"}, closed: []string{"a1"}, evicted: 1, keys: 1,
		},
		{
			name: "a connection taken and kept again is the newest", perKey: 4, total: 3,
			run: func(r *poolRig) {
				r.keep("a:80", "a1")
				r.keep("b:80", "b1")
				r.keep("c:80", "c1")
				if got := r.take("a:80"); got != "a1" {
					r.t.Fatalf("took %s from a, want a1", got)
				}
				r.keep("a:80", "a1")
				r.keep("d:80", "d1")
			},
			kept: []string{"c1", "a1", "d1"}, closed: []string{"b1"}, evicted: 1, keys: 3,
		},
		{
			name: "the per-key cap refuses before the total evicts", perKey: 2, total: 3,
			run: func(r *poolRig) {
				r.keep("a:80", "a1")
				r.keep("a:80", "a2")
				r.keep("b:80", "b1")
				r.keep("a:80", "a3")
			},
			kept: []string{"a1", "a2", "b1"}, closed: []string{"a3"}, evicted: 0, keys: 2,
		},
		{
			name: "connections the sweep drops leave their places", perKey: 4, total: 2,
			run: func(r *poolRig) {
				r.keep("a:80", "a1")
				r.keep("b:80", "b1")
				r.ft.mu.Lock()
				gone := r.ft.drop(func(c *fconn) bool { return c.Conn.(*heldConn).name == "a1" })
				r.ft.mu.Unlock()
				for _, c := range gone {
					c.Close()
				}
				r.keep("c:80", "c1")
			},
			kept: []string{"b1", "c1"}, closed: []string{"a1"}, evicted: 0, keys: 2,
		},
		{
			name: "taken from the newest end of a key", perKey: 4, total: 4,
			run: func(r *poolRig) {
				r.keep("a:80", "a1")
				r.keep("b:80", "b1")
				r.keep("a:80", "a2")
				if got := r.take("a:80"); got != "a2" {
					r.t.Fatalf("took %s from a, want a2 (the newest)", got)
				}
				r.keep("c:80", "c1")
			},
			kept: []string{"a1", "b1", "c1"}, closed: nil, evicted: 0, keys: 3,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newPoolRig(t, tc.perKey, tc.total)
			tc.run(r)
			if got := r.order(); !slices.Equal(got, tc.kept) {
				t.Errorf("kept %v (oldest first), want %v", got, tc.kept)
			}
			if got := r.closed(); !slices.Equal(got, tc.closed) {
				t.Errorf("closed %v, want %v", got, tc.closed)
			}
			if got := r.ft.evicted.Load(); got != tc.evicted {
				t.Errorf("evicted count %d, want %d", got, tc.evicted)
			}
			r.ft.mu.Lock()
			keys := len(r.ft.idle)
			r.ft.mu.Unlock()
			if keys != tc.keys {
				t.Errorf("%d keys' lists in the pool, want %d (one emptied by an eviction is forgotten)", keys, tc.keys)
			}
		})
	}
}

// TestPoolKeyFoldsCase: an authority's host compares without case, as
// DNS names do, and an all-lower-case one is its own key without an
// allocation; an IPv6 zone keeps its case (interface names have one).
func TestPoolKeyFoldsCase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"geo-service:8000", "geo-service:8000"},
		{"GEO-Service:8000", "geo-service:8000"},
		{"LOCALHOST:80", "localhost:80"},
		{"10.0.0.1:80", "10.0.0.1:80"},
		{"[FE80::1]:80", "[fe80::1]:80"},
		{"[FE80::1%Eth0]:80", "[fe80::1%Eth0]:80"},
		{"[fe80::1%ETH0]:80", "[fe80::1%ETH0]:80"},
	} {
		if got := poolKey(tc.in); got != tc.want {
			t.Errorf("poolKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	lower := "geo-service.shop.svc.cluster.local:8000"
	if n := testing.AllocsPerRun(100, func() { _ = poolKey(lower) }); n != 0 {
		t.Errorf("poolKey of a lower-case authority: %v allocations, want 0", n)
	}
}

// starvedDial is what net.Dialer returns when socket(2) fails for want of
// the process's own resources: an *OpError around an *os.SyscallError.
func starvedDial(errno syscall.Errno) func(string) error {
	return func(addr string) error {
		ap, _ := net.ResolveTCPAddr("tcp", addr)
		return &net.OpError{Op: "dial", Net: "tcp", Addr: ap, Err: os.NewSyscallError("socket", errno)}
	}
}

// TestOwnResourcesNotTheUpstreamsFailure: a dial that fails because the
// sidecar itself is out of file descriptors (or socket memory) is
// answered 503 overloaded, tried once, and neither the destination's
// breaker nor its endpoint hears of it; an upstream that refuses the
// connection still opens both. Before, with `ulimit -n 1100` and 1,100
// idle connections held, a healthy destination got 502 connect-failure
// five times, then 503 circuit-open.
func TestOwnResourcesNotTheUpstreamsFailure(t *testing.T) {
	dnsStarved := func(string) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{
			Err: "dial udp 10.96.0.10:53: socket: " + syscall.EMFILE.Error(), Name: "geo-service", Server: "10.96.0.10:53"}}
	}
	refused := func(addr string) error {
		ap, _ := net.ResolveTCPAddr("tcp", addr)
		return &net.OpError{Op: "dial", Net: "tcp", Addr: ap, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	}
	for _, tc := range []struct {
		name  string
		fail  func(addr string) error
		own   bool
		named bool // the name dialled, not an endpoint
	}{
		{"EMFILE", starvedDial(syscall.EMFILE), true, false},
		{"ENFILE", starvedDial(syscall.ENFILE), true, false},
		{"ENOBUFS", starvedDial(syscall.ENOBUFS), true, false},
		{"ENOMEM", starvedDial(syscall.ENOMEM), true, false},
		{"EMFILE, the name dialled", starvedDial(syscall.EMFILE), true, true},
		{"EMFILE in the name's lookup", dnsStarved, true, true},
		{"ECONNREFUSED: the upstream's", refused, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
			defer up.Close()
			upHost := strings.TrimPrefix(up.URL, "http://")
			pols, err := policy.Decode("p.yaml", []byte(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo}
spec:
  service: geo-service
  retries: {attempts: 2, perTryTimeout: 1s, retryOn: [connect-failure]}
  circuitBreaker: {consecutiveFailures: 3, openTimeout: 60s}
  outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1h, maxEjectionPercent: 100}
`))
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{Metrics: telemetry.New(0), Namespace: "shop", StdTransport: proxytest.StdTransport(),
				Resolve: map[string]string{"geo-service:8000": upHost}}
			h := New(cfg, policy.NewTable(pols, "shop"))
			if !tc.named {
				h.SetEndpoints(map[string][]balancer.Target{"geo-service.shop.svc.cluster.local:8000": {{Addr: upHost}}})
			}
			var failing atomic.Bool
			var dials atomic.Int32
			failing.Store(true)
			h.dialer.connect = func(ctx context.Context, nd *net.Dialer, network, addr string) (net.Conn, error) {
				if failing.Load() {
					dials.Add(1)
					return nil, tc.fail(addr)
				}
				return nd.DialContext(ctx, network, addr)
			}
			px := httptest.NewServer(h)
			defer px.Close()
			pu, _ := url.Parse(px.URL)
			c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
			defer c.CloseIdleConnections()

			const requests = 5
			var kinds []string
			for range requests {
				code, hdr := status(t, c, http.MethodGet, "http://geo-service:8000/", "")
				kinds = append(kinds, fmt.Sprint(code, " ", hdr.Get(wellknown.HeaderError)))
			}
			if tc.own {
				// A CONNECT tunnel's dial is judged alike (tunnel.go).
				kinds = append(kinds, connectThrough(t, px.Listener.Addr().String(), "geo-service:8000"))
			}
			breakerState := ""
			for _, b := range h.Breakers() {
				if strings.HasPrefix(b.Destination, "geo-service") {
					breakerState = b.State
				}
			}
			var epFailures, ejections int
			for _, s := range h.Endpoints() {
				for _, e := range s.Endpoints {
					epFailures += e.ConsecutiveFailures
					ejections += e.Ejections
				}
			}
			if tc.own {
				for i, k := range kinds {
					if k != "503 "+wellknown.ErrorOverloaded {
						t.Errorf("request %d: %s, want 503 %s", i+1, k, wellknown.ErrorOverloaded)
					}
				}
				if n := dials.Load(); n != requests+1 {
					t.Errorf("%d dials for %d requests and a CONNECT, want one each: never retried as a connect failure", n, requests)
				}
				if breakerState != "closed" {
					t.Errorf("breaker %q, want closed", breakerState)
				}
				if epFailures != 0 || ejections != 0 {
					t.Errorf("endpoint: %d consecutive failures, %d ejections, want none", epFailures, ejections)
				}
				if n := h.dialer.starved.Load(); n != requests+1 {
					t.Errorf("%d dials counted as the sidecar's own failure, want %d", n, requests+1)
				}
				failing.Store(false)
				if code, _ := status(t, c, http.MethodGet, "http://geo-service:8000/", ""); code != http.StatusOK {
					t.Errorf("with descriptors again: %d, want the upstream's 200", code)
				}
				return
			}
			// The control: the upstream's own refusal counts as it did.
			if kinds[0] != "502 "+wellknown.ErrorConnectFailure || kinds[requests-1] != "503 "+wellknown.ErrorCircuitOpen {
				t.Errorf("answers %v, want 502 connect-failure first and circuit-open at the end", kinds)
			}
			if breakerState != "open" || epFailures+ejections == 0 {
				t.Errorf("breaker %q, endpoint failures %d, ejections %d: want open, and the endpoint told", breakerState, epFailures, ejections)
			}
			if n := h.dialer.starved.Load(); n != 0 {
				t.Errorf("%d refusals counted as the sidecar's own failure, want 0", n)
			}
		})
	}
}

// connectThrough asks the sidecar at proxy for a CONNECT tunnel to
// authority, and returns its answer's status and X-Minimesh-Error.
func connectThrough(t *testing.T, proxy, authority string) string {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return fmt.Sprint(resp.StatusCode, " ", resp.Header.Get(wellknown.HeaderError))
}

// TestUpstreamEvictionsCounted: the idle connections the fast transport
// closes at its cap are in minimesh_connections_evicted_total{listener="upstream"}.
func TestUpstreamEvictionsCounted(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer up.Close()
	upHost := strings.TrimPrefix(up.URL, "http://")
	names := []string{"a-service:80", "b-service:80", "c-service:80", "d-service:80", "e-service:80"}
	res := map[string]string{}
	for _, n := range names {
		res[n] = upHost
	}
	m := telemetry.New(0)
	h := New(Config{Metrics: m, Resolve: res, Namespace: "default"}, policy.NewTable(nil, "default"))
	h.rp.Transport.(*forwarder).t.(*fastTransport).maxTotal = 2
	px := httptest.NewServer(h)
	defer px.Close()
	pu, _ := url.Parse(px.URL)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	defer c.CloseIdleConnections()
	for _, n := range names {
		if code, _ := status(t, c, http.MethodGet, "http://"+n+"/", ""); code != http.StatusOK {
			t.Fatalf("GET %s: %d", n, code)
		}
	}
	// Each request's connection is kept after its answer is written:
	// the last may still be on its way back to the pool.
	want := `minimesh_connections_evicted_total{listener="upstream"} 3`
	deadline := time.Now().Add(5 * time.Second)
	for {
		text := string(m.Registry.AppendText(nil))
		if strings.Contains(text, want) {
			return
		}
		if time.Now().After(deadline) {
			i := strings.Index(text, "minimesh_connections_evicted_total")
			t.Fatalf("metrics lack %q; near it: %.300s", want, text[max(i, 0):])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
