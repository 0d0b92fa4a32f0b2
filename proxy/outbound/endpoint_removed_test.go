package outbound_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/balancer"
)

// mapsEDS is a second Service of the same pods as geo-service (two
// Services selecting the same pods): its name seen from namespace shop.
const (
	maps    = "maps-service:8000"
	mapsEDS = "maps-service.shop.svc.cluster.local:8000"
)

// connPod is a loopback upstream that says when the sidecar opens a
// connection to it and when one closes (its server's ConnState), over
// HTTP/1.1 and h2c. GET /slow waits for release before it answers.
type connPod struct {
	addr     string
	name     string
	accepts  atomic.Int64
	accepted chan struct{}
	closed   chan struct{}
	arrived  chan struct{}
	release  chan struct{}
}

func newConnPod(t *testing.T, name string) *connPod {
	t.Helper()
	p := &connPod{
		name:     name,
		accepted: make(chan struct{}, 100),
		closed:   make(chan struct{}, 100),
		arrived:  make(chan struct{}, 100),
		release:  make(chan struct{}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: &protos,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			if r.URL.Path == "/slow" {
				p.arrived <- struct{}{}
				select {
				case <-p.release:
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprint(w, p.name)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				p.accepts.Add(1)
				p.accepted <- struct{}{}
			case http.StateClosed, http.StateHijacked:
				p.closed <- struct{}{}
			}
		},
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

// awaitClose waits for one of p's connections to close.
func (p *connPod) awaitClose(t *testing.T, why string) {
	t.Helper()
	select {
	case <-p.closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the removed endpoint's connection is still open after 10s", why)
	}
}

// removedWays are the three transports a request to an endpoint may
// take: the fast one (a bodiless GET), http.Transport (a chunked POST,
// which the fast transport leaves to it) and h2c (an HTTP/2 request). In
// the runs with MINIMESH_TEST_TRANSPORT=std the first two are both
// http.Transport's. send returns the answer's status and body.
var removedWays = []struct {
	name string
	send func(sc *testSidecar, host, path string) (int, string, error)
}{
	{"fast", func(sc *testSidecar, host, path string) (int, string, error) {
		req, err := http.NewRequest(http.MethodGet, "http://"+host+path, nil)
		if err != nil {
			return 0, "", err
		}
		return do(sc.Client(), req, 1)
	}},
	{"http.Transport", func(sc *testSidecar, host, path string) (int, string, error) {
		req, err := http.NewRequest(http.MethodPost, "http://"+host+path, io.NopCloser(strings.NewReader("chunked")))
		if err != nil {
			return 0, "", err
		}
		return do(sc.Client(), req, 1)
	}},
	{"h2c", func(sc *testSidecar, host, path string) (int, string, error) {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &p, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", sc.Addr)
		}}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequest(http.MethodGet, "http://"+host+path, nil)
		if err != nil {
			return 0, "", err
		}
		return do(&http.Client{Transport: tr, Timeout: 10 * time.Second}, req, 2)
	}},
}

// do sends req with c and reads the answer, which must be HTTP/major.
func do(c *http.Client, req *http.Request, major int) (int, string, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	if resp.ProtoMajor != major {
		return 0, "", fmt.Errorf("%s from the sidecar, want HTTP/%d", resp.Proto, major)
	}
	return resp.StatusCode, string(body), nil
}

func setEndpoints(sc *testSidecar, eps map[string][]*connPod) {
	m := map[string][]balancer.Target{}
	for svc, pods := range eps {
		for _, p := range pods {
			m[svc] = append(m[svc], balancer.Target{Addr: p.addr})
		}
	}
	sc.S.Handler().SetEndpoints(m)
}

func expectFrom(t *testing.T, code int, body string, err error, want string) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusOK || body != want {
		t.Fatalf("%d %q, want 200 %q", code, body, want)
	}
}

// TestEndpointRemovedClosesIdleConnections: the kept connection to an
// endpoint that leaves its Service is closed as the endpoints change, not
// at its idle timeout (a pod gone with its node sends no FIN, and its IP
// may come back as another pod's); the address coming back gets
// connections that are kept again.
func TestEndpointRemovedClosesIdleConnections(t *testing.T) {
	for _, way := range removedWays {
		t.Run(way.name, func(t *testing.T) {
			a, b := newConnPod(t, "a"), newConnPod(t, "b")
			sc := startSidecar(t, "", nil, withNamespace("shop"))
			setEndpoints(sc, map[string][]*connPod{geoEDS: {a}})
			code, body, err := way.send(sc, geo, "/")
			expectFrom(t, code, body, err, "a")
			<-a.accepted

			setEndpoints(sc, map[string][]*connPod{geoEDS: {b}})
			a.awaitClose(t, "idle")
			code, body, err = way.send(sc, geo, "/")
			expectFrom(t, code, body, err, "b")

			// Dialled after it left (a try that picked it as it left and
			// dialled late; here the app names the address): answered,
			// and not kept.
			code, body, err = way.send(sc, a.addr, "/")
			expectFrom(t, code, body, err, "a")
			a.awaitClose(t, "dialled after it left")

			// Back: a new connection, kept for the next request (the
			// address's removal does not make its new connections
			// single-use).
			setEndpoints(sc, map[string][]*connPod{geoEDS: {a}})
			for range 3 {
				code, body, err = way.send(sc, geo, "/")
				expectFrom(t, code, body, err, "a")
			}
			if n := a.accepts.Load(); n != 3 {
				t.Errorf("a accepted %d connections, want 3: one before its removal, one after, one kept after its return", n)
			}
		})
	}
}

// TestEndpointRemovedInFlightFinishes: a request in flight on an
// endpoint as it leaves ends with its answer, and its connection is
// closed after it, not kept for another.
func TestEndpointRemovedInFlightFinishes(t *testing.T) {
	for _, way := range removedWays {
		t.Run(way.name, func(t *testing.T) {
			a, b := newConnPod(t, "a"), newConnPod(t, "b")
			sc := startSidecar(t, "", nil, withNamespace("shop"))
			setEndpoints(sc, map[string][]*connPod{geoEDS: {a}})
			type answer struct {
				code int
				body string
				err  error
			}
			done := make(chan answer, 1)
			go func() {
				code, body, err := way.send(sc, geo, "/slow")
				done <- answer{code, body, err}
			}()
			select {
			case <-a.arrived:
			case <-time.After(10 * time.Second):
				t.Fatal("the request did not reach a")
			}

			setEndpoints(sc, map[string][]*connPod{geoEDS: {b}})
			// Not cut: SetEndpoints retired a's connection before it
			// returned, so a close would be on its way already.
			select {
			case <-a.closed:
				t.Fatal("the connection of a request in flight was closed under it")
			default:
			}
			// Meanwhile the others go to b (and http.Transport, asked for
			// a connection, no longer closes every one that goes idle, as
			// its CloseIdleConnections left it).
			code, body, err := way.send(sc, geo, "/")
			expectFrom(t, code, body, err, "b")
			close(a.release)
			select {
			case got := <-done:
				expectFrom(t, got.code, got.body, got.err, "a")
			case <-time.After(10 * time.Second):
				t.Fatal("the request in flight did not end")
			}
			a.awaitClose(t, "after its request")
		})
	}
}

// TestEndpointSharedByTwoServicesKept: an address two Services share
// keeps its connections when it leaves one of them: it is still the
// other's endpoint.
func TestEndpointSharedByTwoServicesKept(t *testing.T) {
	for _, way := range removedWays {
		t.Run(way.name, func(t *testing.T) {
			a, b := newConnPod(t, "a"), newConnPod(t, "b")
			sc := startSidecar(t, "", nil, withNamespace("shop"))
			setEndpoints(sc, map[string][]*connPod{geoEDS: {a}, mapsEDS: {a}})
			code, body, err := way.send(sc, geo, "/")
			expectFrom(t, code, body, err, "a")

			setEndpoints(sc, map[string][]*connPod{geoEDS: {b}, mapsEDS: {a}})
			code, body, err = way.send(sc, maps, "/")
			expectFrom(t, code, body, err, "a")
			// Retiring is done when SetEndpoints returns: the request
			// through maps-service found the connection kept.
			if n := a.accepts.Load(); n != 1 {
				t.Errorf("a accepted %d connections, want its one connection kept", n)
			}
			select {
			case <-a.closed:
				t.Error("the shared endpoint's connection was closed")
			default:
			}
		})
	}
}
